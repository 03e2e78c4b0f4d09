#!/usr/bin/env bash
# The standard benchmark set (BENCHMARKS.md): builds --release, starts `switchboard serve` with a
# fresh database, its own RabbitMQ vhost and ports, runs switchboard-bench scenarios against it,
# then stops the server and removes the database and the vhost. Reports go to stdout and to
# target/bench/<UTC time>.txt. Expects PostgreSQL and RabbitMQ up (scripts/ensure-services.sh).
#
#   scripts/bench.sh                       # every scenario of the standard set
#   scripts/bench.sh fanout-target ingest-batch   # only those
#   BENCH_ROLE=gateway scripts/bench.sh segment-memory-tiny   # the server as `gateway` (no
#       worker: what the gateway holds, without the worker's prefetched backlog)
#   BENCH_PROFILE=1 scripts/bench.sh ingest-trigger   # also a perf profile of the server during
#       each scenario: target/bench/<name>.perf.data and the flat report <name>.profile.txt
# shellcheck disable=SC2317 # stop_server and cleanup run from the EXIT trap
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_HOST=127.0.0.1
PG_PORT=5432

log() { echo "bench: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

cargo build --release -p bench -p switchboard
server_bin=${CARGO_TARGET_DIR:-target}/release/switchboard
bench_bin=${CARGO_TARGET_DIR:-target}/release/switchboard-bench

# 10,000 connections need as many descriptors on each side: take the hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

read -r port admin_port hook_port < <(free_ports 3)
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
database=switchboard_bench_$suffix
database_url=postgres://postgres@$PG_HOST:$PG_PORT/$database
# A vhost of its own: deleting it at the end removes every queue and exchange of the run.
vhost=switchboard_bench_$suffix
amqp_url=amqp://guest:guest@127.0.0.1:5672/$vhost
mkdir -p target/bench
results=target/bench/$(date -u +%Y%m%dT%H%M%SZ).txt
server_log=$(mktemp -t switchboard-bench.XXXXXX.log)
# The default app (its track rate limit raised for ws-track), plus two for the webhook
# scenarios, identical but for the webhook: `hooked`
# sends client_event and cache_miss to the receiver of webhook-delivery (port $hook_port); the
# fan-out of webhook-cost on public channels produces neither.
server_config=$(mktemp -t switchboard-bench.XXXXXX.toml)
cat >"$server_config" <<TOML
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
client_events = true
[apps.limits]
track_batches_per_second = 100000

[[apps]]
id = "fanout-plain"
key = "fanout-plain-key"
secret = "fanout-plain-secret"
client_events = true
[apps.limits]
client_events_per_second = 100000

[[apps]]
id = "hooked"
key = "hooked-key"
secret = "hooked-secret"
client_events = true
[apps.limits]
client_events_per_second = 100000
[[apps.webhooks]]
url = "http://127.0.0.1:$hook_port/webhooks"
event_types = ["client_event", "cache_miss"]
TOML
server_pid=

stop_server() {
  [[ -n $server_pid ]] || return 0
  local pid=$server_pid i
  server_pid=
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "switchboard did not stop within 15 s of SIGTERM (killed)"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  stop_server
  psql -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
    log "could not drop database $database"
  timeout 60 rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 ||
    log "could not delete RabbitMQ vhost $vhost"
  if [[ $rc -eq 0 ]]; then
    rm -f "$server_log" "$server_config"
    log "reports in $results"
  else
    log "server log kept at $server_log"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null

log "starting $server_bin ${BENCH_ROLE:-serve} on 127.0.0.1:$port (admin $admin_port), database $database, vhost $vhost"
DATABASE_URL=$database_url \
  AMQP_URL=$amqp_url \
  SWITCHBOARD_BIND=127.0.0.1:$port \
  SWITCHBOARD_ADMIN_BIND=127.0.0.1:$admin_port \
  RUST_LOG=info \
  "$server_bin" --config "$server_config" "${BENCH_ROLE:-serve}" >"$server_log" 2>&1 </dev/null &
server_pid=$!

wait_ready "http://127.0.0.1:$admin_port/ready" "$server_pid" switchboard

bench() {
  "$bench_bin" --http "http://127.0.0.1:$port" --admin "http://127.0.0.1:$admin_port" \
    --server-pid "$server_pid" "$@"
}

# name, then the scenario's arguments. Scaled for a 2-core machine: the whole set takes ~5 min,
# plus history-query's load of 10 million rows (several minutes; it needs no server).
standard=(
  "connections|connections --connections 10000 --channels 100"
  "fanout-target|fanout --subscribers 5000 --channels 10 --rate 100 --duration 20"
  "fanout-light|fanout --subscribers 1000 --channels 100 --rate 1000 --duration 15"
  "fanout-overload|fanout --subscribers 2000 --channels 1 --rate 0 --duration 10 --max-events 20000"
  "ingest-batch|ingest --mode batch --events 300000 --concurrency 32 --duration 30 --database-url $database_url --baseline-amqp-url $amqp_url"
  "ingest-segment|ingest --mode segment --events 100000 --concurrency 32 --duration 20 --database-url $database_url"
  "ingest-trigger|ingest --mode trigger --events 60000 --concurrency 32 --duration 20 --database-url $database_url"
  "ingest-trigger-1000|ingest --mode trigger --rate 1000 --events 20000 --concurrency 32 --duration 20 --database-url $database_url"
  "ingest-batch-60s|ingest --mode batch --events 3000000 --concurrency 32 --duration 60 --window-secs 5 --database-url $database_url"
  "ingest-batch-30k-60s|ingest --mode batch --rate 3000 --events 1800000 --concurrency 32 --duration 60 --window-secs 5 --database-url $database_url"
  "ws-track|ws-track --events 100000 --concurrency 32 --duration 20 --database-url $database_url"
  "ingest-segment-100|ingest --mode segment --batch-events 100 --events 300000 --concurrency 32 --duration 20 --database-url $database_url"
  "ws-track-100|ws-track --batch-events 100 --events 300000 --concurrency 32 --duration 20 --database-url $database_url"
  "history-query|history-query --rows 10000000 --channels 1000 --days 7 --queries 1000 --database-url $database_url"
  "client-events|client-events --channels 100 --members 10 --rate 2 --duration 15"
  "segment-memory-attack|segment-memory --shape attack --concurrency 16 --requests 100"
  "segment-memory-context|segment-memory --shape context --concurrency 16 --requests 100"
  "segment-memory-tiny|segment-memory --shape tiny --concurrency 16 --requests 100"
  "webhook-delivery|webhook-delivery --app-id hooked --key hooked-key --secret hooked-secret --receiver 127.0.0.1:$hook_port --channels 50 --rate 5000 --duration 15 --baseline-amqp-url $amqp_url"
  "webhook-delivery-15k|webhook-delivery --app-id hooked --key hooked-key --secret hooked-secret --receiver 127.0.0.1:$hook_port --channels 50 --rate 15000 --duration 15 --baseline-amqp-url $amqp_url"
  "webhook-ceiling|webhook-delivery --app-id hooked --key hooked-key --secret hooked-secret --receiver 127.0.0.1:$hook_port --channels 50 --rate 0 --duration 15 --baseline-amqp-url $amqp_url"
  "webhook-cost|webhook-cost --app-id hooked --key hooked-key --secret hooked-secret --subscribers 1000 --channels 100 --rate 1000 --duration 15 --rounds 3"
  "segment-memory-large|segment-memory --shape large --concurrency 16 --requests 100"
)

{
  echo "# switchboard-bench $(date -u +%FT%TZ), $(nproc) cores, $(uname -r), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
} | tee "$results"
for entry in "${standard[@]}"; do
  name=${entry%%|*}
  if [[ $# -gt 0 && " $* " != *" $name "* ]]; then
    continue
  fi
  log "$name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  perf_pid=
  if [[ -n ${BENCH_PROFILE:-} ]]; then
    # Software clock sampling: this VM has no hardware counters.
    perf record -q -e cpu-clock -F 499 -g -p "$server_pid" -o "target/bench/$name.perf.data" \
      2>/dev/null &
    perf_pid=$!
  fi
  # shellcheck disable=SC2086 # the arguments are words
  bench ${entry#*|} | tee -a "$results"
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    perf report -i "target/bench/$name.perf.data" --no-children --sort dso,symbol --stdio \
      -g none --percent-limit 0.3 2>/dev/null | grep '%' >"target/bench/$name.profile.txt" || true
    log "profile: target/bench/$name.profile.txt"
  fi
  kill -0 "$server_pid" 2>/dev/null || { log "switchboard died during $name"; exit 1; }
done
