//! The running target: listeners, connection tasks, sessions, and the node state they share.
//!
//! CONTRACT: `Server::bind(node, addrs).await`, `Server::local_addrs()`,
//! `Server::run(shutdown).await` serves until `shutdown` resolves, then closes sessions.

mod budget;
mod connection;
mod directory;
mod exec;
pub mod ffp;
mod frames;
mod luns;
mod presence;
mod registry;
pub mod writer;
mod xcopy;

pub use luns::{PointOverlay, PointSource};
pub use registry::{SessionInfo, SessionRegistry};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::catalog::Catalog;
use crate::events::Emitter;
use crate::throttle::AuthThrottle;
use crate::volume::Volume;

pub use crate::iscsi::params::TargetSettings;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection serves from: the catalog (targets, LUN maps, CHAP), the open
/// volumes, the sessions, and the limits they share. The composition root
/// (`crate::node`) builds it, sharing the catalog and volumes with admin and
/// replication.
pub struct Shared {
    /// Read only here: admin changes it (validate, persist, then swap).
    pub catalog: Arc<RwLock<Catalog>>,
    /// Open volumes by name.
    pub volumes: Arc<RwLock<HashMap<String, Arc<Volume>>>>,
    pub sessions: SessionRegistry,
    /// Data-Out bytes every session together may hold (`budget`).
    pub write_budget: Arc<tokio::sync::Semaphore>,
    /// Failed CHAP logins per source address and initiator (`throttle`).
    pub auth_throttle: Mutex<AuthThrottle>,
    /// Logins, logouts and refused logins, for `ctl events`.
    pub events: Emitter,
    /// Connections open and logins refused, for the metrics endpoint.
    pub metrics: Arc<crate::metrics::NodeCounters>,
    /// What each logical unit shares among its nexuses: reservations, medium.
    pub lu_states: luns::LuStates,
    /// Portals being served, as bound: portal N (from 1) is target port N in target
    /// port group N (REPORT TARGET PORT GROUPS and SendTargets list them all).
    pub portals: RwLock<Vec<SocketAddr>>,
    /// Recovery points DR drill LUNs read (`VOLUME@rp:ID`), from the node's
    /// replication; none without it.
    pub points: Option<Arc<dyn luns::PointSource>>,
}

impl Shared {
    /// Sessions report their logins, logouts and refusals to `events`.
    pub fn new(
        catalog: Arc<RwLock<Catalog>>,
        volumes: Arc<RwLock<HashMap<String, Arc<Volume>>>>,
        events: Emitter,
        metrics: Arc<crate::metrics::NodeCounters>,
    ) -> Shared {
        Shared {
            catalog,
            volumes,
            sessions: SessionRegistry::default(),
            write_budget: Arc::new(tokio::sync::Semaphore::new(
                budget::NODE_WRITE_BUDGET as usize,
            )),
            auth_throttle: Mutex::new(AuthThrottle::default()),
            events,
            metrics,
            lu_states: luns::LuStates::default(),
            portals: RwLock::new(Vec::new()),
            points: None,
        }
    }

    /// DR drill LUNs read recovery points from `points`.
    pub fn with_points(mut self, points: Arc<dyn luns::PointSource>) -> Shared {
        self.points = Some(points);
        self
    }

    /// Preserves persistent reservations with APTPL under `data_dir` (and restores
    /// those saved there).
    pub fn persist_reservations_in(mut self, data_dir: std::path::PathBuf) -> Shared {
        self.lu_states = luns::LuStates::in_data_dir(data_dir);
        self
    }
}

pub struct Server {
    #[allow(dead_code)]
    node: Arc<Shared>,
    listeners: Vec<tokio::net::TcpListener>,
}

impl Server {
    pub async fn bind(node: Arc<Shared>, addrs: &[SocketAddr]) -> Result<Server, ServerError> {
        Ok(Server::with_listeners(node, Server::listen(addrs).await?))
    }

    /// Binds every portal address. `serve` does this before it touches the data dir,
    /// so a start that fails on a port in use leaves nothing behind.
    pub async fn listen(addrs: &[SocketAddr]) -> Result<Vec<tokio::net::TcpListener>, ServerError> {
        let mut listeners = Vec::new();
        for &addr in addrs {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// A server accepting on listeners bound by [`Server::listen`].
    pub fn with_listeners(node: Arc<Shared>, listeners: Vec<tokio::net::TcpListener>) -> Server {
        Server { node, listeners }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accept connections until `shutdown` resolves; then stop every session and wait
    /// (bounded) for them to close.
    pub async fn run(self, settings: TargetSettings, shutdown: impl Future<Output = ()>) {
        let settings = Arc::new(settings);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut accepts = tokio::task::JoinSet::new();
        *self.node.portals.write() = self.local_addrs();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let n = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let port = crate::scsi::alua::TargetPort {
                relative_port: n,
                group: n,
            };
            let node = self.node.clone();
            let settings = settings.clone();
            let stop_rx = stop_rx.clone();
            accepts.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(connection::serve(
                                node.clone(),
                                stream,
                                settings.clone(),
                                stop_rx.clone(),
                                port,
                            ));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        shutdown.await;
        accepts.abort_all();
        let _ = stop_tx.send(true);
        self.node.sessions.stop_all();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.node.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
