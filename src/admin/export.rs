//! `ctl config export`: the catalog as a config file that `serve --config FILE`
//! accepts on an empty data dir and that recreates this node's volumes (sizes, block
//! and page sizes), groups, targets with their LUNs, ACLs and CHAP, peers, replication
//! sets and schedules.
//!
//! The file is a [`Config`] serialized by the config module itself, so what the export
//! writes and what the loader reads are one set of structs. What a file cannot carry
//! stays out, and the header says so: data (volume contents travel by replication or
//! a copy), snapshots and the LUNs that map them (a snapshot is an instant of this
//! node's volumes), replication progress (a rebuilt set starts a new generation), and
//! `[server]` settings (the new node's flags decide where it listens and keeps its
//! data). Secrets are written as [`MASKED_SECRET`] unless asked for, which the loader
//! refuses by key.

use super::apply::AdminError;
use super::protocol::Response;
use crate::catalog::{split_snapshot_ref, Catalog, ChapSpec};
use crate::config::{
    format_duration, ChapConfig, Config, GroupConfig, LunConfig, PeerConfig, ReplicationConfig,
    ScheduleConfig, TargetConfig, VolumeConfig, MASKED_SECRET,
};
use crate::time::rfc3339_utc;

/// The answer to `config export`.
pub fn response(c: &Catalog, with_secrets: bool) -> Result<Response, AdminError> {
    let body = config_of(c, with_secrets)
        .to_toml()
        .map_err(AdminError::Export)?;
    Ok(Response::ConfigExport {
        toml: format!("{}{body}", header(with_secrets)),
    })
}

fn header(with_secrets: bool) -> String {
    let secrets = if with_secrets {
        "# It holds CHAP and peer secrets: keep it as private as the data dir."
    } else {
        "# Secrets are masked: serve refuses this file until each masked secret is written\n\
         # in (or export with --with-secrets)."
    };
    format!(
        "# twinlun configuration exported by `twinlun ctl config export`.\n\
         # Recreate the node on an empty data dir: twinlun serve --config FILE --data-dir DIR\n\
         # Not in it: volume contents, snapshots and the LUNs mapping them, replication\n\
         # progress (a rebuilt set starts a new generation), [server] settings.\n\
         {secrets}\n\n"
    )
}

/// The catalog as a config; secrets masked unless `with_secrets`.
pub fn config_of(c: &Catalog, with_secrets: bool) -> Config {
    let secret = |s: &str| {
        if with_secrets {
            s.to_string()
        } else {
            MASKED_SECRET.to_string()
        }
    };
    let volumes = (c.volumes.iter())
        .map(|(name, v)| VolumeConfig {
            name: name.clone(),
            size: v.size,
            block_size: v.block_size,
            page_size: Some(u64::from(v.page_size)),
            // Thin is the default: only a thick volume says so.
            provisioning: v.provisioning.is_thick().then_some(v.provisioning),
            allow_sanitize: v.allow_sanitize.then_some(true),
        })
        .collect();
    let groups = (c.groups.iter())
        .map(|(name, g)| GroupConfig {
            name: name.clone(),
            volumes: g.volumes.clone(),
        })
        .collect();
    let targets = (c.targets.iter())
        .map(|(iqn, t)| TargetConfig {
            iqn: iqn.clone(),
            acl: Some(t.acl.iter().cloned().collect()),
            chap: t.chap.as_ref().map(|ch: &ChapSpec| ChapConfig {
                user: ch.user.clone(),
                secret: secret(&ch.secret),
                mutual_user: ch.mutual_user.clone(),
                mutual_secret: ch.mutual_secret.as_deref().map(secret),
            }),
            luns: (t.luns.iter())
                .filter(|(_, l)| split_snapshot_ref(&l.volume).1.is_none())
                .map(|(lun, l)| LunConfig {
                    lun: *lun,
                    volume: l.volume.clone(),
                    read_only: l.read_only,
                    removable: l.removable,
                })
                .collect(),
        })
        .collect();
    let peers = (c.peers.iter())
        .map(|(name, p)| PeerConfig {
            name: name.clone(),
            addr: p.addr.clone(),
            secret: secret(&p.secret),
            max_rate: p.max_rate.map(crate::validate::format_rate),
            pinned_key: p.pinned_key.clone(),
        })
        .collect();
    let replications = (c.replications.iter())
        .map(|(name, r)| ReplicationConfig {
            name: name.clone(),
            role: r.role,
            peer: r.peer.clone(),
            volume: match &r.group {
                Some(_) => None,
                None => r.volumes.first().cloned(),
            },
            group: r.group.clone(),
            remote_volumes: Some(r.remote_volumes.clone()),
            every: r.every_secs.map(format_duration),
            queue_policy: r.queue_policy,
            keep: r.keep,
            compress: r.compress,
            max_rate: r.max_rate.map(crate::validate::format_rate),
        })
        .collect();
    let schedules = (c.schedules.iter())
        .map(|(task, s)| ScheduleConfig {
            task: task.clone(),
            set: s.set.clone(),
            start: rfc3339_utc(s.start),
            every: s.every_secs.map(format_duration),
        })
        .collect();
    Config {
        file: String::new(),
        server: Default::default(),
        volumes,
        groups,
        targets,
        peers,
        replications,
        schedules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{
        Compression, GroupSpec, LunSpec, PeerSpec, QueuePolicy, ReplicationRole, ReplicationSpec,
        ScheduleSpec, SnapshotSpec, VolumeSpec,
    };

    const CHAP_SECRET: &str = "chap-secret-12";
    const MUTUAL_SECRET: &str = "mutual-secret-12";
    const PEER_SECRET: &str = "peer-secret-0123";

    /// A catalog with every kind of object, as `ctl` would have made it.
    fn full() -> Catalog {
        let mut c = Catalog::embedded_default(7);
        let vol = |id: u64, size: u64, block_size: u32, page_size: u32| VolumeSpec {
            size,
            block_size,
            id,
            path: crate::datadir::volume_file_rel(id),
            page_size,
            provisioning: crate::catalog::Provisioning::Thin,
            allow_sanitize: false,
            clone_of: None,
        };
        c.volumes
            .insert("db".into(), vol(11, 64 << 20, 4096, 64 << 10));
        c.volumes
            .insert("logs".into(), vol(12, 32 << 20, 512, 4096));
        c.volumes
            .insert("solo".into(), vol(13, 1 << 20, 512, 1 << 20));
        c.groups.insert(
            "app".into(),
            GroupSpec {
                volumes: vec!["logs".into(), "db".into()],
                replication_set: Some("app-dr".into()),
            },
        );
        let t = c.targets.get_mut(Catalog::DEMO_TARGET).unwrap();
        t.acl.insert("iqn.1994-05.com.redhat:client1".into());
        t.chap = Some(ChapSpec {
            user: "client1".into(),
            secret: CHAP_SECRET.into(),
            mutual_user: Some("target1".into()),
            mutual_secret: Some(MUTUAL_SECRET.into()),
        });
        t.luns.insert(
            1,
            LunSpec {
                volume: "db".into(),
                read_only: true,
                removable: true,
            },
        );
        t.luns.insert(
            2,
            LunSpec {
                volume: "db@before".into(),
                read_only: true,
                removable: false,
            },
        );
        c.snapshots.insert(
            "before".into(),
            SnapshotSpec {
                group: None,
                volumes: vec!["db".into()],
                cut: 3,
                created: 1,
                pause_us: 5,
            },
        );
        c.peers.insert(
            "dr".into(),
            PeerSpec {
                addr: "127.0.0.1:3261".into(),
                secret: PEER_SECRET.into(),
                max_rate: Some(100 << 20),
                pinned_key: Some(format!("sha256:{}", "ab".repeat(32))),
            },
        );
        c.replications.insert(
            "app-dr".into(),
            ReplicationSpec {
                id: 99,
                role: ReplicationRole::Primary,
                peer: "dr".into(),
                group: Some("app".into()),
                volumes: vec!["logs".into(), "db".into()],
                remote_volumes: vec!["dr-logs".into(), "dr-db".into()],
                every_secs: Some(300),
                queue_policy: QueuePolicy::Discard,
                keep: 3,
                compress: Compression::Zstd,
                max_rate: Some((50 << 20) + 1),
            },
        );
        c.replications.insert(
            "solo-dr".into(),
            ReplicationSpec {
                id: 98,
                role: ReplicationRole::Primary,
                peer: "dr".into(),
                group: None,
                volumes: vec!["solo".into()],
                remote_volumes: vec!["solo".into()],
                every_secs: None,
                queue_policy: QueuePolicy::QueueLatest,
                keep: 8,
                compress: Compression::None,
                max_rate: None,
            },
        );
        c.schedules.insert(
            "nightly".into(),
            ScheduleSpec {
                set: "solo-dr".into(),
                start: 1_800_000_000,
                every_secs: Some(86_400),
            },
        );
        c
    }

    /// What a rebuilt node must hold: everything but ids, paths, snapshots and their
    /// LUNs.
    fn comparable(mut c: Catalog) -> Catalog {
        for v in c.volumes.values_mut() {
            v.id = 0;
            v.path.clear();
        }
        for r in c.replications.values_mut() {
            r.id = 0;
        }
        c.snapshots.clear();
        for t in c.targets.values_mut() {
            t.luns.retain(|_, l| !l.volume.contains('@'));
        }
        c
    }

    #[test]
    fn an_export_loads_back_to_the_same_catalog() {
        let c = full();
        let Response::ConfigExport { toml } = response(&c, true).unwrap() else {
            panic!("not an export")
        };
        let cfg = Config::parse(&toml, "export.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let mut rebuilt = Catalog::default();
        let mut n = 100;
        cfg.overlay(&mut rebuilt, &mut || {
            n += 1;
            n
        })
        .unwrap();
        assert_eq!(comparable(rebuilt.clone()), comparable(c), "{toml}");
        // Applying the same file again at the next start changes nothing.
        let before = rebuilt.clone();
        cfg.overlay(&mut rebuilt, &mut || panic!("no new ids"))
            .unwrap();
        assert_eq!(rebuilt, before);
    }

    #[test]
    fn a_masked_export_holds_no_secret_and_is_refused_by_key() {
        let Response::ConfigExport { toml } = response(&full(), false).unwrap() else {
            panic!("not an export")
        };
        for s in [CHAP_SECRET, MUTUAL_SECRET, PEER_SECRET] {
            assert!(!toml.contains(s), "{s} in\n{toml}");
        }
        let e = Config::parse(&toml, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml: target[0].chap.secret: the secret was masked"),
            "{e}"
        );
        // With the CHAP secrets written in, the peer's is the next one named.
        let toml =
            toml.replacen(MASKED_SECRET, CHAP_SECRET, 1)
                .replacen(MASKED_SECRET, MUTUAL_SECRET, 1);
        let e = Config::parse(&toml, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml: peer[0].secret: the secret was masked"),
            "{e}"
        );
    }
}
