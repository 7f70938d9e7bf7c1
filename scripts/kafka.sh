#!/usr/bin/env bash
# A local, single-node Apache Kafka (KRaft, broker + controller in one JVM) for development,
# tests and CI. Nothing here is for production.
#
#   scripts/kafka.sh start    fetch the jars (first run only), format storage (first run only),
#                             start the broker and wait until it answers
#   scripts/kafka.sh stop     stop the broker this script started
#   scripts/kafka.sh status   exit 0 if a broker answers on the port
#   scripts/kafka.sh fetch    only fetch the jars
#   scripts/kafka.sh kill     SIGKILL the broker this script started (a crash, for fault tests)
#   scripts/kafka.sh reset    stop and delete the broker's data (topics, offsets) and its
#                             test TLS material
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
#   KAFKA_NODE_ID          this broker's node id (default 1)
#   KAFKA_QUORUM_VOTERS    the KRaft voters, id@host:port,... (default this broker alone)
#   KAFKA_REPLICATION      replication factor of Kafka's internal topics (offsets, transaction
#                          state; default 1); their min.insync.replicas is a majority of it
#   KAFKA_CLUSTER_ID_FILE  where the cluster id is kept (default <state>/cluster-id); every
#                          broker of one cluster must be formatted with the same id
#   (scripts/kafka-cluster.sh sets the four above to run three of these brokers as one cluster.)
#   KAFKA_SASL_SSL_PORT    opt-in: also a SASL_SSL listener on this port (TLS with a throwaway CA,
#                          SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512). The CA, an untrusted
#                          second CA and the test user's password are written to
#                          <state>/tls-<KAFKA_PORT>/ (see `credentials` there) and printed.
#                          Test-only secrets. The broker's own listeners stay plaintext.
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
SASL_PORT="${KAFKA_SASL_SSL_PORT:-}"
TLS="$STATE/tls-$PORT"
NODE_ID="${KAFKA_NODE_ID:-1}"
VOTERS="${KAFKA_QUORUM_VOTERS:-$NODE_ID@127.0.0.1:$CPORT}"
REPLICATION="${KAFKA_REPLICATION:-1}"
MIN_ISR=$((REPLICATION / 2 + 1))
CLUSTER_ID_FILE="${KAFKA_CLUSTER_ID_FILE:-$STATE/cluster-id}"
CREDS="$TLS/credentials"

say() { echo "kafka.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether process $1 runs: `kill -0` also succeeds on a zombie, and the broker, orphaned once
# this script exits, stays one until PID 1 reaps it (some never do). Every thread counts: a
# JVM's main thread is a zombie while its other threads still exit, holding the ports.
alive() {
  local stat state
  for stat in /proc/"$1"/task/*/stat; do
    state="$(sed 's/.*) //' "$stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != [ZX] ]] && return 0
  done
  return 1
}

# Waits until process $1 is gone, checking $2 times, $3 seconds apart; false if it is not.
gone_within() {
  local _
  for _ in $(seq 1 "$2"); do
    alive "$1" || return 0
    sleep "$3"
  done
  ! alive "$1"
}

our_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  if [[ -n "$pid" ]] && alive "$pid" && grep -q kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null; then
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
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$SASL_PORT" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    advertised+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$PROPS" <<EOF
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DATA
num.partitions=4
auto.create.topics.enable=false
delete.topic.enable=true
# Internal topics must not ask for more replicas than there are brokers, or consumer groups and
# transactions hang: 1 for a single broker, 3 (min.insync.replicas 2) for kafka-cluster.sh's.
offsets.topic.replication.factor=$REPLICATION
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0
EOF
  if [[ -n "$SASL_PORT" ]]; then
    # TLS from PEM files (no JKS), SASL for clients only; the broker and controller talk
    # plaintext among themselves. PLAIN's users live in its JAAS line (Kafka has no tool for
    # them); SCRAM's are stored in the cluster metadata (format_storage, ensure_scram_users).
    cat >>"$PROPS" <<EOF
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker-keystore.pem
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=$TLS/ca.pem
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  fi
  # Written aside and moved into place: kafka-cluster.sh starts three brokers at once, and a
  # JVM reading a half-written file would log at ERROR only (and never say it started).
  cat >"$STATE/log4j2.properties.$$" <<'EOF'
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
  mv -f "$STATE/log4j2.properties.$$" "$STATE/log4j2.properties"
}

java_run() {
  java "-Xmx$HEAP" "-Xms256m" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$STATE/log4j2.properties" \
    -cp "$LIB/*" "$@"
}

format_storage() {
  [[ -f "$DATA/meta.properties" ]] && return 0
  local id_file="$CLUSTER_ID_FILE"
  if [[ ! -s "$id_file" ]]; then
    java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$id_file"
  fi
  say "formatting KRaft storage in $DATA"
  rm -rf "$DATA" && mkdir -p "$DATA"
  local scram=()
  if [[ -n "$SASL_PORT" ]]; then
    scram=(--add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]"
      --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]")
  fi
  java_run kafka.tools.StorageTool format -t "$(cat "$id_file")" -c "$PROPS" "${scram[@]}" >&2
  if [[ -n "$SASL_PORT" ]]; then
    scram_marker >"$DATA/.scram-users"
  fi
}

# Which credentials the data directory's SCRAM users were made from.
scram_marker() { sha256sum "$CREDS" | cut -c1-64; }

# A data directory formatted before the SASL_SSL listener was asked for (or with other
# credentials) gets its SCRAM users from Kafka's ConfigCommand (kafka-configs.sh), over the
# plaintext listener, once the broker runs.
ensure_scram_users() {
  [[ "$(cat "$DATA/.scram-users" 2>/dev/null)" == "$(scram_marker)" ]] && return 0
  say "creating the SCRAM users with kafka-configs (kafka.admin.ConfigCommand)"
  local mechanism
  # One mechanism per call: the broker refuses to alter a user's credentials twice in one request.
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    java_run kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" --alter \
      --entity-type users --entity-name "$KAFKA_SASL_USER" \
      --add-config "$mechanism=[password=$KAFKA_SASL_PASSWORD]" >&2
  done
  scram_marker >"$DATA/.scram-users"
}

# The test TLS material and credentials, made once per broker (reset deletes them): a throwaway
# CA, the broker's certificate for 127.0.0.1 and localhost signed by it, a second CA that signed
# nothing (for "untrusted certificate" tests) and a random password for the test user.
make_tls() {
  [[ -s "$CREDS" ]] && return 0
  command -v openssl >/dev/null || { say "openssl is required for the SASL_SSL listener"; exit 1; }
  local log="$STATE/openssl-$PORT.log"
  rm -rf "$TLS.tmp" && mkdir -p "$TLS.tmp"
  if ! make_tls_in "$TLS.tmp" 2>"$log"; then
    say "making the test certificates failed:"
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
  rm -rf "$TLS" && mv "$TLS.tmp" "$TLS"
}

# make_tls's work in directory $1, in a subshell (for the umask); `|| exit` on each step, because
# `set -e` does not apply inside a tested command.
make_tls_in() (
  t="$1"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825)
  umask 077
  openssl req -x509 "${ec[@]}" -keyout "$t/ca.key" -out "$t/ca.pem" \
    -subj "/O=collector tests/CN=throwaway test CA for the broker on port $PORT" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign || exit
  openssl req "${ec[@]}" -keyout "$t/broker.key" -out "$t/broker.csr" -subj "/CN=localhost" || exit
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$t/broker.ext"
  openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 825 -extfile "$t/broker.ext" -out "$t/broker.pem" || exit
  # Kafka's PEM keystore: the (PKCS#8) private key, then the certificate chain.
  cat "$t/broker.key" "$t/broker.pem" "$t/ca.pem" >"$t/broker-keystore.pem" || exit
  openssl req -x509 "${ec[@]}" -keyout "$t/untrusted-ca.key" -out "$t/untrusted-ca.pem" \
    -subj "/O=collector tests/CN=throwaway CA that signed nothing" || exit
  rm -f "$t/broker.csr" "$t/broker.ext" "$t/ca.srl" "$t/untrusted-ca.key"
  password="$(openssl rand -hex 16)" || exit
  cat >"$t/credentials" <<EOF
# Throwaway test credentials of scripts/kafka.sh's SASL_SSL listener; never use them elsewhere.
KAFKA_SASL_CA=$TLS/ca.pem
KAFKA_SASL_UNTRUSTED_CA=$TLS/untrusted-ca.pem
KAFKA_SASL_USER=collector
KAFKA_SASL_PASSWORD=$password
EOF
)

# How to reach the SASL_SSL listener, with the test-only secrets.
print_sasl() {
  say "SASL_SSL on 127.0.0.1:$SASL_PORT (mechanisms PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
  say "  CA certificate:  $KAFKA_SASL_CA (a CA that signed nothing: $KAFKA_SASL_UNTRUSTED_CA)"
  say "  user, password:  $KAFKA_SASL_USER, $KAFKA_SASL_PASSWORD (a throwaway test secret; also in $CREDS)"
  say "  e.g. collector run --brokers 127.0.0.1:$SASL_PORT -X security.protocol=SASL_SSL \\"
  say "         -X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=$KAFKA_SASL_USER \\"
  say "         -X sasl.password=$KAFKA_SASL_PASSWORD -X ssl.ca.location=$KAFKA_SASL_CA"
}

start() {
  if [[ -n "$SASL_PORT" ]]; then
    mkdir -p "$STATE"
    make_tls
    # shellcheck disable=SC1090
    source "$CREDS"
  fi
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then
      say "already running (pid $pid) on 127.0.0.1:$PORT"
      if [[ -n "$SASL_PORT" ]]; then
        port_open "$SASL_PORT" || { say "but without a SASL_SSL listener on $SASL_PORT: stop it, then start it again"; return 1; }
        print_sasl
      fi
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
  until port_open "$PORT" && grep -q "Kafka Server started" "$LOG" && { [[ -z "$SASL_PORT" ]] || port_open "$SASL_PORT"; }; do
    if ! alive "$(cat "$PIDFILE")"; then
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
  if [[ -n "$SASL_PORT" ]]; then
    ensure_scram_users
    print_sasl
  fi
}

# SIGKILL, no shutdown: what a crash or a pulled plug leaves (the data directory as it was).
crash() {
  local pid
  if ! pid="$(our_pid)"; then
    say "not running (nothing started by this script on port $PORT)"
    return 0
  fi
  say "killing Kafka (pid $pid) with SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  gone_within "$pid" 100 0.1 || true
  rm -f "$PIDFILE"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    say "not running (nothing started by this script on port $PORT)"
    return 0
  fi
  say "stopping Kafka (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! gone_within "$pid" 60 0.5; then
    say "Kafka did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) crash ;;
  status) port_open "$PORT" && say "a broker answers on 127.0.0.1:$PORT" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$DATA" "$LOG" "$PROPS" "$TLS"; say "deleted $DATA" ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
