#!/usr/bin/env bash
# Interleaved A/B of collector builds, WAL only, against the floor: the method behind
# loadtest/PROFILE.md's before/after tables. Per round: the floor, then each build in turn
# (order reversed every other round), each on a fresh WAL with the broker unreachable; per
# measurement the ratio to that round's floor, the collector's CPU per request (utime + stime of
# all its threads from /proc), its context switches per request, its RSS high-water mark, and
# the bytes it wrote per request: through write calls (`wchar` of /proc/<pid>/io, the WAL
# engine's write amplification) and to the disk (`write_bytes`), and its group commits per
# second (`collector_wal_group_commits_total` from its /metrics).
#
#   loadtest/ab.sh BIN_A BIN_B [BIN…]             # e.g. a saved release binary and target/release/collector
#   ROUNDS=3 SECS=10 EVENTS=50 loadtest/ab.sh A B
#
# Needs the release loadgen (built here) and jq. Ports AB_PORT (default 18690) to AB_PORT+2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
(($# >= 1)) || { echo "usage: loadtest/ab.sh BIN_A [BIN_B …]" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}" SECS="${SECS:-10}" EVENTS="${EVENTS:-1}"
PORT="${AB_PORT:-18690}"
FLOOR_PORT=$PORT COLLECTOR_PORT=$((PORT + 1)) ADMIN_PORT=$((PORT + 2))
SCRIPT=ab.sh WORK="$(mktemp -d)"
LOG_DIR="$WORK"
# shellcheck source=loadtest/http_common.sh
source "$ROOT/loadtest/http_common.sh"
require_free_ports "$FLOOR_PORT" "$COLLECTOR_PORT" "$ADMIN_PORT"
command -v jq >/dev/null || { say "jq is required (apt-get install jq)"; exit 1; }
cargo build --release --manifest-path loadtest/loadgen/Cargo.toml >&2
start_floor "$FLOOR_PORT"

# CPU clock ticks and context switches of every thread of process $1.
ticks() { cat /proc/"$1"/task/*/stat | sed 's/.*) //' | awk '{t += $12 + $13} END {print t}'; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
# Bytes process $1 wrote: field $2 of /proc/<pid>/io (wchar: through write calls; write_bytes: to the disk).
written() { awk -v f="$2" '$1 == f ":" {print $2}' /proc/"$1"/io; }
# Group commits so far, from the collector's /metrics on the admin port.
commits() {
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '$1 == "collector_wal_group_commits_total" {print $2; f = 1} END {if (!f) print 0}'
}

HZ="$(getconf CLK_TCK)"
printf '%-6s %-40s %9s %7s %12s %12s %10s %11s %11s %10s\n' round build "req/s" "× floor" "CPU/req µs" "switch/req" "HWM MiB" \
  "write/req" "disk/req" "commits/s"
for round in $(seq 1 "$ROUNDS"); do
  floor=$(measure floor "$FLOOR_PORT" --events "$EVENTS")
  printf '%-6s %-40s %9s %7s\n' "$round" floor "$floor" 1.00
  builds=("$@")
  if ((round % 2 == 0)); then mapfile -t builds < <(printf '%s\n' "$@" | tac); fi
  for bin in "${builds[@]}"; do
    COLLECTOR_BIN="$bin" start_collector serve "ab-$round-$(basename "$bin")-$RANDOM" --brokers 127.0.0.1:9 \
      --drain-timeout-ms 500
    t0=$(ticks "$collector_pid") s0=$(switches "$collector_pid")
    w0=$(written "$collector_pid" wchar) d0=$(written "$collector_pid" write_bytes) c0=$(commits)
    rps=$(measure c "$COLLECTOR_PORT" --events "$EVENTS")
    t1=$(ticks "$collector_pid") s1=$(switches "$collector_pid")
    w1=$(written "$collector_pid" wchar) d1=$(written "$collector_pid" write_bytes) c1=$(commits)
    hwm=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' /proc/"$collector_pid"/status)
    acked=$(jq -r '.acked' "$WORK/c.json")
    stop_collector
    awk -v r="$round" -v b="$bin" -v rps="$rps" -v f="$floor" -v dt=$((t1 - t0)) -v ds=$((s1 - s0)) -v a="$acked" \
      -v hz="$HZ" -v hwm="$hwm" -v dw=$((w1 - w0)) -v dd=$((d1 - d0)) -v dc="$c0 $c1" -v secs="$SECS" \
      'BEGIN {split(dc, c, " "); printf "%-6s %-40s %9d %7.2f %12.1f %12.2f %10s %11.0f %11.0f %10.0f\n", r, b, rps, rps / f, dt / hz * 1e6 / a, ds / a, hwm, dw / a, dd / a, (c[2] - c[1]) / secs}'
  done
done
stop_floor
