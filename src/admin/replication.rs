//! Admin requests about peers and replication sets: the catalog side of each (pure, in
//! `change_*`) and the views. What needs the network or the running replicator goes
//! through `Host` in `apply`.
//!
//! Semantics an admin can rely on:
//! - A peer's secret goes in with `peer create` and never comes out (views, logs).
//! - `peer delete` is refused while a replication set uses the peer, naming the sets.
//! - `replication create` needs the peer reachable: it creates the secondary volumes
//!   there (same size and block size; same names unless `--target-prefix`) before the
//!   set is saved here; if the peer refuses, nothing is created on either side.
//! - A volume is in at most one set. A grouped volume is replicated with its group.
//!   While a group is in a set its membership is fixed (see `apply`).
//! - Secondary volumes change only by replication: mapping one read-write, taking a
//!   snapshot of one and deleting one are refused.

use super::apply::{AdminError, Effect};
use super::protocol::{PeerUpdate, PeerView, RecoveryPointView, ReplicationView, Response};
use super::validate::{self, ValidationError};
use crate::catalog::{
    Catalog, Compression, PeerSpec, QueuePolicy, ReplicationRole, ReplicationSpec,
};
use crate::events::EventKind;
use crate::replication::recovery::RecoveryPoint;
use crate::replication::status::{SetState, SetStatus};
use crate::time::{rfc3339_utc, unix_secs};

pub fn peer_view(c: &Catalog, name: &str) -> PeerView {
    PeerView {
        name: name.into(),
        addr: c.peers[name].addr.clone(),
        sets: sets_using(c, name),
        max_rate: c.peers[name].max_rate,
        pinned_key: c.peers[name].pinned_key.clone(),
        local_key: None,
        last_link: None,
    }
}

fn sets_using(c: &Catalog, peer: &str) -> Vec<String> {
    c.replications
        .iter()
        .filter(|(_, r)| r.peer == peer)
        .map(|(n, _)| n.clone())
        .collect()
}

pub fn peer_create(
    c: &mut Catalog,
    name: String,
    addr: String,
    secret: String,
    max_rate: Option<String>,
) -> Result<(Effect, Response), AdminError> {
    validate::check_peer_name(&name)?;
    validate::check_peer_addr(&addr)?;
    validate::check_peer_secret(&secret)?;
    let max_rate = max_rate.as_deref().map(validate::parse_rate).transpose()?;
    if c.peers.contains_key(&name) {
        return Err(AdminError::PeerExists(name));
    }
    c.peers.insert(
        name.clone(),
        PeerSpec {
            addr,
            secret,
            max_rate,
            pinned_key: None,
        },
    );
    Ok((Effect::None, Response::Peer(peer_view(c, &name))))
}

/// A cap as an admin reads it: "50M/s", or "no cap".
fn show_rate(r: Option<u64>) -> String {
    r.map_or_else(
        || "no cap".to_string(),
        |r| format!("{}/s", validate::format_rate(r)),
    )
}

/// `--max-rate` as a change: `None` not given, `Some(None)` removed ("none").
fn rate_change(given: Option<&str>) -> Result<Option<Option<u64>>, ValidationError> {
    match given {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(r) => validate::parse_rate(r).map(|r| Some(Some(r))),
    }
}

/// `peer update`: a new cap on what all sets to the peer send together (the running
/// sets honour it from their next extent), and with `accept_new_key` a new pin: it is
/// cleared here and the commit pins what the peer presents now, if it answers.
pub fn peer_update(c: &mut Catalog, u: PeerUpdate) -> Result<(Effect, Response), AdminError> {
    let rate = rate_change(u.max_rate.as_deref())?;
    let peer = c
        .peers
        .get_mut(&u.name)
        .ok_or_else(|| AdminError::NoPeer(u.name.clone()))?;
    if rate.is_none() && !u.accept_new_key {
        return Err(AdminError::NothingToUpdate(u.name));
    }
    let mut changes = Vec::new();
    if let Some(rate) = rate {
        changes.push(format!(
            "max-rate {} -> {}",
            show_rate(peer.max_rate),
            show_rate(rate)
        ));
        peer.max_rate = rate;
    }
    if u.accept_new_key {
        peer.pinned_key = None;
        changes.push("pin cleared".to_string());
    }
    let message = format!("updated peer '{}': {}", u.name, changes.join(", "));
    Ok((
        Effect::UpdatePeer {
            name: u.name,
            accept_new_key: u.accept_new_key,
        },
        Response::Done { message },
    ))
}

pub fn peer_delete(c: &mut Catalog, name: String) -> Result<(Effect, Response), AdminError> {
    if !c.peers.contains_key(&name) {
        return Err(AdminError::NoPeer(name));
    }
    let sets = sets_using(c, &name);
    if !sets.is_empty() {
        return Err(AdminError::PeerInUse {
            name,
            sets: sets.join(", "),
        });
    }
    c.peers.remove(&name);
    Ok((
        Effect::None,
        Response::Done {
            message: format!("deleted peer '{name}'"),
        },
    ))
}

use super::protocol::ReplicationCreate;

pub fn replication_create(
    c: &mut Catalog,
    a: ReplicationCreate,
) -> Result<(Effect, Response), AdminError> {
    validate::check_set_name(&a.name)?;
    let every_secs = a
        .every
        .as_deref()
        .map(validate::parse_duration)
        .transpose()?;
    if a.keep == 0 {
        return Err(ValidationError::Keep.into());
    }
    if let Some(p) = &a.target_prefix {
        validate::check_target_prefix(p)?;
    }
    let max_rate = a
        .max_rate
        .as_deref()
        .map(validate::parse_rate)
        .transpose()?;
    if c.replications.contains_key(&a.name) {
        return Err(AdminError::SetExists(a.name));
    }
    if !c.peers.contains_key(&a.peer) {
        return Err(AdminError::NoPeer(a.peer));
    }
    // A grouped volume replicates with its group, never alone.
    let grouped = match (&a.volume, &a.group) {
        (Some(v), None) => c.group_of(v).map(|g| (v, g)),
        _ => None,
    };
    if let Some((v, g)) = grouped {
        return Err(AdminError::ReplicateGroup {
            volume: v.clone(),
            group: g.to_string(),
        });
    }
    let volumes =
        super::apply::volume_or_group(c, a.volume, a.group.as_ref(), ValidationError::SetSource)?;
    for v in &volumes {
        if let Some((set, _)) = c.replication_of(v) {
            return Err(AdminError::AlreadyReplicated {
                volume: v.clone(),
                set: set.to_string(),
            });
        }
    }
    let prefix = a.target_prefix.unwrap_or_default();
    let remote_volumes: Vec<String> = volumes.iter().map(|v| format!("{prefix}{v}")).collect();
    for r in &remote_volumes {
        validate::check_volume_name(r)?;
    }
    if let Some(g) = &a.group {
        c.groups.get_mut(g).expect("checked above").replication_set = Some(a.name.clone());
    }
    let id = c.new_set_id();
    c.replications.insert(
        a.name.clone(),
        ReplicationSpec {
            id,
            role: ReplicationRole::Primary,
            peer: a.peer,
            group: a.group,
            volumes,
            remote_volumes,
            every_secs,
            queue_policy: a.queue_policy,
            keep: a.keep,
            compress: a.compress,
            max_rate,
        },
    );
    Ok((
        Effect::CreateReplication { name: a.name },
        Response::Done {
            message: String::new(),
        },
    ))
}

/// `replication modify`, the catalog side: validates every option given (a bad one
/// changes nothing), refuses a set that is not primary here, and says what the commit
/// must settle with the peer: the secondary's new `keep`, and that the peer decodes a
/// new codec.
pub fn replication_modify(
    c: &mut Catalog,
    m: super::protocol::ReplicationModify,
) -> Result<(Effect, Response), AdminError> {
    let every = match m.every.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(e) => Some(Some(validate::parse_duration(e)?)),
    };
    if m.keep == Some(0) {
        return Err(ValidationError::Keep.into());
    }
    let rate = rate_change(m.max_rate.as_deref())?;
    let spec = c
        .replications
        .get_mut(&m.name)
        .ok_or_else(|| AdminError::NoSet(m.name.clone()))?;
    if spec.role != ReplicationRole::Primary {
        return Err(AdminError::ModifyOnSecondary(m.name));
    }
    if every.is_none()
        && m.keep.is_none()
        && m.queue_policy.is_none()
        && rate.is_none()
        && m.compress.is_none()
    {
        return Err(AdminError::NothingToModify(m.name));
    }
    let show_every =
        |e: Option<u64>| e.map_or_else(|| "none".to_string(), crate::config::format_duration);
    let mut changes: Vec<String> = Vec::new();
    if let Some(e) = every {
        changes.push(format!(
            "every {} -> {}",
            show_every(spec.every_secs),
            show_every(e)
        ));
        spec.every_secs = e;
    }
    let mut remote_keep = None;
    if let Some(k) = m.keep {
        changes.push(format!("keep {} -> {k}", spec.keep));
        if k != spec.keep {
            remote_keep = Some(k);
        }
        spec.keep = k;
    }
    if let Some(q) = m.queue_policy {
        changes.push(format!(
            "queue-policy {} -> {}",
            spec.queue_policy.name(),
            q.name()
        ));
        spec.queue_policy = q;
    }
    if let Some(r) = rate {
        changes.push(format!(
            "max-rate {} -> {}",
            show_rate(spec.max_rate),
            show_rate(r)
        ));
        spec.max_rate = r;
    }
    let mut codec = None;
    if let Some(x) = m.compress {
        changes.push(format!("compress {} -> {x}", spec.compress));
        if !x.is_none() && x != spec.compress {
            codec = Some(x);
        }
        spec.compress = x;
    }
    let message = format!(
        "modified replication set '{}': {}",
        m.name,
        changes.join(", ")
    );
    Ok((
        Effect::ModifyReplication {
            name: m.name,
            keep: remote_keep,
            codec,
        },
        Response::Done { message },
    ))
}

/// On the secondary: the primary changed how many recovery points this side keeps.
/// Saved at once; the next commit prunes to it.
pub fn modify_secondary<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    keep: u32,
) -> Result<(), AdminError> {
    if keep == 0 {
        return Err(ValidationError::Keep.into());
    }
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    match new.replications.get_mut(set) {
        Some(s) if s.role == ReplicationRole::Secondary => s.keep = keep,
        Some(_) => {
            return Err(crate::replication::ReplicationError::NotSecondary(set.into()).into())
        }
        None => return Err(AdminError::NoSet(set.to_string())),
    }
    super::store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    tracing::info!(set, keep, "the primary changed the recovery points kept");
    Ok(())
}

/// `replication delete`: the set leaves the catalog, its volumes stay as plain ones.
/// A primary asks its peer to drop its side first, unless `force` (a peer gone for
/// good): then only this side goes, and the message says what is left on the peer.
pub fn replication_delete(
    c: &mut Catalog,
    name: String,
    force: bool,
) -> Result<(Effect, Response), AdminError> {
    let tasks: Vec<&str> = c
        .schedules
        .iter()
        .filter(|(_, s)| s.set == name)
        .map(|(t, _)| t.as_str())
        .collect();
    if !tasks.is_empty() {
        let tasks = tasks.join(", ");
        return Err(AdminError::SetScheduled { name, tasks });
    }
    let spec = c
        .replications
        .remove(&name)
        .ok_or_else(|| AdminError::NoSet(name.clone()))?;
    if let Some(g) = spec.group.as_ref().and_then(|g| c.groups.get_mut(g)) {
        g.replication_set = None;
    }
    let message = match spec.role {
        ReplicationRole::Primary if force => format!(
            "deleted replication set '{name}' here only (--force); its volumes here are plain volumes now; peer '{}' was not asked and may still hold its side",
            spec.peer
        ),
        ReplicationRole::Primary => format!(
            "deleted replication set '{name}'; its volumes here and on peer '{}' are plain volumes now",
            spec.peer
        ),
        ReplicationRole::Secondary => format!(
            "deleted the secondary side of replication set '{name}' and its recovery points; its volumes are plain volumes now"
        ),
    };
    Ok((
        Effect::DeleteReplication { name, spec, force },
        Response::Done { message },
    ))
}

/// The runtime part of a set's view: what the set reports of itself.
pub fn add_status(v: &mut ReplicationView, st: SetStatus) {
    v.status = st.state;
    v.generation = st.generation;
    v.last_cut_id = st.last_cut;
    v.last_cut_time = st.last_cut_unix.map(rfc3339_utc);
    v.lag_secs = st
        .last_cut_unix
        .map(|t| unix_secs(std::time::SystemTime::now()).saturating_sub(t));
    v.cycles = st.cycles;
    v.last_cycle = st.last_cycle;
    v.queued = st.queued;
    v.progress = st.progress;
    v.current_rate = st.current_rate;
    v.error = st.error;
    v.next_retry = st.next_retry_unix.map(rfc3339_utc);
    v.events = st
        .events
        .iter()
        .map(|e| format!("{} {}", rfc3339_utc(e.at_unix), e.state))
        .collect();
}

/// A recovery point as `recovery-points` lists it.
pub fn recovery_point_view(p: RecoveryPoint) -> RecoveryPointView {
    RecoveryPointView {
        cut_id: p.cut,
        time: rfc3339_utc(p.taken_unix),
        time_unix: p.taken_unix,
        size: p.undo_bytes,
    }
}

/// The catalog part of a set's view; `apply` adds the runtime part from the host.
pub fn replication_view(c: &Catalog, name: &str) -> ReplicationView {
    let r = &c.replications[name];
    let peer_max_rate = (r.role == ReplicationRole::Primary)
        .then(|| c.peers.get(&r.peer).and_then(|p| p.max_rate))
        .flatten();
    ReplicationView {
        name: name.into(),
        role: r.role,
        peer: r.peer.clone(),
        group: r.group.clone(),
        volumes: r.volumes.clone(),
        remote_volumes: r.remote_volumes.clone(),
        every_secs: r.every_secs,
        queue_policy: r.queue_policy,
        keep: r.keep,
        compress: r.compress,
        max_rate: r.max_rate,
        peer_max_rate,
        effective_max_rate: crate::replication::rate::effective(r.max_rate, peer_max_rate),
        current_rate: None,
        status: SetState::Unsynchronized,
        generation: 0,
        last_cut_id: None,
        last_cut_time: None,
        lag_secs: None,
        progress: None,
        last_cycle: None,
        cycles: 0,
        queued: 0,
        error: None,
        next_retry: None,
        events: Vec::new(),
    }
}

/// The secondary side of a new set, as the primary asked over the wire: creates its
/// volumes (refusing names already taken, before creating anything), puts them in
/// `group` when the primary replicates a group, and records the set as secondary.
pub fn accept_secondary<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    peer: &str,
    group: Option<&str>,
    volumes: &[crate::replication::wire::RemoteVolume],
    keep: u32,
) -> Result<(), AdminError> {
    use super::apply::{create_and_open_volume, new_volume_spec};
    use crate::catalog::{GroupSpec, DEFAULT_PAGE_SIZE};

    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    validate::check_set_name(set)?;
    if new.replications.contains_key(set) {
        return Err(AdminError::SetExists(set.to_string()));
    }
    if let Some(g) = group {
        validate::check_group_name(g)?;
        if new.groups.contains_key(g) {
            return Err(AdminError::GroupExists(g.to_string()));
        }
    }
    for v in volumes {
        validate::check_volume_name(&v.name)?;
        validate::check_geometry(v.size, v.block_size)?;
        if let Some(p) = v.page_size {
            validate::check_page_size(u64::from(p))?;
        }
        if new.volumes.contains_key(&v.name) {
            return Err(AdminError::VolumeExists(v.name.clone()));
        }
    }
    let mut created: Vec<(String, crate::catalog::VolumeSpec)> = Vec::new();
    let undo = |created: &[(String, crate::catalog::VolumeSpec)]| {
        for (name, spec) in created {
            super::apply::discard_volume(host, name, spec);
        }
    };
    for v in volumes {
        let spec = new_volume_spec(
            &new,
            v.size,
            v.block_size,
            v.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
            &mut rand::random::<u64>,
        );
        if let Err(e) = create_and_open_volume(host, &v.name, &spec) {
            undo(&created);
            return Err(e);
        }
        created.push((v.name.clone(), spec.clone()));
        new.volumes.insert(v.name.clone(), spec);
    }
    let names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
    if let Some(g) = group {
        new.groups.insert(
            g.to_string(),
            GroupSpec {
                volumes: names.clone(),
                replication_set: Some(set.to_string()),
            },
        );
    }
    let id = new.new_set_id();
    new.replications.insert(
        set.to_string(),
        ReplicationSpec {
            id,
            role: ReplicationRole::Secondary,
            peer: peer.to_string(),
            group: group.map(str::to_string),
            volumes: names.clone(),
            remote_volumes: names,
            every_secs: None,
            queue_policy: QueuePolicy::default(),
            keep,
            compress: Compression::None,
            max_rate: None,
        },
    );
    if let Err(e) = super::store::save(host.data_dir(), &new) {
        undo(&created);
        return Err(e.into());
    }
    *host.catalog().write() = new;
    host.replication_started(set);
    tracing::info!(set, peer, "secondary side of a replication set created");
    Ok(())
}

/// The primary deleted a set: its secondary side goes (recovery points too); the
/// volumes and group stay as plain ones.
pub fn drop_secondary<H: super::Host + ?Sized>(host: &H, set: &str) -> Result<(), AdminError> {
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    let spec = match new.replications.get(set) {
        Some(s) if s.role == ReplicationRole::Secondary => s.clone(),
        Some(_) => {
            return Err(crate::replication::ReplicationError::NotSecondary(set.into()).into())
        }
        None => return Err(AdminError::NoSet(set.to_string())),
    };
    new.replications.remove(set);
    if let Some(g) = spec.group.as_ref().and_then(|g| new.groups.get_mut(g)) {
        g.replication_set = None;
    }
    super::store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    host.replication_stopped(set, &spec);
    Ok(())
}

/// Failover: the secondary set holding `volume` (or group `group`) becomes ordinary
/// writable volumes, at its latest recovery point or rolled back to `point` first.
/// A volume of a group set is refused (the group goes whole, at one cut, or not at
/// all). The set's receiver is stopped first ([`stop_receiver`]), so the cut reported
/// is the one the volumes hold.
pub fn promote<H: super::Host + ?Sized>(
    host: &H,
    volume: Option<&str>,
    group: Option<&str>,
    point: Option<u64>,
) -> Result<String, AdminError> {
    let (set, spec) = promoted_set(host, volume, group)?;
    let at = stop_receiver(host, &set, point)?;
    if let Err(e) = drop_secondary(host, &set) {
        host.resume_receiver(&set);
        return Err(e);
    }
    host.events().emit_with(|| EventKind::Promoted {
        set: set.clone(),
        volumes: spec.volumes.clone(),
        recovery_point: point,
    });
    let which = match point {
        None => format!("cut {}, its latest recovery point", at.cut),
        Some(_) => format!("recovery point {}", at.cut),
    };
    Ok(format!(
        "promoted {} of set '{set}' at {which}: writable now; the set is gone from this side",
        spec.volumes.join(", ")
    ))
}

/// The secondary set a promote names, by a volume of its own (not of a group) or by
/// its group.
fn promoted_set<H: super::Host + ?Sized>(
    host: &H,
    volume: Option<&str>,
    group: Option<&str>,
) -> Result<(String, ReplicationSpec), AdminError> {
    let c = host.catalog().read();
    let found = match (volume, group) {
        (Some(v), None) => c.replication_of(v),
        (None, Some(g)) => c
            .replications
            .iter()
            .find(|(_, r)| r.group.as_deref() == Some(g))
            .map(|(n, r)| (n.as_str(), r)),
        _ => return Err(ValidationError::SetSource.into()),
    };
    let what = volume
        .map(|v| format!("volume '{v}'"))
        .or_else(|| group.map(|g| format!("group '{g}'")))
        .unwrap_or_default();
    let (set, spec) = match found {
        Some((n, r)) if r.role == ReplicationRole::Secondary => (n.to_string(), r.clone()),
        _ => return Err(AdminError::NotASecondary(what)),
    };
    if let (Some(v), Some(g)) = (volume, &spec.group) {
        return Err(AdminError::PromoteGrouped {
            volume: v.to_string(),
            group: g.clone(),
            set,
        });
    }
    Ok((set, spec))
}

/// Stops the set's receiver for the promote (rolled back to `point` when given) and
/// returns the cut its volumes hold. Before the first cut commits (a new set, or
/// after `restart`) the volumes hold a partial copy: refused, and the set receives on.
/// A point the set does not have is refused from the published summary, before
/// anything is fenced.
pub fn stop_receiver<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    point: Option<u64>,
) -> Result<crate::replication::recovery::CutMeta, AdminError> {
    if host.recovery_points(set)?.is_empty() {
        return Err(AdminError::NoCommittedCut(set.to_string()));
    }
    host.stop_receiver(set, point)?
        .ok_or_else(|| AdminError::NoCommittedCut(set.to_string()))
}

fn unix_now() -> u64 {
    super::time::unix_secs(std::time::SystemTime::now())
}

pub fn schedule_views(c: &Catalog) -> Vec<super::protocol::ScheduleView> {
    let now = unix_now();
    c.schedules
        .iter()
        .map(|(task, s)| super::protocol::ScheduleView {
            task: task.clone(),
            set: s.set.clone(),
            start: super::time::rfc3339_utc(s.start),
            every_secs: s.every_secs,
            next: s.next_due(now).map(super::time::rfc3339_utc),
        })
        .collect()
}

fn primary_set(c: &Catalog, set: &str) -> Result<(), AdminError> {
    match c.replications.get(set) {
        Some(r) if r.role == ReplicationRole::Primary => Ok(()),
        Some(_) => Err(crate::replication::ReplicationError::NotPrimary(set.into()).into()),
        None => Err(AdminError::NoSet(set.into())),
    }
}

pub fn schedule_add(
    c: &mut Catalog,
    task: String,
    set: String,
    start: String,
    every: Option<String>,
) -> Result<(Effect, Response), AdminError> {
    validate::check_task_name(&task)?;
    let start = validate::parse_start(&start, unix_now())?;
    let every_secs = every.as_deref().map(validate::parse_duration).transpose()?;
    if c.schedules.contains_key(&task) {
        return Err(AdminError::TaskExists(task));
    }
    primary_set(c, &set)?;
    c.schedules.insert(
        task.clone(),
        crate::catalog::ScheduleSpec {
            set,
            start,
            every_secs,
        },
    );
    Ok((Effect::None, one_schedule(c, &task)))
}

/// The answer to a schedule change: the task as it now stands.
fn one_schedule(c: &Catalog, task: &str) -> Response {
    Response::Schedules {
        schedules: schedule_views(c)
            .into_iter()
            .filter(|s| s.task == task)
            .collect(),
    }
}

pub fn schedule_modify(
    c: &mut Catalog,
    task: String,
    set: Option<String>,
    start: Option<String>,
    every: Option<String>,
) -> Result<(Effect, Response), AdminError> {
    let start = start
        .map(|s| validate::parse_start(&s, unix_now()))
        .transpose()?;
    let every = match every.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(e) => Some(Some(validate::parse_duration(e)?)),
    };
    if let Some(s) = &set {
        primary_set(c, s)?;
    }
    let spec = c
        .schedules
        .get_mut(&task)
        .ok_or_else(|| AdminError::NoTask(task.clone()))?;
    if let Some(s) = set {
        spec.set = s;
    }
    if let Some(s) = start {
        spec.start = s;
    }
    if let Some(e) = every {
        spec.every_secs = e;
    }
    Ok((Effect::None, one_schedule(c, &task)))
}

pub fn schedule_delete(c: &mut Catalog, task: String) -> Result<(Effect, Response), AdminError> {
    if c.schedules.remove(&task).is_none() {
        return Err(AdminError::NoTask(task));
    }
    Ok((
        Effect::None,
        Response::Done {
            message: format!("deleted schedule task '{task}'"),
        },
    ))
}
