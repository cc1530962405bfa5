//! Peers: other twinluns' replication listeners and the secrets shared with them. The
//! catalog side of creating and deleting one is `admin::replication` (`peer_create`,
//! `peer_delete`).

use super::super::protocol::Response;
use super::super::replication as repl;
use super::{install, AdminError, Host};
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

/// The peer as `list` shows it, with this node's key and the last link with it.
pub(super) fn show<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    if !c.peers.contains_key(&name) {
        return Err(AdminError::NoPeer(name));
    }
    let mut view = repl::peer_view(c, &name);
    view.local_key = host.runtime().tls_key;
    view.last_link = host.peer_link(&name);
    Ok(Response::Peer(view))
}

/// `peer update --accept-new-key`: `new` has the peer's pin cleared. If the peer
/// answers and authenticates (the secret proofs over the channel binding), the key it
/// presented is pinned; if not, the pin stays cleared and the next authenticated
/// contact pins. Either way the catalog is saved.
pub(super) fn commit_accept_new_key<H: Host + ?Sized>(
    host: &H,
    mut new: Catalog,
    name: &str,
) -> Result<Response, AdminError> {
    let peer = new.peers[name].clone();
    let message = match host.peer_present_key(name, &peer) {
        Ok(key) => {
            let message = format!("peer '{name}': pinned its key {key}");
            if let Some(p) = new.peers.get_mut(name) {
                p.pinned_key = Some(key);
            }
            message
        }
        Err(e) => format!(
            "peer '{name}': pin cleared; the next authenticated contact pins the key it presents (now: {})",
            crate::chain::ErrorChain(&e)
        ),
    };
    install(host, new)?;
    Ok(Response::Done { message })
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Change, ErrorCode, PeerUpdate, Query};
    use crate::catalog::PeerSpec;

    fn pinned(f: &Fake) -> Option<String> {
        f.catalog.read().peers["p"].pinned_key.clone()
    }

    #[test]
    fn accept_new_key_of_a_peer_that_does_not_answer_clears_the_pin_on_disk() {
        let f = Fake::new();
        let key = format!("sha256:{}", "ab".repeat(32));
        f.catalog.write().peers.insert(
            "p".into(),
            PeerSpec {
                max_rate: None,
                addr: "192.0.2.1:3261".into(),
                secret: "0123456789abcdef".into(),
                pinned_key: Some(key.clone()),
            },
        );
        let shown = super::super::apply(&f, Query::PeerShow { name: "p".into() }.into());
        let Response::Peer(view) = shown else {
            panic!("{shown:?}")
        };
        assert_eq!(view.pinned_key.as_deref(), Some(key.as_str()));
        // Nothing to change, and an unknown peer: refused, nothing changes.
        let update = |name: &str, accept_new_key| {
            super::super::apply(
                &f,
                Change::PeerUpdate(PeerUpdate {
                    max_rate: None,
                    name: name.into(),
                    accept_new_key,
                })
                .into(),
            )
        };
        for (name, accept, code) in [
            ("p", false, ErrorCode::Invalid),
            ("q", true, ErrorCode::NotFound),
        ] {
            match update(name, accept) {
                Response::Error { code: c, .. } => assert_eq!(c, code),
                other => panic!("{other:?}"),
            }
            assert_eq!(pinned(&f).as_deref(), Some(key.as_str()));
        }
        // The fake's peer never answers: the pin is cleared, in memory and on disk.
        match update("p", true) {
            Response::Done { message } => assert!(message.contains("pin cleared"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(pinned(&f), None);
        assert_eq!(f.on_disk().peers["p"].pinned_key, None);
    }
}
