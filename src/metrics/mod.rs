//! The node's metrics: counters that live where they are counted, read by the
//! Prometheus endpoint without waiting on any I/O.
//!
//! The composition root builds one [`Registry`] and hands each layer only the handle it
//! counts into: a volume gets its [`VolumeIo`], a replication set its [`SetCounters`],
//! the iSCSI server the [`NodeCounters`]. Everything on the I/O path is a relaxed
//! atomic: a scrape may see one counter a few increments ahead of another, which
//! Prometheus tolerates, and no writer ever waits for a scrape. The map locks below
//! are taken only when a volume or set appears or goes, and by a scrape to copy the
//! list of handles out.

pub mod histogram;
pub mod http;
pub mod text;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use histogram::{Histogram, HistogramSnapshot};

/// Upper bounds (seconds) of the I/O latency buckets: from a page-cache hit to a
/// stalled disk.
pub const IO_LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds (seconds) of the cut pause buckets: a cut drains writes in flight
/// (tens of microseconds) and gives up after its timeout (2 s).
pub const CUT_PAUSE_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5,
];

/// What initiators did to one volume through SCSI, and what its file takes on disk.
#[derive(Debug)]
pub struct VolumeIo {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    /// UNMAP commands and WRITE SAMEs with UNMAP, and the bytes they deallocated.
    pub unmap_ops: AtomicU64,
    pub unmap_bytes: AtomicU64,
    pub read_latency: Histogram,
    pub write_latency: Histogram,
    /// Bytes the sparse file allocates, as last stat'ed in the background (a scrape
    /// never stats 1,000 files).
    pub allocated_bytes: AtomicU64,
    /// The node's initiator I/Os' time in the target (from their command's arrival to
    /// completion), summed in nanoseconds, shared by all its volumes (see
    /// [`Registry::foreground_io_nanos`]).
    node_io_nanos: Arc<AtomicU64>,
}

impl Default for VolumeIo {
    fn default() -> Self {
        VolumeIo {
            read_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            unmap_ops: AtomicU64::new(0),
            unmap_bytes: AtomicU64::new(0),
            read_latency: Histogram::new(IO_LATENCY_BUCKETS),
            write_latency: Histogram::new(IO_LATENCY_BUCKETS),
            allocated_bytes: AtomicU64::new(0),
            node_io_nanos: Arc::default(),
        }
    }
}

impl VolumeIo {
    /// One completed read of `bytes` whose volume I/O took `took`, `in_target` after
    /// its command arrived.
    pub fn read_done(&self, bytes: u64, took: Duration, in_target: Duration) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.node_io_nanos
            .fetch_add(nanos(in_target), Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_latency.observe(took);
    }

    /// One UNMAP (or WRITE SAME with UNMAP) that deallocated `bytes`.
    pub fn unmap_done(&self, bytes: u64) {
        self.unmap_ops.fetch_add(1, Ordering::Relaxed);
        self.unmap_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One completed write of `bytes` whose volume I/O took `took`, `in_target` after
    /// its command arrived.
    pub fn write_done(&self, bytes: u64, took: Duration, in_target: Duration) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.node_io_nanos
            .fetch_add(nanos(in_target), Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.write_latency.observe(took);
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What one primary replication set shipped, counted when a cycle commits or fails.
#[derive(Debug, Default)]
pub struct SetCounters {
    /// Page content of committed cycles, as read (before compression).
    pub data_bytes: AtomicU64,
    /// Everything committed cycles put on the wire: data as sent, records, framing.
    pub wire_bytes: AtomicU64,
    /// Zero/discard record headers of committed cycles.
    pub record_bytes: AtomicU64,
    pub cycles: AtomicU64,
    pub failed_cycles: AtomicU64,
}

/// The cycle figures [`SetCounters::committed`] adds up (the replication layer's
/// `CycleStats` in plain numbers, so this layer needs nothing above it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShippedBytes {
    pub data: u64,
    pub wire: u64,
    pub records: u64,
}

impl SetCounters {
    /// A cycle committed on the peer, having shipped `b`.
    pub fn committed(&self, b: ShippedBytes) {
        self.data_bytes.fetch_add(b.data, Ordering::Relaxed);
        self.wire_bytes.fetch_add(b.wire, Ordering::Relaxed);
        self.record_bytes.fetch_add(b.records, Ordering::Relaxed);
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    /// A cycle attempt failed (not an abort or a stop).
    pub fn failed(&self) {
        self.failed_cycles.fetch_add(1, Ordering::Relaxed);
    }
}

/// Node-wide counters.
#[derive(Debug)]
pub struct NodeCounters {
    /// iSCSI connections open now (login phase included).
    pub connections: AtomicI64,
    /// Logins refused, by reason (a short fixed name per iSCSI status detail).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// How long each consistent cut held writers off.
    pub cut_pause: Arc<Histogram>,
}

impl Default for NodeCounters {
    fn default() -> Self {
        NodeCounters {
            connections: AtomicI64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            cut_pause: Arc::new(Histogram::new(CUT_PAUSE_BUCKETS)),
        }
    }
}

impl NodeCounters {
    /// A login was refused for `reason`. Not on the I/O path: a short lock is fine.
    pub fn login_refused(&self, reason: &'static str) {
        *self.refused.lock().entry(reason).or_insert(0) += 1;
    }

    /// Refused logins so far, by reason.
    pub fn logins_refused(&self) -> Vec<(&'static str, u64)> {
        self.refused.lock().iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// Counts a connection open until the returned guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<NodeCounters>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every counter of the node, by owner name.
#[derive(Debug, Default)]
pub struct Registry {
    volumes: RwLock<BTreeMap<String, Arc<VolumeIo>>>,
    sets: RwLock<BTreeMap<String, Arc<SetCounters>>>,
    pub node: Arc<NodeCounters>,
    /// The time initiator reads and writes on every volume spent in the target, from
    /// their command's arrival to completion, summed (ns): replication cycles watch it
    /// to give way to the initiators (one atomic, not a sum over 1,000 volumes).
    foreground_io_nanos: Arc<AtomicU64>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// The counters of volume `name`, created on first use; a volume reopened under
    /// the same name keeps counting where it was.
    pub fn volume(&self, name: &str) -> Arc<VolumeIo> {
        if let Some(v) = self.volumes.read().get(name) {
            return v.clone();
        }
        self.volumes
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(VolumeIo {
                    node_io_nanos: self.foreground_io_nanos.clone(),
                    ..VolumeIo::default()
                })
            })
            .clone()
    }

    /// The time the reads and writes initiators completed on all volumes so far spent
    /// in the target, from their command's arrival, summed, in nanoseconds (it only
    /// grows). Its growth over a span of time is the mean number of them in flight then.
    pub fn foreground_io_nanos(&self) -> u64 {
        self.foreground_io_nanos.load(Ordering::Relaxed)
    }

    /// Volume `name` was deleted: its series go away.
    pub fn remove_volume(&self, name: &str) {
        self.volumes.write().remove(name);
    }

    /// The counters of replication set `name`, created on first use.
    pub fn set(&self, name: &str) -> Arc<SetCounters> {
        if let Some(s) = self.sets.read().get(name) {
            return s.clone();
        }
        self.sets
            .write()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Set `name` was deleted: its series go away.
    pub fn remove_set(&self, name: &str) {
        self.sets.write().remove(name);
    }

    /// Every volume's counters, by name (a copy of the handles: no lock is kept).
    pub fn volumes(&self) -> Vec<(String, Arc<VolumeIo>)> {
        self.volumes
            .read()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// The counters of set `name`, if it has any.
    pub fn set_if_any(&self, name: &str) -> Option<Arc<SetCounters>> {
        self.sets.read().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_foreground_load_sums_every_volumes_time_in_the_target_not_its_io_time() {
        let registry = Registry::new();
        let (a, b) = (registry.volume("a"), registry.volume("b"));
        let us = Duration::from_micros;
        a.write_done(4096, us(20), us(700));
        b.read_done(8192, us(30), us(300));
        a.unmap_done(1 << 20);
        assert_eq!(registry.foreground_io_nanos(), 1_000_000);
        // A volume reopened under its name adds to the same count.
        registry.volume("a").read_done(512, us(1), us(5));
        assert_eq!(registry.foreground_io_nanos(), 1_005_000);
        assert_eq!(a.write_ops.load(Ordering::Relaxed), 1);
        assert_eq!(a.read_ops.load(Ordering::Relaxed), 1);
    }
}
