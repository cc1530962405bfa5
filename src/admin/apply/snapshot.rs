//! Snapshots: a volume, or every volume of a group, at one instant (one cut). They map
//! as `VOLUME@SNAPSHOT`, always read-only; a volume with snapshots cannot be deleted.

use super::super::protocol::{Response, SnapshotMappingView, SnapshotView, SnapshotVolumeView};
use super::super::time::rfc3339_utc;
use super::super::validate::{self, ValidationError};
use super::{done, install, AdminError, Effect, Host};
use crate::catalog::{Catalog, SnapshotSpec};
use crate::events::EventKind;

pub(super) fn list<H: Host + ?Sized>(host: &H, c: &Catalog) -> Response {
    Response::Snapshots {
        snapshots: c
            .snapshots
            .keys()
            .map(|n| snapshot_view(host, c, n))
            .collect(),
    }
}

pub(super) fn show<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    if !c.snapshots.contains_key(&name) {
        return Err(AdminError::NoSnapshot(name));
    }
    Ok(Response::Snapshot(snapshot_view(host, c, &name)))
}

/// Records the snapshot of exactly one of `volume` and `group`; the commit takes its cut.
pub(super) fn create(
    c: &mut Catalog,
    name: String,
    volume: Option<String>,
    group: Option<String>,
) -> Result<(Effect, Response), AdminError> {
    validate::check_snapshot_name(&name)?;
    let volumes =
        super::group::volume_or_group(c, volume, group.as_ref(), ValidationError::SnapshotSource)?;
    if c.snapshots.contains_key(&name) {
        return Err(AdminError::SnapshotExists(name));
    }
    if let Some(v) = volumes.iter().find(|v| c.is_secondary(v)) {
        let set = c.replication_of(v).map(|(s, _)| s.to_string());
        return Err(AdminError::SecondaryVolume {
            volume: v.clone(),
            set: set.unwrap_or_default(),
            what: "it changes only by replication: its recovery points are its snapshots",
        });
    }
    // The cut fills in `cut`, `created` and `pause_us` (commit).
    c.snapshots.insert(
        name.clone(),
        SnapshotSpec {
            group,
            volumes,
            cut: 0,
            created: 0,
            pause_us: 0,
        },
    );
    Ok((Effect::CreateSnapshot { name }, done(String::new())))
}

pub(super) fn delete(c: &mut Catalog, name: String) -> Result<(Effect, Response), AdminError> {
    if !c.snapshots.contains_key(&name) {
        return Err(AdminError::NoSnapshot(name));
    }
    let mappings: Vec<String> = c
        .snapshot_mappings(&name)
        .map(|(v, iqn, lun)| format!("{v}@{name} as {iqn} LUN {lun}"))
        .collect();
    if !mappings.is_empty() {
        return Err(AdminError::SnapshotMapped {
            name,
            mappings: mappings.join(", "),
        });
    }
    let spec = c.snapshots.remove(&name).expect("presence checked above");
    Ok((
        Effect::DeleteSnapshot {
            name: name.clone(),
            volumes: spec.volumes,
            cut: spec.cut,
        },
        done(format!(
            "deleted snapshot '{name}'; its kept pages are freed"
        )),
    ))
}

/// Takes the cut, records it in the catalog's entry `name`, then installs the catalog;
/// returns the snapshot's view (its cut id and time are known only now).
pub(super) fn commit_create<H: Host + ?Sized>(
    host: &H,
    mut new: Catalog,
    name: &str,
) -> Result<Response, AdminError> {
    let spec = new
        .snapshots
        .get_mut(name)
        .expect("change inserted the snapshot");
    let taken = host
        .take_snapshot(&spec.volumes)
        .map_err(|source| AdminError::TakeSnapshot {
            name: name.to_string(),
            source,
        })?;
    spec.cut = taken.cut;
    spec.created = taken.created;
    spec.pause_us = u64::try_from(taken.pause.as_micros()).unwrap_or(u64::MAX);
    let volumes = spec.volumes.clone();
    if let Err(e) = install(host, new) {
        host.drop_snapshot(&volumes, taken.cut);
        return Err(e.into());
    }
    tracing::info!(snapshot = %name, cut = taken.cut, pause_us = taken.pause.as_micros() as u64, "snapshot taken");
    host.events().emit_with(|| EventKind::SnapshotCreated {
        name: name.to_string(),
        volumes: volumes.clone(),
        cut: taken.cut,
    });
    let c = host.catalog().read().clone();
    Ok(Response::Snapshot(snapshot_view(host, &c, name)))
}

/// Installs the catalog without the snapshot, then drops its kept pages.
pub(super) fn commit_delete<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
    volumes: &[String],
    cut: u64,
) -> Result<(), AdminError> {
    install(host, new)?;
    host.drop_snapshot(volumes, cut);
    host.events().emit_with(|| EventKind::SnapshotDeleted {
        name: name.to_string(),
    });
    Ok(())
}

pub(super) fn snapshot_view<H: Host + ?Sized>(host: &H, c: &Catalog, name: &str) -> SnapshotView {
    let spec = &c.snapshots[name];
    let volumes: Vec<SnapshotVolumeView> = spec
        .volumes
        .iter()
        .map(|v| match host.snapshot_usage(v, spec.cut) {
            Some(info) => SnapshotVolumeView {
                volume: v.clone(),
                state: if info.invalidated {
                    "invalidated"
                } else {
                    "ok"
                }
                .into(),
                pages_preserved: info.stats.pages,
                memory_bytes: info.stats.memory_bytes,
                file_bytes: info.stats.file_bytes,
            },
            None => SnapshotVolumeView {
                volume: v.clone(),
                state: "lost".into(),
                pages_preserved: 0,
                memory_bytes: 0,
                file_bytes: 0,
            },
        })
        .collect();
    // The worst state of its volumes is the snapshot's.
    let state = ["lost", "invalidated"]
        .into_iter()
        .find(|bad| volumes.iter().any(|v| v.state == *bad))
        .unwrap_or("ok");
    SnapshotView {
        name: name.into(),
        group: spec.group.clone(),
        cut_id: spec.cut,
        created: rfc3339_utc(spec.created),
        pause_us: spec.pause_us,
        state: state.into(),
        pages_preserved: volumes.iter().map(|v| v.pages_preserved).sum(),
        bytes_used: volumes.iter().map(|v| v.memory_bytes + v.file_bytes).sum(),
        volumes,
        mappings: c
            .snapshot_mappings(name)
            .map(|(volume, target, lun)| SnapshotMappingView {
                volume: volume.into(),
                target: target.into(),
                lun,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Change, ErrorCode, Query};

    fn screate(name: &str, volume: Option<&str>, group: Option<&str>) -> Change {
        Change::SnapshotCreate {
            name: name.into(),
            volume: volume.map(Into::into),
            group: group.map(Into::into),
        }
    }

    fn snapshot_of(f: &Fake, name: &str) -> SnapshotView {
        match f.ok(Query::SnapshotShow { name: name.into() }) {
            Response::Snapshot(s) => s,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn snapshot_lifecycle_and_refusals() {
        let f = Fake::new();
        f.ok(vcreate("a", 1 << 20, 512));
        f.ok(vcreate("b", 1 << 20, 512));
        f.ok(gcreate("g", &["b", "a"]));
        f.ok(tcreate(T));

        // A volume snapshot and a group snapshot, each at its own cut.
        let Response::Snapshot(one) = f.ok(screate("one", Some("a"), None)) else {
            panic!()
        };
        assert_eq!(one.cut_id, 1);
        assert_eq!(one.created, "2026-11-22T04:27:05Z");
        assert_eq!(one.pause_us, 250);
        assert_eq!(one.state, "ok");
        assert_eq!(one.group, None);
        let both = snapshot_of(&f, "one");
        assert_eq!(both, one);
        let Response::Snapshot(grp) = f.ok(screate("both", None, Some("g"))) else {
            panic!()
        };
        assert_eq!(grp.cut_id, 2);
        assert_eq!(grp.group.as_deref(), Some("g"));
        let vols: Vec<&str> = grp.volumes.iter().map(|v| v.volume.as_str()).collect();
        assert_eq!(vols, ["b", "a"]);
        assert_eq!(grp.pages_preserved, 6);
        assert_eq!(grp.bytes_used, 6 * 4096);
        let Response::Snapshots { snapshots } = f.ok(Query::SnapshotList) else {
            panic!()
        };
        assert_eq!(snapshots.len(), 2);

        // Refusals change nothing.
        f.refuse(screate("one", Some("b"), None), ErrorCode::AlreadyExists);
        f.refuse(screate("x", Some("nope"), None), ErrorCode::NotFound);
        f.refuse(screate("x", None, Some("nope")), ErrorCode::NotFound);
        let m = f.refuse(screate("x", Some("a"), Some("g")), ErrorCode::Invalid);
        assert!(m.contains("exactly one of --volume and --group"), "{m}");
        f.refuse(screate("x", None, None), ErrorCode::Invalid);
        f.refuse(screate("a@b", Some("a"), None), ErrorCode::Invalid);
        f.refuse(
            Query::SnapshotShow { name: "x".into() },
            ErrorCode::NotFound,
        );
        f.refuse(
            Change::SnapshotDelete { name: "x".into() },
            ErrorCode::NotFound,
        );
        f.ok(vcreate("c", 1 << 20, 512));
        f.ok(screate("three", Some("c"), None));
        let m = f.refuse(Change::VolumeDelete { name: "c".into() }, ErrorCode::InUse);
        assert!(m.contains("has snapshots (three)"), "{m}");
        f.ok(Change::SnapshotDelete {
            name: "three".into(),
        });
        f.ok(Change::VolumeDelete { name: "c".into() });

        // Mapping VOLUME@SNAPSHOT: always read-only; only volumes the snapshot holds.
        f.ok(map(T, 1, "a@both"));
        assert!(f.catalog.read().targets[T].luns[&1].read_only);
        f.refuse(map(T, 2, "b@one"), ErrorCode::NotFound);
        f.refuse(map(T, 2, "a@nope"), ErrorCode::NotFound);
        f.refuse(map(T, 2, "nope@one"), ErrorCode::NotFound);
        assert_eq!(snapshot_of(&f, "both").mappings.len(), 1);
        let m = f.refuse(
            Change::SnapshotDelete {
                name: "both".into(),
            },
            ErrorCode::InUse,
        );
        assert!(m.contains("a@both as"), "{m}");

        // Deleting frees the state of every volume.
        f.ok(Change::LunUnmap {
            iqn: T.into(),
            lun: 1,
        });
        f.ok(Change::SnapshotDelete {
            name: "both".into(),
        });
        assert!(!f.snaps.lock().iter().any(|(_, cut)| *cut == 2));
        assert_eq!(f.snaps.lock().len(), 1);
        f.ok(Change::SnapshotDelete { name: "one".into() });
        assert!(f.snaps.lock().is_empty());
    }

    #[test]
    fn a_snapshot_whose_state_is_gone_shows_lost_and_a_failed_cut_changes_nothing() {
        let mut f = Fake::new();
        f.ok(screate("s", Some("demo"), None));
        f.snaps.lock().clear();
        assert_eq!(snapshot_of(&f, "s").state, "lost");
        f.fail_cut = true;
        f.refuse(screate("t", Some("demo"), None), ErrorCode::Io);
        f.fail_cut = false;
    }
}
