#!/usr/bin/env bash
# What replication costs (issue 11, item 5): S1 pipeline — `collector run` with Kafka,
# exactly-once, 64 connections, closed loop, 1 event per request — against topics replicated
# 3 times (min.insync.replicas 2) and against topics with one replica, on the same three-broker
# cluster, next to the floor, interleaved in one run.
#
#   loadtest/replication.sh                 # ROUNDS=3 SECS=20
#   ROUNDS=1 SECS=5 loadtest/replication.sh
#
# Each round measures the floor, then the pipeline with replication factor 1 and with 3 (the
# order alternates between rounds, so drift of a shared machine does not favour one), each on
# topics (the positions topic included) and a WAL of its own. For each pipeline measurement,
# `loadgen verify` reads the rows topic (read_committed) until every acknowledged event is
# there, and fails the script if one is lost or duplicated; the time it took after the load
# stopped gives the delivered rate:
#
#   ingest    req/s answered 2xx (the WAL's fsync; Kafka is not waited for)
#   delivered events in the rows topic per second of the whole: acknowledged / (SECS + time until
#             the last acknowledged event was in the rows topic)
#
# Environment: ROUNDS (3), SECS (20); KAFKA_CLUSTER_PORT (9892: the cluster on 9892-9897, started
# with scripts/kafka-cluster.sh and reset at the end unless it was already running); PORT (18990:
# the floor, the collector and its admin listener on PORT..PORT+2). Needs kcat; makes release
# builds (CARGO_TARGET_DIR is honoured).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-20}"
export KAFKA_CLUSTER_PORT="${KAFKA_CLUSTER_PORT:-9892}"
PORT="${PORT:-18990}"
FLOOR_PORT=$PORT COLLECTOR_PORT=$((PORT + 1)) ADMIN_PORT=$((PORT + 2))
SCRIPT=replication.sh WORK="$(mktemp -d)"
LOG_DIR="${LOG_DIR:-$ROOT/loadtest/reports/replication-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$LOG_DIR"
# shellcheck source=loadtest/http_common.sh
source "$ROOT/loadtest/http_common.sh"
CLUSTER="$ROOT/scripts/kafka-cluster.sh"

require_free_ports "$FLOOR_PORT" "$COLLECTOR_PORT" "$ADMIN_PORT"

started_cluster=0
cleanup() {
  stop_started
  if ((started_cluster)); then "$CLUSTER" reset; fi
}
trap cleanup EXIT

say "building release binaries"
cargo build --release --bin collector >&2
cargo build --release --manifest-path loadtest/loadgen/Cargo.toml >&2

if ! "$CLUSTER" status 2>/dev/null; then
  started_cluster=1 # before the start: an interrupted start leaves brokers to reset
  "$CLUSTER" start
fi
BROKERS="$("$CLUSTER" brokers)"

start_floor "$FLOOR_PORT"
STAMP="repl-$(date +%s)"
RESULTS="$LOG_DIR/results.tsv"
printf 'round\tcase\treq_per_s\tfloor_req_per_s\tacknowledged\tall_found_after_s\tdelivered_per_s\n' >"$RESULTS"

# One pipeline measurement: $1 = round, $2 = replication factor.
pipeline() {
  local round=$1 rf=$2 id="$STAMP-rf$2-$1"
  # Every topic of its own, the positions topic included: one created by a replication 1 run
  # would leave the replication 3 runs' position commits on a single replica.
  local topic_flags=(--topic-replication "$rf" --positions-topic "$id-positions")
  if ((rf > 1)); then topic_flags+=(--topic-min-insync-replicas 2); fi
  start_collector run "$id" --brokers "$BROKERS" "${topic_flags[@]}"
  local rps
  rps=$(measure "$id" "$COLLECTOR_PORT" --acked "$WORK/$id.acked")
  if ! "$LOADGEN_BIN" verify --acked "$WORK/$id.acked" --brokers "$BROKERS" --topic "$id-rows" \
    --deadline-secs 120 --timeout-secs 180 --json "$WORK/$id.verify.json" 2>>"$LOG_DIR/verify.log"; then
    tail -n 3 "$LOG_DIR/verify.log" >&2
    say "FAIL: an acknowledged event of round $round, replication $rf, is lost or duplicated"
    exit 1
  fi
  stop_collector
  local acked after
  acked=$(sed -n 's/^ *"acknowledged": *\([0-9]*\).*/\1/p' "$WORK/$id.verify.json")
  after=$(sed -n 's/^ *"all_found_after_s": *\([0-9.]*\).*/\1/p' "$WORK/$id.verify.json")
  local delivered
  delivered=$(awk -v a="$acked" -v s="$SECS" -v t="$after" 'BEGIN {printf "%.0f", a / (s + t)}')
  printf '%s\trf%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$rf" "$rps" "$floor" "$acked" "$after" "$delivered" >>"$RESULTS"
  say "round $round, replication $rf: ingest $rps req/s ($(awk -v a="$rps" -v b="$floor" 'BEGIN {printf "%.2f", a / b}') × floor), $acked acknowledged, all in the rows topic ${after} s after the load; delivered $delivered events/s ($(awk -v a="$delivered" -v b="$floor" 'BEGIN {printf "%.2f", a / b}') × floor)"
}

for round in $(seq 1 "$ROUNDS"); do
  floor=$(measure "floor-$round" "$FLOOR_PORT")
  say "round $round: floor $floor req/s"
  if ((round % 2)); then order=(1 3); else order=(3 1); fi
  for rf in "${order[@]}"; do pipeline "$round" "$rf"; done
done
stop_floor

say "results in $RESULTS:"
column -t -s $'\t' "$RESULTS" >&2
awk -F'\t' 'NR > 1 {n[$2]++; ratio[$2] += $3 / $4; del[$2] += $7 / $4}
  END {for (c in n) printf "replication.sh: %s mean over %d rounds: ingest %.2f × floor, delivered %.2f × floor\n", c, n[c], ratio[c] / n[c], del[c] / n[c]}' "$RESULTS" | sort >&2
