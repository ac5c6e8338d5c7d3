#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan) and runs each one, starting from the seed
# corpora in tests/fuzz/corpus/ (and tests/fuzz/NAME.dict where there is one). New inputs go to
# build/fuzz/corpus/NAME, never into the repo.
#
# usage: scripts/fuzz.sh [SECONDS_EACH] (default 600; scripts/test.sh runs it briefly)
# Prints per harness its executions, coverage and result, then "fuzz: N passed, N failed, 0 skipped".
# A crash leaves its input in build/fuzz/crash-* (reproduce: build/fuzz/tests/fuzz/fuzz_NAME FILE).
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
harnesses=(handshake pipelined http h2)

CC=clang cmake -S . -B build/fuzz -DKTLA_FUZZ=ON -DKTLA_TESTS=OFF >/dev/null || exit 1
cmake --build build/fuzz -j"$(nproc)" --target "${harnesses[@]/#/fuzz_}" >/dev/null || exit 1

pass=0 fail=0
for h in "${harnesses[@]}"; do
    mkdir -p "build/fuzz/corpus/$h"
    log="build/fuzz/$h.log"
    dict=()
    [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="tests/fuzz/$h.dict")
    if build/fuzz/tests/fuzz/fuzz_$h -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix=build/fuzz/ -print_final_stats=1 "${dict[@]}" \
        "build/fuzz/corpus/$h" "tests/fuzz/corpus/$h" >"$log" 2>&1; then
        pass=$((pass + 1))
        result=ok
    else
        fail=$((fail + 1))
        result="FAILED (see $log)"
        grep -E 'invariant broken|ERROR: |SUMMARY' "$log" | head -5
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
    echo "fuzz_$h: ${runs:-?} executions in ${secs}s, ${cov:-no coverage line}: $result"
done
echo "fuzz: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
