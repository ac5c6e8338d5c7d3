#!/usr/bin/env bash
# bench/smoke.sh BUILD_DIR: proves the benchmark harness works, in well under a minute, without
# running a benchmark. It starts ktla-serve and ktla-echo (whichever are built) on loopback, runs
# ktla-bench for about two seconds in each mode against each, and checks the JSON: requests
# completed, no errors, resumed handshakes really resumed, idle connections all held. It also
# checks that a server that is not there gives connection errors and exit 1, not a hang.
#
# Prints TAP and ends with "bench-smoke: N passed, N failed, 0 skipped"; exits 1 if any failed.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build=$(cd "$1" && pwd) || exit 2
bench="$build/ktla-bench"
work=$(mktemp -d /tmp/ktla-bench-smoke.XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

n=0 passed=0 failed=0
tap() { # tap OK|FAIL DESCRIPTION [DETAIL...]
    n=$((n + 1))
    if [ "$1" = OK ]; then
        passed=$((passed + 1))
        echo "ok $n - $2"
    else
        failed=$((failed + 1))
        echo "not ok $n - $2"
        shift 2
        for line in "$@"; do echo "#   $line"; done
    fi
}
json_get() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" "$1" 2>/dev/null | tr -d '"'; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$((20000 + RANDOM % 20000))
    while ! port_free $p; do p=$((p + 1)); done
    echo $p
}

echo "TAP version 13"
if [ ! -x "$bench" ]; then
    tap FAIL "ktla-bench is built" "$bench is missing"
    echo "bench-smoke: $passed passed, $failed failed, 0 skipped"
    exit 1
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 2 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c $((4 * 1024 * 1024)) /dev/zero >"$work/www/4m.bin"

"$bench" --help >/dev/null 2>&1 && ok=OK || ok=FAIL
tap $ok "ktla-bench --help exits 0"
"$bench" -m nonsense https://127.0.0.1:1/ >/dev/null 2>&1
[ $? -eq 2 ] && ok=OK || ok=FAIL
tap $ok "ktla-bench exits 2 on bad usage"

# Nothing listens on this port: every connect fails, and the run still ends on time.
port=$(free_port)
start=$(date +%s)
timeout 20 "$bench" -m get -c 4 -d 1 -w 0 -q --json "$work/refused.json" \
    "https://127.0.0.1:$port/" >"$work/refused.log" 2>&1
rc=$?
cerr=$(json_get "$work/refused.json" errors_connect)
[ $rc -eq 1 ] && [ "${cerr:-0}" -gt 0 ] && [ $(($(date +%s) - start)) -lt 10 ] && ok=OK || ok=FAIL
tap $ok "a server that is not there: connect errors, exit 1, no hang" "exit $rc, connect errors '${cerr}'" \
    "$(tail -n 3 "$work/refused.log")"

# start_server NAME: 0 when it listens on $port within 5 s.
start_server() {
    port=$(free_port)
    case $1 in
    ktla-serve)
        "$build/ktla-serve" --listen "127.0.0.1:$port" --cert "$work/cert.pem" --key "$work/key.pem" \
            --workers 1 "$work/www" >"$work/$1.log" 2>&1 &
        ;;
    ktla-echo)
        "$build/ktla-echo" --cert "$work/cert.pem" --key "$work/key.pem" --port "$port" \
            >/dev/null 2>"$work/$1.log" &
        ;;
    esac
    server_pid=$!
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || return 1
        port_free "$port" || return 0
        sleep 0.1
    done
    return 1
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=
}

servers=()
[ -x "$build/ktla-serve" ] && servers+=(ktla-serve)
[ -x "$build/ktla-echo" ] && servers+=(ktla-echo)
[ ${#servers[@]} -gt 0 ] || tap FAIL "a server to run against" "neither ktla-serve nor ktla-echo in $build"

for server in "${servers[@]}"; do
    # A port found free may be taken before the server binds it (other jobs share the
    # machine): a server that fails to start gets two more ports.
    started=no
    for _ in 1 2 3; do
        if start_server "$server"; then started=yes; break; fi
        grep -q 'Address already in use' "$work/$server.log" || break
        stop_server
    done
    if [ $started = no ]; then
        tap FAIL "$server starts" "$(tail -n 5 "$work/$server.log")"
        stop_server
        continue
    fi
    if [ "$server" = ktla-echo ]; then
        small=(--echo 1024) large=(--echo 16384) path=/
    else
        small=() large=() path=/1k.bin
    fi
    for mode in handshake-full handshake-resumed get download idle; do
        url="https://127.0.0.1:$port$path"
        case $mode in
        handshake-full) args=(-m handshake -c 8 "${small[@]}") ;;
        handshake-resumed) args=(-m handshake --resume -c 8 "${small[@]}") ;;
        get) args=(-m get -c 8 "${small[@]}") ;;
        download)
            args=(-m download -c 2 "${large[@]}")
            [ "$server" = ktla-serve ] && url="https://127.0.0.1:$port/4m.bin"
            ;;
        idle) args=(-m idle -c 200 --max-connecting 50 --max-time 20 "${small[@]}") ;;
        esac
        [ $mode = idle ] || args+=(-d 1.5 -w 0.3)
        json="$work/$server-$mode.json"
        timeout 60 "$bench" "${args[@]}" --tls 1.3 --server-pid "$server_pid" -q --json "$json" \
            "$url" >"$work/$server-$mode.log" 2>&1
        rc=$?
        req=$(json_get "$json" requests)
        err=$(json_get "$json" errors)
        detail="exit $rc, requests '${req}', errors '${err}'"
        ok=OK
        [ $rc -eq 0 ] && [ "${req:-0}" -gt 0 ] && [ "${err:-1}" -eq 0 ] || ok=FAIL
        if [ $mode = handshake-resumed ]; then
            res=$(json_get "$json" resumed)
            hs=$(json_get "$json" handshakes)
            detail="$detail, resumed '${res}' of '${hs}' handshakes"
            [ "${res:-0}" -gt 0 ] && [ "${res:-0}" -ge $((${hs:-0} * 9 / 10)) ] || ok=FAIL
        fi
        if [ $mode = idle ]; then
            est=$(json_get "$json" established)
            per=$(json_get "$json" server_rss_bytes_per_conn)
            mark=$(json_get "$json" established_mark)
            detail="$detail, established '${est}' of 200, '${per}' bytes per further connection (from '${mark}')"
            [ "${est:-0}" = 200 ] && [ -n "$per" ] && [ "$per" != null ] && [ "${mark:-0}" != null ] &&
                [ "${mark%.*}" -ge 40 ] || ok=FAIL
        fi
        [ "$(json_get "$json" server_cpu_s)" != null ] || { ok=FAIL; detail="$detail, no server CPU figure"; }
        tap $ok "$server $mode: $detail" "$(tail -n 4 "$work/$server-$mode.log")"
    done
    if ! kill -0 "$server_pid" 2>/dev/null; then
        tap FAIL "$server survives the smoke runs" "$(tail -n 5 "$work/$server.log")"
    fi
    stop_server
done

echo "1..$n"
echo "bench-smoke: $passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
