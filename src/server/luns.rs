//! What a session sees of its target: the LUN map resolved to volumes and SCSI logical
//! units, refreshed when the catalog changes under it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::catalog::{split_snapshot_ref, LunSpec};
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
}

impl LunView {
    pub fn new(target: String) -> LunView {
        LunView {
            target,
            entries: HashMap::new(),
        }
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
        let spec = node
            .catalog
            .read()
            .targets
            .get(&self.target)
            .and_then(|t| t.luns.get(&lun).cloned());
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
                thick: volume.is_thick(),
                sanitize: volume.sanitize_allowed(),
            });
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
