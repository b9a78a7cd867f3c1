#!/usr/bin/env bash
# Starts and stops the real Redis servers the integration tests use, on
# loopback ports, with no persistence. "up" prints the environment the tests
# read, one VAR=value a line.
#
#   scripts/redis-topology.sh standalone up   # one server: TOKENCACHE_REDIS_ADDR
#   scripts/redis-topology.sh cluster up      # 3 primaries: TOKENCACHE_REDIS_CLUSTER=a,b,c
#   scripts/redis-topology.sh sentinel up     # primary, replica, 3 sentinels:
#                                             #   TOKENCACHE_REDIS_SENTINEL=a,b,c
#                                             #   TOKENCACHE_REDIS_SENTINEL_MASTER=mymaster
#                                             #   TOKENCACHE_REDIS_SENTINEL_PIDFILE=... (the primary's)
#   scripts/redis-topology.sh TOPOLOGY down
#
# State (pid files, logs) lives in $TOKENCACHE_TOPOLOGY_DIR (default
# /tmp/tokencache-topology). Sentinels declare a silent primary down after
# $TOKENCACHE_SENTINEL_DOWN_AFTER_MS (default 3000: a busy CI machine must
# not cause failovers; the failover test sets 1000). Needs redis-server,
# redis-sentinel and redis-cli (Debian's packages); .ci/run installs them.
set -euo pipefail

usage="usage: $0 standalone|cluster|sentinel up|down"
topology=${1:?$usage}
action=${2:?$usage}
dir=${TOKENCACHE_TOPOLOGY_DIR:-/tmp/tokencache-topology}/$topology

free_port() { # the first port from $1 on which nothing answers
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

wait_ping() { # name port
  for _ in $(seq 100); do
    redis-cli -p "$2" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis $1 on port $2 did not start; log:" >&2
  cat "$dir/$1.log" >&2
  return 1
}

start_server() { # name port [extra redis-server args...]
  local name=$1 port=$2; shift 2
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/$name.pid" --logfile "$dir/$name.log" --dir "$dir" "$@"
  wait_ping "$name" "$port"
}

start_sentinel() { # name port primary-port
  local name=$1 port=$2 primary=$3
  cat >"$dir/$name.conf" <<CONF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/$name.pid
logfile $dir/$name.log
dir $dir
sentinel monitor mymaster 127.0.0.1 $primary 2
sentinel down-after-milliseconds mymaster ${TOKENCACHE_SENTINEL_DOWN_AFTER_MS:-3000}
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
CONF
  redis-sentinel "$dir/$name.conf"
  wait_ping "$name" "$port"
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
cluster/up)
  stop_all
  rm -rf "$dir" && mkdir -p "$dir"
  nodes=()
  port=17000
  for i in 1 2 3; do
    port=$(free_port "$port")
    # The cluster bus listens on port+10000: skip ports whose bus is taken.
    while (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; do port=$(free_port $((port + 1))); done
    start_server "node$i" "$port" --cluster-enabled yes --cluster-config-file "$dir/nodes$i.conf" --cluster-node-timeout 2000
    nodes+=("127.0.0.1:$port")
    port=$((port + 1))
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    { cat "$dir/create.log" >&2; exit 1; }
  for _ in $(seq 100); do
    ok=1
    for n in "${nodes[@]}"; do
      redis-cli -p "${n##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "cluster did not reach state ok" >&2; exit 1; }
  (IFS=,; echo "TOKENCACHE_REDIS_CLUSTER=${nodes[*]}")
  ;;
sentinel/up)
  stop_all
  rm -rf "$dir" && mkdir -p "$dir"
  primary=$(free_port 18000)
  start_server primary "$primary"
  replica=$(free_port $((primary + 1)))
  start_server replica "$replica" --replicaof 127.0.0.1 "$primary"
  sentinels=()
  port=$((replica + 1))
  for i in 1 2 3; do
    port=$(free_port "$port")
    start_sentinel "sentinel$i" "$port" "$primary"
    sentinels+=("127.0.0.1:$port")
    port=$((port + 1))
  done
  # Ready when the replica is in sync and every sentinel knows it.
  for _ in $(seq 150); do
    ok=1
    redis-cli -p "$replica" info replication | grep -q 'master_link_status:up' || ok=0
    for s in "${sentinels[@]}"; do
      [ "$(redis-cli -p "${s##*:}" sentinel replicas mymaster 2>/dev/null | grep -c "^$replica$")" -ge 1 ] || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.2
  done
  [ "$ok" = 1 ] || { echo "sentinel topology not ready" >&2; exit 1; }
  (IFS=,; echo "TOKENCACHE_REDIS_SENTINEL=${sentinels[*]}")
  echo "TOKENCACHE_REDIS_SENTINEL_MASTER=mymaster"
  ;;
*/down)
  stop_all
  ;;
*)
  echo "$usage" >&2
  exit 2
  ;;
esac
