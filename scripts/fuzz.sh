#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, one after the other (RELIABILITY.md).
# Installs cargo-fuzz when missing. cargo-fuzz passes nightly-only flags (-Z sanitizer,
# coverage passes): on the stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them.
# Each target starts from its checked-in seeds (fuzz/seeds/TARGET, never written to) and what
# earlier runs found (fuzz/corpus/TARGET, not checked in). A crash stops the run with its input
# in fuzz/artifacts/TARGET/ and a non-zero exit.
#
# Usage: scripts/fuzz.sh [TARGET...]   (no argument: every target)
# FUZZ_SECONDS (default 60) per target.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1

log() { echo "fuzz: $*" >&2; }

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

target_dir=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  log "$target for ${seconds}s"
  cargo fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$target" \
    "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" \
    -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
  log "$target: $(find "$corpus" -type f | wc -l) inputs in $corpus"
done
