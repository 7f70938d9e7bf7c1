#!/usr/bin/env bash
# A local, single-node Apache Kafka (KRaft, broker + controller in one JVM) for development,
# tests and CI. Nothing here is for production.
#
#   scripts/kafka.sh start    fetch the jars (first run only), format storage (first run only),
#                             start the broker and wait until it answers
#   scripts/kafka.sh stop     stop the broker this script started
#   scripts/kafka.sh status   exit 0 if a broker answers on the port
#   scripts/kafka.sh fetch    only fetch the jars
#   scripts/kafka.sh reset    stop and delete the broker's data (topics, offsets)
#
# Idempotent: `start` on a running broker is a no-op, a stale pid file is ignored, an existing
# data directory is reused. Everything lives in the git-ignored `.kafka/` of the project.
#
# Environment:
#   KAFKA_PORT             client port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   KAFKA_STATE_DIR        where jars, data, logs and the pid live (default <project>/.kafka)
#   KAFKA_HEAP             JVM heap (default 1g)
#   KAFKA_START_TIMEOUT_S  how long `start` waits for the broker (default 120)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
STATE="${KAFKA_STATE_DIR:-$ROOT/.kafka}"
HEAP="${KAFKA_HEAP:-1g}"
START_TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-120}"
POM="$ROOT/scripts/kafka/pom.xml"
# The version lives in the pom; the marker makes a version bump refetch.
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
LIB="$STATE/lib"
DATA="$STATE/data-$PORT"
PIDFILE="$STATE/kafka-$PORT.pid"
LOG="$STATE/kafka-$PORT.log"
PROPS="$STATE/server-$PORT.properties"

say() { echo "kafka.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

our_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
    return 0
  fi
  say "removing stale pid file $PIDFILE"
  rm -f "$PIDFILE"
  return 1
}

fetch() {
  local marker="$LIB/.complete-$VERSION"
  [[ -f "$marker" ]] && return 0
  say "fetching Apache Kafka $VERSION from Maven Central into $LIB (first run only)"
  command -v mvn >/dev/null || { say "mvn is required to fetch Kafka"; exit 1; }
  command -v java >/dev/null || { say "java (17+) is required to run Kafka"; exit 1; }
  rm -rf "$LIB.tmp"
  mkdir -p "$STATE"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIB.tmp" >&2
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  touch "$marker"
}

write_config() {
  mkdir -p "$DATA"
  cat >"$PROPS" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=4
auto.create.topics.enable=false
delete.topic.enable=true
# A single broker: internal topics must not ask for more replicas than exist, or consumer
# groups and transactions hang.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$STATE/log4j2.properties" <<'EOF'
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.org.name = org.apache.kafka
logger.org.level = WARN
EOF
}

java_run() {
  java "-Xmx$HEAP" "-Xms256m" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$STATE/log4j2.properties" \
    -cp "$LIB/*" "$@"
}

format_storage() {
  [[ -f "$DATA/meta.properties" ]] && return 0
  local id_file="$STATE/cluster-id"
  if [[ ! -s "$id_file" ]]; then
    java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$id_file"
  fi
  say "formatting KRaft storage in $DATA"
  rm -rf "$DATA" && mkdir -p "$DATA"
  java_run kafka.tools.StorageTool format -t "$(cat "$id_file")" -c "$PROPS" >&2
}

start() {
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then
      say "already running (pid $pid) on 127.0.0.1:$PORT"
      return 0
    fi
  elif port_open "$PORT"; then
    say "something else already listens on 127.0.0.1:$PORT; assuming it is a Kafka broker and leaving it alone"
    return 0
  fi
  fetch
  write_config
  format_storage
  say "starting Kafka $VERSION on 127.0.0.1:$PORT (log: $LOG)"
  # setsid: the broker must not die with the shell that started it (or take its signals).
  setsid nohup bash -c "exec java -Xmx$HEAP -Xms256m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile='$STATE/log4j2.properties' -cp '$LIB/*' kafka.Kafka '$PROPS'" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local waited=0
  until port_open "$PORT" && grep -q "Kafka Server started" "$LOG"; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      say "Kafka exited during start-up; last lines of $LOG:"
      tail -n 40 "$LOG" >&2
      rm -f "$PIDFILE"
      return 1
    fi
    if ((waited >= START_TIMEOUT_S * 2)); then
      say "Kafka did not answer within ${START_TIMEOUT_S}s; last lines of $LOG:"
      tail -n 40 "$LOG" >&2
      stop
      return 1
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  say "Kafka is up on 127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    say "not running (nothing started by this script on port $PORT)"
    return 0
  fi
  say "stopping Kafka (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "Kafka did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) port_open "$PORT" && say "a broker answers on 127.0.0.1:$PORT" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$DATA" "$LOG" "$PROPS"; say "deleted $DATA" ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
