#!/usr/bin/env bash
# Starts and stops the real Redis servers the integration tests use, on
# loopback ports, with no persistence.
#
#   scripts/redis-topology.sh standalone up     # prints TOKENCACHE_REDIS_ADDR=127.0.0.1:PORT
#   scripts/redis-topology.sh standalone down
#
# State (pid files, logs) lives in $TOKENCACHE_TOPOLOGY_DIR (default
# /tmp/tokencache-topology). Needs redis-server and redis-cli (Debian's
# redis-server package); .ci/run installs them.
set -euo pipefail

topology=${1:?usage: $0 standalone up|down}
action=${2:?usage: $0 standalone up|down}
dir=${TOKENCACHE_TOPOLOGY_DIR:-/tmp/tokencache-topology}/$topology

free_port() { # the first port from $1 on which nothing answers
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

start_server() { # name port [extra redis-server args...]
  local name=$1 port=$2; shift 2
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/$name.pid" --logfile "$dir/$name.log" --dir "$dir" "$@"
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis $name on port $port did not start; log:" >&2
  cat "$dir/$name.log" >&2
  return 1
}

stop_all() {
  [ -d "$dir" ] || return 0
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "$topology/$action" in
standalone/up)
  stop_all
  mkdir -p "$dir"
  port=$(free_port 16379)
  start_server standalone "$port"
  echo "TOKENCACHE_REDIS_ADDR=127.0.0.1:$port"
  ;;
standalone/down)
  stop_all
  ;;
*)
  echo "usage: $0 standalone up|down" >&2
  exit 2
  ;;
esac
