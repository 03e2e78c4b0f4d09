# shellcheck shell=bash
# Shell helpers shared by the scripts that start a server (e2e.sh, bench.sh, bench-peer.sh).
# Source it after defining `log`.

# Prints N free TCP ports of 127.0.0.1, space-separated (all bound at once, so distinct).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
PY
}

# wait_ready URL PID NAME: waits until URL answers 2xx, at most 60 s; fails (with a log line)
# if the process PID exits first or the time runs out.
wait_ready() {
  local url=$1 pid=$2 name=$3 deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited before becoming ready"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name not ready after 60 s ($url)"
      return 1
    fi
    sleep 0.25
  done
}
