#!/usr/bin/env bash
# Downloads a Debian kernel package that the build machine does not have installed, verifies it,
# and unpacks it into a cache outside the checkout, so that scripts/vm.sh can boot it.
#
# usage: scripts/kernel-fetch.sh VERSION
#   VERSION is an alias (6.17) or the kernel release it stands for (6.17.13+deb13-amd64).
#   Prints the cache directory: it holds boot/vmlinuz-RELEASE and lib/modules/RELEASE (with a
#   modules.dep made by depmod; the package itself ships none). Progress goes to stderr.
#
# Idempotent: when the directory is there and its files still match the package's md5sums, nothing
# is downloaded (no network at all). Otherwise the package is fetched again.
#
# Trust: the suite's InRelease must carry a good signature by a key in Debian's archive keyring
# (/usr/share/keyrings/debian-archive-keyring.gpg, from debian-archive-keyring, checked with gpgv;
# both come with apt on every Debian system), name the expected suite and still be within its
# Valid-Until date. Only the signed text is used: it gives the SHA256 of Packages.xz, which gives
# the SHA256 of the .deb, which is checked before dpkg-deb unpacks it. The .deb's own md5sums
# (inside its signed-for control data) are kept and checked on every later run.
#
# Environment: KTLA_KERNEL_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/ktla/kernels),
# KTLA_DEBIAN_MIRROR (default https://deb.debian.org/debian), KTLA_DEBIAN_KEYRING.
set -euo pipefail

die() { echo "kernel-fetch.sh: $*" >&2; exit 1; }
say() { echo "kernel-fetch.sh: $*" >&2; }

[ $# -eq 1 ] || { echo "usage: $0 VERSION   (e.g. 6.17)" >&2; exit 2; }

# alias -> kernel release, Debian suite and component. Add a line to offer another kernel.
case "$1" in
6.17 | 6.17.13+deb13-amd64) kver=6.17.13+deb13-amd64 suite=trixie-backports component=main ;;
*) die "unknown kernel '$1' (known: 6.17)" ;;
esac
pkg=linux-image-$kver
arch=amd64

cache=${KTLA_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ktla/kernels}
dest=$cache/$kver
mirror=${KTLA_DEBIAN_MIRROR:-https://deb.debian.org/debian}
keyring=${KTLA_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

# A tree is usable when the stamp of a finished unpack is there and every file still matches.
usable() {
    [ -f "$1/.ktla-fetch/stamp" ] && [ -r "$1/boot/vmlinuz-$kver" ] &&
        [ -f "$1/lib/modules/$kver/modules.dep" ] &&
        (cd "$1" && md5sum --quiet --strict -c .ktla-fetch/md5sums >/dev/null 2>&1)
}

if usable "$dest"; then
    echo "$dest"
    exit 0
fi

for t in curl gpgv xz sha256sum md5sum dpkg-deb depmod flock; do
    command -v "$t" >/dev/null || die "needs $t (scripts/deps.sh installs what the build needs)"
done
[ -r "$keyring" ] || die "no Debian archive keyring at $keyring (package debian-archive-keyring)"

mkdir -p "$cache"
# One fetch at a time per cache; a second caller waits, then finds the tree ready.
exec 9>"$cache/.lock"
flock 9
if usable "$dest"; then
    echo "$dest"
    exit 0
fi

tmp=$(mktemp -d "$cache/.fetch-$kver.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

get() { # URL FILE
    curl -fsSL --retry 3 --connect-timeout 20 -o "$2" "$1" || die "download failed: $1"
}
sha256_is() { # FILE HASH
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# 1. The signed Release.
say "checking $suite's signed index ($mirror)"
get "$mirror/dists/$suite/InRelease" "$tmp/InRelease"
gpgv --keyring "$keyring" --status-fd 3 --output "$tmp/Release" "$tmp/InRelease" \
    3>"$tmp/gpgv.status" 2>"$tmp/gpgv.log" ||
    { cat "$tmp/gpgv.log" >&2; die "bad or unknown signature on $suite's InRelease"; }
grep -q '^\[GNUPG:\] VALIDSIG ' "$tmp/gpgv.status" || die "no valid signature on $suite's InRelease"
signer=$(sed -n 's/^\[GNUPG:\] GOODSIG [0-9A-F]* //p' "$tmp/gpgv.status" | paste -sd';')
field() { sed -n "s/^$1: //p" "$tmp/Release" | head -n1; }
[ "$(field Codename)" = "$suite" ] || die "InRelease is for '$(field Codename)', not $suite"
until=$(field Valid-Until)
if [ -n "$until" ]; then
    [ "$(date -u -d "$until" +%s)" -ge "$(date -u +%s)" ] ||
        die "$suite's InRelease expired on $until (stale mirror, or a wrong clock)"
fi

# 2. The package index, by the hash the signed Release gives (by-hash: no race with a mirror sync).
index=$component/binary-$arch/Packages.xz
index_sha=$(awk -v f="$index" '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == f { print $1 }' \
    "$tmp/Release")
[ -n "$index_sha" ] || die "$suite's Release lists no $index"
curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/Packages.xz" \
    "$mirror/dists/$suite/$component/binary-$arch/by-hash/SHA256/$index_sha" 2>/dev/null ||
    get "$mirror/dists/$suite/$index" "$tmp/Packages.xz"
sha256_is "$tmp/Packages.xz" "$index_sha" || die "$index does not match the signed Release"

# 3. The package: the newest stanza for exactly this name.
xz -dc "$tmp/Packages.xz" | awk -v RS= -v p="$pkg" '
    { n = split($0, l, "\n"); name = ""; ver = ""; file = ""; sha = ""; size = ""
      for (i = 1; i <= n; i++) {
          if (l[i] ~ /^Package: /) name = substr(l[i], 10)
          else if (l[i] ~ /^Version: /) ver = substr(l[i], 10)
          else if (l[i] ~ /^Filename: /) file = substr(l[i], 11)
          else if (l[i] ~ /^SHA256: /) sha = substr(l[i], 9)
          else if (l[i] ~ /^Size: /) size = substr(l[i], 7)
      }
      if (name == p) print ver, file, sha, size }' | sort -V -k1,1 | tail -n1 > "$tmp/entry"
read -r version filename deb_sha size < "$tmp/entry" ||
    die "$suite no longer has $pkg (the archive keeps only recent builds: update the alias table in $0)"
case "$deb_sha" in *[!0-9a-f]* | "") die "no SHA256 for $pkg in $index" ;; esac

say "downloading $pkg $version ($((size / 1048576)) MiB)"
get "$mirror/$filename" "$tmp/pkg.deb"
sha256_is "$tmp/pkg.deb" "$deb_sha" || die "$filename does not match its SHA256 in the signed index"

# 4. Unpack, index the modules, and record what was verified.
say "unpacking"
mkdir -p "$tmp/root/.ktla-fetch"
dpkg-deb -x "$tmp/pkg.deb" "$tmp/root"
dpkg-deb -e "$tmp/pkg.deb" "$tmp/control"
rm -f "$tmp/pkg.deb"
# Debian 13 ships the modules under usr/lib; depmod and modprobe -d look under lib.
if [ ! -e "$tmp/root/lib" ] && [ -d "$tmp/root/usr/lib/modules" ]; then ln -s usr/lib "$tmp/root/lib"; fi
[ -r "$tmp/root/boot/vmlinuz-$kver" ] || die "$pkg has no boot/vmlinuz-$kver"
[ -d "$tmp/root/lib/modules/$kver" ] || die "$pkg has no modules for $kver"
depmod -b "$tmp/root" "$kver"
cp "$tmp/control/md5sums" "$tmp/root/.ktla-fetch/md5sums"
cat > "$tmp/root/.ktla-fetch/stamp" <<EOF
package: $pkg
version: $version
url: $mirror/$filename
sha256: $deb_sha
size: $size
index: $mirror/dists/$suite/$index sha256 $index_sha
release signed by: $signer
fetched: $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
(cd "$tmp/root" && md5sum --quiet --strict -c .ktla-fetch/md5sums) || die "unpacked files do not match md5sums"

rm -rf "$dest"
mv "$tmp/root" "$dest"
say "$pkg $version ready (release signed by: $signer)"
echo "$dest"
