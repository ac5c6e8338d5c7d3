#!/usr/bin/env bash
# ktla installed as a C developer installs it, and used as one would: configures and builds this
# source tree in a temporary directory, `cmake --install`s it into a temporary prefix, then builds
# every program in examples/ as a separate project against that prefix, each of these ways:
#   pkg-config         make (libktla.so), make STATIC=1 (libktla.a + ktla.pc's Requires.private)
#   find_package(ktla) ktla::ktla, ktla::ktla_static
#   add_subdirectory   this source tree built along with the example
# and runs each build against a real TLS client on loopback (openssl s_client for echo, curl for
# send-file and shared-ring; userspace mode where the kernel has no TLS). Also checks that the
# dynamic symbols of the installed libktla.so are exactly the KTLA_API functions of
# include/ktla.h (parsed now, not listed here), and that each of them has a man page.
#
# usage: tests/install/install.sh          (KTLA_INSTALL_JOBS: build jobs, default nproc)
# Prints TAP ("ok N - ..."), then "install: N passed, N failed, 0 skipped". Exit status 1 on
# failure. No sleeps to wait for things: every wait polls with a deadline.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
jobs=${KTLA_INSTALL_JOBS:-$(nproc)}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

. "$here/../tap.sh"

prefix=$work/prefix
build=$work/build
log=$work/log
mkdir -p "$log"

# run_logged NAME COMMAND...: runs the command with its output in $log/NAME; on failure the
# output's tail is the detail of the failing test line.
run_logged() {
    local name=$1; shift
    "$@" >"$log/$name" 2>&1
}
tail_of() { tail -n 15 "$log/$1"; }

# ---- build and install
if run_logged configure cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKTLA_TESTS=OFF -DCMAKE_INSTALL_PREFIX=/nonexistent &&
    run_logged build cmake --build "$build" -j"$jobs"; then
    ok "ktla configures and builds (library and programs)"
else
    not_ok "ktla configures and builds" "$(tail_of configure; tail_of build)"
fi
# The prefix given at install time, not the configured one, must end up in ktla.pc.
if run_logged install cmake --install "$build" --prefix "$prefix"; then
    ok "cmake --install into a temporary prefix"
else
    not_ok "cmake --install into a temporary prefix" "$(tail_of install)"
fi

libdir=$(find "$prefix" -name libktla.a -printf '%h\n' 2>/dev/null | head -n 1)
libdir=${libdir:-$prefix/lib}
major=$(sed -n 's/^project(ktla VERSION \([0-9]*\)\..*/\1/p' "$repo/CMakeLists.txt")
missing=
for f in include/ktla.h "${libdir#"$prefix"/}/libktla.so.$major" "${libdir#"$prefix"/}/libktla.so" \
    "${libdir#"$prefix"/}/libktla.a" "${libdir#"$prefix"/}/pkgconfig/ktla.pc" \
    "${libdir#"$prefix"/}/cmake/ktla/ktlaConfig.cmake" \
    "${libdir#"$prefix"/}/cmake/ktla/ktlaConfigVersion.cmake" \
    bin/ktla-serve bin/ktla-bench bin/ktla-echo share/man/man7/ktla.7 \
    share/man/man8/ktla-serve.8 share/man/man1/ktla-bench.1; do
    [ -e "$prefix/$f" ] || missing="$missing $f"
done
check "installed: header, libktla.so.$major, libktla.a, ktla.pc, CMake package, programs, man pages" \
    '[ -z "$missing" ]' "missing:$missing"

soname=$(readelf -d "$libdir/libktla.so" 2>&1 | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
check "libktla.so's soname is libktla.so.$major" '[ "$soname" = "libktla.so.$major" ]' \
    "soname: '$soname'"

if "$prefix/bin/ktla-serve" --version >"$log/version" 2>&1 &&
    "$prefix/bin/ktla-bench" --help >>"$log/version" 2>&1; then
    ok "the installed ktla-serve and ktla-bench run"
else
    not_ok "the installed ktla-serve and ktla-bench run" "$(tail_of version)"
fi

export PKG_CONFIG_PATH=$libdir/pkgconfig
pc_flags=$(pkg-config --cflags --libs ktla 2>&1 | sed 's/ *$//')
pc_static=$(pkg-config --static --libs ktla 2>&1)
check "pkg-config ktla: the prefix's paths; --static adds OpenSSL and liburing" \
    '[ "$pc_flags" = "-I$prefix/include -L$libdir -lktla" ] &&
     [[ " $pc_static " == *" -lssl "*" -lcrypto "*" -luring "* ]]' \
    "--cflags --libs: $pc_flags"$'\n'"--static --libs: $pc_static"

# ---- the ABI: exported symbols are exactly the header's KTLA_API functions
api=$(tr '\n' ' ' <"$repo/include/ktla.h" | grep -oE 'KTLA_API [^;{}()]*\(' |
    grep -oE 'ktla_[A-Za-z0-9_]+ *\($' | tr -d ' (' | sort -u)
exported=$(nm -D --defined-only "$libdir/libktla.so" 2>/dev/null | awk '{ print $NF }' | sort -u)
check "nm -D --defined-only libktla.so equals the $(wc -w <<<"$api") KTLA_API functions of ktla.h" \
    '[ -n "$api" ] && [ "$api" = "$exported" ]' \
    "$(diff <(echo "$api") <(echo "$exported") | grep '^[<>]' |
        sed 's/^</only in ktla.h:/; s/^>/only exported:/')"

# ---- a man page for every KTLA_API function, and every page renders without a warning
nopage=
for f in $api; do
    page=$prefix/share/man/man3/$f.3
    if [ ! -f "$page" ] || ! MANWIDTH=80 man -M "$prefix/share/man" 3 "$f" 2>/dev/null |
        grep -q "$f"; then
        nopage="$nopage $f"
    fi
done
check "every KTLA_API function has a man page in share/man/man3 (man -M PREFIX 3 NAME)" \
    '[ -z "$nopage" ]' "no page:$nopage"
warnings=$(cd "$prefix/share/man" 2>&1 && for p in man*/*; do
    grep -q '^\.so ' "$p" && continue
    groff -man -Tutf8 -ww -z "$p" 2>&1 | sed "s|^|$p: |"
done)
check "every installed man page formats without a groff warning" '[ -z "$warnings" ]' "$warnings"

# ---- the examples, built every way
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 2 \
    -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
head -c $(((1 << 20) + 1)) /dev/urandom >"$work/file.bin"
export CFLAGS="-O2 -g -Wall -Wextra -Werror"

# build_example EXAMPLE WAY: builds examples/EXAMPLE into $work/ex/EXAMPLE-WAY; prints the binary.
build_example() {
    local ex=$1 way=$2 dir=$work/ex/$1-$2
    mkdir -p "$dir"
    case $way in
    pkgconfig | pkgconfig-static)
        cp "$repo/examples/$ex/"*.c "$repo/examples/$ex/Makefile" "$dir/"
        local static=0
        [ "$way" = pkgconfig-static ] && static=1
        make -C "$dir" STATIC=$static >"$log/$ex-$way" 2>&1
        ;;
    find_package | find_package-static)
        local static=OFF
        [ "$way" = find_package-static ] && static=ON
        cmake -S "$repo/examples/$ex" -B "$dir" -DCMAKE_PREFIX_PATH="$prefix" \
            -DKTLA_STATIC=$static >"$log/$ex-$way" 2>&1 &&
            cmake --build "$dir" -j"$jobs" >>"$log/$ex-$way" 2>&1
        ;;
    add_subdirectory)
        cmake -S "$repo/examples/$ex" -B "$dir" -DKTLA_SOURCE_DIR="$repo" >"$log/$ex-$way" 2>&1 &&
            cmake --build "$dir" -j"$jobs" >>"$log/$ex-$way" 2>&1
        ;;
    esac
}

# A plain `cc $(pkg-config ...)` binary has no RUNPATH, so it finds the prefix's libktla.so
# through LD_LIBRARY_PATH; CMake's builds carry a RUNPATH, which LD_LIBRARY_PATH would override.
ld_path_for() { [ "$1" = pkgconfig ] && echo "$libdir"; }

# links_as BINARY WAY: the binary takes libktla from where that way says (ldd), or links it in.
links_as() {
    local deps
    deps=$(LD_LIBRARY_PATH=$(ld_path_for "$2") ldd "$1" 2>&1)
    case $2 in
    *static) ! grep -q libktla <<<"$deps" && grep -q liburing <<<"$deps" ;;
    add_subdirectory) grep -q "libktla.so.$major => $work/ex/.*/libktla.so.$major" <<<"$deps" ;;
    *) grep -q "libktla.so.$major => $libdir/libktla.so.$major" <<<"$deps" ;;
    esac
}

# start WAY BINARY ARGS...: starts a server, waits for the port it prints; sets $port and $spid.
start() {
    local out=$work/server.out ld_path
    ld_path=$(ld_path_for "$1")
    shift
    : >"$out"
    LD_LIBRARY_PATH=$ld_path "$@" --cert "$work/cert.pem" --key "$work/key.pem" >"$out" \
        2>"$work/server.err" &
    spid=$!
    pids+=("$spid")
    port=
    wait_for 30 grep -qE '127\.0\.0\.1:[0-9]+' "$out" &&
        port=$(grep -oE '127\.0\.0\.1:[0-9]+' "$out" | head -n 1 | cut -d: -f2)
    [ -n "$port" ]
}

# stop: SIGTERM, then the server must exit 0 within 10 s (it tidies up its ring first).
exited() { [ ! -e "/proc/$1" ] || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
stop() {
    kill -TERM "$spid" 2>/dev/null
    wait_for 10 exited "$spid" || kill -KILL "$spid" 2>/dev/null
    wait "$spid"
}

# try_echo: a line through openssl s_client comes back; the connection ran in userspace or kernel
# mode as the machine allows and the server says which.
try_echo() {
    local line=echo-test-$RANDOM$RANDOM
    rm -f "$work/in" && mkfifo "$work/in"
    timeout 30 openssl s_client -connect "127.0.0.1:$port" -quiet -no_ign_eof -nocommands \
        -verify_return_error \
        -CAfile "$work/cert.pem" <"$work/in" >"$work/client.out" 2>"$work/client.err" &
    local cpid=$!
    exec 7>"$work/in"
    echo "$line" >&7
    wait_for 20 grep -qx "$line" "$work/client.out"
    local got=$?
    exec 7>&-
    wait "$cpid" 2>/dev/null
    [ $got -eq 0 ] && grep -qE 'tx=(userspace|kernel)' "$work/server.out"
}

try_send_file() {
    curl -s --max-time 60 --cacert "$work/cert.pem" "https://127.0.0.1:$port/" \
        -o "$work/copy.bin" 2>"$work/client.err" &&
        cmp -s "$work/file.bin" "$work/copy.bin"
}

try_shared_ring() {
    curl -s --max-time 60 --cacert "$work/cert.pem" "https://127.0.0.1:$port/a" \
        "https://127.0.0.1:$port/b" >"$work/client.out" 2>"$work/client.err" &&
        grep -q '^hello from a shared ring: connection 1, tick' "$work/client.out" &&
        grep -q '^hello from a shared ring: connection 2, tick' "$work/client.out"
}

declare -A binary=([echo]=echo [send-file]=send-file [shared-ring]=shared-ring)
declare -A args=([echo]="" [send-file]="$work/file.bin" [shared-ring]="")
declare -A client=([echo]="openssl s_client: a line echoed" [send-file]="curl: 1 MiB + 1 byte, same bytes"
    [shared-ring]="curl: two requests answered")

for ex in echo send-file shared-ring; do
    for way in pkgconfig pkgconfig-static find_package find_package-static add_subdirectory; do
        name="examples/$ex, $way"
        if ! build_example "$ex" "$way"; then
            not_ok "$name: builds" "$(tail_of "$ex-$way")"
            continue
        fi
        bin=$work/ex/$ex-$way/${binary[$ex]}
        if ! links_as "$bin" "$way"; then
            not_ok "$name: builds and links libktla as that way says" \
                "$(LD_LIBRARY_PATH=$(ld_path_for "$way") ldd "$bin" 2>&1)"
            continue
        fi
        # shellcheck disable=SC2086 # args are one word or none
        if ! start "$way" "$bin" ${args[$ex]}; then
            not_ok "$name: builds, starts" "$(cat "$work/server.out" "$work/server.err")"
            continue
        fi
        if ! "try_${ex//-/_}"; then
            not_ok "$name: ${client[$ex]}" \
                "$(cat "$work/client.err" "$work/server.out" "$work/server.err" 2>/dev/null)"
            stop
            continue
        fi
        if stop; then
            ok "$name: builds, ${client[$ex]}, stops on SIGTERM"
        else
            not_ok "$name: stops on SIGTERM with status 0" "$(cat "$work/server.err")"
        fi
    done
done

echo "install: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
