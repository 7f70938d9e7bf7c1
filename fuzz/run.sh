#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 600) in one process on one core, from the
# committed seeds plus a scratch corpus outside the repository (where libFuzzer writes what
# it finds), and prints libFuzzer's final statistics. See README.md.
#
#   fuzz/run.sh collect_request 600
#   fuzz/run.sh wal_record 30          # a smoke run
#
# Environment: CARGO_TARGET_DIR (default fuzz/target), FUZZ_WORK (scratch corpora, default
# /tmp/fuzz-work), FUZZ_SANITIZER (default address; `none` builds without ASan).
set -euo pipefail
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [-- libFuzzer flags]}
secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
[[ ${1:-} == -- ]] && shift
cd "$(dirname "$0")/.."
work=${FUZZ_WORK:-/tmp/fuzz-work}/$target
mkdir -p "$work"
# cargo fuzz passes nightly-only flags (-Zsanitizer, sancov passes); stable Rust accepts them
# with RUSTC_BOOTSTRAP=1. A nightly toolchain works as well (`cargo +nightly fuzz ...`).
export RUSTC_BOOTSTRAP=1
# librdkafka's one producer built when the default settings are validated (see lsan.supp).
export LSAN_OPTIONS=suppressions=$PWD/fuzz/lsan.supp
exec cargo fuzz run --sanitizer "${FUZZ_SANITIZER:-address}" --target-dir "${CARGO_TARGET_DIR:-fuzz/target}" \
    "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 "$@"
