#!/usr/bin/env bash
# The scenarios of the standard set (scripts/bench.sh) that any Pusher server answers, run with
# --peer against another server: sockudo by default (BENCHMARKS.md, "Against a peer server
# (sockudo)"). Builds switchboard-bench --release, starts the peer on free ports with its
# config/config.json and `ulimit -n` at the hard limit, runs the scenarios, stops the peer.
# Reports go to stdout and to target/bench/peer-<UTC time>.txt.
#
#   scripts/bench-peer.sh                              # every scenario below
#   scripts/bench-peer.sh fanout-target ingest-batch   # only those
#   PEER_DIR=/work/peers/sockudo                       # the peer's checkout (the default)
#   PEER_BIN=$PEER_DIR/target/release/sockudo         # its binary (the default)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "bench-peer: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

peer_dir=${PEER_DIR:-/work/peers/sockudo}
peer_bin=${PEER_BIN:-$peer_dir/target/release/sockudo}
[[ -x $peer_bin ]] || { log "no peer binary at $peer_bin (see BENCHMARKS.md)"; exit 1; }

# The same packages as scripts/bench.sh builds, so both share one set of release artifacts.
cargo build --release -p bench -p switchboard
bench_bin=${CARGO_TARGET_DIR:-target}/release/switchboard-bench

# 10,000 connections need as many descriptors on each side: take the hard limit.
ulimit -n "$(ulimit -Hn)"

read -r port metrics_port < <(free_ports 2)
mkdir -p target/bench
results=target/bench/peer-$(date -u +%Y%m%dT%H%M%SZ).txt
peer_log=$(mktemp -t bench-peer.XXXXXX.log)
peer_pid=

cleanup() {
  local rc=$?
  set +e
  if [[ -n $peer_pid ]]; then
    kill -TERM "$peer_pid" 2>/dev/null
    timeout 15 tail --pid="$peer_pid" -f /dev/null || kill -KILL "$peer_pid" 2>/dev/null
    wait "$peer_pid" 2>/dev/null
  fi
  if [[ $rc -eq 0 ]]; then
    rm -f "$peer_log"
    log "reports in $results"
  else
    log "peer log kept at $peer_log"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# sockudo reads config/config.toml (else .json) of its working directory, then --config, then
# the environment: HOST and PORT (Pusher WebSocket + HTTP API), METRICS_HOST and METRICS_PORT.
log "starting $peer_bin on 127.0.0.1:$port (metrics $metrics_port)"
(
  cd "$peer_dir"
  HOST=127.0.0.1 PORT=$port METRICS_HOST=127.0.0.1 METRICS_PORT=$metrics_port RUST_LOG=info \
    exec "$peer_bin" --config config/config.json
) >"$peer_log" 2>&1 </dev/null &
peer_pid=$!

wait_ready "http://127.0.0.1:$port/up/app-id" "$peer_pid" "the peer"
# Without it, sockudo keeps the configuration it had (config/config.toml): say so rather than
# measure another configuration.
if grep -q "explicit configuration load failed" "$peer_log"; then
  log "the peer could not load $peer_dir/config/config.json"
  exit 1
fi

bench() {
  "$bench_bin" --peer --http "http://127.0.0.1:$port" --server-pid "$peer_pid" "$@"
}

# name, then the scenario's arguments: those of scripts/bench.sh, without the Switchboard-only
# parts (database, baselines).
scenarios=(
  "connections|connections --connections 10000 --channels 100"
  "fanout-target|fanout --subscribers 5000 --channels 10 --rate 100 --duration 20"
  "fanout-light|fanout --subscribers 1000 --channels 100 --rate 1000 --duration 15"
  "fanout-overload|fanout --subscribers 2000 --channels 1 --rate 0 --duration 10 --max-events 20000"
  "ingest-batch|ingest --mode batch --events 300000 --concurrency 32 --duration 30"
  "ingest-trigger|ingest --mode trigger --events 60000 --concurrency 32 --duration 20"
  "ingest-trigger-1000|ingest --mode trigger --rate 1000 --events 20000 --concurrency 32 --duration 20"
)

{
  echo "# switchboard-bench --peer $(date -u +%FT%TZ), $("$peer_bin" --version), $(nproc) cores, $(uname -r), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
} | tee "$results"
for entry in "${scenarios[@]}"; do
  name=${entry%%|*}
  if [[ $# -gt 0 && " $* " != *" $name "* ]]; then
    continue
  fi
  log "$name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086 # the arguments are words
  bench ${entry#*|} | tee -a "$results"
  kill -0 "$peer_pid" 2>/dev/null || { log "the peer died during $name"; exit 1; }
done
