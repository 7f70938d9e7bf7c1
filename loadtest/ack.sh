#!/usr/bin/env bash
# What `--ack kafka` costs next to `--ack wal`, measured side by side in one run with the load
# generator: per round the floor, then `collector serve` with Kafka in each mode (order reversed
# every other round, fresh WAL and topics each time). Each collector is measured twice:
#   closed loop, 64 connections, max rate: req/s (and its ratio to the round's floor), latency;
#   open loop at RATE req/s (default 500), a load both modes carry: latency p50/p99/p99.9.
# Every request sends an Idempotency-Key, as clients of `--ack kafka` should.
#
#   loadtest/ack.sh
#   ROUNDS=3 SECS=10 RATE=1000 loadtest/ack.sh
#   FLAGS='-X linger.ms=5' loadtest/ack.sh        # extra collector flags, for both modes
#
# Starts a Kafka on KAFKA_PORT (default 9692, controller KAFKA_CONTROLLER_PORT 9693) if none
# answers there, and stops it again. Ports ACK_PORT (default 18890) to ACK_PORT+2. Needs jq.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-2}" SECS="${SECS:-10}" RATE="${RATE:-500}"
export KAFKA_PORT="${KAFKA_PORT:-9692}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9693}"
BROKERS="127.0.0.1:$KAFKA_PORT"
PORT="${ACK_PORT:-18890}"
FLOOR_PORT=$PORT COLLECTOR_PORT=$((PORT + 1)) ADMIN_PORT=$((PORT + 2))
SCRIPT=ack.sh WORK="$(mktemp -d)"
LOG_DIR="$WORK"
# shellcheck source=loadtest/http_common.sh
source "$ROOT/loadtest/http_common.sh"
started_kafka=0
cleanup() {
  stop_started
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop; fi
}
trap cleanup EXIT
require_free_ports "$FLOOR_PORT" "$COLLECTOR_PORT" "$ADMIN_PORT"
command -v jq >/dev/null || { say "jq is required (apt-get install jq)"; exit 1; }
cargo build --release --bin collector >&2
cargo build --release --manifest-path loadtest/loadgen/Cargo.toml >&2
if ! scripts/kafka.sh status 2>/dev/null; then scripts/kafka.sh start >&2; started_kafka=1; fi
start_floor "$FLOOR_PORT"

# One line of the table from the summary `$WORK/$2.json`; $1 = row label, $3 = the floor's req/s.
row() {
  jq -r --arg name "$1" --arg floor "$3" '[$name, (if .rate then "open \(.rate | floor)/s" else "closed c=\(.connections)" end), (.req_per_s | floor),
      (if $floor == "" then "" else (.req_per_s / ($floor | tonumber) * 100 | round / 100 | tostring) end),
      .latency_ms.p50, .latency_ms.p99, .latency_ms.p99_9, (.errors | to_entries | map("\(.key): \(.value)") | join(", "))]
    | @tsv' "$WORK/$2.json" | awk -F'\t' '{printf "%-8s %-12s %8s %7s %9.2f %9.2f %9.2f  %s\n", $1, $2, $3, $4, $5, $6, $7, $8}'
}

printf '%-8s %-12s %8s %7s %9s %9s %9s  %s\n' round-ack mode "req/s" "× floor" "p50 ms" "p99 ms" "p99.9 ms" errors
for round in $(seq 1 "$ROUNDS"); do
  floor=$(measure "floor-$round" "$FLOOR_PORT" --idempotency-key)
  row "$round-floor" "floor-$round" "$floor"
  modes=(wal kafka)
  if ((round % 2 == 0)); then modes=(kafka wal); fi
  for mode in "${modes[@]}"; do
    start_collector serve "ack-$round-$mode-$RANDOM" --brokers "$BROKERS" --ack "$mode" ${FLAGS:-}
    measure "$mode-$round" "$COLLECTOR_PORT" --idempotency-key >/dev/null
    row "$round-$mode" "$mode-$round" "$floor"
    measure "$mode-$round-open" "$COLLECTOR_PORT" --idempotency-key --rate "$RATE" >/dev/null
    row "$round-$mode" "$mode-$round-open" ""
    stop_collector
  done
done
