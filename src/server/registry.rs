//! Live sessions: for `session list`, for TSIH allocation, for session reinstatement
//! (RFC 7143 §6.3.5: a new login with the same initiator name and ISID replaces the old
//! session), and for resets that reach every nexus of a LUN.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::server::writer::Traffic;

pub use crate::iscsi::SessionInfo;

/// One registered session: what `session list` shows and how to end it.
pub struct SessionEntry {
    pub target: String,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub negotiated: Vec<(String, String)>,
    pub traffic: Arc<Traffic>,
    /// Set to true to make the session's connection close.
    pub stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u16, Arc<SessionEntry>>,
    next_tsih: u16,
    resets: HashMap<(String, u64), Arc<AtomicU64>>,
}

#[derive(Default)]
pub struct SessionRegistry {
    inner: Mutex<Inner>,
}

impl SessionRegistry {
    pub fn list(&self) -> Vec<SessionInfo> {
        let inner = self.inner.lock();
        let mut v: Vec<SessionInfo> = inner
            .sessions
            .values()
            .map(|s| SessionInfo {
                target: s.target.clone(),
                initiator: s.initiator.clone(),
                isid: hex::encode(s.isid),
                tsih: s.tsih,
                connections: 1,
                negotiated: s.negotiated.clone(),
                bytes_in: s.traffic.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.traffic.bytes_out.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by_key(|s| s.tsih);
        v
    }

    /// Number of sessions logged in to `target`.
    pub fn count_for_target(&self, target: &str) -> usize {
        self.inner
            .lock()
            .sessions
            .values()
            .filter(|s| s.target == target)
            .count()
    }

    /// Whether session `tsih` is live and belongs to `initiator`, `isid` and `target`
    /// ("" for a Discovery session).
    pub fn exists(&self, initiator: &str, isid: [u8; 6], tsih: u16, target: &str) -> bool {
        self.inner
            .lock()
            .sessions
            .get(&tsih)
            .is_some_and(|s| s.initiator == initiator && s.isid == isid && s.target == target)
    }

    /// Register a new session, returning its TSIH and the sessions it replaces (same
    /// initiator, ISID and target), which the caller must stop.
    pub fn register(
        &self,
        make: impl FnOnce(u16) -> SessionEntry,
    ) -> (Arc<SessionEntry>, Vec<Arc<SessionEntry>>) {
        let mut inner = self.inner.lock();
        let mut tsih = inner.next_tsih;
        loop {
            // TSIH 0 is reserved for "new session" (RFC 7143 §11.12.4).
            tsih = tsih.wrapping_add(1);
            if tsih != 0 && !inner.sessions.contains_key(&tsih) {
                break;
            }
        }
        inner.next_tsih = tsih;
        let entry = Arc::new(make(tsih));
        let replaced: Vec<u16> = inner
            .sessions
            .values()
            .filter(|s| {
                s.initiator == entry.initiator && s.isid == entry.isid && s.target == entry.target
            })
            .map(|s| s.tsih)
            .collect();
        let replaced = replaced
            .into_iter()
            .filter_map(|t| inner.sessions.remove(&t))
            .collect();
        inner.sessions.insert(tsih, entry.clone());
        (entry, replaced)
    }

    pub fn unregister(&self, entry: &Arc<SessionEntry>) {
        let mut inner = self.inner.lock();
        if let Some(cur) = inner.sessions.get(&entry.tsih) {
            if Arc::ptr_eq(cur, entry) {
                inner.sessions.remove(&entry.tsih);
            }
        }
    }

    /// Ask every session to end (server shutdown).
    pub fn stop_all(&self) {
        for s in self.inner.lock().sessions.values() {
            let _ = s.stop.send(true);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().sessions.is_empty()
    }

    /// The reset counter shared by every nexus of (target, LUN).
    pub fn reset_counter(&self, target: &str, lun: u64) -> Arc<AtomicU64> {
        self.inner
            .lock()
            .resets
            .entry((target.to_string(), lun))
            .or_default()
            .clone()
    }

    /// A target reset: every LUN of the target counts one more reset.
    pub fn reset_target(&self, target: &str) {
        for ((t, _), c) in self.inner.lock().resets.iter() {
            if t == target {
                c.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}
