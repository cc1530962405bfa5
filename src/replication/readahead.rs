//! A read buffer under TLS on the listener's side that exists only once the peer has
//! authenticated. rustls asks the socket for one record (about 16 KiB) per read call,
//! and a system call per record cost the receiver more CPU than decrypting it; but a
//! buffer per connection before authentication would let strangers make the listener
//! hold 256 KiB each.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ReadAhead<S> {
    inner: S,
    /// Allocated (and zeroed) once, at the first fill.
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    pos: usize,
    /// Where they end.
    end: usize,
    /// Bytes read from the socket at once; 0 until [`ReadAhead::enlarge`].
    size: usize,
}

impl<S> ReadAhead<S> {
    /// Reads pass straight through until [`ReadAhead::enlarge`].
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            size: 0,
        }
    }

    /// From now on, reads take up to `size` bytes from the socket at once.
    pub fn enlarge(&mut self, size: usize) {
        self.size = size;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.end {
            // Nothing buffered: a caller asking for as much as a fill would take (or
            // any caller before `enlarge`) reads the socket directly.
            if this.size == 0 || out.remaining() >= this.size {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.len() != this.size {
                this.buf = vec![0; this.size];
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut fill);
            let n = fill.filled().len();
            ready!(polled)?;
            (this.pos, this.end) = (0, n);
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_come_out_in_order_before_and_after_enlarging() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(a);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&data).await.unwrap();
        drop(b);
        let mut got = vec![0u8; 1000];
        r.read_exact(&mut got).await.unwrap();
        assert!(r.buf.is_empty(), "no buffer before enlarge");
        r.enlarge(64 << 10);
        // Small reads (as rustls makes) are served from the buffer, a large one too.
        let mut small = vec![0u8; 5000];
        r.read_exact(&mut small).await.unwrap();
        got.extend_from_slice(&small);
        assert_eq!(r.buf.len(), 64 << 10);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert_eq!(got, data);
    }
}
