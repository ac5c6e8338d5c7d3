#!/usr/bin/env bash
# Many-core comparison (issue 15): full and resumed TLS 1.3 handshakes (X25519, AES-128-GCM,
# 1 KiB GET each) against ktla-serve and nginx with 1, 2, 4 and 8 workers, on a machine with at
# least 16 CPUs. ktla-serve runs twice from 2 workers on: with an OpenSSL library context per
# worker (its default, "ktla") and with OpenSSL's default one shared ("ktla-shared"), which is
# what shows whether OpenSSL 3.0's locks hold threads back (bench/locks.sh counts them). The server runs on CPUs 0..N-1, ktla-bench on all the others (the more client
# cores, the likelier the server is the bottleneck); runs alternate between the servers, each a
# freshly started server. Userspace TLS is enough here: the handshake is the same either way.
#
# usage: bench/manycore.sh PACK OUT
#   PACK: a directory made by `bench/manycore.sh --pack PACK` on the build machine: bin/
#         (ktla-serve, ktla-bench, nginx), lib/ (every shared library they load, the dynamic
#         loader included, so that they run unchanged on another distribution), cert.pem,
#         key.pem, www/1k.bin.
#   OUT:  results.md (the table), runs.tsv (every run)
# Environment: RUNS (runs per cell, default 3; the single-worker cells get max(RUNS, 5), for
# the spread), SECONDS_MEASURED (default 4), WORKERS (default "1 2 4 8").
#
# `bench/manycore.sh --pack PACK [BUILD]` makes PACK from BUILD (default build/) and Debian's
# nginx, with the libraries ldd lists.
set -uo pipefail

if [ "${1:-}" = --pack ]; then
    pack=$2 build=${3:-build}
    mkdir -p "$pack/bin" "$pack/lib" "$pack/www"
    cp "$build/ktla-serve" "$build/ktla-bench" /usr/sbin/nginx "$pack/bin/"
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
ncpu=$(nproc)
ld=$(ls "$pack"/lib/ld-linux-x86-64.so.2)
run() { "$ld" --library-path "$pack/lib" "$@"; }
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

printf 'mode\tworkers\tserver\trun\thandshakes_per_s\tcpu_us\tuser_us\tsys_us\terrors\tresumed\thandshakes\n' >"$out/runs.tsv"
for mode in full resumed; do
    wl=$workers_list
    [ $mode = resumed ] && wl="1 8"
    for n in $wl; do
        r=$runs
        [ "$n" = 1 ] && [ "$r" -lt 5 ] && r=5
        client_cpus="$n-$((ncpu - 1))"
        threads=$((ncpu - n))
        conns=$((threads * 8))
        for i in $(seq "$r"); do
            for side in ktla ktla-shared nginx; do
                # One worker has no other to share OpenSSL's library context with.
                [ $side = ktla-shared ] && [ "$n" = 1 ] && continue
                start $side "$n" || continue
                args=(-m handshake -c "$conns" -t "$threads")
                [ $mode = resumed ] && args+=(--resume)
                taskset -c "$client_cpus" "$ld" --library-path "$pack/lib" "$pack/bin/ktla-bench" \
                    "${args[@]}" -d "$secs" -w 1 --tls 1.3 --groups X25519 \
                    --ciphers TLS_AES_128_GCM_SHA256 --server-pid "$server_pid" \
                    --json "$work/r.json" -q "https://127.0.0.1:$port/1k.bin" >/dev/null 2>&1
                stop
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $mode "$n" $side "$i" \
                    "$(json_get "$work/r.json" handshakes_per_s)" \
                    "$(json_get "$work/r.json" server_cpu_us_per_handshake)" \
                    "$(json_get "$work/r.json" server_user_us_per_handshake)" \
                    "$(json_get "$work/r.json" server_sys_us_per_handshake)" \
                    "$(json_get "$work/r.json" errors)" "$(json_get "$work/r.json" resumed)" \
                    "$(json_get "$work/r.json" handshakes)" >>"$out/runs.tsv"
                rm -f "$work/r.json"
            done
        done
    done
done

# Medians per cell, and the single-worker spread (max/min of the CPU per handshake).
awk -F'\t' 'NR > 1 && $5 != "" {
        k = $1 "\t" $2 "\t" $3; n[k]++; hs[k, n[k]] = $5; cpu[k, n[k]] = $6; us[k, n[k]] = $7
        sy[k, n[k]] = $8; keys[k] = 1
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
        print "| mode | workers | server | runs | handshakes/s | server CPU µs/handshake | user µs | kernel µs | CPU spread max/min |"
        print "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (k in keys) {
            split(k, f, "\t")
            printf "| %s | %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.2f |\n", f[1], f[2], f[3], n[k],
                med(hs, k, n[k]), med(cpu, k, n[k]), med(us, k, n[k]), med(sy, k, n[k]), spread(cpu, k, n[k])
        }
    }' "$out/runs.tsv" | { read -r h1; read -r h2; echo "$h1"; echo "$h2"; sort -t'|' -k2,2 -k3,3n -k4,4; } >"$out/results.md"
{
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r);"
    echo "server on CPUs 0..N-1, ktla-bench on the rest; ${secs} s measured after 1 s warm-up per run."
} >>"$out/results.md"
cat "$out/results.md"
