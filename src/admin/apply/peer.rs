//! Peers: other twinluns' replication listeners and the secrets shared with them. The
//! catalog side of creating and deleting one is `admin::replication` (`peer_create`,
//! `peer_delete`).

use super::super::protocol::Response;
use super::super::replication as repl;
use super::{AdminError, Host};
use crate::catalog::Catalog;

pub(super) fn list(c: &Catalog) -> Response {
    Response::Peers {
        peers: c.peers.keys().map(|n| repl::peer_view(c, n)).collect(),
    }
}

/// Connects, proves the secret both ways, measures the round trip.
pub(super) fn check<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    let peer = c
        .peers
        .get(&name)
        .ok_or_else(|| AdminError::NoPeer(name.clone()))?;
    Ok(Response::PeerCheck(host.peer_check(&name, peer)))
}
