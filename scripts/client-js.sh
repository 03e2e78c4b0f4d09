#!/usr/bin/env bash
# Builds and unit-tests the web client, clients/js (@switchboard/client): `npm ci` when its
# package-lock.json is newer than what is installed, `npm run build` (tsc: dist/*.js and .d.ts;
# esbuild: dist/switchboard.min.js, whose minified and gzipped size it prints), then `npm test`
# (node's test runner: the outbox, batching, ack/nack and recovery logic). The browser tests
# against a real server are tests/js/web-client.test.mjs, run by scripts/e2e.sh, which calls
# `scripts/client-js.sh build` (install and build only) first.
#
# Usage: scripts/client-js.sh [build]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../clients/js"

installed=node_modules/.package-lock.json
if [[ ! -f $installed || package-lock.json -nt $installed ]]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
if [[ ${1:-} == build ]]; then
  exit 0
fi
npm test
