//! Peer connections that die without a word: a host that vanishes (power cut, a
//! firewall dropping the flow) sends no FIN or RST, so a read on its connection would
//! wait forever and whatever the connection holds (a set's receiver store) with it.
//! [`IdleLimit`] bounds how long a read may wait for the next byte, and [`keep_alive`]
//! has the kernel probe a quiet connection, so either side notices a vanished peer
//! within about a minute.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// A reader whose reads fail with `TimedOut` once they have waited `limit` for a byte.
/// The clock runs only while a read waits: time the owner spends elsewhere (staging
/// extents on a slow disk) never counts against the peer.
pub struct IdleLimit<R> {
    inner: R,
    limit: Duration,
    /// Armed when a read found nothing to take; reset by every byte that arrives.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<R> IdleLimit<R> {
    pub fn new(inner: R, limit: Duration) -> IdleLimit<R> {
        IdleLimit {
            inner,
            limit,
            deadline: None,
        }
    }

    /// A new bound from the next read on (a cut in flight is held to a shorter one than
    /// a connection idle between requests).
    pub fn set_limit(&mut self, limit: Duration) {
        self.limit = limit;
        self.deadline = None;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleLimit<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = this.limit;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer sent nothing for {} s", limit.as_secs_f64()),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// How long a peer connection may be silent before the kernel starts probing it, the
/// time between probes and how many may go unanswered: 20 s + 6 × 5 s, so a vanished
/// host is noticed within 50 s even when neither side has anything to say.
const KEEPALIVE_TIME: Duration = Duration::from_secs(20);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 6;
/// How long data we sent may stay unacknowledged before the kernel gives the
/// connection up (TCP_USER_TIMEOUT): probes do not run while data waits for its ACK,
/// retransmissions do, and by default they go on for about 15 minutes.
const UNACKED_LIMIT: Duration = Duration::from_secs(60);

/// Turns TCP keepalive on for a peer connection (both sides call it), with the bounds
/// above. A socket option the system refuses is logged, not fatal: the read bounds
/// still hold.
pub fn keep_alive(stream: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let params = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = sock
        .set_tcp_keepalive(&params)
        .and_then(|()| sock.set_tcp_user_timeout(Some(UNACKED_LIMIT)))
    {
        tracing::warn!(error = %e, "cannot turn TCP keepalive on for a peer connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_read_gives_up_after_the_limit_and_bytes_reset_the_clock() {
        let limit = Duration::from_millis(800);
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = IdleLimit::new(a, limit);
        let mut buf = [0u8; 4];
        // Bytes a quarter of the limit apart, for longer than the limit in all: the
        // clock starts over at each.
        let start = Instant::now();
        for i in 0..8u8 {
            let w = async {
                tokio::time::sleep(limit / 4).await;
                b.write_all(&[i]).await.unwrap();
            };
            let (n, ()) = tokio::join!(r.read(&mut buf), w);
            assert_eq!(n.unwrap(), 1);
        }
        assert!(start.elapsed() > limit);
        // Time spent away from the reader does not count against the peer.
        tokio::time::sleep(limit * 2).await;
        b.write_all(&[7]).await.unwrap();
        assert_eq!(r.read(&mut buf).await.unwrap(), 1);
        let start = Instant::now();
        let e = r.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= limit);
        // A new bound applies from the next read.
        r.set_limit(limit / 4);
        let start = Instant::now();
        assert!(r.read(&mut buf).await.is_err());
        let waited = start.elapsed();
        assert!(waited >= limit / 4 && waited < limit, "{waited:?}");
    }

    #[tokio::test]
    async fn keep_alive_is_on_with_short_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        keep_alive(&s);
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(UNACKED_LIMIT));
    }
}
