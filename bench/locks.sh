#!/usr/bin/env bash
# Locks that worker threads share, per handshake (issue 15, item 4). OpenSSL 3.0 takes a lock of
# the library context for every algorithm it looks up; threads whose handshakes share one context
# all write the same cache lines, which is what stops a threaded server from scaling on many
# cores. This counts it on any machine, two CPUs being enough: ktla-serve with two workers, each
# --openssl-context (worker, the default: a library context per worker; shared: OpenSSL's default
# one), under uprobes on glibc's pthread_rwlock_rdlock, pthread_rwlock_wrlock and
# pthread_mutex_lock, while ktla-bench makes TLS 1.3 handshakes (X25519, AES-128-GCM, 1 KiB GET
# each; full, then resumed). Each lock is told apart by its address: a lock "both workers take"
# is one that both worker threads locked during the run. Counts, not times: the probes slow the
# server, not what it locks. Atomic reference counts (OpenSSL's up-refs) are not seen; they follow
# the objects, which the library context separates too.
#
# usage: bench/locks.sh [BUILD_DIR] [SECONDS]   (defaults: build, 3; root, perf with uprobes)
# Prints a markdown table.
set -uo pipefail
build=$(cd "${1:-build}" && pwd)
secs=${2:-3}
work=$(mktemp -d)
libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ { print $NF; exit }')
probes=(pthread_rwlock_rdlock pthread_rwlock_wrlock pthread_mutex_lock)
cleanup() {
    kill $(jobs -p) 2>/dev/null
    for f in "${probes[@]}"; do perf probe -q -d "probe_libc:$f" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
command -v perf >/dev/null || { echo "bench/locks.sh: perf is missing (linux-perf)" >&2; exit 1; }
for f in "${probes[@]}"; do
    perf probe -q -d "probe_libc:$f" 2>/dev/null # left by an earlier run
    perf probe -q -x "$libc" "$f lock=%di:u64" 2>"$work/probe.err" ||
        { echo "bench/locks.sh: cannot probe $f: $(cat "$work/probe.err")" >&2; exit 1; }
done
mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=$((20000 + RANDOM % 20000))

# count MODE RESUME: one row per lock function, "calls per handshake | of which shared"
count() {
    local mode=$1 resume=$2
    "$build/ktla-serve" --listen "127.0.0.1:$port" --workers 2 --openssl-context "$mode" \
        --cert "$work/cert.pem" --key "$work/key.pem" "$work/www" >"$work/serve.log" 2>&1 &
    local sp=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    # Warm both workers first: start-up work is not per handshake.
    "$build/ktla-bench" -m handshake $resume -t 2 -c 8 -d 1 -w 0 --tls 1.3 --groups X25519 \
        "https://127.0.0.1:$port/1k.bin" >/dev/null 2>&1
    perf record -q -e 'probe_libc:*' -o "$work/perf.data" -p $sp 2>/dev/null &
    local pp=$!
    sleep 1
    "$build/ktla-bench" -m handshake $resume -t 2 -c 8 -d "$secs" -w 0 --tls 1.3 --groups X25519 \
        --json "$work/r.json" -q "https://127.0.0.1:$port/1k.bin" >/dev/null 2>&1
    sleep 0.3
    kill -INT $pp; wait $pp 2>/dev/null
    kill $sp; wait $sp 2>/dev/null
    local hs
    hs=$(sed -n 's/.*"handshakes": \([0-9]*\).*/\1/p' "$work/r.json")
    perf script -i "$work/perf.data" -F tid,event,trace 2>/dev/null | awk -v hs="$hs" '
        match($0, /probe_libc:[a-z_]+/) {
            fn = substr($0, RSTART + 11, RLENGTH - 11)
            if (!match($0, /lock=[0-9]+/)) next
            lk = substr($0, RSTART + 5, RLENGTH - 5)
            n[fn]++; per[fn, lk]++
            if (!((lk, $1) in seen)) { seen[lk, $1] = 1; threads[lk]++ }
        }
        END {
            for (k in per) { split(k, a, SUBSEP); if (threads[a[2]] > 1) shared[a[1]] += per[k] }
            for (fn in n) printf "%s %.1f %.1f %d\n", fn, n[fn] / hs, shared[fn] / hs, hs
        }' | sort
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null), ktla-serve --workers 2"
echo
echo "| handshakes | --openssl-context | lock | per handshake | ...on locks both workers take |"
echo "| --- | --- | --- | ---: | ---: |"
for resume in "" -r; do
    kind=$([ -n "$resume" ] && echo resumed || echo full)
    for mode in shared worker; do
        count "$mode" "$resume" | while read -r fn all shared hs; do
            echo "| $kind ($hs measured) | $mode | $fn | $all | $shared |"
        done
    done
done
