//! The node itself: `status` and the sessions logged in.

use super::super::protocol::{Response, StatusView};
use super::super::replication as repl;
use super::Host;
use crate::catalog::Catalog;

pub(super) fn status<H: Host + ?Sized>(host: &H, c: &Catalog) -> Response {
    let rt = host.runtime();
    Response::Status(StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: host.data_dir().display().to_string(),
        engine: rt.engine,
        port_groups: port_groups(c, &rt.listen),
        listen: rt.listen,
        admin_socket: rt.admin_socket,
        uptime_secs: rt.uptime_secs,
        cuts: rt.cuts,
        volumes: c.volumes.len(),
        groups: c.groups.len(),
        targets: c.targets.len(),
        sessions: host.sessions().len(),
        replication_listen: rt.replication_listen,
        tls_key: rt.tls_key,
        peers: c.peers.keys().map(|n| repl::peer_view(c, n)).collect(),
        replications: c
            .replications
            .keys()
            .map(|n| super::replication::full_replication_view(host, c, n))
            .collect(),
        snapshots: c
            .snapshots
            .keys()
            .map(|n| super::snapshot::snapshot_view(host, c, n))
            .collect(),
    })
}

pub(super) fn sessions<H: Host + ?Sized>(host: &H) -> Response {
    Response::Sessions {
        sessions: host.sessions(),
    }
}

/// Every portal's group with its state, and any group with a state but no portal now
/// (a `--listen` dropped since it was set).
fn port_groups(c: &Catalog, listen: &[String]) -> Vec<super::super::protocol::PortGroupView> {
    let portals = u16::try_from(listen.len()).unwrap_or(u16::MAX);
    let mut groups: Vec<u16> = (1..=portals).collect();
    groups.extend(c.port_groups.keys().filter(|g| **g > portals));
    groups
        .into_iter()
        .map(|g| super::super::protocol::PortGroupView {
            group: g,
            portal: listen.get(usize::from(g) - 1).cloned(),
            state: c.port_groups.get(&g).copied().unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::Query;

    #[test]
    fn status_and_sessions() {
        let f = Fake::new();
        f.sessions.lock().push(session(Catalog::DEMO_TARGET));
        let Response::Status(s) = f.ok(Query::Status) else {
            panic!()
        };
        assert_eq!((s.volumes, s.targets, s.sessions), (1, 1, 1));
        assert_eq!(s.engine, "fake");
        let Response::Sessions { sessions } = f.ok(Query::SessionList) else {
            panic!()
        };
        assert_eq!(sessions, vec![session(Catalog::DEMO_TARGET)]);
        let Response::Targets { targets } = f.ok(Query::TargetList) else {
            panic!()
        };
        assert_eq!(targets[0].sessions, 1);
    }
}
