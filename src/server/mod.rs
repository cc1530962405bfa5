//! The running target: listeners, connection tasks, sessions, and the node state they share.
//!
//! CONTRACT: `Server::bind(node, addrs).await`, `Server::local_addrs()`,
//! `Server::run(shutdown).await` serves until `shutdown` resolves, then closes sessions.

mod node;
mod registry;

pub use node::Node;
pub use registry::{SessionInfo, SessionRegistry};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Server {
    #[allow(dead_code)]
    node: Arc<Node>,
    listeners: Vec<tokio::net::TcpListener>,
}

impl Server {
    pub async fn bind(node: Arc<Node>, addrs: &[SocketAddr]) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        for &addr in addrs {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(l);
        }
        Ok(Server { node, listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
    }
}
