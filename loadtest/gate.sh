#!/usr/bin/env bash
# The throughput gate (issue 8, item 6): a short bench.sh that fails CI when the collector's
# throughput falls too far below the floor measured in the same run. `scripts/test.sh` runs it
# after the tests; it is not the benchmark (loadtest/bench.sh is), only a tripwire.
#
#   loadtest/gate.sh                                        # WAL only (and the pipeline if a broker is set)
#   COLLECTOR_TEST_BROKERS=127.0.0.1:9092 loadtest/gate.sh  # also the pipeline, with verify
#
# Each of GATE_ROUNDS rounds (default 3) measures, GATE_SECS seconds each (default 3), 64
# connections, closed loop, 1 event per request: the floor, then `collector serve` with the
# broker unreachable (WAL only), then — with COLLECTOR_TEST_BROKERS set — `collector run`
# (whole pipeline, exactly-once). The ratio of a round is the collector's req/s over the floor's
# of the same round; the gate keeps the best round of each, so one slow second of a shared
# machine does not fail it, and fails if it is below the threshold:
#
#   GATE_MIN_WAL       WAL only / floor, default 0.20
#   GATE_MIN_PIPELINE  pipeline / floor, default 0.12
#
# Why these: on the 2-core development machine, quiet, bench.sh gave WAL only 0.45 × floor and
# the pipeline 0.31 (2026-11-28, after the second optimisation step), and a gate run in a
# fresh-clone CI 0.42-0.51 and 0.27-0.40 per round; busy machines gave higher ratios (a loaded
# machine slows the floor more than the collector). A collector 3x slower against its floor
# would be at 0.15 and 0.10 on a quiet machine, below the thresholds, which sit under half of
# the lowest best-of-three seen. The pipeline round also checks, with `loadgen verify` (60 s
# deadline: correctness, not speed), that every
# acknowledged event of its last round reached the rows topic exactly once.
#
# Needs release builds (it makes them: CARGO_TARGET_DIR is honoured) and, for the pipeline,
# kcat. Ports GATE_PORT (default 18790) to GATE_PORT+2; every process it starts is stopped by
# its pid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${GATE_ROUNDS:-3}"
SECS="${GATE_SECS:-3}"
MIN_WAL="${GATE_MIN_WAL:-0.20}"
MIN_PIPELINE="${GATE_MIN_PIPELINE:-0.12}"
BROKERS="${COLLECTOR_TEST_BROKERS:-}"
PORT="${GATE_PORT:-18790}"
FLOOR_PORT=$PORT COLLECTOR_PORT=$((PORT + 1)) ADMIN_PORT=$((PORT + 2))
SCRIPT=gate.sh WORK="$(mktemp -d)"
LOG_DIR="$WORK"
# shellcheck source=loadtest/http_common.sh
source "$ROOT/loadtest/http_common.sh"

require_free_ports "$FLOOR_PORT" "$COLLECTOR_PORT" "$ADMIN_PORT"

started=$(date +%s)
say "building release binaries"
cargo build --release --bin collector >&2
cargo build --release --manifest-path loadtest/loadgen/Cargo.toml >&2
built=$(date +%s)

start_floor "$FLOOR_PORT"

best_wal=0 best_pipe=0
STAMP="gate-$(date +%s)"
for round in $(seq 1 "$ROUNDS"); do
  floor=$(measure "floor-$round" "$FLOOR_PORT")
  start_collector serve "$STAMP-wal-$round" --brokers 127.0.0.1:9 --drain-timeout-ms 500
  wal=$(measure "wal-$round" "$COLLECTOR_PORT")
  stop_collector
  line="round $round: floor $floor req/s, WAL only $wal ($(awk -v a="$wal" -v b="$floor" 'BEGIN {printf "%.2f", a / b}') × floor)"
  best_wal=$(awk -v a="$wal" -v b="$floor" -v best="$best_wal" 'BEGIN {r = a / b; print (r > best ? r : best)}')
  if [[ -n "$BROKERS" ]]; then
    start_collector run "$STAMP-pipe-$round" --brokers "$BROKERS"
    pipe=$(measure "pipe-$round" "$COLLECTOR_PORT" --acked "$WORK/pipe-$round.acked")
    line+=", pipeline $pipe ($(awk -v a="$pipe" -v b="$floor" 'BEGIN {printf "%.2f", a / b}') × floor)"
    best_pipe=$(awk -v a="$pipe" -v b="$floor" -v best="$best_pipe" 'BEGIN {r = a / b; print (r > best ? r : best)}')
    if ((round == ROUNDS)); then
      if ! "$LOADGEN_BIN" verify --acked "$WORK/pipe-$round.acked" --brokers "$BROKERS" --topic "$STAMP-pipe-$round-rows" \
        --deadline-secs 60 --timeout-secs 90 >&2; then
        stop_collector
        say "FAIL: an acknowledged event of the pipeline round is lost or duplicated"
        exit 1
      fi
    fi
    stop_collector
  fi
  say "$line"
done

stop_floor

fail=0
# $1 = what, $2 = best ratio, $3 = threshold.
check() {
  if awk -v r="$2" -v m="$3" 'BEGIN {exit !(r >= m)}'; then
    say "best $1 / floor $(printf '%.2f' "$2") (threshold $3): ok"
  else
    say "best $1 / floor $(printf '%.2f' "$2") (threshold $3): FAIL"
    fail=1
  fi
}
check "WAL only" "$best_wal" "$MIN_WAL"
if [[ -n "$BROKERS" ]]; then
  check pipeline "$best_pipe" "$MIN_PIPELINE"
else
  say "pipeline not measured: COLLECTOR_TEST_BROKERS is not set"
fi
say "build $((built - started)) s, measurements $(($(date +%s) - built)) s"
if ((fail)); then
  say "the collector's throughput fell below the gate; loadtest/bench.sh measures it in full, loadtest/PROFILE.md says how to profile"
fi
exit "$fail"
