#!/usr/bin/env bash
# Clients that close their sending side early must still receive every byte (issue 16): a server
# that closes its socket while the client's close_notify or FIN sits unread in the receive queue
# makes the kernel answer with a reset, which throws away the response still queued on both
# sides. ktla-serve ends such connections with ktla_conn_shutdown (close_notify, FIN, then the
# client's remaining input dropped until it closes), and these are the checks:
#
# - for TLS 1.2 and 1.3 and bodies of 1 byte to 10 MiB: GET + close_notify + FIN sent at once,
#   and the same with close_notify 0.1 s after the request (while the answer is going out), the
#   client reading only 0.3 s later: the whole body, SHA-256 checked, ended by the server's
#   close_notify; and a keep-alive GET followed by close_notify + FIN;
# - gnutls-cli reading a GET from a closed stdin (it sends close_notify as soon as its input
#   ends, and reads slowly), the case the issue measured;
# - a client that sends its request and a FIN and never reads a 10 MiB answer is cut once the
#   idle timeout passes, and the server's descriptors are back to their count;
# - the access log says how each response ended: "ok", "timeout", "client-gone".
#
# usage: tests/serve/halfclose.sh BUILD_DIR kernel|userspace
# Prints TAP, then "halfclose: N passed, N failed, 0 skipped"; exit status 1 on failure.
set -u
build=$(cd "$1" && pwd)
expect=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
. "$here/../tap.sh"

py=/usr/bin/python3
if [ -n "${KTLA_IN_GUEST:-}" ]; then
    IDLE=10 SLACK=20 GNUTLS_RUNS=2 GNUTLS_MIB=2 # gnutls-cli writes a byte per write(2)
else
    IDLE=3 SLACK=5 GNUTLS_RUNS=5 GNUTLS_MIB=5
fi

root=$work/www
mkdir -p "$root"
head -c 1 /dev/urandom >"$root/f1"
head -c 16385 /dev/urandom >"$root/f16k"
head -c $(((1 << 20) + 1)) /dev/urandom >"$root/f1m"
head -c $((10 << 20)) /dev/urandom >"$root/f10m"
head -c $((GNUTLS_MIB << 20)) /dev/urandom >"$root/fg"
sha() { sha256sum "$1" | cut -d' ' -f1; }

policy=auto
[ "$expect" = kernel ] && policy=require
"$build/ktla-serve" --listen 127.0.0.1:0 --workers 1 --ktls $policy --idle-timeout $IDLE \
    --access-log "$work/access.log" "$root" >"$work/server.out" 2>"$work/server.err" &
server=$!
pids+=("$server")
if ! wait_for 120 grep -q '^ktla-serve .* at https://' "$work/server.out"; then
    not_ok "ktla-serve starts" "$(cat "$work/server.out" "$work/server.err")"
    echo "halfclose: $pass passed, $fail failed, 0 skipped"
    exit 1
fi
port=$(grep -o 'https://[^ ]*' "$work/server.out" | head -n 1)
port=${port##*:}
port=${port%/}
fds() { ls "/proc/$server/fd" 2>/dev/null | wc -l; }
fds_at_most() { [ "$(fds)" -le "$1" ]; }

# A warm-up request, then the descriptor baseline (the log file and the ring are open by then).
curl -sk -o /dev/null "https://127.0.0.1:$port/f1"
wait_for 10 grep -q ' /f1 ' "$work/access.log"
base=$(fds)

oks=1 # log lines that must say "ok": the warm-up so far
for v in 1.2 1.3; do
    for f in f1 f16k f1m f10m; do
        size=$(stat -c %s "$root/$f")
        for pause in 0 0.1; do
            what="TLS $v, $f: GET + close_notify + FIN"
            [ "$pause" = 0 ] && what="$what at once" || what="$what ${pause} s after the GET"
            got=$($py "$here/halfclose.py" fetch --port "$port" --path "/$f" --version $v \
                --pause $pause --delay 0.3 2>&1)
            check "$what, read 0.3 s later: all $size bytes, SHA-256, then the server's close_notify" \
                '[ "$got" = "$size $(sha "$root/$f") close_notify" ]' "got: $got"
            oks=$((oks + 1))
        done
    done
    got=$($py "$here/halfclose.py" fetch --port "$port" --path /f10m --version $v --keepalive \
        --pause 0.1 --delay 0.3 2>&1)
    check "TLS $v: keep-alive GET of 10 MiB, close_notify + FIN during the answer: all of it" \
        '[ "$got" = "$((10 << 20)) $(sha "$root/f10m") close_notify" ]' "got: $got"
    oks=$((oks + 1))
done

# gnutls-cli sends close_notify when its standard input ends, here at once, and then reads the
# answer into a slow consumer.
for v in 1.2 1.3; do
    whole=0 detail=
    for i in $(seq 1 $GNUTLS_RUNS); do
        printf 'GET /fg HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
            timeout 120 gnutls-cli --insecure --priority "NORMAL:-VERS-ALL:+VERS-TLS$v" \
                -p "$port" 127.0.0.1 >"$work/gnutls.out" 2>"$work/gnutls.err"
        got=$($py - "$work/gnutls.out" <<'EOF'
import hashlib, re, sys
# gnutls-cli prints its own lines before and after what the server sent.
d = open(sys.argv[1], "rb").read()
i = d.find(b"HTTP/1.1 200")
j = d.find(b"\r\n\r\n", i)
m = re.search(rb"\r\nContent-Length: *([0-9]+)", d[i:j], re.I) if i >= 0 and j >= 0 else None
body = d[j + 4:j + 4 + int(m.group(1))] if m else b""
print(len(body), hashlib.sha256(body).hexdigest())
EOF
)
        if [ "$got" = "$((GNUTLS_MIB << 20)) $(sha "$root/fg")" ]; then
            whole=$((whole + 1))
        else
            detail="run $i: $got; $(tail -n 2 "$work/gnutls.err")"
        fi
        oks=$((oks + 1))
    done
    check "gnutls-cli, TLS $v, GET from a closed stdin: $GNUTLS_RUNS of $GNUTLS_RUNS downloads of $GNUTLS_MIB MiB whole" \
        '[ $whole = $GNUTLS_RUNS ]' "$whole whole; last failure: $detail"
done

# Every download above was logged as ended "ok" and in the expected mode.
wait_for 10 sh -c "[ \$(wc -l <'$work/access.log') -ge $oks ]"
nok=$(grep -c ' 200 .* ok$' "$work/access.log")
nmode=$(grep -c " $expect [0-9]* [0-9.]* ok\$" "$work/access.log")
check "access log: $oks responses ended \"ok\", all in $expect mode" \
    '[ "$nok" = $oks ] && [ "$nmode" = $oks ]' "$(tail -n 3 "$work/access.log")"

# A client that cancels a download (a reset after 64 KiB) is logged as such, with what went out.
$py "$here/halfclose.py" abandon --port "$port" --path /f10m --version 1.3 --after 65536 \
    >/dev/null 2>&1
wait_for 10 grep -q ' client-gone$' "$work/access.log"
line=$(grep ' client-gone$' "$work/access.log" | tail -n 1)
body=$(echo "$line" | awk '{ print $10 }')
total=$(echo "$line" | awk '{ print $(NF - 2) }')
check "a download reset after 64 KiB: logged \"client-gone\" with the bytes that went out" \
    '[ -n "$line" ] && [ "$total" -ge 65536 ] && [ "$body" -gt 0 ] && [ "$body" -lt $((10 << 20)) ]' \
    "line: $line"

# A client that half-closes and never reads: its answer cannot go out, so the idle timeout cuts
# it (abortively: nothing graceful would get through), and nothing of it stays behind.
$py "$here/halfclose.py" stall --port "$port" --path /f10m --version 1.2 \
    --hold $((IDLE + SLACK + 10)) >"$work/stall.out" 2>&1 &
stall=$!
pids+=("$stall")
wait_for 10 grep -q stalled "$work/stall.out"
t0=$(date +%s)
wait_for $((IDLE + SLACK)) grep -q ' timeout$' "$work/access.log"
took=$(($(date +%s) - t0))
line=$(grep ' timeout$' "$work/access.log" | tail -n 1)
check "half-closed, never reading: cut after the idle timeout (${IDLE} s; took ${took} s), logged \"timeout\"" \
    '[ -n "$line" ]' "$(tail -n 3 "$work/access.log")"
wait_for $((SLACK + 5)) fds_at_most "$base"
check "...and the server's descriptors are back to $base while the client still holds its socket" \
    '[ "$(fds)" -le "$base" ]' "now $(fds): $(ls -l /proc/$server/fd | tail -n +2 | awk '{ print $NF }' | sort | uniq -c | sort -rn | head -5)"
kill "$stall" 2>/dev/null

kill -TERM "$server"
wait "$server"
src=$?
check "the server exits 0 on SIGTERM" '[ $src = 0 ]' "$(tail -n 5 "$work/server.err")"
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/server.err"; then
    not_ok "no sanitizer reports from the server" "$(grep -E -A8 'ERROR:|runtime error:' "$work/server.err")"
else
    ok "no sanitizer reports from the server"
fi

echo "halfclose: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
