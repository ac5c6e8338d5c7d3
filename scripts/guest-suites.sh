#!/bin/sh
# Runs inside the guest kernel (started by scripts/vm.sh from scripts/test.sh): every suite that
# needs kernel TLS, with kernel TLS mandatory. Writes one TAP file per suite into OUT.
# usage: scripts/guest-suites.sh BUILD_DIR OUT_DIR
build=$1
out=$2
export KTLA_REQUIRE_KTLS=1
status=0
"$build/tests/ktla-kernel-tests" --tap="$out/kernel.tap" -j2 || status=1
KTLA_COLD_DIR="$out" "$build/tests/ktla-acceptor-tests" --tap="$out/acceptor.tap" -j2 || status=1
"$build/tests/ktla-conformance-tests" --tap="$out/conformance.tap" -j2 || status=1
tests/interop/interop.sh "$build" kernel >"$out/interop.tap" 2>&1 || status=1
tests/serve/serve.sh "$build" kernel >"$out/serve.tap" 2>&1 || status=1
tests/serve/h2.sh "$build" kernel >"$out/h2.tap" 2>&1 || status=1
tests/serve/halfclose.sh "$build" kernel >"$out/halfclose.tap" 2>&1 || status=1
tests/install/example-guest.sh "$build" >"$out/example.tap" 2>&1 || status=1
tests/serve/hostile.sh "$build" kernel >"$out/hostile.tap" 2>&1 || status=1
tests/serve/h2attack.sh "$build" kernel >"$out/h2attack.tap" 2>&1 || status=1
# Chromium over h2 with kernel TLS: playwright-core is the one the host run installed (the guest's
# HOME is a tmpfs, and it has no network).
XDG_CACHE_HOME=${KTLA_HOST_CACHE:-/nonexistent} tests/serve/browser.sh "$build" kernel h2 \
    >"$out/browser.tap" 2>&1 || status=1
exit $status
