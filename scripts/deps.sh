#!/usr/bin/env bash
# Installs the Debian packages a job needs. Idempotent: when everything is there it only checks
# (one dpkg-query call for all packages, a few tens of milliseconds). Needs root (or sudo) only
# when something is missing.
#
# usage: scripts/deps.sh [serve|all]
#   serve  what building and running ktla-serve needs (scripts/serve.sh)
#   all    (the default) everything: building, testing (the guest kernel included), fuzzing,
#          benchmarking and the Debian packages (scripts/test.sh)
set -euo pipefail

serve=(
    # build
    build-essential cmake pkg-config libssl-dev liburing-dev
    # ktla-serve's request parser (http_parser 2.9, fuzzed by OSS-Fuzz)
    libhttp-parser-dev
    # ktla-serve's --config files (INI: key = value lines)
    libinih-dev
    # ktla-serve's media types (/etc/mime.types)
    media-types
    # ktla-serve's HTTP/2: framing, HPACK, flow control and stream states (src/serve/h2.c)
    libnghttp2-dev
)
rest=(
    # fuzzing: clang with libFuzzer (scripts/fuzz.sh)
    clang libclang-rt-14-dev
    # tests (man-db and groff-base: tests/install/ renders every installed man page)
    libcriterion-dev openssl gnutls-bin curl man-db groff-base
    # the HTTP/2 clients of the interop suite: h2load (and nghttp)
    nghttp2-client
    # tests/serve/service.sh: systemd-socket-activate starts ktla-serve as systemd would
    systemd
    # the interop suite's Go client (tests/interop/goclient.go: standard library only)
    golang-go
    # the Debian packages (debian/, tests/install/deb.sh): dpkg-buildpackage (dpkg-dev, in
    # build-essential) with debhelper, checked with lintian; ktla-serve's postinst needs adduser,
    # and deb.sh checks the units with systemd-analyze and systemd-socket-activate (systemd)
    debhelper lintian adduser
    # the guest kernel for the kernel suite: qemu with Debian's generic kernel (it has 9p, which
    # mounts the host's file system as the guest's root), and busybox for the initramfs
    qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2
    # benchmarks (e2fsprogs: mkfs.ext4 makes bench/coldcache.sh's disk image)
    nginx gnuplot-nox e2fsprogs
    # tests/serve/browser.sh: Debian's Chromium, driven by playwright-core from npm, so that no
    # browser is downloaded. playwright-core wants Node.js 20+ with npm: nodesource's nodejs package
    # (the same name) has both; Debian 12's own is 18, without npm, and browser.sh says so
    chromium nodejs
)

case "${1:-all}" in
serve) packages=("${serve[@]}") ;;
all) packages=("${serve[@]}" "${rest[@]}") ;;
*)
    echo "usage: $0 [serve|all]" >&2
    exit 2
    ;;
esac

# One query for all of them (a package dpkg has never heard of is reported on stderr and left out
# of the output), then the comparison in bash: no process per package.
declare -A installed=()
while read -r status name; do
    [ "$status" = installed ] && installed[${name%%:*}]=1
done < <(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for p in "${packages[@]}"; do
    [ -n "${installed[$p]:-}" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
