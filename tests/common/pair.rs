//! Two servers that replicate: a primary that names the secondary `dr` and a secondary
//! that names the primary `prod`, with the same secret, both listening for replication.

use std::net::SocketAddr;

use super::{free_port, Launch, TestServer};

/// The secret both sides of a pair share.
pub const SECRET: &str = "replication-secret-1";

/// A primary and a secondary that name each other with the same secret; the
/// primary reaches the secondary at `via` when given (a proxy), else directly.
pub fn pair_via(via: impl FnOnce(SocketAddr) -> SocketAddr) -> (TestServer, TestServer) {
    pair_launched(TestServer::launch(), via)
}

/// `pair_via` with the primary started from `primary` (its environment, say).
pub fn pair_launched(
    primary: Launch,
    via: impl FnOnce(SocketAddr) -> SocketAddr,
) -> (TestServer, TestServer) {
    let primary_repl = format!("127.0.0.1:{}", free_port());
    let secondary_repl = format!("127.0.0.1:{}", free_port());
    let p = primary
        .args(&["--replication-listen", &primary_repl])
        .start();
    let s = TestServer::start_with(&["--replication-listen", &secondary_repl]);
    let target = via(s.repl_addr.expect("secondary replication address"));
    p.ctl_ok(&[
        "peer",
        "create",
        "dr",
        &target.to_string(),
        "--secret",
        SECRET,
    ]);
    s.ctl_ok(&["peer", "create", "prod", &primary_repl, "--secret", SECRET]);
    (p, s)
}

/// A pair that talks directly.
pub fn pair() -> (TestServer, TestServer) {
    pair_via(|a| a)
}
