#!/usr/bin/env bash
# Fails on an import that points the wrong way between the layers of DESIGN.md:
#   durable, datadir, throttle, time, events, metrics, sdnotify, scsi, tracking  <  volume  <  catalog, validate
#   <  iscsi, replication, config  <  admin, server (neither uses the other)
#   <  node (the composition root)  <  main.rs
# A module may use what is below it, never what is above (comments aside). Exceptions
# would be listed in scripts/layers-allowlist.txt: an import not in the list fails,
# and so does an entry that no longer occurs, so the list only shrinks.
set -euo pipefail
cd "$(dirname "$0")/.."

# module (a folder or file under src/, without .rs) -> modules it must not use
forbidden() {
    case "$1" in
        durable|datadir|throttle|time|events|metrics|sdnotify|scsi)
            echo "iscsi scsi volume tracking catalog validate replication config admin server node" ;;
        # The login reads CHAP settings from the catalog, which is plain data.
        iscsi) echo "volume tracking replication config admin server node" ;;
        tracking) echo "iscsi scsi volume catalog validate replication config admin server node" ;;
        volume) echo "iscsi scsi catalog validate replication config admin server node" ;;
        catalog|validate) echo "iscsi scsi volume tracking replication config admin server node" ;;
        replication|config) echo "iscsi admin server node" ;;
        admin) echo "server node" ;;
        server) echo "admin replication config node" ;;
        *) echo "" ;;
    esac
}

found=$(mktemp)
trap 'rm -f "$found"' EXIT
for module in durable datadir throttle time events metrics sdnotify scsi iscsi tracking volume catalog validate replication config admin server; do
    if [[ -d src/$module ]]; then files=$(find "src/$module" -name '*.rs' | sort); else files=src/$module.rs; fi
    for bad in $(forbidden "$module"); do
        [[ $bad == "$module" ]] && continue
        for f in $files; do
            if grep -vE '^\s*//' "$f" | grep -qE "crate::$bad\b"; then echo "$f -> crate::$bad"; fi
        done
    done
done | sort -u >"$found"

allow=$(grep -vE '^\s*(#|$)' scripts/layers-allowlist.txt | sort -u || true)
new=$(comm -23 "$found" <(printf '%s\n' "$allow" | sed '/^$/d'))
gone=$(comm -13 "$found" <(printf '%s\n' "$allow" | sed '/^$/d'))
status=0
if [[ -n "$new" ]]; then
    echo "check-layers: imports that point the wrong way:" >&2
    printf '%s\n' "$new" | sed 's/^/  /' >&2
    status=1
fi
if [[ -n "$gone" ]]; then
    echo "check-layers: no longer found, remove from scripts/layers-allowlist.txt:" >&2
    printf '%s\n' "$gone" | sed 's/^/  /' >&2
    status=1
fi
[[ $status == 0 ]] && echo "check-layers: every import points down ($(wc -l <"$found") exceptions listed)"
exit $status
