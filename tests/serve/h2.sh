#!/usr/bin/env bash
# ktla-serve over HTTP/2, with curl --http2 (nghttp2 underneath) and openssl s_client: ALPN; the
# same answers as HTTP/1.1 from the one request-answering stage (files of every size through
# DATA frames, ranges, conditional requests, index.html, redirects, errors, HEAD, 405, path
# safety, precompressed siblings, --header, the access log); many streams on one connection, a
# small file not held behind a large one; the drain (GOAWAY, the stream in flight finishes).
# In kernel mode (the guest, --ktls require) the connections' records are the kernel's:
# /proc/net/tls_stat counts a TX and an RX context for each, and the log says kernel.
#
# usage: tests/serve/h2.sh BUILD_DIR kernel|userspace
# Prints TAP ("ok N - ..."), then "h2: N passed, N failed, 0 skipped". Exit 1 on failure.
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
mkdir -p "$root/sub" "$root/outside"
echo '<h1>ktla-serve</h1>' >"$root/index.html"
echo '<p>sub</p>' >"$root/sub/index.html"
sizes=(0 1 16375 16384 16385 1048577 10485760)
for s in "${sizes[@]}"; do head -c "$s" /dev/urandom >"$root/f$s"; done
echo 'secret' >"$root/.env"
printf 'body { color: red }\n' >"$root/site.css"
gzip -9 -c "$root/site.css" >"$root/site.css.gz"
printf 'not really brotli, but the bytes the server must send\n' >"$root/site.css.br"

policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

"$build/ktla-serve" --listen 127.0.0.1:0 --workers 2 --ktls $policy --access-log "$work/access.log" \
    --header 'X-Frame-Options: DENY' "$root" >"$work/out" 2>"$work/err" &
spid=$!
pids+=("$spid")
if ! wait_for 120 grep -q '^  workers:' "$work/out"; then
    not_ok "the server starts" "$(cat "$work/out" "$work/err")"
    echo "h2: $pass passed, $fail failed, 0 skipped"
    exit 1
fi
url=$(grep -o 'https://[^ ]*' "$work/out" | head -n 1)
port=${url##*:}; port=${port%/}
c=(curl -sk --no-progress-meter --max-time 300 --http2)
sha() { sha256sum "$1" | cut -d' ' -f1; }
tls_stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
# hdr ARGS...: the response head, CR removed (the body to /dev/null unless ARGS say -o).
hdr() {
    case " $* " in
    *" -o "*) "${c[@]}" -D - "$@" | tr -d '\r' ;;
    *) "${c[@]}" -D - -o /dev/null "$@" | tr -d '\r' ;;
    esac
}

check "the banner names the protocols" \
    'grep -q "^  protocols:   HTTP/2 (ALPN h2, preferred) and HTTP/1.1$" "$work/out"' "$(cat "$work/out")"

# ---- ALPN: h2 first, http/1.1 still, and a client without ALPN gets HTTP/1.1
alpn() { openssl s_client -connect "127.0.0.1:$port" ${1:+-alpn "$1"} </dev/null 2>/dev/null | grep -a '^ALPN protocol\|^No ALPN'; }
a1=$(alpn h2,http/1.1) a2=$(alpn http/1.1) a3=$(alpn)
check "ALPN: h2 chosen from 'h2,http/1.1', http/1.1 from 'http/1.1', none without ALPN" \
    '[ "$a1" = "ALPN protocol: h2" ] && [ "$a2" = "ALPN protocol: http/1.1" ] && [ "$a3" = "No ALPN negotiated" ]' \
    "$a1 / $a2 / $a3"
v=$(curl -sk --max-time 30 -o /dev/null -w '%{http_version}' "${url}f1")
check "curl's default is HTTP/2 here ($v)" '[ "$v" = 2 ]'
v=$(curl -sk --max-time 30 --http1.1 -o /dev/null -w '%{http_version} %{http_code}' "${url}f1")
check "HTTP/1.1 is still served ($v)" '[ "$v" = "1.1 200" ]'

# ---- every size through DATA frames, both TLS versions, one connection each; kernel counters
for tv in 1.3 1.2; do
    tx0=$(tls_stat TlsTxSw) rx0=$(tls_stat TlsRxSw)
    args=()
    for s in "${sizes[@]}"; do args+=(-o "$work/g$tv-$s" "${url}f$s"); done
    out=$("${c[@]}" --tlsv$tv --tls-max $tv -w '%{http_code} %{http_version} %{num_connects}\n' "${args[@]}")
    good=0 conns=0
    for s in "${sizes[@]}"; do [ "$(sha "$work/g$tv-$s")" = "$(sha "$root/f$s")" ] && good=$((good + 1)); done
    while read -r code ver nc; do
        [ "$code $ver" = "200 2" ] || good=-100
        conns=$((conns + nc))
    done <<<"$out"
    check "TLS $tv: ${#sizes[@]} files (0 B to 10 MiB) over h2 on $conns connection, $good with the right SHA-256" \
        '[ $good = ${#sizes[@]} ] && [ $conns = 1 ]' "$out"
    if [ "$expect" = kernel ]; then
        tx=$(($(tls_stat TlsTxSw) - tx0)) rx=$(($(tls_stat TlsRxSw) - rx0))
        check "TLS $tv: the kernel carried that connection: tls_stat +$tx TX +$rx RX (want 1 and 1)" \
            '[ $tx = 1 ] && [ $rx = 1 ]'
    fi
done
mode=$(awk '$8 == "HTTP/2.0\"" { print $(NF - 3) }' "$work/access.log" | sort -u | tr '\n' ' ')
check "the access log says HTTP/2.0 and the record layer's mode ($mode)" "[ \"\$mode\" = \"$expect \" ]" \
    "$(head -n 3 "$work/access.log")"

# ---- the same answers as HTTP/1.1 (files_answer), in HTTP/2's lower-case fields
h=$(hdr -H 'Range: bytes=100-16484' -o "$work/r1" "${url}f16385")
tail -c +101 "$root/f16385" >"$work/want"
check "a range: 206, content-range, the bytes" \
    'grep -q "^HTTP/2 206" <<<"$h" && grep -q "^content-range: bytes 100-16384/16385$" <<<"$h" && cmp -s "$work/r1" "$work/want"' "$h"
h=$(hdr -H 'Range: bytes=99999-' "${url}f16385")
check "an unsatisfiable range: 416, content-range */16385" \
    'grep -q "^HTTP/2 416" <<<"$h" && grep -q "^content-range: bytes \*/16385$" <<<"$h"' "$h"
etag=$(hdr "${url}f1" | sed -n 's/^etag: //p')
h=$(hdr -H "If-None-Match: $etag" "${url}f1")
check "If-None-Match with the ETag: 304 ($etag)" '[ -n "$etag" ] && grep -q "^HTTP/2 304" <<<"$h"' "$h"
lm=$(hdr "${url}f1" | sed -n 's/^last-modified: //p')
h=$(hdr -H "If-Modified-Since: $lm" "${url}f1")
check "If-Modified-Since: 304" '[ -n "$lm" ] && grep -q "^HTTP/2 304" <<<"$h"' "$h"
h=$(hdr -H 'If-Range: "other"' -H 'Range: bytes=0-0' "${url}f1")
check "If-Range with another validator: the whole file, 200" 'grep -q "^HTTP/2 200" <<<"$h"' "$h"
got=$("${c[@]}" "${url}" "${url}sub/")
check "index.html for / and /sub/" '[ "$got" = "$(cat "$root/index.html" "$root/sub/index.html")" ]' "$got"
h=$(hdr "${url}sub")
check "a directory without its slash: 301 to it" 'grep -q "^HTTP/2 301" <<<"$h" && grep -q "^location: /sub/$" <<<"$h"' "$h"
h=$(hdr "${url}nope")
check "404, text/plain with a length" \
    'grep -q "^HTTP/2 404" <<<"$h" && grep -q "^content-type: text/plain; charset=utf-8$" <<<"$h" && grep -q "^content-length: 14$" <<<"$h"' "$h"
codes=$("${c[@]}" --path-as-is -w '%{http_code} ' -o /dev/null "${url}../../etc/passwd" -o /dev/null \
    "${url}sub/../../x" -o /dev/null "${url}.env" -o /dev/null "${url}%2e%2e/x")
check "path safety: .. and dot-files refused ($codes)" '[ "$(wc -w <<<"$codes")" = 4 ] && ! grep -q 200 <<<"$codes"'
h=$("${c[@]}" -I "${url}f1048577" | tr -d '\r')
check "HEAD: the length, no body" 'grep -q "^HTTP/2 200" <<<"$h" && grep -q "^content-length: 1048577$" <<<"$h"' "$h"
n=$("${c[@]}" -X HEAD -o "$work/headbody" -w '%{size_download}' "${url}f1048577")
check "HEAD sends no DATA ($n bytes)" '[ "$n" = 0 ]'
h=$(hdr -X DELETE "${url}f1")
check "DELETE: 405 with allow" 'grep -q "^HTTP/2 405" <<<"$h" && grep -q "^allow: GET, HEAD$" <<<"$h"' "$h"
h=$(hdr -X BREW "${url}f1")
check "an unknown method: 501" 'grep -q "^HTTP/2 501" <<<"$h"' "$h"
h=$(hdr -X GET -d 'some body' "${url}f1")
check "a request with a body: 413" 'grep -q "^HTTP/2 413" <<<"$h"' "$h"
h=$(hdr -H 'Accept-Encoding: gzip, br' -o "$work/pre" "${url}site.css")
check "precompressed: br sibling, vary, its bytes" \
    'grep -q "^content-encoding: br$" <<<"$h" && grep -q "^vary: Accept-Encoding$" <<<"$h" && cmp -s "$work/pre" "$root/site.css.br"' "$h"
h=$(hdr -H 'Accept-Encoding: gzip' -o "$work/pre" "${url}site.css")
check "precompressed: gzip sibling" 'grep -q "^content-encoding: gzip$" <<<"$h" && cmp -s "$work/pre" "$root/site.css.gz"' "$h"
h=$(hdr "${url}f1")
check "--header on h2 responses, in lower case" 'grep -q "^x-frame-options: DENY$" <<<"$h" && grep -q "^server: ktla-serve$" <<<"$h"' "$h"
h=$(hdr "${url}$(head -c 9000 /dev/zero | tr '\0' a)")
check "a path over 8 KiB: 414" 'grep -q "^HTTP/2 414" <<<"$h"' "$h"
h=$(hdr -H "Range: $(head -c 1100 /dev/zero | tr '\0' 1)" "${url}f1")
check "a field value over 1 KiB: 431" 'grep -q "^HTTP/2 431" <<<"$h"' "$h"

# ---- many streams on one connection: all answered; a small file is not held behind a large one
args=()
for i in $(seq 40); do args+=(-o "$work/m$i" "${url}f16385"); done
out=$("${c[@]}" -Z --parallel-max 40 -w '%{http_code} %{num_connects}\n' "${args[@]}")
good=0
for i in $(seq 40); do [ "$(sha "$work/m$i")" = "$(sha "$root/f16385")" ] && good=$((good + 1)); done
conns=$(awk '{ n += $2 } END { print n }' <<<"$out")
check "40 streams at once: $good whole, on $conns connection" '[ $good = 40 ] && [ "$conns" = 1 ]' "$out"
out=$("${c[@]}" -Z --limit-rate 20M -o /dev/null -o /dev/null -w '%{url_effective} %{time_total}\n' \
    "${url}f10485760" "${url}f1")
big=$(awk '/f10485760/ { print $2 }' <<<"$out") small=$(awk '/f1 / { print $2 }' <<<"$out")
check "a 1-byte file beside a 10 MiB one on the same connection: done first ($small s vs $big s)" \
    'awk -v s="$small" -v b="$big" "BEGIN { exit !(s != \"\" && b != \"\" && s < b) }"' "$out"

# ---- the drain: GOAWAY, the stream in flight finishes, the server exits 0
"${c[@]}" --limit-rate 4M -o "$work/drain" "${url}f10485760" 2>"$work/drain.err" &
cpid=$!
wait_for 30 test -s "$work/drain"
kill -TERM "$spid"
wait "$cpid"; crc=$?
wait "$spid"; src=$?
check "SIGTERM during an h2 download: the stream finishes whole (curl $crc), the server exits 0 ($src)" \
    '[ $crc = 0 ] && [ $src = 0 ] && [ "$(sha "$work/drain")" = "$(sha "$root/f10485760")" ]' \
    "$(cat "$work/drain.err"; tail -n 5 "$work/err")"
others=$(grep 'HTTP/2.0' "$work/access.log" | grep -vE ' (ok|client-gone)$')
check "every h2 response logged ended ok" '[ -z "$others" ]' "$others"
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/err"; then
    not_ok "no sanitizer reports" "$(grep -E -A5 'ERROR:|runtime error:' "$work/err")"
else
    ok "no sanitizer reports"
fi
echo "h2: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
