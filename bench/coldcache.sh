#!/usr/bin/env bash
# Cold files on a slow disk: does one server's worker stall when clients download files that are
# not in the page cache? (issue 15, item 3.) sendfile(2) reads uncached pages synchronously even on
# a non-blocking socket; ktla-serve sends such ranges through io_uring splice instead (io-wq
# threads), nginx needs 'aio threads' for the same.
#
# Inside the guest kernel (scripts/vm.sh, kernel TLS), with an ext4 image attached as a virtio disk
# that qemu throttles (vm.sh --disk IMAGE,BPS), mounted read-only: for each server, one worker on
# CPU 0 serving the disk, a client on CPU 1 fetches a small warm file in a loop on one keep-alive
# connection (ktla-bench -m get -c 1), first alone, then while N other clients (nice 19, also on
# CPU 1) download N different big files that were just dropped from the page cache. The figure is
# that client's p99 with the load over its p99 without it (issue 15's target: at most 2).
#
# usage: bench/coldcache.sh [--files N] [--size MIB] [--bps BYTES] [--duration S] [--rounds R]
#                           [--servers LIST] [--build DIR] [--commit TEXT] [--out DIR]
#   --files N       big files on the disk, and load clients, one per file (default 6)
#   --size MIB      size of each big file (default 48)
#   --bps BYTES     the disk's throughput limit, reads and writes together (default 1000000:
#                   in the guest kernel-TLS encryption is emulated and costs tenths of a CPU
#                   second per MB, so a faster disk measures the CPU rather than the disk)
#   --duration S    measured seconds per measurement (default 12; 2 s of warm-up come first)
#   --rounds R      how many times the whole series runs, servers alternating (default 1)
#   --servers LIST  comma-separated, from ktla (ktla-serve --ktls require), nginx (sendfile on,
#                   ssl_conf_command Options KTLS), nginx-aio (the same with 'aio threads')
#                   (default ktla,nginx,nginx-aio)
#   --build DIR     where ktla-serve and ktla-bench are (default: build)
#   --commit TEXT   what the binaries were built from, for the table (default: this checkout's
#                   HEAD, '+changes' when src/, include/ or bench/ differ from it)
#   --out DIR       results.md (the table), runs/ (every JSON and log), console.log, the disk image
#                   while it runs (default: build/coldcache)
# Exit status: 0 when every measurement produced a figure, 1 otherwise (the table says which).
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
files=6 size=48 bps=1000000 duration=12 warmup=2 rounds=1 servers=ktla,nginx,nginx-aio
build="$here/build" out='' in_guest=0 commit=''
while [ $# -gt 0 ]; do
    case "$1" in
    --files) files=$2; shift ;;
    --size) size=$2; shift ;;
    --bps) bps=$2; shift ;;
    --duration) duration=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --servers) servers=$2; shift ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --commit) commit=$2; shift ;;
    --in-guest) in_guest=1 ;; # internal: the half that runs inside the guest
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "coldcache.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
build=$(cd "$build" 2>/dev/null && pwd) || { echo "coldcache.sh: no build directory" >&2; exit 2; }
[ -n "$out" ] || out="$here/build/coldcache"
mkdir -p "$out" && out=$(cd "$out" && pwd)
bench="$build/ktla-bench" serve="$build/ktla-serve"
if [ -z "$commit" ]; then
    commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$here" status --porcelain -- src include bench 2>/dev/null)" ] && commit="$commit+changes"
fi

# ---------------------------------------------------------------- host: the disk, then the guest
if [ $in_guest = 0 ]; then
    for x in "$bench" "$serve"; do
        [ -x "$x" ] || { echo "coldcache.sh: $x is missing: build it first" >&2; exit 2; }
    done
    mkfs=$(PATH=$PATH:/sbin:/usr/sbin command -v mkfs.ext4) ||
        { echo "coldcache.sh: mkfs.ext4 is missing (e2fsprogs; scripts/deps.sh)" >&2; exit 2; }
    command -v nginx >/dev/null || { echo "coldcache.sh: nginx is missing (scripts/deps.sh)" >&2; exit 2; }
    img="$out/disk.img" tree="$out/disk-tree"
    rm -rf "$tree" "$img" "$out/results.md"
    mkdir -p "$tree"
    # Random bytes: mkfs.ext4 -d would store blocks of zeros as holes, which cost no disk reads.
    echo "== coldcache: $files x $size MiB and a 4 KiB file on an ext4 image, throttled to $bps bytes/s"
    for i in $(seq "$files"); do
        head -c $((size * 1048576)) /dev/urandom >"$tree/big-$i.bin" || exit 1
    done
    head -c 4096 /dev/urandom >"$tree/small.bin"
    # New requests for cold files while the load runs: cold-K/f39.bin, in a directory of its own
    # with 40 files, so that its lookup reads a directory block and an inode block that nothing
    # else has brought into the cache.
    for k in 1 2 3; do
        mkdir "$tree/cold-$k"
        for f in $(seq -w 0 39); do head -c 4096 /dev/urandom >"$tree/cold-$k/f$f.bin"; done
    done
    blocks=$(((files * size * 1048576 * 11 / 10 + 64 * 1048576) / 4096))
    "$mkfs" -q -F -b 4096 -L coldcache -d "$tree" "$img" "$blocks" >"$out/mkfs.log" 2>&1 ||
        { echo "coldcache.sh: mkfs.ext4 failed:" >&2; cat "$out/mkfs.log" >&2; exit 1; }
    rm -rf "$tree"
    echo "== inside the guest kernel (scripts/vm.sh); console log: $out/console.log"
    # The guest's /tmp is its own, except the directory it starts in: start in the build directory.
    cd "$build" || exit 2
    KTLA_VM_TIMEOUT=${KTLA_VM_TIMEOUT:-1800} "$here/scripts/vm.sh" --out "$out" --disk "$img,$bps" -- \
        "$here/bench/coldcache.sh" --in-guest --files "$files" --size "$size" --bps "$bps" \
        --duration "$duration" --rounds "$rounds" --servers "$servers" --build "$build" --out "$out" \
        --commit "$commit" >"$out/console.log" 2>&1
    rc=$?
    rm -f "$img"
    if [ -s "$out/results.md" ]; then
        cat "$out/results.md"
    else
        echo "coldcache.sh: the guest produced no table (exit $rc); end of its console:" >&2
        tail -n 30 "$out/console.log" >&2
    fi
    exit $rc
fi

# ---------------------------------------------------------------- guest
started=$(date +%s)
ulimit -n "$(ulimit -Hn)" 2>/dev/null
work=$(mktemp -d /tmp/ktla-coldcache.XXXXXX)
root=/tmp/coldcache-disk
pids=()
kill_tree() { # SIGNAL PID: the process and its children (nginx's worker outlives a killed master)
    local c
    for c in $(cat /proc/"$2"/task/*/children 2>/dev/null); do kill "-$1" "$c" 2>/dev/null; done
    kill "-$1" "$2" 2>/dev/null
}
cleanup() {
    local p
    for p in "${pids[@]}"; do kill_tree TERM "$p"; done
    sleep 0.5
    for p in "${pids[@]}"; do kill_tree KILL "$p"; done
    umount "$root" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

modprobe -a virtio_blk ext4 || { echo "coldcache.sh: cannot load virtio_blk and ext4" >&2; exit 1; }
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p "$root"
mount -t ext4 -o ro /dev/vda "$root" || { echo "coldcache.sh: cannot mount /dev/vda" >&2; exit 1; }
mkdir -p "$out/runs" "$work/nginx"
rm -f "$out"/runs/*

sectors_read() { awk '{ print $3 }' /sys/block/vda/stat; }
# What the throttled disk gives: 8 MiB read past the page cache.
s0=$(date +%s.%N)
dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct status=none
disk_rate=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", 8 * 1048576 / (b - a) / 1e6 }')
echo "== disk: $(ls "$root" | wc -l) files; direct reads at $disk_rate MB/s (limit $bps bytes/s)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 30 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null ||
    { echo "coldcache.sh: openssl could not make a certificate" >&2; exit 1; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=$((20000 + RANDOM % 20000))
while ! port_free $port; do port=$((port + 1)); done

# nginx as scripts/bench-compare.sh runs it, serving the disk, with an access log like ktla-serve's.
nginx_conf() { # AIO-DIRECTIVE
    cat <<EOF
worker_processes 1;
daemon off;
$([ "$(id -u)" = 0 ] && echo "user root;")
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections 1024; }
http {
    access_log $work/access.log;
    sendfile on;
    $1
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_conf_command Options KTLS;
        root $root;
    }
}
EOF
}
nginx_conf "" >"$work/nginx/nginx.conf"
nginx_conf "aio threads;" >"$work/nginx/nginx-aio.conf"

server_pid=
start_server() { # SIDE; 0 once it listens
    local side=$1 log="$work/server.log"
    rm -f "$work/access.log"
    case $side in
    ktla)
        taskset -c 0 "$serve" --listen "127.0.0.1:$port" --cert "$work/cert.pem" --key "$work/key.pem" \
            --workers 1 --ktls require --idle-timeout 600 --access-log "$work/access.log" "$root" \
            >"$log" 2>&1 & ;;
    nginx | nginx-aio)
        taskset -c 0 nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/$side.conf" \
            >"$log" 2>&1 & ;;
    *) echo "unknown server $side" >"$log"; return 1 ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    local i
    for i in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || { echo "exited at start-up" >>"$log"; return 1; }
        port_free $port || return 0
        sleep 0.1
    done
    echo "did not listen on 127.0.0.1:$port within 10 s" >>"$log"
    return 1
}
stop_server() {
    kill -TERM "$server_pid" 2>/dev/null
    local i
    for i in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill_tree KILL "$server_pid"
    wait "$server_pid" 2>/dev/null
    for i in $(seq 50); do port_free $port && break; sleep 0.1; done
}
tls_tx() { awk '$1 == "TlsTxSw" { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
json_get() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" "$1" 2>/dev/null | head -n1 | tr -d '"'; }
# The page cache (and the inodes and dentries) dropped, then the small file read back in.
cold_start() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    cat "$root/small.bin" >/dev/null
}
# small TAG: the client that matters, on CPU 1: one keep-alive connection fetching the small file.
small() {
    taskset -c 1 "$bench" -m get -c 1 -d "$duration" -w "$warmup" --timeout-ms 120000 --tls 1.3 \
        --groups X25519 --ciphers TLS_AES_128_GCM_SHA256 --server-pid "$server_pid" --label "$1" \
        --json "$out/runs/$1.json" -q "https://127.0.0.1:$port/small.bin" >"$out/runs/$1.log" 2>&1
}

# The server's threads, sampled every 10 ms while the load runs: state (R running, S sleeping,
# D waiting uninterruptibly: the disk) and wchan, one line per thread per sample:
# "PID TID COMM STATE WCHAN TIME". A thread that serves connections must never be in D.
sample_threads() { # OUTFILE; runs until $work/stop exists
    local t line comm st wc procs=("$server_pid") c
    for c in $(cat /proc/"$server_pid"/task/*/children 2>/dev/null); do procs+=("$c"); done
    rm -f "$work/tick"
    mkfifo "$work/tick" && exec 9<>"$work/tick"
    exec 8>"$1"
    while [ ! -e "$work/stop" ]; do
        for p in "${procs[@]}"; do
            for t in /proc/"$p"/task/*; do
                read -r line 2>/dev/null <"$t/stat" || continue
                comm=${line#*(} comm=${comm%%)*} st=${line##*) } st=${st%% *}
                wc=
                read -r wc 2>/dev/null <"$t/wchan" # no newline at its end: read says 1
                echo "$p ${t##*/} ${comm// /_} $st ${wc:-?} $EPOCHREALTIME" >&8
            done
        done
        read -t 0.01 -u 9 _
    done
    exec 8>&- 9>&-
}
# blocked_summary FILE: for the event thread (of those that are not io-wq workers, the one most
# often sampled running): its samples in D, the time it spent in D, its longest stretch in D and
# where (wchan); and how often the io-wq workers (ktla's cold reads) were in D.
blocked_summary() {
    awk '$3 !~ /^iou-wrk/ { n[$2]++; if ($4 == "R") r[$2]++ }
         $3 ~ /^iou-wrk/ { iow[$2] = 1; if ($4 == "D") iod++; ion++ }
         { st[NR] = $4; tid[NR] = $2; wc[NR] = $5; t[NR] = $6 }
         END { best = ""; for (x in n) if (best == "" || r[x] > r[best]) best = x
               # stretches in D of that thread: from its first D sample to the next sample not in D
               for (k = 1; k <= NR; k++) {
                   if (tid[k] != best) continue
                   last = k
                   if (st[k] == "D") { nd++; if (!ind) { s0 = t[k]; w0 = wc[k]; ind = 1 } }
                   else if (ind) { d = t[k] - s0; tot += d; if (d > max) { max = d; mw = w0 } ind = 0 }
               }
               if (ind) { d = t[last] - s0; tot += d; if (d > max) { max = d; mw = w0 } }
               nio = 0; for (x in iow) nio++
               printf "D in %d/%d samples, %.1f s in all, longest %.2f s%s; io-wq threads %d, in D %d/%d samples",
                   nd, n[best], tot, max, (mw != "" ? " (" mw ")" : ""), nio, iod, ion }' "$1"
}

declare -A res
status=0
IFS=, read -r -a sides <<<"$servers"
echo "== $rounds round(s) of ${sides[*]}; ${duration} s measured after ${warmup} s warm-up; $files load clients"
for r in $(seq "$rounds"); do
    for side in "${sides[@]}"; do
        tag="r$r-$side"
        if ! start_server "$side"; then
            echo "  $tag: the server did not start: $(tail -n 1 "$work/server.log")"
            cp "$work/server.log" "$out/runs/$tag.server.log"
            stop_server
            status=1
            continue
        fi
        tx0=$(tls_tx)
        # 1. alone
        cold_start
        small "$tag-alone" || status=1
        # 2. with the cold load: the load runs from 2 s before the small client to after it
        cold_start
        rd0=$(sectors_read) t0=$(date +%s.%N)
        load=()
        for i in $(seq "$files"); do
            nice -n 19 taskset -c 1 "$bench" -m download -c 1 -w 0 -d $((duration + warmup + 4)) \
                --timeout-ms 120000 --tls 1.3 --groups X25519 --ciphers TLS_AES_128_GCM_SHA256 \
                --label "$tag-load-$i" --json "$out/runs/$tag-load-$i.json" -q \
                "https://127.0.0.1:$port/big-$i.bin" >"$out/runs/$tag-load-$i.log" 2>&1 &
            load+=($!)
            pids+=($!)
        done
        rm -f "$work/stop"
        (sample_threads "$out/runs/$tag.threads") &
        sampler=$!
        pids+=("$sampler")
        taskset -c -p 1 "$sampler" >/dev/null 2>&1; renice -n 19 -p "$sampler" >/dev/null 2>&1
        # Once every load client has its connection (and 1 s more), the measured client starts;
        # in its measured window, three requests for cold files in cold directories, 3 s apart.
        for i in $(seq 100); do
            [ "$(awk -v p="$(printf %04X $port)" '$2 ~ ":" p "$" && $4 == "01"' /proc/net/tcp | wc -l)" -ge "$files" ] && break
            sleep 0.1
        done
        sleep 1
        (
            # (not niced: at nice 19 its handshake took the guest up to 8 s, and a lookup that
            # blocks the worker at the window's end is not counted, its request never completing)
            sleep $((warmup + 1))
            for k in 1 2 3; do
                s0=$EPOCHREALTIME
                taskset -c 1 curl -sk -o /dev/null -w "%{http_code}" "https://127.0.0.1:$port/cold-$k/f39.bin"
                echo " cold-$k/f39.bin: started $s0, $(awk -v a="$s0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }') s"
                sleep 3
            done
        ) >"$out/runs/$tag.probes" 2>&1 &
        probes=$!
        pids+=("$probes")
        echo "small-start $EPOCHREALTIME" >>"$out/runs/$tag.probes.t"
        small "$tag-load" || status=1
        echo "small-end $EPOCHREALTIME" >>"$out/runs/$tag.probes.t"
        wait "$probes"
        touch "$work/stop"
        wait "$sampler"
        blocked=$(blocked_summary "$out/runs/$tag.threads")
        rd1=$(sectors_read) t1=$(date +%s.%N)
        rd_mbps=$(awk -v d=$(((rd1 - rd0) * 512)) -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", d / (b - a) / 1e6 }')
        for p in "${load[@]}"; do wait "$p"; done
        alive=yes
        kill -0 "$server_pid" 2>/dev/null || { alive=no; status=1; }
        stop_server
        tx1=$(tls_tx)
        cp "$work/server.log" "$out/runs/$tag.server.log"
        cp "$work/access.log" "$out/runs/$tag.access.log" 2>/dev/null
        # Record-layer modes of ktla-serve's responses (its access log's 13th field).
        modes=
        [ "$side" = ktla ] && modes=$(awk '$7 == "/small.bin" { n[$13]++ } END { for (m in n) printf "%s%s %d", s, m, n[m]; s = ", " }' \
            "$work/access.log" 2>/dev/null)
        load_bps=0
        for i in $(seq "$files"); do
            b=$(json_get "$out/runs/$tag-load-$i.json" bytes_per_s)
            load_bps=$(awk -v a="$load_bps" -v b="${b:-0}" 'BEGIN { print a + b }')
        done
        res[$tag]="$(json_get "$out/runs/$tag-alone.json" latency_p50_us)|$(json_get "$out/runs/$tag-alone.json" latency_p99_us)|$(json_get "$out/runs/$tag-alone.json" requests_per_s)|$(json_get "$out/runs/$tag-load.json" latency_p50_us)|$(json_get "$out/runs/$tag-load.json" latency_p99_us)|$(json_get "$out/runs/$tag-load.json" latency_max_us)|$(json_get "$out/runs/$tag-load.json" requests_per_s)|$load_bps|$rd_mbps|$((tx1 - tx0))|$(json_get "$out/runs/$tag-load.json" server_cpu_s)|$modes|$alive|$blocked"
        echo "  $tag: ${res[$tag]}"
    done
done

# ---------------------------------------------------------------- the table
fmt_ms() { [ -n "$1" ] && [ "$1" != null ] && awk -v v="$1" 'BEGIN { printf (v >= 100000 ? "%.0f" : "%.2f"), v / 1000 }' || echo "none"; }
{
    echo "### Cold files: a warm client's latency while others download cold files, guest kernel $(uname -r)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit; disk: ext4 on virtio, qemu throttling" \
        "$bps bytes/s (direct reads measured $disk_rate MB/s), $files x $size MiB cold files;" \
        "${duration} s measured after ${warmup} s warm-up per figure; nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')"
    echo
    echo "| round · server | p50 alone ms | p99 alone ms | p50 with load ms | p99 with load ms | **p99 ratio** (target ≤ 2) | max with load ms | requests/s alone · with load | load MB/s (disk reads MB/s) | server CPU s during load window | event thread under load: D = waiting for the disk | kernel TLS (TlsTxSw +) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    for r in $(seq "$rounds"); do
        for side in "${sides[@]}"; do
            tag="r$r-$side"
            IFS='|' read -r a50 a99 arps l50 l99 lmax lrps lbps rdb tx cpu modes alive blocked <<<"${res[$tag]:-}"
            ratio=$(awk -v a="$a99" -v b="$l99" -v d="$duration" 'BEGIN { if (a > 0 && b != "" && b != "null") printf "%.1f", b / a;
                else if (a > 0) printf "> %.0f (no response in %d s)", d * 1e6 / a, d; else print "–" }')
            name=$side
            [ "$side" = ktla ] && name="ktla-serve"
            [ "$side" = nginx-aio ] && name="nginx, aio threads"
            rate=$(awk -v b="$lbps" -v d="$rdb" 'BEGIN { printf "%.1f (%s)", b / 1e6, d }')
            echo "| $r · $name | $(fmt_ms "$a50") | $(fmt_ms "$a99") | $(fmt_ms "$l50") | $(fmt_ms "$l99") | **$ratio** | $(fmt_ms "$lmax") | ${arps:-–} · ${lrps:-–} | $rate | ${cpu:-–} | ${blocked:-–} | ${tx:-0}$([ "${tx:-0}" = 0 ] && echo ' — NO kernel TLS')${modes:+; access log: $modes}$([ "$alive" = no ] && echo '; the server DIED') |"
        done
    done
    echo
    echo "- in the measured window with load, 3 one-off requests (curl) for 4 KiB files in cold directories (cold-K/f39.bin), 3 s apart: their times in $out/runs/*.probes."
    echo "- load: $files clients (ktla-bench -m download -c 1, nice 19, CPU 1), one per cold file;" \
        "the measured client: ktla-bench -m get -c 1 of the 4 KiB file (CPU 1); the server: one worker on CPU 0."
    echo "- event thread in D: the server's threads sampled every 10 ms during the load (state and wchan, $out/runs/*.threads); the event thread is the one most often running (ktla-serve's worker, nginx's worker process); D is an uninterruptible wait, here the disk; a stretch lasts from its first D sample to the next sample not in D.
- disk reads MB/s: /sys/block/vda/stat from the start of the load to the end of the measured client's run; the page cache was dropped just before."
    echo "- $(($(date +%s) - started)) s in the guest; every JSON and log: $out/runs/."
} >"$out/results.md"
cat "$out/results.md"
exit $status
