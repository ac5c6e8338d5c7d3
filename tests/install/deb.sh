#!/usr/bin/env bash
# ktla's Debian packages built, checked, installed on this machine and used, then purged:
#   - dpkg-buildpackage -b -us -uc in a copy of the working tree (committed or not, without build
#     directories), with DEB_BUILD_OPTIONS=nocheck: the four packages libktla0, libktla-dev,
#     ktla-serve, ktla-bench;
#   - lintian on the .changes: an E: tag fails, other tags and the overridden ones (O:) are printed
#     (debian/*.lintian-overrides give each override's reason); debian/libktla0.symbols lists exactly the KTLA_API
#     functions of include/ktla.h;
#   - dpkg -i (needs root: CI runs as root on a throwaway machine; otherwise sudo): the user ktla
#     exists, systemd-analyze verify passes on the installed units, /usr/bin/ktla-serve serves a
#     file to curl, and so does the installed unit's command line socket-activated
#     (systemd-socket-activate) as the user ktla, as systemd would run it;
#   - man -w finds the installed pages; the send-file example from
#     /usr/share/doc/libktla-dev/examples builds against the installed libktla-dev with
#     pkg-config (and with find_package(ktla)), links /usr/lib/<triplet>/libktla.so.0 and serves
#     a file to curl;
#   - dpkg -P removes everything again (and the user ktla, if this script's install made it).
#
# usage: tests/install/deb.sh          (KTLA_DEB_JOBS: build jobs, default nproc)
# Prints TAP ("ok N - ..."), timings as "# ..." lines, then "deb: N passed, N failed, 0 skipped".
# Exit status 1 on failure. No sleeps to wait for things: every wait polls with a deadline.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
jobs=${KTLA_DEB_JOBS:-$(nproc)}
packages=(libktla0 libktla-dev ktla-serve ktla-bench)
pids=()
installed_here=0
user_made_here=0

sudo=
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"

purge() {
    $sudo dpkg -P "${packages[@]}" >"$work/purge.log" 2>&1
    local rc=$?
    if [ $user_made_here -eq 1 ] && getent passwd ktla >/dev/null; then
        $sudo deluser --system --quiet ktla >>"$work/purge.log" 2>&1
        getent group ktla >/dev/null && $sudo delgroup --system --quiet ktla >>"$work/purge.log" 2>&1
    fi
    return $rc
}
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    [ $installed_here -eq 1 ] && purge
    rm -rf "$work"
}
trap cleanup EXIT

. "$here/../tap.sh"

log=$work/log
mkdir -p "$log"
tail_of() { tail -n 15 "$log/$1"; }
t0=$(date +%s)
timing() { echo "# $1: $(($(date +%s) - t0)) s"; t0=$(date +%s); }

# ---- build, in a copy of the working tree (what git tracks or would track; no build output)
src=$work/src/ktla
mkdir -p "$src"
(cd "$repo" && git ls-files -co --exclude-standard -z |
    grep -zvE '^(obj-[^/]*|debian/(tmp|libktla0|libktla-dev|ktla-serve|ktla-bench|\.debhelper)|debian/(files|debhelper-build-stamp|.*\.substvars|.*\.debhelper\.log))(/|$)' |
    xargs -0 cp -a --parents -t "$src")
if (cd "$src" && DEB_BUILD_OPTIONS="nocheck parallel=$jobs" \
    dpkg-buildpackage -b -us -uc >"$log/build" 2>&1); then
    ok "dpkg-buildpackage -b -us -uc builds (nocheck: the suites need qemu guests)"
else
    not_ok "dpkg-buildpackage -b -us -uc builds" "$(tail_of build)"
fi
version=$(cd "$src" && dpkg-parsechangelog -S Version 2>/dev/null)
arch=$(dpkg --print-architecture)
debs=()
for p in "${packages[@]}"; do debs+=("$work/src/${p}_${version}_$arch.deb"); done
missing=
for d in "${debs[@]}"; do [ -f "$d" ] || missing="$missing ${d##*/}"; done
check "the four packages are there: ${packages[*]} ($version)" '[ -z "$missing" ]' \
    "missing:$missing"
timing "build"

# ---- lintian: errors fail, the rest is printed
changes=$work/src/ktla_${version}_$arch.changes
lintian --pedantic -I --show-overrides "$changes" >"$log/lintian" 2>&1
errors=$(grep '^E: ' "$log/lintian")
check "lintian: no E: tag on the .changes and its packages" '[ -z "$errors" ]' "$errors"
grep -E '^[WIPXO]: ' "$log/lintian" | sed 's/^/#   lintian /'
timing "lintian"

# ---- the symbols file is the header's KTLA_API list, nothing more or less
api=$(tr '\n' ' ' <"$repo/include/ktla.h" | grep -oE 'KTLA_API [^;{}()]*\(' |
    grep -oE 'ktla_[A-Za-z0-9_]+ *\($' | tr -d ' (' | sort -u)
symbols=$(sed -n 's/^ \(ktla_[A-Za-z0-9_]*\)@Base .*/\1/p' "$repo/debian/libktla0.symbols" | sort -u)
check "debian/libktla0.symbols lists exactly the $(wc -w <<<"$api") KTLA_API functions" \
    '[ -n "$api" ] && [ "$api" = "$symbols" ]' \
    "$(diff <(echo "$api") <(echo "$symbols") | grep '^[<>]' |
        sed 's/^</only in ktla.h (add it with the version that adds it):/; s/^>/only in the symbols file:/')"

# ---- install
getent passwd ktla >/dev/null || user_made_here=1
if [ -z "$missing" ] && $sudo dpkg -i "${debs[@]}" >"$log/install" 2>&1; then
    installed_here=1
    ok "dpkg -i installs the four packages"
else
    installed_here=1 # whatever dpkg managed to unpack is purged at the end
    not_ok "dpkg -i installs the four packages (as root, or with sudo)" "$(tail_of install)"
fi
files_missing=
for f in /usr/bin/ktla-serve /usr/bin/ktla-bench /usr/bin/ktla-echo /usr/include/ktla.h \
    /lib/systemd/system/ktla-serve.service /lib/systemd/system/ktla-serve.socket \
    /etc/default/ktla-serve; do
    [ -e "$f" ] || files_missing="$files_missing $f"
done
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
for f in libktla.so.0 libktla.so libktla.a pkgconfig/ktla.pc cmake/ktla/ktlaConfig.cmake; do
    [ -e "/usr/lib/$multiarch/$f" ] || files_missing="$files_missing /usr/lib/$multiarch/$f"
done
check "installed: programs, header, library, ktla.pc, CMake package, units, /etc/default/ktla-serve" \
    '[ -z "$files_missing" ]' "missing:$files_missing"
check "postinst made the system user ktla (no login shell, home /nonexistent)" \
    'getent passwd ktla | grep -q ":/nonexistent:/usr/sbin/nologin$"' "$(getent passwd ktla)"

if command -v systemd-analyze >/dev/null; then
    verify=$(systemd-analyze verify /lib/systemd/system/ktla-serve.socket \
        /lib/systemd/system/ktla-serve.service 2>&1)
    check "systemd-analyze verify: ktla-serve.socket and ktla-serve.service" '[ -z "$verify" ]' \
        "$verify"
else
    not_ok "systemd-analyze verify (no systemd-analyze: package systemd)"
fi

pages=
for page in "3 ktla_acceptor_new" "3 ktla_ctx_free" "7 ktla" "8 ktla-serve" "1 ktla-bench" \
    "1 ktla-echo"; do
    # shellcheck disable=SC2086 # section and name
    man -w $page >/dev/null 2>&1 || pages="$pages man-$page"
done
check "man -w finds ktla_acceptor_new(3), ktla_ctx_free(3), ktla(7), ktla-serve(8), ktla-bench(1), ktla-echo(1)" \
    '[ -z "$pages" ]' "not found:$pages"
timing "install"

# ---- the installed ktla-serve serves a file
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 2 \
    -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
www=$work/www
mkdir -p "$www"
head -c $(((1 << 20) + 1)) /dev/urandom >"$www/file.bin"
# The user ktla must reach it, as the service's user would reach /srv/www.
chmod 0755 "$work" "$www" && chmod 0644 "$www/file.bin"

exited() { [ ! -e "/proc/$1" ] || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
# stop PID: SIGTERM, then the server must exit 0 within 15 s (it drains first).
stop() {
    kill -TERM "$1" 2>/dev/null
    wait_for 15 exited "$1" || kill -KILL "$1" 2>/dev/null
    wait "$1"
}
fetch() { # fetch PORT: the file over TLS, the same bytes
    rm -f "$work/copy.bin"
    curl -s --insecure --max-time 30 "https://127.0.0.1:$1/file.bin" -o "$work/copy.bin" \
        2>"$work/curl.err" && cmp -s "$www/file.bin" "$work/copy.bin"
}

: >"$work/serve.out"
/usr/bin/ktla-serve --listen 127.0.0.1:0 --workers 1 --access-log "$work/access.log" "$www" \
    >"$work/serve.out" 2>&1 &
spid=$!
pids+=("$spid")
port=
wait_for 30 grep -qE 'https://127\.0\.0\.1:[0-9]+' "$work/serve.out" &&
    port=$(grep -oE 'https://127\.0\.0\.1:[0-9]+' "$work/serve.out" | head -n 1 | cut -d: -f3)
if [ -n "$port" ] && fetch "$port" && grep -qE '"GET /file.bin HTTP/(1\.1|2\.0)" 200' "$work/access.log" &&
    stop "$spid"; then
    ok "/usr/bin/ktla-serve serves 1 MiB + 1 byte to curl --insecure, logs it, exits 0 on SIGTERM"
else
    not_ok "/usr/bin/ktla-serve serves a file to curl --insecure" \
        "$(cat "$work/curl.err" "$work/serve.out" "$work/access.log" 2>/dev/null)"
fi

# The unit's own command line, run as systemd would run it: the port bound by someone else and
# handed over (LISTEN_FDS), the user ktla from the start, KTLA_SERVE_OPTS from /etc/default.
unit=/lib/systemd/system/ktla-serve.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit" 2>/dev/null)
user=$(sed -n 's/^User=//p' "$unit" 2>/dev/null)
# runs_as_ktla: the pids of ktla-serve processes of the user ktla (procps may be missing).
runs_as_ktla() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = ktla-serve ] &&
            [ "$(stat -c %U "$p" 2>/dev/null)" = ktla ] && echo "${p#/proc/}"
    done
}
sa_port=
for _ in 1 2 3 4 5 6 7 8; do
    try=$((20000 + RANDOM % 20000))
    [ -z "$(ss -Htln "sport = :$try" 2>/dev/null)" ] && sa_port=$try && break
done
if [ "$exec_start" = '/usr/bin/ktla-serve $KTLA_SERVE_OPTS ${KTLA_SERVE_DIR}' ] &&
    [ "$user" = ktla ] && command -v systemd-socket-activate >/dev/null; then
    # The access log's directory: the unit's LogsDirectory=, which only systemd makes.
    $sudo install -d -o ktla -g ktla -m 0755 "$work/logs"
    (
        # shellcheck source=/dev/null
        . /etc/default/ktla-serve
        KTLA_SERVE_OPTS=${KTLA_SERVE_OPTS//\/var\/log\/ktla-serve/$work/logs}
        # shellcheck disable=SC2086 # split as systemd splits $KTLA_SERVE_OPTS
        exec $sudo systemd-socket-activate -l "127.0.0.1:$sa_port" \
            setpriv --reuid=ktla --regid=ktla --clear-groups --inh-caps=-all \
            /usr/bin/ktla-serve $KTLA_SERVE_OPTS "$www"
    ) >"$work/sa.out" 2>&1 &
    sapid=$!
    pids+=("$sapid")
    wait_for 10 grep -q "Listening on 127.0.0.1:$sa_port" "$work/sa.out"
    if fetch "$sa_port" && [ -n "$(runs_as_ktla)" ] &&
        grep -qE '"GET /file.bin HTTP/(1\.1|2\.0)" 200' "$work/logs/access.log" && stop "$sapid"; then
        ok "the unit's ExecStart with /etc/default/ktla-serve, socket-activated (systemd-socket-activate) as user ktla: serves, logs, exits 0"
    else
        not_ok "the unit's ExecStart, socket-activated as user ktla, serves the file" \
            "$(cat "$work/curl.err" "$work/sa.out" "$work/logs/access.log" 2>/dev/null)"
    fi
else
    not_ok "the unit's ExecStart, socket-activated as user ktla" \
        "ExecStart=$exec_start User=$user systemd-socket-activate: $(command -v systemd-socket-activate)"
fi
# The same server started as root by the socket activation, dropping to --user ktla itself
# (what an operator does without systemd's User=).
sa2_port=$((sa_port + 1))
if [ -n "$sa_port" ] && command -v systemd-socket-activate >/dev/null; then
    (
        exec $sudo systemd-socket-activate -l "127.0.0.1:$sa2_port" \
            /usr/bin/ktla-serve --user ktla "$www"
    ) >"$work/sa2.out" 2>&1 &
    sa2pid=$!
    pids+=("$sa2pid")
    wait_for 10 grep -q "Listening on 127.0.0.1:$sa2_port" "$work/sa2.out"
    if fetch "$sa2_port" && [ -n "$(runs_as_ktla)" ] && stop "$sa2pid"; then
        ok "installed ktla-serve socket-activated as root, dropping to --user ktla: serves, exits 0"
    else
        not_ok "installed ktla-serve socket-activated, dropping to --user ktla" \
            "$(cat "$work/curl.err" "$work/sa2.out" 2>/dev/null)"
    fi
else
    not_ok "installed ktla-serve socket-activated, dropping to --user ktla" "no free port or no systemd-socket-activate"
fi
timing "serve"

# ---- an example against the installed libktla-dev: pkg-config (make) and find_package(ktla)
exdir=/usr/share/doc/libktla-dev/examples/send-file
export CFLAGS="-O2 -g -Wall -Wextra -Werror"
for way in pkg-config find_package; do
    dir=$work/ex-$way
    mkdir -p "$dir"
    if [ $way = pkg-config ]; then
        cp "$exdir"/send-file.c "$exdir"/Makefile "$dir/" 2>"$log/ex-$way" &&
            env -u PKG_CONFIG_PATH make -C "$dir" >>"$log/ex-$way" 2>&1
    else
        cmake -S "$exdir" -B "$dir" >"$log/ex-$way" 2>&1 &&
            cmake --build "$dir" >>"$log/ex-$way" 2>&1
    fi
    built=$?
    name="examples/send-file from libktla-dev, built with $way"
    if [ $built -ne 0 ]; then
        not_ok "$name" "$(tail_of "ex-$way")"
        continue
    fi
    deps=$(env -u LD_LIBRARY_PATH ldd "$dir/send-file" 2>&1)
    if ! grep -qE "libktla\.so\.0 => (/usr)?/lib/$multiarch/libktla\.so\.0" <<<"$deps"; then
        not_ok "$name: links the installed libktla.so.0" "$deps"
        continue
    fi
    env -u LD_LIBRARY_PATH "$dir/send-file" --cert "$work/cert.pem" --key "$work/key.pem" \
        "$www/file.bin" >"$work/ex.out" 2>&1 &
    epid=$!
    pids+=("$epid")
    port=
    wait_for 30 grep -qE '127\.0\.0\.1:[0-9]+' "$work/ex.out" &&
        port=$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/ex.out" | head -n 1 | cut -d: -f2)
    if [ -n "$port" ] && curl -s --max-time 30 --cacert "$work/cert.pem" \
        "https://127.0.0.1:$port/" -o "$work/copy.bin" 2>"$work/curl.err" &&
        cmp -s "$www/file.bin" "$work/copy.bin" && stop "$epid"; then
        ok "$name: links /usr/lib/$multiarch/libktla.so.0, serves the file to curl"
    else
        not_ok "$name: serves the file to curl" "$(cat "$work/curl.err" "$work/ex.out")"
        kill "$epid" 2>/dev/null
    fi
done
timing "examples"

# ---- and away again
if purge; then
    installed_here=0
    left=
    for f in /usr/bin/ktla-serve /usr/include/ktla.h /lib/systemd/system/ktla-serve.service \
        /etc/default/ktla-serve "/usr/lib/$multiarch/libktla.so.0"; do
        [ -e "$f" ] && left="$left $f"
    done
    check "dpkg -P removes the four packages, their files and conffiles" '[ -z "$left" ]' \
        "left:$left"
else
    installed_here=0
    not_ok "dpkg -P removes the four packages" "$(tail -n 15 "$work/purge.log")"
fi
timing "purge"

echo "deb: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
