#!/usr/bin/env bash
# README's test command, and CI's whole job: installs what is missing, builds ktla twice (plain,
# and with AddressSanitizer + UndefinedBehaviorSanitizer), runs the host suites, then boots a real
# Linux kernel with kernel TLS (scripts/vm.sh) and runs the kernel suite inside it, where kernel
# TLS is mandatory: a skipped kernel test there is a failure.
#
# Ends with one summary line per suite ("NAME: N passed, N failed, N skipped") and exits non-zero
# if anything failed. KTLA_SKIP_GUEST=1 leaves the guest out (a quick local loop; never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
jobs=$(nproc)

echo "== build (plain and sanitized)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKTLA_TESTS=ON -DKTLA_WERROR=$werror >/dev/null
cmake --build build -j"$jobs" >/dev/null
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DKTLA_SANITIZE=ON -DKTLA_TESTS=ON \
    -DKTLA_WERROR=$werror >/dev/null
cmake --build build/asan -j"$jobs" >/dev/null

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

summaries=()
status=0

# tally NAME TAPFILE REQUIRE_NO_SKIP: prints the summary line and records failure.
tally() {
    local name=$1 tap=$2 strict=$3 pass fail skip
    pass=$(grep -E '^ok ' "$tap" | grep -vc '# SKIP' || true)
    skip=$(grep -E '^ok ' "$tap" | grep -c '# SKIP' || true)
    fail=$(grep -cE '^not ok ' "$tap" || true)
    local line="$name: $pass passed, $fail failed, $skip skipped"
    if [ "$strict" = strict ] && [ "$skip" -gt 0 ]; then
        line="$line (skips count as failures here)"
        status=1
    fi
    if [ "$fail" -gt 0 ] || [ "$((pass + fail + skip))" -eq 0 ]; then
        status=1
    fi
    summaries+=("$line")
}

# sanitizer_check NAME LOG: Criterion reports a test that leaked or tripped UBSan as passed (the
# report comes from the test's process at exit), so the reports themselves fail the run.
sanitizer_check() {
    if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$2"; then
        echo "$1: sanitizer reports (see $2):" >&2
        grep -E -A12 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$2" | head -60 >&2
        summaries+=("$1: sanitizer reports in $2")
        status=1
    fi
}

# run_suite NAME TAPFILE COMMAND...: a suite that exits non-zero without a failing test (a crash
# outside any test, a sanitizer report at exit) still fails the run.
run_suite() {
    local name=$1 tap=$2 log=${2%.tap}.log
    shift 2
    rm -f "$tap"
    if ! "$@" --tap="$tap" -j"$jobs" >"$log" 2>&1; then
        echo "$name: the suite exited non-zero" >&2
        status=1
    fi
    tail -n 1 "$log"
    sanitizer_check "$name" "$log"
    [ -f "$tap" ] || : > "$tap"
}

mkdir -p build/results
echo "== host suite (sanitized)"
run_suite host build/results/host.tap build/asan/tests/ktla-tests
tally host build/results/host.tap lenient
grep -vE '^(ok|TAP|1\.\.|#)' build/results/host.tap | head -40 || true

echo "== kernel suite on this machine's kernel (skips with the probe's reason where it has no TLS)"
run_suite kernel-host build/results/kernel-host.tap build/asan/tests/ktla-kernel-tests
tally kernel-host build/results/kernel-host.tap lenient
grep -m1 '# SKIP' build/results/kernel-host.tap | sed 's/.*# SKIP/  reason:/' || true

echo "== acceptor suite on this machine (userspace mode where the kernel has no TLS)"
run_suite acceptor-host build/results/acceptor-host.tap build/asan/tests/ktla-acceptor-tests
tally acceptor-host build/results/acceptor-host.tap lenient
grep -vE '^(ok|TAP|1\.\.|#)' build/results/acceptor-host.tap | head -40 || true

echo "== conformance: crafted records after a real handshake (userspace mode where the kernel has no TLS)"
run_suite conformance-host build/results/conformance-host.tap build/asan/tests/ktla-conformance-tests
tally conformance-host build/results/conformance-host.tap lenient
grep -vE '^(ok|TAP|1\.\.|#)' build/results/conformance-host.tap | head -40 || true

echo "== interoperability on this machine: s_client, curl, gnutls-cli, Python ssl, Go crypto/tls downloading from ktla-serve"
# A kernel with TLS loaded has /proc/net/tls_stat; then the host connections must be offloaded too.
host_mode=userspace
[ -r /proc/net/tls_stat ] && host_mode=kernel
tests/interop/interop.sh build/asan "$host_mode" >build/results/interop-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/interop-host.tap | head -40 || true
tally interop-host build/results/interop-host.tap lenient

echo "== ktla-serve: pure stages in memory, then end to end with curl"
run_suite serve-unit build/results/serve-unit.tap build/asan/tests/ktla-serve-tests
tally serve-unit build/results/serve-unit.tap lenient
tests/serve/serve.sh build/asan "$host_mode" >build/results/serve-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/serve-host.tap | head -40 || true
tally serve-host build/results/serve-host.tap lenient

echo "== ktla-serve over HTTP/2: ALPN, the same answers, many streams, the drain's GOAWAY"
tests/serve/h2.sh build/asan "$host_mode" >build/results/h2-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/h2-host.tap | head -40 || true
tally h2-host build/results/h2-host.tap lenient

echo "== ktla-serve: clients that close their side early still get every byte"
tests/serve/halfclose.sh build/asan "$host_mode" >build/results/halfclose-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/halfclose-host.tap | head -40 || true
tally halfclose-host build/results/halfclose-host.tap lenient

echo "== ktla-serve stopped and replaced: listeners closed at the drain, --takeover without a failed request"
tests/serve/restart.sh build/asan "$host_mode" >build/results/restart-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/restart-host.tap | head -40 || true
tally restart-host build/results/restart-host.tap lenient

echo "== ktla-serve against hostile clients, a good client downloading throughout"
tests/serve/hostile.sh build/asan "$host_mode" >build/results/hostile-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/hostile-host.tap | head -40 || true
grep -E '^# (main server (descriptors|VmRSS)|good client|storms|whole suite)' build/results/hostile-host.tap || true
tally hostile-host build/results/hostile-host.tap lenient

echo "== ktla-serve's HTTP/2 under attack: rapid reset, CONTINUATION and SETTINGS/PING/PRIORITY floods, HPACK bomb, stalls"
tests/serve/h2attack.sh build/asan "$host_mode" >build/results/h2attack-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/h2attack-host.tap | head -40 || true
grep -E '^# (main server after|whole suite)' build/results/h2attack-host.tap || true
tally h2attack-host build/results/h2attack-host.tap lenient

echo "== ktla-serve --metrics: Prometheus figures move by exactly the requests made"
tests/serve/metrics.sh build/asan "$host_mode" >build/results/metrics-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/metrics-host.tap | head -40 || true
tally metrics-host build/results/metrics-host.tap lenient

echo "== ktla-serve: several --listen addresses, --config and --check-config"
tests/serve/config.sh build/asan "$host_mode" >build/results/config-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/config-host.tap | head -40 || true
tally config-host build/results/config-host.tap lenient

echo "== ktla-serve in a real browser (Chromium headless): charset, precompressed assets, media ranges; h2, then HTTP/1.1"
tests/serve/browser.sh build/asan "$host_mode" h2 >build/results/browser-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/browser-host.tap | head -40 || true
tally browser-host build/results/browser-host.tap lenient
tests/serve/browser.sh build/asan "$host_mode" http/1.1 >build/results/browser-h1-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/browser-h1-host.tap | head -40 || true
tally browser-h1-host build/results/browser-h1-host.tap lenient

echo "== benchmark harness smoke test (ktla-bench against ktla-serve and ktla-echo)"
bench/smoke.sh build/asan >build/results/bench-smoke.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/bench-smoke.tap | head -40 || true
tally bench-smoke build/results/bench-smoke.tap lenient

echo "== install: cmake --install into a temporary prefix, examples built 3 ways and run, ABI and man pages"
tests/install/install.sh >build/results/install.tap 2>&1 || true
grep -E '^not ok' -A12 build/results/install.tap | head -40 || true
tally install build/results/install.tap lenient

echo "== deb: Debian packages built, lintian, installed with dpkg -i, ktla-serve and an example used, purged"
tests/install/deb.sh >build/results/deb.tap 2>&1 || true
grep -E '^not ok' -A12 build/results/deb.tap | head -40 || true
tally deb build/results/deb.tap lenient

echo "== ktla-serve as a service: socket activation, --user, sd_notify, --pid-file"
tests/serve/service.sh build/asan >build/results/service-host.tap 2>&1 || true
grep -E '^not ok' -A8 build/results/service-host.tap | head -40 || true
tally service-host build/results/service-host.tap lenient

echo "== ktla-serve end to end under valgrind memcheck (errors, leaks, descriptors)"
tests/serve/valgrind.sh build >build/results/valgrind.tap 2>&1 || true
grep -E '^not ok' -A30 build/results/valgrind.tap | head -60 || true
tally valgrind build/results/valgrind.tap strict

echo "== fuzzing, briefly (scripts/fuzz.sh runs it long)"
if scripts/fuzz.sh "${KTLA_FUZZ_SECONDS:-30}" >build/results/fuzz.log 2>&1; then
    fuzz_line=$(tail -n 1 build/results/fuzz.log)
else
    fuzz_line=$(tail -n 1 build/results/fuzz.log)
    status=1
fi
grep -E '^fuzz_' build/results/fuzz.log || tail -n 20 build/results/fuzz.log
summaries+=("$fuzz_line")

if [ "${KTLA_SKIP_GUEST:-}" = 1 ] && [ "${CI:-}" != "true" ]; then
    summaries+=("guest: not run (KTLA_SKIP_GUEST=1)")
else
    echo "== inside the guest kernel (kernel TLS mandatory): kernel, acceptor, interop, serve, h2, hostile, h2attack, browser"
    rm -f build/vm/kernel.tap build/vm/acceptor.tap build/vm/conformance.tap build/vm/interop.tap \
        build/vm/serve.tap build/vm/h2.tap build/vm/halfclose.tap build/vm/example.tap \
        build/vm/hostile.tap build/vm/h2attack.tap build/vm/browser.tap
    start=$(date +%s)
    if ! scripts/vm.sh -- env ASAN_OPTIONS="$ASAN_OPTIONS" UBSAN_OPTIONS="$UBSAN_OPTIONS" \
        KTLA_HOST_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}" \
        scripts/guest-suites.sh build/asan build/vm >build/results/guest-console.log 2>&1; then
        echo "guest: a suite or the guest failed; end of the console log:" >&2
        tail -n 30 build/results/guest-console.log >&2
        status=1
    fi
    echo "  guest run: $(($(date +%s) - start)) s"
    sanitizer_check guest build/results/guest-console.log
    for suite in kernel acceptor conformance interop serve h2 halfclose example hostile h2attack browser; do
        [ -f "build/vm/$suite.tap" ] || : >"build/vm/$suite.tap"
        cp "build/vm/$suite.tap" "build/results/$suite-guest.tap"
        grep -E '^not ok' -A8 "build/vm/$suite.tap" | head -40 || true
        tally "$suite-guest" "build/results/$suite-guest.tap" strict
    done
fi

if [ "${KTLA_SKIP_GUEST:-}" != 1 ] || [ "${CI:-}" = "true" ]; then
    # 6.1 cannot follow a TLS 1.3 KeyUpdate; 6.14+ can, and ktla then rekeys the kernel: the
    # kernel-mode suites again on Debian's 6.17 (fetched and verified once, scripts/kernel-fetch.sh).
    echo "== inside a 6.17 guest kernel (rekeying): kernel, acceptor, conformance, serve, h2"
    out617=build/vm617
    mkdir -p $out617
    rm -f $out617/*.tap
    start=$(date +%s)
    if ! scripts/vm.sh --kernel 6.17 --out $out617 -- env ASAN_OPTIONS="$ASAN_OPTIONS" \
        UBSAN_OPTIONS="$UBSAN_OPTIONS" scripts/guest-rekey-suites.sh build/asan $out617 \
        >build/results/guest617-console.log 2>&1; then
        echo "guest 6.17: a suite or the guest failed; end of the console log:" >&2
        tail -n 30 build/results/guest617-console.log >&2
        status=1
    fi
    echo "  guest 6.17 run: $(($(date +%s) - start)) s; $(grep -aE 'TlsRxRekeyOk|TlsTxRekeyOk' build/results/guest617-console.log | tr -s ' \t' ' ' | tr '\n' ' ')"
    sanitizer_check guest617 build/results/guest617-console.log
    for suite in kernel acceptor conformance serve h2; do
        [ -f "$out617/$suite.tap" ] || : >"$out617/$suite.tap"
        cp "$out617/$suite.tap" "build/results/$suite-guest617.tap"
        grep -E '^not ok' -A8 "$out617/$suite.tap" | head -40 || true
        tally "$suite-guest-6.17" "build/results/$suite-guest617.tap" strict
    done
fi

echo
echo "== summary"
for s in "${summaries[@]}"; do echo "$s"; done
exit $status
