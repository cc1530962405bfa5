#!/usr/bin/env bash
# Runs a private tgtd (Debian's userspace iSCSI target) as a reference target.
#
#   vm-images/tgt-rig.sh start PORT FILE IQN [FILE2 ...]
#   vm-images/tgt-rig.sh stop  PORT [...]
#   vm-images/tgt-rig.sh status PORT
#
# start: tgtd listens on 127.0.0.1:PORT (a guest reaches it as 10.0.2.2:PORT)
# with one target IQN (tid 1); FILE is LUN 1, FILE2 LUN 2 and so on (LUN 0 is
# tgt's controller LUN). A missing FILE is created sparse with the size in
# TGT_RIG_SIZE (default 256M). Every initiator may connect. Header and data
# digests are offered as CRC32C or None, so the initiator decides.
# tgtd runs in the background (its own session) until `stop PORT`; its
# management socket is /var/run/tgtd/socket.N (N = PORT mod 32768), its log and pid are in
# ${TMPDIR:-/tmp}/twinlun-tgt-rig.PORT/.
#
# Environment: TGT_RIG_SIZE (new files), TGT_RIG_BSOFLAGS (tgtadm --bsoflags,
# e.g. "direct" or "sync:direct"), TGT_RIG_NR_IOTHREADS (tgtd -t).
#
# Several rigs may run at once on different ports.
set -euo pipefail

me=tgt-rig.sh
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$me" "$*" >&2; }
usage() { die "usage: $me start PORT FILE IQN [FILE2 ...] | stop PORT | status PORT"; }

[[ $# -ge 2 ]] || usage
cmd=$1 port=$2
[[ $port =~ ^[0-9]+$ && $port -gt 0 && $port -lt 65536 ]] || die "PORT '$port' is not a TCP port"
# tgtd's management "port" is a number below 32768 naming a Unix socket.
ctl=$((port % 32768))
[[ $ctl -gt 0 ]] || die "PORT $port maps to management socket 0; pick another port"
state="${TMPDIR:-/tmp}/twinlun-tgt-rig.$port"
pidfile="$state/tgtd.pid"

tgtadm_() { tgtadm -C "$ctl" --lld iscsi "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

rig_pid() {
    local pid
    [[ -s $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    # Only a tgtd we started (its command line names our control port).
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
    [[ $cmdline == *"-C $ctl "* ]] || return 1
    echo "$pid"
}

start() {
    [[ $# -ge 2 ]] || usage
    local iqn=$2 files=("$1" "${@:3}")
    [[ $iqn == iqn.* || $iqn == eui.* || $iqn == naa.* ]] || die "'$iqn' is not an iSCSI name (iqn./eui./naa.)"
    for tool in tgtd tgtadm truncate setsid; do
        command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install tgt, or vm-images/install-deps.sh)"
    done
    if pid=$(rig_pid); then die "a rig already runs on port $port (pid $pid); stop it first"; fi
    port_open && die "127.0.0.1:$port is already in use"

    local f
    for f in "${files[@]}"; do
        if [[ ! -e $f ]]; then
            truncate -s "${TGT_RIG_SIZE:-256M}" "$f" || die "cannot create $f"
        fi
        [[ -f $f || -b $f ]] || die "$f is neither a file nor a block device"
    done

    mkdir -p "$state"
    local args=(-f -C "$ctl" --iscsi "portal=127.0.0.1:$port")
    [[ -n ${TGT_RIG_NR_IOTHREADS:-} ]] && args+=(-t "$TGT_RIG_NR_IOTHREADS")
    setsid tgtd "${args[@]}" </dev/null >"$state/tgtd.log" 2>&1 &
    echo $! > "$pidfile"
    local pid=$!

    local n=0
    until tgtadm_ --mode target --op show >/dev/null 2>&1 && port_open; do
        kill -0 "$pid" 2>/dev/null || { cat "$state/tgtd.log" >&2; die "tgtd exited at start (log above)"; }
        n=$((n + 1))
        [[ $n -lt 100 ]] || { stop_rig; die "tgtd did not come up within 10s (log: $state/tgtd.log)"; }
        sleep 0.1
    done

    setup "$iqn" "${files[@]}" || { stop_rig; die "configuring tgtd failed"; }
    log "tgtd pid $pid on 127.0.0.1:$port, target $iqn, LUNs 1-${#files[@]}: ${files[*]}"
}

setup() {
    local iqn=$1; shift
    tgtadm_ --mode target --op new --tid 1 --targetname "$iqn" || return 1
    local lun=1 f bso=()
    [[ -n ${TGT_RIG_BSOFLAGS:-} ]] && bso=(--bsoflags "$TGT_RIG_BSOFLAGS")
    for f in "$@"; do
        tgtadm_ --mode logicalunit --op new --tid 1 --lun "$lun" --backing-store "$f" ${bso[@]+"${bso[@]}"} ||
            return 1
        lun=$((lun + 1))
    done
    tgtadm_ --mode target --op update --tid 1 --name HeaderDigest --value CRC32C,None || return 1
    tgtadm_ --mode target --op update --tid 1 --name DataDigest --value CRC32C,None || return 1
    tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL || return 1
}

stop_rig() {
    local pid
    if ! pid=$(rig_pid); then
        rm -f "$pidfile"
        log "no rig running on port $port"
        return 0
    fi
    # tgtd ignores SIGTERM. Its orderly stop: go offline, drop the target
    # (forcing out logged-in initiators), then delete the "system".
    tgtadm -C "$ctl" --mode sys --op update --name State --value offline >/dev/null 2>&1 || true
    tgtadm_ --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
    tgtadm -C "$ctl" --mode system --op delete >/dev/null 2>&1 || true
    local n=0
    while kill -0 "$pid" 2>/dev/null; do
        n=$((n + 1))
        if [[ $n -ge 50 ]]; then
            log "tgtd $pid still running 5s after the stop request, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile" "/var/run/tgtd/socket.$ctl" "/var/run/tgtd/socket.$ctl.lock"
    log "stopped tgtd $pid (port $port)"
}

case $cmd in
    start) shift 2; start "$@" ;;
    stop) stop_rig ;;
    status)
        if pid=$(rig_pid); then
            log "running: pid $pid"
            tgtadm_ --mode target --op show
        else
            log "not running on port $port"; exit 1
        fi
        ;;
    *) usage ;;
esac
