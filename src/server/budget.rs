//! Bytes in flight as semaphore permits (crucible `io_limits.rs` style), so what a
//! session holds in memory follows the CmdSN window and the negotiated burst sizes,
//! never what an initiator chooses to send.
//!
//! - Data-In: each session has its own read budget (`exec::SESSION_READ_BUDGET`); a
//!   read waits for permits before it reads.
//! - Data-Out: a write takes permits for the data it solicits before its first R2T goes
//!   out, from its session's budget and from the node's. The session's share is below
//!   the node's, so one session cannot take it all. A command that got its permits can
//!   always finish (they are taken for its whole solicited transfer at once), so a
//!   session never waits on itself.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scsi::MAX_TRANSFER_BYTES;

/// Data-Out bytes all sessions of the node may hold at once.
pub const NODE_WRITE_BUDGET: u32 = 16 * MAX_TRANSFER_BYTES;
/// Data-Out bytes one session may hold at once (at least one largest transfer).
pub const SESSION_WRITE_BUDGET: u32 = 3 * MAX_TRANSFER_BYTES;

/// Permits for one command's solicited Data-Out, held until its write has completed.
pub struct WriteBudget {
    _session: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// The two budgets a session's writes draw from.
#[derive(Clone)]
pub struct WriteBudgets {
    session: Arc<Semaphore>,
    node: Arc<Semaphore>,
}

impl WriteBudgets {
    pub fn new(node: Arc<Semaphore>) -> WriteBudgets {
        WriteBudgets {
            session: Arc::new(Semaphore::new(SESSION_WRITE_BUDGET as usize)),
            node,
        }
    }

    fn permits(bytes: u32) -> u32 {
        bytes.min(SESSION_WRITE_BUDGET)
    }

    /// The permits for `bytes` if both budgets have them now.
    pub fn try_take(&self, bytes: u32) -> Option<WriteBudget> {
        let n = Self::permits(bytes);
        let s = self.session.clone().try_acquire_many_owned(n).ok()?;
        let nd = self.node.clone().try_acquire_many_owned(n).ok()?;
        Some(WriteBudget {
            _session: s,
            _node: nd,
        })
    }

    /// Wait for the permits for `bytes`: the session's first, then the node's (always
    /// in that order). None if a budget was closed.
    pub async fn take(self, bytes: u32) -> Option<WriteBudget> {
        let n = Self::permits(bytes);
        let s = self.session.acquire_many_owned(n).await.ok()?;
        let nd = self.node.acquire_many_owned(n).await.ok()?;
        Some(WriteBudget {
            _session: s,
            _node: nd,
        })
    }

    /// Bytes the session may still take now.
    pub fn session_available(&self) -> usize {
        self.session.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_share_is_below_the_node_budget() {
        let node = Arc::new(Semaphore::new(NODE_WRITE_BUDGET as usize));
        let a = WriteBudgets::new(node.clone());
        let b = WriteBudgets::new(node.clone());
        let mut held = Vec::new();
        while let Some(p) = a.try_take(MAX_TRANSFER_BYTES) {
            held.push(p);
        }
        assert_eq!(held.len() as u32, SESSION_WRITE_BUDGET / MAX_TRANSFER_BYTES);
        // Another session still gets its share.
        assert!(b.try_take(MAX_TRANSFER_BYTES).is_some());
        drop(held.pop());
        let more = a.clone().take(MAX_TRANSFER_BYTES).await;
        assert!(more.is_some());
    }
}
