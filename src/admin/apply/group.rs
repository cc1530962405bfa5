//! Volume groups: a volume belongs to at most one group; a group has one or more
//! volumes in cut order. Membership is frozen while the group is in a replication set.

use super::super::protocol::{GroupView, Response};
use super::{done, AdminError, Effect};
use crate::admin::validate;
use crate::admin::validate::ValidationError;
use crate::catalog::{Catalog, GroupSpec};

/// The volumes an object made of "one volume or one group" covers (a snapshot, a
/// replication set), in the group's order; `neither` is the refusal when both or
/// neither are named.
pub(crate) fn volume_or_group(
    c: &Catalog,
    volume: Option<String>,
    group: Option<&String>,
    neither: ValidationError,
) -> Result<Vec<String>, AdminError> {
    match (volume, group) {
        (Some(v), None) if c.volumes.contains_key(&v) => Ok(vec![v]),
        (Some(v), None) => Err(AdminError::NoVolume(v)),
        (None, Some(g)) => Ok(c
            .groups
            .get(g)
            .ok_or_else(|| AdminError::NoGroup(g.clone()))?
            .volumes
            .clone()),
        _ => Err(neither.into()),
    }
}

pub(super) fn list(c: &Catalog) -> Response {
    Response::Groups {
        groups: c.groups.keys().map(|n| group_view(c, n)).collect(),
    }
}

pub(super) fn show(c: &Catalog, name: String) -> Result<Response, AdminError> {
    if !c.groups.contains_key(&name) {
        return Err(AdminError::NoGroup(name));
    }
    Ok(Response::Group(group_view(c, &name)))
}

pub(super) fn create(
    c: &mut Catalog,
    name: String,
    volumes: Vec<String>,
) -> Result<(Effect, Response), AdminError> {
    validate::check_group_name(&name)?;
    validate::check_group_volumes(&volumes)?;
    if c.groups.contains_key(&name) {
        return Err(AdminError::GroupExists(name));
    }
    for v in &volumes {
        check_joinable(c, &name, v)?;
    }
    c.groups.insert(
        name.clone(),
        GroupSpec {
            volumes,
            replication_set: None,
        },
    );
    Ok((Effect::None, Response::Group(group_view(c, &name))))
}

pub(super) fn add(
    c: &mut Catalog,
    name: String,
    volume: String,
) -> Result<(Effect, Response), AdminError> {
    group_for_change(
        c,
        &name,
        "volumes cannot be added to it while it is (delete the set first)",
    )?;
    check_joinable(c, &name, &volume)?;
    c.groups
        .get_mut(&name)
        .expect("group_for_change found it")
        .volumes
        .push(volume);
    Ok((Effect::None, Response::Group(group_view(c, &name))))
}

pub(super) fn remove(
    c: &mut Catalog,
    name: String,
    volume: String,
) -> Result<(Effect, Response), AdminError> {
    let g = group_for_change(
        c,
        &name,
        "volumes cannot be removed from it while it is (delete the set first)",
    )?;
    let Some(at) = g.volumes.iter().position(|v| *v == volume) else {
        return Err(AdminError::NotInGroup {
            group: name,
            volume,
        });
    };
    if g.volumes.len() == 1 {
        return Err(AdminError::LastInGroup {
            group: name,
            volume,
        });
    }
    g.volumes.remove(at);
    Ok((Effect::None, Response::Group(group_view(c, &name))))
}

pub(super) fn delete(c: &mut Catalog, name: String) -> Result<(Effect, Response), AdminError> {
    group_for_change(c, &name, "delete the set first")?;
    let g = c.groups.remove(&name).expect("group_for_change found it");
    Ok((
        Effect::None,
        done(format!(
            "deleted group '{name}'; its volumes are kept ({})",
            g.volumes.join(", ")
        )),
    ))
}

fn group_view(c: &Catalog, name: &str) -> GroupView {
    let g = &c.groups[name];
    GroupView {
        name: name.into(),
        volumes: g.volumes.clone(),
        size: g
            .volumes
            .iter()
            .filter_map(|v| c.volumes.get(v))
            .map(|v| v.size)
            .sum(),
        replication_set: g.replication_set.clone(),
    }
}

/// A group whose membership may change: it exists and is in no replication set.
fn group_for_change<'a>(
    c: &'a mut Catalog,
    name: &str,
    what: &'static str,
) -> Result<&'a mut GroupSpec, AdminError> {
    let g = c
        .groups
        .get_mut(name)
        .ok_or_else(|| AdminError::NoGroup(name.to_string()))?;
    if let Some(set) = &g.replication_set {
        return Err(AdminError::GroupReplicated {
            group: name.to_string(),
            set: set.clone(),
            what,
        });
    }
    Ok(g)
}

/// A volume that may join `group`: it exists and is in no group yet.
fn check_joinable(c: &Catalog, group: &str, volume: &str) -> Result<(), AdminError> {
    if !c.volumes.contains_key(volume) {
        return Err(AdminError::NoVolume(volume.to_string()));
    }
    match c.group_of(volume) {
        None => Ok(()),
        Some(g) if g == group => Err(AdminError::AlreadyInGroup {
            group: group.to_string(),
            volume: volume.to_string(),
        }),
        Some(other) => Err(AdminError::InOtherGroup {
            volume: volume.to_string(),
            other: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Change, ErrorCode, Query};
    use crate::admin::store;

    fn gadd(name: &str, vol: &str) -> Change {
        Change::GroupAdd {
            name: name.into(),
            volume: vol.into(),
        }
    }

    fn gremove(name: &str, vol: &str) -> Change {
        Change::GroupRemove {
            name: name.into(),
            volume: vol.into(),
        }
    }

    fn group_of(f: &Fake, group: &str) -> GroupView {
        match f.ok(Query::GroupShow { name: group.into() }) {
            Response::Group(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_lifecycle() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        let Response::Group(g) = f.ok(gcreate("g", &["b", "a"])) else {
            panic!()
        };
        assert_eq!(
            g,
            GroupView {
                name: "g".into(),
                volumes: vec!["b".into(), "a".into()],
                size: 2 << 20,
                replication_set: None,
            },
            "volumes keep the order given"
        );
        assert_eq!(group_of(&f, "g"), g);
        assert_eq!(volume_of(&f, "a").group.as_deref(), Some("g"));
        assert_eq!(volume_of(&f, "c").group, None);

        let Response::Group(g) = f.ok(gadd("g", "c")) else {
            panic!()
        };
        assert_eq!(g.volumes, ["b", "a", "c"], "added at the end");
        let Response::Group(g) = f.ok(gremove("g", "a")) else {
            panic!()
        };
        assert_eq!(g.volumes, ["b", "c"]);
        assert_eq!(volume_of(&f, "a").group, None);

        f.ok(gcreate("h", &["a"]));
        let Response::Groups { groups } = f.ok(Query::GroupList) else {
            panic!()
        };
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["g", "h"]);
        let Response::Status(s) = f.ok(Query::Status) else {
            panic!()
        };
        assert_eq!(s.groups, 2);

        let Response::Done { message } = f.ok(Change::GroupDelete { name: "g".into() }) else {
            panic!()
        };
        assert!(message.contains("kept"), "{message}");
        assert!(!f.catalog.read().groups.contains_key("g"));
        for v in ["b", "c"] {
            assert!(f.catalog.read().volumes.contains_key(v), "volumes stay");
            assert_eq!(volume_of(&f, v).group, None);
        }
        // Out of its group, a volume can be deleted again.
        f.ok(Change::VolumeDelete { name: "b".into() });
    }

    #[test]
    fn group_refusals_change_nothing() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        f.ok(gcreate("g", &["a", "b"]));

        f.refuse(gcreate("bad/name", &["c"]), ErrorCode::Invalid);
        f.refuse(gcreate("", &["c"]), ErrorCode::Invalid);
        let m = f.refuse(gcreate("h", &[]), ErrorCode::Invalid);
        assert!(m.contains("at least one volume"), "{m}");
        let m = f.refuse(gcreate("h", &["c", "c"]), ErrorCode::Invalid);
        assert!(m.contains("twice"), "{m}");
        let m = f.refuse(gcreate("h", &["c", "nope"]), ErrorCode::NotFound);
        assert!(m.contains("nope"), "{m}");
        f.refuse(gcreate("g", &["c"]), ErrorCode::AlreadyExists);
        let m = f.refuse(gcreate("h", &["c", "a"]), ErrorCode::InUse);
        assert!(m.contains("'a'") && m.contains("group 'g'"), "{m}");

        f.refuse(gadd("nope", "c"), ErrorCode::NotFound);
        f.refuse(gadd("g", "nope"), ErrorCode::NotFound);
        let m = f.refuse(gadd("g", "a"), ErrorCode::AlreadyExists);
        assert!(m.contains("already in group 'g'"), "{m}");
        f.ok(gcreate("h", &["c"]));
        let m = f.refuse(gadd("h", "a"), ErrorCode::InUse);
        assert!(m.contains("in group 'g'"), "{m}");

        f.refuse(gremove("nope", "a"), ErrorCode::NotFound);
        let m = f.refuse(gremove("g", "c"), ErrorCode::NotFound);
        assert!(m.contains("not in group 'g'"), "{m}");
        let m = f.refuse(gremove("h", "c"), ErrorCode::InUse);
        assert!(m.contains("last") && m.contains("group delete h"), "{m}");

        f.refuse(
            Change::GroupDelete {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
        f.refuse(
            Query::GroupShow {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );

        let m = f.refuse(Change::VolumeDelete { name: "a".into() }, ErrorCode::InUse);
        assert!(m.contains("group 'g'"), "{m}");
        assert!(f
            .dir
            .path()
            .join(&f.catalog.read().volumes["a"].path)
            .exists());
    }

    #[test]
    fn a_group_in_a_replication_set_keeps_its_volumes() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        f.ok(gcreate("g", &["a", "b"]));
        // The replication work sets this field; here the catalog is edited by hand.
        {
            let mut c = f.catalog.write();
            c.groups.get_mut("g").unwrap().replication_set = Some("dr1".into());
            store::save(f.dir.path(), &c).unwrap();
        }
        assert_eq!(group_of(&f, "g").replication_set.as_deref(), Some("dr1"));
        for req in [
            gadd("g", "c"),
            gremove("g", "b"),
            Change::GroupDelete { name: "g".into() },
        ] {
            let m = f.refuse(req, ErrorCode::InUse);
            assert!(m.contains("group 'g' is in replication set 'dr1'"), "{m}");
        }
        // Its volumes still cannot be deleted out from under it.
        let m = f.refuse(Change::VolumeDelete { name: "a".into() }, ErrorCode::InUse);
        assert!(m.contains("group 'g'"), "{m}");
    }
}
