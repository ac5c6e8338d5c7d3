#!/usr/bin/env bash
# The per-connection system-call budget (issue 15, item 1): ktla-serve and nginx each under
# strace -c -f while ktla-bench makes full TLS 1.3 handshakes (X25519, AES-128-GCM) with a 1 KiB
# GET each, then every call's count divided by the handshakes made. Counts, not times: strace
# slows both servers alike, and what it counts does not depend on the machine's load.
#
# A second pass without strace, where perf can read the kernel's tracepoints, counts per
# connection what the calls do not show: io_uring operations submitted, those that had to arm a
# poll (the socket was not ready) or went to the kernel's io-wq threads, task work, context
# switches, page faults, and the CPU split into user and kernel time.
#
# usage: bench/syscalls.sh [BUILD_DIR] [SECONDS]   (defaults: build, 5)
# Prints a table: system call, calls per connection for ktla-serve and for nginx; then the
# table of the second pass (or why there is none).
set -uo pipefail
build=$(cd "${1:-build}" && pwd)
secs=${2:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/www" "$work/nginx"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=$((20000 + RANDOM % 20000))
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
$([ "$(id -u)" = 0 ] && echo "user root;")
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        root $work/www;
    }
}
EOF
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
wait_listening() { for _ in $(seq 100); do listening && break; sleep 0.1; done; }
wait_closed() { for _ in $(seq 50); do listening || break; sleep 0.1; done; }
# load JSON [OPTION...]: the handshakes the server is measured under, their figures into JSON.
load() {
    local json=$1
    shift
    $pin1 "$build/ktla-bench" -m handshake -c 8 -d "$secs" -w 0 --tls 1.3 --groups X25519 \
        --ciphers TLS_AES_128_GCM_SHA256 "$@" --json "$json" -q \
        "https://127.0.0.1:$port/1k.bin" >/dev/null 2>&1
}
# handshakes FILE: how many the load made.
handshakes() { sed -n 's/.*"handshakes": \([0-9]*\).*/\1/p' "$1"; }
ktla_cmd=("$build/ktla-serve" --listen "127.0.0.1:$port" --workers 1 --cert "$work/cert.pem"
    --key "$work/key.pem" "$work/www")
nginx_cmd=(nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf")
# The second pass pins the server to CPU 0 and the load to CPU 1 (set below); strace's does not.
pin0= pin1=

# measure NAME COMMAND...: the server under strace; prints "handshakes" then strace's table.
measure() {
    local name=$1
    shift
    strace -f -c -o "$work/$name.strace" "$@" >"$work/$name.log" 2>&1 &
    local pid=$!
    wait_listening
    load "$work/$name.json"
    # The server, not strace: strace ends with it and writes its table.
    pkill -TERM -P $pid 2>/dev/null
    wait $pid 2>/dev/null
    wait_closed
}
measure ktla "${ktla_cmd[@]}"
measure nginx "${nginx_cmd[@]}"

hk=$(handshakes "$work/ktla.json") hn=$(handshakes "$work/nginx.json")
# The whole run is counted, start-up included (a few dozen calls, the same for both), and
# divided by the handshakes of the whole run (no warm-up window).
echo "### System calls per connection: full TLS 1.3 handshake + 1 KiB GET, ${secs} s"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$build/.." rev-parse --short HEAD 2>/dev/null || echo '?'); handshakes measured: ktla-serve $hk, nginx $hn"
echo
echo "| system call | ktla-serve | nginx |"
echo "| --- | ---: | ---: |"
awk -v hk="$hk" -v hn="$hn" '
    FNR == 1 { side = (FILENAME ~ /ktla/) ? "k" : "n" }
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
        name = $NF; calls = (NF == 6) ? $4 : $4
        c[side, name] += calls; names[name] = 1
    }
    END {
        for (n in names) {
            k = c["k", n] / (hk ? hk : 1); g = c["n", n] / (hn ? hn : 1)
            if (k >= 0.05 || g >= 0.05) printf "| %s | %.2f | %.2f |\n", n, k, g
            tk += k; tn += g
        }
        printf "| **all** | **%.1f** | **%.1f** |\n", tk, tn
    }' "$work/ktla.strace" "$work/nginx.strace" | sort -t'|' -k3 -rn

# ---- the second pass: perf's counters on each server alone
events="io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,io_uring:io_uring_queue_async_work"
events+=",io_uring:io_uring_task_add,raw_syscalls:sys_enter,context-switches,cpu-migrations"
events+=",page-faults"
echo
if ! command -v perf >/dev/null || ! perf stat -e "$events" -- true >/dev/null 2>&1; then
    echo "(No perf counters here: perf missing, or its tracepoints unreadable; the table above is all.)"
    exit 0
fi
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin0="taskset -c 0" pin1="taskset -c 1"
fi
# measure_perf NAME COMMAND...: perf stat on the running server (all its threads) while the load
# runs; writes NAME.perf (perf's CSV) and NAME.pjson (the load's JSON).
measure_perf() {
    local name=$1
    shift
    # The server on CPU 0 and the load on CPU 1, as scripts/bench-compare.sh does: unpinned, the
    # two trade places and the CPU figures wander by a quarter from one run to the next.
    $pin0 "$@" >"$work/$name.plog" 2>&1 &
    local pid=$!
    wait_listening
    # nginx's worker is a child of its master: count the whole process tree's threads.
    local pids
    pids=$(pgrep -P $pid | tr '\n' ',')$pid
    perf stat -x, -e "$events" -p "$pids" -o "$work/$name.perf" &
    local perf=$!
    sleep 0.3
    load "$work/$name.pjson" --server-pid $pid
    kill -INT $perf
    wait $perf 2>/dev/null
    kill -TERM $pid 2>/dev/null
    wait $pid 2>/dev/null
    wait_closed
}
measure_perf ktla "${ktla_cmd[@]}"
measure_perf nginx "${nginx_cmd[@]}"
pk=$(handshakes "$work/ktla.pjson") pn=$(handshakes "$work/nginx.pjson")
# The CPU split comes from ktla-bench (--server-pid: /proc, the process and its children).
cpu() { sed -n "s/.*\"server_$2_us_per_handshake\": \([0-9.e+-]*\).*/\1/p" "$work/$1.pjson"; }
echo "user_time $(cpu ktla user) $(cpu nginx user)" >"$work/cpu.txt"
echo "system_time $(cpu ktla sys) $(cpu nginx sys)" >>"$work/cpu.txt"
echo "### What each connection costs besides its system calls (perf stat, no strace)"
echo
echo "handshakes measured: ktla-serve $pk, nginx $pn"
echo
echo "| per connection | ktla-serve | nginx |"
echo "| --- | ---: | ---: |"
awk -F, -v hk="$pk" -v hn="$pn" -v cpuf="$work/cpu.txt" '
    FNR == 1 { side = (FILENAME ~ /ktla/) ? "k" : "n" }
    NF >= 3 && $1 ~ /^[0-9.]+$/ { v[side, $3] = $1; ev[$3] = 1 }
    END {
        split("io_uring:io_uring_submit_req io_uring:io_uring_poll_arm " \
              "io_uring:io_uring_queue_async_work io_uring:io_uring_task_add " \
              "raw_syscalls:sys_enter context-switches cpu-migrations page-faults " \
              "user_time system_time", order, " ")
        while ((getline line < cpuf) > 0) {
            split(line, f, " "); cpu_k[f[1]] = f[2]; cpu_n[f[1]] = f[3]
        }
        split("io_uring operations submitted|...of which armed a poll (not ready yet)|" \
              "...of which went to io-wq threads|io_uring task work items|system calls|" \
              "context switches|CPU migrations|page faults|user CPU µs|kernel CPU µs",
              label, "|")
        for (i = 1; i in order; i++) {
            e = order[i]; k = v["k", e] / (hk ? hk : 1); n = v["n", e] / (hn ? hn : 1)
            if (e ~ /_time$/) { k = cpu_k[e]; n = cpu_n[e] } # already per connection
            printf "| %s | %.2f | %.2f |\n", label[i], k, n
        }
    }' "$work/ktla.perf" "$work/nginx.perf"
