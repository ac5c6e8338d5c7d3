#!/usr/bin/env bash
# Stopping and replacing ktla-serve without turning clients away (issue 12, item 9):
# - on SIGTERM the server closes its listening sockets at once, so a client that arrives during
#   the drain is refused straight away instead of connecting and then waiting for an answer
#   that never comes, while the download in flight finishes;
# - a second server started with --takeover shares the port (SO_REUSEPORT) with the running one;
#   SIGTERM to the old one then leaves every new connection to the new one, and no request of a
#   client that keeps asking throughout fails;
# - without --takeover, a second server on a port in use is refused, as before.
#
# usage: tests/serve/restart.sh BUILD_DIR kernel|userspace
# Prints TAP, then "restart: N passed, N failed, 0 skipped"; exit status 1 on failure.
set -u
# In a network namespace of its own, where net.ipv4.tcp_migrate_req can be set without touching
# the machine's: with it (Linux 5.14+) the kernel hands the connections still waiting in a
# closed listener's queue to another socket of the same SO_REUSEPORT group, instead of
# resetting them. A takeover without a single reset needs it; the README says so.
if [ -z "${KTLA_RESTART_NETNS:-}" ] && unshare -n true 2>/dev/null; then
    exec env KTLA_RESTART_NETNS=1 unshare -n -- "$0" "$@"
fi
if [ -n "${KTLA_RESTART_NETNS:-}" ]; then
    ip link set lo up
    sysctl -qw net.ipv4.tcp_migrate_req=1
fi
build=$(cd "$1" && pwd)
expect=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
. "$here/../tap.sh"

slack=5
[ -n "${KTLA_IN_GUEST:-}" ] && slack=30
policy=auto
[ "$expect" = kernel ] && policy=require
root=$work/www
mkdir -p "$root"
head -c $((20 << 20)) /dev/urandom >"$root/big.bin"
echo hello >"$root/small.txt"
sha() { sha256sum "$1" | cut -d' ' -f1; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=$((30000 + RANDOM % 20000))
while ! port_free $port; do port=$((port + 1)); done
url="https://127.0.0.1:$port"

# start NAME ARGS...: a server on $port; its pid in $spid (the banner waited for).
start() {
    local name=$1
    shift
    "$build/ktla-serve" --listen "127.0.0.1:$port" --workers 2 --ktls $policy \
        --access-log "$work/$name.log" "$@" "$root" >"$work/$name.out" 2>"$work/$name.err" &
    spid=$!
    pids+=("$spid")
    wait_for 60 grep -q '^ktla-serve .* at https://' "$work/$name.out"
}
# ok_requests N: N requests in a row, each a fresh connection; prints how many failed.
failed_requests() {
    local bad=0 i
    for i in $(seq "$1"); do
        curl -sk --max-time 5 -o /dev/null -w '%{http_code}\n' "$url/small.txt" 2>/dev/null |
            grep -qx 200 || bad=$((bad + 1))
    done
    echo $bad
}

# ---- a drain refuses newcomers at once, and finishes what is in flight
start a
a=$spid
curl -sk --limit-rate 4M -o "$work/dl-a" "$url/big.bin" &
dl=$!
wait_for 10 sh -c "[ -s '$work/dl-a' ]"
kill -TERM $a
sleep 0.3
t0=$(date +%s%N)
curl -sk --max-time 10 -o /dev/null "$url/small.txt"
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
check "during the drain a newcomer is refused at once (curl exit $rc in $ms ms)" \
    '[ $rc = 7 ] && [ $ms -lt 2000 ]'
wait $dl
check "...while the 20 MiB download in flight completes (SHA-256)" \
    '[ "$(sha "$work/dl-a")" = "$(sha "$root/big.bin")" ]'
wait $a
src=$?
check "...and the server exits 0" '[ $src = 0 ]' "$(tail -n 3 "$work/a.err")"

# ---- a second server on a port in use: refused, unless it takes the port over
start a2
a=$spid
"$build/ktla-serve" --listen "127.0.0.1:$port" --ktls $policy "$root" >"$work/refused.out" \
    2>"$work/refused.err" &
rpid=$!
wait_for 20 sh -c "! kill -0 $rpid 2>/dev/null"
wait $rpid
rrc=$?
check "a second server without --takeover is refused (exit $rrc): the port is in use" \
    '[ $rrc != 0 ] && grep -q "in use" "$work/refused.err"' "$(cat "$work/refused.err")"

curl -sk --limit-rate 4M -o "$work/dl-b" "$url/big.bin" &
dl=$!
wait_for 10 sh -c "[ -s '$work/dl-b' ]"
start b --takeover
b=$spid
check "a second server with --takeover starts on the same port while the first runs" \
    'kill -0 $b 2>/dev/null && grep -q "^ktla-serve .* at https://" "$work/b.out"' \
    "$(cat "$work/b.err")"
# A client that keeps asking, one connection per request, from when both servers hold the port
# until the old one is gone.
(
    bad=0 n=0
    while [ ! -f "$work/stop-client" ]; do
        # Slow is allowed (ASan, a loaded machine, a listen queue); only a failure counts.
        code=$(curl -sSk --max-time 30 -o /dev/null -w '%{http_code}' "$url/small.txt" 2>"$work/curl.err")
        n=$((n + 1))
        [ "$code" = 200 ] || { bad=$((bad + 1)); echo "request $n at $(date +%T.%N): '$code' $(cat "$work/curl.err")" >>"$work/client-fails"; }
    done
    echo "$n $bad" >"$work/client-result"
) &
client=$!
sleep 0.5
kill -TERM $a
wait $a
src=$?
check "the old server drains and exits 0" '[ $src = 0 ]' "$(tail -n 3 "$work/a2.err")"
wait $dl
check "...after finishing its download in flight (SHA-256)" \
    '[ "$(sha "$work/dl-b")" = "$(sha "$root/big.bin")" ]'
sleep 1
touch "$work/stop-client"
wait $client
read -r total bad <"$work/client-result"
check "a client asking throughout the hand-over: $total requests, $bad failed" \
    '[ "$total" -gt 5 ] && [ "$bad" = 0 ]' "$(head -n 5 "$work/client-fails" 2>/dev/null)"
bad=$(failed_requests 10)
check "the new server answers alone afterwards (10 requests, $bad failed)" '[ "$bad" = 0 ]'
wait_for $slack sh -c "grep -c ' /small.txt ' '$work/b.log' | grep -qv '^0$'"
check "...and logged them" "grep -q ' /small.txt .* $expect ' '$work/b.log'" "$(tail -n 2 "$work/b.log")"
kill -TERM $b
wait $b
src=$?
check "the new server exits 0 on SIGTERM" '[ $src = 0 ]'
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work"/*.err; then
    not_ok "no sanitizer reports from the servers" "$(grep -hE -A5 'ERROR:|runtime error:' "$work"/*.err)"
else
    ok "no sanitizer reports from the servers"
fi

echo "restart: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
