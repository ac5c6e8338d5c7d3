#!/bin/sh
# Runs inside the 6.17 guest kernel (scripts/test.sh): the kernel-mode suites again on a kernel
# that can follow TLS 1.3 KeyUpdate, with kernel TLS mandatory. One TAP file per suite into OUT,
# then the kernel's rekey counters.
# usage: scripts/guest-rekey-suites.sh BUILD_DIR OUT_DIR
build=$1
out=$2
export KTLA_REQUIRE_KTLS=1
status=0
uname -r
"$build/tests/ktla-kernel-tests" --tap="$out/kernel.tap" -j2 || status=1
KTLA_COLD_DIR="$out" "$build/tests/ktla-acceptor-tests" --tap="$out/acceptor.tap" -j2 || status=1
"$build/tests/ktla-conformance-tests" --tap="$out/conformance.tap" -j2 || status=1
tests/serve/serve.sh "$build" kernel >"$out/serve.tap" 2>&1 || status=1
tests/serve/h2.sh "$build" kernel >"$out/h2.tap" 2>&1 || status=1
grep Rekey /proc/net/tls_stat
exit $status
