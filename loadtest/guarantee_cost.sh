#!/usr/bin/env bash
# What exactly-once costs compared with at-least-once, measured in one run on one machine:
# the same WAL backlog (RECORDS pending one-event requests, default 500,000) drained by
# `collector run` in each mode into fresh topics. Reports the flusher's drain rate (WAL →
# collect-topic1) and the end-to-end rate (WAL → rows on collect-topic2, counted with kcat,
# read_committed), and the ratio. The at-least-once run is the baseline of the same run: on
# shared machines absolute numbers drift, ratios hold.
#
#   loadtest/guarantee_cost.sh
#   RECORDS=100000 loadtest/guarantee_cost.sh
RECORDS="${RECORDS:-500000}"
LISTEN_PORT="${LISTEN_PORT:-18081}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

rows() { kcat -b "$BROKERS" -C -t "$1" -X isolation.level=read_committed -o beginning -e -q -f '\n' | wc -l; }

declare -A flush_rate e2e_rate
for mode in at-least-once exactly-once; do
  id="cost-$mode-$(date +%s)"
  rm -rf "$WORK/wal"
  "$RELEASE/examples/wal_fill" --dir "$WORK/wal" --records "$RECORDS"
  t0=$(ms)
  "$RELEASE/collector" run --listen "$LISTEN" --admin-listen "$ADMIN" --wal-dir "$WORK/wal" --brokers "$BROKERS" \
    --raw-topic "$id-raw" --transformed-topic "$id-rows" --dead-letter-topic "$id-dlq" \
    --group-id "$id" --node-id "$id" --delivery-guarantee "$mode" --log warn 2>>"$WORK/collector.log" &
  pid=$!
  until [[ "$(pending 2>/dev/null)" == 0 ]]; do sleep 0.1; done
  flush_ms=$(( $(ms) - t0 ))
  until [[ "$(rows "$id-rows")" -ge "$RECORDS" ]]; do sleep 1; done
  e2e_ms=$(( $(ms) - t0 ))
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  flush_rate[$mode]=$(( RECORDS * 1000 / flush_ms ))
  e2e_rate[$mode]=$(( RECORDS * 1000 / e2e_ms ))
  echo "$mode: $RECORDS records; WAL drained in ${flush_ms} ms (${flush_rate[$mode]} records/s); all rows on collect-topic2 after ${e2e_ms} ms (${e2e_rate[$mode]} rows/s)"
done
awk -v a="${flush_rate[exactly-once]}" -v b="${flush_rate[at-least-once]}" -v c="${e2e_rate[exactly-once]}" -v d="${e2e_rate[at-least-once]}" \
  'BEGIN { printf "exactly-once / at-least-once: flush %.2f, end to end %.2f\n", a / b, c / d }'
