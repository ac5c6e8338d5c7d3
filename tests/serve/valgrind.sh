#!/usr/bin/env bash
# ktla-serve end to end under valgrind memcheck: TLS 1.2 and 1.3 downloads on keep-alive
# connections, ranges, a 404, bad clients, and connections still open (one mid-handshake, one idle
# after a response) when SIGTERM comes. Then: memcheck counted no error, nothing was definitely or
# indirectly lost, no descriptor was left open, and the server's exit status is its normal 0.
#
# usage: tests/serve/valgrind.sh BUILD_DIR     (a normal build, not a sanitized one)
# Prints TAP ("ok N - ..."), then "valgrind: N passed, N failed, 0 skipped". Exit status 1 on
# failure. VALGRIND=/path/to/valgrind picks the valgrind (3.23 or later).
#
# Which valgrind. ktla-serve needs 3.23 or later, and Debian 12 has 3.19, which cannot run it:
#   - openat2 (syscall 437, which keeps every path beneath DIR) is unknown to it (valgrind has it
#     since 3.21), so the server is told ENOSYS and refuses to start;
#   - it does not treat io_uring_enter as a call that may block (since 3.23 it does): a thread
#     waiting for completions in io_uring_enter keeps valgrind's one big lock, so every other
#     thread (the other workers, and the main thread that turns SIGTERM into a drain) waits for
#     that lock for ever. Connections to the other workers hang, and SIGTERM is never acted on.
#     --workers 1 and --fair-sched=yes do not help: the lock is never given up.
# When the valgrind on PATH is older, this takes Debian 13's valgrind package (apt-get download,
# from the Debian mirror this machine's apt already uses) and unpacks it under BUILD_DIR, not
# installing it: the package asks for Debian 13's libc, but its programs need only glibc 2.34
# (the tools themselves are static), which the check below confirms by running it.
#
# The memcheck options, and why:
#   --undef-value-errors=no: memcheck does not know what the kernel writes into memory for an
#     io_uring operation (a recv, a read), so every byte received would count as uninitialised:
#     over a thousand contexts in OpenSSL and the HTTP parser, all with their origin in ktla's
#     receive buffers. Addressability (overruns, use after free, bad frees), leaks and
#     descriptors are still checked.
#   --track-fds=yes: since 3.24 a descriptor open at exit, or closed twice, is an error; so the
#     server starts with nothing but 0, 1 and 2. Valgrind does not see the sockets that io_uring
#     accepts either: it does not know them at exit, and it takes a reused number's one close for
#     a second one (tests/serve/valgrind.supp says which). So this also counts the server's
#     descriptors in /proc itself, once every connection has gone, against the count at start.
set -u
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
spid='' kapid=''
cleanup() {
    [ -n "$spid" ] && kill -KILL "$spid" 2>/dev/null
    [ -n "$kapid" ] && kill "$kapid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
start_s=$(date +%s)

TAP_DETAIL_LINES=30 WAIT_STEP=0.05
. "$here/../tap.sh"
finish() {
    echo "# $(($(date +%s) - start_s)) s"
    echo "1..$n"
    echo "valgrind: $pass passed, $fail failed, 0 skipped"
    [ $fail -eq 0 ]
    exit
}

# ---- a valgrind that can run io_uring programs
vg=() vg_version=
# usable CMD...: sets vg and vg_version when CMD --version says 3.23 or later
usable() {
    local v
    v=$("$@" --version 2>/dev/null) || return 1
    v=${v#valgrind-}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%.*}
    [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
    [ "$major" -gt 3 ] || { [ "$major" = 3 ] && [ "$minor" -ge 23 ]; } || return 1
    vg=("$@") vg_version=$v
}
# fetch_debian DIR SUITE: unpacks SUITE's valgrind package into DIR, from the Debian mirror that
# this machine's apt uses for its own release, with a private apt state (nothing of the
# machine's apt configuration changes).
fetch_debian() {
    local dir=$1 suite=$2 own uri apt
    own=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    uri=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null |
        awk -v r="$own" '$1 == r { print $2; exit }')
    [ -n "$uri" ] || { echo "# no Debian mirror found in apt's configuration"; return 1; }
    local t=$work/apt
    mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$t/deb"
    local keys=/usr/share/keyrings/debian-archive-keyring.gpg opt=
    [ -f "$keys" ] && opt="[signed-by=$keys] "
    echo "deb $opt$uri $suite main" >"$t/sources.list"
    apt=(apt-get -q -o Dir::Etc::SourceList="$t/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$t/lists" -o Dir::Cache="$t/cache" -o Dir::State::Status=/dev/null
        -o APT::Sandbox::User=root)
    "${apt[@]}" update >"$t/log" 2>&1 &&
        (cd "$t/deb" && "${apt[@]}" download valgrind >>"$t/log" 2>&1) &&
        rm -rf "$dir.new" && dpkg-deb -x "$t"/deb/valgrind_*.deb "$dir.new" &&
        rm -rf "$dir" && mv "$dir.new" "$dir" ||
        { sed 's/^/#   /' "$t/log" | tail -n 5; return 1; }
}
cached=$build/valgrind-debian13
debian_vg() { usable env VALGRIND_LIB="$cached/usr/libexec/valgrind" "$cached/usr/bin/valgrind.bin"; }
if [ -n "${VALGRIND:-}" ]; then
    usable "$VALGRIND"
elif usable valgrind || debian_vg; then
    :
else
    echo "# valgrind on PATH: $(valgrind --version 2>/dev/null || echo none); taking Debian 13's"
    fetch_debian "$cached" trixie && debian_vg
fi
if [ ${#vg[@]} -eq 0 ]; then
    not_ok "a valgrind of 3.23 or later (VALGRIND=${VALGRIND:-}; PATH: $(valgrind --version 2>/dev/null || echo none))"
    finish
fi
ok "valgrind $vg_version (3.23 or later: knows openat2, and that io_uring_enter blocks)"

# ---- the served tree
root=$work/www
mkdir -p "$root"
: >"$root/f0"
for s in 1 16385; do head -c $s /dev/urandom >"$root/f$s"; done
head -c $(((2 << 20) + 1)) /dev/urandom >"$root/big.bin" # crosses ktla-serve's 1 MiB slices
sha() { sha256sum "$1" | cut -d' ' -f1; }

# shellcheck disable=SC2054 # the commas are inside valgrind options
vg_opts=(--tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --track-fds=yes
    --undef-value-errors=no --num-callers=40 --log-file="$work/valgrind.log")
[ -f "$here/valgrind.supp" ] && vg_opts+=(--suppressions="$here/valgrind.supp")

# Two workers, each with its own thread and ring: the threads must share valgrind's lock (what
# 3.19 cannot do), and both workers' wind-down is checked.
(
    # Only 0, 1 and 2 go to the server: --track-fds counts anything else left open as an error.
    for f in "/proc/$BASHPID/fd/"*; do
        f=${f##*/}
        [ "$f" -gt 2 ] && { eval "exec $f>&-"; } 2>/dev/null
    done
    exec "${vg[@]}" "${vg_opts[@]}" "$build/ktla-serve" --listen 127.0.0.1:0 --workers 2 \
        --drain-timeout 30 "$root" </dev/null >"$work/server.out" 2>"$work/server.err"
) &
spid=$!
if wait_for 90 grep -q '^ktla-serve .* at https://' "$work/server.out"; then
    url=$(grep -o 'https://[^ ]*' "$work/server.out" | head -n 1)
    ok "ktla-serve starts under memcheck ($url)"
else
    not_ok "ktla-serve starts under memcheck" "$(cat "$work/server.out" "$work/server.err" "$work/valgrind.log" 2>/dev/null)"
    finish
fi
port=${url##*:}; port=${port%/}
c=(curl -sk --max-time 60)
# The server's own descriptors (valgrind keeps its own above 1000), by kind.
fds() {
    local f t
    for f in "/proc/$spid/fd/"*; do
        [ "${f##*/}" -lt 1000 ] || continue
        t=$(readlink "$f" 2>/dev/null) || continue
        case $t in socket:*) echo socket ;; anon_inode:*) echo "${t#anon_inode:}" ;; *) echo file ;; esac
    done | sort | uniq -c | tr -s ' \n' ' '
}
fds_start=$(fds)
echo "# the server's descriptors at start:$fds_start"

# ---- whole files, both TLS versions, three on one keep-alive connection
files=(f1 f16385 big.bin)
for v in 1.3 1.2; do
    args=()
    for f in "${files[@]}"; do args+=(-o "$work/got-$v-$f" "$url$f"); done
    out=$("${c[@]}" --tlsv"$v" --tls-max "$v" -w '%{http_code} %{num_connects}\n' "${args[@]}")
    i=0 connects=0
    while read -r code nc; do
        f=${files[$i]}
        i=$((i + 1))
        connects=$((connects + ${nc:-0}))
        check "TLS $v: $f ($(stat -c %s "$root/$f") bytes): 200, right SHA-256" \
            '[ "$code" = 200 ] && [ "$(sha "$work/got-$v-$f")" = "$(sha "$root/$f")" ]'
    done <<<"$out"
    check "TLS $v: the ${#files[@]} downloads shared one keep-alive connection" \
        '[ $i = ${#files[@]} ] && [ $connects = 1 ]' "answers: $out"
done

# ---- ranges on one connection, an unsatisfiable one, a 404, an empty file
out=$(curl --max-time 60 -sk -H 'Range: bytes=5000-5099' -o "$work/r1" -w '%{http_code}\n' "${url}f16385" \
    --next -sk -H 'Range: bytes=-100' -o "$work/r2" -w '%{http_code}\n' "${url}f16385")
tail -c +5001 "$root/f16385" | head -c 100 >"$work/want1"
tail -c 100 "$root/f16385" >"$work/want2"
check "ranges 5000-5099 and -100: 206 and the right bytes" \
    '[ "$(echo $out)" = "206 206" ] && cmp -s "$work/r1" "$work/want1" && cmp -s "$work/r2" "$work/want2"' "$out"
code=$("${c[@]}" -o /dev/null -w '%{http_code}' -H 'Range: bytes=16385-' "${url}f16385")
check "unsatisfiable range: 416" '[ "$code" = 416 ]' "$code"
code=$("${c[@]}" -o /dev/null -w '%{http_code}' "${url}no-such-file")
check "missing file: 404" '[ "$code" = 404 ]' "$code"
code=$("${c[@]}" -o "$work/got-f0" -w '%{http_code}' "${url}f0")
check "empty file: 200, 0 bytes" '[ "$code" = 200 ] && [ ! -s "$work/got-f0" ]' "$code"

# ---- bad clients: the server closes on them and goes on serving
# raw BYTES-COMMAND: sends what the command prints on a new TCP connection, and succeeds when
# the server then closes it.
raw() {
    local fd
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 1
    "$@" >&$fd
    timeout 30 cat <&$fd >/dev/null
    local rc=$?
    exec {fd}>&-
    [ $rc = 0 ]
}
garbage() { head -c 4096 /dev/urandom; }
plain() { printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'; }
check "garbage bytes instead of a ClientHello: the server closes the connection" 'raw garbage'
check "plain HTTP on the TLS port: the server closes the connection" 'raw plain'
code=$("${c[@]}" -o /dev/null -w '%{http_code}' "${url}f1")
check "after the bad clients it still serves" '[ "$code" = 200 ]' "$code"

same_fds() { [ "$(fds)" = "$fds_start" ]; }
if wait_for 30 same_fds; then
    ok "every connection closed: the server is back to the descriptors it started with"
else
    not_ok "every connection closed: the server is back to the descriptors it started with" \
        "at start:$fds_start; now:$(fds)"
fi

# ---- connections open at SIGTERM: one that never starts its handshake, one idle after a response
exec {hsfd}<>"/dev/tcp/127.0.0.1/$port"
mkfifo "$work/ka.in"
openssl s_client -quiet -connect "127.0.0.1:$port" <"$work/ka.in" >"$work/ka.out" 2>/dev/null &
kapid=$!
exec {kafd}>"$work/ka.in"
printf 'GET /f1 HTTP/1.1\r\nHost: x\r\n\r\n' >&$kafd
check "an idle keep-alive connection (openssl s_client) got its response" \
    'wait_for 60 grep -q "^HTTP/1.1 200" "$work/ka.out"'

# ---- SIGTERM
kill -TERM "$spid"
if wait_for 60 eval '! kill -0 $spid 2>/dev/null'; then
    wait "$spid"; status=$?
    spid=
else
    status=timeout
fi
check "SIGTERM: the server exits 0 (memcheck's error exit would be 99)" '[ "$status" = 0 ]' \
    "status $status; $(tail -n 5 "$work/server.err")"
check "SIGTERM: the idle connection and the one mid-handshake did not hold it up, and are closed" \
    'wait_for 10 eval "! kill -0 $kapid 2>/dev/null" && timeout 10 cat <&$hsfd >/dev/null'
exec {kafd}>&- {hsfd}>&-
kapid=
check "the server's closing line counts the connections and responses" \
    'grep -qE "stopped: [0-9]+ connections .*, [0-9]+ responses" "$work/server.err"' "$(cat "$work/server.err")"

# ---- what memcheck says
log=$work/valgrind.log
summary=$(grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|no leaks are possible|FILE DESCRIPTORS|total heap usage' "$log" | sed 's/^==[0-9]*== *//')
printf '%s\n' "$summary" | sed 's/^/# /'
errors() { sed '1,/Parent PID/d' "$log" | head -n 60; }
check "memcheck: 0 errors" 'grep -qE "ERROR SUMMARY: 0 errors from 0 contexts" "$log"' "$(errors)"
check "memcheck: nothing definitely or indirectly lost" \
    'grep -q "All heap blocks were freed -- no leaks are possible" "$log" ||
     { grep -qE "definitely lost: 0 bytes in 0 blocks" "$log" && grep -qE "indirectly lost: 0 bytes in 0 blocks" "$log"; }' \
    "$(grep -B2 -A25 -E 'are (definitely|indirectly) lost' "$log" | head -n 60)"
check "memcheck: no descriptor left open but 0, 1 and 2" \
    'grep -qE "FILE DESCRIPTORS: 3 open \(3 std\) at exit" "$log"' "$(grep -A4 'Open file descriptor' "$log" | head -n 40)"

finish
