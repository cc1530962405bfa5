#!/usr/bin/env bash
# Install what the tests and the benchmark need, from Debian's packages. Idempotent.
set -euo pipefail

# The tests (tests/, vm-images/build.sh) and scripts/bench.sh (tgt, rsync, ss from
# iproute2, timeout from coreutils) share this one list. systemd (systemd-analyze
# verify), man-db and groff-base (man pages) and zsh (completion syntax check) are for
# tests/service.rs and tests/cli_docs.rs; prometheus (with promtool) for tests/metrics.rs.
need=(libiscsi-bin qemu-system-x86 qemu-block-extra qemu-utils open-iscsi busybox-static
      cpio kmod tgt xz-utils zstd rsync iproute2 coreutils prometheus
      systemd man-db groff-base zsh)

missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# QEMU's iSCSI block driver (qemu-block-extra) must match qemu-utils exactly. Some
# machines carry a backported qemu-utils; pin both to the release's own version.
qemu_ok() {
    local a b
    a=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    b=$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)
    [ -n "$a" ] && [ "$a" = "$b" ]
}

if [ ${#missing[@]} -eq 0 ] && qemu_ok; then
    echo "install-deps: everything present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages (${missing[*]:-qemu version pin}) and not root: cannot apt-get install" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Debian starts tgtd and iscsid on install where it can; the tests run their own. Keep
# the installs from starting any service (policy-rc.d answering 101, "action not
# allowed"), so nothing has to be stopped afterwards: this script never stops a
# process it did not start. An admin's own policy-rc.d is left as it is.
# Services already running are not touched either way: policy-rc.d only answers
# invoke-rc.d calls made by the packages' maintainer scripts during this install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ] && [ ! -L "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# installed by twinlun scripts/install-deps.sh for the length of one apt-get run\nexit 101\n' > "$policy"
    chmod 755 "$policy"
fi
apt-get update -qq
v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    echo "install-deps: no qemu-system-x86 candidate in the apt sources" >&2
    exit 1
fi
apt-get install -y -qq --allow-downgrades \
    libiscsi-bin "qemu-system-x86=$v" \
    "qemu-block-extra=$v" "qemu-utils=$v" \
    open-iscsi busybox-static cpio kmod tgt xz-utils zstd rsync iproute2 coreutils \
    systemd man-db groff-base zsh >/dev/null
# tests/metrics.rs runs its own Prometheus and promtool on loopback. Without the
# recommended node exporter (a service that would want port 9100); policy-rc.d above
# keeps the packaged prometheus service from starting.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
qemu_ok || { echo "install-deps: qemu-utils and qemu-block-extra versions still differ" >&2; exit 1; }
echo "install-deps: installed ${missing[*]:-qemu pin}"
