#!/usr/bin/env bash
# Builds the test guest: OUTDIR/vmlinux (uncompressed PVH kernel, boots
# fastest), OUTDIR/vmlinuz (the same kernel as Debian ships it) and
# OUTDIR/initrd.gz.
#
#   vm-images/build.sh [OUTDIR]        (default OUTDIR: vm-images/out)
#
# The kernel and its modules come from Debian's linux-image-6.1.0-*-amd64
# package (downloaded with apt-get download, unpacked with dpkg -x, never
# installed). The userland is busybox-static plus iscsiadm/iscsid (open-iscsi)
# and mke2fs/e2fsck (e2fsprogs) with the shared libraries ldd lists, copied
# from this host. The guest's /init is vm-images/guest/init.
#
# Cached: when OUTDIR already holds outputs built from the same kernel package
# and newer than every input (this script, guest/*, the copied host binaries),
# nothing is done. TWINLUN_VM_REBUILD=1 forces a rebuild.
# TWINLUN_VM_KERNEL_PKG=linux-image-6.1.0-NN-amd64 picks another kernel package.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${1:-$here/out}
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'build.sh: %s\n' "$*" >&2; }

# shellcheck source=install-deps.sh
source "$here/install-deps.sh"
vm_install_deps || die "host packages missing (see above)"

for tool in apt-get apt-cache dpkg dpkg-deb cpio gzip xz depmod modinfo ldd find sort flock od; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done

# Modules the guest loads, in this order (dependencies found by modinfo are
# put before the module that needs them). crc32c_generic comes first:
# iscsi_tcp cannot create a connection (digests) without a crc32c provider.
# The crct10dif / crc64-rocksoft generic providers are the soft dependencies
# of crc-t10dif and crc64-rocksoft, which sd_mod needs through t10-pi.
modules=(
    crc32c_generic
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    failover net_failover virtio_net virtio_blk
    scsi_common scsi_mod scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp
    crc64 crct10dif_common crct10dif_generic crc_t10dif
    crc64_rocksoft_generic crc64_rocksoft t10_pi sd_mod
    crc16 mbcache jbd2 ext4
)

# Programs copied from the host with their libraries.
host_bins=(/usr/sbin/iscsiadm /usr/sbin/iscsid /sbin/mke2fs /sbin/e2fsck)
busybox_bin=/bin/busybox

for f in "${host_bins[@]}" "$busybox_bin"; do
    [[ -x $f ]] || die "$f not found (packages: open-iscsi, e2fsprogs, busybox-static)"
done
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$busybox_bin" || die "$busybox_bin is not static: install busybox-static"

mkdir -p "$outdir/cache"
outdir=$(cd "$outdir" && pwd)
exec 9>"$outdir/.lock"
flock 9   # one build per OUTDIR at a time

# Pick the kernel package: what linux-image-amd64 depends on now.
kernel_pkg=${TWINLUN_VM_KERNEL_PKG:-}
pick_kernel() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '!found && /Depends: linux-image-[0-9]/ { print $2; found = 1 }'
}
if [[ -z $kernel_pkg ]]; then
    kernel_pkg=$(pick_kernel)
    if [[ -z $kernel_pkg ]]; then
        vm__apt_update_once || die "apt-get update failed"
        kernel_pkg=$(pick_kernel)
    fi
    [[ -n $kernel_pkg ]] || die "apt knows no linux-image-amd64 dependency (is this Debian bookworm?)"
fi
[[ $kernel_pkg =~ ^linux-image-6\.1\.0-[0-9]+-amd64$ ]] ||
    die "kernel package '$kernel_pkg' is not linux-image-6.1.0-*-amd64"

# Cache check.
stamp="$outdir/build-stamp"
inputs=("$here/build.sh" "$here/install-deps.sh" "$here"/guest/* "${host_bins[@]}" "$busybox_bin")
if [[ ${TWINLUN_VM_REBUILD:-0} != 1 && -s $outdir/initrd.gz && -s $outdir/vmlinuz && -s $outdir/vmlinux && -f $stamp ]] &&
    [[ $(cat "$stamp") == "$kernel_pkg" ]]; then
    newer=$(find "${inputs[@]}" -newer "$outdir/initrd.gz" -print -quit)
    if [[ -z $newer ]]; then
        log "up to date: $outdir/{vmlinux,vmlinuz,initrd.gz} ($kernel_pkg)"
        exit 0
    fi
    log "rebuilding: $newer changed"
fi

# Download the kernel package once into the cache.
deb=$(find "$outdir/cache" -maxdepth 1 -name "${kernel_pkg}_*.deb" | sort | tail -n 1)
if [[ -z $deb ]]; then
    log "downloading $kernel_pkg"
    # (apt warns that root downloads unsandboxed: true and harmless here.)
    if ! (cd "$outdir/cache" && apt-get download -q "$kernel_pkg" 2> >(grep -v unsandboxed >&2)); then
        vm__apt_update_once || die "apt-get update failed"
        (cd "$outdir/cache" && apt-get download -q "$kernel_pkg") || die "apt-get download $kernel_pkg failed"
    fi
    deb=$(find "$outdir/cache" -maxdepth 1 -name "${kernel_pkg}_*.deb" | sort | tail -n 1)
    [[ -n $deb ]] || die "apt-get download left no ${kernel_pkg}_*.deb in $outdir/cache"
fi

work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"
# The unpacked package is kept next to the .deb, so editing guest/init
# rebuilds in seconds.
kx="$outdir/cache/$(basename "$deb" .deb)"
if [[ ! -f $kx/.unpacked ]]; then
    log "unpacking $(basename "$deb")"
    # Drop older unpacked trees (directories only; the .deb files stay).
    find "$outdir/cache" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' -exec rm -rf {} +
    mkdir -p "$kx"
    dpkg -x "$deb" "$kx" || die "dpkg -x $deb failed"
    touch "$kx/.unpacked"
fi

kver=$(find "$kx/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | tail -n 1)
[[ -n $kver && -f $kx/boot/vmlinuz-$kver ]] || die "no vmlinuz/modules found in $deb"
kmods="$kx/lib/modules/$kver"

# Index module files by name (modinfo and depmod treat '-' and '_' alike).
declare -A modfile
while IFS= read -r path; do
    name=$(basename "$path"); name=${name%%.ko*}; name=${name//-/_}
    modfile[$name]=${path#"$kmods"/}
done < <(find "$kmods/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

# Depth-first: a module's dependencies go before it.
declare -A seen
order=()
add_module() {
    local name=${1//-/_} dep
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    [[ -n ${modfile[$name]:-} ]] || die "module $name not found in $kernel_pkg"
    local deps
    deps=$(modinfo -F depends "$kmods/${modfile[$name]}") || die "modinfo failed on ${modfile[$name]}"
    for dep in ${deps//,/ }; do add_module "$dep"; done
    order+=("$name")
}
for m in "${modules[@]}"; do add_module "$m"; done

mroot="$root/lib/modules/$kver"
mkdir -p "$mroot"
: > "$root/etc-modules-order"
for name in "${order[@]}"; do
    src="$kmods/${modfile[$name]}"
    rel=${modfile[$name]%%.ko*}.ko
    mkdir -p "$mroot/$(dirname "$rel")"
    case $src in
        *.ko) cp "$src" "$mroot/$rel" ;;
        *.ko.xz) command -v xz >/dev/null || die "xz needed to unpack $src"; xz -dc "$src" > "$mroot/$rel" ;;
        *.ko.zst) command -v zstd >/dev/null || die "zstd needed to unpack $src"; zstd -qdc "$src" > "$mroot/$rel" ;;
        *.ko.gz) gzip -dc "$src" > "$mroot/$rel" ;;
    esac
    echo "$rel" >> "$root/etc-modules-order"
done
cp "$root/etc-modules-order" "$mroot/modules.order"
cp "$kmods/modules.builtin" "$kmods/modules.builtin.modinfo" "$mroot/" 2>/dev/null || true
depmod -b "$root" "$kver" || die "depmod -b failed"
[[ -s $mroot/modules.dep ]] || die "depmod wrote no modules.dep"

# Userland: busybox applets, then host programs with their libraries.
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/iscsi/nodes,etc/iscsi/send_targets,etc/iscsi/ifaces,run/lock/iscsi,var/lib/iscsi,var/lock,proc,sys,dev,tmp,mnt,root}
mv "$root/etc-modules-order" "$root/etc/twinlun-modules"
cp "$busybox_bin" "$root/bin/busybox"
while IFS= read -r applet; do
    [[ -e $root/$applet || -L $root/$applet ]] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
done < <("$busybox_bin" --list-full)

copy_with_libs() {
    local bin=$1 lib
    rm -f "$root$bin"
    mkdir -p "$root$(dirname "$bin")"
    cp -L "$bin" "$root$bin"
    # ldd lines: "libx.so => /path (addr)" and "/lib64/ld-linux-x86-64.so.2 (addr)".
    while IFS= read -r lib; do
        [[ -e $root$lib ]] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}
for bin in "${host_bins[@]}"; do copy_with_libs "$bin"; done
[[ -e $root/lib64/ld-linux-x86-64.so.2 ]] || die "dynamic loader was not copied (ldd output unexpected)"
for alias in mkfs.ext4 mkfs.ext2; do ln -sf mke2fs "$root/sbin/$alias"; done
ln -sf e2fsck "$root/sbin/fsck.ext4"
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$root/etc/"

printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'InitiatorName=iqn.2026-11.io.twinlun:guest\n' > "$root/etc/iscsi/initiatorname.iscsi"
cp "$here/guest/iscsid.conf" "$root/etc/iscsi/iscsid.conf"
install -m 0755 "$here/guest/init" "$root/init"
printf '%s\n' "$kver" > "$root/etc/twinlun-kernel"
if [[ $(id -u) == 0 ]]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
fi

log "packing initramfs (${#order[@]} modules, kernel $kver)"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) > "$work/initrd.gz"
cp "$kx/boot/vmlinuz-$kver" "$work/vmlinuz"

# Under TCG, the bzImage's own XZ decompressor takes 10-15 s of every boot.
# The kernel is built with CONFIG_PVH, so QEMU can load the uncompressed ELF
# directly (-kernel vmlinux): unpack it once here. The payload is the XZ
# stream inside the bzImage; find its magic and decompress that one stream.
grep -q '^CONFIG_PVH=y' "$kx/boot/config-$kver" || die "kernel $kver lacks CONFIG_PVH (needed for -kernel vmlinux)"
command -v xz >/dev/null || die "xz not found (apt-get install xz-utils)"
xz_at=$(LC_ALL=C grep -m 1 -obUaP '\xfd7zXZ\x00' "$work/vmlinuz" | cut -d: -f1)
xz_at=${xz_at%%$'\n'*}   # the first match, should one binary "line" hold several
[[ -n $xz_at ]] || die "no XZ stream in vmlinuz-$kver (kernel compression changed?)"
# (xz stops reading after its stream: no pipe, or tail's SIGPIPE fails it.)
tail -c +$((xz_at + 1)) "$work/vmlinuz" > "$work/payload.xz"
xz -dc --single-stream < "$work/payload.xz" > "$work/vmlinux" ||
    die "unpacking the kernel's XZ payload failed"
rm -f "$work/payload.xz"
[[ $(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ') == 7f454c46 ]] ||
    die "the unpacked kernel payload is not an ELF file"

mv -f "$work/vmlinux" "$outdir/vmlinux"
mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initrd.gz" "$outdir/initrd.gz"
printf '%s\n' "$kernel_pkg" > "$stamp"
log "built $outdir/vmlinux, vmlinuz and initrd.gz ($(du -h "$outdir/initrd.gz" | cut -f1))"
