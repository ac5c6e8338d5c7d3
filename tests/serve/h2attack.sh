#!/usr/bin/env bash
# ktla-serve's HTTP/2 (ALPN "h2") against attacking clients (tests/serve/h2attack.py, which
# frames HTTP/2 and codes HPACK itself, the standard library only).
#
# usage: tests/serve/h2attack.sh BUILD_DIR kernel|userspace
#   kernel:    the servers run with --ktls require and every access-log line must say "kernel";
#   userspace: every access-log line must say "userspace".
#
# Three servers. The main one (2 workers, --idle-timeout 10) first answers plain HTTP/2 (ALPN,
# its SETTINGS, GET, HEAD, 404, a range, PING; http/1.1 still chosen when offered alone), then
# takes the attacks in turn, each on a connection of its own:
#   rapid reset (CVE-2023-44487): HEADERS + RST_STREAM by the thousand: GOAWAY ENHANCE_YOUR_CALM
#     (or nghttp2's own INTERNAL_ERROR), within 10 s and after at most 1100 streams;
#   CONTINUATION flood (2024): HEADERS without END_HEADERS, then 4 KiB CONTINUATIONs without end:
#     ended (GOAWAY or a close) before it took them all;
#   HPACK bomb: a 4000-byte header in the dynamic table referenced 16,000 times (64 MB decoded):
#     431, RST_STREAM, or GOAWAY COMPRESSION_ERROR/ENHANCE_YOUR_CALM/PROTOCOL_ERROR;
#   a 21 KB literal header list: 431 or RST_STREAM, and the next stream on the connection 200;
#   SETTINGS, PING and PRIORITY floods (100,000 frames each, the answers never read): ended;
#   150 streams at once with windows of 0: the 50 beyond MAX_CONCURRENT_STREAMS refused
#     (REFUSED_STREAM or PROTOCOL_ERROR), the 100 others whole once the window opens.
# Each attack that ends a connection must be logged on the server's stderr (the line is shown).
# During the floods the server's VmRSS may grow by at most 20 MiB (+16 with AddressSanitizer, its
# quarantine), and a normal client on another connection is answered within 5 s. After each
# attack: the server's descriptors back to their count after the warm-up, exactly, within 10 s;
# its VmRSS within 30 MiB of it (+16 with AddressSanitizer); a new connection's GET answered 200.
# The "stall" server (1 worker, --idle-timeout 2) gets a client with SETTINGS_INITIAL_WINDOW_SIZE
# 0 asking for 10 MiB: a second client on the same worker still downloads at full speed, and the
# stalled connection is ended at the idle timeout. The "term" server gets SIGTERM during a paced
# 10 MiB download: GOAWAY NO_ERROR with last stream 1, a stream opened after it is not served,
# the download finishes whole, and the server exits 0.
#
# Prints TAP, the figures as "# " comments (what each attack got back: the GOAWAY's code and last
# stream, streams taken, RSS), then "h2attack: N passed, N failed, 0 skipped". Exit status 1 on
# failure. Takes about 15 s on the host.
#
# Environment:
#   H2ATTACK_SLACK   seconds added to every upper time bound (1 on the host, 10 in the guest,
#                    where KTLA_IN_GUEST=1)
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

if [ -n "${KTLA_IN_GUEST:-}" ]; then
    SLACK=${H2ATTACK_SLACK:-10}
else
    SLACK=${H2ATTACK_SLACK:-1}
fi

. "$here/../tap.sh"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

root=$work/www
mkdir -p "$root"
head -c $((10 << 20)) /dev/urandom >"$root/big.bin"
head -c $((1 << 20)) /dev/urandom >"$root/mib.bin"
echo 'small and keep-alive' >"$root/small.txt"

policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
# As in hostile.sh: with AddressSanitizer, freed memory is never handed back to the kernel and
# the quarantine of freed blocks is 16 MiB, so that VmRSS is the heap's high-water mark; the
# bounds below allow that quarantine on top.
server_asan=$ASAN_OPTIONS:quarantine_size_mb=16:allocator_release_to_os_interval_ms=-1
rss_during=20 rss_after=30
if grep -q '^KTLA_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    rss_during=$((rss_during + 16)) rss_after=$((rss_after + 16))
fi

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
fds_are() { [ "$(fds "$1")" = "$2" ]; }
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

# scenario ID ARGS...: runs h2attack.py ARGS (at most 3 minutes) and turns its result lines
# into TAP; a helper that crashes or hangs is a failure.
scenario() {
    local id=$1 rc line
    shift
    timeout 180 python3 "$here/h2attack.py" "$@" --root "$root" --slack "$SLACK" \
        --rss-mb "$rss_during" >"$work/sc-$id" 2>&1
    rc=$?
    while IFS= read -r line; do
        case $line in
        "ok - "*) ok "${line#ok - }" ;;
        "not ok - "*) not_ok "${line#not ok - }" ;;
        "#"*) echo "$line" ;;
        *) [ "$rc" = 0 ] || echo "#   $line" ;;
        esac
    done <"$work/sc-$id"
    [ "$rc" = 0 ] || not_ok "$id: the client helper failed (exit $rc)"
}

# after ID PID PORT FD0 RSS0: nothing left behind by the attack ID on that server: descriptors
# back to FD0 within 10 s, VmRSS within $rss_after MiB of RSS0, and a new connection served.
after() {
    local id=$1 pid=$2 port=$3 fd0=$4 rss0=$5 fd rss
    if ! kill -0 "$pid" 2>/dev/null; then
        not_ok "after $id: the server still runs" "$(tail -n 20 "$work"/*.err)"
        return
    fi
    wait_for 10 fds_are "$pid" "$fd0"
    fd=$(fds "$pid")
    check "after $id: the server's descriptors are back to $fd0 within 10 s ($fd)" '[ "$fd" = "$fd0" ]' \
        "$(ls -l "/proc/$pid/fd" 2>/dev/null | tail -n 8)"
    rss=$(rss_kib "$pid")
    check "after $id: VmRSS within $rss_after MiB of the baseline ($rss0 KiB then, $rss KiB now: $(((rss - rss0) / 1024)) MiB more)" \
        '[ $((rss - rss0)) -le $((rss_after * 1024)) ]'
    scenario "$id-after" get --port "$port" --file mib.bin --label "after $id"
}

# mark: the main server's stderr lines so far. logged ID MARK: it has since written a line about
# an HTTP/2 connection it ended (the limit that was hit), shown in the test's name.
mark() { grep -c '' "$work/main.err"; }
logged() {
    local line
    line=$(tail -n +$(($2 + 1)) "$work/main.err" | grep -m1 -E 'HTTP/2|GOAWAY' | cut -c1-160)
    check "$1: the server logged why it ended the connection (${line:-nothing})" '[ -n "$line" ]'
}

suite_start=$(now)
phase() { echo "# ---- $1 (at $(since "$suite_start") s)"; }

start_server main --workers 2 --idle-timeout 10 --access-log "$work/main.log" "$root"
main=$spid
start_server stall --workers 1 --idle-timeout 2 --access-log "$work/stall.log" "$root"
stall=$spid
start_server term --workers 1 --drain-timeout 30 --access-log "$work/term.log" "$root"
term=$spid
port=$(server_port main) stall_port=$(server_port stall) term_port=$(server_port term)

if [ "$expect" = kernel ]; then
    check "start-up: kernel TLS required and available" 'grep -q "^  kernel TLS:  yes" "$work/main.out"'
else
    check "start-up: userspace TLS (no kernel TLS here)" 'grep -q "^  kernel TLS:  no, because" "$work/main.out"'
fi
echo "# main server on port $port (2 workers, idle timeout 10 s), stall server on $stall_port (1 worker, idle timeout 2 s), term server on $term_port (1 worker, drain timeout 30 s)"
alpn=$(echo | timeout 10 openssl s_client -alpn h2,http/1.1 -connect "127.0.0.1:$port" 2>&1 | grep -a '^ALPN')
echo "# openssl s_client -alpn h2,http/1.1: ${alpn:-no ALPN line}"

phase "the client's own HPACK, then plain HTTP/2"
scenario selftest selftest
scenario basic basic --port "$port"

phase "warm-up, then the baselines"
scenario warmup warmup --port "$port" --count 8
fd0=$(fds_settle "$main")
rss0=$(rss_kib "$main")
echo "# main server after the warm-up: $fd0 descriptors, VmRSS $rss0 KiB"

phase "rapid reset"
m=$(mark)
scenario rapid-reset rapid-reset --port "$port" --pid "$main" --count 10000 --max-streams 1100
logged "rapid reset" "$m"
after "rapid reset" "$main" "$port" "$fd0" "$rss0"

phase "CONTINUATION flood"
m=$(mark)
scenario continuation continuation --port "$port" --pid "$main" --count 10000
logged "CONTINUATION flood" "$m"
after "the CONTINUATION flood" "$main" "$port" "$fd0" "$rss0"

phase "HPACK bomb and a huge header list"
scenario hpack-bomb hpack-bomb --port "$port" --pid "$main" --count 16000
after "the HPACK bomb" "$main" "$port" "$fd0" "$rss0"
scenario big-headers big-headers --port "$port"
after "the huge header list" "$main" "$port" "$fd0" "$rss0"

for kind in settings ping priority; do
    phase "$kind flood"
    m=$(mark)
    scenario "$kind-flood" flood --kind "$kind" --port "$port" --pid "$main" --count 100000
    logged "$kind flood" "$m"
    after "the $kind flood" "$main" "$port" "$fd0" "$rss0"
done

phase "too many concurrent streams"
scenario streams streams --port "$port" --count 150 --file mib.bin
after "150 streams at once" "$main" "$port" "$fd0" "$rss0"

phase "zero window (the stall server)"
scenario stall-warmup get --port "$stall_port" --file big.bin --label "stall server"
sfd0=$(fds_settle "$stall")
srss0=$(rss_kib "$stall")
scenario zero-window zero-window --port "$stall_port" --pid "$stall" --idle 2 --file big.bin
after "the zero-window stall" "$stall" "$stall_port" "$sfd0" "$srss0"

phase "GOAWAY on SIGTERM (the term server)"
scenario goaway goaway --port "$term_port" --pid "$term" --file big.bin
wait_for $((20 + ${SLACK%.*})) eval '! kill -0 "$term" 2>/dev/null'
if kill -0 "$term" 2>/dev/null; then
    not_ok "the term server exits after SIGTERM and the download" "$(tail -n 10 "$work/term.err")"
else
    wait "$term"; st=$?
    check "the term server exits 0 after SIGTERM and the download ($st)" '[ "$st" = 0 ]' \
        "$(tail -n 10 "$work/term.err")"
fi

# ---- what the servers said, the logs, a clean exit
phase "the end"
for s in main stall; do
    echo "# $s server's stderr, last lines:"
    tail -n 12 "$work/$s.err" | sed 's/^/#   /'
done
for s in main stall term; do
    lines=$(grep -c '' "$work/$s.log")
    h2=$(grep -c '"[A-Z]* [^ ]* HTTP/2' "$work/$s.log")
    modes=$(awk '{ print $(NF-3) }' "$work/$s.log" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    check "$s access log: $lines lines ($h2 of them HTTP/2), all in $expect mode ($modes)" \
        '[ "$h2" -gt 0 ] && ! awk '\''{ print $(NF-3) }'\'' "$work/$s.log" | grep -qv "^$expect$"'
done
kill -TERM "$main" "$stall"
wait "$main"; sm=$?
wait "$stall"; ss=$?
check "the main and stall servers exit 0 on SIGTERM ($sm, $ss)" '[ $sm = 0 ] && [ $ss = 0 ]'
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work"/*.err; then
    not_ok "no sanitizer reports from the servers" "$(grep -hE -A5 'ERROR:|runtime error:' "$work"/*.err)"
else
    ok "no sanitizer reports from the servers"
fi
echo "# whole suite: $(since "$suite_start") s"
echo "h2attack: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
