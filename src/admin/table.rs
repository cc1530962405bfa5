//! Human output of `twinlun ctl`: aligned tables and key/value blocks. No secrets
//! appear here because none are in the responses.

use std::fmt::Write;

use super::protocol::{
    ChapView, GroupView, ReplicationView, Response, SnapshotView, StatusView, TargetView,
    VolumeView,
};
use crate::catalog::Compression;

/// Bytes as an admin reads them in a table: `512 B`, `8.0 MiB`, `1.5 GiB` (binary
/// units, one decimal). `--json` carries the exact number.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds as an admin reads them: `45s`, `5m`, `1h 2m`, `3d 4h` (the two largest
/// units, the second left out when zero). `--json` carries the seconds.
pub fn human_duration(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    for (i, (size, unit)) in UNITS.iter().enumerate() {
        if secs >= *size || *size == 1 {
            let mut text = format!("{}{unit}", secs / size);
            if let Some((next, next_unit)) = UNITS.get(i + 1) {
                let rest = (secs % size) / next;
                if rest > 0 {
                    text.push_str(&format!(" {rest}{next_unit}"));
                }
            }
            return text;
        }
    }
    unreachable!("the last unit is one second")
}

/// Left-aligned columns separated by two spaces; the header is the first row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn kv(pairs: &[(&str, String)]) -> String {
    kv_aligned(pairs, pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0))
}

/// `kv` with the values starting after `key_width` (for blocks that continue one
/// another, as in `status`).
fn kv_aligned(pairs: &[(&str, String)], key_width: usize) -> String {
    let w = key_width + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        let _ = writeln!(out, "{:<w$} {v}", format!("{k}:"), w = w);
    }
    out
}

/// CHAP as admins see it: the user name and whether it is mutual, never a secret.
pub fn chap_text(chap: &Option<ChapView>) -> String {
    match chap {
        None => "none".into(),
        Some(c) if c.mutual_user.is_some() => format!("user {} (mutual)", c.user),
        Some(c) => format!("user {}", c.user),
    }
}

fn acl_text(acl: &[String]) -> String {
    if acl.is_empty() {
        "open".into()
    } else {
        acl.join(", ")
    }
}

fn allocated_text(v: &VolumeView) -> String {
    v.allocated.map(format_size).unwrap_or_else(|| "?".into())
}

/// What a snapshot is of: `volume db` or `group app (db, logs)`.
fn snapshot_source(s: &SnapshotView) -> String {
    let vols: Vec<&str> = s.volumes.iter().map(|v| v.volume.as_str()).collect();
    match &s.group {
        Some(g) => format!("group {g} ({})", vols.join(", ")),
        None => format!("volume {}", vols.join(", ")),
    }
}

fn snapshot_detail(s: &SnapshotView) -> String {
    let mut out = kv(&[
        ("name", s.name.clone()),
        ("of", snapshot_source(s)),
        ("state", s.state.clone()),
        ("cut", s.cut_id.to_string()),
        ("created", s.created.clone()),
        ("pause", format!("{} us", s.pause_us)),
        ("pages preserved", s.pages_preserved.to_string()),
        ("bytes used", format_size(s.bytes_used)),
    ]);
    let rows: Vec<Vec<String>> = s
        .volumes
        .iter()
        .map(|v| {
            let maps: Vec<String> = s
                .mappings
                .iter()
                .filter(|m| m.volume == v.volume)
                .map(|m| format!("{}/{}", m.target, m.lun))
                .collect();
            vec![
                v.volume.clone(),
                v.state.clone(),
                v.pages_preserved.to_string(),
                format_size(v.memory_bytes),
                format_size(v.file_bytes),
                if maps.is_empty() {
                    "-".into()
                } else {
                    maps.join(", ")
                },
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["VOLUME", "STATE", "PAGES", "MEMORY", "FILE", "MAPPED AS"],
        &rows,
    ));
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

/// A cap as `show` prints it.
fn rate_text(r: Option<u64>) -> String {
    r.map_or_else(|| "no cap".into(), |r| format!("{}/s", format_size(r)))
}

/// The cap that binds, and where it comes from when the peer's is the lower.
fn max_rate_text(r: &ReplicationView) -> String {
    match (r.max_rate, r.peer_max_rate) {
        (_, None) => rate_text(r.max_rate),
        (None, Some(p)) => format!("{} (peer's)", rate_text(Some(p))),
        (Some(s), Some(p)) => format!(
            "{} (set {}, peer {})",
            rate_text(r.effective_max_rate),
            rate_text(Some(s)),
            rate_text(Some(p))
        ),
    }
}

fn replication_detail(r: &ReplicationView) -> String {
    let mut pairs = vec![
        ("name", r.name.clone()),
        ("role", r.role.to_string()),
        ("status", r.status.to_string()),
        ("peer", r.peer.clone()),
        (
            "of",
            match &r.group {
                Some(g) => format!("group {g} ({})", r.volumes.join(", ")),
                None => format!("volume {}", r.volumes.join(", ")),
            },
        ),
        ("on the peer", r.remote_volumes.join(", ")),
        (
            "every",
            r.every_secs
                .map_or_else(|| "on request".into(), human_duration),
        ),
        ("queue policy", r.queue_policy.name().to_string()),
        ("keep", r.keep.to_string()),
        ("compress", r.compress.to_string()),
        ("max rate", max_rate_text(r)),
        ("generation", r.generation.to_string()),
        ("last cut", opt(&r.last_cut_id)),
        ("last cut time", opt(&r.last_cut_time)),
        ("lag", r.lag_secs.map_or_else(|| "-".into(), human_duration)),
        ("cycles", r.cycles.to_string()),
        ("queued", r.queued.to_string()),
    ];
    if let Some(p) = &r.progress {
        pairs.push((
            "progress",
            format!(
                "cut {}: {} of {} ({}/s, ETA {})",
                p.cut_id,
                format_size(p.bytes_done),
                format_size(p.bytes_total),
                format_size(p.rate_bytes_per_sec as u64),
                p.eta_secs
                    .map_or_else(|| "-".into(), |e| human_duration(e.round() as u64))
            ),
        ));
    }
    if let Some(rate) = r.current_rate {
        pairs.push(("current rate", format!("{}/s", format_size(rate))));
    }
    if let Some(c) = &r.last_cycle {
        pairs.push((
            "last cycle",
            format!(
                "cut {}{}: data {} ({} on the wire{}), zero records {} (for {} of zeros), overhead {}, {:.2}s",
                c.cut_id,
                if c.full { " (full)" } else { "" },
                format_size(c.data_bytes),
                format_size(c.wire_data_bytes),
                match c.compress {
                    Compression::None => String::new(),
                    how => format!(", {how}"),
                },
                format_size(c.record_bytes),
                format_size(c.zero_bytes),
                format_size(c.overhead_bytes),
                c.seconds
            ),
        ));
    }
    if let Some(e) = &r.error {
        pairs.push(("error", e.clone()));
        pairs.push(("next retry", opt(&r.next_retry)));
    }
    if let Some(cut) = r.common_cut {
        pairs.push((
            "common cut",
            format!(
                "{cut} (promoted generation {}), {} pages written here since",
                r.promoted_generation
                    .map_or_else(|| "-".into(), |g| g.to_string()),
                r.pages_since_common_cut
                    .map_or_else(|| "-".into(), |p| p.to_string())
            ),
        ));
    }
    kv(&pairs)
}

fn status_detail(s: &StatusView) -> String {
    const KEY_WIDTH: usize = "replication listen".len();
    let mut out = kv_aligned(
        &[
            ("version", s.version.clone()),
            ("data dir", s.data_dir.clone()),
            ("engine", s.engine.clone()),
            (
                "listening",
                if s.listen.is_empty() {
                    "-".into()
                } else {
                    s.listen.join(", ")
                },
            ),
            (
                "port groups",
                if s.port_groups.is_empty() {
                    "-".into()
                } else {
                    s.port_groups
                        .iter()
                        .map(|g| {
                            format!(
                                "{} {} ({})",
                                g.group,
                                g.state.name(),
                                g.portal.as_deref().unwrap_or("no portal")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "admin socket",
                s.admin_socket.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "replication listen",
                s.replication_listen.clone().unwrap_or_else(|| "-".into()),
            ),
            ("replication key", opt(&s.tls_key)),
            ("uptime", human_duration(s.uptime_secs)),
            (
                "cuts",
                format!(
                    "{} taken, {} failed; pause last {}, max {} us",
                    s.cuts.taken,
                    s.cuts.failed,
                    s.cuts
                        .last_pause_us
                        .map_or_else(|| "-".into(), |p| format!("{p} us")),
                    s.cuts.max_pause_us
                ),
            ),
            ("volumes", s.volumes.to_string()),
            ("groups", s.groups.to_string()),
            ("targets", s.targets.to_string()),
            ("sessions", s.sessions.to_string()),
            ("peers", s.peers.len().to_string()),
        ],
        KEY_WIDTH,
    );
    // A short line for each peer, set and snapshot under its count.
    for p in &s.peers {
        let sets = if p.sets.is_empty() {
            "no sets".to_string()
        } else {
            format!("sets {}", p.sets.join(", "))
        };
        let _ = writeln!(out, "  {} {} ({sets})", p.name, p.addr);
    }
    out.push_str(&kv_aligned(
        &[("replication sets", s.replications.len().to_string())],
        KEY_WIDTH,
    ));
    for r in &s.replications {
        let _ = writeln!(
            out,
            "  {} {}, {}, peer {}, last cut {}, lag {}{}",
            r.name,
            r.role,
            r.status,
            r.peer,
            opt(&r.last_cut_id),
            r.lag_secs.map_or_else(|| "-".into(), human_duration),
            r.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
    }
    out.push_str(&kv_aligned(
        &[("snapshots", s.snapshots.len().to_string())],
        KEY_WIDTH,
    ));
    for snap in &s.snapshots {
        let _ = writeln!(
            out,
            "  {} of {}, cut {}, {}, {}, {} used",
            snap.name,
            snapshot_source(snap),
            snap.cut_id,
            snap.created,
            snap.state,
            format_size(snap.bytes_used)
        );
    }
    out
}

fn volume_detail(v: &VolumeView) -> String {
    let mapped = if v.mappings.is_empty() { "no" } else { "yes" };
    let mut out = kv(&[
        ("name", v.name.clone()),
        (
            "size",
            format!("{} ({} bytes)", format_size(v.size), v.size),
        ),
        ("block size", v.block_size.to_string()),
        ("page size", format_size(u64::from(v.page_size))),
        ("provisioning", v.provisioning.as_str().to_string()),
        (
            "dirty pages",
            v.dirty_pages
                .map_or_else(|| "-".into(), |d| format!("{d} since the last cut")),
        ),
        ("id", v.id.clone()),
        ("file", v.path.clone()),
        ("allocated", allocated_text(v)),
        ("group", v.group.clone().unwrap_or_else(|| "-".into())),
        ("mapped", mapped.into()),
        (
            "clone of",
            v.clone_of
                .clone()
                .map_or_else(|| "-".into(), |r| format!("{r} (copy-on-write)")),
        ),
    ]);
    if !v.mappings.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = v
            .mappings
            .iter()
            .map(|m| {
                vec![
                    m.target.clone(),
                    m.lun.to_string(),
                    if m.read_only { "ro" } else { "rw" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(&["TARGET", "LUN", "ACCESS"], &rows));
    }
    out
}

fn replication_text(g: &GroupView) -> String {
    g.replication_set.clone().unwrap_or_else(|| "-".into())
}

fn group_detail(g: &GroupView) -> String {
    let mut out = kv(&[
        ("group", g.name.clone()),
        ("volumes", g.volumes.len().to_string()),
        (
            "size",
            format!("{} ({} bytes)", format_size(g.size), g.size),
        ),
        ("replication set", replication_text(g)),
    ]);
    out.push('\n');
    let rows: Vec<Vec<String>> = g
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| vec![(i + 1).to_string(), v.clone()])
        .collect();
    out.push_str(&table(&["ORDER", "VOLUME"], &rows));
    out
}

fn target_detail(t: &TargetView) -> String {
    let mut out = kv(&[
        ("target", t.iqn.clone()),
        ("acl", acl_text(&t.acl)),
        ("chap", chap_text(&t.chap)),
        (
            "target user",
            t.chap
                .as_ref()
                .and_then(|c| c.mutual_user.clone())
                .unwrap_or_else(|| "-".into()),
        ),
        ("sessions", t.sessions.to_string()),
        ("luns", t.luns.len().to_string()),
    ]);
    if !t.luns.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = t
            .luns
            .iter()
            .map(|l| {
                vec![
                    l.lun.to_string(),
                    l.volume.clone(),
                    match (l.read_only, l.removable) {
                        (true, false) => "ro",
                        (false, false) => "rw",
                        (true, true) => "ro removable",
                        (false, true) => "rw removable",
                    }
                    .into(),
                ]
            })
            .collect();
        out.push_str(&table(&["LUN", "VOLUME", "ACCESS"], &rows));
    }
    out
}

/// The human rendering of a successful response (errors are printed by the caller).
pub fn render(resp: &Response) -> String {
    match resp {
        Response::Done { message } => format!("{message}\n"),
        // A file to save as it is: no table around it.
        Response::ConfigExport { toml } => toml.clone(),
        Response::Error { code, message } => format!("error ({code:?}): {message}\n"),
        Response::Status(s) => status_detail(s),
        Response::Volume(v) => volume_detail(v),
        Response::Volumes { volumes } if volumes.is_empty() => "no volumes\n".into(),
        Response::Volumes { volumes } => {
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    let maps: Vec<String> = v
                        .mappings
                        .iter()
                        .map(|m| format!("{}/{}", m.target, m.lun))
                        .collect();
                    vec![
                        v.name.clone(),
                        format_size(v.size),
                        v.block_size.to_string(),
                        format_size(u64::from(v.page_size)),
                        allocated_text(v),
                        v.group.clone().unwrap_or_else(|| "-".into()),
                        v.id.clone(),
                        if maps.is_empty() {
                            "-".into()
                        } else {
                            maps.join(", ")
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "SIZE",
                    "BLOCK",
                    "PAGE",
                    "ALLOCATED",
                    "GROUP",
                    "ID",
                    "MAPPED AS",
                ],
                &rows,
            )
        }
        Response::Group(g) => group_detail(g),
        Response::Groups { groups } if groups.is_empty() => "no groups\n".into(),
        Response::Groups { groups } => {
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        format_size(g.size),
                        replication_text(g),
                        g.volumes.join(" "),
                    ]
                })
                .collect();
            table(&["GROUP", "SIZE", "REPLICATION SET", "VOLUMES"], &rows)
        }
        Response::Snapshot(snap) => snapshot_detail(snap),
        Response::Snapshots { snapshots } if snapshots.is_empty() => "no snapshots\n".into(),
        Response::Snapshots { snapshots } => {
            let rows: Vec<Vec<String>> = snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.cut_id.to_string(),
                        s.created.clone(),
                        s.state.clone(),
                        s.pages_preserved.to_string(),
                        format_size(s.bytes_used),
                        snapshot_source(s),
                    ]
                })
                .collect();
            table(
                &["SNAPSHOT", "CUT", "CREATED", "STATE", "PAGES", "USED", "OF"],
                &rows,
            )
        }
        Response::Peer(p) => kv(&[
            ("name", p.name.clone()),
            ("address", p.addr.clone()),
            ("max rate", rate_text(p.max_rate)),
            (
                "sets",
                if p.sets.is_empty() {
                    "-".into()
                } else {
                    p.sets.join(", ")
                },
            ),
            ("this node's key", opt(&p.local_key)),
            (
                "pinned key",
                p.pinned_key
                    .clone()
                    .unwrap_or_else(|| "none yet (the first authenticated contact pins it)".into()),
            ),
            (
                "last link",
                p.last_link.as_ref().map_or_else(
                    || "- (none since this node started)".into(),
                    |l| format!("{}, {}, {}", l.at, l.tls_version, l.cipher),
                ),
            ),
            (
                "presented key",
                p.last_link
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| l.presented_key.clone()),
            ),
        ]),
        Response::Peers { peers } if peers.is_empty() => "no peers\n".into(),
        Response::Peers { peers } => {
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.addr.clone(),
                        rate_text(p.max_rate),
                        p.sets.join(", "),
                    ]
                })
                .collect();
            table(&["PEER", "ADDRESS", "MAX RATE", "SETS"], &rows)
        }
        Response::PeerCheck(p) => kv(&[
            ("peer", p.name.clone()),
            ("address", p.addr.clone()),
            ("reachable", if p.reachable { "yes" } else { "no" }.into()),
            (
                "authenticated",
                if p.authenticated { "yes" } else { "no" }.into(),
            ),
            ("protocol version", opt(&p.protocol_version)),
            (
                "compression",
                if !p.authenticated {
                    "-".into()
                } else if p.compress.is_empty() {
                    "none".into()
                } else {
                    p.compress.join(", ")
                },
            ),
            (
                "round trip",
                p.rtt_us.map_or_else(|| "-".into(), |us| format!("{us} us")),
            ),
            ("tls", opt(&p.tls_version)),
            ("cipher", opt(&p.cipher)),
            ("this node's key", opt(&p.local_key)),
            ("pinned key", opt(&p.pinned_key)),
            ("presented key", opt(&p.presented_key)),
            ("error", opt(&p.error)),
        ]),
        Response::Replication(r) => replication_detail(r),
        Response::Replications { replications } if replications.is_empty() => {
            "no replication sets\n".into()
        }
        Response::Replications { replications } => {
            let rows: Vec<Vec<String>> = replications
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.role.to_string(),
                        r.status.to_string(),
                        r.peer.clone(),
                        r.compress.to_string(),
                        opt(&r.last_cut_id),
                        opt(&r.last_cut_time),
                        r.volumes.join(" "),
                    ]
                })
                .collect();
            table(
                &[
                    "SET", "ROLE", "STATUS", "PEER", "COMPRESS", "LAST CUT", "TIME", "VOLUMES",
                ],
                &rows,
            )
        }
        Response::RecoveryPoints { set, points } if points.is_empty() => {
            format!("no recovery points of '{set}' yet\n")
        }
        Response::RecoveryPoints { points, .. } => {
            let rows: Vec<Vec<String>> = points
                .iter()
                .map(|p| {
                    let pinned = if p.pinned_by.is_empty() {
                        "-".to_string()
                    } else {
                        p.pinned_by.join(", ")
                    };
                    vec![
                        p.cut_id.to_string(),
                        p.time.clone(),
                        format_size(p.size),
                        pinned,
                    ]
                })
                .collect();
            table(&["CUT", "TIME", "SIZE", "PINNED BY"], &rows)
        }
        Response::Schedules { schedules } if schedules.is_empty() => "no schedules\n".into(),
        Response::Schedules { schedules } => {
            let rows: Vec<Vec<String>> = schedules
                .iter()
                .map(|s| {
                    vec![
                        s.task.clone(),
                        s.set.clone(),
                        s.start.clone(),
                        s.every_secs.map_or_else(|| "once".into(), human_duration),
                        opt(&s.next),
                    ]
                })
                .collect();
            table(&["TASK", "SET", "START", "EVERY", "NEXT"], &rows)
        }
        Response::Target(t) => target_detail(t),
        Response::Targets { targets } if targets.is_empty() => "no targets\n".into(),
        Response::Targets { targets } => {
            let rows: Vec<Vec<String>> = targets
                .iter()
                .map(|t| {
                    let luns: Vec<String> = t
                        .luns
                        .iter()
                        .map(|l| {
                            format!(
                                "{}:{}{}",
                                l.lun,
                                l.volume,
                                if l.read_only { "(ro)" } else { "" }
                            )
                        })
                        .collect();
                    vec![
                        t.iqn.clone(),
                        if luns.is_empty() {
                            "-".into()
                        } else {
                            luns.join(" ")
                        },
                        acl_text(&t.acl),
                        chap_text(&t.chap),
                        t.sessions.to_string(),
                    ]
                })
                .collect();
            table(&["TARGET", "LUNS", "ACL", "CHAP", "SESSIONS"], &rows)
        }
        Response::Sessions { sessions } if sessions.is_empty() => "no sessions\n".into(),
        Response::Sessions { sessions } => {
            let rows: Vec<Vec<String>> = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.target.clone(),
                        s.initiator.clone(),
                        s.isid.clone(),
                        s.tsih.to_string(),
                        s.connections.to_string(),
                        format_size(s.bytes_in),
                        format_size(s.bytes_out),
                    ]
                })
                .collect();
            let mut out = table(
                &["TARGET", "INITIATOR", "ISID", "TSIH", "CONNS", "IN", "OUT"],
                &rows,
            );
            for s in sessions {
                let keys: Vec<String> = s
                    .negotiated
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(out, "TSIH {}: {}", s.tsih, keys.join(" "));
            }
            out
        }
    }
}

/// One line of `ctl watch`: status, and while a cycle runs a bar with bytes, rate and
/// ETA.
pub fn progress_line(r: &ReplicationView) -> String {
    const WIDTH: usize = 30;
    match &r.progress {
        Some(p) if p.bytes_total > 0 => {
            let frac = (p.bytes_done as f64 / p.bytes_total as f64).clamp(0.0, 1.0);
            let filled = (frac * WIDTH as f64).round() as usize;
            format!(
                "{} [{}{}] {:>3.0}% {}/{} {}/s ETA {} (cut {})",
                r.status,
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                frac * 100.0,
                format_size(p.bytes_done),
                format_size(p.bytes_total),
                format_size(p.rate_bytes_per_sec as u64),
                p.eta_secs
                    .map_or_else(|| "-".into(), |e| human_duration(e.round() as u64)),
                p.cut_id
            )
        }
        _ => format!(
            "{}: last cut {} at {}, lag {}{}",
            r.status,
            opt(&r.last_cut_id),
            opt(&r.last_cut_time),
            r.lag_secs.map_or_else(|| "-".into(), human_duration),
            r.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::protocol::LunView;

    #[test]
    fn columns_align() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    w\n");
    }

    #[test]
    fn chap_is_shown_without_secrets() {
        let t = TargetView {
            iqn: "iqn.2026-11.io.twinlun:t".into(),
            luns: vec![LunView {
                lun: 0,
                volume: "v".into(),
                read_only: true,
                removable: false,
            }],
            acl: vec![],
            chap: Some(ChapView {
                user: "alice".into(),
                mutual_user: Some("tgt".into()),
            }),
            sessions: 0,
        };
        let out = render(&Response::Targets { targets: vec![t] });
        assert!(out.contains("user alice (mutual)"), "{out}");
        assert!(out.contains("0:v(ro)") && out.contains("open"), "{out}");
    }

    #[test]
    fn groups_list_and_show() {
        let g = GroupView {
            name: "app".into(),
            volumes: vec!["db".into(), "logs".into()],
            size: 3 << 30,
            replication_set: None,
        };
        let out = render(&Response::Groups {
            groups: vec![g.clone()],
        });
        assert_eq!(
            out,
            "GROUP  SIZE     REPLICATION SET  VOLUMES\napp    3.0 GiB  -                db logs\n"
        );
        let out = render(&Response::Group(g));
        assert!(out.contains("replication set: -"), "{out}");
        assert!(
            out.contains("1      db") && out.contains("2      logs"),
            "{out}"
        );
        assert_eq!(render(&Response::Groups { groups: vec![] }), "no groups\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(8 << 20), "8.0 MiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(64 << 10), "64.0 KiB");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(300), "5m");
        assert_eq!(human_duration(3720), "1h 2m");
        assert_eq!(human_duration(3601), "1h");
        assert_eq!(human_duration(90_061), "1d 1h");
    }
}
