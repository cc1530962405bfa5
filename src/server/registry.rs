//! Live sessions, for `session list` and for session reinstatement.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub target: String,
    pub initiator: String,
    /// ISID as 12 hex digits.
    pub isid: String,
    pub tsih: u16,
    pub connections: u32,
    /// Negotiated operational keys, in negotiation order.
    pub negotiated: Vec<(String, String)>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Default)]
pub struct SessionRegistry {}

impl SessionRegistry {
    pub fn list(&self) -> Vec<SessionInfo> {
        Vec::new()
    }
}
