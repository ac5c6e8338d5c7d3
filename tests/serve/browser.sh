#!/usr/bin/env bash
# ktla-serve in a real browser, for what is about browsers: Debian's Chromium, headless, driven by
# playwright-core (tests/serve/browser.mjs). A page without <meta charset> decoded from the
# server's charset parameter (and --charset changing it); precompressed .br/.gz siblings decoded,
# run and applied, each with its own ETag; an <audio> element's Range requests, the first one
# abandoned once the metadata is in, a seek to the last second, played to the end; a 20 MiB fetch()
# hashed in the page; the protocol of every resource (h2, or HTTP/1.1). Then the server's side: the
# abandoned range logged client-gone, the server still answering, its descriptors back as before.
#
# usage: tests/serve/browser.sh BUILD_DIR kernel|userspace [h2|http/1.1]
#   h2 (the default): the servers as started by default, which offer HTTP/2 first, and every
#   resource must come over h2; http/1.1: the servers run with --http2 off, and every resource
#   must come over HTTP/1.1 (the protocol is what the browser reports as nextHopProtocol).
#   CHROMIUM      the browser (default /usr/bin/chromium); no browser is ever downloaded
# playwright-core (the version pinned in tests/serve/browser/package-lock.json) is installed with
# npm ci once per lock file into ${XDG_CACHE_HOME:-~/.cache}/ktla/browser-node_modules/, so only the
# first run needs the registry; without npm, or with the registry out of reach, the suite fails.
# Prints TAP ("ok N - ..."), then "browser: N passed, N failed, 0 skipped". Exit 1 on failure.
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

expect_proto=${3:-h2}
case $expect_proto in
h2) proto_args=() log_proto=HTTP/2.0 ;;
http/1.1) proto_args=(--http2 off) log_proto=HTTP/1.1 ;;
*) echo "usage: $0 BUILD_DIR kernel|userspace [h2|http/1.1]" >&2; exit 2 ;;
esac
chromium=${CHROMIUM:-/usr/bin/chromium}
started_at=$(date +%s)

# give_up NAME DETAIL: a missing prerequisite is a failure with its reason, never a skip.
give_up() {
    not_ok "$1" "$2"
    echo "browser ($expect_proto): $pass passed, $fail failed, 0 skipped"
    exit 1
}

# ---- prerequisites: node, npm (first run only), the browser, playwright-core
command -v node >/dev/null || give_up "node is installed" "no node on PATH: install Node.js 20+ (nodesource's nodejs)"
lock=$here/browser/package-lock.json
# The lock file names the Node.js versions playwright-core runs on (">=20"); an older node would
# install it with a mere warning and then fail in obscure ways.
why=$(node -e '
    const want = require(process.argv[1]).packages["node_modules/playwright-core"].engines.node;
    const m = /^>=(\d+)/.exec(want || "");
    if (m && Number(process.versions.node.split(".")[0]) < Number(m[1]))
        console.log(`node ${process.versions.node} is older than playwright-core needs (${want}): install a newer Node.js, e.g. the nodejs package from NodeSource`);
' "$lock" 2>&1)
[ -z "$why" ] || give_up "node is recent enough for playwright-core" "$why"
[ -x "$chromium" ] || give_up "Chromium is installed" "$chromium is missing: apt-get install chromium (scripts/deps.sh)"

key=$(sha256sum "$lock" | cut -c1-16)
cache_base=${XDG_CACHE_HOME:-$HOME/.cache}/ktla/browser-node_modules
modules=$cache_base/$key
if [ ! -f "$modules/.complete" ]; then
    command -v npm >/dev/null ||
        give_up "playwright-core installed with npm ci" "no npm on PATH: it is needed once per lock file to fill $modules"
    mkdir -p "$cache_base"
    # Installed beside the final place and renamed into it, so an interrupted install is never
    # taken for a complete one, and two suites installing at once do not mix their files.
    tmp=$(mktemp -d "$cache_base/.install.XXXXXX")
    cp "$here/browser/package.json" "$lock" "$tmp/"
    # --ignore-scripts: nothing may fetch a browser behind our back.
    if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --prefix "$tmp" --ignore-scripts \
        --no-audit --no-fund --fetch-retries 1 --fetch-timeout 120000 >"$work/npm.log" 2>&1; then
        rm -rf "$tmp"
        give_up "playwright-core installed with npm ci (registry $(npm config get registry 2>/dev/null))" \
            "$(grep -m 8 "npm error" "$work/npm.log" || tail -n 8 "$work/npm.log")"
    fi
    touch "$tmp/.complete"
    [ -d "$modules" ] && [ ! -f "$modules/.complete" ] && rm -rf "$modules"
    mv -T "$tmp" "$modules" 2>/dev/null || rm -rf "$tmp"    # another run got there first
fi
echo "# playwright-core from $modules"

# ---- the served tree
root=$work/www
mkdir -p "$root"
# Two-, three- and four-byte UTF-8 sequences, and bytes that windows-1252 maps above Latin-1.
text='Grüße — naïve café, 日本語, Ελληνικά, “quotes” 🙂'
printf '%s' "$text" >"$root/utf8.txt"
printf '<!doctype html><title>charset</title><p id=t>%s</p>\n' "$text" >"$root/utf8.html"
echo '<!doctype html><title>blank</title>' >"$root/index.html"
# A script and a style sheet big enough to compress, each with gzip and brotli siblings. Brotli
# comes from node's zlib: node is here anyway, the brotli tool may not be.
{
    printf 'window.appText = "%s";\n' "$text"
    seq 2000 | awk '{ printf "window.filler%d = \"line %d of a script worth compressing\";\n", $1, $1 }'
    echo 'window.appLoaded = true;'
} >"$root/app.js"
{
    echo '#box { color: rgb(1, 2, 3); }'
    seq 1000 | awk '{ printf ".c%d { margin: %dpx; }\n", $1, $1 }'
} >"$root/style.css"
gzip -kn9 "$root/app.js" "$root/style.css"
node -e 'const z = require("zlib"), fs = require("fs");
    for (const f of process.argv.slice(1)) fs.writeFileSync(f + ".br", z.brotliCompressSync(fs.readFileSync(f)));' \
    "$root/app.js" "$root/style.css"
printf '<!doctype html><title>precompressed</title><link rel=stylesheet href=style.css>%s\n' \
    '<div id=box>box</div><script src=app.js></script>' >"$root/precompressed.html"
# 120 s of a 441 Hz tone, 16-bit stereo at 44.1 kHz: 21 MB, several times what the browser and
# both socket buffers hold, so the transfer the browser abandons is still being sent when it does.
wav_seconds=120
python3 - "$root/tone.wav" $wav_seconds <<'EOF'
import array, math, sys, wave
rate, seconds = 44100, int(sys.argv[2])
period = array.array("h", (int(8000 * math.sin(2 * math.pi * i / 100)) for i in range(100) for _ in "LR"))
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(2)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes((period * (rate * seconds // 100)).tobytes())
EOF
echo '<!doctype html><title>media</title><audio id=a preload=metadata src=tone.wav></audio>' >"$root/media.html"
head -c $((20 << 20)) /dev/urandom >"$root/big.bin"
wav_size=$(stat -c %s "$root/tone.wav")

# ---- the servers: the default charset, and --charset iso-8859-1
policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

# start_server NAME ARGS...: starts ktla-serve, waits for its URL; sets $url and $spid.
start_server() {
    local name=$1; shift
    "$build/ktla-serve" --listen 127.0.0.1:0 --ktls $policy "${proto_args[@]}" "$@" "$root" \
        >"$work/$name.out" 2>"$work/$name.err" &
    spid=$!
    pids+=("$spid")
    if ! wait_for 120 grep -q '^  workers:' "$work/$name.out"; then
        give_up "the server ($name) starts" "$(cat "$work/$name.out" "$work/$name.err")"
    fi
    url=$(grep -o 'https://[^ ]*' "$work/$name.out" | head -n 1)
}
start_server main --workers 2 --access-log "$work/access.log"
main_pid=$spid main_url=$url
start_server latin1 --workers 1 --charset iso-8859-1
latin1_pid=$spid latin1_url=$url

fds() { ls "/proc/$1/fd" | wc -l; }
tls_stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
tx0=$(tls_stat TlsTxSw) rx0=$(tls_stat TlsRxSw)
main_fds=$(fds "$main_pid") latin1_fds=$(fds "$latin1_pid")

# ---- the browser (browser.mjs), its lines replayed here so that tap.sh numbers and counts them
browser_start=$(date +%s)
# TMPDIR: the browser's throwaway profile goes into $work, removed whatever becomes of the browser.
mkdir -p "$work/tmp"
TMPDIR=$work/tmp KTLA_BROWSER_MODULES=$modules CHROMIUM=$chromium ROOT=$root \
    URL=$main_url URL_LATIN1=$latin1_url BIG_SHA256=$(sha256sum "$root/big.bin" | cut -d' ' -f1) WAV_SECONDS=$wav_seconds \
    EXPECT_PROTO=$expect_proto timeout 240 node "$here/browser.mjs" >"$work/node.out" 2>"$work/node.err" &
# In the background so that the trap reaches it: timeout passes the TERM on, and playwright-core
# closes the browser on it.
node_pid=$!
pids+=("$node_pid")
wait "$node_pid"
node_rc=$?
while IFS= read -r line; do
    case $line in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" ;;
    "#"*) echo "$line" ;;
    *) echo "# $line" ;;
    esac
done <"$work/node.out"
check "the browser script ran to its end (exit $node_rc, $(($(date +%s) - browser_start)) s)" \
    '[ $node_rc = 0 ] && [ "$(tail -n 1 "$work/node.out")" = "# browser.mjs: done" ]' \
    "$(tail -n 12 "$work/node.err")"

# ---- the server's side, with the browser gone
# The first range (bytes=0-) was dropped by the browser once it had the metadata, long before its
# 21 MB could be sent.
wav_lines() { grep " \"GET /tone.wav $log_proto\" " "$work/access.log"; }
cut_short() { wav_lines | awk -v size="$wav_size" '$9 == 206 && $10 < size && $NF == "client-gone"' | wc -l; }
some_cut() { [ "$(cut_short)" -ge 1 ]; }
wait_for 10 some_cut
gone=$(cut_short)
check "access log: the range the browser abandoned ended client-gone, part sent ($gone such line)" \
    '[ "$gone" -ge 1 ]' "$(wav_lines)"
wav_lines | awk '{ print "# access log: tone.wav", $9, $10 " bytes", $NF }'
if [ "$expect" = kernel ]; then
    # With --ktls require every connection the browser made had its records carried by the kernel,
    # both ways: each logged in kernel mode, and counted in tls_stat.
    modes=$(awk '{ print $(NF - 3) }' "$work/access.log" | sort -u | tr '\n' ' ')
    tx=$(($(tls_stat TlsTxSw) - tx0)) rx=$(($(tls_stat TlsRxSw) - rx0))
    check "kernel TLS carried the browser's connections: every response logged '$modes', tls_stat +$tx TX +$rx RX" \
        '[ "$modes" = "kernel " ] && [ $tx -ge 1 ] && [ $rx -ge 1 ]' "$(head -n 5 "$work/access.log")"
fi
others=$(grep -vE ' (ok|client-gone)$' "$work/access.log")
check "access log: every response ended ok or client-gone" '[ -z "$others" ]' "$others"
got=$(curl -sk --max-time 60 "${main_url}tone.wav" | sha256sum | cut -d' ' -f1)
check "the server still answers a whole GET of tone.wav after the cancelled transfers" \
    '[ "$got" = "$(sha256sum <"$root/tone.wav" | cut -d" " -f1)" ]'
back() { [ "$(fds "$main_pid")" = "$main_fds" ] && [ "$(fds "$latin1_pid")" = "$latin1_fds" ]; }
wait_for 20 back
check "descriptors back to before the browser ($main_fds and $latin1_fds: $(fds "$main_pid") and $(fds "$latin1_pid"))" back \
    "$(ls -l "/proc/$main_pid/fd" "/proc/$latin1_pid/fd")"

kill -TERM "$main_pid" "$latin1_pid"
wait "$main_pid"; rc=$?
wait "$latin1_pid"; rc2=$?
check "both servers exit 0 on SIGTERM ($rc, $rc2)" '[ $rc = 0 ] && [ $rc2 = 0 ]' \
    "$(tail -n 5 "$work/main.err" "$work/latin1.err")"
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/main.err" "$work/latin1.err"; then
    not_ok "no sanitizer reports" "$(grep -h -E -A5 'ERROR:|runtime error:' "$work/main.err" "$work/latin1.err")"
else
    ok "no sanitizer reports"
fi
echo "# whole suite: $(($(date +%s) - started_at)) s"

echo "browser ($expect_proto): $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
