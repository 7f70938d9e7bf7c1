# Shared by bench.sh and gate.sh (sourced, not run): the release binaries, the floor and the
# collector under test started with their pids recorded and stopped by them. The sourcing script
# sets SCRIPT (its name, for messages), COLLECTOR_PORT, ADMIN_PORT, WORK (scratch directory) and
# LOG_DIR (where each process's log goes). On exit, anything still running is killed and WORK
# removed (`stop_started`, the EXIT trap; a script with more to clean up sets its own trap and
# calls it).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-}"
COLLECTOR_BIN="${TARGET:-$ROOT/target}/release/collector"
LOADGEN_BIN="${TARGET:-$ROOT/loadtest/loadgen/target}/release/loadgen"
EXAMPLES="${TARGET:-$ROOT/target}/release/examples"
floor_pid=""
collector_pid=""

say() { echo "$SCRIPT: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts the floor on port `$1` and waits until it answers.
start_floor() {
  "$LOADGEN_BIN" floor --listen "127.0.0.1:$1" 2>>"$LOG_DIR/floor.log" &
  floor_pid=$!
  until curl -sf "http://127.0.0.1:$1/healthz" >/dev/null; do sleep 0.1; done
}

stop_floor() {
  if [[ -n $floor_pid ]]; then
    kill -TERM "$floor_pid" 2>/dev/null || true
    wait "$floor_pid" 2>/dev/null || true
    floor_pid=""
  fi
}

# Starts a collector (`$1` = serve|run, `$2` = id: its node id, consumer group, topics
# `<id>-raw/-rows/-dlq` and WAL directory; rest = extra flags) and waits until it is ready.
# A collector that exits or is not ready within 60 s ends the script, its log printed.
start_collector() {
  local mode=$1 id=$2
  shift 2
  local group=()
  if [[ $mode == run ]]; then group=(--group-id "$id"); fi
  "$COLLECTOR_BIN" "$mode" --listen "127.0.0.1:$COLLECTOR_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --wal-dir "$WORK/wal-$id" --node-id "$id" "${group[@]}" \
    --raw-topic "$id-raw" --transformed-topic "$id-rows" --dead-letter-topic "$id-dlq" \
    --log warn "$@" 2>>"$LOG_DIR/collector-$id.log" &
  collector_pid=$!
  local waited=0
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null; do
    if ! kill -0 "$collector_pid" 2>/dev/null || ((waited >= 600)); then
      say "the collector did not come up within 60 s; its log ($LOG_DIR/collector-$id.log):"
      tail -n 40 "$LOG_DIR/collector-$id.log" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# Stops the collector: SIGTERM (it drains), then SIGKILL after 30 s.
stop_collector() {
  if [[ -n $collector_pid ]]; then
    kill -TERM "$collector_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$collector_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
    collector_pid=""
  fi
}

# req/s of one closed-loop measurement, 64 connections, SECS seconds; $1 = name (its summary is
# written to $WORK/<name>.json), $2 = port, rest = extra loadgen flags.
measure() {
  local name=$1 port=$2
  shift 2
  "$LOADGEN_BIN" run --url "http://127.0.0.1:$port/collect" --connections 64 --duration "$SECS" --quiet \
    --label "$name" --json "$WORK/$name.json" "$@" >/dev/null 2>&1
  sed -n 's/^ *"req_per_s": *\([0-9]*\).*/\1/p' "$WORK/$name.json"
}

# Kills what is still running (after a failure) and removes the scratch directory.
stop_started() {
  for p in $collector_pid $floor_pid; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap stop_started EXIT

# Ends the script if one of the ports `$@` is taken; `$1`… are checked in order.
require_free_ports() {
  for p in "$@"; do
    if port_open "$p"; then say "port $p is taken (another run, or set the ports)"; exit 1; fi
  done
}
