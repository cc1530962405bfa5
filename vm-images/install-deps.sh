#!/usr/bin/env bash
# Installs the host packages the test guest needs (Debian bookworm, as root).
#
# Source this file and call `vm_install_deps`, or run it directly. It is
# idempotent: it asks dpkg first and only calls apt-get for what is missing or
# mismatched, so calling it at the start of every test run costs a few
# dpkg-query calls.
#
# What each package is for:
#   qemu-system-x86   boots the guest (TCG)
#   qemu-block-extra  QEMU's libiscsi block driver (-drive file=iscsi://...)
#   qemu-utils        qemu-img / qemu-io through the same driver
#   open-iscsi        iscsiadm + iscsid copied into the guest
#   busybox-static    the guest's userland
#   e2fsprogs         mke2fs/e2fsck copied into the guest (real ext4)
#   cpio gzip kmod    packing the initramfs, depmod
#   xz-utils          unpacking the kernel for a direct (PVH) boot
#   tgt               the reference target (tgt-rig.sh)
#   libiscsi-bin      iscsi-ls / iscsi-test-cu / iscsi-perf on the host
#   apt dpkg          apt-get download + dpkg -x of the kernel package

VM_DEB_PACKAGES=(qemu-system-x86 qemu-block-extra qemu-utils open-iscsi
    busybox-static e2fsprogs cpio gzip xz-utils kmod tgt libiscsi-bin)

vm__log() { printf 'vm-images: %s\n' "$*" >&2; }

# Version dpkg has installed, empty when not installed.
vm__installed_version() {
    # dpkg-query fails for a package it never heard of: that is "not installed",
    # not an error (callers may run under set -e -o pipefail).
    { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "installed" { print $2 }'
}

# Debian starts tgtd and iscsid when it installs them; nothing here ever stops a
# process it did not start, so keep them from starting instead: a policy-rc.d that
# refuses (101) for the length of the apt-get run, and only if the admin has none.
# Services already running are not touched.
vm__policy=/usr/sbin/policy-rc.d
vm__policy_ours=0
vm__hold_services() {
    if [[ ! -e $vm__policy && ! -L $vm__policy ]]; then
        printf '#!/bin/sh\n# installed by twinlun vm-images/install-deps.sh for one apt-get run\nexit 101\n' >"$vm__policy" &&
            chmod 755 "$vm__policy" && vm__policy_ours=1
    fi
}
vm__release_services() {
    if [[ $vm__policy_ours == 1 ]]; then rm -f "$vm__policy"; vm__policy_ours=0; fi
}

vm__apt_updated=0
vm__apt_update_once() {
    if [[ $vm__apt_updated == 0 ]]; then
        vm__log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || {
            vm__log "apt-get update failed"; return 1; }
        vm__apt_updated=1
    fi
}

vm_install_deps() {
    local missing=() p
    for p in "${VM_DEB_PACKAGES[@]}"; do
        [[ -n $(vm__installed_version "$p") ]] || missing+=("$p")
    done

    # qemu-system-x86, qemu-block-extra and qemu-utils must be one QEMU build:
    # the block driver module is loaded by version, and a machine may carry a
    # qemu-utils from backports. Pin all three to qemu-system-x86's version.
    local qsys qblk qutl
    qsys=$(vm__installed_version qemu-system-x86)
    qblk=$(vm__installed_version qemu-block-extra)
    qutl=$(vm__installed_version qemu-utils)
    local qemu_ok=1
    if [[ -z $qsys || $qblk != "$qsys" || $qutl != "$qsys" ]]; then
        qemu_ok=0
    fi

    if [[ ${#missing[@]} == 0 && $qemu_ok == 1 ]]; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        vm__log "missing packages: ${missing[*]:-} (qemu versions: system=${qsys:-none} block-extra=${qblk:-none} utils=${qutl:-none})"
        vm__log "run vm-images/install-deps.sh as root"
        return 1
    fi

    vm__apt_update_once || return 1
    vm__hold_services
    local rc=0
    vm__install_missing "${missing[@]}" || rc=$?
    vm__release_services
    [[ $rc == 0 ]] || return 1

    # Check the result instead of trusting apt's exit status alone.
    for p in "${VM_DEB_PACKAGES[@]}"; do
        [[ -n $(vm__installed_version "$p") ]] || { vm__log "$p still not installed"; return 1; }
    done
}

# apt-get install of the missing packages, and of one QEMU build (qemu_ok and qsys
# from the caller).
vm__install_missing() {
    local others=() p
    for p in "$@"; do
        case $p in qemu-system-x86|qemu-block-extra|qemu-utils) ;; *) others+=("$p") ;; esac
    done
    if [[ ${#others[@]} -gt 0 ]]; then
        vm__log "apt-get install ${others[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${others[@]}" || {
            vm__log "apt-get install ${others[*]} failed"; return 1; }
    fi
    if [[ $qemu_ok == 0 ]]; then
        local v
        v=${qsys:-$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')}
        if [[ -z $v || $v == "(none)" ]]; then
            vm__log "apt knows no candidate for qemu-system-x86"; return 1
        fi
        vm__log "apt-get install qemu-system-x86=$v qemu-block-extra=$v qemu-utils=$v"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "qemu-system-x86=$v" "qemu-block-extra=$v" "qemu-utils=$v" || {
            vm__log "installing QEMU $v failed"; return 1; }
    fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    vm_install_deps
    vm__log "host packages present: ${VM_DEB_PACKAGES[*]}"
fi
