#!/usr/bin/env bash
# Power cuts under load, the long run (issue 9): tests/power_cut.rs with POWER_CUTS cuts per
# variant (default 20), both variants (broker up; broker unreachable during the cuts, then a
# draining start), one after the other. Each prints its seed, the WAL's files before and after
# every cut, and "acknowledged N, messages read M, lost L, duplicated D"; exits non-zero if any
# acknowledged event is missing or duplicated in the rows topic (read_committed, kcat).
# FUSE is required here (FAULTFS_REQUIRE_FUSE=1): a long run that skips proves nothing.
#
#   loadtest/power_cut.sh                          # 20 cuts per variant
#   POWER_CUTS=50 loadtest/power_cut.sh
#   POWER_CUT_SEED=123 loadtest/power_cut.sh       # replay the pauses of a run (one variant: add its test name)
#
# Starts the local Kafka if none answers on KAFKA_PORT (default 9092) and stops it afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started_kafka=0
cleanup() {
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop; fi
}
trap cleanup EXIT
if ! scripts/kafka.sh status 2>/dev/null; then scripts/kafka.sh start; started_kafka=1; fi

export COLLECTOR_TEST_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
export POWER_CUTS="${POWER_CUTS:-20}"
export FAULTFS_REQUIRE_FUSE="${FAULTFS_REQUIRE_FUSE:-1}"
cargo test --test power_cut -- --nocapture --test-threads=1 "$@"
