#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, trust auth for user postgres) and RabbitMQ
# (127.0.0.1:5672, guest/guest) are installed, running and reachable, and that Debian's
# `chromium` (the dashboard's browser test, tests/js/dashboard.test.mjs) is installed.
# Idempotent; prints nothing when all are already there. Exits non-zero with a clear message if
# one cannot be made ready. `scripts/ensure-services.sh chromium` only installs the browser.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672

export DEBIAN_FRONTEND=noninteractive

log() { echo "ensure-services: $*" >&2; }

die() {
  log "ERROR: $*"
  exit 1
}

apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- PostgreSQL ----------------------------------------------------------------------------------

pg_ready() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

pg_trusted() {
  psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1
}

# The version of the first PostgreSQL cluster named main, else of the first installed server.
pg_version() {
  local path
  for path in /etc/postgresql/*/main /usr/lib/postgresql/*/bin; do
    [[ -d $path ]] || continue
    path=${path#/etc/postgresql/}
    path=${path#/usr/lib/postgresql/}
    echo "${path%%/*}"
    return 0
  done
  return 1
}

pg_log_tail() {
  local version=$1
  tail -n 30 "/var/log/postgresql/postgresql-$version-main.log" >&2 2>/dev/null || true
}

pg_trust_loopback() {
  local version=$1 hba
  hba=$(psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'SHOW hba_file' 2>/dev/null ||
    echo "/etc/postgresql/$version/main/pg_hba.conf")
  [[ -f $hba ]] || die "pg_hba.conf not found at $hba"
  log "allowing trust auth on 127.0.0.1 and ::1 in $hba"
  local tmp
  tmp=$(mktemp)
  {
    echo "# added by switchboard scripts/ensure-services.sh: local development and CI"
    echo "host    all    all    127.0.0.1/32    trust"
    echo "host    all    all    ::1/128         trust"
    cat "$hba"
  } >"$tmp"
  cat "$tmp" >"$hba"
  rm -f "$tmp"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
}

ensure_postgres() {
  if pg_ready; then
    if ! pg_trusted; then
      pg_trust_loopback "$(pg_version || echo unknown)"
      pg_trusted || die "PostgreSQL on $PG_HOST:$PG_PORT refuses trust auth for user postgres"
    fi
    return 0
  fi

  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z $(ls -A /etc/postgresql 2>/dev/null) ]]; then
    apt_install postgresql
  fi
  local version
  version=$(pg_version) || die "no PostgreSQL server found under /usr/lib/postgresql"
  if [[ ! -d /etc/postgresql/$version/main ]]; then
    log "creating PostgreSQL cluster $version/main"
    pg_createcluster "$version" main >&2
  fi

  log "starting PostgreSQL $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 ||
    log "pg_ctlcluster start failed; waiting for the server anyway"

  local i
  for ((i = 0; i < 60; i++)); do
    pg_ready && break
    sleep 0.5
  done
  if ! pg_ready; then
    pg_log_tail "$version"
    die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT after 30 s"
  fi
  if ! pg_trusted; then
    pg_trust_loopback "$version"
    pg_trusted || die "PostgreSQL on $PG_HOST:$PG_PORT refuses trust auth for user postgres"
  fi
  log "PostgreSQL is ready"
}

# --- RabbitMQ ------------------------------------------------------------------------------------

amqp_up() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT" >/dev/null 2>&1
}

rabbit_log_tail() {
  local file
  for file in /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err; do
    [[ -s $file ]] && tail -n 20 "$file" >&2
  done
  return 0
}

# A fresh Debian install names the node after the host name, which may not resolve in a sandbox;
# pin it to localhost and keep the broker on loopback, as on the project's machines. Neither file
# belongs to the package, so this is done before installing it.
rabbit_configure_fresh_install() {
  local env_conf=/etc/rabbitmq/rabbitmq-env.conf conf=/etc/rabbitmq/rabbitmq.conf
  mkdir -p /etc/rabbitmq
  if ! grep -qs '^NODENAME=' "$env_conf"; then
    printf '%s\n' 'NODENAME=rabbit@localhost' 'ERL_EPMD_ADDRESS=127.0.0.1' >>"$env_conf"
  fi
  if [[ ! -s $conf ]]; then
    echo "listeners.tcp.local = $AMQP_HOST:$AMQP_PORT" >"$conf"
  fi
}

ensure_rabbitmq() {
  amqp_up && return 0

  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    rabbit_configure_fresh_install
    apt_install rabbitmq-server
  fi

  if ! amqp_up; then
    if timeout 30 rabbitmqctl -q ping >/dev/null 2>&1; then
      log "RabbitMQ node is up without its application; starting it"
      timeout 60 rabbitmqctl -q start_app >&2 || true
    else
      log "starting RabbitMQ"
      rabbitmq-server -detached >&2 || log "rabbitmq-server -detached failed; waiting for the broker anyway"
    fi
  fi

  local i
  for ((i = 0; i < 60; i++)); do
    amqp_up && break
    sleep 1
  done
  if ! amqp_up; then
    rabbit_log_tail
    die "RabbitMQ is not accepting connections on $AMQP_HOST:$AMQP_PORT after 60 s"
  fi
  if ! timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1; then
    rabbit_log_tail
    die "RabbitMQ listens on $AMQP_HOST:$AMQP_PORT but did not finish booting"
  fi
  log "RabbitMQ is ready"
}

# --- Chromium (the dashboard's browser test drives it with playwright-core) ----------------------

CHROMIUM=/usr/bin/chromium

ensure_chromium() {
  [[ -x $CHROMIUM ]] && return 0
  apt_install chromium
  [[ -x $CHROMIUM ]] || die "apt-get installed chromium but $CHROMIUM is missing"
  log "Chromium is installed"
}

if [[ ${1:-} == chromium ]]; then
  ensure_chromium
  exit 0
fi
ensure_postgres
ensure_rabbitmq
ensure_chromium
