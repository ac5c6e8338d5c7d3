#!/usr/bin/env bash
# ktla-serve as a service: socket activation (under systemd-socket-activate), --user, sd_notify
# (a Python AF_UNIX datagram listener as NOTIFY_SOCKET), --pid-file, and the refusal to keep root
# on a port below 1024.
#
# usage: tests/serve/service.sh BUILD_DIR
# Needs root (it drops root to the user nobody) and systemd-socket-activate (Debian's systemd).
# Prints TAP ("ok N - ..."), then "service: N passed, N failed, 0 skipped". Exit status 1 on failure.
set -u
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../tap.sh"

finish() {
    echo "service: $pass passed, $fail failed, 0 skipped"
    [ $fail -eq 0 ]
    exit
}
if [ "$(id -u)" != 0 ]; then
    not_ok "the service suite runs as root (it tests dropping root): run it as root"
    finish
fi
if ! command -v systemd-socket-activate >/dev/null; then
    not_ok "systemd-socket-activate is installed (Debian package systemd; scripts/deps.sh)"
    finish
fi

# The served tree must be reachable by nobody: mktemp -d makes a 0700 directory.
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

root=$work/www
mkdir -p "$root"
head -c 100000 /dev/urandom >"$root/file.bin"
chmod -R a+rX "$root"
# LeakSanitizer stops the process with ptrace at exit, which a process that was root and is
# nobody now may not do (it is not dumpable): leaks are checked by the serve and valgrind suites.
export ASAN_OPTIONS=detect_leaks=0
c=(curl -sk --max-time 60)
sha() { sha256sum "$1" | cut -d' ' -f1; }

# free_port [LOW]: a port nothing listens on, from the ephemeral range, or below 1024 with LOW.
free_port() {
    python3 - "${1:-}" <<'EOF'
import random, socket, sys
low = sys.argv[1] == "low"
for _ in range(200):
    port = random.randrange(600, 1000) if low else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
EOF
}

# A notify socket that only root may write to: messages sent after dropping root still arrive
# because ktla-serve connects to it first.
cat >"$work/notify.py" <<'EOF'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o600)
with open(sys.argv[2], "a") as out:
    while True:
        out.write(s.recv(4096).decode().replace("\n", " ") + "\n")
        out.flush()
EOF
python3 "$work/notify.py" "$work/notify.sock" "$work/notify.log" &
pids+=($!)
wait_for 10 test -S "$work/notify.sock"

# ---- socket activation, --user nobody, sd_notify, --pid-file
port=$(free_port)
systemd-socket-activate -l "127.0.0.1:$port" --fdname=https -E NOTIFY_SOCKET="$work/notify.sock" \
    -E ASAN_OPTIONS="$ASAN_OPTIONS" \
    "$build/ktla-serve" --user nobody --pid-file "$work/ktla-serve.pid" --workers 3 "$root" \
    >"$work/sa.out" 2>"$work/sa.err" &
spid=$!
pids+=($spid)
# systemd-socket-activate holds the socket and starts (execs) the server on the first connection.
wait_for 10 grep -q "Listening on 127.0.0.1:$port" "$work/sa.err"
"${c[@]}" -o "$work/got" -w '%{http_code}' "https://127.0.0.1:$port/file.bin" >"$work/code"
check "socket-activated: the first connection is served, 200, right SHA-256" \
    '[ "$(cat "$work/code")" = 200 ] && [ "$(sha "$work/got")" = "$(sha "$root/file.bin")" ]' \
    "$(cat "$work/sa.out" "$work/sa.err")"
check "socket-activated: the banner names the socket from systemd, and the 3 workers sharing it" \
    'grep -q "at https://127.0.0.1:$port/ (socket from systemd)" "$work/sa.out" &&
     grep -q "workers:     3 (one io_uring each, sharing the 1 socket systemd passed)" "$work/sa.out"' \
    "$(cat "$work/sa.out")"
codes=
for i in 1 2 3 4 5 6; do codes+=$("${c[@]}" -o /dev/null -w '%{http_code} ' "https://127.0.0.1:$port/file.bin"); done
check "socket-activated: 6 more connections, all 200 ($codes)" '[ "$codes" = "200 200 200 200 200 200 " ]'

status=/proc/$spid/status
check "--user nobody: real, effective, saved and file uid 65534" \
    '[ "$(awk "/^Uid:/ { print \$2, \$3, \$4, \$5 }" $status)" = "65534 65534 65534 65534" ]' \
    "$(grep -E '^(Uid|Gid|Groups)' $status)"
check "--user nobody: every gid 65534, supplementary groups nobody's only" \
    '[ "$(awk "/^Gid:/ { print \$2, \$3, \$4, \$5 }" $status)" = "65534 65534 65534 65534" ] &&
     [ "$(awk "/^Groups:/ { print \$2 \$3 }" $status)" = "$(id -G nobody | tr -d " ")" ]' \
    "$(grep -E '^(Uid|Gid|Groups)' $status)"
check "--user nobody: no capabilities left, no_new_privs set (root cannot come back)" \
    '[ "$(awk "/^CapEff:|^CapPrm:/ { print \$2 }" $status | sort -u)" = 0000000000000000 ] &&
     [ "$(awk "/^NoNewPrivs:/ { print \$2 }" $status)" = 1 ]' \
    "$(grep -E '^(Cap|NoNewPrivs)' $status)"
check "--user nobody: the banner says so" 'grep -q "^  user:        nobody (uid 65534" "$work/sa.out"'
check "--pid-file: holds the server's pid ($spid)" '[ "$(cat "$work/ktla-serve.pid")" = "$spid" ]'

# A second server on the same pid file: refused, the first one's pid left in place.
"$build/ktla-serve" --listen 127.0.0.1:0 --pid-file "$work/ktla-serve.pid" "$root" \
    >/dev/null 2>"$work/second.err"
rc=$?
check "--pid-file: a second server on the same file refuses to start, naming the first ($rc)" \
    '[ $rc = 1 ] && grep -q "another ktla-serve is running (pid $spid holds it)" "$work/second.err" &&
     [ "$(cat "$work/ktla-serve.pid")" = "$spid" ]' "$(cat "$work/second.err")"

check "sd_notify: READY=1 with a STATUS once serving" \
    'wait_for 10 grep -q "^READY=1 STATUS=serving $root at https://127.0.0.1:$port/" "$work/notify.log"' \
    "$(cat "$work/notify.log")"
kill -HUP $spid
wait_for 10 sh -c "grep -c '^READY=1$' '$work/notify.log' | grep -q 1"
check "sd_notify: SIGHUP says RELOADING=1 with MONOTONIC_USEC, then READY=1" \
    'grep -q "^RELOADING=1 MONOTONIC_USEC=[0-9]\{1,\}$" "$work/notify.log" &&
     [ "$(grep -A1 "^RELOADING=1" "$work/notify.log" | tail -n 1)" = "READY=1" ]' \
    "$(cat "$work/notify.log")"
kill -TERM $spid
wait $spid
rc=$?
check "sd_notify: SIGTERM says STOPPING=1" 'grep -q "^STOPPING=1" "$work/notify.log"' \
    "$(cat "$work/notify.log")"
check "socket-activated server exits 0 on SIGTERM ($rc)" '[ $rc = 0 ]' "$(tail -n 5 "$work/sa.err")"
# A pid file in a directory root owns cannot be unlinked by nobody: it is emptied instead.
check "--pid-file after --user: emptied at exit (stale to every reader)" \
    '[ ! -s "$work/ktla-serve.pid" ]'

# ---- two sockets passed, one worker asked for: each socket still gets a worker
port2=$(free_port)
systemd-socket-activate -l "127.0.0.1:$port" -l "127.0.0.1:$port2" -E ASAN_OPTIONS="$ASAN_OPTIONS" \
    "$build/ktla-serve" --workers 1 --user nobody "$root" >"$work/two.out" 2>"$work/two.err" &
spid=$!
pids+=($spid)
wait_for 10 grep -q "Listening on 127.0.0.1:$port2" "$work/two.err"
c1=$("${c[@]}" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/file.bin")
c2=$("${c[@]}" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port2/file.bin")
check "two sockets passed, --workers 1: 2 workers, both addresses served ($c1 $c2)" \
    '[ "$c1 $c2" = "200 200" ] && grep -q "workers:     2 " "$work/two.out" &&
     grep -q "^  and:         https://127.0.0.1:$port2/ (socket from systemd)" "$work/two.out"' \
    "$(cat "$work/two.out" "$work/two.err")"
kill -TERM $spid
wait $spid

# ---- what socket activation refuses, and a LISTEN_PID meant for another process
rc=0
out=$(bash -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$1" 3</dev/null' "$build/ktla-serve" "$root" 2>&1) ||
    rc=$?
check "LISTEN_FDS=1 with fd 3 not a socket: refused, exit 1 ($rc)" \
    '[ $rc = 1 ] && echo "$out" | grep -q "socket activation: descriptor 3 is not a socket"' "$out"
out=$(python3 - "$build/ktla-serve" "$root" <<'EOF' 2>&1
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1")
pid = os.fork()
if pid == 0:
    env["LISTEN_PID"] = str(os.getpid())
    os.execve(sys.argv[1], [sys.argv[1], sys.argv[2]], env)
_, st = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(st))
EOF
)
check "LISTEN_FDS with a UDP socket: refused as not a listening TCP socket, exit 1" \
    'echo "$out" | grep -q "not a listening TCP socket" && echo "$out" | grep -q "^exit 1$"' "$out"
LISTEN_PID=1 LISTEN_FDS=1 "$build/ktla-serve" --listen 127.0.0.1:0 --workers 1 "$root" \
    >"$work/other.out" 2>"$work/other.err" &
opid=$!
pids+=($opid)
wait_for 20 grep -q '^ktla-serve .* at https://' "$work/other.out"
check "LISTEN_PID of another process: the variables are ignored, --listen used" \
    'grep -q "^ktla-serve .* at https://127.0.0.1:[0-9]*/$" "$work/other.out"' \
    "$(cat "$work/other.out" "$work/other.err")"
kill -TERM $opid
wait $opid

# ---- root on a port below 1024: refused without --user; --user binds it, then drops root
low=$(free_port low)
"$build/ktla-serve" --listen "127.0.0.1:$low" "$root" >/dev/null 2>"$work/root.err"
rc=$?
check "root on port $low without --user: refused, exit 2, with the way out ($rc)" \
    '[ $rc = 2 ] && grep -q "refusing to serve port $low as root: give --user NAME" "$work/root.err"' \
    "$(cat "$work/root.err")"
"$build/ktla-serve" --listen "127.0.0.1:$low" --user nobody --pid-file "$work/low.pid" --workers 2 \
    "$root" >"$work/low.out" 2>"$work/low.err" &
lpid=$!
pids+=($lpid)
wait_for 20 grep -q '^ktla-serve .* at https://' "$work/low.out"
code=$("${c[@]}" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$low/file.bin")
check "--user nobody on port $low: bound as root, served as nobody ($code)" \
    '[ "$code" = 200 ] && [ "$(awk "/^Uid:/ { print \$3 }" /proc/$lpid/status)" = 65534 ]' \
    "$(cat "$work/low.out" "$work/low.err")"
kill -TERM $lpid
wait $lpid
rc=$?
check "--user: exits 0 on SIGTERM ($rc)" '[ $rc = 0 ]' "$(cat "$work/low.err")"
"$build/ktla-serve" --listen "127.0.0.1:$low" --allow-root --pid-file "$work/root.pid" --workers 1 \
    "$root" >"$work/allow.out" 2>"$work/allow.err" &
apid=$!
pids+=($apid)
wait_for 20 grep -q '^ktla-serve .* at https://' "$work/allow.out"
code=$("${c[@]}" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$low/file.bin")
check "--allow-root on port $low: served as root ($code)" \
    '[ "$code" = 200 ] && [ "$(awk "/^Uid:/ { print \$3 }" /proc/$apid/status)" = 0 ]' \
    "$(cat "$work/allow.out" "$work/allow.err")"
kill -TERM $apid
wait $apid
check "--pid-file as root: removed at exit" '[ ! -e "$work/root.pid" ]'

# ---- --redirect-http below 1024: bound as root too; to port 443 the URL names no port
"$build/ktla-serve" --listen 127.0.0.1:0 --redirect-http "127.0.0.1:$low" "$root" >/dev/null \
    2>"$work/root.err"
rc=$?
check "root with --redirect-http on port $low, without --user: refused, exit 2 ($rc)" \
    '[ $rc = 2 ] && grep -q "refusing to serve port $low as root" "$work/root.err"' "$(cat "$work/root.err")"
if python3 -c 'import socket; socket.socket().bind(("127.0.0.1", 443))' 2>/dev/null; then
    "$build/ktla-serve" --listen 127.0.0.1:443 --redirect-http "127.0.0.1:$low" --user nobody \
        --workers 1 "$root" >"$work/r443.out" 2>"$work/r443.err" &
    rpid=$!
    pids+=($rpid)
    wait_for 20 grep -q '^ktla-serve .* at https://' "$work/r443.out"
    got=$(curl -s --max-time 20 -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$low/a?b")
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' -L "http://127.0.0.1:$low/file.bin")
    check "--redirect-http on $low to --listen :443 as nobody: 301 to https://127.0.0.1/a?b, no :443 ($got; followed: $code)" \
        '[ "$got" = "301 https://127.0.0.1/a?b" ] && [ "$code" = 200 ]' "$(cat "$work/r443.out" "$work/r443.err")"
    kill -TERM $rpid
    wait $rpid
else
    not_ok "--redirect-http to port 443: port 443 on 127.0.0.1 is in use here, so this was not run"
fi

# ---- mistakes
"$build/ktla-serve" --user no-such-user-here "$root" >/dev/null 2>"$work/e.err"
rc=$?
check "--user of no such user: exit 2, said ($rc)" \
    '[ $rc = 2 ] && grep -q "^ktla-serve: --user no-such-user-here: no such user" "$work/e.err"' \
    "$(cat "$work/e.err")"
"$build/ktla-serve" --user root "$root" >/dev/null 2>"$work/e.err"
rc=$?
check "--user root: refused, exit 2 ($rc)" '[ $rc = 2 ] && grep -q "is root" "$work/e.err"'
mkdir -m 700 "$work/private"
"$build/ktla-serve" --listen 127.0.0.1:0 --user nobody "$work/private" >/dev/null 2>"$work/e.err"
rc=$?
check "--user nobody with a DIR only root can read: exit 1, 'runs as user nobody' ($rc)" \
    '[ $rc = 1 ] && grep -q "cannot read .*Permission denied (ktla-serve runs as user nobody" "$work/e.err"' \
    "$(cat "$work/e.err")"
"$build/ktla-serve" --listen 127.0.0.1:0 --pid-file "$work/no/such/dir/pid" "$root" >/dev/null \
    2>"$work/e.err"
rc=$?
check "--pid-file in a missing directory: exit 1, named ($rc)" \
    '[ $rc = 1 ] && grep -q "^ktla-serve: --pid-file $work/no/such/dir/pid: No such file" "$work/e.err"' \
    "$(cat "$work/e.err")"
help_names() {
    local out w
    out=$("$build/ktla-serve" --help) || return 1
    for w in "--user NAME" --allow-root "--pid-file FILE" LISTEN_FDS NOTIFY_SOCKET; do
        echo "$out" | grep -q -- "$w" || return 1
    done
}
check "--help names --user, --allow-root, --pid-file, LISTEN_FDS and NOTIFY_SOCKET" help_names

if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$work"/*.err; then
    not_ok "no sanitizer reports from the servers" "$(grep -hE -A5 'ERROR:|runtime error:' "$work"/*.err)"
else
    ok "no sanitizer reports from the servers"
fi
finish
