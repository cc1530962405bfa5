//! Reading whole PDUs off a socket: owns the receive buffer, asks the framing layer
//! whether a PDU is complete, and never reserves more than the negotiated limit allows.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::iscsi::pdu::{frame_len, FrameError, FrameLimits, Pdu};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by the initiator")]
    Closed,
    #[error("connection closed in the middle of a PDU")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    pub limits: FrameLimits,
}

const READ_CHUNK: usize = 256 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, limits: FrameLimits) -> FrameReader<R> {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            limits,
        }
    }

    /// Part of a PDU has arrived and the rest has not: the initiator stopped mid-PDU.
    pub fn mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next whole PDU, digests verified. Counts the bytes read into `bytes_in`.
    pub async fn next(&mut self, bytes_in: &mut u64) -> Result<Pdu, ReadError> {
        loop {
            if let Some(n) = frame_len(&self.buf, &self.limits)? {
                let frame = self.buf.split_to(n).freeze();
                return Ok(Pdu::decode(frame, &self.limits)?);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Truncated
                });
            }
            *bytes_in += n as u64;
        }
    }
}
