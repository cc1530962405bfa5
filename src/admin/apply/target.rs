//! Targets and what hangs off them: LUNs, the ACL, CHAP.
//!
//! `target delete` is refused while sessions are logged in (`busy`) and while it maps
//! LUNs (`in_use`). LUN, ACL and CHAP changes are allowed with sessions logged in: the
//! server reads the catalog at each login and each command.

use super::super::protocol::{ChapView, LunView, Response, Secret, TargetView};
use super::super::validate::{self, ValidationError};
use super::{done, AdminError, Effect, Host};
use crate::catalog::{split_snapshot_ref, Catalog, ChapSpec, LunSpec, TargetSpec};
use crate::iscsi::SessionInfo;

pub(super) fn list<H: Host + ?Sized>(host: &H, c: &Catalog) -> Response {
    let sessions = host.sessions();
    Response::Targets {
        targets: c
            .targets
            .keys()
            .map(|iqn| target_view(c, iqn, &sessions))
            .collect(),
    }
}

pub(super) fn show<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    iqn: String,
) -> Result<Response, AdminError> {
    if !c.targets.contains_key(&iqn) {
        return Err(AdminError::NoTarget(iqn));
    }
    Ok(Response::Target(target_view(c, &iqn, &host.sessions())))
}

pub(super) fn create(
    c: &mut Catalog,
    iqn: String,
    sessions: &[SessionInfo],
) -> Result<(Effect, Response), AdminError> {
    validate::check_iscsi_name(&iqn)?;
    if c.targets.contains_key(&iqn) {
        return Err(AdminError::TargetExists(iqn));
    }
    c.targets.insert(iqn.clone(), TargetSpec::default());
    let view = target_view(c, &iqn, sessions);
    Ok((Effect::None, Response::Target(view)))
}

pub(super) fn delete(
    c: &mut Catalog,
    iqn: String,
    sessions: &[SessionInfo],
) -> Result<(Effect, Response), AdminError> {
    let t = c
        .targets
        .get(&iqn)
        .ok_or_else(|| AdminError::NoTarget(iqn.clone()))?;
    let logged_in: Vec<&str> = sessions
        .iter()
        .filter(|s| s.target == iqn)
        .map(|s| s.initiator.as_str())
        .collect();
    if !logged_in.is_empty() {
        return Err(AdminError::TargetBusy {
            iqn,
            initiators: logged_in.join(", "),
        });
    }
    if !t.luns.is_empty() {
        let luns: Vec<String> = t
            .luns
            .iter()
            .map(|(n, l)| format!("LUN {n} ({})", l.volume))
            .collect();
        return Err(AdminError::TargetHasLuns {
            iqn,
            luns: luns.join(", "),
        });
    }
    c.targets.remove(&iqn);
    Ok((Effect::None, done(format!("deleted target '{iqn}'"))))
}

/// Maps a volume, or `VOLUME@SNAPSHOT` (always read-only), as LUN `lun`.
pub(super) fn lun_map(
    c: &mut Catalog,
    iqn: String,
    lun: u64,
    volume: String,
    read_only: bool,
    removable: bool,
) -> Result<(Effect, Response), AdminError> {
    validate::check_lun(lun)?;
    let (base, snapshot) = split_snapshot_ref(&volume);
    if !c.volumes.contains_key(base) {
        return Err(AdminError::NoVolume(base.to_string()));
    }
    if snapshot.is_some_and(|s| s.starts_with("rp:")) {
        return map_drill(c, iqn, lun, volume, removable);
    }
    if !read_only && snapshot.is_none() && c.is_secondary(base) {
        let set = c.replication_of(base).map(|(s, _)| s.to_string());
        return Err(AdminError::SecondaryVolume {
            volume: base.to_string(),
            set: set.unwrap_or_default(),
            what: "map it --read-only (it becomes writable when promoted)",
        });
    }
    // A snapshot reads as its cut: it is never writable.
    let read_only = read_only || snapshot.is_some();
    if let Some(snap) = snapshot {
        let spec = c
            .snapshots
            .get(snap)
            .ok_or_else(|| AdminError::NoSnapshot(snap.to_string()))?;
        if !spec.covers(base) {
            return Err(AdminError::NotInSnapshot {
                snapshot: snap.to_string(),
                volume: base.to_string(),
                volumes: spec.volumes.join(", "),
            });
        }
    }
    let t = target_mut(c, &iqn)?;
    if let Some(existing) = t.luns.get(&lun) {
        return Err(AdminError::LunTaken {
            iqn,
            lun,
            volume: existing.volume.clone(),
        });
    }
    t.luns.insert(
        lun,
        LunSpec {
            volume: volume.clone(),
            read_only,
            removable,
        },
    );
    let ro = if read_only { " read-only" } else { "" };
    let what = if volume.contains('@') {
        "snapshot"
    } else {
        "volume"
    };
    Ok((
        Effect::None,
        done(format!(
            "mapped {what} '{volume}' as LUN {lun} of '{iqn}'{ro}"
        )),
    ))
}

/// `lun map IQN LUN VOLUME@rp:ID` on a secondary (a DR drill): the LUN reads recovery
/// point ID of VOLUME, read-only, while the set keeps receiving. Nothing is copied: the
/// LUN reads the secondary volume with the point's undo logs laid over it, and the
/// mapping pins the point (the set keeps it, and an undo log of every later cut,
/// whatever its `keep`, until the last LUN mapping it goes).
fn map_drill(
    c: &mut Catalog,
    iqn: String,
    lun: u64,
    volume: String,
    removable: bool,
) -> Result<(Effect, Response), AdminError> {
    let (base, cut) = crate::catalog::split_point_ref(&volume)
        .ok_or_else(|| AdminError::BadPointRef(volume.clone()))?;
    let set = match c.replication_of(base) {
        Some((set, r)) if r.role == crate::catalog::ReplicationRole::Secondary => set.to_string(),
        _ => return Err(AdminError::NotASecondary(format!("volume '{base}'"))),
    };
    let base = base.to_string();
    let t = target_mut(c, &iqn)?;
    if let Some(existing) = t.luns.get(&lun) {
        return Err(AdminError::LunTaken {
            iqn,
            lun,
            volume: existing.volume.clone(),
        });
    }
    t.luns.insert(
        lun,
        LunSpec {
            volume: volume.clone(),
            read_only: true,
            removable,
        },
    );
    let message = done(format!(
        "mapped recovery point {cut} of '{base}' (set '{set}') read-only as LUN {lun} of '{iqn}'; the point is kept while mapped"
    ));
    Ok((Effect::PinPoint { set, cut }, message))
}

pub(super) fn lun_unmap(
    c: &mut Catalog,
    iqn: String,
    lun: u64,
) -> Result<(Effect, Response), AdminError> {
    let t = target_mut(c, &iqn)?;
    let Some(old) = t.luns.remove(&lun) else {
        return Err(AdminError::NoLun { iqn, lun });
    };
    let drill = crate::catalog::split_point_ref(&old.volume)
        .and_then(|(base, cut)| Some((c.replication_of(base)?.0.to_string(), cut)));
    if let Some((set, cut)) = drill {
        let message = format!(
            "unmapped LUN {lun} (recovery point '{}') of '{iqn}'",
            old.volume
        );
        return Ok((Effect::UnpinPoint { set, cut }, done(message)));
    }
    Ok((
        Effect::None,
        done(format!(
            "unmapped LUN {lun} (volume '{}') of '{iqn}'",
            old.volume
        )),
    ))
}

pub(super) fn acl_add(
    c: &mut Catalog,
    iqn: String,
    initiator: String,
) -> Result<(Effect, Response), AdminError> {
    validate::check_iscsi_name(&initiator)?;
    let t = target_mut(c, &iqn)?;
    if !t.acl.insert(initiator.clone()) {
        return Err(AdminError::AlreadyInAcl { iqn, initiator });
    }
    Ok((
        Effect::None,
        done(format!("allowed '{initiator}' to log in to '{iqn}'")),
    ))
}

/// Sets a target port group's ALUA state; sessions on its portal see it from their
/// next command (with an ASYMMETRIC ACCESS STATE CHANGED unit attention). The default,
/// active/optimized, is not kept in the catalog.
pub(super) fn port_group_set(
    c: &mut Catalog,
    group: u16,
    state: crate::catalog::PortGroupState,
) -> Result<(Effect, Response), AdminError> {
    if group == 0 {
        return Err(ValidationError::PortGroup.into());
    }
    if state == crate::catalog::PortGroupState::default() {
        c.port_groups.remove(&group);
    } else {
        c.port_groups.insert(group, state);
    }
    Ok((
        Effect::None,
        done(format!("target port group {group} is now {}", state.name())),
    ))
}

/// Removes an initiator from the ACL; an empty ACL lets any initiator log in.
pub(super) fn acl_remove(
    c: &mut Catalog,
    iqn: String,
    initiator: String,
) -> Result<(Effect, Response), AdminError> {
    let t = target_mut(c, &iqn)?;
    if !t.acl.remove(&initiator) {
        return Err(AdminError::NotInAcl { iqn, initiator });
    }
    let open = if t.acl.is_empty() {
        "; the ACL is now empty: any initiator may log in"
    } else {
        ""
    };
    Ok((
        Effect::None,
        done(format!(
            "removed '{initiator}' from the ACL of '{iqn}'{open}"
        )),
    ))
}

pub(super) fn chap_set(
    c: &mut Catalog,
    iqn: String,
    user: String,
    secret: Secret,
    mutual_user: Option<String>,
    mutual_secret: Option<Secret>,
) -> Result<(Effect, Response), AdminError> {
    let mutual = match (&mutual_user, &mutual_secret) {
        (Some(u), Some(s)) => Some((u.as_str(), s.0.as_str())),
        (None, None) => None,
        _ => {
            return Err(ValidationError::Chap(
                "mutual CHAP needs both a mutual user and a mutual secret",
            )
            .into())
        }
    };
    let notes = validate::check_chap(&user, &secret.0, mutual)?;
    let kind = if mutual.is_some() {
        "mutual CHAP"
    } else {
        "CHAP"
    };
    let t = target_mut(c, &iqn)?;
    t.chap = Some(ChapSpec {
        user: user.clone(),
        secret: secret.0,
        mutual_user,
        mutual_secret: mutual_secret.map(|s| s.0),
    });
    let mut msg = format!("set {kind} for '{iqn}' (user {user})");
    for n in notes {
        msg.push_str("; note: ");
        msg.push_str(&n);
    }
    Ok((Effect::None, done(msg)))
}

pub(super) fn chap_clear(c: &mut Catalog, iqn: String) -> Result<(Effect, Response), AdminError> {
    let t = target_mut(c, &iqn)?;
    if t.chap.take().is_none() {
        return Err(AdminError::NoChap(iqn));
    }
    Ok((Effect::None, done(format!("cleared CHAP of '{iqn}'"))))
}

fn target_view(c: &Catalog, iqn: &str, sessions: &[SessionInfo]) -> TargetView {
    let t = &c.targets[iqn];
    TargetView {
        iqn: iqn.into(),
        luns: t
            .luns
            .iter()
            .map(|(lun, l)| LunView {
                lun: *lun,
                volume: l.volume.clone(),
                read_only: l.read_only,
                removable: l.removable,
            })
            .collect(),
        acl: t.acl.iter().cloned().collect(),
        chap: t.chap.as_ref().map(|ch| ChapView {
            user: ch.user.clone(),
            mutual_user: ch.mutual_user.clone(),
        }),
        sessions: sessions.iter().filter(|s| s.target == iqn).count(),
    }
}

fn target_mut<'a>(c: &'a mut Catalog, iqn: &str) -> Result<&'a mut TargetSpec, AdminError> {
    c.targets
        .get_mut(iqn)
        .ok_or_else(|| AdminError::NoTarget(iqn.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Change, ErrorCode, Query};

    fn chap(user: &str, secret: &str, mutual: Option<(&str, &str)>) -> Change {
        Change::ChapSet {
            iqn: T.into(),
            user: user.into(),
            secret: Secret(secret.into()),
            mutual_user: mutual.map(|m| m.0.into()),
            mutual_secret: mutual.map(|m| Secret(m.1.into())),
        }
    }

    #[test]
    fn target_lifecycle_and_refusals() {
        let f = Fake::new();
        let Response::Target(t) = f.ok(tcreate(T)) else {
            panic!()
        };
        assert_eq!(t.iqn, T);
        assert!(t.luns.is_empty() && t.acl.is_empty() && t.chap.is_none());
        f.refuse(tcreate(T), ErrorCode::AlreadyExists);
        f.refuse(tcreate("iqn.bad"), ErrorCode::Invalid);
        f.refuse(tcreate("target1"), ErrorCode::Invalid);
        let Response::Targets { targets } = f.ok(Query::TargetList) else {
            panic!()
        };
        assert_eq!(targets.len(), 2);

        f.ok(map(T, 3, "demo"));
        let m = f.refuse(Change::TargetDelete { iqn: T.into() }, ErrorCode::InUse);
        assert!(m.contains("LUN 3"), "{m}");
        f.ok(Change::LunUnmap {
            iqn: T.into(),
            lun: 3,
        });

        f.sessions.lock().push(session(T));
        let m = f.refuse(Change::TargetDelete { iqn: T.into() }, ErrorCode::Busy);
        assert!(m.contains(INI), "{m}");
        f.sessions.lock().clear();

        f.ok(Change::TargetDelete { iqn: T.into() });
        f.refuse(Change::TargetDelete { iqn: T.into() }, ErrorCode::NotFound);
        f.refuse(Query::TargetShow { iqn: T.into() }, ErrorCode::NotFound);
    }

    #[test]
    fn lun_map_unmap_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        f.ok(Change::LunMap {
            iqn: T.into(),
            lun: 1,
            volume: "demo".into(),
            read_only: true,
            removable: true,
        });
        let Response::Target(t) = f.ok(Query::TargetShow { iqn: T.into() }) else {
            panic!()
        };
        assert_eq!(
            t.luns,
            vec![LunView {
                lun: 1,
                volume: "demo".into(),
                read_only: true,
                removable: true,
            }]
        );
        let m = f.refuse(map(T, 1, "demo"), ErrorCode::AlreadyExists);
        assert!(m.contains("demo"), "{m}");
        f.refuse(map(T, 2, "nope"), ErrorCode::NotFound);
        f.refuse(
            map("iqn.2026-11.io.twinlun:nope", 2, "demo"),
            ErrorCode::NotFound,
        );
        f.refuse(map(T, validate::MAX_LUN + 1, "demo"), ErrorCode::Invalid);
        f.refuse(
            Change::LunUnmap {
                iqn: T.into(),
                lun: 9,
            },
            ErrorCode::NotFound,
        );
        f.refuse(
            Change::LunUnmap {
                iqn: "iqn.2026-11.io.x:y".into(),
                lun: 0,
            },
            ErrorCode::NotFound,
        );
        f.ok(Change::LunUnmap {
            iqn: T.into(),
            lun: 1,
        });
        assert!(f.catalog.read().targets[T].luns.is_empty());
    }

    #[test]
    fn acl_add_remove_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        let add = Change::AclAdd {
            iqn: T.into(),
            initiator: INI.into(),
        };
        f.ok(add.clone());
        assert!(f.catalog.read().targets[T].acl.contains(INI));
        f.refuse(add, ErrorCode::AlreadyExists);
        f.refuse(
            Change::AclAdd {
                iqn: T.into(),
                initiator: "bob".into(),
            },
            ErrorCode::Invalid,
        );
        f.refuse(
            Change::AclAdd {
                iqn: "iqn.2026-11.io.x:none".into(),
                initiator: INI.into(),
            },
            ErrorCode::NotFound,
        );
        let Response::Done { message } = f.ok(Change::AclRemove {
            iqn: T.into(),
            initiator: INI.into(),
        }) else {
            panic!()
        };
        assert!(message.contains("any initiator"), "{message}");
        f.refuse(
            Change::AclRemove {
                iqn: T.into(),
                initiator: INI.into(),
            },
            ErrorCode::NotFound,
        );
    }

    #[test]
    fn chap_set_clear_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        f.refuse(chap("", "0123456789ab", None), ErrorCode::Invalid);
        f.refuse(chap("u", "", None), ErrorCode::Invalid);
        f.refuse(
            chap("u", "0123456789ab", Some(("m", "0123456789ab"))),
            ErrorCode::Invalid,
        );
        let half = Change::ChapSet {
            iqn: T.into(),
            user: "u".into(),
            secret: Secret("0123456789ab".into()),
            mutual_user: Some("m".into()),
            mutual_secret: None,
        };
        f.refuse(half, ErrorCode::Invalid);
        f.refuse(Change::ChapClear { iqn: T.into() }, ErrorCode::NotFound);

        let Response::Done { message } = f.ok(chap("u", "short", None)) else {
            panic!()
        };
        assert!(
            message.contains("note") && !message.contains("short"),
            "{message}"
        );
        f.ok(chap("u", "0123456789ab", Some(("m", "ba9876543210"))));
        let Response::Target(t) = f.ok(Query::TargetShow { iqn: T.into() }) else {
            panic!()
        };
        assert_eq!(
            t.chap,
            Some(ChapView {
                user: "u".into(),
                mutual_user: Some("m".into())
            })
        );
        let json = serde_json::to_string(&f.ok(Query::TargetList)).unwrap();
        assert!(
            !json.contains("0123456789ab") && !json.contains("ba9876543210"),
            "{json}"
        );
        assert_eq!(
            f.on_disk().targets[T].chap.as_ref().unwrap().secret,
            "0123456789ab"
        );

        f.ok(Change::ChapClear { iqn: T.into() });
        assert!(f.catalog.read().targets[T].chap.is_none());
    }
}
