#!/usr/bin/env bash
# Starts or stops the two local nisshi brokers that `make test` uses.
#
#   scripts/brokers.sh start   # prints `export ...` lines for the harness
#   scripts/brokers.sh stop    # ends the brokers this script started, by pid
#
# durable: sqlite storage (persists, compacts); fast: memory storage.
# State, logs and pid files live in target/herald-brokers/.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="$here/target/herald-brokers"
mkdir -p "$dir"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nisshi ($name) did not listen on 127.0.0.1:$port; see $dir/$name.log" >&2
  return 1
}

start_one() {
  local name=$1 engine=$2 port
  port=$(free_port)
  mkdir -p "$dir/$name"
  # The sqlite path in the storage URL is relative to the working directory.
  (cd "$dir/$name" && exec "$nisshi" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$engine" \
      --group-initial-rebalance-delay 100ms \
      --silent >"$dir/$name.log" 2>&1) &
  echo $! >"$dir/$name.pid"
  wait_port "$port" "$name"
  echo "127.0.0.1:$port" >"$dir/$name.addr"
}

stop_one() {
  local name=$1 pid
  [ -f "$dir/$name.pid" ] || return 0
  pid=$(cat "$dir/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/$name.pid" "$dir/$name.addr"
}

case "${1:-}" in
  start)
    nisshi=$("$here/scripts/ensure-nisshi.sh")
    stop_one durable; stop_one fast
    rm -rf "$dir/durable"
    start_one durable 'sqlite://herald.db?maintenance_interval=10s'
    start_one fast 'memory://herald/'
    echo "export HERALD_TEST_DURABLE_BOOTSTRAP=$(cat "$dir/durable.addr")"
    echo "export HERALD_TEST_FAST_BOOTSTRAP=$(cat "$dir/fast.addr")"
    echo "export HERALD_NISSHI_BIN=$nisshi"
    ;;
  stop)
    stop_one durable; stop_one fast
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2;;
esac
