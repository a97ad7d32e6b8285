#!/bin/sh
# Fuzz raibid-core's webhook parsing, signature verification and .raibid.yaml parser with cargo-fuzz on
# the *stable* toolchain (RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz passes). See docs/fuzzing.md.
#
# Usage: rust/fuzz/run.sh [RUNS]            (RUNS defaults to 10000000 executions per target)
# Environment (all optional):
#   RUNS=10000000          executions per target (libFuzzer -runs; includes the corpus replay at start)
#   MAX_TIME=3600          hard bound per target in seconds (libFuzzer -max_total_time)
#   TARGETS="webhook_push webhook_signature pipeline_yaml"
#   SANITIZER=none         none | address (ASan is ~8-15x slower here; raibid-core forbids unsafe code)
#   TOOLCHAIN=stable       rustup toolchain passed as cargo +TOOLCHAIN (empty: plain `cargo`)
#   CARGO_FUZZ_VERSION=0.13.2
#   EXTRA_ARGS=""          more libFuzzer flags, e.g. "-seed=1"
# Per target: working corpus in corpus/<target> (seeds/<target> is read, never written), crash inputs in
# artifacts/<target>/, the libFuzzer log in logs/<target>.log. Exits non-zero if any target fails.
set -eu

RUNS=${1:-${RUNS:-10000000}}
MAX_TIME=${MAX_TIME:-3600}
TARGETS=${TARGETS:-"webhook_push webhook_signature pipeline_yaml"}
SANITIZER=${SANITIZER:-none}
TOOLCHAIN=${TOOLCHAIN-stable}
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
EXTRA_ARGS=${EXTRA_ARGS:-}

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if [ -n "$TOOLCHAIN" ]; then set -- cargo "+$TOOLCHAIN"; else set -- cargo; fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
echo "== $(cargo fuzz --version), $("$@" --version), rustc $(rustc ${TOOLCHAIN:++$TOOLCHAIN} --version | cut -d' ' -f2-)"

# Release build with debug assertions (so integer overflow etc. panic) and coverage instrumentation.
"$@" fuzz build --sanitizer "$SANITIZER" --debug-assertions

mkdir -p logs
status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    dict=""
    [ -f "dicts/$t.dict" ] && dict="-dict=dicts/$t.dict"
    echo "== $t: -runs=$RUNS (bounded by ${MAX_TIME}s), log in rust/fuzz/logs/$t.log"
    start=$(date +%s)
    # shellcheck disable=SC2086 # $dict and $EXTRA_ARGS are intentionally split
    if "$@" fuzz run --sanitizer "$SANITIZER" --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 $dict $EXTRA_ARGS >"logs/$t.log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
    fi
    end=$(date +%s)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -n 1)
    corpus=$(find "corpus/$t" -type f | wc -l | tr -d ' ')
    corpus_bytes=$(find "corpus/$t" -type f -exec cat {} + | wc -c | tr -d ' ')
    echo "   $t: $result executions=${execs:-?} exec/s=${rate:-?} wall=$((end - start))s corpus=${corpus} files/${corpus_bytes} bytes"
    if [ "$result" = FAILED ]; then
        grep -E "panicked|ERROR|Test unit written" "logs/$t.log" | head -n 5 || true
    fi
done
exit "$status"
