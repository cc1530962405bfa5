//! Whether a session's initiator is still connected, asked by an LU before something the
//! session holds (a RESERVE, a PREVENT) turns another nexus away.
//!
//! The session's own task reports its nexus lost when it reads the end of its stream, but
//! an initiator that closes and logs straight back in can have its new session's command
//! served first. The kernel already knows: the peer's FIN is on the socket (RDHUP). So
//! the LU asks the socket, through a duplicate of its descriptor that the session closes
//! when it ends.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use parking_lot::Mutex;

use crate::scsi::Presence;

pub struct ConnPresence {
    /// `None` once the session has ended.
    fd: Mutex<Option<OwnedFd>>,
}

impl ConnPresence {
    /// The presence of the connection `socket`; with no descriptor to spare, a session
    /// that counts as present until it ends.
    pub fn new(socket: &impl AsFd) -> ConnPresence {
        ConnPresence {
            fd: Mutex::new(socket.as_fd().try_clone_to_owned().ok()),
        }
    }

    /// The session ended: its duplicate descriptor closes with it.
    pub fn end(&self) {
        self.fd.lock().take();
    }
}

impl Presence for ConnPresence {
    fn gone(&self) -> bool {
        let fd = self.fd.lock();
        let Some(fd) = fd.as_ref() else {
            return true;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1, no wait; the descriptor is open while the
        // lock holds it.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_peer_that_closed_is_gone_even_with_data_unread() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let p = ConnPresence::new(&server);
        assert!(!p.gone());
        std::io::Write::write_all(&mut client, b"unread").unwrap();
        assert!(!p.gone(), "data alone is no hang-up");
        drop(client);
        // On loopback the FIN is on the server's socket once close returns.
        assert!(p.gone());
        let q = ConnPresence::new(&server);
        q.end();
        assert!(q.gone(), "an ended session is gone");
    }
}
