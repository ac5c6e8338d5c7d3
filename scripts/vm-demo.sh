#!/usr/bin/env bash
# Kernel TLS, seen working: boots the guest kernel (scripts/vm.sh), runs ktla-serve there with
# --ktls require, downloads a file with curl over TLS 1.2 and over TLS 1.3, checks its SHA-256,
# and prints /proc/net/tls_stat before and after: each download adds one kernel TX and one RX
# context (TlsTxSw, TlsRxSw), i.e. the kernel did the record layer. Takes a minute or two (the
# guest is emulated, so its speed means nothing).
#
# usage: scripts/vm-demo.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${KTLA_BUILD_DIR:-$repo/build}

if [ "${1:-}" != --in-guest ]; then
    "$repo/scripts/deps.sh"
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target ktla-serve >/dev/null
    cd "$repo"
    exec scripts/vm.sh --out "$build/vm-demo" -- env KTLA_BUILD_DIR="$build" \
        scripts/vm-demo.sh --in-guest
fi

# ---- from here on, inside the guest
work=$(mktemp -d)
head -c $((4 << 20)) /dev/urandom >"$work/file.bin"
want=$(sha256sum "$work/file.bin" | cut -d' ' -f1)
"$build/ktla-serve" --listen 127.0.0.1:0 --workers 1 --ktls require --access-log - "$work" \
    >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait; rm -rf "$work"' EXIT
for _ in $(seq 600); do grep -q 'https://' "$work/server.log" && break; sleep 0.1; done
url=$(grep -o 'https://[^ ]*' "$work/server.log" | head -n 1)
echo "== ktla-serve, inside $(uname -sr):"
cat "$work/server.log"
echo
echo "== /proc/net/tls_stat before (any TlsTxSw already counted: ktla_kernel_probe's test"
echo "   connections at start-up, one transmit key per cipher)"
cat /proc/net/tls_stat
status=0
for v in 1.2 1.3; do
    echo
    echo "== curl --tlsv$v --tls-max $v ${url}file.bin"
    curl -sSk --tlsv$v --tls-max $v -o "$work/got" \
        -w '   %{http_code}, %{size_download} bytes in %{time_total} s\n' "${url}file.bin"
    got=$(sha256sum "$work/got" | cut -d' ' -f1)
    if [ "$got" = "$want" ]; then
        echo "   SHA-256 matches: $got"
    else
        echo "   SHA-256 DIFFERS: got $got, want $want"
        status=1
    fi
    echo "== /proc/net/tls_stat after TLS $v"
    cat /proc/net/tls_stat
done
echo
echo "== the server's access log (the mode column says who carried the records)"
grep '"GET' "$work/server.log"
exit $status
