#!/usr/bin/env bash
# The scenario runner: the collector's HTTP throughput next to the floor (a do-nothing axum
# handler), every figure measured in this one run, then one table.
#
#   loadtest/bench.sh                  # 20 s per measurement (six of them), about 3 minutes
#   QUICK=1 loadtest/bench.sh          # 5 s per measurement
#   DURATION=30 loadtest/bench.sh      # seconds per measurement
#
# Scenarios (1 event per request unless said; 64 connections; closed loop, max rate):
#   S1 floor     the floor, 1 event/request
#   S1 WAL only  `collector serve` with the broker unreachable: ingest + WAL, nothing delivered
#   S1 pipeline  `collector run` with Kafka (exactly-once), then `loadgen verify`: every
#                acknowledged event in the rows topic exactly once, within 10 s of the load's end
#   S2 floor     the floor, 50 events/request
#   S2 batch     `collector run` with Kafka, 50 events/request
#
# Starts a Kafka on KAFKA_PORT (default 9692, controller KAFKA_CONTROLLER_PORT 9693) if none
# answers there, and stops it again. Each collector gets a fresh WAL in a temporary directory and
# fresh topics (`bench-<time>-<scenario>-raw/-rows/-dlq`, the roles of collect-topic1/2 and the
# dead-letter topic), so one run never sees another's data or consumer group. Every process it
# starts is stopped by its pid. Reports (JSON and HTML per run, acknowledged ids, the table as
# markdown) go to REPORT_DIR (default loadtest/reports/<time>/).
#
# The machine is shared (2 cores; the generator, the server and the broker share them): absolute
# figures drift between runs, ratios to the floor of the same run hold.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then DURATION="${DURATION:-5}"; else DURATION="${DURATION:-20}"; fi
CONNECTIONS="${CONNECTIONS:-64}"
export KAFKA_PORT="${KAFKA_PORT:-9692}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9693}"
BROKERS="127.0.0.1:$KAFKA_PORT"
# Nothing listens here: the WAL-only scenario's unreachable broker.
CLOSED_BROKER="${CLOSED_BROKER:-127.0.0.1:9}"
FLOOR_PORT="${FLOOR_PORT:-18590}"
COLLECTOR_PORT="${COLLECTOR_PORT:-18591}"
ADMIN_PORT="${ADMIN_PORT:-18592}"
STAMP="$(date +%Y%m%d-%H%M%S)"
REPORT_DIR="${REPORT_DIR:-$ROOT/loadtest/reports/$STAMP}"
TARGET="${CARGO_TARGET_DIR:-}"
COLLECTOR_BIN="${TARGET:-$ROOT/target}/release/collector"
LOADGEN_BIN="${TARGET:-$ROOT/loadtest/loadgen/target}/release/loadgen"

say() { echo "bench.sh: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

WORK="$(mktemp -d)"
mkdir -p "$REPORT_DIR"
floor_pid=""
collector_pid=""
started_kafka=0
cleanup() {
  for p in $collector_pid $floor_pid; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop; fi
}
trap cleanup EXIT

for p in $FLOOR_PORT $COLLECTOR_PORT $ADMIN_PORT; do
  if port_open "$p"; then say "port $p is taken; set FLOOR_PORT/COLLECTOR_PORT/ADMIN_PORT"; exit 1; fi
done
command -v kcat >/dev/null || { say "kcat is required (apt-get install kcat)"; exit 1; }

say "building release binaries"
cargo build --release --bin collector >&2
cargo build --release --manifest-path loadtest/loadgen/Cargo.toml >&2

if ! scripts/kafka.sh status 2>/dev/null; then scripts/kafka.sh start; started_kafka=1; fi

# loadgen run with the scenario's shape; $1 = report name, $2 = URL, rest = extra flags.
load() {
  local name=$1 url=$2
  shift 2
  say "$name: $DURATION s, $CONNECTIONS connections, $url $*"
  "$LOADGEN_BIN" run --url "$url" --connections "$CONNECTIONS" --duration "$DURATION" --label "$name" \
    --json "$REPORT_DIR/$name.json" --html "$REPORT_DIR/$name.html" "$@"
}

# Starts a collector (`$1` = serve|run, `$2` = scenario id, rest = extra flags) and waits until
# it is ready.
start_collector() {
  local mode=$1 id=$2
  shift 2
  local group=()
  if [[ $mode == run ]]; then group=(--group-id "$id"); fi
  "$COLLECTOR_BIN" "$mode" --listen "127.0.0.1:$COLLECTOR_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --wal-dir "$WORK/wal-$id" --node-id "$id" "${group[@]}" \
    --raw-topic "$id-raw" --transformed-topic "$id-rows" --dead-letter-topic "$id-dlq" \
    --log warn "$@" 2>>"$REPORT_DIR/collector-$id.log" &
  collector_pid=$!
  local waited=0
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null; do
    if ! kill -0 "$collector_pid" 2>/dev/null; then say "the collector exited; see $REPORT_DIR/collector-$id.log"; exit 1; fi
    if ((waited >= 600)); then say "the collector was not ready within 60 s"; exit 1; fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

stop_collector() {
  kill -TERM "$collector_pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$collector_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$collector_pid" 2>/dev/null || true
  wait "$collector_pid" 2>/dev/null || true
  collector_pid=""
}

"$LOADGEN_BIN" floor --listen "127.0.0.1:$FLOOR_PORT" 2>>"$REPORT_DIR/floor.log" &
floor_pid=$!
until curl -sf "http://127.0.0.1:$FLOOR_PORT/healthz" >/dev/null; do sleep 0.1; done
FLOOR="http://127.0.0.1:$FLOOR_PORT/collect"
COLLECT="http://127.0.0.1:$COLLECTOR_PORT/collect"
ID="bench-$STAMP"

load s1-floor "$FLOOR"

start_collector serve "$ID-s1-wal" --brokers "$CLOSED_BROKER" --drain-timeout-ms 1000
load s1-wal "$COLLECT"
stop_collector

start_collector run "$ID-s1-pipe" --brokers "$BROKERS"
load s1-pipeline "$COLLECT" --acked "$REPORT_DIR/s1-pipeline.acked"
verify_rc=0
"$LOADGEN_BIN" verify --acked "$REPORT_DIR/s1-pipeline.acked" --brokers "$BROKERS" --topic "$ID-s1-pipe-rows" \
  --deadline-secs 10 --timeout-secs 60 --json "$REPORT_DIR/s1-pipeline-verify.json" || verify_rc=$?
stop_collector

load s2-floor "$FLOOR" --events 50

start_collector run "$ID-s2-batch" --brokers "$BROKERS"
load s2-batch "$COLLECT" --events 50
stop_collector

kill -TERM "$floor_pid" 2>/dev/null || true
wait "$floor_pid" 2>/dev/null || true
floor_pid=""

R="$REPORT_DIR"
"$LOADGEN_BIN" table --out "$R/table.md" \
  --row "S1 floor (do-nothing axum handler)|$R/s1-floor.json|$R/s1-floor.json" \
  --row "S1 WAL only (collector serve, broker unreachable)|$R/s1-wal.json|$R/s1-floor.json" \
  --row "S1 pipeline (collector run, exactly-once)|$R/s1-pipeline.json|$R/s1-floor.json|$R/s1-pipeline-verify.json" \
  --row "S2 floor, 50 events/request|$R/s2-floor.json|$R/s2-floor.json" \
  --row "S2 batch (collector run), 50 events/request|$R/s2-batch.json|$R/s2-floor.json" \
  --note "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), ${DURATION} s per measurement, $CONNECTIONS connections, closed loop; Kafka $BROKERS on the same machine." \
  --note "Only ratios within one run count: the machine is shared, absolute figures drift between runs." \
  --note "Reports: $R (HTML per run: throughput over time and latency distribution)."
say "reports in $R"
exit "$verify_rc"
