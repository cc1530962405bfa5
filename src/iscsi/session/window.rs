//! The CmdSN window (RFC 7143 §4.2.2.1) and the immediate-command allowance
//! (§3.2.2.1): which commands are delivered, in what order, which are held for a
//! missing CmdSN, and which are ignored.
//!
//! `Window` is the part the writer stamps into every PDU (ExpCmdSN, MaxCmdSN); a
//! `CmdSlot` is one command's place in it, and dropping the slot completes the
//! command. `Sequencer` orders arrivals by CmdSN and says what to deliver.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::iscsi::serial;

/// Immediate commands outstanding at once per connection, each kind (RFC 7143 §3.2.2.1:
/// "a target MUST be able to handle at least one immediate task management command and
/// one immediate non-task-management command per connection at any time"). More are
/// refused with Reject "too many immediate commands" (§11.17.1, reason 0x06).
pub const IMMEDIATE_ALLOWANCE: u32 = 4;

/// Which allowance an immediate command counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Immediate {
    TaskManagement,
    Other,
}

/// The command window shared by the reader (which advances ExpCmdSN) and the writer
/// (which stamps it). MaxCmdSN = base + completed + depth - 1: it grows as commands
/// complete, never shrinks, and bounds the commands queued at the target to `depth`.
pub struct Window {
    exp_cmd_sn: AtomicU32,
    completed: AtomicU32,
    base: u32,
    depth: u32,
    /// Immediate commands outstanding: task management, others.
    immediate: [AtomicU32; 2],
}

impl Window {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Arc<Window> {
        Arc::new(Window {
            exp_cmd_sn: AtomicU32::new(exp_cmd_sn),
            completed: AtomicU32::new(0),
            base: exp_cmd_sn,
            depth,
            immediate: [AtomicU32::new(0), AtomicU32::new(0)],
        })
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.load(Ordering::Acquire)
    }
    pub fn set_exp_cmd_sn(&self, v: u32) {
        self.exp_cmd_sn.store(v, Ordering::Release);
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.base
            .wrapping_add(self.completed.load(Ordering::Acquire))
            .wrapping_add(self.depth - 1)
    }

    /// RFC 7143 §4.2.2.1: "For non-immediate commands, the CmdSN field can take any
    /// value from ExpCmdSN to MaxCmdSN inclusive." With every slot taken, MaxCmdSN is
    /// ExpCmdSN - 1 and nothing is admitted, not even CmdSN = ExpCmdSN.
    pub fn admits(&self, cmd_sn: u32) -> bool {
        let exp = self.exp_cmd_sn();
        serial::le(exp, cmd_sn) && serial::le(cmd_sn, self.max_cmd_sn())
    }

    /// A place for an immediate command (§3.2.2.1), if its allowance is not used up.
    pub fn try_immediate(self: &Arc<Self>, kind: Immediate) -> Option<CmdSlot> {
        let counter = &self.immediate[kind as usize];
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < IMMEDIATE_ALLOWANCE).then_some(n + 1)
            })
            .ok()?;
        Some(CmdSlot {
            window: self.clone(),
            immediate: Some(kind),
        })
    }

    /// Immediate commands of `kind` outstanding now.
    pub fn immediate_outstanding(&self, kind: Immediate) -> u32 {
        self.immediate[kind as usize].load(Ordering::Acquire)
    }
}

/// A command's place in the window (or in the immediate allowance); dropping it
/// completes the command.
pub struct CmdSlot {
    window: Arc<Window>,
    immediate: Option<Immediate>,
}

impl CmdSlot {
    /// The place of the non-immediate command just taken at ExpCmdSN.
    pub fn new(w: &Arc<Window>) -> CmdSlot {
        CmdSlot {
            window: w.clone(),
            immediate: None,
        }
    }
}

impl Drop for CmdSlot {
    fn drop(&mut self) {
        match self.immediate {
            None => {
                self.window.completed.fetch_add(1, Ordering::AcqRel);
            }
            Some(kind) => {
                self.window.immediate[kind as usize].fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// What becomes of a non-immediate command on arrival (§4.2.2.1).
#[derive(Debug)]
pub enum Arrival<T> {
    /// It is the one expected: deliver it, then the held ones it unblocks, in CmdSN
    /// order, each with its place in the window.
    Deliver(Vec<(T, CmdSlot)>),
    /// Inside the window, ahead of ExpCmdSN: held until the gap fills.
    Held,
    /// Another copy of a command already held: ignored.
    Duplicate,
    /// Outside [ExpCmdSN, MaxCmdSN], or a duplicate of one already delivered: "The
    /// target MUST silently ignore any non-immediate command outside of this range or
    /// non-immediate duplicates within the range." Nothing is kept of it.
    Ignored { exp: u32, max: u32 },
}

impl std::fmt::Debug for CmdSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmdSlot")
            .field("immediate", &self.immediate)
            .finish()
    }
}

/// Orders a connection's non-immediate commands by CmdSN (§4.2.2.1): delivers in
/// order, holds what comes early (the window bounds how much), drops the rest.
pub struct Sequencer<T> {
    window: Arc<Window>,
    pending: BTreeMap<u32, T>,
}

impl<T> Sequencer<T> {
    pub fn new(window: Arc<Window>) -> Sequencer<T> {
        Sequencer {
            window,
            pending: BTreeMap::new(),
        }
    }

    pub fn window(&self) -> &Arc<Window> {
        &self.window
    }

    /// Commands held for a missing CmdSN.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// A non-immediate command with `cmd_sn` arrived.
    pub fn on_command(&mut self, cmd_sn: u32, item: T) -> Arrival<T> {
        let w = &self.window;
        let exp = w.exp_cmd_sn();
        if !w.admits(cmd_sn) {
            return Arrival::Ignored {
                exp,
                max: w.max_cmd_sn(),
            };
        }
        if cmd_sn != exp {
            return match self.pending.entry(cmd_sn) {
                Entry::Occupied(_) => Arrival::Duplicate,
                Entry::Vacant(v) => {
                    v.insert(item);
                    Arrival::Held
                }
            };
        }
        let mut out = Vec::new();
        let mut next = Some(item);
        while let Some(item) = next {
            let slot = CmdSlot::new(w);
            let exp = w.exp_cmd_sn().wrapping_add(1);
            w.set_exp_cmd_sn(exp);
            out.push((item, slot));
            next = self.pending.remove(&exp);
        }
        Arrival::Deliver(out)
    }

    /// An immediate command arrived (§4.2.2.1: its CmdSN may lie outside the window,
    /// but what it may hold is bounded all the same, §3.2.2.1). None: Reject it with
    /// "too many immediate commands" (§11.17.1).
    pub fn on_immediate(&self, kind: Immediate) -> Option<CmdSlot> {
        self.window.try_immediate(kind)
    }
}
