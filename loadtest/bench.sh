#!/usr/bin/env bash
# The scenario runner: the collector's HTTP throughput next to the floor (a do-nothing axum
# handler), every figure measured in this one run, then one table with each scenario's target.
#
#   loadtest/bench.sh                  # 20 s per measurement, a 10-minute soak: about 20 minutes
#   QUICK=1 loadtest/bench.sh          # 5 s per measurement, a 30 s soak: about 3 minutes
#   DURATION=30 SOAK_SECS=300 TRANSFORM_MESSAGES=500000 loadtest/bench.sh
#
# Scenarios (1 event per request unless said; 64 connections; closed loop, max rate, unless said):
#   S1 floor     the floor, 1 event/request
#   S1 WAL only  `collector serve` with the broker unreachable: ingest + WAL, nothing delivered
#   S1 pipeline  `collector run` with Kafka (exactly-once), then `loadgen verify`: every
#                acknowledged event in the rows topic exactly once, within 10 s of the load's end
#   S2 floor     the floor, 50 events/request
#   S2 batch     `collector run` with Kafka, 50 events/request
#   S3 latency   `loadgen disk` (16 KiB appends + fdatasync next to the WAL, DISK_SECS), then
#                `collector run` in an open loop at half of S1 pipeline's req/s: p99 against
#                4 × the disk's p99
#   S4 soak      `collector run`, open loop at 70 % of S1 pipeline's req/s for SOAK_SECS, its
#                RSS and WAL backlog sampled each second (`loadgen watch`, judged by `loadgen soak`)
#   transform    TRANSFORM_MESSAGES raw messages put on a fresh raw topic the real way
#                (`wal_fill`, then `collector serve` drains them), then timed alone: `collector
#                transform`, and a plain consume + produce with the same semantics (the
#                `transform_floor` example), each from the start with a fresh group to a fresh
#                topic until every offset is committed
#
# Starts a Kafka on KAFKA_PORT (default 9692, controller KAFKA_CONTROLLER_PORT 9693) if none
# answers there, and stops it again. Each collector gets a fresh WAL in a temporary directory and
# fresh topics (`bench-<time>-<scenario>-raw/-rows/-dlq`, the roles of collect-topic1/2 and the
# dead-letter topic), so one run never sees another's data or consumer group. Every process it
# starts is stopped by its pid. Reports (JSON and HTML per run, acknowledged ids, the soak's
# samples, the table as markdown) go to REPORT_DIR (default loadtest/reports/<time>/). Exits
# non-zero if verify finds an acknowledged event lost or duplicated, if the soak fails its
# targets, or if the transform scenario loses or duplicates a row.
#
# The machine is shared (2 cores; the generator, the server and the broker share them): absolute
# figures drift between runs, ratios to the floor of the same run hold.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
  DURATION="${DURATION:-5}" SOAK_SECS="${SOAK_SECS:-30}" TRANSFORM_MESSAGES="${TRANSFORM_MESSAGES:-50000}"
else
  DURATION="${DURATION:-20}" SOAK_SECS="${SOAK_SECS:-600}" TRANSFORM_MESSAGES="${TRANSFORM_MESSAGES:-200000}"
fi
DISK_SECS="${DISK_SECS:-5}"
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
SCRIPT=bench.sh WORK="$(mktemp -d)" LOG_DIR="$REPORT_DIR"
# shellcheck source=loadtest/http_common.sh
source "$ROOT/loadtest/http_common.sh"
mkdir -p "$REPORT_DIR"
# Other background processes of a scenario (the soak's load, a transform contender).
helper_pid=""
started_kafka=0
cleanup() {
  kill -9 "$helper_pid" 2>/dev/null || true
  stop_started
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop; fi
}
trap cleanup EXIT

require_free_ports "$FLOOR_PORT" "$COLLECTOR_PORT" "$ADMIN_PORT"
for tool in kcat jq curl; do
  command -v "$tool" >/dev/null || { say "$tool is required (apt-get install $tool)"; exit 1; }
done

say "building release binaries"
cargo build --release --bin collector --example wal_fill --example transform_floor >&2
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

# Pending WAL records of the running collector, from its JSON status page.
pending() { curl -s -H 'Accept: application/json' "http://127.0.0.1:$ADMIN_PORT/" | jq -r '.wal.pending_records // empty'; }

# A field of a JSON file.
field() { jq -r "$2" "$1"; }

start_floor "$FLOOR_PORT"
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

stop_floor

# S3 and S4 run at shares of S1 pipeline's rate in this run.
PIPE_RPS="$(field "$REPORT_DIR/s1-pipeline.json" '.req_per_s | round')"
S3_RATE="$(awk -v r="$PIPE_RPS" 'BEGIN {printf "%.0f", r / 2}')"
S4_RATE="$(awk -v r="$PIPE_RPS" 'BEGIN {printf "%.0f", r * 0.7}')"

say "S3: the disk's append + fdatasync latency next to the WAL ($WORK), $DISK_SECS s"
"$LOADGEN_BIN" disk --dir "$WORK" --seconds "$DISK_SECS" --json "$REPORT_DIR/s3-disk.json"
start_collector run "$ID-s3-lat" --brokers "$BROKERS"
load s3-latency "$COLLECT" --rate "$S3_RATE"
stop_collector

say "S4: soak, $SOAK_SECS s at $S4_RATE req/s (70 % of S1 pipeline's $PIPE_RPS)"
start_collector run "$ID-s4-soak" --brokers "$BROKERS"
"$LOADGEN_BIN" run --url "$COLLECT" --connections "$CONNECTIONS" --duration "$SOAK_SECS" --rate "$S4_RATE" \
  --label s4-soak --quiet --json "$REPORT_DIR/s4-soak.json" --html "$REPORT_DIR/s4-soak.html" &
helper_pid=$!
"$LOADGEN_BIN" watch --pid "$collector_pid" --admin "127.0.0.1:$ADMIN_PORT" --seconds "$SOAK_SECS" \
  --csv "$REPORT_DIR/s4-samples.csv" --json "$REPORT_DIR/s4-samples.json"
wait "$helper_pid"
helper_pid=""
soak_rc=0
"$LOADGEN_BIN" soak --samples "$REPORT_DIR/s4-samples.json" --run "$REPORT_DIR/s4-soak.json" \
  --json "$REPORT_DIR/s4-verdict.json" --html "$REPORT_DIR/s4-verdict.html" || soak_rc=$?
stop_collector

say "transform: $TRANSFORM_MESSAGES raw messages onto $ID-tf-raw (wal_fill, then collector serve drains them)"
"$EXAMPLES/wal_fill" --dir "$WORK/wal-$ID-tf" --records "$TRANSFORM_MESSAGES"
start_collector serve "$ID-tf" --brokers "$BROKERS"
until [[ "$(pending)" == 0 ]]; do sleep 0.5; done
stop_collector
FLOOR_TOOL="$EXAMPLES/transform_floor"
"$FLOOR_TOOL" scan --brokers "$BROKERS" --topic "$ID-tf-raw" --create "$ID-tf-rows,$ID-tf-dlq,$ID-tf-copy" \
  --json "$REPORT_DIR/transform-raw.json"
transform_rc=0
# $1 = report name, $2 = group, $3 = output topic, rest = the contender's command line.
time_copy() {
  local name=$1 group=$2 out=$3
  shift 3
  local t0
  t0=$(date +%s%3N)
  "$@" 2>>"$REPORT_DIR/$name.log" &
  helper_pid=$!
  "$FLOOR_TOOL" wait --brokers "$BROKERS" --ends "$REPORT_DIR/transform-raw.json" --group "$group" \
    --rows-topic "$out" --started-at-ms "$t0" --label "$name" --expect-rows "$TRANSFORM_MESSAGES" \
    --json "$REPORT_DIR/$name.json" || transform_rc=$?
  kill -TERM "$helper_pid" 2>/dev/null || true
  wait "$helper_pid" 2>/dev/null || true
  helper_pid=""
}
time_copy transform "$ID-tf-group" "$ID-tf-rows" \
  "$COLLECTOR_BIN" transform --brokers "$BROKERS" --node-id "$ID-tf" --group-id "$ID-tf-group" --admin-listen none \
  --raw-topic "$ID-tf-raw" --transformed-topic "$ID-tf-rows" --dead-letter-topic "$ID-tf-dlq" --log warn
time_copy transform-floor "$ID-tf-copy-group" "$ID-tf-copy" \
  "$FLOOR_TOOL" copy --brokers "$BROKERS" --from "$ID-tf-raw" --to "$ID-tf-copy" --group "$ID-tf-copy-group" --node "$ID-tf"

R="$REPORT_DIR"
"$LOADGEN_BIN" table --out "$R/table.md" \
  --row "S1 floor (do-nothing axum handler)|$R/s1-floor.json|floor=$R/s1-floor.json" \
  --row "S1 WAL only (collector serve, broker unreachable)|$R/s1-wal.json|floor=$R/s1-floor.json|min=0.8" \
  --row "S1 pipeline (collector run, exactly-once)|$R/s1-pipeline.json|floor=$R/s1-floor.json|min=0.5|verify=$R/s1-pipeline-verify.json" \
  --row "S2 floor, 50 events/request|$R/s2-floor.json|floor=$R/s2-floor.json" \
  --row "S2 batch (collector run), 50 events/request|$R/s2-batch.json|floor=$R/s2-floor.json|min=0.5" \
  --row "S3 disk: 16 KiB append + fdatasync, next to the WAL|$R/s3-disk.json" \
  --row "S3 latency (collector run, open loop at ½ S1 pipeline)|$R/s3-latency.json|disk=$R/s3-disk.json" \
  --row "S4 soak (collector run, open loop at 70 % of S1 pipeline, ${SOAK_SECS} s)|$R/s4-soak.json|soak=$R/s4-verdict.json" \
  --row "transform floor: plain consume + produce, same semantics (msg/s)|$R/transform-floor.json|floor=$R/transform-floor.json" \
  --row "transform (collector transform alone, msg/s)|$R/transform.json|floor=$R/transform-floor.json|min=0.8" \
  --note "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), ${DURATION} s per measurement, $CONNECTIONS connections, closed loop unless said; Kafka $BROKERS on the same machine." \
  --note "S3 and S4 run open loop (latency from each request's due time) at $S3_RATE and $S4_RATE req/s, shares of S1 pipeline's $PIPE_RPS req/s in this run. The transform rows count $TRANSFORM_MESSAGES raw messages of 1 event each, from the contender's start until the raw topic's last offset is committed: its × floor is to the plain copy." \
  --note "Only ratios within one run count: the machine is shared, absolute figures drift between runs." \
  --note "Reports: $R (HTML per run: throughput over time and latency distribution; s4-verdict.html: RSS and backlog over the soak)."
"$LOADGEN_BIN" plot --throughput "$R/s1-throughput.svg" --latency "$R/s1-latency.svg" \
  --run "floor=$R/s1-floor.json" --run "WAL only=$R/s1-wal.json" --run "pipeline=$R/s1-pipeline.json"
"$LOADGEN_BIN" plot --throughput "$R/s2-throughput.svg" --latency "$R/s2-latency.svg" \
  --run "floor, 50 events=$R/s2-floor.json" --run "pipeline, 50 events=$R/s2-batch.json"
say "reports in $R (the README's figures: s1-throughput.svg, s1-latency.svg, s2-*.svg)"
for rc in $verify_rc $soak_rc $transform_rc; do
  if [[ $rc != 0 ]]; then exit "$rc"; fi
done
