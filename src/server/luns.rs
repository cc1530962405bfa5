//! What a session sees of its target: the LUN map resolved to volumes and SCSI logical
//! units, refreshed when the catalog changes under it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalog::{split_point_ref, split_snapshot_ref, LunSpec, PortGroupState};
use crate::scsi::alua::{self, AccessState, PortGroupStatus, TargetPort};
use crate::scsi::reservations::{Nexus, PrState};
use crate::scsi::{LogicalUnit, LuConfig, LuState, Presence, Sense, SessionRef, UnitAttentions};
use crate::server::Shared;
use crate::tracking::CutId;
use crate::volume::Volume;

/// A secondary volume's recovery point, read in place (a DR drill LUN).
pub trait PointOverlay: Send + Sync {
    /// `buf` holds the volume's current bytes at `offset`, read just now: lay over
    /// them what makes them read as at the point. An error: the point is gone.
    fn overlay(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// Where drill LUNs find their points: the node's replication.
pub trait PointSource: Send + Sync {
    /// Point `cut` of secondary volume `volume`, when the set has it pinned. Blocking
    /// (it may index undo logs).
    fn view(&self, volume: &str, cut: u64) -> Option<Arc<dyn PointOverlay>>;
}

/// A mapped LUN as one session uses it.
pub struct LunHandle {
    pub lun: u64,
    pub spec: LunSpec,
    pub volume: Arc<Volume>,
    /// A snapshot LUN (`VOLUME@SNAPSHOT`, read-only): reads return the volume's content
    /// at this cut.
    pub snapshot: Option<CutId>,
    /// A DR drill LUN (`VOLUME@rp:ID`, read-only): reads return the secondary volume's
    /// content at recovery point ID.
    pub point: Option<Arc<dyn PointOverlay>>,
    pub lu: LogicalUnit,
    /// Bumped by LOGICAL UNIT RESET and target resets from any session; a session that
    /// sees it move raises a unit attention on its own nexus (SAM-5 §6.3).
    pub resets: Arc<AtomicU64>,
}

struct Entry {
    handle: Arc<LunHandle>,
    ua: UnitAttentions,
    resets_seen: u64,
    /// The LU state's post count when this nexus last took its unit attentions.
    posted_seen: u64,
}

/// Tells sessions apart for the state they hold in an LU (RESERVE, PREVENT), so the end
/// of a reinstated session never releases what its successor on the same nexus took.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Per-session cache of LUNs with the session's unit attentions for each I_T_L nexus.
pub struct LunView {
    target: String,
    entries: HashMap<u64, Entry>,
    /// The initiator port of this session: iSCSI name and ISID.
    initiator: String,
    isid: [u8; 6],
    session: SessionRef,
    /// The portal the session came in through.
    port: TargetPort,
    /// The port group states last seen: a change raises ASYMMETRIC ACCESS STATE
    /// CHANGED on every nexus of the session (SPC-4 5.15.2.5).
    states_seen: BTreeMap<u16, PortGroupState>,
}

impl LunView {
    pub fn new(target: String, port: TargetPort, presence: Arc<dyn Presence>) -> LunView {
        LunView {
            target,
            entries: HashMap::new(),
            initiator: String::new(),
            isid: [0; 6],
            session: SessionRef::new(NEXT_SESSION.fetch_add(1, Ordering::Relaxed), presence),
            port,
            states_seen: BTreeMap::new(),
        }
    }

    /// The initiator port this session is: the nexus its reservations belong to.
    pub fn bind(&mut self, initiator: &str, isid: [u8; 6]) {
        self.initiator = initiator.to_owned();
        self.isid = isid;
    }

    fn nexus(&self) -> Nexus {
        Nexus::new(
            &self.initiator,
            self.isid,
            &self.target,
            self.port.relative_port,
        )
    }

    /// The I_T nexus ended (logout, connection loss, reinstatement): what it held in
    /// each LU through this session goes (SPC-2 RESERVE, PREVENT).
    pub fn nexus_lost(&self) {
        for e in self.entries.values() {
            e.handle
                .lu
                .state()
                .nexus_lost(e.handle.lu.nexus(), self.session.id());
        }
    }

    /// A LOGICAL UNIT RESET of `lun`, or (None) a target reset reaching every LUN of
    /// the target: reset what the LUs' shared state keeps (SAM-5 6.3).
    pub fn reset_lus(&mut self, node: &Shared, lun: Option<u64>) {
        let luns = match lun {
            Some(l) => vec![l],
            None => self.lun_list(node),
        };
        for l in luns {
            if let Some((h, _)) = self.resolve(node, l) {
                h.lu.state().reset();
            }
        }
    }

    /// The access state of this session's port group, as the catalog says now.
    pub fn access_state(&self, node: &Shared) -> AccessState {
        let state = node
            .catalog
            .read()
            .port_groups
            .get(&self.port.group)
            .copied();
        access_state(state.unwrap_or_default())
    }

    /// Every target port group of the node with its state and ports, for REPORT
    /// TARGET PORT GROUPS.
    pub fn port_groups(&self, node: &Shared) -> Vec<PortGroupStatus> {
        let portals = u16::try_from(node.portals.read().len())
            .unwrap_or(u16::MAX)
            .max(self.port.group);
        let catalog = node.catalog.read();
        (1..=portals)
            .map(|g| PortGroupStatus {
                group: g,
                state: access_state(catalog.port_groups.get(&g).copied().unwrap_or_default()),
                ports: vec![g],
            })
            .collect()
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// All LUNs of the target, sorted, for REPORT LUNS.
    pub fn lun_list(&self, node: &Shared) -> Vec<u64> {
        node.catalog
            .read()
            .targets
            .get(&self.target)
            .map(|t| t.luns.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The LUN's handle and its nexus's unit attentions, or None if it is not mapped
    /// (or its volume is not open). Re-resolves when the mapping changed.
    pub fn resolve(
        &mut self,
        node: &Shared,
        lun: u64,
    ) -> Option<(Arc<LunHandle>, &mut UnitAttentions)> {
        let (spec, states_changed) = {
            let catalog = node.catalog.read();
            let spec = catalog
                .targets
                .get(&self.target)
                .and_then(|t| t.luns.get(&lun).cloned());
            let changed = catalog.port_groups != self.states_seen;
            if changed {
                self.states_seen = catalog.port_groups.clone();
            }
            (spec, changed)
        };
        if states_changed {
            for e in self.entries.values_mut() {
                e.ua.push(alua::state_changed());
            }
        }
        let Some(spec) = spec else {
            self.entries.remove(&lun);
            return None;
        };
        let (base, snapshot_name) = split_snapshot_ref(&spec.volume);
        // A recovery point (DR drill) reads the secondary volume with the point's undo
        // logs laid over it.
        let drill = split_point_ref(&spec.volume);
        let volume = node.volumes.read().get(base).cloned()?;
        let (id, snapshot) = {
            let catalog = node.catalog.read();
            let id = catalog.volumes.get(base).map(|v| v.id).unwrap_or_default();
            match snapshot_name {
                None => (id, None),
                Some(_) if drill.is_some() => {
                    let cut = drill.map_or(0, |(_, c)| c);
                    (snapshot_lu_id(id, CutId(cut)), None)
                }
                Some(s) => {
                    let cut = CutId(catalog.snapshots.get(s)?.cut);
                    // A snapshot whose state is gone (crash) is not a logical unit.
                    if !volume.tracking()?.has_snapshot(cut) {
                        return None;
                    }
                    (snapshot_lu_id(id, cut), Some(cut))
                }
            }
        };
        let mut stale = match self.entries.get(&lun) {
            Some(e) => {
                e.handle.spec != spec
                    || e.handle.snapshot != snapshot
                    || !Arc::ptr_eq(&e.handle.volume, &volume)
            }
            None => true,
        };
        let point = match (drill, self.entries.get(&lun)) {
            (None, _) => None,
            (Some(_), Some(e)) if !stale => e.handle.point.clone(),
            (Some((v, cut)), _) => {
                stale = true;
                // A point the set no longer has is not a logical unit.
                Some(node.points.as_ref()?.view(v, cut)?)
            }
        };
        if stale {
            let lu = LogicalUnit::new(LuConfig {
                block_size: volume.block_size(),
                num_blocks: volume.size() / volume.block_size() as u64,
                read_only: spec.read_only || snapshot.is_some() || drill.is_some(),
                id,
                name: spec.volume.clone(),
                thick: volume.is_thick(),
                sanitize: volume.sanitize_allowed(),
            })
            .with_removable(spec.removable)
            .shared(node.lu_states.get(id), self.nexus(), self.session.clone())
            .with_target_port(self.port);
            let resets = node.sessions.reset_counter(&self.target, lun);
            let resets_seen = resets.load(Ordering::Acquire);
            let ua = match self.entries.remove(&lun) {
                // A different volume behind the same LUN: the initiator must re-read
                // capacity.
                Some(mut old) => {
                    old.ua.push(Sense::capacity_changed());
                    old.ua
                }
                None => UnitAttentions::power_on(),
            };
            self.entries.insert(
                lun,
                Entry {
                    handle: Arc::new(LunHandle {
                        lun,
                        spec,
                        volume,
                        snapshot,
                        point,
                        lu,
                        resets,
                    }),
                    ua,
                    resets_seen,
                    posted_seen: 0,
                },
            );
        }
        let e = self.entries.get_mut(&lun)?;
        let now = e.handle.resets.load(Ordering::Acquire);
        if now != e.resets_seen {
            e.resets_seen = now;
            e.ua.push(Sense::power_on());
        }
        // Unit attentions another nexus's command raised for this one (reservations
        // preempted or released).
        let state = e.handle.lu.state();
        let posted = state.posted();
        if posted != e.posted_seen {
            e.posted_seen = posted;
            for sense in state.take_attentions(e.handle.lu.nexus()) {
                e.ua.push(sense);
            }
        }
        Some((e.handle.clone(), &mut e.ua))
    }
}

/// The identifier a snapshot LU reports (NAA designator, serial): derived from its
/// volume's and the cut, never the volume's own, so no initiator takes the snapshot for
/// another path to the live volume.
fn snapshot_lu_id(volume_id: u64, cut: CutId) -> u64 {
    let mixed = (volume_id ^ cut.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17);
    if mixed == 0 || mixed == volume_id {
        !volume_id
    } else {
        mixed
    }
}

/// The shared state of every logical unit the node serves, by LU id, made on first use;
/// persistent reservations saved with APTPL are restored then.
#[derive(Default)]
pub struct LuStates {
    /// Where APTPL reservations are saved (`DATA_DIR/reservations`); None keeps them in
    /// memory only.
    dir: Option<PathBuf>,
    states: Mutex<HashMap<u64, Arc<LuState>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Replace(#[from] crate::durable::ReplaceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LuStates {
    /// States whose APTPL reservations live in `data_dir`.
    pub fn in_data_dir(data_dir: PathBuf) -> LuStates {
        LuStates {
            dir: Some(data_dir),
            states: Mutex::default(),
        }
    }

    /// The state of LU `id`, shared by all its nexuses.
    pub fn get(&self, id: u64) -> Arc<LuState> {
        self.states
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(LuState::with_pr(self.load(id))))
            .clone()
    }

    /// Forgets LU `id` (its volume was deleted).
    pub fn forget(&self, id: u64) {
        self.states.lock().remove(&id);
    }

    /// The reservations saved for LU `id` (SPC-5 5.14.4: restored after power loss
    /// when APTPL was set); a file that cannot be read is reported and ignored.
    fn load(&self, id: u64) -> PrState {
        let Some(dir) = &self.dir else {
            return PrState::default();
        };
        let path = crate::datadir::reservations_file(dir, id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PrState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read saved reservations; starting without them");
                return PrState::default();
            }
        };
        match serde_json::from_slice::<PrState>(&bytes) {
            Ok(pr) if pr.aptpl => {
                tracing::info!(lu = %crate::datadir::id_name(id), registrations = pr.registrations.len(), reserved = pr.reservation.is_some(), "persistent reservations restored (APTPL)");
                pr
            }
            Ok(_) => PrState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "saved reservations do not parse; starting without them");
                PrState::default()
            }
        }
    }

    /// Preserves LU `id`'s reservations when APTPL is set, durably (temp file, fsync,
    /// rename, fsync dir); with APTPL off, forgets any saved before, so a restart does
    /// not bring back what the initiator no longer wants kept.
    pub fn save(&self, id: u64, pr: &PrState) -> Result<(), SaveError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = crate::datadir::reservations_file(dir, id);
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| SaveError::Io { path, source }
        };
        if pr.aptpl {
            let folder = crate::durable::parent_dir(&path);
            crate::durable::create_private_dir(folder).map_err(io(folder))?;
            let json = serde_json::to_vec_pretty(pr).expect("a PrState always serializes");
            crate::durable::replace(&path, &json)?;
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let folder = crate::durable::parent_dir(&path);
                    crate::durable::sync_dir(folder).map_err(io(folder))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }
}

/// An LU an EXTENDED COPY names by its NAA designator: where its blocks are and whether
/// a copy may write them.
pub struct CopyDevice {
    pub volume: Arc<Volume>,
    /// A snapshot LU: reads see the volume at this cut, and it is never written.
    pub snapshot: Option<CutId>,
    /// Some LUN of the device is mapped read-write to a target the initiator reaches.
    pub writable: bool,
}

/// The LU whose VPD 83h NAA designator is `naa`, among the LUNs of every target this
/// session's initiator could log in to without a secret it has not shown: its own
/// target, and targets whose ACL admits it and that ask no CHAP. A copy manager that
/// looked further would let an initiator read or write LUs it was never given.
pub fn find_by_naa(node: &Shared, target: &str, initiator: &str, naa: &[u8]) -> Option<CopyDevice> {
    let catalog = node.catalog.read();
    let mut found: Option<(String, Option<CutId>, bool)> = None;
    for (iqn, t) in &catalog.targets {
        let reachable =
            iqn == target || (t.chap.is_none() && (t.acl.is_empty() || t.acl.contains(initiator)));
        if !reachable {
            continue;
        }
        for spec in t.luns.values() {
            let (base, snapshot_name) = split_snapshot_ref(&spec.volume);
            let Some(v) = catalog.volumes.get(base) else {
                continue;
            };
            let (id, snapshot) = match snapshot_name {
                None => (v.id, None),
                Some(s) => {
                    let Some(snap) = catalog.snapshots.get(s) else {
                        continue;
                    };
                    let cut = CutId(snap.cut);
                    (snapshot_lu_id(v.id, cut), Some(cut))
                }
            };
            if crate::scsi::naa_designator(id)[..] != *naa {
                continue;
            }
            let writable = !spec.read_only && snapshot.is_none();
            match &mut found {
                Some((_, _, w)) => *w |= writable,
                None => found = Some((base.to_owned(), snapshot, writable)),
            }
        }
    }
    drop(catalog);
    let (name, snapshot, writable) = found?;
    let volume = node.volumes.read().get(&name).cloned()?;
    if let Some(cut) = snapshot {
        // A snapshot whose state is gone (crash) is not a logical unit.
        if !volume.tracking()?.has_snapshot(cut) {
            return None;
        }
    }
    Some(CopyDevice {
        volume,
        snapshot,
        writable,
    })
}

/// A port group's state as SPC names it (the catalog keeps plain data and knows no SCSI).
fn access_state(state: PortGroupState) -> AccessState {
    match state {
        PortGroupState::ActiveOptimized => AccessState::ActiveOptimized,
        PortGroupState::ActiveNonOptimized => AccessState::ActiveNonOptimized,
        PortGroupState::Standby => AccessState::Standby,
        PortGroupState::Unavailable => AccessState::Unavailable,
    }
}
