#!/usr/bin/env bash
# Installs every Debian package that building, testing (the guest kernel included) and
# benchmarking ktla needs. Idempotent: when everything is there it only checks, in well under a
# second. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
    # build
    build-essential cmake pkg-config libssl-dev liburing-dev
    # ktla-serve's request parser (http_parser 2.9, fuzzed by OSS-Fuzz)
    libhttp-parser-dev
    # fuzzing: clang with libFuzzer (scripts/fuzz.sh)
    clang libclang-rt-14-dev
    # tests
    libcriterion-dev openssl gnutls-bin curl
    # the interop suite's Go client (tests/interop/goclient.go: standard library only)
    golang-go
    # the guest kernel for the kernel suite: qemu with Debian's generic kernel (it has 9p, which
    # mounts the host's file system as the guest's root), and busybox for the initramfs
    qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2
    # benchmarks and the file server
    nginx gnuplot-nox media-types
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
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
