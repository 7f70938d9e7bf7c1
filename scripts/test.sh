#!/usr/bin/env bash
# Runs every test: faultfs's model tests, then unit, property, HTTP, and the integration tests
# against a real Kafka; then the throughput gate (loadtest/gate.sh: release builds, the
# collector's req/s as a ratio to a do-nothing floor measured in the same run, failing only far
# below today's ratios).
# Starts the local single-node Kafka if none answers on KAFKA_PORT (default 9092) and stops it
# afterwards if this script started it.
#
#   scripts/test.sh [extra cargo test arguments]
#
# The gate runs when no extra arguments are given (a filtered run is a quick local check);
# GATE=1 runs it anyway, GATE=0 skips it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT="${KAFKA_PORT:-9092}"

if ! command -v kcat >/dev/null; then
  echo "test.sh: the crash tests read Kafka with kcat; install it (apt-get install kcat)" >&2
  exit 1
fi
if ! command -v chromium >/dev/null; then
  echo "test.sh: the status page test drives a headless Chromium; install it (apt-get install chromium)" >&2
  exit 1
fi

started_kafka=0
if ! scripts/kafka.sh status 2>/dev/null; then
  scripts/kafka.sh start
  started_kafka=1
fi
cleanup() {
  if [[ $started_kafka == 1 ]]; then
    scripts/kafka.sh stop
  fi
}
trap cleanup EXIT

# faultfs, the filesystem the power-cut tests run on: its own model tests, on real FUSE mounts
# (each skips with a message where /dev/fuse or mounting is unavailable).
cargo test --manifest-path faultfs/Cargo.toml

export COLLECTOR_TEST_BROKERS="127.0.0.1:$PORT"
# --all-targets: also runs each criterion bench once, in test mode, to prove it works.
cargo test --all-targets "$@"

if [[ "${GATE:-$(($# == 0))}" == 1 ]]; then
  loadtest/gate.sh
fi
