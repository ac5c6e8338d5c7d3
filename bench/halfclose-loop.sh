#!/usr/bin/env bash
# The case of issue 16, repeated: gnutls-cli pipes one GET (Connection: close) from a closed
# stdin, so it sends its close_notify at once and then reads slowly; the body is cut out of what
# it printed at Content-Length and hashed. A server that closes its socket while that close_notify
# sits unread makes the kernel reset the connection and lose the end of the download.
#
# usage: bench/halfclose-loop.sh BUILD_DIR [RUNS] [BYTES]   (defaults: 300 runs, 5 MiB)
#   On the host the server runs in userspace mode; in the guest, with kernel TLS required:
#   scripts/vm.sh -- bench/halfclose-loop.sh build 300 100000   (the issue's guest case)
# Prints "TLS 1.2: N whole, N truncated" and the same for 1.3; exit 1 if any was truncated.
set -u
build=$(cd "$1" && pwd)
runs=${2:-300}
bytes=${3:-$((5 << 20))}
work=$(mktemp -d)
trap 'kill $srv 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
head -c "$bytes" /dev/urandom >"$work/f"
policy=auto
[ -r /proc/net/tls_stat ] && policy=require
"$build/ktla-serve" --listen 127.0.0.1:0 --workers 1 --ktls $policy --access-log "$work/log" \
    "$work" >"$work/srv.out" 2>&1 &
srv=$!
for _ in $(seq 100); do grep -q '^ktla-serve .* at https://' "$work/srv.out" && break; sleep 0.2; done
port=$(grep -o 'https://[^ ]*' "$work/srv.out" | head -n 1)
port=${port##*:}
port=${port%/}
want=$(sha256sum "$work/f" | cut -d' ' -f1)
status=0
for v in 1.2 1.3; do
    whole=0 cut=0
    for _ in $(seq "$runs"); do
        printf 'GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
            timeout 120 gnutls-cli --insecure --priority "NORMAL:-VERS-ALL:+VERS-TLS$v" \
                -p "$port" 127.0.0.1 >"$work/out" 2>/dev/null
        got=$(/usr/bin/python3 - "$work/out" <<'EOF'
import hashlib, re, sys
d = open(sys.argv[1], "rb").read()
i = d.find(b"HTTP/1.1 200")
j = d.find(b"\r\n\r\n", i)
m = re.search(rb"\r\nContent-Length: *([0-9]+)", d[i:j], re.I) if i >= 0 and j >= 0 else None
print(hashlib.sha256(d[j + 4:j + 4 + int(m.group(1))] if m else b"").hexdigest())
EOF
)
        if [ "$got" = "$want" ]; then whole=$((whole + 1)); else cut=$((cut + 1)); fi
    done
    echo "TLS $v: $whole whole, $cut truncated ($policy mode, $bytes bytes)"
    [ $cut = 0 ] || status=1
done
exit $status
