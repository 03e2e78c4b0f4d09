#!/usr/bin/env bash
# The chaos run (RELIABILITY.md): two gateways and two workers of the real binary, each behind
# its own TCP proxy to RabbitMQ (the workers also to Postgres), fresh database and queue prefix,
# loopback only. Fails unless nothing acknowledged was lost or stored twice and no connection
# that stayed open missed a live event.
#   scripts/chaos.sh            1,000,000 events at 6,000/s, release build (`make chaos`)
#   scripts/chaos.sh --short    60,000 events at 1,000/s, about 60 s, debug build (`make test`);
#                               the stall's p99 effect may reach 100 % there (a debug build's
#                               5 s windows are noisy): it still catches a stall that slows the
#                               fan-out, and the full run holds the 10 % target
# Other arguments go to `switchboard-bench chaos` (see its --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-services.sh
target=${CARGO_TARGET_DIR:-target}
if [[ ${1:-} == --short ]]; then
  shift
  cargo build -q -p switchboard --bin switchboard -p bench --bin switchboard-bench
  exec "$target/debug/switchboard-bench" chaos --bin "$target/debug/switchboard" \
    --events 60000 --rate 1000 --postgres-outage-secs 10 --max-stall-effect-pct 100 \
    --log-dir "$target/chaos" "$@"
fi
cargo build -q --release -p switchboard --bin switchboard -p bench --bin switchboard-bench
exec "$target/release/switchboard-bench" chaos --bin "$target/release/switchboard" \
  --log-dir "$target/chaos" "$@"
