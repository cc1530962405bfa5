#!/usr/bin/env bash
# Proves the guest and run-guest.sh against tgt: starts a tgt rig on a free
# port (LUN 1 for the guest's open-iscsi session, LUN 2 for QEMU's own iSCSI
# client as /dev/vda), runs the basic scenario with digests off and with
# CRC32C, then stops the rig. Also the template for running the guest
# against twinlun (see README.md).
#
#   vm-images/selftest-tgt.sh [--timeout SECS]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=selftest-tgt.sh
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$me" "$*" >&2; }
timeout_s=600
[[ ${1:-} == --timeout ]] && timeout_s=${2:?}

# shellcheck source=install-deps.sh
source "$here/install-deps.sh"
vm_install_deps || die "host packages missing"
"$here/build.sh" || die "build.sh failed"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 12000))
    port_in_use "$p" || { port=$p; break; }
done
[[ -n $port ]] || die "no free TCP port found"

iqn=iqn.2026-11.io.twinlun.selftest:tgt
dir=$(mktemp -d "${TMPDIR:-/tmp}/twinlun-selftest.XXXXXX")
logdir=$(mktemp -d "${TMPDIR:-/tmp}/twinlun-selftest-logs.XXXXXX")
# The LUN files go; the serial logs stay for a post-mortem.
cleanup() { "$here/tgt-rig.sh" stop "$port" || true; rm -rf "$dir"; }
trap cleanup EXIT
"$here/tgt-rig.sh" start "$port" "$dir/lun1.img" "$iqn" "$dir/lun2.img"

failed=0
for digest in none crc32c; do
    log "basic scenario, digest $digest, QEMU drive on LUN 2"
    start=$SECONDS
    if "$here/run-guest.sh" --no-build --portal-port "$port" --iqn "$iqn" --lun 1 --digest "$digest" \
        --qemu-drive-url "iscsi://127.0.0.1:$port/$iqn/2" --timeout "$timeout_s" \
        --log "$logdir/guest-$digest.log"; then
        log "digest $digest: PASS in $((SECONDS - start)) s"
    else
        log "digest $digest: FAIL (log $logdir/guest-$digest.log)"
        failed=1
    fi
done
[[ $failed == 0 ]] || die "at least one scenario failed"
log "all scenarios passed against tgt"
