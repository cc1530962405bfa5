//! What a logical unit shares among all its I_T nexuses: reservations (persistent and
//! RESERVE/RELEASE), the medium of a removable LU and who prevents its removal, and the
//! unit attentions one nexus's command raises for others. Each session's
//! [`LogicalUnit`](super::LogicalUnit) points at the one `LuState` of its LU.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::reservations::{self, Nexus, PrState, ProutOutcome};
use super::Sense;

/// Unit attentions waiting for nexuses that have not collected them; past this the
/// oldest go (a nexus that never comes back must not grow the queue).
const MAX_MAILBOX: usize = 256;

/// Whether a session is still there. The server answers from the session's connection:
/// an initiator that closed it and logged in again may send its next command before the
/// old session's own task has noticed the close and reported the nexus lost.
pub trait Presence: Send + Sync {
    fn gone(&self) -> bool;
}

/// A session as an LU's shared state knows it: an id, so that a reinstated session's end
/// never releases what its successor on the same nexus took, and its presence.
#[derive(Clone)]
pub struct SessionRef {
    id: u64,
    presence: Option<Arc<dyn Presence>>,
}

impl SessionRef {
    pub fn new(id: u64, presence: Arc<dyn Presence>) -> SessionRef {
        SessionRef {
            id,
            presence: Some(presence),
        }
    }

    /// A session that is there until `LuState::nexus_lost` says otherwise (tests).
    pub fn fixed(id: u64) -> SessionRef {
        SessionRef { id, presence: None }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn gone(&self) -> bool {
        self.presence.as_ref().is_some_and(|p| p.gone())
    }
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.id)
    }
}

/// A holder of a RESERVE(6)/(10) reservation or of a PREVENT: the nexus and the
/// session through which it did it.
#[derive(Debug, Clone)]
struct Holder {
    nexus: Nexus,
    session: SessionRef,
}

impl Holder {
    /// Another nexus holds it, through a session that is still there. A holder whose
    /// session is gone is treated as its nexus loss would (SAM-5 6.3.4): it holds nothing.
    fn bars(&self, nexus: &Nexus) -> bool {
        self.nexus != *nexus && !self.session.gone()
    }
}

#[derive(Debug)]
struct Inner {
    pr: PrState,
    /// RESERVE(6)/(10) (SPC-2 5.5.1).
    reserved_by: Option<Holder>,
    /// Nexuses with medium removal prevented (SBC-4 5.15).
    preventing: Vec<Holder>,
    /// The medium of a removable LU is loaded.
    loaded: bool,
    mailbox: VecDeque<(Nexus, Sense)>,
}

/// The state of one logical unit shared by every nexus (`Send + Sync`).
#[derive(Debug)]
pub struct LuState {
    inner: Mutex<Inner>,
    /// Bumped whenever a unit attention is posted: sessions look at the mailbox only
    /// when it moved.
    posted: AtomicU64,
    /// Some reservation or registration exists: without one no command can conflict,
    /// and the I/O path checks this flag instead of taking the lock.
    guarded: AtomicBool,
    /// Held across a PERSISTENT RESERVE OUT and the save of its result, so saves land in
    /// the order the changes were made.
    saving: Mutex<()>,
    /// The LU's mode pages (WCE, SWP, ...): one set for every nexus (SPC-5 7.5.1), so a
    /// MODE SELECT through one session is what every other session sees.
    pub(crate) mode: Mutex<super::mode::ModeState>,
}

impl Default for LuState {
    fn default() -> LuState {
        LuState::with_pr(PrState::default())
    }
}

impl LuState {
    /// An LU whose persistent reservations were restored (APTPL) or are empty.
    pub fn with_pr(pr: PrState) -> LuState {
        let guarded = AtomicBool::new(pr.has_registrations() || pr.reservation.is_some());
        LuState {
            guarded,
            inner: Mutex::new(Inner {
                pr,
                reserved_by: None,
                preventing: Vec::new(),
                loaded: true,
                mailbox: VecDeque::new(),
            }),
            posted: AtomicU64::new(0),
            saving: Mutex::new(()),
            mode: Mutex::new(super::mode::ModeState::default()),
        }
    }

    /// Recomputes `guarded` after a change made under the lock.
    fn note(&self, inner: &Inner) {
        let g = inner.reserved_by.is_some()
            || inner.pr.has_registrations()
            || inner.pr.reservation.is_some();
        self.guarded.store(g, Ordering::Release);
    }

    /// A copy of the persistent reservation state (what APTPL saves).
    pub fn pr(&self) -> PrState {
        self.inner.lock().pr.clone()
    }

    /// Puts back a state (a save that failed undoes its change).
    pub fn restore_pr(&self, pr: PrState) {
        let mut inner = self.inner.lock();
        inner.pr = pr;
        self.note(&inner);
    }

    /// Serializes PERSISTENT RESERVE OUT with its save.
    pub fn saving(&self) -> MutexGuard<'_, ()> {
        self.saving.lock()
    }

    /// Whether a command from `nexus` meets RESERVATION CONFLICT: a RESERVE(6)/(10) of
    /// another nexus allows only INQUIRY, REPORT LUNS, REQUEST SENSE and RELEASE (SPC-2
    /// 5.5.1); a persistent reservation follows its type; with any PR registration,
    /// RESERVE and RELEASE themselves conflict (SPC-5 5.14.3).
    pub fn conflicts(&self, nexus: &Nexus, cdb: &[u8]) -> bool {
        if !self.guarded.load(Ordering::Acquire) {
            return false;
        }
        let opcode = cdb.first().copied().unwrap_or(0);
        let mut inner = self.inner.lock();
        self.drop_gone_reservation(&mut inner, nexus);
        let spc2 = matches!(opcode, 0x16 | 0x17 | 0x56 | 0x57);
        if spc2 && inner.pr.has_registrations() {
            return true;
        }
        if let Some(h) = &inner.reserved_by {
            if h.bars(nexus) && !matches!(opcode, 0x12 | 0xA0 | 0x03 | 0x17 | 0x57 | 0x16 | 0x56) {
                return true;
            }
        }
        if spc2 {
            return false;
        }
        inner.pr.conflicts(nexus, reservations::access(cdb))
    }

    /// RESERVE(6)/(10) (SPC-2 7.21): granted (true) unless another nexus holds it.
    pub fn reserve(&self, nexus: &Nexus, session: &SessionRef) -> bool {
        let mut inner = self.inner.lock();
        self.drop_gone_reservation(&mut inner, nexus);
        if inner.reserved_by.as_ref().is_some_and(|h| h.bars(nexus)) {
            return false;
        }
        inner.reserved_by = Some(Holder {
            nexus: nexus.clone(),
            session: session.clone(),
        });
        self.note(&inner);
        true
    }

    /// RELEASE(6)/(10) (SPC-2 7.17): releases this nexus's reservation; anything else is
    /// GOOD and changes nothing.
    pub fn release(&self, nexus: &Nexus) {
        let mut inner = self.inner.lock();
        if inner
            .reserved_by
            .as_ref()
            .is_some_and(|h| h.nexus == *nexus)
        {
            inner.reserved_by = None;
        }
        self.note(&inner);
    }

    /// PERSISTENT RESERVE OUT: the state machine's outcome, its unit attentions posted.
    pub fn prout(&self, nexus: &Nexus, sa: u8, scope_type: u8, data: &[u8]) -> ProutOutcome {
        let outcome = {
            let mut inner = self.inner.lock();
            let outcome = inner.pr.prout(nexus, sa, scope_type, data);
            self.note(&inner);
            outcome
        };
        for (n, s) in &outcome.attentions {
            self.post(n.clone(), s.clone());
        }
        outcome
    }

    /// PERSISTENT RESERVE IN.
    pub fn prin(&self, cdb: super::cdb::Cdb) -> super::Response {
        self.inner.lock().pr.prin(cdb)
    }

    /// The medium is loaded (always, for a fixed LU).
    pub fn loaded(&self) -> bool {
        self.inner.lock().loaded
    }

    /// Loads or ejects the medium (START STOP UNIT with LOEJ, SBC-4 5.25): while any
    /// nexus prevents removal, the medium stays as it is, loaded or not.
    pub fn load_eject(&self, load: bool) -> Result<(), Sense> {
        let mut inner = self.inner.lock();
        inner.preventing.retain(|h| !h.session.gone());
        if !inner.preventing.is_empty() {
            return Err(Sense::medium_removal_prevented());
        }
        inner.loaded = load;
        Ok(())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL from one nexus (SBC-4 5.15).
    pub fn prevent(&self, nexus: &Nexus, session: &SessionRef, prevent: bool) {
        let mut inner = self.inner.lock();
        inner.preventing.retain(|h| h.nexus != *nexus);
        if prevent {
            inner.preventing.push(Holder {
                nexus: nexus.clone(),
                session: session.clone(),
            });
        }
    }

    /// LOGICAL UNIT RESET, or a target reset reaching this LU (SAM-5 6.3; SPC-2 5.5.1:
    /// RESERVE/RELEASE reservations end; SBC-4 5.15: preventions end; persistent
    /// reservations stay, SPC-5 5.14.1).
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.reserved_by = None;
        inner.preventing.clear();
        self.note(&inner);
    }

    /// I_T nexus loss (session `session` ended): its RESERVE reservation and its
    /// prevention end; PR registrations stay (SPC-5 5.14.1).
    pub fn nexus_lost(&self, nexus: &Nexus, session: u64) {
        let mut inner = self.inner.lock();
        let ours = |h: &Holder| h.nexus == *nexus && h.session.id == session;
        if inner.reserved_by.as_ref().is_some_and(ours) {
            inner.reserved_by = None;
        }
        inner.preventing.retain(|h| !ours(h));
        self.note(&inner);
    }

    /// A RESERVE held through a session that is gone ends, as at that session's nexus
    /// loss, before it can turn `nexus` away.
    fn drop_gone_reservation(&self, inner: &mut Inner, nexus: &Nexus) {
        let gone = inner
            .reserved_by
            .as_ref()
            .is_some_and(|h| h.nexus != *nexus && h.session.gone());
        if gone {
            inner.reserved_by = None;
            self.note(inner);
        }
    }

    /// Establishes a unit attention for another nexus.
    pub fn post(&self, nexus: Nexus, sense: Sense) {
        let mut inner = self.inner.lock();
        if inner.mailbox.len() >= MAX_MAILBOX {
            inner.mailbox.pop_front();
        }
        inner.mailbox.push_back((nexus, sense));
        self.posted.fetch_add(1, Ordering::AcqRel);
    }

    /// The mailbox's count of posts, for a cheap "anything new?".
    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::Acquire)
    }

    /// Takes the unit attentions posted for `nexus`, oldest first.
    pub fn take_attentions(&self, nexus: &Nexus) -> Vec<Sense> {
        let mut inner = self.inner.lock();
        let mut mine = Vec::new();
        inner.mailbox.retain(|(n, s)| {
            if n.covers(nexus) {
                mine.push(s.clone());
                false
            } else {
                true
            }
        });
        mine
    }
}
