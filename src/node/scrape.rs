//! What the metrics endpoint shows: the registry's counters plus gauges read from the
//! node's live state (dirty pages, set status, sessions), gathered without waiting on
//! any I/O. The one figure that needs a system call per volume, the file's allocated
//! bytes, is refreshed in the background.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::catalog::ReplicationRole;
use crate::metrics::text::{Exposition, Kind, Labels};
use crate::metrics::{HistogramSnapshot, VolumeIo};
use crate::replication::status::SetState;

use super::Node;

/// How often the allocated bytes of every volume file are stat'ed again.
const ALLOCATED_REFRESH: Duration = Duration::from_secs(10);

/// Every state a set can be in, in the order `twinlun_replication_status` lists them.
const STATES: [SetState; 9] = [
    SetState::Unsynchronized,
    SetState::StartReplication,
    SetState::Replicating,
    SetState::Ready,
    SetState::Suspended,
    SetState::Error,
    SetState::Promoted,
    SetState::PeerPromoted,
    SetState::SplitBrain,
];

/// Stats `path` and records the bytes its blocks take (sparse files take less than
/// their size). A failure leaves the last figure: a metric is no place to report it.
pub(super) fn refresh_allocated(path: &Path, io: &VolumeIo) {
    if let Ok(m) = std::fs::metadata(path) {
        io.allocated_bytes
            .store(m.blocks().saturating_mul(512), Ordering::Relaxed);
    }
}

/// One volume as a scrape sees it.
struct VolumeRow {
    /// `{volume="NAME"}`, rendered once for every family.
    labels: Labels,
    io: Arc<VolumeIo>,
    read: HistogramSnapshot,
    write: HistogramSnapshot,
    dirty: Option<u64>,
    size: Option<u64>,
}

impl Node {
    /// Starts the background task that keeps every volume's allocated bytes fresh
    /// (stat'ed on a blocking thread, never by a scrape). It ends with the node.
    pub fn spawn_metrics_refresh(self: &Arc<Self>) {
        let node: Weak<Node> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ALLOCATED_REFRESH).await;
                let Some(n) = node.upgrade() else { return };
                let files: Vec<_> = n
                    .volumes
                    .read()
                    .values()
                    .map(|v| (v.path().to_path_buf(), v.io_metrics().clone()))
                    .collect();
                drop(n);
                let _ = tokio::task::spawn_blocking(move || {
                    for (path, io) in files {
                        refresh_allocated(&path, &io);
                    }
                })
                .await;
            }
        });
    }

    /// The metrics page in the Prometheus text format. Takes locks only to copy
    /// handles and figures out; never waits on volume or replication I/O.
    pub fn metrics_text(&self) -> String {
        let volumes = self.volume_rows();
        let mut e = Exposition::with_capacity(4096 + volumes.len() * 3000);
        self.node_families(&mut e);
        volume_families(&mut e, &volumes);
        self.set_families(&mut e);
        e.finish()
    }

    fn volume_rows(&self) -> Vec<VolumeRow> {
        let open = self.volumes.read().clone();
        let catalog = self.catalog.read();
        self.metrics
            .volumes()
            .into_iter()
            .map(|(name, io)| {
                let dirty = open
                    .get(&name)
                    .and_then(|v| v.tracking().map(|t| t.dirty().count()));
                let size = catalog.volumes.get(&name).map(|s| s.size);
                VolumeRow {
                    read: io.read_latency.snapshot(),
                    write: io.write_latency.snapshot(),
                    labels: Labels::new(&[("volume", &name)]),
                    io,
                    dirty,
                    size,
                }
            })
            .collect()
    }

    fn node_families(&self, e: &mut Exposition) {
        e.family(
            "twinlun_build_info",
            Kind::Gauge,
            "Always 1; the version of this twinlun is in its label.",
        );
        e.int(
            "twinlun_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        e.family(
            "twinlun_engine_info",
            Kind::Gauge,
            "Always 1; the io engine serving the volumes (uring or threads) is in its label.",
        );
        e.int("twinlun_engine_info", &[("engine", self.engine.name())], 1);

        let mut per_target: BTreeMap<String, u64> = self
            .catalog
            .read()
            .targets
            .keys()
            .map(|t| (t.clone(), 0))
            .collect();
        for s in self.iscsi.sessions.list() {
            if let Some(n) = per_target.get_mut(&s.target) {
                *n += 1;
            }
        }
        e.family(
            "twinlun_sessions",
            Kind::Gauge,
            "iSCSI sessions logged in to the target now (discovery sessions not counted).",
        );
        for (t, n) in &per_target {
            e.int("twinlun_sessions", &[("target", t)], *n);
        }
        let node = &self.metrics.node;
        e.family(
            "twinlun_connections",
            Kind::Gauge,
            "iSCSI connections open now, including those still logging in.",
        );
        e.signed(
            "twinlun_connections",
            &[],
            node.connections.load(Ordering::Relaxed).max(0),
        );
        e.family(
            "twinlun_login_refused_total",
            Kind::Counter,
            "Logins refused, by the reason the login response gave.",
        );
        for (reason, n) in node.logins_refused() {
            e.int("twinlun_login_refused_total", &[("reason", reason)], n);
        }
        e.family(
            "twinlun_cut_pause_seconds",
            Kind::Histogram,
            "How long each consistent cut (snapshot or replication) held writers off.",
        );
        e.histogram("twinlun_cut_pause_seconds", &[], &node.cut_pause.snapshot());
        e.family(
            "twinlun_cow_memory_bytes",
            Kind::Gauge,
            "Memory the copy-on-write stores use for pages kept for snapshots and cuts being shipped.",
        );
        e.int("twinlun_cow_memory_bytes", &[], self.cow_budget.used());
        e.family(
            "twinlun_cow_memory_limit_bytes",
            Kind::Gauge,
            "Memory the copy-on-write stores may use before they spill to files.",
        );
        e.int(
            "twinlun_cow_memory_limit_bytes",
            &[],
            self.cow_budget.limit(),
        );
        e.family(
            "twinlun_cow_spill_bytes",
            Kind::Gauge,
            "Bytes of copy-on-write spill files in the data dir (kept pages that did not fit in memory).",
        );
        e.int("twinlun_cow_spill_bytes", &[], self.cow_budget.spilled());
    }

    fn set_families(&self, e: &mut Exposition) {
        struct Row {
            name: String,
            peer: String,
            role: &'static str,
            every: Option<u64>,
            /// The cap that binds (`--max-rate` of the set or its peer), primary only.
            cap: Option<u64>,
            status: Option<crate::replication::status::SetStatus>,
            counters: Option<Arc<crate::metrics::SetCounters>>,
            points: Option<usize>,
        }
        let specs: Vec<_> = {
            let c = self.catalog.read();
            c.replications
                .iter()
                .map(|(n, s)| {
                    let cap = (s.role == ReplicationRole::Primary)
                        .then(|| {
                            crate::replication::rate::effective(
                                s.max_rate,
                                c.peers.get(&s.peer).and_then(|p| p.max_rate),
                            )
                        })
                        .flatten();
                    (n.clone(), s.peer.clone(), s.role, s.every_secs, cap)
                })
                .collect()
        };
        let rows: Vec<Row> = specs
            .into_iter()
            .map(|(name, peer, role, every, cap)| Row {
                cap,
                status: self.replication.status(&name),
                counters: self.metrics.set_if_any(&name),
                points: match role {
                    ReplicationRole::Secondary => self
                        .replication
                        .recovery_points(&name)
                        .ok()
                        .map(|p| p.len()),
                    ReplicationRole::Primary => None,
                },
                role: match role {
                    ReplicationRole::Primary => "primary",
                    ReplicationRole::Secondary => "secondary",
                },
                name,
                peer,
                every,
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);

        e.family(
            "twinlun_replication_set_info",
            Kind::Gauge,
            "Always 1; the set's peer and this node's role in it are in its labels.",
        );
        for r in &rows {
            e.int(
                "twinlun_replication_set_info",
                &[("set", &r.name), ("peer", &r.peer), ("role", r.role)],
                1,
            );
        }
        e.family(
            "twinlun_replication_status",
            Kind::Gauge,
            "1 for the state the set is in, 0 for every other state.",
        );
        for r in &rows {
            let current = r.status.as_ref().map(|s| s.state);
            for st in STATES {
                e.int(
                    "twinlun_replication_status",
                    &[("set", &r.name), ("peer", &r.peer), ("state", st.as_str())],
                    u64::from(current == Some(st)),
                );
            }
        }
        let last_cut = |r: &Row| r.status.as_ref().and_then(|s| s.last_cut_unix);
        e.family(
            "twinlun_replication_lag_seconds",
            Kind::Gauge,
            "Seconds since the last cut the peer committed was taken (no sample before the first).",
        );
        for r in &rows {
            if let Some(t) = last_cut(r) {
                e.real(
                    "twinlun_replication_lag_seconds",
                    &[("set", &r.name), ("peer", &r.peer)],
                    (now - t as f64).max(0.0),
                );
            }
        }
        e.family(
            "twinlun_replication_last_cut_timestamp_seconds",
            Kind::Gauge,
            "When the last cut the peer committed was taken, Unix seconds.",
        );
        for r in &rows {
            if let Some(t) = last_cut(r) {
                e.int(
                    "twinlun_replication_last_cut_timestamp_seconds",
                    &[("set", &r.name), ("peer", &r.peer)],
                    t,
                );
            }
        }
        e.family(
            "twinlun_replication_interval_seconds",
            Kind::Gauge,
            "The set's cycle interval (`--every`), for sets that have one.",
        );
        for r in &rows {
            if let Some(every) = r.every {
                e.int(
                    "twinlun_replication_interval_seconds",
                    &[("set", &r.name), ("peer", &r.peer)],
                    every,
                );
            }
        }
        e.family(
            "twinlun_replication_max_rate_bytes_per_second",
            Kind::Gauge,
            "The cap a set's cycles are held to (the lower of its own and its peer's `--max-rate`), for sets that have one.",
        );
        for r in &rows {
            if let Some(cap) = r.cap {
                e.int(
                    "twinlun_replication_max_rate_bytes_per_second",
                    &[("set", &r.name), ("peer", &r.peer)],
                    cap,
                );
            }
        }
        type Counter = fn(&crate::metrics::SetCounters) -> u64;
        let counters: [(&str, &str, Counter); 5] = [
            (
                "twinlun_replication_data_bytes_total",
                "Page content committed cycles shipped, as read (before compression).",
                |c| c.data_bytes.load(Ordering::Relaxed),
            ),
            (
                "twinlun_replication_wire_bytes_total",
                "Bytes committed cycles put on the wire: data as sent (compressed or not), records and framing.",
                |c| c.wire_bytes.load(Ordering::Relaxed),
            ),
            (
                "twinlun_replication_record_bytes_total",
                "Bytes of zero and discard records committed cycles shipped (the zeros themselves do not travel).",
                |c| c.record_bytes.load(Ordering::Relaxed),
            ),
            (
                "twinlun_replication_cycles_total",
                "Cycles the peer committed since this node started.",
                |c| c.cycles.load(Ordering::Relaxed),
            ),
            (
                "twinlun_replication_failed_cycles_total",
                "Cycle attempts that failed (aborts and shutdowns not counted) since this node started.",
                |c| c.failed_cycles.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            e.family(name, Kind::Counter, help);
            for r in &rows {
                if let Some(c) = &r.counters {
                    e.int(name, &[("set", &r.name), ("peer", &r.peer)], read(c));
                }
            }
        }
        // There is no rate cap yet: when one exists, its gauge goes beside this one.
        e.family(
            "twinlun_replication_rate_bytes_per_second",
            Kind::Gauge,
            "Rate of the running cycle (0 when none runs).",
        );
        for r in &rows {
            if r.role == "primary" {
                let rate = r
                    .status
                    .as_ref()
                    .and_then(|s| s.progress)
                    .map(|p| p.rate_bytes_per_sec)
                    .unwrap_or(0.0);
                e.real(
                    "twinlun_replication_rate_bytes_per_second",
                    &[("set", &r.name), ("peer", &r.peer)],
                    rate,
                );
            }
        }
        e.family(
            "twinlun_replication_recovery_points",
            Kind::Gauge,
            "Recovery points a secondary set keeps (the current cut included).",
        );
        for r in &rows {
            if let Some(n) = r.points {
                e.int(
                    "twinlun_replication_recovery_points",
                    &[("set", &r.name), ("peer", &r.peer)],
                    n as u64,
                );
            }
        }
    }
}

fn volume_families(e: &mut Exposition, rows: &[VolumeRow]) {
    type Counter = fn(&VolumeIo) -> u64;
    let counters: [(&str, &str, Counter); 6] = [
        (
            "twinlun_volume_read_ops_total",
            "Reads initiators completed on the volume.",
            |v| v.read_ops.load(Ordering::Relaxed),
        ),
        (
            "twinlun_volume_read_bytes_total",
            "Bytes initiators read from the volume.",
            |v| v.read_bytes.load(Ordering::Relaxed),
        ),
        (
            "twinlun_volume_write_ops_total",
            "Writes initiators completed on the volume.",
            |v| v.write_ops.load(Ordering::Relaxed),
        ),
        (
            "twinlun_volume_write_bytes_total",
            "Bytes initiators wrote to the volume.",
            |v| v.write_bytes.load(Ordering::Relaxed),
        ),
        (
            "twinlun_volume_unmap_ops_total",
            "UNMAP commands completed on the volume (0 until the target implements UNMAP).",
            |v| v.unmap_ops.load(Ordering::Relaxed),
        ),
        (
            "twinlun_volume_unmap_bytes_total",
            "Bytes initiators unmapped (0 until the target implements UNMAP).",
            |v| v.unmap_bytes.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        e.family(name, Kind::Counter, help);
        for r in rows {
            e.int_at(name, &r.labels, read(&r.io));
        }
    }
    e.family(
        "twinlun_volume_read_latency_seconds",
        Kind::Histogram,
        "Time the volume took to serve a read (from the SCSI command to the data).",
    );
    for r in rows {
        e.histogram_at("twinlun_volume_read_latency_seconds", &r.labels, &r.read);
    }
    e.family(
        "twinlun_volume_write_latency_seconds",
        Kind::Histogram,
        "Time the volume took to complete a write (tracking, copy-on-write and the file write).",
    );
    for r in rows {
        e.histogram_at("twinlun_volume_write_latency_seconds", &r.labels, &r.write);
    }
    e.family(
        "twinlun_volume_dirty_pages",
        Kind::Gauge,
        "Pages written since the volume's last replication cut (volumes with write tracking).",
    );
    for r in rows {
        if let Some(d) = r.dirty {
            e.int_at("twinlun_volume_dirty_pages", &r.labels, d);
        }
    }
    e.family(
        "twinlun_volume_allocated_bytes",
        Kind::Gauge,
        "Bytes the volume's sparse file allocates on disk (refreshed every 10 s).",
    );
    for r in rows {
        e.int_at(
            "twinlun_volume_allocated_bytes",
            &r.labels,
            r.io.allocated_bytes.load(Ordering::Relaxed),
        );
    }
    e.family(
        "twinlun_volume_size_bytes",
        Kind::Gauge,
        "The volume's size as initiators see it.",
    );
    for r in rows {
        if let Some(s) = r.size {
            e.int_at("twinlun_volume_size_bytes", &r.labels, s);
        }
    }
}
