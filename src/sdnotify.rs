//! systemd's service notifications (sd_notify(3)) without libsystemd: one datagram per
//! message to the unix socket named by `$NOTIFY_SOCKET`, which `Type=notify` units set.
//!
//! The server says `READY=1` once its portals and admin socket listen (so units ordered
//! after it find a target that accepts logins), `STOPPING=1` when a shutdown starts,
//! and `WATCHDOG=1` at half of `$WATCHDOG_USEC` when the unit sets `WatchdogSec=`
//! (systemd's advice: ping at half the timeout). The pings come from a task on the
//! server's runtime, so a wedged runtime stops them and systemd restarts the service.
//! Without `$NOTIFY_SOCKET` every call does nothing.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET '{0}' is neither a path nor an abstract socket name ('@...')")]
    Address(String),
    #[error("NOTIFY_SOCKET '{addr}': {source}")]
    Socket {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where notifications go; clones share the socket.
#[derive(Debug, Clone, Default)]
pub struct Service {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Service {
    /// The socket `$NOTIFY_SOCKET` names; a no-op service when it is unset or empty.
    pub fn from_env() -> Result<Service, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Service::at(&path),
            _ => Ok(Service::default()),
        }
    }

    /// Notifications to `path`: a file system path, or `@name` for an abstract socket.
    pub fn at(path: &OsStr) -> Result<Service, NotifyError> {
        let shown = || path.to_string_lossy().into_owned();
        let bytes = path.as_bytes();
        let addr = if let Some(name) = bytes.strip_prefix(b"@") {
            SocketAddr::from_abstract_name(name)
        } else if bytes.starts_with(b"/") {
            SocketAddr::from_pathname(path)
        } else {
            return Err(NotifyError::Address(shown()));
        };
        let socket = addr.and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            // systemd reads its socket at once; never hold the runtime up if it does not.
            socket.set_write_timeout(Some(Duration::from_secs(1)))?;
            Ok(Target { socket, addr })
        });
        match socket {
            Ok(t) => Ok(Service {
                target: Some(Arc::new(t)),
            }),
            Err(source) => Err(NotifyError::Socket {
                addr: shown(),
                source,
            }),
        }
    }

    /// True when notifications go somewhere.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (`KEY=VALUE` lines). A failure is logged, never fatal: the
    /// service works the same whether systemd hears it or not.
    pub fn notify(&self, state: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.socket.send_to_addr(state.as_bytes(), &t.addr) {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }

    /// `READY=1` with a status line, then the watchdog pings if the unit asks for them.
    /// Call from within the server's tokio runtime.
    pub fn ready(&self, status: &str) {
        if !self.is_active() {
            return;
        }
        self.notify(&format!("READY=1\nSTATUS={status}"));
        if let Some(every) = watchdog_interval() {
            tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    me.notify("WATCHDOG=1");
                }
            });
        }
    }

    /// `STOPPING=1`: a shutdown has started.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }
}

/// Half of `$WATCHDOG_USEC`, when it is set for this process (`$WATCHDOG_PID` unset or
/// ours, as sd_watchdog_enabled(3) reads them).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let s = Service::at(path.as_os_str()).unwrap();
        s.stopping();
        assert_eq!(recv(&rx), "STOPPING=1\nSTATUS=shutting down");

        let name = format!("twinlun-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let s = Service::at(OsStr::new(&format!("@{name}"))).unwrap();
        s.notify("WATCHDOG=1");
        assert_eq!(recv(&rx), "WATCHDOG=1");
    }

    #[test]
    fn a_relative_address_is_refused_and_no_socket_does_nothing() {
        let e = Service::at(OsStr::new("notify.sock")).unwrap_err();
        assert!(e.to_string().contains("neither a path"), "{e}");
        let none = Service::default();
        assert!(!none.is_active());
        none.notify("READY=1");
    }
}
