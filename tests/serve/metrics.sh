#!/usr/bin/env bash
# ktla-serve --metrics: the Prometheus endpoint, scraped before and after a known set of
# requests; every figure must move by exactly what was done, the text must parse
# (tests/serve/prom.py, and promtool where it is installed), and the histogram must hold
# together (cumulative, +Inf == _count).
#
# usage: tests/serve/metrics.sh BUILD_DIR kernel|userspace
# Prints TAP ("ok N - ..."), then "metrics: N passed, N failed, 0 skipped". Exit 1 on failure.
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

. "$here/../tap.sh"

root=$work/www
mkdir -p "$root"
echo '<h1>metrics</h1>' >"$root/index.html"
head -c 100000 /dev/urandom >"$root/f100k"
policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
prom() { python3 "$here/prom.py" "$@"; }

"$build/ktla-serve" --listen 127.0.0.1:0 --workers 2 --ktls $policy --metrics 127.0.0.1:0 \
    --access-log "$work/access.log" "$root" >"$work/out" 2>"$work/err" &
spid=$!
pids+=("$spid")
if ! wait_for 120 grep -q '^  metrics:' "$work/out"; then
    not_ok "the server starts with --metrics" "$(cat "$work/out" "$work/err")"
    echo "metrics: $pass passed, $fail failed, 0 skipped"
    exit 1
fi
url=$(grep -o 'https://[^ ]*' "$work/out" | head -n 1)
port=${url##*:}; port=${port%/}
murl=$(grep -o 'http://[^ ]*/metrics' "$work/out")
check "the banner names the metrics URL and says to keep it private" \
    'grep -q "^  metrics:     http://127.0.0.1:[0-9]*/metrics (.*keep it private)" "$work/out"' \
    "$(cat "$work/out")"

c=(curl -sk --max-time 60)
scrape() { curl -s --max-time 10 -o "$1" "$murl"; }
# v FILE NAME [K=V]...: a figure summed over the workers.
v() { prom sum "$@"; }

# ---- the endpoint itself
hdrs=$(curl -s --max-time 10 -D - -o "$work/s0" "$murl" | tr -d '\r')
check "GET /metrics: 200, Content-Type text/plain; version=0.0.4" \
    'grep -q "^HTTP/1.1 200" <<<"$hdrs" && grep -qi "^Content-Type: text/plain; version=0.0.4" <<<"$hdrs"' \
    "$hdrs"
errs=$(prom check "$work/s0")
check "an idle server's scrape parses (HELP/TYPE, counters *_total, histogram)" '[ -z "$errs" ]' "$errs"
# The checker is not easily pleased: a histogram whose +Inf bucket disagrees with _count fails.
printf '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n# HELP c x\n# TYPE c counter\nc 1\n' >"$work/broken"
errs=$(prom check "$work/broken")
check "prom.py refuses a broken scrape (not cumulative, +Inf != _count, counter without _total)" \
    'grep -q "not cumulative" <<<"$errs" && grep -q "!= _count" <<<"$errs" && grep -q "_total" <<<"$errs"' "$errs"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "${murl%/metrics}/")
code2=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "${murl}x")
check "other paths are 404 (/: $code, /metricsx: $code2)" '[ "$code $code2" = "404 404" ]'
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X POST "$murl")
check "POST /metrics is 405 ($code)" '[ "$code" = 405 ]'
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$murl?name[]=x")
check "GET /metrics with a query string is 200 ($code)" '[ "$code" = 200 ]'
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "X-Big: $(head -c 5000 /dev/zero | tr '\0' a)" "$murl")
check "a request head over 4 KiB is 431 ($code)" '[ "$code" = 431 ]'
# A client that sends nothing holds a slot for 5 s at most; others are answered meanwhile.
mport=${murl#http://127.0.0.1:}; mport=${mport%/metrics}
exec 3<>"/dev/tcp/127.0.0.1/$mport"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$murl")
check "a silent client does not hold up a scrape ($code)" '[ "$code" = 200 ]'
start=$(date +%s)
timeout 15 cat <&3 >/dev/null
took=$(($(date +%s) - start))
exec 3<&-
check "a silent client is closed after the time limit ($took s)" '[ $took -le 8 ]'

# ---- a known set of requests between two scrapes
wait_for 30 bash -c "curl -s -o '$work/s1' '$murl' && [ \"\$(python3 '$here/prom.py' sum '$work/s1' ktla_serve_connections_open)\" = 0 ]"
scrape "$work/s1"
lines_before=$(wc -l <"$work/access.log")

for i in 1 2 3; do "${c[@]}" -o /dev/null "${url}index.html"; done    # 3 connections, 3 x 200
"${c[@]}" -o /dev/null "${url}nope"                                    # 1 connection, 404
"${c[@]}" -o /dev/null -o /dev/null "${url}f100k" "${url}index.html"    # 1 connection, 2 x 200
"${c[@]}" -o /dev/null -r 0-99 "${url}f100k"                           # 1 connection, 206
"${c[@]}" -o /dev/null -I "${url}index.html"                           # 1 connection, HEAD 200
# A TLS 1.2 session, then resumed from its ticket: 2 connections, one full, one resumed.
openssl s_client -tls1_2 -connect "127.0.0.1:$port" -sess_out "$work/sess" </dev/null >/dev/null 2>&1
reused=$(openssl s_client -tls1_2 -connect "127.0.0.1:$port" -sess_in "$work/sess" </dev/null 2>/dev/null | grep -c '^Reused')
# Two handshakes that fail: plain HTTP to the TLS port, and a record that is no ClientHello.
python3 - "$port" <<'EOF'
import socket, sys
for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(data)
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
EOF
conns=11 established=9 responses=8

# The last response is logged (and counted) when its last byte is handed over, the last close
# when the worker sees the client's: poll until the figures have arrived, then compare exactly.
settled() {
    scrape "$work/s2" &&
        [ "$(v "$work/s2" ktla_serve_responses_total)" -ge $(($(v "$work/s1" ktla_serve_responses_total) + responses)) ] &&
        [ "$(v "$work/s2" ktla_serve_connections_open)" = 0 ] &&
        [ "$(v "$work/s2" ktla_serve_connections_closed_total)" -ge $(($(v "$work/s1" ktla_serve_connections_closed_total) + established)) ] &&
        [ "$(wc -l <"$work/access.log")" -ge $((lines_before + responses)) ]
}
wait_for 60 settled
errs=$(prom check "$work/s2")
check "the scrape after traffic parses and its histograms hold together" '[ -z "$errs" ]' "$errs"
if command -v promtool >/dev/null; then
    out=$(promtool check metrics <"$work/s2" 2>&1)
    check "promtool check metrics accepts it" '[ $? = 0 ]' "$out"
fi

# d NAME [K=V]...: how much a figure moved between the two scrapes.
d() { echo $(($(v "$work/s2" "$@") - $(v "$work/s1" "$@"))); }
check "connections accepted: +$conns ($(d ktla_serve_connections_accepted_total))" \
    '[ "$(d ktla_serve_connections_accepted_total)" = $conns ]'
check "connections closed: +$established ($(d ktla_serve_connections_closed_total)), none open" \
    '[ "$(d ktla_serve_connections_closed_total)" = $established ] && [ "$(v "$work/s2" ktla_serve_connections_open)" = 0 ]'
check "resumption worked in the client ($reused)" '[ "$reused" = 1 ]'
check "handshakes: full +$((established - 1)) ($(d ktla_serve_handshakes_total kind=full)), resumed +1 ($(d ktla_serve_handshakes_total kind=resumed))" \
    '[ "$(d ktla_serve_handshakes_total kind=full)" = $((established - 1)) ] && [ "$(d ktla_serve_handshakes_total kind=resumed)" = 1 ]'
check "handshake failures: KTLA_ENOTTLS +1, KTLA_ETLS +1, nothing else ($(d ktla_serve_handshake_failures_total))" \
    '[ "$(d ktla_serve_handshake_failures_total reason=KTLA_ENOTTLS)" = 1 ] &&
     [ "$(d ktla_serve_handshake_failures_total reason=KTLA_ETLS)" = 1 ] &&
     [ "$(d ktla_serve_handshake_failures_total)" = 2 ]'
if [ "$expect" = kernel ]; then
    check "record layer: kernel +$established, no fallback" \
        '[ "$(d ktla_serve_connections_tls_total mode=kernel)" = $established ] && [ "$(d ktla_serve_ktls_fallbacks_total)" = 0 ]'
else
    check "record layer: userspace +$established ($(d ktla_serve_connections_tls_total mode=userspace)), kernel +0" \
        '[ "$(d ktla_serve_connections_tls_total mode=userspace)" = $established ] && [ "$(d ktla_serve_connections_tls_total mode=kernel)" = 0 ]'
    reason=$(grep -o 'because .*(\(KTLA_[A-Z_]*\))' "$work/out" | grep -o 'KTLA_[A-Z_]*' | tail -n 1)
    check "fallbacks: +$established each way, with the banner's reason $reason" \
        '[ "$(d ktla_serve_ktls_fallbacks_total direction=tx reason=$reason)" = $established ] &&
         [ "$(d ktla_serve_ktls_fallbacks_total direction=rx reason=$reason)" = $established ]'
fi
check "responses: 200 +6, 206 +1, 404 +1, HEAD's 200 counted: $(d ktla_serve_responses_total code=200)/$(d ktla_serve_responses_total code=206)/$(d ktla_serve_responses_total code=404)" \
    '[ "$(d ktla_serve_responses_total code=200)" = 6 ] && [ "$(d ktla_serve_responses_total code=206)" = 1 ] &&
     [ "$(d ktla_serve_responses_total code=404)" = 1 ] && [ "$(d ktla_serve_responses_total)" = $responses ]'
# The access log's fourth-from-last column is every byte each response sent.
logged=$(tail -n +$((lines_before + 1)) "$work/access.log" | awk '{ s += $(NF - 2) } END { print s + 0 }')
check "bytes sent: +$(d ktla_serve_sent_bytes_total), what the access log says ($logged)" \
    '[ "$(d ktla_serve_sent_bytes_total)" = "$logged" ] && [ "$logged" -gt 100000 ]'
check "request duration histogram: _count +$responses, +Inf bucket +$responses" \
    '[ "$(d ktla_serve_request_duration_seconds_count)" = $responses ] &&
     [ "$(d ktla_serve_request_duration_seconds_bucket le=+Inf)" = $responses ]'
sum1=$(v "$work/s1" ktla_serve_request_duration_seconds_sum)
sum2=$(v "$work/s2" ktla_serve_request_duration_seconds_sum)
check "request duration _sum grew, by less than 60 s ($sum1 -> $sum2)" \
    'python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(not (0 < b - a < 60))" "$sum1" "$sum2"'
workers=$(grep -o 'ktla_serve_connections_accepted_total{worker="[0-9]*"}' "$work/s2" | sort -u | wc -l)
check "per-worker figures: one series per worker (2: $workers), each worker label on every sample" \
    '[ "$workers" = 2 ] && ! grep -v "^#" "$work/s2" | grep -qv "worker=\"[01]\""'

# ---- options
"$build/ktla-serve" --metrics 127.0.0.1:99999 "$root" >/dev/null 2>"$work/bad.err"; rc=$?
check "--metrics with a bad port: exit 2 with the reason ($rc)" \
    '[ $rc = 2 ] && grep -q -- "--metrics 127.0.0.1:99999: the port" "$work/bad.err"' "$(cat "$work/bad.err")"
"$build/ktla-serve" --help >"$work/help"
check "--help describes --metrics" 'grep -q -- "--metrics HOST:PORT" "$work/help"'

kill -TERM "$spid"
wait "$spid"; rc=$?
check "the server exits 0 on SIGTERM ($rc)" '[ $rc = 0 ]' "$(tail -n 5 "$work/err")"
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/err"; then
    not_ok "no sanitizer reports" "$(grep -E -A5 'ERROR:|runtime error:' "$work/err")"
else
    ok "no sanitizer reports"
fi

echo "metrics: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
