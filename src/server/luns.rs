//! What a session sees of its target: the LUN map resolved to volumes and SCSI logical
//! units, refreshed when the catalog changes under it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::catalog::LunSpec;
use crate::scsi::{LogicalUnit, LuConfig, Sense, UnitAttentions};
use crate::server::Node;
use crate::volume::Volume;

/// A mapped LUN as one session uses it.
pub struct LunHandle {
    pub lun: u64,
    pub spec: LunSpec,
    pub volume: Arc<Volume>,
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
    pub fn lun_list(&self, node: &Node) -> Vec<u64> {
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
        node: &Node,
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
        let volume = node.volumes.read().get(&spec.volume).cloned()?;
        let stale = match self.entries.get(&lun) {
            Some(e) => e.handle.spec != spec || !Arc::ptr_eq(&e.handle.volume, &volume),
            None => true,
        };
        if stale {
            let id = node
                .catalog
                .read()
                .volumes
                .get(&spec.volume)
                .map(|v| v.id)
                .unwrap_or_default();
            let lu = LogicalUnit::new(LuConfig {
                block_size: volume.block_size(),
                num_blocks: volume.size() / volume.block_size() as u64,
                read_only: spec.read_only,
                id,
                name: spec.volume.clone(),
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
