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
use crate::replication::wire::Fork;
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
        // A clone's file holds only what was written to it.
        if let Some(from) = c.volumes.get(v).and_then(|s| s.clone_of.clone()) {
            return Err(AdminError::CloneNotReplicated {
                volume: v.clone(),
                from,
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

/// Refuses a change that would take set `set`'s history from under DR drills (drill
/// LUNs or clones of its recovery points), naming them.
fn refuse_drills(c: &Catalog, set: &str, volumes: &[String]) -> Result<(), AdminError> {
    let drills = c.drill_users(volumes);
    if drills.is_empty() {
        return Ok(());
    }
    Err(AdminError::DrillLuns {
        set: set.to_string(),
        luns: drills.join(", "),
    })
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
    let volumes = c
        .replications
        .get(&name)
        .map(|s| s.volumes.clone())
        .unwrap_or_default();
    refuse_drills(c, &name, &volumes)?;
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
    let unsettled = matches!(st.state, SetState::Promoted | SetState::SplitBrain);
    if let Some(f) = st.peer_fork.or(st.fork.filter(|_| unsettled)) {
        v.common_cut = Some(f.cut);
        v.promoted_generation = Some(f.generation);
        v.pages_since_common_cut = st.pages_since_fork;
    }
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
        pinned_by: Vec::new(),
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
        common_cut: None,
        promoted_generation: None,
        pages_since_common_cut: None,
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
    refuse_drills(&new, set, &spec.volumes)?;
    new.replications.remove(set);
    if let Some(g) = spec.group.as_ref().and_then(|g| new.groups.get_mut(g)) {
        g.replication_set = None;
    }
    super::store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    host.replication_stopped(set, &spec);
    Ok(())
}

/// Failover: the secondary set holding `volume` (or group `group`) becomes writable, at
/// its latest recovery point or rolled back to `point` first. A volume of a group set
/// is refused (the group goes whole, at one cut, or not at all). The set's receiver is
/// stopped first ([`stop_receiver`]), so the cut reported is the one the volumes hold.
/// The set stays, as a primary held until `failback`: the promote forks the set's
/// history (a new generation whose parent is the secondary's, at the cut it was
/// promoted at), so the old primary learns it at its next connection and the pair can
/// come back.
pub fn promote<H: super::Host + ?Sized>(
    host: &H,
    volume: Option<&str>,
    group: Option<&str>,
    point: Option<u64>,
) -> Result<String, AdminError> {
    let (set, spec) = promoted_set(host, volume, group)?;
    let latest = host.recovery_points(&set)?.first().map(|p| p.cut);
    let at = stop_receiver(host, &set, point)?;
    let fork = Fork {
        generation: at.generation + 1 + u64::from(rand::random::<u32>()),
        parent: at.generation,
        cut: at.cut,
        promoted_ms: crate::replication::wire::now_ms(),
    };
    let rolled_back = point.is_some() && Some(at.cut) != latest;
    if let Err(e) = host.promote_set(&set, &spec, fork, rolled_back, false) {
        host.promote_undone(&set, &spec);
        return Err(e.into());
    }
    {
        let _serial = host.change_lock().lock();
        let mut new = host.catalog().read().clone();
        if let Some(r) = new.replications.get_mut(&set) {
            r.role = ReplicationRole::Primary;
            r.every_secs = None;
        }
        if let Err(e) = super::store::save(host.data_dir(), &new) {
            host.promote_undone(&set, &spec);
            return Err(e.into());
        }
        *host.catalog().write() = new;
    }
    host.promoted(&set, &spec);
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
        "promoted {} of set '{set}' at {which} (generation {}): writable now (map its LUNs without --read-only); the set stays here, held until `failback {set}` once the old primary is back",
        spec.volumes.join(", "),
        fork.generation,
    ))
}

/// Failback reached the old primary (`replication::Host::demote`): each volume's content
/// is kept in a new copy-on-write clone of the volume's point `cut` (the common cut the
/// store adopts, whose undo log the first cut fills with this content), the set's LUNs
/// become read-only, and the set becomes the secondary. Returns the kept volumes.
pub fn demote<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    cut: u64,
    keep: bool,
) -> Result<Vec<String>, AdminError> {
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    let spec = match new.replications.get(set) {
        Some(s) if s.role == ReplicationRole::Primary => s.clone(),
        Some(_) => return Err(crate::replication::ReplicationError::NotPrimary(set.into()).into()),
        None => return Err(AdminError::NoSet(set.to_string())),
    };
    // No new write reaches the volumes from here on: their LUNs are read-only, as a
    // secondary's are.
    for t in new.targets.values_mut() {
        for l in t.luns.values_mut() {
            if spec.volumes.contains(&l.volume) {
                l.read_only = true;
            }
        }
    }
    if let Some(r) = new.replications.get_mut(set) {
        r.role = ReplicationRole::Secondary;
        r.every_secs = None;
    }
    let mut created: Vec<(String, crate::catalog::VolumeSpec)> = Vec::new();
    let undo = |created: &[(String, crate::catalog::VolumeSpec)]| {
        for (name, spec) in created {
            super::apply::discard_volume(host, name, spec);
        }
    };
    for v in spec.volumes.iter().filter(|_| keep) {
        let Some(vs) = new.volumes.get(v).cloned() else {
            continue;
        };
        let mut name = format!("{v}.before-failback-{cut}");
        let mut n = 2;
        while new.volumes.contains_key(&name) {
            name = format!("{v}.before-failback-{cut}-{n}");
            n += 1;
        }
        // Copy-on-write: the clone reads recovery point `cut` of this volume, which the
        // set's first cut as a secondary turns into this content (its undo log), and
        // which stays pinned while the clone exists.
        let mut kept = super::apply::new_volume_spec(
            &new,
            vs.size,
            vs.block_size,
            vs.page_size,
            &mut rand::random::<u64>,
        );
        kept.clone_of = Some(format!("{v}@rp:{cut}"));
        if let Err(e) = super::apply::create_and_open_volume(host, &name, &kept) {
            undo(&created);
            return Err(e);
        }
        created.push((name.clone(), kept.clone()));
        new.volumes.insert(name, kept);
    }
    if let Err(e) = super::store::save(host.data_dir(), &new) {
        undo(&created);
        return Err(e.into());
    }
    *host.catalog().write() = new;
    Ok(created.into_iter().map(|(n, _)| n).collect())
}

/// Switchover's fence: the set's writable LUNs become read-only (saved); returns them.
pub fn fence<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
) -> Result<Vec<(String, u64)>, AdminError> {
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    let volumes = new
        .replications
        .get(set)
        .map(|r| r.volumes.clone())
        .ok_or_else(|| AdminError::NoSet(set.to_string()))?;
    let mut fenced = Vec::new();
    for (iqn, t) in new.targets.iter_mut() {
        for (lun, l) in t.luns.iter_mut() {
            if volumes.contains(&l.volume) && !l.read_only {
                l.read_only = true;
                fenced.push((iqn.clone(), *lun));
            }
        }
    }
    super::store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    Ok(fenced)
}

/// Undoes `fence` for a switchover that could not finish.
pub fn unfence<H: super::Host + ?Sized>(
    host: &H,
    luns: &[(String, u64)],
) -> Result<(), AdminError> {
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    for (iqn, lun) in luns {
        if let Some(l) = new.targets.get_mut(iqn).and_then(|t| t.luns.get_mut(lun)) {
            l.read_only = false;
        }
    }
    super::store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    Ok(())
}

/// Switchover reached the secondary: promote at exactly `fork.cut` (its current cut),
/// not held: the old primary becomes the secondary at once.
pub fn promote_switchover<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    fork: Fork,
) -> Result<(), AdminError> {
    let spec = match host.catalog().read().replications.get(set) {
        Some(r) if r.role == ReplicationRole::Secondary => r.clone(),
        _ => return Err(AdminError::NotASecondary(format!("set '{set}'"))),
    };
    refuse_drills(&host.catalog().read(), set, &spec.volumes)?;
    host.promote_set(set, &spec, fork, false, true)?;
    {
        let _serial = host.change_lock().lock();
        let mut new = host.catalog().read().clone();
        if let Some(r) = new.replications.get_mut(set) {
            r.role = ReplicationRole::Primary;
            r.every_secs = None;
        }
        if let Err(e) = super::store::save(host.data_dir(), &new) {
            host.promote_undone(set, &spec);
            return Err(e.into());
        }
        *host.catalog().write() = new;
    }
    host.promoted(set, &spec);
    host.events().emit_with(|| EventKind::Promoted {
        set: set.to_string(),
        volumes: spec.volumes.clone(),
        recovery_point: Some(fork.cut),
    });
    Ok(())
}

/// `switchover SET` on the primary (`replication::Sets::switchover`).
pub fn switchover<H: super::Host + ?Sized>(host: &H, set: &str) -> Result<String, AdminError> {
    primary_set(&host.catalog().read(), set)?;
    Ok(host.switchover(set)?)
}

/// `resolve SET --keep local|peer` (`replication::Sets::resolve`).
pub fn resolve<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    keep: super::protocol::ResolveKeep,
) -> Result<String, AdminError> {
    primary_set(&host.catalog().read(), set)?;
    Ok(host.resolve(set, keep == super::protocol::ResolveKeep::Local)?)
}

/// `failback SET` on the promoted side (`replication::Sets::failback`).
pub fn failback<H: super::Host + ?Sized>(host: &H, set: &str) -> Result<String, AdminError> {
    if !host.catalog().read().replications.contains_key(set) {
        return Err(AdminError::NoSet(set.to_string()));
    }
    Ok(host.failback(set)?)
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

/// What a membership restart of a group set settles with the peer, once the catalog
/// side ([`restart_members`]) has checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersPlan {
    /// The set as it was: its peer, and the volumes the peer knows it by.
    pub old: ReplicationSpec,
    /// The secondaries to create, by the peer's names.
    pub add: Vec<crate::replication::wire::MemberVolume>,
    /// The peer's names of the volumes leaving the set.
    pub remove: Vec<String>,
    /// What the admin is told once it is done.
    pub message: String,
}

/// `restart SET --yes --add-volume V --remove-volume V`, the catalog side on the
/// primary: the set must be a primary group set here; each volume added must exist
/// and be in no group and no set; each volume removed must be in the group; no volume
/// may be named twice and the group may not end empty. The group and the set take the
/// new membership (added volumes at the end, in the order given); a removed volume
/// stays here as a plain volume. Its secondary is named as the others are (the set's
/// `--target-prefix`, read off its existing pairs).
pub fn restart_members(
    c: &mut Catalog,
    name: &str,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<MembersPlan, AdminError> {
    let old = c
        .replications
        .get(name)
        .cloned()
        .ok_or_else(|| AdminError::NoSet(name.to_string()))?;
    if old.role != ReplicationRole::Primary {
        return Err(crate::replication::ReplicationError::NotPrimary(name.into()).into());
    }
    let Some(group) = old.group.clone() else {
        return Err(AdminError::NotAGroupSet {
            set: name.to_string(),
            volume: old.volumes.join(", "),
        });
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = add.iter().chain(&remove).find(|v| !seen.insert(v.as_str())) {
        return Err(AdminError::MemberTwice(twice.clone()));
    }
    let members = c
        .groups
        .get(&group)
        .map(|g| g.volumes.clone())
        .ok_or_else(|| AdminError::NoGroup(group.clone()))?;
    for v in &add {
        if !c.volumes.contains_key(v) {
            return Err(AdminError::NoVolume(v.clone()));
        }
        match c.group_of(v) {
            None => {}
            Some(g) if g == group => {
                return Err(AdminError::AlreadyInGroup {
                    group,
                    volume: v.clone(),
                })
            }
            Some(other) => {
                return Err(AdminError::InOtherGroup {
                    volume: v.clone(),
                    other: other.to_string(),
                })
            }
        }
        if let Some((set, _)) = c.replication_of(v) {
            return Err(AdminError::AlreadyReplicated {
                volume: v.clone(),
                set: set.to_string(),
            });
        }
        if let Some(from) = c.volumes.get(v).and_then(|s| s.clone_of.clone()) {
            return Err(AdminError::CloneNotReplicated {
                volume: v.clone(),
                from,
            });
        }
    }
    if let Some(v) = remove.iter().find(|v| !members.contains(v)) {
        return Err(AdminError::NotInGroup {
            group,
            volume: v.clone(),
        });
    }
    let volumes: Vec<String> = members
        .iter()
        .filter(|v| !remove.contains(v))
        .chain(&add)
        .cloned()
        .collect();
    if volumes.is_empty() {
        return Err(AdminError::SetEmptied {
            set: name.to_string(),
            group,
        });
    }
    // The peer's name of each volume: as the set has it, or the set's prefix for a new one.
    let prefix = old
        .volumes
        .iter()
        .zip(&old.remote_volumes)
        .find_map(|(l, r)| r.strip_suffix(l.as_str()))
        .unwrap_or_default()
        .to_string();
    let remote_of = |v: &String| -> String {
        old.volumes
            .iter()
            .position(|o| o == v)
            .map_or_else(|| format!("{prefix}{v}"), |i| old.remote_volumes[i].clone())
    };
    let remote_volumes: Vec<String> = volumes.iter().map(remote_of).collect();
    let mut added = Vec::new();
    for v in &add {
        let remote = remote_of(v);
        validate::check_volume_name(&remote)?;
        let spec = &c.volumes[v];
        added.push(crate::replication::wire::MemberVolume {
            name: remote,
            size: spec.size,
            block_size: spec.block_size,
            page_size: spec.page_size,
        });
    }
    let removed: Vec<String> = remove.iter().map(remote_of).collect();
    c.groups.get_mut(&group).expect("found above").volumes = volumes.clone();
    let spec = c.replications.get_mut(name).expect("found above");
    spec.volumes = volumes.clone();
    spec.remote_volumes = remote_volumes;
    let mut changes = Vec::new();
    if !add.is_empty() {
        changes.push(format!("added {}", add.join(", ")));
    }
    if !remove.is_empty() {
        changes.push(format!(
            "removed {} (plain volumes now, here and on peer '{}')",
            remove.join(", "),
            old.peer
        ));
    }
    let message = format!(
        "restarting replication of '{name}' with group '{group}' of {}: {}; the secondary's recovery points are deleted and all written data is shipped again",
        volumes.join(", "),
        changes.join("; ")
    );
    Ok(MembersPlan {
        old,
        add: added,
        remove: removed,
        message,
    })
}

/// On the secondary: the primary restarts the group set `set` with other volumes. The
/// whole change is checked first (a refusal changes nothing): the set is a secondary
/// here; a volume added that is in the set already (a repeated request whose answer
/// was lost) is kept if its geometry matches, one that exists outside it is refused;
/// a volume removed that is no longer in the set is no longer there to remove (the
/// primary checked the names against its own group); the set keeps a volume. Then
/// `reset` drops the set's recovery points, the new volumes are created (same size,
/// block size and page size), the removed ones leave the set and its group as plain
/// volumes (their content kept, writable, deletable), the catalog is saved and the
/// set's store reopened over its new volumes.
pub fn restart_secondary_members<H: super::Host + ?Sized>(
    host: &H,
    set: &str,
    add: &[crate::replication::wire::MemberVolume],
    remove: &[String],
    reset: &mut dyn FnMut() -> Result<(), crate::replication::ReplicationError>,
) -> Result<(), AdminError> {
    use super::apply::{create_and_open_volume, discard_volume, new_volume_spec};

    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    let spec = match new.replications.get(set) {
        Some(s) if s.role == ReplicationRole::Secondary => s.clone(),
        Some(_) => {
            return Err(crate::replication::ReplicationError::NotSecondary(set.into()).into())
        }
        None => return Err(AdminError::NoSet(set.to_string())),
    };
    let mut to_create = Vec::new();
    for v in add {
        validate::check_volume_name(&v.name)?;
        validate::check_geometry(v.size, v.block_size)?;
        validate::check_page_size(u64::from(v.page_size))?;
        match new.volumes.get(&v.name) {
            Some(have)
                if spec.volumes.contains(&v.name)
                    && (have.size, have.block_size, have.page_size)
                        == (v.size, v.block_size, v.page_size) => {}
            Some(_) => return Err(AdminError::VolumeExists(v.name.clone())),
            None => to_create.push(v),
        }
    }
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .filter(|v| !remove.contains(v))
        .chain(
            add.iter()
                .map(|a| &a.name)
                .filter(|a| !spec.volumes.contains(a)),
        )
        .cloned()
        .collect();
    if volumes.is_empty() {
        return Err(AdminError::SetEmptied {
            set: set.to_string(),
            group: spec.group.clone().unwrap_or_default(),
        });
    }
    reset()?;
    let mut created: Vec<(String, crate::catalog::VolumeSpec)> = Vec::new();
    let undo = |created: &[(String, crate::catalog::VolumeSpec)]| {
        for (name, spec) in created {
            discard_volume(host, name, spec);
        }
    };
    for v in to_create {
        let vspec = new_volume_spec(
            &new,
            v.size,
            v.block_size,
            v.page_size,
            &mut rand::random::<u64>,
        );
        if let Err(e) = create_and_open_volume(host, &v.name, &vspec) {
            undo(&created);
            return Err(e);
        }
        created.push((v.name.clone(), vspec.clone()));
        new.volumes.insert(v.name.clone(), vspec);
    }
    if let Some(g) = spec.group.as_ref().and_then(|g| new.groups.get_mut(g)) {
        g.volumes = volumes.clone();
    }
    let s = new.replications.get_mut(set).expect("found above");
    s.volumes = volumes.clone();
    s.remote_volumes = volumes.clone();
    if let Err(e) = super::store::save(host.data_dir(), &new) {
        undo(&created);
        return Err(e.into());
    }
    *host.catalog().write() = new;
    // The store reopens over the new volumes (its reset state names the old ones, and
    // holds no cut, so it takes the new list).
    host.replication_started(set);
    tracing::info!(set, volumes = ?volumes, "the primary restarted the set with other volumes");
    Ok(())
}
