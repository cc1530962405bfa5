//! The full feature phase of a session as state machines without I/O (RFC 7143 §4.2,
//! §6, §11): the CmdSN window (`window`), Data-Out and R2T collection (`dataout`),
//! task management (`tmf`), logout (`logout`) and connection timing (`timers`).
//!
//! As in quinn-proto, decoded PDUs and the time go in through `on_*` methods and what
//! to do comes out as values; the connection task in `server` reads the socket, feeds
//! these, and carries out what they return (runs I/O, sends PDUs, closes).

pub mod dataout;
pub mod logout;
pub mod timers;
pub mod tmf;
pub mod window;

use crate::iscsi::pdu::RESERVED_TAG;

/// Target Transfer Tags of one connection: R2Ts and NOP-In pings draw from it. Never
/// the reserved tag; wraps around.
#[derive(Debug, Clone)]
pub struct TransferTags {
    next: u32,
}

impl Default for TransferTags {
    fn default() -> Self {
        TransferTags { next: 1 }
    }
}

impl TransferTags {
    pub fn allocate(&mut self) -> u32 {
        let t = self.next;
        self.next = self.next.wrapping_add(1);
        if self.next == RESERVED_TAG {
            self.next = 1;
        }
        t
    }
}
