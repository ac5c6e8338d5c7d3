#!/usr/bin/env bash
# Compares ktla-serve with Debian's nginx, configured the same way, under the same load:
# same ECDSA P-256 certificate, TLS 1.3 with X25519 and AES-128-GCM, one worker, sendfile on,
# nginx with 'ssl_conf_command Options KTLS', no access log, the same files. The server runs on
# CPU 0 and ktla-bench on CPU 1; runs alternate (ktla, nginx, ktla, nginx, ...) and each is a
# freshly started server. The figure that counts is the server's CPU time per operation (on two
# cores the client shares the machine, so requests/s would measure the client as much).
#
# usage: scripts/bench-compare.sh [--quick] [--guest] [--bodies|--h2] [--runs N] [--build DIR] [--out DIR]
#   --quick      shorter runs and fewer of them (under 3 minutes on the host)
#   --guest      the same comparison inside the guest kernel (scripts/vm.sh), where both servers
#                can use kernel TLS; there the ratio counts, not the absolute figures
#   --bodies     instead of nginx, compare ktla-serve's two body paths with each other:
#                --file-io sendfile (A) against --file-io splice (B), on the 64 KiB GET and the
#                download workloads (meaningful with --guest, where bodies go through kernel TLS)
#   --h2         HTTP/2 instead: h2load (nghttp2's load generator) as the client, 64 KiB GETs (16
#                connections, 10 streams each) and 100 MiB downloads (2 connections), against
#                ktla-serve over h2, nginx with 'listen ... http2' (which turns sendfile off for
#                HTTP/2 and copies bodies through userspace even with kernel TLS) and ktla-serve
#                over HTTP/1.1 with the same client (h2load --h1); the figure is the server's CPU
#                time (utime + stime of its processes) per request or per MiB
#   --runs N     runs per server and workload (default 5; --quick 3)
#   --build DIR  where ktla-serve and ktla-bench are (default: build)
#   --out DIR    results: results.md (the table), chart.png, runs/*.json (default: build/bench,
#                build/bench-guest with --guest)
# Exit status: 0 when every run of both servers succeeded, 1 otherwise (the table says which).
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
quick=0 guest=0 in_guest=0 bodies=0 h2=0 runs= build="$here/build" out=
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --guest) guest=1 ;;
    --bodies) bodies=1 ;;
    --h2) h2=1 ;;
    --in-guest) in_guest=1 ;; # internal: the half that runs inside the guest
    --runs) runs=$2; shift ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
build=$(cd "$build" 2>/dev/null && pwd) || { echo "bench-compare.sh: no build directory" >&2; exit 2; }
[ -n "$out" ] || out="$here/build/bench$([ $bodies = 1 ] && echo -bodies)$([ $h2 = 1 ] && echo -h2)$([ $guest = 1 ] && echo -guest)"
mkdir -p "$out" && out=$(cd "$out" && pwd)

if [ $guest = 1 ]; then
    # The guest writes only into its --out directory; the table comes back through it.
    args=(--in-guest --build "$build" --out "$out")
    [ $quick = 1 ] && args+=(--quick)
    [ $bodies = 1 ] && args+=(--bodies)
    [ $h2 = 1 ] && args+=(--h2)
    [ -n "$runs" ] && args+=(--runs "$runs")
    rm -f "$out/results.md"
    echo "== bench-compare inside the guest kernel (scripts/vm.sh); console log: $out/console.log"
    # The guest's /tmp is its own, except the directory it starts in: start in the build
    # directory, so that a build under /tmp is visible there too.
    cd "$build" || exit 2
    KTLA_VM_TIMEOUT=${KTLA_VM_TIMEOUT:-5400} "$here/scripts/vm.sh" --out "$out" -- \
        "$here/scripts/bench-compare.sh" "${args[@]}" >"$out/console.log" 2>&1
    rc=$?
    if [ -s "$out/results.md" ]; then
        cat "$out/results.md"
    else
        echo "bench-compare.sh: the guest produced no table (exit $rc); end of its console:" >&2
        tail -n 30 "$out/console.log" >&2
    fi
    exit $rc
fi

# ---- settings
# The guest emulates its CPU (one handshake costs tens of milliseconds there), so its runs are
# longer and hold fewer idle connections.
if [ $in_guest = 1 ] && [ $quick = 1 ]; then
    runs=${runs:-3} duration=10 warmup=3 idle_conns=200
elif [ $in_guest = 1 ]; then
    runs=${runs:-5} duration=20 warmup=5 idle_conns=1000
elif [ $quick = 1 ]; then
    runs=${runs:-3} duration=2 warmup=0.5 idle_conns=1000
else
    runs=${runs:-5} duration=10 warmup=2 idle_conns=10000
fi
where=host
[ $in_guest = 1 ] && where=guest
bench="$build/ktla-bench"
serve="$build/ktla-serve"
[ -x "$bench" ] || { echo "bench-compare.sh: $bench is missing: build it first" >&2; exit 2; }
command -v nginx >/dev/null || { echo "bench-compare.sh: nginx is missing (scripts/deps.sh)" >&2; exit 2; }

# Every connection is a descriptor, in the servers and in the client: the hard limit for all.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
if [ "$(ulimit -n)" -lt $((idle_conns + 200)) ]; then
    echo "bench-compare.sh: the file descriptor limit $(ulimit -n) is below $((idle_conns + 200));" \
        "the idle workload will fail (raise 'ulimit -Hn')" >&2
fi

work=$(mktemp -d /tmp/ktla-bench-compare.XXXXXX)
pids=()
# kill_tree SIGNAL PID: the process and its children (nginx's worker outlives a killed master).
kill_tree() {
    local c
    for c in $(cat /proc/"$2"/task/*/children 2>/dev/null); do kill "-$1" "$c" 2>/dev/null; done
    kill "-$1" "$2" 2>/dev/null
}
cleanup() {
    local p
    for p in "${pids[@]}"; do kill_tree TERM "$p"; done
    sleep 0.5
    for p in "${pids[@]}"; do kill_tree KILL "$p"; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/www" "$work/nginx" "$out/runs"
rm -f "$out"/runs/*.json "$out"/runs/*.log
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -days 30 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null ||
    { echo "bench-compare.sh: openssl could not make a certificate" >&2; exit 1; }
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c 65536 /dev/urandom >"$work/www/64k.bin"
head -c $((100 * 1024 * 1024)) /dev/zero >"$work/www/100m.bin"

# A port nothing listens on, away from the ones the test suites pick.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=$((20000 + RANDOM % 20000))
while ! port_free $port; do port=$((port + 1)); done

cat >"$work/nginx/nginx.conf" <<EOF
# Generated by scripts/bench-compare.sh: the same as ktla-serve is run with.
worker_processes 1;
daemon off;
$([ "$(id -u)" = 0 ] && echo "user root;")
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $((idle_conns + 1000)); }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$port ssl backlog=4096$([ $h2 = 1 ] && echo " http2");
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_conf_command Options KTLS;
        root $work/www;
    }
}
EOF

# start_server SIDE: starts it on CPU 0 and waits until it listens; sets server_pid. 0 or 1.
server_pid=
start_server() {
    local side=$1 log="$work/$1.log"
    if [ "$side" = ktla ] || [ "$side" = splice ] || [ "$side" = ktla-h1 ]; then
        [ -x "$serve" ] || { echo "$serve is not built" >"$log"; return 1; }
        local fio=sendfile
        [ "$side" = splice ] && fio=splice
        taskset -c 0 "$serve" --file-io $fio --listen "127.0.0.1:$port" --cert "$work/cert.pem" \
            --key "$work/key.pem" --workers 1 --ktls auto --max-connections $((idle_conns + 1000)) \
            --idle-timeout 600 "$work/www" >"$log" 2>&1 &
    else
        taskset -c 0 nginx -p "$work/nginx" -e "$work/nginx/error.log" \
            -c "$work/nginx/nginx.conf" >"$log" 2>&1 &
    fi
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
    for i in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill_tree KILL "$server_pid"
    wait "$server_pid" 2>/dev/null
    for i in $(seq 50); do port_free $port && break; sleep 0.1; done
}

tls_counters() { # TlsTxSw TlsRxSw, or "0 0" where the kernel has no TLS
    awk '$1 == "TlsTxSw" { tx = $2 } $1 == "TlsRxSw" { rx = $2 } END { print tx + 0, rx + 0 }' \
        /proc/net/tls_stat 2>/dev/null || echo "0 0"
}

json_get() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" "$1" 2>/dev/null | tr -d '"'; }

if [ $h2 = 1 ]; then
    command -v h2load >/dev/null || { echo "bench-compare.sh: h2load is missing (scripts/deps.sh)" >&2; exit 2; }
    # cpu_ticks PID: utime + stime of the process and its children (nginx's worker), in ticks.
    cpu_ticks() {
        local p t=0 u s
        for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
            read -r u s <<<"$(awk '{ print $14, $15 }' /proc/"$p"/stat 2>/dev/null)"
            t=$((t + ${u:-0} + ${s:-0}))
        done
        echo $t
    }
    hz=$(getconf CLK_TCK)
    # name | h2load arguments | per (request or mib) | target ratio against nginx
    h2_workloads=(
        "64 KiB GET, 10 streams on each of 16 connections|-c 16 -m 10 /64k.bin|request|0.7"
        "100 MiB download, 2 connections|-c 2 -m 1 /100m.bin|mib|0.7"
    )
    sides=(ktla nginx ktla-h1)
    declare -A ktls_tx ktls_rx
    for side in "${sides[@]}"; do ktls_tx[$side]=0 ktls_rx[$side]=0; done
    status=0
    started=$(date +%s)
    echo "== bench-compare --h2 ($where, $runs runs each, ${duration}s measured + ${warmup}s warm-up; port $port)"
    for w in "${!h2_workloads[@]}"; do
        IFS='|' read -r name hargs per target <<<"${h2_workloads[$w]}"
        read -r -a hargs <<<"$hargs"
        path=${hargs[-1]}
        unset 'hargs[-1]'
        for r in $(seq "$runs"); do
            for side in "${sides[@]}"; do
                tag="w$w-$side-$r"
                if ! start_server $side; then
                    echo "  $tag: the server did not start: $(tail -n 1 "$work/$side.log")"
                    stop_server
                    status=1
                    continue
                fi
                proto=()
                [ $side = ktla-h1 ] && proto=(--h1)
                read -r tx0 rx0 <<<"$(tls_counters)"
                # The warm-up's CPU is not counted: h2load's own --warm-up-time measures from its
                # end, and the server's ticks are read then too.
                (sleep "$warmup"; cpu_ticks "$server_pid" >"$work/t0") &
                ticker=$!
                timeout -k 5 $((${duration%.*} + 120)) taskset -c 1 h2load "${proto[@]}" \
                    "${hargs[@]}" -D "$duration" --warm-up-time "$(awk -v w="$warmup" 'BEGIN { printf "%dms", w * 1000 }')" \
                    --tls13-ciphers TLS_AES_128_GCM_SHA256 "https://127.0.0.1:$port$path" \
                    >"$out/runs/$tag.log" 2>&1
                rc=$?
                t1=$(cpu_ticks "$server_pid")
                wait $ticker
                t0=$(cat "$work/t0" 2>/dev/null || echo 0)
                read -r tx1 rx1 <<<"$(tls_counters)"
                ktls_tx[$side]=$((ktls_tx[$side] + tx1 - tx0))
                ktls_rx[$side]=$((ktls_rx[$side] + rx1 - rx0))
                proto_used=$(sed -n 's/^Application protocol: //p' "$out/runs/$tag.log")
                reqs=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out/runs/$tag.log")
                failed=$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' "$out/runs/$tag.log")
                data=$(sed -n 's/^traffic: .*(\([0-9]*\)) data$/\1/p' "$out/runs/$tag.log")
                stop_server
                value=
                if [ "$per" = request ] && [ "${reqs:-0}" -gt 0 ]; then
                    value=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
                elif [ "$per" = mib ] && [ "${data:-0}" -gt 0 ]; then
                    value=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v b="$data" 'BEGIN { printf "%.3f", t * 1e3 / hz / (b / 1048576) }')
                fi
                want_proto=h2
                [ $side = ktla-h1 ] && want_proto=http/1.1
                [ "$proto_used" = $want_proto ] || { value=; echo "protocol '$proto_used', not $want_proto" >>"$out/runs/$tag.log"; }
                [ $rc = 0 ] && [ "${failed:-1}" = 0 ] || status=1
                echo "${value:--} ${reqs:-0} ${data:-0} ${failed:-?}" >"$out/runs/$tag.fig"
                echo "  $tag: ${value:-?} per $per, $reqs requests, $data bytes, ${failed:-?} failed, $proto_used, exit $rc"
            done
        done
    done
    median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    fig() { cat "$out"/runs/w$1-$2-*.fig 2>/dev/null | awk '$1 != "-" { print $1 }' | median; }
    ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
    commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$here" status --porcelain -- src include bench 2>/dev/null)" ] && commit="$commit+changes"
    table="$out/results.md"
    {
        echo "### HTTP/2: ktla-serve vs nginx $(nginx -v 2>&1 | sed 's|.*nginx/||') (http2), $where kernel $(uname -r)"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, h2load $(h2load --version 2>&1 | sed -n 's/^h2load nghttp2\/\([^ ]*\).*/\1/p'), $runs runs each (medians), ${duration} s measured after ${warmup} s warm-up$([ $quick = 1 ] && echo ', --quick')"
        echo
        echo "| workload | server CPU per | ktla h2 | nginx h2 | ktla h2 / nginx h2 | target | ktla HTTP/1.1 | ktla h2 / ktla HTTP/1.1 | target |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for w in "${!h2_workloads[@]}"; do
            IFS='|' read -r name hargs per target <<<"${h2_workloads[$w]}"
            k=$(fig $w ktla) n=$(fig $w nginx) h=$(fig $w ktla-h1)
            unit="µs per request"
            [ $per = mib ] && unit="ms per MiB"
            echo "| $name | $unit | ${k:-failed} | ${n:-failed} | $(ratio "$k" "$n") | ≤ $target | ${h:-failed} | $(ratio "$k" "$h") | ≤ 1.1 |"
        done
        echo
        if [ $in_guest = 1 ]; then
            for side in "${sides[@]}"; do
                echo "- $side: kernel TLS contexts opened during its runs (/proc/net/tls_stat): TX ${ktls_tx[$side]}, RX ${ktls_rx[$side]}"
            done
        else
            echo "- this kernel has $([ -r /proc/net/tls_stat ] && echo "kernel TLS" || echo "no kernel TLS: every server encrypts in userspace")."
        fi
        echo "- CPU: utime + stime of the server's processes from /proc (${hz} ticks a second), after h2load's warm-up; each run's h2load output: $out/runs/."
        echo "- $(($(date +%s) - started)) s in all."
    } >"$table"
    cat "$table"
    exit $status
fi

# The workloads: name | ktla-bench arguments | metric | what the metric is | target ratio | short
# name for the chart.
# Targets of issue 15 (on the host; in the guest both servers can use kernel TLS, and the
# download's target is parity).
download_target=0.6
[ $in_guest = 1 ] && download_target=1.0
workloads=(
    "full handshake + 1 KiB GET|-m handshake -c 32 /1k.bin|server_cpu_us_per_handshake|server CPU µs per connection|0.8|full handshake"
    "resumed handshake + 1 KiB GET|-m handshake --resume -c 32 /1k.bin|server_cpu_us_per_handshake|server CPU µs per connection|0.8|resumed handshake"
    "64 KiB GET, keep-alive|-m get -c 16 /64k.bin|server_cpu_us_per_request|server CPU µs per request|0.7|64 KiB GET"
    "100 MiB download|-m download -c 2 /100m.bin|server_cpu_ms_per_mib|server CPU ms per MiB|$download_target|100 MiB download"
    "$idle_conns idle connections|-m idle -c $idle_conns --max-connecting 50 /1k.bin|server_rss_bytes_per_conn|server RSS bytes per connection||idle: memory"
)

# The two sides: A is always ktla-serve; B is nginx, or ktla-serve with the other body path.
sides=(ktla nginx)
label_a=ktla-serve label_b=nginx short_a=ktla short_b=nginx
if [ $bodies = 1 ]; then
    sides=(ktla splice)
    label_a="ktla-serve --file-io sendfile" label_b="ktla-serve --file-io splice"
    short_a=sendfile short_b=splice
    workloads=("${workloads[2]}" "${workloads[3]}")
    workloads[1]=${workloads[1]//|$download_target|/||}
fi
declare -A ktls_tx ktls_rx
for side in "${sides[@]}"; do ktls_tx[$side]=0 ktls_rx[$side]=0; done
status=0
started=$(date +%s)
echo "== bench-compare ($where, $runs runs each, ${duration}s measured + ${warmup}s warm-up; port $port)"
for w in "${!workloads[@]}"; do
    IFS='|' read -r name wargs metric what target short <<<"${workloads[$w]}"
    read -r -a wargs <<<"$wargs"
    path=${wargs[-1]}
    unset 'wargs[-1]'
    time_args=(-d "$duration" -w "$warmup")
    [[ " ${wargs[*]} " == *" idle "* ]] && time_args=(-d 1 --max-time 300)
    for r in $(seq "$runs"); do
        for side in "${sides[@]}"; do
            tag="w$w-$side-$r"
            json="$out/runs/$tag.json"
            if ! start_server $side; then
                echo "  $tag: the server did not start: $(tail -n 1 "$work/$side.log")"
                cp "$work/$side.log" "$out/runs/$tag.log"
                stop_server
                status=1
                continue
            fi
            # (no process substitution: the guest has no /dev/fd)
            read -r tx0 rx0 <<<"$(tls_counters)"
            timeout -k 5 $((${duration%.*} + 330)) taskset -c 1 "$bench" "${wargs[@]}" \
                "${time_args[@]}" --tls 1.3 --groups X25519 --ciphers TLS_AES_128_GCM_SHA256 \
                --server-pid "$server_pid" --label "$tag" --json "$json" -q \
                "https://127.0.0.1:$port$path" >"$out/runs/$tag.log" 2>&1
            rc=$?
            read -r tx1 rx1 <<<"$(tls_counters)"
            ktls_tx[$side]=$((ktls_tx[$side] + tx1 - tx0))
            ktls_rx[$side]=$((ktls_rx[$side] + rx1 - rx0))
            alive=yes
            kill -0 "$server_pid" 2>/dev/null || alive=no
            stop_server
            cp "$work/$side.log" "$out/runs/$tag.server.log"
            value=$(json_get "$json" "$metric")
            errors=$(json_get "$json" errors)
            echo "  $tag: $metric=${value:-?} errors=${errors:-?} exit=$rc server-alive=$alive"
            if [ $alive = no ]; then
                echo "server died during the run: see $tag.server.log" >>"$out/runs/$tag.log"
                status=1
            fi
            [ $rc = 0 ] || status=1
        done
    done
done

# ---- the table: medians over the runs that produced a figure
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# summary W SIDE METRIC: "median|ok-runs|errors|throughput-median"
summary() {
    local w=$1 side=$2 metric=$3 f vals= errs=0 ok=0 thr= v e t
    for f in "$out"/runs/w$w-$side-*.json; do
        [ -s "$f" ] || continue
        v=$(json_get "$f" "$metric")
        e=$(json_get "$f" errors)
        errs=$((errs + ${e:-0}))
        [ -n "$v" ] && [ "$v" != null ] || continue
        ok=$((ok + 1))
        vals+="$v"$'\n'
        if [ "$metric" = server_rss_bytes_per_conn ]; then
            t=$(json_get "$f" established)
        elif [ "$metric" = server_cpu_ms_per_mib ]; then
            t=$(awk -v b="$(json_get "$f" bytes_per_s)" 'BEGIN { printf "%.0f", b / 1048576 }')
        else
            t=$(json_get "$f" requests_per_s)
        fi
        thr+="$t"$'\n'
    done
    printf '%s|%s|%s|%s\n' "$(printf %s "$vals" | grep . | median)" "$ok" "$errs" \
        "$(printf %s "$thr" | grep . | median)"
}
fmt() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { printf (v >= 100 ? "%.0f" : "%.3g"), v }' || echo "failed"; }

commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$here" status --porcelain -- src include bench 2>/dev/null)" ] && commit="$commit+changes"
table="$out/results.md"
chart_dat="$out/chart.dat"
: >"$chart_dat"
{
    if [ $bodies = 1 ]; then
        echo "### $label_a vs $label_b, $where kernel $(uname -r)"
    else
        echo "### ktla-serve vs nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), $where kernel $(uname -r)"
    fi
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $runs runs each (medians)," \
        "${duration} s measured after ${warmup} s warm-up$([ $quick = 1 ] && echo ', --quick')"
    echo
    echo "| workload | figure | $label_a | $label_b | $short_a/$short_b | target | user $short_a · $short_b | kernel $short_a · $short_b | ops/s $short_a · $short_b | ok runs · errors $short_a · $short_b |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for w in "${!workloads[@]}"; do
        IFS='|' read -r name wargs metric what target short <<<"${workloads[$w]}"
        IFS='|' read -r ka kok kerr kthr <<<"$(summary "$w" ktla "$metric")"
        IFS='|' read -r na nok nerr nthr <<<"$(summary "$w" "${sides[1]}" "$metric")"
        ratio=
        [ -n "$ka" ] && [ -n "$na" ] && ratio=$(awk -v a="$ka" -v b="$na" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
        unit="ops/s"
        [ "$metric" = server_cpu_ms_per_mib ] && unit="MiB/s"
        [ "$metric" = server_rss_bytes_per_conn ] && unit="held"
        # The CPU figures split into user and kernel time (medians of each on their own).
        split="– | –"
        if [[ $metric == server_cpu_* ]]; then
            IFS='|' read -r ku _ <<<"$(summary "$w" ktla "${metric/_cpu_/_user_}")"
            IFS='|' read -r nu _ <<<"$(summary "$w" "${sides[1]}" "${metric/_cpu_/_user_}")"
            IFS='|' read -r ks _ <<<"$(summary "$w" ktla "${metric/_cpu_/_sys_}")"
            IFS='|' read -r ns _ <<<"$(summary "$w" "${sides[1]}" "${metric/_cpu_/_sys_}")"
            split="$(fmt "$ku") · $(fmt "$nu") | $(fmt "$ks") · $(fmt "$ns")"
        fi
        echo "| $name | $what | $(fmt "$ka") | $(fmt "$na") | ${ratio:-–} | ${target:+≤ $target} |" \
            "$split | $(fmt "$kthr") · $(fmt "$nthr") $unit | $kok/$runs · $kerr, $nok/$runs · $nerr |"
        printf '"%s" %s %s\n' "$short" "${ratio:-NaN}" "${target:-NaN}" >>"$chart_dat"
    done
    echo
    if [ $in_guest = 1 ]; then
        for side in "${sides[@]}"; do
            echo "- $side: kernel TLS contexts opened during its runs (/proc/net/tls_stat):" \
                "TX ${ktls_tx[$side]}, RX ${ktls_rx[$side]}$([ "${ktls_tx[$side]}" = 0 ] && echo ' — it did NOT use kernel TLS')"
        done
    else
        echo "- this kernel has $([ -r /proc/net/tls_stat ] && echo "kernel TLS" || echo "no kernel TLS: both servers encrypt in userspace")."
    fi
    echo "- ktla-serve: $([ -x "$serve" ] && echo "$serve" || echo "not built")."
    echo "- $(($(date +%s) - started)) s in all; each run's JSON and log: $out/runs/."
} >"$table"

if command -v gnuplot >/dev/null; then
    gnuplot <<EOF 2>"$out/gnuplot.log" || echo "bench-compare.sh: gnuplot failed (see $out/gnuplot.log)" >&2
set terminal pngcairo size 960,540 font "sans,10"
set output "$out/chart.png"
set datafile missing "NaN"
set title "$short_a / $short_b, server CPU or memory per operation (lower is better)\n$where, $(date -u +%Y-%m-%d), commit $commit, medians of $runs runs"
set style fill solid 0.7 border -1
set boxwidth 0.6
set yrange [0:*]
set offsets 0, 0, graph 0.1, 0
set ylabel "$short_a / $short_b"
set xtics nomirror
set grid ytics
set key top left
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 linecolor rgb "#555555"
plot "$chart_dat" using 0:2:xticlabels(1) with boxes linecolor rgb "#3870b0" title "$short_a / $short_b", \
     "" using 0:2:(sprintf("%.2f", \$2)) with labels offset 0,0.8 notitle, \
     "" using 0:3 with points pointtype 7 pointsize 1.5 linecolor rgb "#c03030" title "target"
EOF
fi

cat "$table"
[ -s "$out/chart.png" ] && echo "chart: $out/chart.png"
exit $status
