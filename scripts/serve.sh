#!/usr/bin/env bash
# README's first command: installs what is missing to build and serve (scripts/deps.sh serve),
# builds ktla-serve and the shared library (libktla.so), and serves DIR with
# ktla-serve over HTTPS, access log on standard output. Without DIR it serves a small demo
# directory made under build/.
#
# usage: scripts/serve.sh [DIR] [ktla-serve options...]      (build/ktla-serve --help lists them)
#   e.g. scripts/serve.sh ~/www --listen 0.0.0.0:8443 --cert cert.pem --key key.pem
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${KTLA_BUILD_DIR:-$repo/build}

"$repo/scripts/deps.sh" serve
# Only what serving needs is installed (no Criterion), so the test suites are built only where
# their dependencies are already there (scripts/test.sh installs them).
tests=OFF
pkg-config --exists criterion 2>/dev/null && tests=ON
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKTLA_TESTS=$tests >/dev/null
cmake --build "$build" -j"$(nproc)" --target ktla-serve ktla_shared >/dev/null

dir=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    dir=$1
    shift
fi
if [ -z "$dir" ]; then
    dir=$build/serve-demo
    if [ ! -f "$dir/index.html" ]; then
        mkdir -p "$dir/docs"
        head -c $((10 << 20)) /dev/urandom >"$dir/10MiB.bin"
        sha256sum "$dir/10MiB.bin" | sed 's|  .*/|  |' >"$dir/10MiB.bin.sha256"
        cp "$repo/README.md" "$dir/docs/README.md"
        cat >"$dir/index.html" <<'HTML'
<!doctype html>
<meta charset="utf-8">
<title>ktla-serve</title>
<h1>ktla-serve works</h1>
<p>This page came over TLS; the server's first lines say whether the kernel carried the records.</p>
<ul>
<li><a href="10MiB.bin">10MiB.bin</a> (random; <a href="10MiB.bin.sha256">its SHA-256</a>)</li>
<li><a href="docs/README.md">README.md</a></li>
</ul>
HTML
    fi
fi
exec "$build/ktla-serve" --access-log - "$@" "$dir"
