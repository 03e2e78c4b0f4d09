#!/usr/bin/env bash
# Runs the end-to-end suites with the real client libraries against a real `switchboard serve`
# process (apps from tests/e2e.toml, plus one with webhooks to the suites' receivers) with its own
# database, RabbitMQ vhost and AMQP prefix:
# tests/python (the PyPI `pusher` SDK, unittest, in the venv tests/python/.venv made here) and
# tests/js (pusher-js, Laravel Echo and the npm `pusher` SDK, node's built-in test runner; one suite
# starts a second server with TLS, whose CA this script makes for the run with openssl; the
# dashboard's suite drives Debian's headless `chromium`, installed here when missing, with
# playwright-core and leaves a screenshot of each view in target/dashboard-screenshots/; the web
# client's suite, tests/js/web-client.test.mjs, loads clients/js's bundle, built here by
# scripts/client-js.sh, into Chromium and starts servers of its own). Then
# it stops the server (it must exit 0 on SIGTERM within 10 s) and removes the database and the
# vhost. Expects PostgreSQL and RabbitMQ to be up (scripts/ensure-services.sh).
#
# Usage: scripts/e2e.sh [TEST_FILE...]   (no argument: every suite; else only the given
# tests/js/*.test.mjs and tests/python/test_*.py files). E2E_SKIP_BUILD=1 uses the binary already
# in target/debug instead of running `cargo build`; E2E_SERVER_BIN=PATH tests that binary instead;
# E2E_TEST_PATTERN=REGEX runs only the JS tests whose names match (node's --test-name-pattern).
# shellcheck disable=SC2317 # stop_server and cleanup run from the EXIT trap
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_HOST=127.0.0.1
PG_PORT=5432

log() { echo "e2e: $*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ -n ${E2E_SERVER_BIN:-} ]]; then
  server_bin=$(realpath "$E2E_SERVER_BIN")
else
  [[ ${E2E_SKIP_BUILD:-} == 1 ]] || cargo build --bin switchboard
  server_bin=$PWD/target/debug/switchboard
fi
read -r port admin_port hook_js_port hook_py_port < <(free_ports 4)
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
database=switchboard_e2e_$suffix
amqp_prefix=e2e$suffix
# A vhost of its own: deleting it at the end removes every queue and exchange of the run.
vhost=switchboard_e2e_$suffix
database_url=postgres://postgres@$PG_HOST:$PG_PORT/$database
amqp_url=amqp://guest:guest@127.0.0.1:5672/$vhost
server_log=$(mktemp -t switchboard-e2e.XXXXXX.log)
# tests/e2e.toml plus an app whose webhooks go to the receivers the suites start on ports chosen
# for this run (tests/js/webhooks.test.mjs, tests/python/test_webhooks.py).
server_config=$(mktemp -t switchboard-e2e.XXXXXX.toml)
{
  cat tests/e2e.toml
  cat <<EOF

# Added by scripts/e2e.sh: webhooks to the suites' receivers.
[[apps]]
id = "5151"
key = "hook-key"
secret = "hook-secret"
client_events = true

[[apps.webhooks]]
url = "http://127.0.0.1:$hook_js_port/pusher/webhooks"
event_types = ["client_event", "cache_miss"]
channel_prefix = "private-"

[[apps.webhooks]]
url = "http://127.0.0.1:$hook_py_port/pusher/webhooks"
channel_prefix = "private-py-"

[webhooks]
batch_window_ms = 20
backoff_base_ms = 50
backoff_max_ms = 500
EOF
} >"$server_config"
server_pid=
# A certificate authority made for this run only, and a server certificate it signs for
# 127.0.0.1 / localhost: tests/js/tls.test.mjs serves them; node trusts the CA through
# NODE_EXTRA_CA_CERTS. Nothing of it outlives the run.
tls_dir=$(mktemp -d -t switchboard-e2e-tls.XXXXXX)

print_log() {
  echo "---- switchboard log ($server_log, last ${1} lines) ----" >&2
  tail -n "$1" "$server_log" >&2 || true
  echo "---- end of switchboard log ----" >&2
}

stop_server() {
  [[ -n $server_pid ]] || return 0
  local pid=$server_pid status i
  server_pid=
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" && status=0 || status=$?
    log "switchboard had already exited with status $status"
    return 1
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "switchboard did not exit within 10 s of SIGTERM (killed)"
    return 1
  fi
  wait "$pid" && status=0 || status=$?
  if [[ $status -ne 0 ]]; then
    log "switchboard exited with status $status after SIGTERM (expected 0)"
    return 1
  fi
  log "switchboard stopped cleanly"
}

cleanup() {
  local rc=$?
  set +e
  if ! stop_server; then
    [[ $rc -ne 0 ]] || rc=1
  fi
  [[ $rc -eq 0 ]] || print_log 80
  psql -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
    log "could not drop database $database"
  timeout 60 rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 ||
    log "could not delete RabbitMQ vhost $vhost"
  rm -rf "$tls_dir"
  rm -f "$server_config"
  if [[ $rc -eq 0 ]]; then
    rm -f "$server_log"
  else
    log "server log kept at $server_log"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_test_pki() {
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=Switchboard e2e CA $suffix" \
    -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=localhost \
    -keyout "$tls_dir/server.key" -out "$tls_dir/server.csr" 2>/dev/null
  printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
    'keyUsage=digitalSignature' 'extendedKeyUsage=serverAuth' >"$tls_dir/server.ext"
  openssl x509 -req -in "$tls_dir/server.csr" -CA "$tls_dir/ca.crt" -CAkey "$tls_dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$tls_dir/server.ext" -out "$tls_dir/server.crt" 2>/dev/null
}
make_test_pki

rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null

# `switchboard` reads every SWITCHBOARD_* variable as config (unknown keys are errors): the server
# gets only the ones set here, none inherited from the caller's shell.
inherited=()
while IFS= read -r name; do
  if [[ $name == SWITCHBOARD_* ]]; then inherited+=(-u "$name"); fi
done < <(compgen -e)

log "starting $server_bin serve on 127.0.0.1:$port (admin $admin_port), database $database, AMQP prefix $amqp_prefix"
env "${inherited[@]}" \
  DATABASE_URL="$database_url" \
  AMQP_URL="$amqp_url" \
  SWITCHBOARD_BIND="127.0.0.1:$port" \
  SWITCHBOARD_ADMIN_BIND="127.0.0.1:$admin_port" \
  SWITCHBOARD_AMQP_PREFIX="$amqp_prefix" \
  RUST_LOG=info \
  "$server_bin" serve --config "$server_config" >"$server_log" 2>&1 </dev/null &
server_pid=$!

wait_ready "http://127.0.0.1:$admin_port/ready" "$server_pid" switchboard
log "switchboard is ready"

bash scripts/ensure-services.sh chromium

# tests/js/web-client.test.mjs loads the built web client (clients/js/dist) into Chromium.
bash scripts/client-js.sh build

installed=tests/js/node_modules/.package-lock.json
if [[ ! -f tests/js/package-lock.json ]]; then
  (cd tests/js && npm install --no-audit --no-fund)
elif [[ ! -f $installed || tests/js/package-lock.json -nt $installed ]]; then
  (cd tests/js && npm ci --no-audit --no-fund)
fi

venv=tests/python/.venv
venv_stamp=$venv/.requirements-installed
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
if [[ ! -f $venv_stamp || tests/python/requirements.txt -nt $venv_stamp ]]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  touch "$venv_stamp"
fi

# What the suites need to know. The apps are the ones in tests/e2e.toml. The tests' variables are
# given to the test processes only: `switchboard` reads every SWITCHBOARD_* variable as config
# (unknown keys are errors), so a suite that starts its own server must not pass these on.
test_env=(
  SWITCHBOARD_HOST=127.0.0.1
  SWITCHBOARD_PORT="$port"
  SWITCHBOARD_ADMIN_PORT="$admin_port"
  SWITCHBOARD_DATABASE_URL="$database_url"
  SWITCHBOARD_AMQP_URL="$amqp_url"
  SWITCHBOARD_E2E_AMQP_PREFIX="$amqp_prefix"
  SWITCHBOARD_BIN="$server_bin"
  SWITCHBOARD_CONFIG="$PWD/tests/e2e.toml"
  SWITCHBOARD_E2E_TLS_CERT="$tls_dir/server.crt"
  SWITCHBOARD_E2E_TLS_KEY="$tls_dir/server.key"
  SWITCHBOARD_APP_ID=app-id
  SWITCHBOARD_APP_KEY=app-key
  SWITCHBOARD_APP_SECRET=app-secret
  SWITCHBOARD_PY_APP_ID=4242
  SWITCHBOARD_PY_APP_KEY=py-key
  SWITCHBOARD_PY_APP_SECRET=py-secret
  SWITCHBOARD_SUBCOUNT_APP_ID=subcount-id
  SWITCHBOARD_SUBCOUNT_APP_KEY=subcount-key
  SWITCHBOARD_SUBCOUNT_APP_SECRET=subcount-secret
  SWITCHBOARD_QUIET_APP_ID=quiet-id
  SWITCHBOARD_QUIET_APP_KEY=quiet-key
  SWITCHBOARD_QUIET_APP_SECRET=quiet-secret
  SWITCHBOARD_DISABLED_APP_ID=disabled-id
  SWITCHBOARD_DISABLED_APP_KEY=disabled-key
  SWITCHBOARD_DISABLED_APP_SECRET=disabled-secret
  SWITCHBOARD_HOOK_APP_ID=5151
  SWITCHBOARD_HOOK_APP_KEY=hook-key
  SWITCHBOARD_HOOK_APP_SECRET=hook-secret
  SWITCHBOARD_E2E_WEBHOOK_JS_PORT="$hook_js_port"
  SWITCHBOARD_E2E_WEBHOOK_PY_PORT="$hook_py_port"
  SWITCHBOARD_DASHBOARD_APP_ID=dashboard-id
  SWITCHBOARD_DASHBOARD_APP_KEY=dashboard-key
  SWITCHBOARD_DASHBOARD_APP_SECRET=dashboard-secret
  SWITCHBOARD_DASHBOARD_PASSWORD=e2e-dashboard-password
  SWITCHBOARD_SCREENSHOTS="$PWD/target/dashboard-screenshots"
)

js_tests=()
py_tests=()
for file in "$@"; do
  case $file in
    *.py) py_tests+=("$file") ;;
    *) js_tests+=("$file") ;;
  esac
done
if (($# == 0)); then
  js_tests=(tests/js/)
  py_tests=(tests/python/test_*.py)
fi

status=0
if ((${#py_tests[@]})); then
  log "tests/python (PyPI pusher SDK): ${py_tests[*]}"
  # unittest takes module names, imported from tests/python (no __pycache__ left there).
  modules=()
  for file in "${py_tests[@]}"; do
    name=${file##*/}
    modules+=("${name%.py}")
  done
  (cd tests/python &&
    env "${test_env[@]}" PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m unittest --verbose "${modules[@]}") ||
    status=$?
fi
if ((${#js_tests[@]})); then
  log "tests/js (pusher-js, Laravel Echo, npm pusher SDK): ${js_tests[*]}"
  # --test-force-exit: pusher-js's WebSocket library leaves a 30 s close timer behind when it
  # closes a socket the server already closed (4001-4099), which would keep each file alive.
  pattern=()
  [[ -z ${E2E_TEST_PATTERN:-} ]] || pattern=(--test-name-pattern="$E2E_TEST_PATTERN")
  env "${test_env[@]}" NODE_EXTRA_CA_CERTS="$tls_dir/ca.crt" \
    node --test --test-force-exit "${pattern[@]}" "${js_tests[@]}" || status=$?
fi
exit "$status"
