#!/usr/bin/env bash
# Brings the whole pipeline up: a local Kafka (unless COLLECTOR_BROKERS names one), then
# `collector run` (ingest + WAL + flusher + transform) on 127.0.0.1:8000, with its status page
# and metrics on 127.0.0.1:8001 (the admin listener). Ctrl-C drains and stops it, and stops the
# Kafka this script started (set KEEP_KAFKA=1 to leave it running).
#
#   scripts/up.sh [extra collector flags, e.g. --listen 0.0.0.0:8000]
#
# The WAL lives in .local/wal unless COLLECTOR_WAL_DIR says otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

started_kafka=0
if [[ -z "${COLLECTOR_BROKERS:-}" ]]; then
  if ! scripts/kafka.sh status 2>/dev/null; then
    scripts/kafka.sh start
    started_kafka=1
  fi
  export COLLECTOR_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi

stop_kafka() {
  if [[ $started_kafka == 1 && "${KEEP_KAFKA:-0}" != 1 ]]; then
    scripts/kafka.sh stop
  fi
}
trap stop_kafka EXIT

echo "up.sh: building collector (release; the first build compiles librdkafka and takes a few minutes)" >&2
cargo build --release --bin collector
export COLLECTOR_WAL_DIR="${COLLECTOR_WAL_DIR:-$ROOT/.local/wal}"
mkdir -p "$(dirname "$COLLECTOR_WAL_DIR")"
echo "up.sh: collector on http://127.0.0.1:8000, status page and /metrics on http://127.0.0.1:8001 (brokers $COLLECTOR_BROKERS, WAL $COLLECTOR_WAL_DIR); Ctrl-C to stop" >&2
# Not exec: the trap must run after the collector exits. Forward Ctrl-C/TERM to it.
"${CARGO_TARGET_DIR:-target}/release/collector" run "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
wait $pid || true
wait $pid 2>/dev/null || true
