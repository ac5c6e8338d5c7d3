#!/usr/bin/env bash
# Runs one command inside a real Linux kernel that has kernel TLS, and returns its exit status.
#
# The machines that build and test ktla run a kernel without CONFIG_TLS, so the kernel suite boots
# Debian's generic 6.1 kernel under qemu (software emulation: KVM is not available here). The guest
# mounts the host's root file system read-only over 9p, so every host binary and library is there
# unchanged; a second, writable 9p share carries results back. Only a tiny busybox initramfs is
# built, to load the 9p modules and switch into the host's root.
#
# usage: scripts/vm.sh [--out DIR] [--kernel VERSION] [--] COMMAND [ARGS...]
#   COMMAND runs as root in the guest with cwd = the current directory, HOME=/tmp, and /tmp and
#   /dev/shm as tmpfs. --out DIR (default: build/vm) is the only host directory the guest can write;
#   it is available in the guest at the same path. Exit status: COMMAND's, or 125 if the guest did
#   not report one (failed to boot, crashed, timed out).
#   --kernel VERSION (or KTLA_VM_KERNEL; default: the newest generic kernel in /boot, Debian 12's
#   6.1) picks the guest kernel: a release installed in /boot (6.1.0-56-amd64, or a prefix: 6.1),
#   or one that scripts/kernel-fetch.sh knows (6.17: TLS 1.3 KeyUpdate rekeying needs >= 6.14). A
#   fetched kernel is downloaded once into a cache outside the checkout; its module tree is shared
#   with the guest over the same 9p root and mounted on /lib/modules there, so modprobe and the
#   kernel's own module autoloading (crypto templates, ciphers) work as with the installed kernel.
#   --disk IMAGE[,BPS] attaches the raw image IMAGE as the guest's virtio disk (/dev/vda once the
#   command has loaded virtio_blk: 'modprobe virtio_blk'), without any cache on the host
#   (cache=none), and with BPS qemu throttles it to BPS bytes/s, reads and writes together
#   (throttling.bps-total), as a slow disk would be (bench/coldcache.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/build/vm"
kernel=${KTLA_VM_KERNEL:-}
disk=()
usage="usage: $0 [--out DIR] [--kernel VERSION] [--disk IMAGE[,BPS]] [--] COMMAND [ARGS...]"
while [ $# -gt 0 ]; do
    case "$1" in
    --out) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; out=$2; shift 2 ;;
    --kernel) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; kernel=$2; shift 2 ;;
    --disk)
        [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
        image=$2 bps=
        if [[ $image =~ ^(.*),([0-9]+)$ ]]; then image=${BASH_REMATCH[1]} bps=${BASH_REMATCH[2]}; fi
        [ -r "$image" ] || { echo "vm.sh: --disk: cannot read '$image'" >&2; exit 2; }
        image=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
        # qemu's option syntax: a comma inside a value is written twice.
        disk=(-drive "file=${image//,/,,},if=virtio,format=raw,cache=none${bps:+,throttling.bps-total=$bps}")
        shift 2 ;;
    --) shift; break ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }

# kroot: the directory that holds boot/vmlinuz-$kver and lib/modules/$kver ("" for the host's own).
kroot=
if [ -z "$kernel" ]; then
    kver=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | grep -v cloud | sed 's|.*/vmlinuz-||' | sort -V | tail -n1)
elif [ -r "/boot/vmlinuz-$kernel" ]; then
    kver=$kernel
else
    kver=$(ls "/boot/vmlinuz-$kernel".*-amd64 "/boot/vmlinuz-$kernel"-*-amd64 2>/dev/null | grep -v cloud |
        sed 's|.*/vmlinuz-||' | sort -V | tail -n1 || true)
    if [ -z "$kver" ]; then
        kroot=$("$here/scripts/kernel-fetch.sh" "$kernel") || {
            echo "vm.sh: cannot get kernel '$kernel'" >&2
            exit 125
        }
        kver=$(ls "$kroot"/boot/vmlinuz-* | sed 's|.*/vmlinuz-||')
    fi
fi
[ -n "$kver" ] && [ -r "$kroot/boot/vmlinuz-$kver" ] || {
    echo "vm.sh: no generic Debian kernel in /boot (scripts/deps.sh installs linux-image-amd64)" >&2
    exit 125
}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The initramfs: busybox, the modules 9p needs (in dependency order), and an init.
mkdir -p "$work/root/bin" "$work/root/mods" "$work/root/proc" "$work/root/sys" "$work/root/dev" \
    "$work/root/newroot"
cp /bin/busybox "$work/root/bin/busybox"
modprobe ${kroot:+-d "$kroot"} -S "$kver" -a --show-depends 9p 9pnet_virtio virtio_pci |
    awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$work/modlist"
i=0
while read -r m; do
    i=$((i + 1))
    f="$work/root/mods/$(printf %02d $i)-$(basename "$m")"
    case "$m" in
    *.xz) xz -dc "$m" > "${f%.xz}" ;;
    *.zst) zstd -qdc "$m" > "${f%.zst}" ;;
    *) cp "$m" "$f" ;;
    esac
done < "$work/modlist"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in /mods/*.ko; do /bin/busybox insmod "$m" || echo "init: insmod $m failed"; done
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,ro,cache=loose hostroot /newroot ||
    { echo "init: cannot mount the host root"; /bin/busybox poweroff -f; }
/bin/busybox umount /proc
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /bin/sh "$KTLA_GUEST_INIT"
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet) > "$work/initrd"

# The second stage runs from the host's file system, inside the guest.
cat > "$out/.guest-init" <<INIT2
#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc || echo "guest: mount /proc failed"
mount -t sysfs sys /sys
mkdir -p /dev/shm /dev/pts 2>/dev/null
mount -t tmpfs shm /dev/shm
# A private, writable /tmp; a checkout that lives under the host's /tmp stays visible in it.
mkdir /dev/shm/.host-tmp
mount --bind /tmp /dev/shm/.host-tmp
mount -t tmpfs tmp /tmp
case "$PWD/" in /tmp/*)
    mkdir -p "$PWD"
    mount --bind "/dev/shm/.host-tmp/${PWD#/tmp/}" "$PWD" ;;
esac
mkdir -p "$out" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 results "$out"
ip link set lo up
INIT2
if [ -n "$kroot" ]; then
    # The host's /lib/modules has no tree for a fetched kernel: show the guest the cached one.
    # (Its path is reached through the bind of the host's /tmp made above.)
    case "$kroot/" in
    /tmp/*) guest_kroot=/dev/shm/.host-tmp/${kroot#/tmp/} ;;
    *) guest_kroot=$kroot ;;
    esac
    printf 'mount --bind %q /lib/modules || echo "guest: cannot mount the kernel modules"\n' \
        "$guest_kroot/lib/modules" >> "$out/.guest-init"
fi
cat >> "$out/.guest-init" <<INIT2
modprobe -a tls gcm ccm chacha20poly1305 aesni-intel ghash-clmulni-intel 2>&1 || true
export HOME=/tmp KTLA_IN_GUEST=1
cd "$PWD"
rc=125
( $(printf '%q ' "$@") ) </dev/null
rc=\$?
echo \$rc > "$out/.rc"
sync
echo o > /proc/sysrq-trigger
sleep 5
INIT2
chmod +x "$out/.guest-init"
rm -f "$out/.rc"

timeout "${KTLA_VM_TIMEOUT:-1800}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 2G \
    -nographic -nodefaults -no-reboot -monitor none -serial stdio -net none \
    -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initrd" \
    -append "console=ttyS0 quiet panic=-1 KTLA_GUEST_INIT=$out/.guest-init" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$out,mount_tag=results,security_model=none" "${disk[@]}" </dev/null || true
if [ -s "$out/.rc" ]; then exit "$(cat "$out/.rc")"; fi
echo "vm.sh: the guest did not report an exit status" >&2
exit 125
