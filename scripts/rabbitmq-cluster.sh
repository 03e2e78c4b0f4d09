#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, beside (never instead of) its own node.
#
#   scripts/rabbitmq-cluster.sh start [--busy-wait on|off]   start the missing nodes, join them
#   scripts/rabbitmq-cluster.sh stop                          stop every node, remove their data
#   scripts/rabbitmq-cluster.sh status                        each node: running or not, members
#   scripts/rabbitmq-cluster.sh urls                          the AMQP URLs, comma-separated
#   scripts/rabbitmq-cluster.sh ctl N ARGS...                 rabbitmqctl ARGS against node N
#   scripts/rabbitmq-cluster.sh queues N ARGS...              rabbitmq-queues ARGS against node N
#   scripts/rabbitmq-cluster.sh pid N                         the OS pid of node N's Erlang VM
#   scripts/rabbitmq-cluster.sh kill N                        kill -9 node N (fault injection)
#
# Nodes sb-rmq-1@localhost .. sb-rmq-3@localhost listen for AMQP on 127.0.0.1:$SB_RMQ_PORT_BASE+N
# (5681-5683 by default), for Erlang distribution on 127.0.0.1:25681-25683, and register with an
# epmd of their own on 127.0.0.1:$SB_RMQ_EPMD_PORT (4380): nothing is shared with the machine's
# node (rabbit@localhost, 5672, epmd 4369), its files or its cookie. Everything the cluster keeps
# (config, enabled plugins, cookie, data, logs) lives under $SB_RMQ_DIR (the repo's
# target/rabbitmq-cluster/ by default). The management plugin is not enabled.
#
# `start` is idempotent: it starts only nodes that are not running (a node killed with `kill`
# comes back with its data and rejoins), waits until each one has booted, and joins a fresh node
# to node 1 with `rabbitmqctl join_cluster`; it returns once all three are running members.
# `stop` stops every node (gracefully, then kill -9 past a deadline), stops the cluster's epmd
# and removes the data, so the next `start` makes a fresh cluster; afterwards nothing of the
# cluster runs. `--busy-wait off` starts the VMs with `+sbwt none +sbwtdcpu none +sbwtdio none`
# (scheduler busy-waiting off, which RabbitMQ 3.10's own start script also chooses by default);
# `on` with Erlang's default threshold (`medium`), for measurements. It applies to the nodes this
# `start` starts.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${SB_RMQ_DIR:-$ROOT/target/rabbitmq-cluster}
PORT_BASE=${SB_RMQ_PORT_BASE:-5680}
EPMD_PORT=${SB_RMQ_EPMD_PORT:-4380}
NODES=(1 2 3)
RABBIT_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
START_TIMEOUT=${SB_RMQ_START_TIMEOUT:-120}

log() { echo "rabbitmq-cluster: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

node_name() { echo "sb-rmq-$1@localhost"; }
amqp_port() { echo $((PORT_BASE + $1)); }
dist_port() { echo $((PORT_BASE + $1 + 20000)); }
node_dir() { echo "$DIR/node-$1"; }

[[ -x $RABBIT_BIN/rabbitmq-server ]] || die "RabbitMQ is not installed ($RABBIT_BIN/rabbitmq-server)"

# Runs a command with the environment every RabbitMQ script (server and CLI) gets for node N:
# its own files, the cluster's cookie (in HOME), epmd port and CLI distribution ports; nothing
# from /etc/rabbitmq.
with_node_env() {
  local n=$1 d
  shift
  d=$(node_dir "$n")
  (
    export HOME="$DIR/home" \
      ERL_EPMD_PORT="$EPMD_PORT" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
      RABBITMQ_NODENAME="$(node_name "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
      RABBITMQ_DIST_PORT="$(dist_port "$n")" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_MNESIA_DIR="$d/mnesia/$(node_name "$n")" \
      RABBITMQ_LOG_BASE="$d/log" \
      RABBITMQ_CTL_DIST_PORT_MIN=$((PORT_BASE + 30100)) \
      RABBITMQ_CTL_DIST_PORT_MAX=$((PORT_BASE + 30140))
    exec "$@"
  )
}

# Runs a RabbitMQ CLI tool against node N.
cli() {
  local tool=$1 n=$2
  shift 2
  with_node_env "$n" "$RABBIT_BIN/$tool" -n "$(node_name "$n")" "$@"
}

ctl() { cli rabbitmqctl "$@"; }

# The OS pid of node N's Erlang VM: a beam.smp whose environment names this node and this
# cluster's HOME (RabbitMQ 3.10 writes no pid file in the foreground, and the node name is not
# on the command line), so nothing else is ever signalled.
pid_of() {
  local pid env
  for pid in $(pgrep -x beam.smp); do
    env=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null) || continue
    if grep -qx "RABBITMQ_NODENAME=$(node_name "$1")" <<<"$env" &&
      grep -qx "HOME=$DIR/home" <<<"$env"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

running() { pid_of "$1" >/dev/null; }

# Whether node N answers (booted, the rabbit app running).
booted() { ctl "$1" -q await_startup --timeout 1 >/dev/null 2>&1; }

prepare_files() {
  local n=$1 d
  d=$(node_dir "$n")
  mkdir -p "$d/mnesia" "$d/log" "$DIR/home"
  if [[ ! -s $DIR/home/.erlang.cookie ]]; then
    # One cookie for the three nodes and the CLI, never the machine's.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$DIR/home/.erlang.cookie"
    chmod 400 "$DIR/home/.erlang.cookie"
  fi
  : >"$DIR/rabbitmq-env.conf"
  echo '[].' >"$d/enabled_plugins"
  echo '[].' >"$d/advanced.config"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
cluster_partition_handling = pause_minority
log.file.level = info
log.console = false
EOF
}

start_node() {
  local n=$1 busy_wait=$2 threshold
  prepare_files "$n"
  threshold=none
  [[ $busy_wait == on ]] && threshold=medium
  log "starting $(node_name "$n") (AMQP 127.0.0.1:$(amqp_port "$n"), busy-wait $busy_wait)"
  (
    cd "$(node_dir "$n")"
    RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD=$threshold with_node_env "$n" \
      setsid "$RABBIT_BIN/rabbitmq-server"
  ) </dev/null >>"$(node_dir "$n")/log/stdout.log" 2>&1 &
  disown
}

wait_booted() {
  local n=$1 deadline=$((SECONDS + START_TIMEOUT))
  until booted "$n"; do
    ((SECONDS < deadline)) || die "$(node_name "$n") did not boot within ${START_TIMEOUT}s (see $(node_dir "$n")/log)"
    sleep 0.5
  done
}

# The running members of the cluster as node N sees them.
members() {
  ctl "$1" -q cluster_status --formatter json 2>/dev/null |
    grep -o '"running_nodes":\[[^]]*\]' | grep -o 'sb-rmq-[0-9]@localhost' || true
}

is_member() {
  local n=$1
  members 1 | grep -qx "$(node_name "$n")"
}

join() {
  local n=$1
  log "joining $(node_name "$n") to $(node_name 1)"
  local out
  out="$(node_dir "$n")/log/join.log"
  {
    ctl "$n" -q stop_app &&
      ctl "$n" -q reset &&
      ctl "$n" -q join_cluster "$(node_name 1)" &&
      ctl "$n" -q start_app
  } >>"$out" 2>&1 || die "$(node_name "$n") could not join (see $out)"
}

cmd_start() {
  local busy_wait=off
  while (($#)); do
    case $1 in
    --busy-wait)
      busy_wait=${2:-}
      shift 2 || die "--busy-wait needs on or off"
      ;;
    --busy-wait=*)
      busy_wait=${1#*=}
      shift
      ;;
    *) die "unknown option $1" ;;
    esac
  done
  [[ $busy_wait == on || $busy_wait == off ]] || die "--busy-wait is on or off, not $busy_wait"
  local n
  for n in "${NODES[@]}"; do
    running "$n" || start_node "$n" "$busy_wait"
  done
  for n in "${NODES[@]}"; do
    wait_booted "$n"
  done
  for n in "${NODES[@]:1}"; do
    is_member "$n" || join "$n"
  done
  local deadline=$((SECONDS + START_TIMEOUT))
  until [[ $(members 1 | wc -l) -eq ${#NODES[@]} ]]; do
    ((SECONDS < deadline)) || die "the cluster did not form: $(members 1 | tr '\n' ' ')"
    sleep 0.5
  done
  log "running: $(cmd_urls)"
}

stop_node() {
  local n=$1 pid deadline
  pid=$(pid_of "$n") || return 0
  log "stopping $(node_name "$n")"
  ctl "$n" -q stop >/dev/null 2>&1 || true
  deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$(node_name "$n") did not stop within 30 s: kill -9"
      kill -9 "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
}

cmd_stop() {
  local n
  for n in 3 2 1; do
    stop_node "$n"
  done
  # The cluster's own epmd (only ever started for these nodes, on its own port).
  epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  rm -rf "$DIR"/node-*/mnesia
  log "stopped"
}

cmd_status() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "$(node_name "$n") running pid $(pid_of "$n") amqp://127.0.0.1:$(amqp_port "$n")"
    else
      echo "$(node_name "$n") not running"
    fi
  done
  for n in "${NODES[@]}"; do
    if running "$n" && booted "$n"; then
      echo "members: $(members "$n" | tr '\n' ' ')"
      return 0
    fi
  done
  echo "members: none"
  return 3
}

cmd_urls() {
  local n urls=()
  for n in "${NODES[@]}"; do
    urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
  done
  (
    IFS=,
    echo "${urls[*]}"
  )
}

node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "name a node: 1, 2 or 3"
}

case ${1:-} in
start)
  shift
  cmd_start "$@"
  ;;
stop) cmd_stop ;;
status) cmd_status ;;
urls) cmd_urls ;;
ctl)
  node_arg "${2:-}"
  n=$2
  shift 2
  ctl "$n" "$@"
  ;;
queues)
  node_arg "${2:-}"
  n=$2
  shift 2
  cli rabbitmq-queues "$n" "$@"
  ;;
pid)
  node_arg "${2:-}"
  pid_of "$2" || die "$(node_name "$2") is not running"
  ;;
kill)
  node_arg "${2:-}"
  pid=$(pid_of "$2") || die "$(node_name "$2") is not running"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  log "killed $(node_name "$2") (pid $pid)"
  ;;
*)
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
