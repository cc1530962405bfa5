//! What a session sees of its target: the LUN map resolved to volumes and SCSI logical
//! units, refreshed when the catalog changes under it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::catalog::{split_snapshot_ref, LunSpec, PortGroupState};
use crate::scsi::alua::{self, AccessState, PortGroupStatus, TargetPort};
use crate::scsi::{LogicalUnit, LuConfig, Sense, UnitAttentions};
use crate::server::Shared;
use crate::tracking::CutId;
use crate::volume::Volume;

/// A mapped LUN as one session uses it.
pub struct LunHandle {
    pub lun: u64,
    pub spec: LunSpec,
    pub volume: Arc<Volume>,
    /// A snapshot LUN (`VOLUME@SNAPSHOT`, read-only): reads return the volume's content
    /// at this cut.
    pub snapshot: Option<CutId>,
    pub lu: LogicalUnit,
    /// Bumped by LOGICAL UNIT RESET and target resets from any session; a session that
    /// sees it move raises a unit attention on its own nexus (SAM-5 §6.3).
    pub resets: Arc<AtomicU64>,
}

struct Entry {
    handle: Arc<LunHandle>,
    ua: UnitAttentions,
    resets_seen: u64,
}

/// Per-session cache of LUNs with the session's unit attentions for each I_T_L nexus.
pub struct LunView {
    target: String,
    entries: HashMap<u64, Entry>,
    /// The portal the session came in through.
    port: TargetPort,
    /// The port group states last seen: a change raises ASYMMETRIC ACCESS STATE
    /// CHANGED on every nexus of the session (SPC-4 5.15.2.5).
    states_seen: BTreeMap<u16, PortGroupState>,
}

impl LunView {
    pub fn new(target: String, port: TargetPort) -> LunView {
        LunView {
            target,
            entries: HashMap::new(),
            port,
            states_seen: BTreeMap::new(),
        }
    }

    /// The access state of this session's port group, as the catalog says now.
    pub fn access_state(&self, node: &Shared) -> AccessState {
        node.catalog
            .read()
            .port_groups
            .get(&self.port.group)
            .copied()
            .unwrap_or_default()
            .to_scsi()
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
                state: catalog
                    .port_groups
                    .get(&g)
                    .copied()
                    .unwrap_or_default()
                    .to_scsi(),
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
        let volume = node.volumes.read().get(base).cloned()?;
        let (id, snapshot) = {
            let catalog = node.catalog.read();
            let id = catalog.volumes.get(base).map(|v| v.id).unwrap_or_default();
            match snapshot_name {
                None => (id, None),
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
        let stale = match self.entries.get(&lun) {
            Some(e) => {
                e.handle.spec != spec
                    || e.handle.snapshot != snapshot
                    || !Arc::ptr_eq(&e.handle.volume, &volume)
            }
            None => true,
        };
        if stale {
            let lu = LogicalUnit::new(LuConfig {
                block_size: volume.block_size(),
                num_blocks: volume.size() / volume.block_size() as u64,
                read_only: spec.read_only || snapshot.is_some(),
                id,
                name: spec.volume.clone(),
            })
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
                        lu,
                        resets,
                    }),
                    ua,
                    resets_seen,
                },
            );
        }
        let e = self.entries.get_mut(&lun)?;
        let now = e.handle.resets.load(Ordering::Acquire);
        if now != e.resets_seen {
            e.resets_seen = now;
            e.ua.push(Sense::power_on());
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
