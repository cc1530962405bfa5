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

impl ConnPresence {
    /// Whether the initiator's TCP has acknowledged every byte sent to it (Linux
    /// SIOCOUTQ: bytes in the send queue not yet acknowledged). An initiator whose host
    /// took a NOP-In ping but whose program has not read it yet (libiscsi's synchronous
    /// API while its caller sleeps) is alive, only idle. False when it cannot be told
    /// (the session ended, the ioctl failed).
    pub fn delivered(&self) -> bool {
        let fd = self.fd.lock();
        let Some(fd) = fd.as_ref() else {
            return false;
        };
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which points
        // at `queued`; the descriptor is open while the lock holds it.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        r == 0 && queued == 0
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

    #[test]
    fn bytes_the_peer_took_unread_are_delivered() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let p = ConnPresence::new(&server);
        assert!(p.delivered(), "nothing sent: nothing owed");
        // The client never reads: its TCP still acknowledges what fits its window.
        std::io::Write::write_all(&mut server, &[0u8; 48]).unwrap();
        // The acknowledgement may trail the write (delayed ACK): wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !p.delivered() {
            assert!(
                std::time::Instant::now() < deadline,
                "48 bytes to an open peer never acknowledged"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(client);
        p.end();
        assert!(!p.delivered(), "an ended session cannot be told");
    }
}
