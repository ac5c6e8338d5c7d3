#!/usr/bin/env bash
# Many-core comparison (issue 15): full and resumed TLS 1.3 handshakes (X25519, AES-128-GCM,
# 1 KiB GET each) against ktla-serve and nginx with 1, 2, 4 and 8 workers, on a machine with at
# least 16 CPUs. ktla-serve runs twice from 2 workers on: with an OpenSSL library context per
# worker (its default, "ktla") and with OpenSSL's default one shared ("ktla-shared"), which is
# what shows whether OpenSSL 3.0's locks hold threads back (bench/locks.sh counts them). Runs
# alternate between the servers, each a freshly started server. Userspace TLS is enough here: the
# handshake is the same either way.
#
# Where the server runs decides what a microsecond of its CPU is worth, so the script places it
# by the machine's topology (/sys/devices/system/cpu/*/topology): the server's N CPUs on N
# different physical cores, their SMT siblings left idle as long as ktla-bench still gets at
# least N CPUs on the other cores (otherwise ktla-bench gets the siblings too, and the table says
# so), ktla-bench on everything else. Each run also records what is needed to read its CPU
# figure: how busy the server's CPUs were (near 1.0: the server was the bottleneck; well below:
# the client was), the steal time on them (a virtual machine's CPU taken by its host), and, where
# perf can count instructions, the instructions per handshake, which do not depend on how fast
# the core ran.
#
# usage: bench/manycore.sh PACK OUT
#   PACK: a directory made by `bench/manycore.sh --pack PACK` on the build machine: bin/
#         (ktla-serve, ktla-bench, nginx), lib/ (every shared library they load, the dynamic
#         loader included, so that they run unchanged on another distribution), cert.pem,
#         key.pem, www/1k.bin.
#   OUT:  results.md (the table), runs.tsv (every run)
# Environment: RUNS (runs per cell, default 3; the single-worker cells get max(RUNS, 5), for
# the spread), SECONDS_MEASURED (default 4), WORKERS (default "1 2 4 8"), SIBLINGS (auto, idle
# or client: what runs on the SMT siblings of the server's CPUs; auto as above), PERF_EVENT
# (default instructions; the event counted per handshake where perf supports it).
#
# `bench/manycore.sh --pack PACK [BUILD]` makes PACK from BUILD (default build/) and Debian's
# nginx (and Debian's perf, where installed), with the libraries ldd lists.
set -uo pipefail

if [ "${1:-}" = --pack ]; then
    pack=$2 build=${3:-build}
    mkdir -p "$pack/bin" "$pack/lib" "$pack/www"
    cp "$build/ktla-serve" "$build/ktla-bench" /usr/sbin/nginx "$pack/bin/"
    [ -x /usr/bin/perf ] && cp /usr/bin/perf "$pack/bin/"
    for b in "$pack"/bin/*; do
        ldd "$b" | awk '/=> \// { print $3 } $1 ~ /^\/lib/ { print $1 }'
    done | sort -u | while read -r l; do cp -L "$l" "$pack/lib/"; done
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -days 30 -keyout "$pack/key.pem" -out "$pack/cert.pem" 2>/dev/null
    head -c 1024 /dev/urandom >"$pack/www/1k.bin"
    openssl rand 80 >"$pack/tickets.key" # shared by every worker of both servers
    du -sh "$pack"
    exit 0
fi

pack=$(cd "$1" && pwd)
out=$2
mkdir -p "$out"
out=$(cd "$out" && pwd)
runs=${RUNS:-3}
secs=${SECONDS_MEASURED:-4}
workers_list=${WORKERS:-1 2 4 8}
ld=$(ls "$pack"/lib/ld-linux-x86-64.so.2)
run() { "$ld" --library-path "$pack/lib" "$@"; }

# The CPUs this script may use, and the physical cores they belong to: one line per core, its
# CPUs separated by spaces, cores in the order of their first CPU. Without topology in /sys
# every CPU counts as a core of its own.
expand() { # "0-2,8" -> "0 1 2 8"
    local IFS=, part i cpu_ids=()
    for part in $1; do
        for ((i = ${part%-*}; i <= ${part#*-}; i++)); do cpu_ids+=("$i"); done
    done
    echo "${cpu_ids[@]}"
}
allowed=" $(expand "$(taskset -pc $$ | sed 's/.*: *//')") "
cores=()
while read -r line; do
    mine=
    for c in $(expand "$line"); do [[ $allowed == *" $c "* ]] && mine+="$c "; done
    [ -n "$mine" ] && cores+=("${mine% }")
done < <({
    for c in $allowed; do
        cat "/sys/devices/system/cpu/cpu$c/topology/thread_siblings_list" 2>/dev/null || echo "$c"
    done
} | sort -u | sort -n)
ncpu=$(wc -w <<<"$allowed")

# place N: server CPUs (one per core, the cores' second threads only when N exceeds the cores),
# client CPUs, and what the server cores' siblings run ("idle", "client", or "none" without SMT).
place() {
    local n=$1 i t quiet=()
    srv=() cli=()
    for i in "${!cores[@]}"; do
        read -ra t <<<"${cores[i]}"
        if [ "$i" -lt "$n" ]; then srv+=("${t[0]}") quiet+=("${t[@]:1}"); else cli+=("${t[@]}"); fi
    done
    while [ ${#srv[@]} -lt "$n" ] && [ ${#quiet[@]} -gt 0 ]; do
        srv+=("${quiet[0]}") quiet=("${quiet[@]:1}")
    done
    siblings=none
    if [ ${#quiet[@]} -gt 0 ]; then
        siblings=idle
        case ${SIBLINGS:-auto} in
        client) siblings=client ;;
        auto) [ ${#cli[@]} -lt "$n" ] && siblings=client ;;
        esac
        [ $siblings = client ] && cli+=("${quiet[@]}")
    fi
    srv_list=$(IFS=,; echo "${srv[*]}") cli_list=$(IFS=,; echo "${cli[*]}")
    [ ${#srv[@]} -eq "$n" ] && [ ${#cli[@]} -gt 0 ]
}

# Ticks of the CPUs named, from /proc/stat: "all steal".
ticks() {
    awk -v l=" $* " '$1 ~ /^cpu[0-9]+$/ && index(l, " " substr($1, 4) " ") {
            for (i = 2; i <= 9; i++) all += $i; steal += $9
        } END { print all + 0, steal + 0 }' /proc/stat
}

# perf, where it runs here and counts the event: its figure per CPU microsecond of the server.
perf_event=${PERF_EVENT:-instructions}
perf=
if [ -x "$pack/bin/perf" ] &&
    run "$pack/bin/perf" stat -x, -e "$perf_event" true 2>&1 | grep -q "^[0-9][0-9.]*,[^,]*,$perf_event"; then
    perf="$pack/bin/perf"
fi
# perf_rate PIDS SECONDS: the event's count per microsecond of the processes' CPU time.
perf_rate() {
    run "$perf" stat -x, -e "task-clock,$perf_event" -p "$1" -- sleep "$2" 2>&1 >/dev/null |
        awk -F, -v ev="$perf_event" '$3 == "task-clock" { ms = $1 } index($3, ev) == 1 { n = $1 }
            END { if (ms > 0 && n > 0) printf "%.4g", n / (ms * 1000) }'
}
work=$(mktemp -d)
ulimit -n 65536 2>/dev/null
port=24443
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

nginx_conf() {
    mkdir -p "$work/nginx"
    cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $1;
daemon off;
$([ "$(id -u)" = 0 ] && echo "user root;")
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 600s;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$port ssl reuseport backlog=4096;
        ssl_certificate $pack/cert.pem;
        ssl_certificate_key $pack/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_session_tickets on;
        ssl_session_ticket_key $pack/tickets.key;
        root $pack/www;
    }
}
EOF
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
server_pid=
start() { # SIDE N
    local cpus="0-$(($2 - 1))" ctx=worker
    [ "$1" = ktla-shared ] && ctx=shared
    if [ "$1" != nginx ]; then
        taskset -c "$cpus" "$ld" --library-path "$pack/lib" "$pack/bin/ktla-serve" \
            --listen "127.0.0.1:$port" --cert "$pack/cert.pem" --key "$pack/key.pem" \
            --workers "$2" --max-connections 65536 --tickets "$pack/tickets.key" \
            --openssl-context $ctx "$pack/www" >"$work/server.log" 2>&1 &
    else
        nginx_conf "$2"
        taskset -c "$cpus" "$ld" --library-path "$pack/lib" "$pack/bin/nginx" -p "$work/nginx" \
            -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" >"$work/server.log" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 100); do
        listening && return 0
        sleep 0.05
    done
    echo "server $1 did not start: $(tail -n 3 "$work/server.log")" >&2
    return 1
}
stop() {
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$server_pid" 2>/dev/null
    pkill -KILL -P "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    for _ in $(seq 100); do listening || break; sleep 0.05; done
}
json_get() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" "$1" | tr -d '"'; }

{
    echo "cores (CPUs per physical core) this script may use:"
    printf '  %s\n' "${cores[@]}"
    for n in $workers_list; do
        place "$n" && echo "$n workers: server on CPUs $srv_list, ktla-bench on $cli_list, siblings $siblings"
    done
    echo "perf: ${perf:-none that counts $perf_event here}"
} | tee "$out/placement.txt"

printf 'mode\tworkers\tserver\trun\thandshakes_per_s\tcpu_us\tuser_us\tsys_us\terrors\tresumed\thandshakes\tbusy\tsteal_pct\tevent_per_us\tsiblings\n' >"$out/runs.tsv"
for mode in full resumed; do
    wl=$workers_list
    [ $mode = resumed ] && wl="1 8"
    for n in $wl; do
        if ! place "$n"; then
            echo "$n workers: not enough CPUs here ($ncpu)" >&2
            continue
        fi
        r=$runs
        [ "$n" = 1 ] && [ "$r" -lt 5 ] && r=5
        threads=${#cli[@]}
        conns=$((threads * 8))
        for i in $(seq "$r"); do
            for side in ktla ktla-shared nginx; do
                # One worker has no other to share OpenSSL's library context with.
                [ $side = ktla-shared ] && [ "$n" = 1 ] && continue
                start $side "$n" || continue
                args=(-m handshake -c "$conns" -t "$threads")
                [ $mode = resumed ] && args+=(--resume)
                read -r all0 steal0 < <(ticks "${srv[@]}")
                taskset -c "$cli_list" "$ld" --library-path "$pack/lib" "$pack/bin/ktla-bench" \
                    "${args[@]}" -d "$secs" -w 1 --tls 1.3 --groups X25519 \
                    --ciphers TLS_AES_128_GCM_SHA256 --server-pid "$server_pid" \
                    --json "$work/r.json" -q "https://127.0.0.1:$port/1k.bin" >/dev/null 2>&1 &
                bench=$!
                rate=
                if [ -n "$perf" ]; then
                    # The measured seconds only: after ktla-bench's 1 s warm-up, inside its run.
                    sleep 1.2
                    pids=$(pgrep -P "$server_pid" | tr '\n' , | sed 's/,$//')
                    rate=$(perf_rate "$server_pid${pids:+,$pids}" "$(awk -v s="$secs" 'BEGIN { print s - 0.5 }')")
                fi
                wait "$bench"
                read -r all1 steal1 < <(ticks "${srv[@]}")
                stop
                hs=$(json_get "$work/r.json" handshakes_per_s)
                cpu=$(json_get "$work/r.json" server_cpu_us_per_handshake)
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $mode "$n" $side "$i" \
                    "$hs" "$cpu" \
                    "$(json_get "$work/r.json" server_user_us_per_handshake)" \
                    "$(json_get "$work/r.json" server_sys_us_per_handshake)" \
                    "$(json_get "$work/r.json" errors)" "$(json_get "$work/r.json" resumed)" \
                    "$(json_get "$work/r.json" handshakes)" \
                    "$(awk -v h="$hs" -v c="$cpu" -v n="$n" 'BEGIN { if (h != "" && c != "") printf "%.2f", h * c / 1e6 / n }')" \
                    "$(awk -v a=$((all1 - all0)) -v s=$((steal1 - steal0)) 'BEGIN { if (a > 0) printf "%.1f", 100 * s / a }')" \
                    "$rate" "$siblings" >>"$out/runs.tsv"
                rm -f "$work/r.json"
            done
        done
    done
done

# Medians per cell, and the single-worker spread (max/min of the CPU per handshake).
awk -F'\t' 'NR > 1 && $5 != "" {
        k = $1 "\t" $2 "\t" $3; n[k]++; hs[k, n[k]] = $5; cpu[k, n[k]] = $6; us[k, n[k]] = $7
        sy[k, n[k]] = $8; busy[k, n[k]] = $12; steal[k, n[k]] = $13; keys[k] = 1; sib[k] = $15
        if ($14 != "") { ne[k]++; evh[k, ne[k]] = $14 * $6 / 1e6 }
    }
    function med(a, k, m,    i, j, t, v) {
        for (i = 1; i <= m; i++) v[i] = a[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
    }
    function spread(a, k, m,    i, lo, hi) {
        lo = hi = a[k, 1]
        for (i = 2; i <= m; i++) { if (a[k, i] + 0 < lo + 0) lo = a[k, i]; if (a[k, i] + 0 > hi + 0) hi = a[k, i] }
        return lo > 0 ? hi / lo : 0
    }
    END {
        print "| mode | workers | server | runs | handshakes/s | server CPU µs/handshake | user µs | kernel µs | CPU spread max/min | server busy | steal % | " ev " M/handshake (spread) | SMT siblings |"
        print "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        for (k in keys) {
            split(k, f, "\t")
            e = ne[k] ? sprintf("%.2f (%.2f)", med(evh, k, ne[k]), spread(evh, k, ne[k])) : "–"
            printf "| %s | %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.1f | %s | %s |\n", f[1], f[2], f[3], n[k],
                med(hs, k, n[k]), med(cpu, k, n[k]), med(us, k, n[k]), med(sy, k, n[k]), spread(cpu, k, n[k]),
                med(busy, k, n[k]), med(steal, k, n[k]), e, sib[k]
        }
    }' ev="$perf_event" "$out/runs.tsv" | { read -r h1; read -r h2; echo "$h1"; echo "$h2"; sort -t'|' -k2,2 -k3,3n -k4,4; } >"$out/results.md"
{
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r);"
    echo "${secs} s measured after 1 s warm-up per run; where each side ran:"
    echo
    sed 's/^/    /' "$out/placement.txt"
} >>"$out/results.md"
cat "$out/results.md"
