#!/usr/bin/env bash
# Runs the topology of docker-compose.yml as plain processes on loopback:
# Redis, examples/fakeupstream, and three extra/otel/examples/server
# instances. It asks every instance for the token a few times, checks that
# they all serve the same one, that the upstream issued one token, and that
# the fetches the instances report on /metrics (OpenTelemetry, Prometheus
# format) add up to the upstream's own count; prints what it saw, and stops
# everything. Needs redis-server and curl; exits non-zero if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
wait_http() { # url
  for _ in $(seq 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "compose-local: $1 did not come up" >&2
  return 1
}

# The server is in a module of its own (OpenTelemetry stays out of the core).
(cd extra/otel && go build -o "$work/server" ./examples/server)
go build -o "$work/fakeupstream" ./examples/fakeupstream

redis_port=$(free_port 16400)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
up_port=$(free_port 19000)
LISTEN=127.0.0.1:$up_port "$work/fakeupstream" -lifetime 30s -latency 50ms 2>"$work/upstream.log" &
pids+=($!)
wait_http "http://127.0.0.1:$up_port/stats"

ports=()
for i in 1 2 3; do
  port=$(free_port $((18080 + i)))
  REDIS_ADDR=127.0.0.1:$redis_port UPSTREAM_URL=http://127.0.0.1:$up_port LISTEN=127.0.0.1:$port INSTANCE=app$i \
    "$work/server" 2>"$work/app$i.log" &
  pids+=($!)
  ports+=("$port")
done
for port in "${ports[@]}"; do wait_http "http://127.0.0.1:$port/healthz"; done

# All instances at once, several rounds.
for round in 1 2 3; do
  curls=()
  for port in "${ports[@]}"; do
    curl -fsS "http://127.0.0.1:$port/token" >"$work/token-$round-$port.json" &
    curls+=($!)
  done
  wait "${curls[@]}"
done
cat "$work"/token-*.json >"$work/tokens.json"

cat "$work/tokens.json"
distinct=$(grep -o '"fingerprint":"[^"]*"' "$work/tokens.json" | sort -u | wc -l)
invalid=$(grep -c '"valid":false' "$work/tokens.json" || true)
stats=$(curl -fsS "http://127.0.0.1:$up_port/stats")
echo "upstream: $stats"
# The cluster's successful fetches, as each instance reports them on /metrics.
fetched=0
for port in "${ports[@]}"; do
  curl -fsS "http://127.0.0.1:$port/metrics" >"$work/metrics-$port.txt"
  grep '^tokencache_fetches_total{' "$work/metrics-$port.txt" | sed "s/^/127.0.0.1:$port /" || true
  n=$(awk '/^tokencache_fetches_total\{/ && /tokencache_fetch_outcome="ok"/ { s += $NF } END { printf "%d", s }' "$work/metrics-$port.txt")
  fetched=$((fetched + n))
done
echo "compose-local: ${#ports[@]} instances, $distinct distinct token(s), $invalid invalid, $fetched fetch(es) on /metrics"
issued=$(echo "$stats" | grep -o '"issued":[0-9]*' | cut -d: -f2)
if [ "$distinct" != 1 ] || [ "$issued" != 1 ] || [ "$invalid" != 0 ] || [ "$fetched" != "$issued" ]; then
  echo "compose-local: FAILED: want one token, one upstream fetch, no invalid token, and the fetches on /metrics to add up to the upstream's count" >&2
  for f in "$work"/app*.log; do echo "== $f" >&2; cat "$f" >&2; done
  exit 1
fi
echo "compose-local: ok"
