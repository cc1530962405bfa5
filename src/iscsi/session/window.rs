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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_opens_as_commands_complete() {
        let w = Window::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        let a = CmdSlot::new(&w);
        let b = CmdSlot::new(&w);
        w.set_exp_cmd_sn(12);
        assert_eq!(w.max_cmd_sn(), 13);
        drop(a);
        assert_eq!(w.max_cmd_sn(), 14);
        drop(b);
        assert_eq!(w.max_cmd_sn(), 15);
    }

    #[test]
    fn window_admits_only_exp_to_max() {
        let w = Window::new(10, 2);
        assert!(w.admits(10) && w.admits(11));
        assert!(!w.admits(12), "beyond MaxCmdSN");
        assert!(!w.admits(9), "a duplicate below ExpCmdSN");
        let a = CmdSlot::new(&w);
        w.set_exp_cmd_sn(11);
        let b = CmdSlot::new(&w);
        w.set_exp_cmd_sn(12);
        // Both places taken: MaxCmdSN = ExpCmdSN - 1, so even ExpCmdSN is refused.
        assert_eq!(w.max_cmd_sn(), 11);
        assert!(!w.admits(12));
        drop(a);
        assert!(w.admits(12));
        drop(b);
    }

    #[test]
    fn window_wraps() {
        let w = Window::new(u32::MAX, 3);
        assert!(w.admits(u32::MAX) && w.admits(0) && w.admits(1));
        assert!(!w.admits(2) && !w.admits(u32::MAX - 1));
    }

    #[test]
    fn immediate_allowance_is_bounded_per_kind() {
        let w = Window::new(1, 8);
        let held: Vec<CmdSlot> = (0..IMMEDIATE_ALLOWANCE)
            .map(|_| {
                w.try_immediate(Immediate::Other)
                    .expect("within the allowance")
            })
            .collect();
        assert!(w.try_immediate(Immediate::Other).is_none());
        // Task management keeps its own allowance.
        let tmf = w.try_immediate(Immediate::TaskManagement);
        assert!(tmf.is_some());
        // Immediate commands leave the CmdSN window alone.
        assert_eq!(w.max_cmd_sn(), 8);
        drop(held);
        assert_eq!(w.immediate_outstanding(Immediate::Other), 0);
        assert_eq!(w.max_cmd_sn(), 8);
        assert!(w.try_immediate(Immediate::Other).is_some());
    }

    /// What a test expects of one arrival.
    #[derive(Debug, PartialEq, Eq)]
    enum Want {
        Deliver(Vec<u32>),
        Held,
        Duplicate,
        Ignored,
    }

    fn outcome(a: Arrival<u32>) -> Want {
        match a {
            Arrival::Deliver(v) => Want::Deliver(v.into_iter().map(|(sn, _)| sn).collect()),
            Arrival::Held => Want::Held,
            Arrival::Duplicate => Want::Duplicate,
            Arrival::Ignored { .. } => Want::Ignored,
        }
    }

    #[test]
    fn cmd_sn_ordering_table() {
        use Want::*;
        const M: u32 = u32::MAX;
        // (case, ExpCmdSN at start, window depth, arrivals with what each gives,
        // ExpCmdSN after). Delivered commands keep their slots, so the window only
        // moves by ExpCmdSN.
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, u32, u32, &[(u32, Want)], u32)] = &[
            (
                "in order",
                10,
                4,
                &[(10, Deliver(vec![10])), (11, Deliver(vec![11]))],
                12,
            ),
            (
                "early ones held until the gap fills, then delivered in order",
                10,
                4,
                &[(12, Held), (11, Held), (10, Deliver(vec![10, 11, 12]))],
                13,
            ),
            (
                "a gap stops the run",
                10,
                8,
                &[(11, Held), (13, Held), (10, Deliver(vec![10, 11]))],
                12,
            ),
            (
                "duplicate of a held command",
                10,
                4,
                &[(12, Held), (12, Duplicate)],
                10,
            ),
            (
                "duplicate of a delivered command is below ExpCmdSN",
                10,
                4,
                &[(10, Deliver(vec![10])), (10, Ignored)],
                11,
            ),
            ("beyond MaxCmdSN", 10, 2, &[(12, Ignored), (11, Held)], 10),
            ("below ExpCmdSN", 10, 2, &[(9, Ignored)], 10),
            (
                "half the serial space away",
                0,
                4,
                &[(0x8000_0000, Ignored)],
                0,
            ),
            (
                "every slot taken: even ExpCmdSN is refused",
                10,
                2,
                &[
                    (10, Deliver(vec![10])),
                    (11, Deliver(vec![11])),
                    (12, Ignored),
                ],
                12,
            ),
            (
                "wraps at 2^32",
                M - 1,
                4,
                &[
                    (0, Held),
                    (M, Held),
                    (1, Held),
                    (M - 1, Deliver(vec![M - 1, M, 0, 1])),
                ],
                2,
            ),
            (
                "out of the window across the wrap",
                M,
                3,
                &[(2, Ignored), (M - 1, Ignored)],
                M,
            ),
        ];
        for (case, exp, depth, arrivals, exp_after) in cases {
            let w = Window::new(*exp, *depth);
            let mut seq = Sequencer::new(w.clone());
            let mut slots = Vec::new();
            for (sn, want) in arrivals.iter() {
                let a = seq.on_command(*sn, *sn);
                if let Arrival::Deliver(v) = &a {
                    assert!(v.iter().all(|(_, s)| s.immediate.is_none()), "{case}");
                }
                let got = match a {
                    Arrival::Deliver(v) => {
                        let sns = v.iter().map(|(sn, _)| *sn).collect();
                        slots.extend(v.into_iter().map(|(_, s)| s));
                        Deliver(sns)
                    }
                    other => outcome(other),
                };
                assert_eq!(&got, want, "{case}: CmdSN {sn}");
            }
            assert_eq!(w.exp_cmd_sn(), *exp_after, "{case}: ExpCmdSN after");
        }
    }

    #[test]
    fn completing_delivered_commands_opens_the_window() {
        let w = Window::new(10, 1);
        let mut seq = Sequencer::new(w.clone());
        let Arrival::Deliver(mut first) = seq.on_command(10, 10) else {
            panic!("10 is expected")
        };
        assert_eq!(outcome(seq.on_command(11, 11)), Want::Ignored);
        first.clear();
        assert_eq!(outcome(seq.on_command(11, 11)), Want::Deliver(vec![11]));
    }

    #[test]
    fn immediate_allowance_table() {
        // (kind taken IMMEDIATE_ALLOWANCE times already, kind asked, admitted)
        let cases = [
            (Immediate::Other, Immediate::Other, false),
            (Immediate::Other, Immediate::TaskManagement, true),
            (Immediate::TaskManagement, Immediate::TaskManagement, false),
            (Immediate::TaskManagement, Immediate::Other, true),
        ];
        for (full, ask, admitted) in cases {
            let w = Window::new(5, 4);
            let seq: Sequencer<u32> = Sequencer::new(w.clone());
            let held: Vec<_> = (0..IMMEDIATE_ALLOWANCE)
                .map(|_| seq.on_immediate(full).expect("within the allowance"))
                .collect();
            assert_eq!(
                seq.on_immediate(ask).is_some(),
                admitted,
                "{full:?} full, {ask:?}"
            );
            // Immediate commands neither take nor move CmdSN.
            assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (5, 8));
            drop(held);
            assert!(seq.on_immediate(full).is_some());
        }
    }
}
