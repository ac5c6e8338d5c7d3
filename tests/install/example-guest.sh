#!/usr/bin/env bash
# examples/send-file, the library as a user's program uses it, against a real client where the
# kernel carries TLS (issue 13): run inside the guest by scripts/guest-suites.sh. Each TLS
# version downloads a file with curl; the bytes must match, the example must report kernel TX
# and RX for the connection, and /proc/net/tls_stat must count the contexts.
# usage: tests/install/example-guest.sh BUILD_DIR
# Prints TAP, then "example: N passed, N failed, 0 skipped".
set -u
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
. "$here/../tap.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
head -c $(((1 << 20) + 3)) /dev/urandom >"$work/file.bin"
"$build/tests/example-send-file" --cert "$work/cert.pem" --key "$work/key.pem" "$work/file.bin" \
    >"$work/out" 2>"$work/err" &
pids+=($!)
wait_for 60 grep -q '^serving ' "$work/out"
url=$(grep -o 'https://[^ ]*' "$work/out" | head -n 1)
tls_tx() { awk '$1 == "TlsTxSw" { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
for v in 1.2 1.3; do
    tx0=$(tls_tx)
    curl -s --insecure --tlsv$v --tls-max $v --max-time 120 "$url" -o "$work/copy" 2>"$work/curl.err"
    check "send-file, TLS $v: the file arrives whole" 'cmp -s "$work/file.bin" "$work/copy"' \
        "$(cat "$work/curl.err" "$work/err")"
    wait_for 10 sh -c "grep -c 'record layer' '$work/out' | grep -qx $([ $v = 1.2 ] && echo 1 || echo 2)"
    line=$(grep 'record layer' "$work/out" | tail -n 1)
    check "send-file, TLS $v: the example reports kernel TX and RX ($line)" \
        'echo "$line" | grep -q "tx kernel, rx kernel"'
    check "send-file, TLS $v: /proc/net/tls_stat counted a TX context" '[ "$(tls_tx)" -gt "$tx0" ]'
done
echo "example: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
