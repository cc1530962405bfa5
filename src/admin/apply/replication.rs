//! Replication sets as admin requests meet them: their views, the actions on a running
//! set (replicate, restart, suspend, resume, abort; promote on a secondary), and the
//! commit of a set's creation and deletion. The catalog side of creating and deleting
//! a set is `admin::replication` (`replication_create`, `replication_delete`).

use super::super::protocol::{ReplicationView, Response};
use super::super::replication as repl;
use super::{done, install, AdminError, Control, Host};
use crate::catalog::{Catalog, ReplicationRole, ReplicationSpec};
use crate::replication::wire::RemoteVolume;

pub(super) fn list<H: Host + ?Sized>(host: &H, c: &Catalog) -> Response {
    Response::Replications {
        replications: c
            .replications
            .keys()
            .map(|n| full_replication_view(host, c, n))
            .collect(),
    }
}

pub(super) fn show<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    known(c, &name)?;
    Ok(Response::Replication(Box::new(full_replication_view(
        host, c, &name,
    ))))
}

/// On the secondary: the set's recovery points, newest first.
pub(super) fn recovery_points<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    known(c, &name)?;
    // What pins each point: drill LUNs and clones (a failback's kept volume too).
    let pins = c.drill_pinners(&c.replications[&name].volumes);
    let points = host
        .recovery_points(&name)?
        .into_iter()
        .map(|p| {
            let mut v = repl::recovery_point_view(p);
            v.pinned_by = pins
                .iter()
                .filter(|(cut, _, _)| *cut == p.cut)
                .map(|(_, who, _)| who.clone())
                .collect();
            v
        })
        .collect();
    Ok(Response::RecoveryPoints { set: name, points })
}

/// Starts a cycle now, or queues one by the set's policy.
pub(super) fn replicate<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    known(c, &name)?;
    Ok(done(host.replicate(&name)?))
}

/// Restart Replication: refused without `yes`, since it deletes every recovery point
/// on the secondary. With volumes to add or remove, see [`restart_members`].
pub(super) fn restart<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
    yes: bool,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<Response, AdminError> {
    known(c, &name)?;
    if !yes {
        return Err(AdminError::RestartUnconfirmed(name));
    }
    if add.is_empty() && remove.is_empty() {
        return Ok(done(host.replication_control(&name, Control::Restart)?));
    }
    restart_members(host, name, add, remove)
}

/// Restart Replication of a group set with volumes added or removed (the way to change
/// a replicated group, which `group add/remove` refuse): the whole change is checked
/// here first (`admin::replication::restart_members`), then the set stops and the peer
/// changes its side (refusing, it changes nothing, and the set runs on as it was),
/// then the new membership is saved here and the set starts again with a restart: a
/// new generation and a full cycle over the new volumes.
fn restart_members<H: Host + ?Sized>(
    host: &H,
    name: String,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<Response, AdminError> {
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    let plan = repl::restart_members(&mut new, &name, add, remove)?;
    let peer = new
        .peers
        .get(&plan.old.peer)
        .cloned()
        .ok_or_else(|| AdminError::NoPeer(plan.old.peer.clone()))?;
    host.replication_members_remote(&name, &plan.old, &peer, plan.add, plan.remove)?;
    // The peer has its new side: whatever happens here, the set runs again. If the new
    // membership cannot be saved, the peer accepts the same request again (a volume it
    // has in the set already is kept, one gone is gone).
    let installed = install(host, new);
    host.replication_started(&name);
    if let Err(e) = installed {
        tracing::error!(set = %name, error = %crate::chain::ErrorChain(&e), "the peer changed the set's volumes but this node cannot save them: run the same restart again");
        return Err(e.into());
    }
    host.replication_control(&name, Control::Restart)?;
    tracing::info!(set = %name, "replication restarted with other volumes");
    Ok(done(plan.message))
}

/// Suspends, resumes or aborts a primary set.
pub(super) fn control<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
    action: Control,
) -> Result<Response, AdminError> {
    known(c, &name)?;
    Ok(done(host.replication_control(&name, action)?))
}

/// Failover: a secondary volume or group becomes writable (`admin::replication::promote`).
pub(super) fn promote<H: Host + ?Sized>(
    host: &H,
    volume: Option<String>,
    group: Option<String>,
    recovery_point: Option<u64>,
) -> Result<Response, AdminError> {
    Ok(done(repl::promote(
        host,
        volume.as_deref(),
        group.as_deref(),
        recovery_point,
    )?))
}

/// Creates the secondary side on the peer, installs the catalog, starts the set;
/// returns the set's view (its status is known only now).
pub(super) fn commit_create<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
) -> Result<Response, AdminError> {
    let spec = new.replications[name].clone();
    let peer = new.peers[&spec.peer].clone();
    let volumes: Vec<RemoteVolume> = spec
        .volumes
        .iter()
        .zip(&spec.remote_volumes)
        .map(|(local, remote)| RemoteVolume {
            name: remote.clone(),
            size: new.volumes[local].size,
            block_size: new.volumes[local].block_size,
            page_size: Some(new.volumes[local].page_size),
        })
        .collect();
    host.replication_create_remote(name, &spec, &peer, volumes)?;
    if let Err(e) = install(host, new) {
        if let Err(undo) = host.replication_delete_remote(name, &spec, &peer) {
            tracing::warn!(set = %name, error = %undo, "cannot undo the peer's side");
        }
        return Err(e.into());
    }
    host.replication_started(name);
    tracing::info!(set = %name, peer = %spec.peer, "replication set created");
    let c = host.catalog().read().clone();
    Ok(Response::Replication(Box::new(full_replication_view(
        host, &c, name,
    ))))
}

/// Deletes the peer's side (of a primary set; not with `force`, for a peer gone for
/// good), installs the catalog, stops the set and removes its local state.
pub(super) fn commit_delete<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
    spec: ReplicationSpec,
    force: bool,
) -> Result<(), AdminError> {
    if spec.role == ReplicationRole::Primary && !force {
        let peer = new.peers[&spec.peer].clone();
        host.replication_delete_remote(name, &spec, &peer)?;
    }
    install(host, new)?;
    host.replication_stopped(name, &spec);
    tracing::info!(set = %name, "replication set deleted");
    Ok(())
}

/// Settles a modify with the peer where it must (the secondary's `keep`, the codec
/// check), installs the catalog, and applies the settings to the running set. If the
/// catalog cannot be saved after the peer took a new `keep`, the peer is given the old
/// one back.
pub(super) fn commit_modify<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
    keep: Option<u32>,
    codec: Option<crate::catalog::Compression>,
) -> Result<(), AdminError> {
    let spec = new.replications[name].clone();
    let peer = new.peers[&spec.peer].clone();
    if keep.is_some() || codec.is_some() {
        host.replication_modify_remote(name, &spec, &peer, keep, codec)?;
    }
    if let Err(e) = install(host, new) {
        let old = host.catalog().read().replications.get(name).map(|r| r.keep);
        if let (Some(_), Some(old)) = (keep, old) {
            if let Err(undo) = host.replication_modify_remote(name, &spec, &peer, Some(old), None) {
                tracing::warn!(set = %name, error = %undo, "cannot give the peer its old keep back");
            }
        }
        return Err(e.into());
    }
    host.replication_modified(name);
    tracing::info!(set = %name, "replication set modified");
    Ok(())
}

pub(super) fn full_replication_view<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: &str,
) -> ReplicationView {
    let mut v = repl::replication_view(c, name);
    if let Some(st) = host.replication_status(name) {
        repl::add_status(&mut v, st);
    }
    v
}

/// The set is in the catalog, on either side.
fn known(c: &Catalog, name: &str) -> Result<(), AdminError> {
    if c.replications.contains_key(name) {
        Ok(())
    } else {
        Err(AdminError::NoSet(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Action, ErrorCode, Query};
    use crate::admin::store;
    use crate::catalog::{PeerSpec, ReplicationSpec};

    /// A primary set `r` of `demo` to peer `p`, written into the catalog by hand (the
    /// fake has no peer to create the other side on).
    fn with_set(f: &Fake) {
        let mut c = f.catalog.write();
        c.peers.insert(
            "p".into(),
            PeerSpec {
                addr: "192.0.2.1:3261".into(),
                secret: "0123456789abcdef".into(),
                max_rate: None,
                pinned_key: None,
            },
        );
        c.replications.insert(
            "r".into(),
            ReplicationSpec {
                id: 1,
                role: ReplicationRole::Primary,
                peer: "p".into(),
                group: None,
                volumes: vec!["demo".into()],
                remote_volumes: vec!["demo".into()],
                every_secs: None,
                queue_policy: Default::default(),
                keep: 8,
                compress: Default::default(),
                max_rate: None,
            },
        );
        store::save(f.dir.path(), &c).unwrap();
    }

    #[test]
    fn modify_saves_what_needs_no_peer_and_refuses_what_it_cannot_settle() {
        use crate::admin::protocol::{Change, ReplicationModify};
        let f = Fake::new();
        with_set(&f);
        let modify = |m: ReplicationModify| {
            Change::ReplicationModify(ReplicationModify {
                name: "r".into(),
                ..m
            })
        };
        let Response::Done { message } = f.ok(modify(ReplicationModify {
            max_rate: Some("1.5G".into()),
            every: Some("5m".into()),
            ..Default::default()
        })) else {
            panic!()
        };
        assert_eq!(
            message,
            "modified replication set 'r': every none -> 5m, max-rate no cap -> 1.5G/s"
        );
        let saved = f.on_disk().replications["r"].clone();
        assert_eq!(
            (saved.max_rate, saved.every_secs),
            (Some(3 << 29), Some(300))
        );
        // The fake has no peer: a new keep, or a codec to check, cannot be settled,
        // and nothing of the request is saved.
        for m in [
            ReplicationModify {
                keep: Some(3),
                max_rate: Some("none".into()),
                ..Default::default()
            },
            ReplicationModify {
                compress: Some(crate::catalog::Compression::Zstd),
                every: Some("none".into()),
                ..Default::default()
            },
        ] {
            f.refuse(modify(m), ErrorCode::Invalid);
            assert_eq!(f.on_disk().replications["r"], saved);
        }
        // Back to `none` needs no peer.
        f.ok(modify(ReplicationModify {
            compress: Some(crate::catalog::Compression::None),
            ..Default::default()
        }));
        let m = f.refuse(modify(ReplicationModify::default()), ErrorCode::Invalid);
        assert!(m.contains("nothing to change"), "{m}");
        assert_eq!(*f.catalog.read(), f.on_disk());
    }

    #[test]
    fn a_membership_restart_names_new_secondaries_with_the_sets_prefix() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        f.ok(gcreate("g", &["a", "b"]));
        with_set(&f);
        {
            let mut c = f.catalog.write();
            let r = c.replications.get_mut("r").unwrap();
            r.group = Some("g".into());
            r.volumes = vec!["a".into(), "b".into()];
            r.remote_volumes = vec!["dr-a".into(), "dr-b".into()];
            c.groups.get_mut("g").unwrap().replication_set = Some("r".into());
            store::save(f.dir.path(), &c).unwrap();
        }
        let before = f.on_disk();
        let mut c = before.clone();
        let plan = repl::restart_members(&mut c, "r", vec!["c".into()], vec!["a".into()]).unwrap();
        assert_eq!(plan.add.len(), 1);
        assert_eq!(
            (
                plan.add[0].name.as_str(),
                plan.add[0].size,
                plan.add[0].page_size
            ),
            ("dr-c", 1 << 20, 4096)
        );
        assert_eq!(plan.remove, ["dr-a"]);
        assert_eq!(c.groups["g"].volumes, ["b", "c"]);
        assert_eq!(c.replications["r"].volumes, ["b", "c"]);
        assert_eq!(c.replications["r"].remote_volumes, ["dr-b", "dr-c"]);
        // Through apply: the fake has no peer, so the peer's step fails and nothing of
        // the change is saved.
        f.refuse(
            Action::Restart {
                name: "r".into(),
                yes: true,
                add_volumes: vec!["c".into()],
                remove_volumes: vec![],
            },
            ErrorCode::Invalid,
        );
        assert_eq!(f.on_disk(), before);
        assert_eq!(*f.catalog.read(), before);
    }

    #[test]
    fn actions_name_their_set_and_change_nothing_when_refused() {
        let f = Fake::new();
        let nope = || "nope".to_string();
        for a in [
            Action::Replicate { name: nope() },
            Action::Restart {
                name: nope(),
                yes: true,
                add_volumes: vec![],
                remove_volumes: vec![],
            },
            Action::Suspend { name: nope() },
            Action::Resume { name: nope() },
            Action::Abort { name: nope() },
        ] {
            let m = f.refuse(a, ErrorCode::NotFound);
            assert!(m.contains("no replication set named 'nope'"), "{m}");
        }
        f.refuse(Query::ReplicationShow { name: nope() }, ErrorCode::NotFound);
        f.refuse(Query::RecoveryPoints { name: nope() }, ErrorCode::NotFound);

        with_set(&f);
        let Response::Replication(v) = f.ok(Query::ReplicationShow { name: "r".into() }) else {
            panic!()
        };
        assert_eq!((v.name.as_str(), v.role), ("r", ReplicationRole::Primary));
        let m = f.refuse(
            Action::Restart {
                name: "r".into(),
                yes: false,
                add_volumes: vec![],
                remove_volumes: vec![],
            },
            ErrorCode::Invalid,
        );
        assert!(m.contains("--yes"), "{m}");
        // The fake runs no replication: the host's refusal comes back with its code.
        let m = f.refuse(Action::Suspend { name: "r".into() }, ErrorCode::Invalid);
        assert!(m.contains("not a primary set running here"), "{m}");
        let m = f.refuse(
            Query::RecoveryPoints { name: "r".into() },
            ErrorCode::Invalid,
        );
        assert!(m.contains("not a secondary set"), "{m}");
        let m = f.refuse(
            Action::Promote {
                volume: Some("demo".into()),
                group: None,
                recovery_point: None,
            },
            ErrorCode::NotFound,
        );
        assert!(m.contains("volume 'demo'"), "{m}");
    }
}
