#!/usr/bin/env bash
# ktla-serve with several --listen addresses, and with --config FILE / --check-config.
#
# usage: tests/serve/config.sh BUILD_DIR kernel|userspace
# Prints TAP ("ok N - ..."), then "config: N passed, N failed, 0 skipped". Exit 1 on failure.
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
echo '<h1>config</h1>' >"$root/index.html"
echo 'hidden' >"$root/.env"
policy=auto
[ "$expect" = kernel ] && policy=require
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
serve=$build/ktla-serve
c=(curl -sk --max-time 30 --http1.1) # its checks read HTTP/1.1 heads

# started NAME: waits for the banner of the server writing $work/NAME.out.
started() {
    wait_for 120 grep -q '^  workers:' "$work/$1.out" ||
        { sed 's/^/#   /' "$work/$1.out" "$work/$1.err"; return 1; }
}

# ---- several --listen addresses (issue 12, item 8)
"$serve" --listen 127.0.0.1:0 --listen '[::1]:0' --listen 127.0.0.2:0 --workers 2 \
    --ktls $policy "$root" >"$work/multi.out" 2>"$work/multi.err" &
mpid=$!
pids+=("$mpid")
started multi
mapfile -t urls < <(grep -o 'https://[^ ]*/' "$work/multi.out" | sort -u)
check "the banner lists the three addresses (${#urls[@]})" \
    '[ ${#urls[@]} -ge 3 ] && [ "$(grep -c "^  and:         https://" "$work/multi.out")" = 2 ]' \
    "$(cat "$work/multi.out")"
codes=""
for u in "${urls[@]}"; do
    for i in 1 2 3 4; do codes="$codes $("${c[@]}" -o /dev/null -w '%{http_code}' "$u")"; done
done
check "every address answers, 4 requests each (${codes# })" \
    '[ "$(tr " " "\n" <<<"$codes" | grep -c 200)" = $((4 * ${#urls[@]})) ]'
# Drain: every listening socket closes at once, while a slow download finishes.
head -c $((4 << 20)) /dev/urandom >"$root/big.bin"
"${c[@]}" --limit-rate 1M -o "$work/drain.bin" "${urls[0]}big.bin" &
cp=$!
wait_for 60 test -s "$work/drain.bin"
kill -TERM "$mpid"
wait_for 10 grep -q SIGTERM "$work/multi.err"
refused=""
for u in "${urls[@]}"; do
    refused="$refused $(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' "$u")"
done
wait "$cp"; crc=$?
wait "$mpid"; src=$?
check "SIGTERM: all three listeners closed at once (${refused# }), the download finished, exit 0" \
    '[ "$(tr " " "\n" <<<"$refused" | grep -c "^000$")" = ${#urls[@]} ] && [ $crc = 0 ] &&
     cmp -s "$work/drain.bin" "$root/big.bin" && [ $src = 0 ]' "$(tail -n 5 "$work/multi.err")"
"$serve" --listen 127.0.0.1:8443 --listen 127.0.0.1:8443 "$root" >/dev/null 2>"$work/dup.err"; rc=$?
check "the same --listen address twice: exit 2 ($rc)" \
    '[ $rc = 2 ] && grep -q "the same address" "$work/dup.err"' "$(cat "$work/dup.err")"
args=(); for i in $(seq 17); do args+=(--listen "127.0.0.$i:0"); done
"$serve" "${args[@]}" "$root" >/dev/null 2>"$work/many.err"; rc=$?
check "a 17th --listen: exit 2 ($rc)" '[ $rc = 2 ] && grep -q "at most 16" "$work/many.err"'

# ---- --config (issue 12, item 17)
for cn in a b; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=$cn.test" -addext "subjectAltName=DNS:$cn.test" \
        -keyout "$work/$cn.key" -out "$work/$cn.pem" 2>/dev/null
done
cat >"$work/site.conf" <<EOF
# ktla-serve, as the options say
dir = $root
listen = 127.0.0.1:0
listen = [::1]:0
workers = 1
ktls = $policy
cert = $work/a.pem
key = $work/a.key
cert = $work/b.pem
key = $work/b.key
header = X-From: the-file
header = Cache-Control: no-store
allow-dotfiles = true
access-log = $work/access.log
EOF
out=$("$serve" --config "$work/site.conf" --check-config 2>&1); rc=$?
check "--check-config on a good file: exit 0, says so ($rc)" \
    '[ $rc = 0 ] && grep -q "site.conf.*good (2 addresses, 2 certificates" <<<"$out"' "$out"
"$serve" --config "$work/site.conf" >"$work/conf.out" 2>"$work/conf.err" &
cpid=$!
pids+=("$cpid")
started conf
mapfile -t curls < <(grep -o 'https://[^ ]*/' "$work/conf.out" | sort -u)
u=${curls[0]}
hdrs=$("${c[@]}" -D - -o /dev/null "$u" | tr -d '\r')
check "served as the file says: both listeners, its headers" \
    '[ ${#curls[@]} = 2 ] && [ "$("${c[@]}" -o /dev/null -w "%{http_code}" "${curls[1]}")" = 200 ] &&
     grep -q "^X-From: the-file" <<<"$hdrs" && grep -q "^Cache-Control: no-store" <<<"$hdrs"' \
    "$(cat "$work/conf.out"; echo "$hdrs")"
check "allow-dotfiles = true from the file: /.env is served" \
    '[ "$("${c[@]}" "${u}.env")" = hidden ]'
port=${u##*:}; port=${port%/}
subj() { openssl s_client -connect "127.0.0.1:$port" -servername "$1" </dev/null 2>/dev/null |
    openssl x509 -noout -subject 2>/dev/null; }
check "two cert/key pairs from the file, chosen by SNI (a.test, b.test)" \
    'subj a.test | grep -q "CN *= *a.test" && subj b.test | grep -q "CN *= *b.test"'
check "the access log from the file is written" 'wait_for 10 test -s "$work/access.log"'
kill -TERM "$cpid"
wait "$cpid"; rc=$?
check "the server from the file exits 0 on SIGTERM ($rc)" '[ $rc = 0 ]' "$(tail -n 5 "$work/conf.err")"

# The command line over the file: its --listen and --header replace the file's lists, a single
# value (--workers) replaces the file's, the file's other keys stay.
"$serve" --config "$work/site.conf" --listen 127.0.0.1:0 --workers 2 --header 'X-From: cli' \
    >"$work/over.out" 2>"$work/over.err" &
opid=$!
pids+=("$opid")
started over
u=$(grep -o 'https://[^ ]*/' "$work/over.out" | head -n 1)
hdrs=$("${c[@]}" -D - -o /dev/null "$u" | tr -d '\r')
check "command line over the file: one listener, 2 workers, its header only, the file's certificates" \
    '[ "$(grep -c "https://" "$work/over.out" | head -n 1)" -ge 1 ] && ! grep -q "^  and:" "$work/over.out" &&
     grep -q "workers:     2 " "$work/over.out" && grep -q "^X-From: cli" <<<"$hdrs" &&
     ! grep -q "^Cache-Control: no-store" <<<"$hdrs" && grep -q "b.pem" "$work/over.out"' \
    "$(cat "$work/over.out"; echo "$hdrs")"
kill -TERM "$opid"
wait "$opid"

# Bad files: exit 2, the message names the file and the line.
bad() { # NAME EXPECTED-MESSAGE-REGEX: runs --check-config on $work/NAME.conf
    local out rc want=$2
    out=$("$serve" --config "$work/$1.conf" --check-config 2>&1); rc=$?
    check "--check-config, $1: exit 2 ($rc), '$2'" '[ $rc = 2 ] && grep -qE -- "$want" <<<"$out"' "$out"
}
printf '# fine\nworkers = 2\nlisten_on = :443\n' >"$work/unknown-key.conf"
bad unknown-key "unknown-key.conf:3: unknown key 'listen_on'"
printf 'workers = 2\n\nworkers = many\n' >"$work/bad-value.conf"
bad bad-value "bad-value.conf:3: --workers wants a whole number"
printf 'listen = 127.0.0.1:99999\n' >"$work/bad-port.conf"
bad bad-port "bad-port.conf:1: --listen 127.0.0.1:99999: the port"
printf 'allow-dotfiles = maybe\n' >"$work/bad-bool.conf"
bad bad-bool "bad-bool.conf:1: wants true or false"
printf 'workers = 1\nthis is not a setting\n' >"$work/syntax.conf"
bad syntax "syntax.conf:2: not a 'key = value' line"
printf 'help = 1\n' >"$work/help-key.conf"
bad help-key "help-key.conf:1: unknown key 'help'"
printf 'cert = %s\nkey = %s\n' "$work/a.pem" "$work/nope.key" >"$work/missing-key.conf"
bad missing-key "--key .*nope.key"
out=$("$serve" --config "$work/nope.conf" --check-config 2>&1); rc=$?
check "--check-config, a missing file: exit 2 ($rc), named with the reason" \
    '[ $rc = 2 ] && grep -q -- "--config .*nope.conf: No such file" <<<"$out"' "$out"
out=$("$serve" --config "$work/bad-value.conf" "$root" 2>&1); rc=$?
check "a bad file without --check-config: the server does not start, exit 2 ($rc)" '[ $rc = 2 ]' "$out"
"$serve" --help >"$work/help"
check "--help describes --config, --check-config and a repeatable --listen" \
    'grep -q -- "--config FILE" "$work/help" && grep -q -- "--check-config" "$work/help" &&
     grep -q "repeatable, up to 16" "$work/help"'

if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work"/*.err; then
    not_ok "no sanitizer reports" "$(grep -hE -A5 'ERROR:|runtime error:' "$work"/*.err)"
else
    ok "no sanitizer reports"
fi

echo "config: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
