# Shared by the loadtest scripts (sourced, not run): a scratch directory, the local Kafka (started
# if none answers on KAFKA_PORT, stopped again on exit), release builds of the collector and
# wal_fill, and small helpers. The sourcing script sets LISTEN_PORT's default before sourcing; the
# admin listener (status page, metrics) is on ADMIN_PORT, default LISTEN_PORT + 1000.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
LISTEN="127.0.0.1:${LISTEN_PORT:?}"
ADMIN="127.0.0.1:${ADMIN_PORT:-$((LISTEN_PORT + 1000))}"
WORK="$(mktemp -d)"
# Where `cargo build --release` puts the binaries (CARGO_TARGET_DIR is honoured).
RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
started_kafka=0
cleanup() {
  kill -9 "${pid:-}" 2>/dev/null || true
  rm -rf "$WORK"
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop; fi
}
trap cleanup EXIT
if ! scripts/kafka.sh status 2>/dev/null; then scripts/kafka.sh start; started_kafka=1; fi
cargo build --release --bin collector --example wal_fill >&2

# Milliseconds since the epoch.
ms() { date +%s%3N; }
# Pending WAL records of the collector, from the JSON status page on its admin listener.
pending() { curl -s -H 'Accept: application/json' "http://$ADMIN/" | sed -n 's/.*"pending_records":\([0-9]*\).*/\1/p'; }
