#!/usr/bin/env bash
# Apache Kafka for the tests: the pinned release fetched with Maven, KRaft
# storage formatted, nodes started on loopback and stopped by pid.
#
#   scripts/kafka.sh fetch           # the jars into the cache (a second run fetches nothing)
#   scripts/kafka.sh start single    # one combined broker/controller
#   scripts/kafka.sh start cluster   # three combined nodes: replication 3, min.insync.replicas 2
#   scripts/kafka.sh stop [single|cluster]   # default: both
#   scripts/kafka.sh node cluster 2 stop|start   # one node of a running set (failure tests)
#
# `start` prints `export ...` lines for the harness:
#   HERALD_TEST_KAFKA_BOOTSTRAP (single) or HERALD_TEST_KAFKA3_BOOTSTRAP
#   (cluster), and HERALD_KAFKA_SCRIPT (this script, for node stop/start).
# Data, configs, logs and pid files live in target/herald-kafka/<set>/;
# each node's log is target/herald-kafka/<set>/node-<id>.log.
# Memory per node: heap HERALD_KAFKA_HEAP (default 256m), metaspace, code
# cache and direct memory bounded, index files 1 MB (Kafka maps them; at
# 10 MB each a node with Herald's ~250 partitions grew to ~780 MB).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/scripts/kafka/pom.xml")
cache="${HERALD_CACHE:-$HOME/.cache/herald}/kafka-$version"
libs="$cache/libs"
root="$here/target/herald-kafka"
heap="${HERALD_KAFKA_HEAP:-256m}"

fetch() {
  if [ -f "$cache/fetched" ]; then
    return 0
  fi
  command -v mvn >/dev/null || { echo "mvn is not installed (Maven 3, Java 17)" >&2; exit 1; }
  rm -rf "$libs"
  mkdir -p "$libs"
  (cd "$here/scripts/kafka" && mvn -q -B dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime) >&2
  touch "$cache/fetched"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

jopts=(-Xms128m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:MaxMetaspaceSize=128m -XX:ReservedCodeCacheSize=64m -XX:MaxDirectMemorySize=128m
  -XX:TieredStopAtLevel=1
  -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/scripts/kafka/log4j2.properties"
  -cp "$libs/*")

# The brokers a set should have, all registered (up to 90 s).
wait_brokers() {
  local set=$1 bootstrap=$2 n=$3
  if python3 - "$bootstrap" "$n" 2>/dev/null <<'EOF'
import sys, time
from confluent_kafka.admin import AdminClient
bootstrap, n = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
        if len(md.brokers) >= n:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(1)
EOF
  then
    return 0
  fi
  echo "Apache Kafka ($set) did not come up with $n brokers at $bootstrap; logs:" >&2
  for log in "$root/$set"/node-*.log; do
    echo "--- $log" >&2
    tail -n 40 "$log" >&2 || true
  done
  return 1
}

start_node() {
  local set=$1 id=$2
  local dir="$root/$set"
  (exec java "${jopts[@]}" kafka.Kafka "$dir/node-$id.properties" >>"$dir/node-$id.log" 2>&1) &
  echo $! >"$dir/node-$id.pid"
}

stop_node() {
  local set=$1 id=$2 signal=${3:-TERM} pid
  local file="$root/$set/node-$id.pid"
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_set() {
  local set=$1 id
  [ -d "$root/$set" ] || return 0
  for id in 1 2 3; do stop_node "$set" "$id"; done
  rm -f "$root/$set/bootstrap"
}

start_set() {
  local set=$1 n=$2 id rf isr voters="" listeners=()
  local dir="$root/$set"
  stop_set "$set"
  rm -rf "$dir"
  mkdir -p "$dir"
  rf=$n
  isr=$(( n > 1 ? 2 : 1 ))
  local ports=() controllers=()
  for id in $(seq 1 "$n"); do
    ports[$id]=$(free_port)
    controllers[$id]=$(free_port)
    voters+="${voters:+,}$id@127.0.0.1:${controllers[$id]}"
    listeners+=("127.0.0.1:${ports[$id]}")
  done
  local cluster_id
  cluster_id=$(java "${jopts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  for id in $(seq 1 "$n"); do
    cat >"$dir/node-$id.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${ports[$id]},CONTROLLER://127.0.0.1:${controllers[$id]}
advertised.listeners=PLAINTEXT://127.0.0.1:${ports[$id]}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data-$id
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.backoff.ms=1000
log.index.size.max.bytes=1048576
log.cleaner.dedupe.buffer.size=8388608
EOF
    java "${jopts[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" \
      -c "$dir/node-$id.properties" >>"$dir/node-$id.log" 2>&1
  done
  for id in $(seq 1 "$n"); do start_node "$set" "$id"; done
  local bootstrap
  bootstrap=$(IFS=,; echo "${listeners[*]}")
  echo "$bootstrap" >"$dir/bootstrap"
  wait_brokers "$set" "$bootstrap" "$n"
}

case "${1:-}" in
  fetch)
    fetch
    ;;
  start)
    fetch
    case "${2:-}" in
      single) start_set single 1; var=HERALD_TEST_KAFKA_BOOTSTRAP ;;
      cluster) start_set cluster 3; var=HERALD_TEST_KAFKA3_BOOTSTRAP ;;
      *) echo "usage: $0 start single|cluster" >&2; exit 2 ;;
    esac
    echo "export $var=$(cat "$root/$2/bootstrap")"
    echo "export HERALD_KAFKA_SCRIPT=$here/scripts/kafka.sh"
    ;;
  stop)
    case "${2:-all}" in
      single|cluster) stop_set "$2" ;;
      all) stop_set single; stop_set cluster ;;
      *) echo "usage: $0 stop [single|cluster]" >&2; exit 2 ;;
    esac
    ;;
  node)
    # scripts/kafka.sh node SET ID stop|kill|start
    set_name=${2:?set}; id=${3:?node id}
    case "${4:-}" in
      stop) stop_node "$set_name" "$id" TERM ;;
      kill) stop_node "$set_name" "$id" KILL ;;
      start) start_node "$set_name" "$id" ;;
      *) echo "usage: $0 node SET ID stop|kill|start" >&2; exit 2 ;;
    esac
    ;;
  *)
    echo "usage: $0 fetch | start single|cluster | stop [single|cluster] | node SET ID stop|kill|start" >&2
    exit 2
    ;;
esac
