//! The logical unit as SCSI sees it (geometry, identity, mode page state) and the unit
//! attention queue of one I_T_L nexus.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::mode::{self, ModeState};
use super::reservations::Nexus;
use super::state::{LuState, SessionRef};
use super::{Response, Sense};

/// Largest transfer one READ/WRITE/VERIFY may ask for, in bytes. Reported in the Block Limits
/// VPD page (SBC-4 6.6.4) as MAXIMUM and OPTIMAL TRANSFER LENGTH, and enforced by `plan`.
pub const MAX_TRANSFER_BYTES: u32 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct LuConfig {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    /// Stable per-volume identifier (NAA designator, unit serial number).
    pub id: u64,
    /// Volume name, reported in the device identification page as a T10 vendor id suffix.
    pub name: String,
    /// Fully provisioned (SBC-4 4.7.2): LBPME off, no UNMAP, every block mapped.
    pub thick: bool,
    /// SANITIZE is offered (the volume allows it).
    pub sanitize: bool,
}

/// One logical unit as one nexus sees it; what all its nexuses share (mode pages,
/// reservations, the medium) is its [`LuState`].
#[derive(Debug)]
pub struct LogicalUnit {
    block_size: u32,
    num_blocks: AtomicU64,
    read_only: bool,
    id: u64,
    name: String,
    thick: bool,
    sanitize: bool,
    /// Removable medium (RMB in INQUIRY): START STOP UNIT loads and ejects it.
    removable: bool,
    /// Shared by every nexus of the LU: reservations, medium, cross-nexus unit attentions.
    state: Arc<LuState>,
    /// The I_T nexus this view of the LU serves, and the session behind it.
    nexus: Nexus,
    session: SessionRef,
    /// The target port this LU is seen through, when the server has ports in target
    /// port groups (ALUA): INQUIRY then reports TPGS and VPD 83h its designators.
    port: Option<super::alua::TargetPort>,
}

/// Result of `LogicalUnit::apply_mode_select`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSelectOutcome {
    pub response: Response,
    /// Some mode parameter changed: per SPC-5 7.5.1 the server should establish a MODE
    /// PARAMETERS CHANGED unit attention (`Sense::mode_parameters_changed()`) for every other
    /// I_T nexus of this LU.
    pub changed: bool,
}

impl LogicalUnit {
    /// A block size of zero is taken as 512 so that no division by it is ever possible.
    pub fn new(cfg: LuConfig) -> LogicalUnit {
        let block_size = if cfg.block_size == 0 {
            512
        } else {
            cfg.block_size
        };
        LogicalUnit {
            block_size,
            num_blocks: AtomicU64::new(cfg.num_blocks),
            read_only: cfg.read_only,
            id: cfg.id,
            name: cfg.name,
            thick: cfg.thick,
            sanitize: cfg.sanitize,
            removable: false,
            state: Arc::new(LuState::default()),
            nexus: Nexus::new("", [0; 6], "", 1),
            session: SessionRef::fixed(0),
            port: None,
        }
    }

    /// This LU as the nexus `nexus` (of session `session`) sees it, sharing `state` with
    /// the LU's other nexuses. Without it, an LU has a state of its own and an anonymous
    /// nexus (tests, fuzzing).
    pub fn shared(mut self, state: Arc<LuState>, nexus: Nexus, session: SessionRef) -> LogicalUnit {
        self.state = state;
        self.nexus = nexus;
        self.session = session;
        self
    }

    /// Makes the medium removable (INQUIRY RMB=1; START STOP UNIT ejects and loads).
    pub fn with_removable(mut self, removable: bool) -> LogicalUnit {
        self.removable = removable;
        self
    }

    /// A removable medium (RMB): START STOP UNIT may eject it.
    pub fn removable(&self) -> bool {
        self.removable
    }

    /// What every nexus of this LU shares (reservations, medium, their unit attentions).
    pub fn state(&self) -> &Arc<LuState> {
        &self.state
    }

    /// The I_T nexus this view serves: whose reservations and preventions these are.
    pub fn nexus(&self) -> &Nexus {
        &self.nexus
    }

    /// The session behind the nexus, so its end releases only what it took.
    pub fn session(&self) -> &SessionRef {
        &self.session
    }

    /// The LU as seen through `port` (a session's portal).
    pub fn with_target_port(mut self, port: super::alua::TargetPort) -> LogicalUnit {
        self.port = Some(port);
        self
    }

    pub fn target_port(&self) -> Option<super::alua::TargetPort> {
        self.port
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    /// Online resize. The caller pushes `Sense::capacity_changed()` to every nexus of this LU
    /// (SBC-4 4.10: CAPACITY DATA HAS CHANGED).
    pub fn set_num_blocks(&self, num_blocks: u64) {
        self.num_blocks.store(num_blocks, Ordering::Release);
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fully provisioned: READ CAPACITY(16) reports LBPME 0, UNMAP is not supported and
    /// WRITE SAME refuses its UNMAP bit (SBC-4 4.7.2, 5.47).
    pub fn thick(&self) -> bool {
        self.thick
    }

    /// SANITIZE is offered: the volume was created allowing it. Elsewhere the command
    /// does not exist (an admin's data is not one CDB away from being wiped).
    pub fn sanitize_allowed(&self) -> bool {
        self.sanitize
    }

    /// Read-only by configuration.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Writes are refused: read-only by configuration, or software write protect (SWP in the
    /// control mode page, SPC-5 7.5.8) set by MODE SELECT.
    pub fn write_protected(&self) -> bool {
        self.read_only || self.state.mode.lock().swp
    }

    /// WCE of the caching mode page (SBC-4 6.5.5). When it is off, `plan` marks every write
    /// FUA, so the volume writes through.
    pub fn write_cache_enabled(&self) -> bool {
        self.state.mode.lock().wce
    }

    /// Largest READ/WRITE/VERIFY transfer length accepted, in blocks (at least 1).
    pub fn max_transfer_blocks(&self) -> u32 {
        (MAX_TRANSFER_BYTES / self.block_size).max(1)
    }

    /// The mode page state, read once under the lock.
    pub(crate) fn mode_state(&self) -> ModeState {
        *self.state.mode.lock()
    }

    /// Apply MODE SELECT parameter data (`ten`: MODE SELECT(10) header, else (6)).
    pub fn mode_select(&self, ten: bool, data: &[u8]) -> Response {
        self.apply_mode_select(ten, data).response
    }

    /// `mode_select`, also saying whether anything changed.
    pub fn apply_mode_select(&self, ten: bool, data: &[u8]) -> ModeSelectOutcome {
        let mut state = self.state.mode.lock();
        match mode::parse_select(ten, data, &state, self.block_size) {
            Ok(next) => {
                let changed = next != *state;
                *state = next;
                ModeSelectOutcome {
                    response: Response::good(Vec::new()),
                    changed,
                }
            }
            Err(sense) => ModeSelectOutcome {
                response: Response::check(sense),
                changed: false,
            },
        }
    }
}

/// Most unit attentions one nexus keeps; past that the oldest non-reset ones are dropped.
const MAX_PENDING_UA: usize = 16;

/// Pending unit attention conditions of one I_T_L nexus (SAM-5 5.14), oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitAttentions {
    pending: VecDeque<Sense>,
}

impl UnitAttentions {
    /// A new nexus: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED is pending (SAM-5 6.3.2).
    pub fn power_on() -> UnitAttentions {
        let mut ua = UnitAttentions::default();
        ua.push(Sense::power_on());
        ua
    }

    /// Establish a unit attention. One already pending with the same ASC/ASCQ is not queued
    /// twice; the queue is bounded. A reset-class condition (ASC 29h: power on, reset, I_T
    /// nexus loss) supersedes everything pending before it (SAM-5 6.3: a reset clears the
    /// state those conditions reported on).
    pub fn push(&mut self, sense: Sense) {
        if sense.asc == 0x29 {
            self.pending.clear();
        }
        if self
            .pending
            .iter()
            .any(|s| s.asc == sense.asc && s.ascq == sense.ascq)
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING_UA {
            self.pending.pop_front();
        }
        self.pending.push_back(sense);
    }

    /// Report (and clear) the oldest pending unit attention.
    pub fn pop(&mut self) -> Option<Sense> {
        self.pending.pop_front()
    }

    pub fn peek(&self) -> Option<&Sense> {
        self.pending.front()
    }

    /// Clear every pending condition with this ASC/ASCQ (e.g. REPORT LUNS clears REPORTED LUNS
    /// DATA HAS CHANGED, SPC-5 6.33).
    pub fn remove(&mut self, asc: u8, ascq: u8) {
        self.pending.retain(|s| !(s.asc == asc && s.ascq == ascq));
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}
