#!/usr/bin/env bash
# ktla-serve against hostile clients (tests/serve/hostile.py), while a well-behaved client keeps
# downloading an 8 MiB file and checking its SHA-256 the whole time.
#
# usage: tests/serve/hostile.sh BUILD_DIR kernel|userspace
#   kernel:    the servers run with --ktls require and every access-log line must say "kernel";
#   userspace: every access-log line must say "userspace".
#
# Three servers. The main one (2 workers, --handshake-timeout $HS, --idle-timeout $IDLE) takes
# garbage, plain HTTP, SSLv2 hellos, truncated and oversized records, 17-60 KiB ClientHellos,
# slowloris handshakes, half-closed sockets, clients that stop reading, idle connections, endless
# and dripped request heads, and two connect-and-close storms. Its descriptors must be back to
# their count after a warm-up of normal requests, exactly, and its RSS near its level after the
# warm-up, a fill of its handshake slots and the first storm. Two one-worker servers, so that
# per-worker limits are exact: "limits" (--max-connections 8) and "cap" (the cap on handshakes
# in flight, with a deadline long enough to fill it and look first).
#
# Prints TAP, the figures as "# " comments (descriptors and RSS before/after, counts, timings),
# then "hostile: N passed, N failed, 0 skipped". Exit status 1 on failure. Every wait polls with a
# deadline; the only sleeps are the clients' own pacing.
#
# Environment (defaults on the host / in the guest, where KTLA_IN_GUEST=1 and everything runs
# 20-50 times slower under emulation):
#   HOSTILE_STORM     connect-and-close per storm (10000 / 10000; in the guest a storm takes
#                     about 30 s and the suite about 2.5 minutes)
#   HOSTILE_FILL      silent connections at once before the RSS baseline (4000 / 1200)
#   HOSTILE_HS        the main server's --handshake-timeout, s (5 / 10)
#   HOSTILE_IDLE      the main server's --idle-timeout, s (10 / 20)
#   HOSTILE_SLACK     seconds added to every upper time bound (1 / 10)
#   HOSTILE_STRICT=1  lines marked [known] (issues reported, not fixed yet) count as failures;
#                     otherwise their failures are printed as "# known issue" comments
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

# The idle timeout is well above the longest stall a storm causes an established connection (a
# few seconds on a loaded 2-CPU machine with AddressSanitizer): below that, the server drops a
# download in progress as idle (see the storm scenario).
if [ -n "${KTLA_IN_GUEST:-}" ]; then
    HS=${HOSTILE_HS:-10} IDLE=${HOSTILE_IDLE:-20} SLACK=${HOSTILE_SLACK:-10}
    STORM=${HOSTILE_STORM:-10000} FILL=${HOSTILE_FILL:-1200} ROUNDS=1 BIG=1 EACH=2 OVER=4 CAP_HS=30
else
    HS=${HOSTILE_HS:-5} IDLE=${HOSTILE_IDLE:-10} SLACK=${HOSTILE_SLACK:-1}
    STORM=${HOSTILE_STORM:-10000} FILL=${HOSTILE_FILL:-4000} ROUNDS=16 BIG=2 EACH=4 OVER=12 CAP_HS=10
fi
# (CAP_HS: the cap server's deadline; its 1224 clients must all be connected and watched before.)

. "$here/../tap.sh"
known=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The fill, the storms and the handshake cap hold thousands of sockets at once, on both sides.
# (The guest runs as root, whose hard limit of 4096 may be raised.)
ulimit -Hn 65536 2>/dev/null
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=65536
[ "$hard" -gt 65536 ] && hard=65536
ulimit -Sn "$hard"

root=$work/www
mkdir -p "$root"
head -c $((8 << 20)) /dev/urandom >"$root/big.bin"
echo 'small and keep-alive' >"$root/small.txt"

policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
# For the servers, two AddressSanitizer settings that make VmRSS the heap's high-water mark:
# freed memory is never handed back to the kernel (otherwise RSS swings by 50-100 MB between two
# identical storms), and the quarantine of freed blocks is 16 MB instead of 256 MB (otherwise RSS
# keeps growing for three storms while it fills). Use-after-free is still caught within the last
# 16 MB of frees, and LeakSanitizer still runs at exit; a plain build ignores ASAN_OPTIONS.
server_asan=$ASAN_OPTIONS:quarantine_size_mb=16:allocator_release_to_os_interval_ms=-1

# start_server NAME ARGS...: starts ktla-serve in the background, its pid in $spid.
start_server() {
    local name=$1; shift
    ASAN_OPTIONS=$server_asan "$build/ktla-serve" --listen 127.0.0.1:0 --ktls $policy "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    spid=$!
    pids+=("$spid")
}
# server_port NAME: waits for its URL line and prints the port (1 if it did not start).
server_port() {
    if ! wait_for 120 grep -q '^ktla-serve .* at https://' "$work/$1.out"; then
        { echo "# $1 did not start:"; sed 's/^/#   /' "$work/$1.out" "$work/$1.err"; } >&2
        echo 1
        return
    fi
    local u
    u=$(grep -o 'https://[^ ]*' "$work/$1.out" | head -n 1)
    u=${u##*:}
    echo "${u%/}"
}

fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
fds_at_most() { [ "$(fds "$1")" -le "$2" ]; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
# fds_settle PID: the descriptor count once it has not changed for a second (at most 60 s).
fds_settle() {
    local last=-1 cur end=$(($(date +%s) + 60)) since
    since=$(date +%s%N)
    while [ "$(date +%s)" -lt "$end" ]; do
        cur=$(fds "$1")
        if [ "$cur" != "$last" ]; then
            last=$cur since=$(date +%s%N)
        elif [ $(($(date +%s%N) - since)) -ge 1000000000 ]; then
            break
        fi
        sleep 0.05
    done
    echo "$last"
}

# start ID PORT SCENARIOS ARGS...: runs hostile.py SCENARIOS (comma-separated, in turn) against
# the server on PORT in the background; its output is kept for report ID.
start() {
    local id=$1 port=$2 what=$3
    shift 3
    rm -f "$work/sc-$id" "$work/sc-$id.rc"
    (
        t0=$(now)
        python3 "$here/hostile.py" "$what" --port "$port" --root "$root" --hs "$HS" \
            --idle "$IDLE" --slack "$SLACK" --mode "$expect" "$@" >"$work/sc-$id" 2>&1
        rc=$?
        echo "# $id: $(since "$t0") s; main server now: VmRSS $(rss_kib "$main") KiB, $(fds "$main") descriptors" >>"$work/sc-$id"
        echo $rc >"$work/sc-$id.rc"
    ) &
}

# report ID: waits for it, turns its result lines into TAP; [known] failures are comments unless
# HOSTILE_STRICT=1.
report() {
    local id=$1 rc line
    wait_for 600 test -s "$work/sc-$id.rc"
    rc=$(cat "$work/sc-$id.rc" 2>/dev/null || echo timeout)
    while IFS= read -r line; do
        case $line in
        "ok - "*) ok "${line#ok - }" ;;
        "not ok - [known]"*)
            if [ "${HOSTILE_STRICT:-}" = 1 ]; then
                not_ok "${line#not ok - }"
            else
                known=$((known + 1))
                echo "# known issue (reported; not counted): ${line#not ok - \[known\] }"
            fi ;;
        "not ok - "*) not_ok "${line#not ok - }" ;;
        "#"*) echo "$line" ;;
        *) [ "$rc" = 0 ] || echo "#   $line" ;;
        esac
    done <"$work/sc-$id"
    [ "$rc" = 0 ] || not_ok "$id: the client helper failed (exit $rc)"
    if ! kill -0 "$main" 2>/dev/null || ! kill -0 "$limits" 2>/dev/null || ! kill -0 "$cap" 2>/dev/null; then
        not_ok "the servers still run after $id" "$(tail -n 20 "$work"/*.err)"
    fi
}

scenario() { start "$@"; report "$1"; }

suite_start=$(now)
phase() { echo "# ---- $1 (at $(since "$suite_start") s)"; }
start_server main --workers 2 --handshake-timeout "$HS" --idle-timeout "$IDLE" \
    --access-log "$work/main.log" "$root"
main=$spid
start_server limits --workers 1 --max-connections 8 --idle-timeout 120 \
    --access-log "$work/limits.log" "$root"
limits=$spid
start_server cap --workers 1 --handshake-timeout "$CAP_HS" --access-log "$work/cap.log" "$root"
cap=$spid
port=$(server_port main) limits_port=$(server_port limits) cap_port=$(server_port cap)

if [ "$expect" = kernel ]; then
    check "start-up: kernel TLS required and available" 'grep -q "^  kernel TLS:  yes" "$work/main.out"'
else
    check "start-up: userspace TLS (no kernel TLS here)" 'grep -q "^  kernel TLS:  no, because" "$work/main.out"'
fi
echo "# main server on port $port (2 workers, handshake deadline $HS s, idle timeout $IDLE s); limits server (--max-connections 8) on $limits_port, cap server (handshake deadline $CAP_HS s) on $cap_port; descriptors allowed: $(ulimit -Sn)"

# ---- warm-up, then the baselines
# Descriptors: after normal requests, and exactly that many at the end. RSS: after the server has
# also had the most connections at once it will have, since the allocator keeps what its busiest
# moment made it grow: that is its working size, not a leak. The fill makes it, with as many
# silent connections at once as the cap lets be handshakes (1024 per worker; the rest wait in
# the listen backlog), and then a storm.
phase "warm-up"
scenario warmup "$port" warmup --rounds "$ROUNDS" --big "$BIG"
fd0=$(fds_settle "$main")
rss_w=$(rss_kib "$main")
echo "# after the warm-up: $fd0 descriptors, VmRSS $rss_w KiB"
phase "the fill and the first storm"
t0=$(now)
scenario fill-storm "$port" fill,storm --count "$FILL" --pid "$main" --workers 2 \
    --storm-count "$STORM" --threads 32 --out "$work/peak1" --label "first storm (no other client)"
storm1_s=$(since "$t0")
fd_s=$(fds_settle "$main")
rss0=$(rss_kib "$main")
check "after the fill and the first storm the server's descriptors are back to $fd0 ($fd_s)" '[ "$fd_s" = "$fd0" ]'
echo "# baseline after the fill and the first storm: $fd_s descriptors, VmRSS $rss0 KiB (+$((rss0 - rss_w)) KiB)"

# ---- the well-behaved client, all along
python3 "$here/hostile.py" good --port "$port" --root "$root" --stop "$work/good.stop" \
    --out "$work/good.json" >"$work/good.log" 2>&1 &
good=$!
pids+=("$good")

# ---- side by side: the scenarios that wait for the server's timers, the two limits servers',
# and the quick ones in turn.
phase "side by side"
t0=$(now)
start slowloris "$port" slowloris --count $((3 * EACH))
start idle "$port" idle --count "$EACH"
start stop-reading "$port" stop-reading --count "$EACH"
start head-limit "$port" head-limit --count "$EACH"
start head-drip "$port" head-drip --count "$EACH"
start max-conns "$limits_port" max-conns --count 8 --over "$OVER"
start hs-cap "$cap_port" hs-cap --pid "$cap" --limits-hs "$CAP_HS"
start quick "$port" garbage,plain-http,sslv2,truncated,oversized,big-hello,alert,half-close
for id in quick slowloris idle stop-reading head-limit head-drip max-conns hs-cap; do
    report $id
done
echo "# side by side: $(since "$t0") s"

# ---- the second storm, with the good client downloading
phase "the second storm"
t0=$(now)
scenario storm "$port" storm --storm-count "$STORM" --threads 32 --pid "$main" --out "$work/peak2" \
    --good-count "$work/good.json.count" --label "second storm (the good client downloading)"
storm2_s=$(since "$t0")

# ---- the good client's tally
phase "the end"
touch "$work/good.stop"
wait_for 600 test -s "$work/good.json"
# (no process substitution: the guest has no /dev/fd)
read -r g_ok g_failed g_conns g_slowest g_mib <<<"$(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["ok"], s["failed"], s["connections"], "%.2f" % s["slowest"], s["bytes"] >> 20)
' "$work/good.json" 2>/dev/null || echo "0 -1 0 0 0")"
echo "# good client: $g_ok downloads of 8 MiB ($g_mib MiB) over $g_conns connections, slowest $g_slowest s, $g_failed failed"
check "the good client downloaded correctly throughout: $g_ok downloads with the right SHA-256, $g_failed failures" \
    '[ "$g_ok" -gt 0 ] && [ "$g_failed" = 0 ]'
[ "$g_failed" = 0 ] ||
    python3 -c 'import json,sys; print("\n".join("#   " + e for e in json.load(open(sys.argv[1]))["errors"]))' "$work/good.json"

# ---- nothing left behind
wait_for 60 fds_at_most "$main" "$fd0"
fd1=$(fds_settle "$main")
rss1=$(rss_kib "$main")
echo "# main server descriptors: $fd0 before, $fd1 after"
echo "# main server VmRSS: $rss0 KiB before, $rss1 KiB after ($((rss1 - rss0)) KiB)"
check "descriptors back to the baseline: $fd0 before, $fd1 after" '[ "$fd1" = "$fd0" ]'
[ "$fd1" = "$fd0" ] || ls -l "/proc/$main/fd" | sed 's/^/#   /' | tail -n 20
# RSS is the heap's high-water mark here (see server_asan), and what sets it is the most
# connections the server held at once. The baseline came after the fill and the first storm; if
# the second storm made the server hold more at once than either, each extra connection may add
# 32 KiB (a handshake in flight with AddressSanitizer takes some 20-30 KiB; a plain build less).
# On top of that 8 MiB: what the good client's downloads, the 60 KiB ClientHellos and the rest
# leave in the allocator's pools (3-8 MiB measured on the host). With AddressSanitizer, another
# 16 MiB for its quarantine, whose freed blocks shift from the storm's sizes to the downloads'
# and then need pages of their own (in the guest: +7, +11, +0.3 MiB over three rounds of the
# quick scenarios with the good client, then flat), and 8 MiB for the dozens of connections the
# side-by-side scenarios hold at once (the guest, with a lighter warm-up, has measured +19 to
# +26 MiB in all, then flat through the second storm). A leak of 3 KiB per connection would
# still show on the host, where over 12,000 connections come after the baseline; LeakSanitizer
# at exit reports whatever was never freed.
peak_before=$(sort -n "$work/peak1" 2>/dev/null | tail -n 1)
peak_after=$(sort -n "$work/peak2" 2>/dev/null | tail -n 1)
peak_before=${peak_before:-0} peak_after=${peak_after:-0}
extra=$((peak_after > peak_before ? peak_after - peak_before : 0))
base_kib=8192 why="8 MiB"
if grep -q '^KTLA_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    base_kib=$((base_kib + 16384 + 8192)) why="8 MiB + the 16 MiB quarantine + 8 MiB"
fi
rss_max=$((base_kib + 32 * extra))
echo "# most descriptors held at once: $peak_before before the RSS baseline, $peak_after in the second storm"
check "RSS back near the baseline: $((rss1 - rss0)) KiB more than before (allowed: $why + 32 KiB x $extra more connections at once = $rss_max KiB)" \
    '[ $((rss1 - rss0)) -le $rss_max ]'

# ---- the logs, and a clean exit
for s in main limits cap; do
    lines=$(grep -c '' "$work/$s.log")
    modes=$(awk '{ print $(NF-3) }' "$work/$s.log" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    check "$s access log: $lines lines, all in $expect mode ($modes)" \
        '[ "$lines" -gt 0 ] && ! awk '\''{ print $(NF-3) }'\'' "$work/$s.log" | grep -qv "^$expect$"'
done
echo "# handshake failures logged by the main server: $(grep -c 'handshake failed' "$work/main.err")"
kill -TERM "$main" "$limits" "$cap"
wait "$main"; sm=$?
wait "$limits"; sl=$?
wait "$cap"; sc=$?
check "the three servers exit 0 on SIGTERM" '[ $sm = 0 ] && [ $sl = 0 ] && [ $sc = 0 ]'
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work"/*.err; then
    not_ok "no sanitizer reports from the servers" "$(grep -hE -A5 'ERROR:|runtime error:' "$work"/*.err)"
else
    ok "no sanitizer reports from the servers"
fi
echo "# storms: $STORM connect-and-close each; the first (with the fill) $storm1_s s, the second $storm2_s s, with their checks"
echo "# whole suite: $(since "$suite_start") s; known issues not counted: $known"
echo "hostile: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
