#!/usr/bin/env bash
# Backlog restart: a WAL with RECORDS pending records (default 1,000,000), the collector
# started on it, killed with SIGKILL while it drains, started again. Reports how long each start
# took to answer /readyz, how long the drain took, and checks with kcat (read_committed) that
# collect-topic1 holds every record exactly once.
#
#   loadtest/backlog_restart.sh            # 1,000,000 records
#   RECORDS=100000 loadtest/backlog_restart.sh
RECORDS="${RECORDS:-1000000}"
LISTEN_PORT="${LISTEN_PORT:-18080}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOPIC="backlog-$(date +%s)"
"$RELEASE/examples/wal_fill" --dir "$WORK/wal" --records "$RECORDS"

start_serve() {
  "$RELEASE/collector" serve --listen "$LISTEN" --admin-listen "$ADMIN" --wal-dir "$WORK/wal" --brokers "$BROKERS" \
    --raw-topic "$TOPIC" --log warn >>"$WORK/collector.log" 2>&1 &
  pid=$!
  local t0; t0=$(ms)
  until curl -sf "http://$LISTEN/readyz" >/dev/null; do sleep 0.01; done
  ready_ms=$(( $(ms) - t0 ))
}

start_serve
echo "start 1 with $(pending) pending records: ready in ${ready_ms} ms"
sleep 2
left=$(pending)
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "killed with SIGKILL while draining ($left records still pending)"
start_serve
echo "start 2 after kill -9 with $(pending) pending records: ready in ${ready_ms} ms"
t0=$(ms)
while [[ "$(pending)" != 0 ]]; do sleep 0.2; done
drain=$(( $(ms) - t0 ))
echo "drained the rest in ${drain} ms"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

count=$(kcat -b "$BROKERS" -C -t "$TOPIC" -X isolation.level=read_committed -o beginning -e -q -f '%s\n' \
  | sed -n 's/.*"event_type":"\(fill-[0-9]*\)".*/\1/p' | sort | uniq -c | awk '{n++; if ($1 > 1) d++} END {print n+0, d+0}')
read -r distinct duplicated <<<"$count"
echo "collect-topic1 ($TOPIC): $distinct of $RECORDS records, $duplicated duplicated"
[[ "$distinct" == "$RECORDS" && "$duplicated" == 0 ]]
