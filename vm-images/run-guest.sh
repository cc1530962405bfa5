#!/usr/bin/env bash
# Boots the test guest under QEMU (TCG) against an iSCSI target on this host
# and reports the result of the guest's scenario.
#
#   vm-images/run-guest.sh --portal-port PORT --iqn IQN [options]
#
# Options:
#   --portal-port PORT     target port on the host (the guest reaches
#                          127.0.0.1:PORT as 10.0.2.2:PORT through slirp)
#   --iqn IQN              target name
#   --lun N                LUN the guest tests (default: its lowest disk LUN)
#   --digest none|crc32c   header+data digest the guest requires (default none)
#   --test NAME            basic (default), login, fill, checksum, vda, trimfill, fsfiles, fscheck,
#                          trim or boot
#                          (see vm-images/guest/init for what each does)
#   --region OFF:LEN       MiB region for fill/checksum (default 0:4); the
#                          guest prints "GUEST-MD5 OFF LEN MD5"
#   --qemu-drive-url URL   also attach URL (iscsi://127.0.0.1:PORT/IQN/LUN)
#                          as /dev/vda through QEMU's own iSCSI client; the
#                          guest then tests it too (basic, vda, trimfill, trim);
#                          the drive has discard=unmap (the guest's discards
#                          reach the target as UNMAP)
#   --vda-offset-mib N     where the guest writes on /dev/vda (default 0)
#   --snapshot-lun N       basic: after fsck, the guest writes snap/before on
#                          its mounted filesystem, syncs, prints
#                          "GUEST-WAIT snapshot lun N" and waits until LUN N
#                          appears: whoever reads this output must then
#                          snapshot the test LUN's volume and map the
#                          snapshot as LUN N (see vm-images/README.md)
#   --snapshot-wait SECS   how long the guest waits for LUN N (default 120)
#   --initiator IQN        the guest's initiator name
#   --qemu-initiator IQN   initiator name of QEMU's iSCSI client
#   --opt KEY:VALUE        extra open-iscsi node setting (repeatable), e.g.
#                          --opt node.session.iscsi.ImmediateData:No
#   --timeout SECS         kill QEMU after this long (default 600)
#   --log FILE             serial log path (default: a new file under $TMPDIR)
#   --images DIR           guest images (default vm-images/out; built if stale)
#   --no-build             use the images as they are (skips build.sh's
#                          up-to-date check, ~1-2 s; run build.sh once first)
#   --cpu MODEL            QEMU CPU model (default qemu64, see README)
#   --kernel pvh|bzimage   boot the unpacked vmlinux directly (default, saves
#                          the 10-15 s the bzImage spends decompressing itself
#                          under TCG) or Debian's vmlinuz
#   --verbose              kernel messages on the console (loglevel 7)
#   --append ARGS          extra kernel command line
#
# Prints the serial log path first, then every GUEST-* line as it arrives.
# Exit status: 0 only when the guest printed "GUEST-RESULT pass" and no step
# failed; 1 on a guest failure or timeout; 2 on a usage or setup error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=run-guest.sh
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 2; }
log() { printf '%s: %s\n' "$me" "$*" >&2; }

port= iqn= lun= region= digest=none test=basic drive_url= vda_offset=0 initiator=
qemu_initiator=iqn.2026-11.io.twinlun:qemu timeout_s=600 serial_log= images="$here/out"
cpu=qemu64 kernel_format=pvh build=1 verbose=0 extra_append= opts=() snapshot_lun= snapshot_wait=
while [[ $# -gt 0 ]]; do
    case $1 in
        --portal-port) port=${2:?}; shift 2 ;;
        --iqn) iqn=${2:?}; shift 2 ;;
        --lun) lun=${2:?}; shift 2 ;;
        --region) region=${2:?}; shift 2 ;;
        --digest) digest=${2:?}; shift 2 ;;
        --test) test=${2:?}; shift 2 ;;
        --qemu-drive-url) drive_url=${2:?}; shift 2 ;;
        --vda-offset-mib) vda_offset=${2:?}; shift 2 ;;
        --snapshot-lun) snapshot_lun=${2:?}; shift 2 ;;
        --snapshot-wait) snapshot_wait=${2:?}; shift 2 ;;
        --initiator) initiator=${2:?}; shift 2 ;;
        --qemu-initiator) qemu_initiator=${2:?}; shift 2 ;;
        --opt) opts+=("${2:?}"); shift 2 ;;
        --timeout) timeout_s=${2:?}; shift 2 ;;
        --log) serial_log=${2:?}; shift 2 ;;
        --images) images=${2:?}; shift 2 ;;
        --cpu) cpu=${2:?}; shift 2 ;;
        --kernel) kernel_format=${2:?}; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --no-build) build=0; shift ;;
        --append) extra_append=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case $test in
    basic|login|fill|checksum|trimfill|trim|fsfiles|fscheck) [[ -n $port && -n $iqn ]] || die "--portal-port and --iqn are required for --test $test" ;;
    vda) [[ -n $drive_url ]] || die "--test vda needs --qemu-drive-url" ;;
    boot) ;;
    *) die "--test must be basic, login, fill, checksum, vda, trimfill, trim, fsfiles, fscheck or boot" ;;
esac
case $digest in none|crc32c) ;; *) die "--digest must be none or crc32c" ;; esac
[[ -z $port || $port =~ ^[0-9]+$ ]] || die "--portal-port '$port' is not a number"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout '$timeout_s' is not a number of seconds"
[[ $vda_offset =~ ^[0-9]+$ ]] || die "--vda-offset-mib '$vda_offset' is not a number"
[[ -z $lun || $lun =~ ^[0-9]+$ ]] || die "--lun '$lun' is not a number"
[[ -z $snapshot_lun || $snapshot_lun =~ ^[0-9]+$ ]] || die "--snapshot-lun '$snapshot_lun' is not a number"
[[ -z $snapshot_wait || $snapshot_wait =~ ^[0-9]+$ ]] || die "--snapshot-wait '$snapshot_wait' is not a number of seconds"
[[ -z $snapshot_lun || $test == basic ]] || die "--snapshot-lun needs --test basic"
[[ -z $region || $region =~ ^[0-9]+:[0-9]+$ ]] || die "--region '$region' is not OFFSET_MIB:LEN_MIB"
# These go on the kernel command line (split at spaces, opts joined with
# commas) or into -drive (split at commas).
for v in "$iqn" "$initiator" ${opts[@]+"${opts[@]}"} "$drive_url"; do
    [[ $v != *[[:space:],]* ]] || die "'$v' must not contain spaces or commas"
done

# shellcheck source=install-deps.sh
source "$here/install-deps.sh"
vm_install_deps || die "host packages missing (see above)"
for tool in qemu-system-x86_64 timeout sed grep awk; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done
if [[ -n $drive_url ]]; then
    compgen -G '/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so' >/dev/null ||
        die "QEMU's iSCSI block driver (qemu-block-extra) is missing"
fi

if [[ $build == 1 ]]; then
    "$here/build.sh" "$images" || die "building the guest images failed"
fi
case $kernel_format in
    pvh) kernel=$images/vmlinux ;;
    bzimage) kernel=$images/vmlinuz ;;
    *) die "--kernel must be pvh or bzimage" ;;
esac
[[ -s $kernel && -s $images/initrd.gz ]] || die "no $(basename "$kernel")/initrd.gz in $images"

if [[ -z $serial_log ]]; then
    serial_log=$(mktemp "${TMPDIR:-/tmp}/twinlun-guest.XXXXXX.log")
fi
: > "$serial_log" || die "cannot write $serial_log"
log "serial log: $serial_log"

append="console=ttyS0 panic=-1 twinlun.test=$test twinlun.digest=$digest"
if [[ $verbose == 1 ]]; then append+=" loglevel=7"; else append+=" quiet loglevel=3"; fi
[[ -n $port ]] && append+=" twinlun.portal=10.0.2.2:$port"
[[ -n $iqn ]] && append+=" twinlun.iqn=$iqn"
[[ -n $lun ]] && append+=" twinlun.lun=$lun"
[[ -n $region ]] && append+=" twinlun.region=$region"
[[ -n $snapshot_lun ]] && append+=" twinlun.snapshot_lun=$snapshot_lun"
[[ -n $snapshot_wait ]] && append+=" twinlun.snapshot_wait=$snapshot_wait"
[[ -n $initiator ]] && append+=" twinlun.initiator=$initiator"
if [[ ${#opts[@]} -gt 0 ]]; then
    append+=" twinlun.opt=$(IFS=,; echo "${opts[*]}")"
fi
[[ -n $drive_url ]] && append+=" twinlun.vda=1 twinlun.vda_offset_mib=$vda_offset"
[[ -n $extra_append ]] && append+=" $extra_append"

qemu=(qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp 1 -m 512
    -nographic -nodefaults -no-reboot -serial stdio -monitor none
    -kernel "$kernel" -initrd "$images/initrd.gz" -append "$append"
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)
if [[ -n $drive_url ]]; then
    qemu+=(-iscsi "initiator-name=$qemu_initiator"
        -drive "file=$drive_url,if=virtio,format=raw,discard=unmap")
fi
printf '%s: qemu:' "$me" >&2; printf ' %q' "${qemu[@]}" >&2; printf '\n' >&2

start=$(date +%s.%N)
set +e
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 |
    sed -u 's/\r$//' | tee "$serial_log" | grep --line-buffered -a '^GUEST-'
statuses=("${PIPESTATUS[@]}")
set -e
end=$(date +%s.%N)
qemu_rc=${statuses[0]}
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

init_at=$(sed -n 's/^GUEST-INFO init started at uptime \([0-9.]*\)s.*/\1/p' "$serial_log")
done_at=$(sed -n 's/^GUEST-INFO done at uptime \([0-9.]*\)s.*/\1/p' "$serial_log")
log "wall ${wall}s; guest init at ${init_at:-?}s, scenario done at ${done_at:-?}s guest uptime"

result=fail
if [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
    log "FAIL: timed out after ${timeout_s}s (QEMU killed); log: $serial_log"
elif grep -q '^GUEST-STEP [^ ]* FAIL' "$serial_log"; then
    log "FAIL: a guest step failed; log: $serial_log"
elif ! grep -qx 'GUEST-RESULT pass' "$serial_log"; then
    log "FAIL: no 'GUEST-RESULT pass' (QEMU exit $qemu_rc); log: $serial_log"
elif ! grep -q '^GUEST-STEP [^ ]* ok$' "$serial_log"; then
    log "FAIL: guest passed without running a step; log: $serial_log"
elif [[ $qemu_rc != 0 ]]; then
    log "FAIL: QEMU exited $qemu_rc; log: $serial_log"
else
    result=pass
fi
if [[ $result != pass ]] && ! grep -q '^GUEST-RESULT' "$serial_log"; then
    # No verdict from the guest: QEMU's own complaint or the kernel's last
    # words are at the end of the log.
    log "last lines of the serial log:"
    tail -n 15 "$serial_log" | sed 's/^/    /' >&2
fi
if [[ $result == pass ]]; then
    log "PASS ($test, digest $digest${drive_url:+, qemu drive}${snapshot_lun:+, snapshot as LUN $snapshot_lun})"
    exit 0
fi
exit 1
