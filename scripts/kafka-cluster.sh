#!/usr/bin/env bash
# A local three-broker Apache Kafka cluster (KRaft; each JVM a broker and one of three
# controller voters) for the replication tests and measurements. Each broker is a
# scripts/kafka.sh broker with its own ports, data directory, log and pid file; Kafka's internal
# topics (consumer offsets, transaction state) are replicated three times with
# min.insync.replicas 2, so the cluster keeps working with any one broker down.
#
#   scripts/kafka-cluster.sh start           fetch the jars (first run only), format (first run
#                                            only), start the three brokers, wait until all answer
#   scripts/kafka-cluster.sh stop            stop the three brokers
#   scripts/kafka-cluster.sh reset           kill them (SIGKILL) and delete the cluster's data
#   scripts/kafka-cluster.sh status          exit 0 if all three answer
#   scripts/kafka-cluster.sh brokers         print the bootstrap list (host:port,...)
#   scripts/kafka-cluster.sh start-broker N  start broker N (1-3) again, wait until it answers
#   scripts/kafka-cluster.sh stop-broker N   stop broker N cleanly (SIGTERM, as a rolling restart)
#   scripts/kafka-cluster.sh kill-broker N   SIGKILL broker N (a crash)
#   scripts/kafka-cluster.sh port N          print broker N's client port
#
# Topics the collector creates get their replication from its own flags
# (--topic-replication 3 --topic-min-insync-replicas 2); the brokers' defaults stay Kafka's.
#
# Environment:
#   KAFKA_CLUSTER_PORT  first port (default 9392): broker N listens for clients on
#                       PORT+2(N-1) and for its controller quorum on PORT+2(N-1)+1
#   KAFKA_HEAP          JVM heap per broker (default 512m)
#   KAFKA_STATE_DIR     as for scripts/kafka.sh (default <project>/.kafka); the jars are shared
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${KAFKA_CLUSTER_PORT:-9392}"
STATE="${KAFKA_STATE_DIR:-$ROOT/.kafka}"
ID_FILE="$STATE/cluster-$BASE-id"
NODES=(1 2 3)

say() { echo "kafka-cluster.sh: $*" >&2; }

port() { echo $((BASE + 2 * ($1 - 1))); }
controller_port() { echo $((BASE + 2 * ($1 - 1) + 1)); }

voters() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("$n@127.0.0.1:$(controller_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

brokers() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("127.0.0.1:$(port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

# scripts/kafka.sh for broker $1, with the remaining arguments.
broker() {
  local n="$1"
  shift
  KAFKA_PORT="$(port "$n")" KAFKA_CONTROLLER_PORT="$(controller_port "$n")" KAFKA_NODE_ID="$n" \
    KAFKA_QUORUM_VOTERS="$(voters)" KAFKA_REPLICATION=3 KAFKA_CLUSTER_ID_FILE="$ID_FILE" \
    KAFKA_HEAP="${KAFKA_HEAP:-512m}" KAFKA_STATE_DIR="$STATE" KAFKA_SASL_SSL_PORT= \
    "$ROOT/scripts/kafka.sh" "$@"
}

node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || { say "which broker? 1, 2 or 3"; exit 2; }
}

start() {
  "$ROOT/scripts/kafka.sh" fetch
  mkdir -p "$STATE"
  if [[ ! -s "$ID_FILE" ]]; then
    # A Kafka cluster id: 16 random bytes, base64url without padding (as StorageTool random-uuid),
    # never starting with '-' (Kafka's own ids avoid it too: kafka-storage would read the id as
    # an option, and one start in 64 failed so in CI).
    local id
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    while [[ "$id" == -* ]]; do
      id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    echo "$id" >"$ID_FILE"
  fi
  # All at once: a broker's start-up waits for the controller quorum, which needs two voters.
  local n pids=() failed=0
  for n in "${NODES[@]}"; do
    broker "$n" start &
    pids+=($!)
  done
  for n in "${!pids[@]}"; do
    wait "${pids[$n]}" || failed=1
  done
  if ((failed)); then
    say "a broker did not start; stopping the others"
    stop
    return 1
  fi
  say "three brokers up: $(brokers)"
}

# All at once: a broker stopping last, its quorum already gone, would wait out its timeout.
stop() {
  local n pids=()
  for n in "${NODES[@]}"; do
    broker "$n" stop &
    pids+=($!)
  done
  for n in "${!pids[@]}"; do wait "${pids[$n]}" || true; done
}

status() {
  local n
  for n in "${NODES[@]}"; do
    broker "$n" status || return 1
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset)
    # SIGKILL first: the data is deleted anyway, and a clean stop of the last broker waits 30 s
    # for a controller quorum that left with the other two.
    for n in "${NODES[@]}"; do broker "$n" kill; done
    for n in "${NODES[@]}"; do broker "$n" reset; done
    rm -f "$ID_FILE"
    ;;
  status) status ;;
  brokers) brokers ;;
  start-broker) node_arg "${2:-}"; broker "$2" start ;;
  stop-broker) node_arg "${2:-}"; broker "$2" stop ;;
  kill-broker) node_arg "${2:-}"; broker "$2" kill ;;
  port) node_arg "${2:-}"; port "$2" ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
