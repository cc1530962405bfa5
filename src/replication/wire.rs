//! The peer protocol: frames on a TCP stream between two twinlun nodes.
//!
//! A frame is `[u32 length][u8 kind][body]` (big-endian length of kind and body, at most
//! [`MAX_FRAME`]). Kind 1 carries a control [`Message`] as JSON; kind 2 carries one
//! extent of a cut in binary: `[u32 volume][u64 offset][u8 what][u64 len][u32 crc32c]`
//! then, for data, `len` bytes. Control messages name the protocol version from the
//! first one on ([`Message::Hello`]); both ends prove they know the shared secret
//! (HMAC-SHA256 challenge-response, [`auth`]) before anything else travels.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version this build speaks; a peer with another one is refused at the first
/// message, saying both.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body: an extent of at most [`MAX_EXTENT`] bytes and its header, or a
/// control message.
pub const MAX_FRAME: usize = MAX_EXTENT + 64;
/// Largest data extent one frame carries.
pub const MAX_EXTENT: usize = 1 << 20;

const KIND_CONTROL: u8 = 1;
const KIND_EXTENT: u8 = 2;
const EXTENT_HEADER: usize = 4 + 8 + 1 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed extent frame")]
    BadExtent,
    #[error("the peer closed the connection")]
    Closed,
}

/// A volume as the other side must create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteVolume {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
}

/// Control messages, both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// Client's first message: its version and a fresh nonce (hex).
    Hello {
        version: u32,
        nonce: String,
    },
    /// Server's answer: its version and its nonce.
    Challenge {
        version: u32,
        nonce: String,
    },
    /// Client's proof of the secret.
    Proof {
        mac: String,
    },
    /// Server's proof of the secret: the client checks it before sending anything else.
    Welcome {
        mac: String,
    },
    Ping,
    Pong,
    /// Create the secondary side of a replication set: its volumes (same sizes and
    /// block sizes), recorded as secondary volumes of `set`, in a group when `group`.
    CreateSet {
        set: String,
        peer: String,
        group: Option<String>,
        volumes: Vec<RemoteVolume>,
        keep: u32,
    },
    /// Drop the secondary side of a set: its recovery points go; its volumes stay as
    /// plain volumes.
    DeleteSet {
        set: String,
    },
    /// Restart Replication: every recovery point goes, a new generation starts.
    Reset {
        set: String,
        generation: u64,
    },
    /// Extents of cut `cut` follow. `full`: all written data (first cut of a generation).
    BeginCut {
        set: String,
        generation: u64,
        cut: u64,
        taken_unix: u64,
        full: bool,
        /// The cut this one's changes are relative to (none for a full cut): the
        /// secondary must be exactly there.
        base: Option<u64>,
    },
    /// The cut is whole: commit and apply it.
    EndCut {
        set: String,
        cut: u64,
        extents: u64,
    },
    /// List the secondary's recovery points.
    RecoveryPoints {
        set: String,
    },
    Ok,
    /// Staging of a cut started or resumed: extents and bytes already staged.
    Begun {
        extents: u64,
        bytes: u64,
    },
    Committed {
        cut: u64,
    },
    Points {
        points: Vec<PointView>,
    },
    Error {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointView {
    pub cut: u64,
    pub taken_unix: u64,
    pub undo_bytes: u64,
}

/// What one extent frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Index of the volume in the set.
    pub volume: u32,
    pub offset: u64,
    pub kind: ExtentKind,
    /// crc32c of the data bytes (0 for zeros).
    pub crc: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    Data(Bytes),
    /// `len` bytes that read as zeros (zero pages, holes, unmapped ranges).
    Zero {
        len: u64,
    },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match &self.kind {
            ExtentKind::Data(d) => d.len() as u64,
            ExtentKind::Zero { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this frame puts on the wire besides the data (framing and header).
    pub fn overhead() -> u64 {
        (4 + 1 + EXTENT_HEADER) as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control(Message),
    Extent(Extent),
}

/// Encodes a control message as one frame.
pub fn encode_message(m: &Message, out: &mut BytesMut) {
    let body = serde_json::to_vec(m).expect("messages always serialize");
    out.put_u32((body.len() + 1) as u32);
    out.put_u8(KIND_CONTROL);
    out.put_slice(&body);
}

/// Encodes an extent's frame header; for data, the data follows it on the wire.
pub fn encode_extent_header(e: &Extent, out: &mut BytesMut) {
    let data_len = match &e.kind {
        ExtentKind::Data(d) => d.len(),
        ExtentKind::Zero { .. } => 0,
    };
    out.put_u32((1 + EXTENT_HEADER + data_len) as u32);
    out.put_u8(KIND_EXTENT);
    out.put_u32(e.volume);
    out.put_u64(e.offset);
    out.put_u8(match e.kind {
        ExtentKind::Data(_) => 0,
        ExtentKind::Zero { .. } => 1,
    });
    out.put_u64(e.len());
    out.put_u32(e.crc);
}

/// Parses one frame body (after the length): kind and body.
pub fn decode_body(mut body: Bytes) -> Result<Frame, WireError> {
    if body.is_empty() {
        return Err(WireError::BadExtent);
    }
    let kind = body.get_u8();
    match kind {
        KIND_CONTROL => Ok(Frame::Control(serde_json::from_slice(&body)?)),
        KIND_EXTENT => {
            if body.len() < EXTENT_HEADER {
                return Err(WireError::BadExtent);
            }
            let volume = body.get_u32();
            let offset = body.get_u64();
            let what = body.get_u8();
            let len = body.get_u64();
            let crc = body.get_u32();
            let kind = match what {
                0 if body.len() as u64 == len => ExtentKind::Data(body),
                1 if body.is_empty() => ExtentKind::Zero { len },
                _ => return Err(WireError::BadExtent),
            };
            Ok(Frame::Extent(Extent {
                volume,
                offset,
                kind,
                crc,
            }))
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

/// Reads one frame; the length is checked before a byte of the body is buffered.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME + 1 {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode_body(Bytes::from(body))
}

pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    encode_message(m, &mut out);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Writes an extent frame (buffered: callers flush after a batch).
pub async fn write_extent<W: AsyncWrite + Unpin>(w: &mut W, e: &Extent) -> Result<(), WireError> {
    let mut head = BytesMut::with_capacity(4 + 1 + EXTENT_HEADER);
    encode_extent_header(e, &mut head);
    w.write_all(&head).await?;
    if let ExtentKind::Data(d) = &e.kind {
        w.write_all(d).await?;
    }
    Ok(())
}

/// Reads the next frame, which must be a control message.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, WireError> {
    match read_frame(r).await? {
        Frame::Control(m) => Ok(m),
        Frame::Extent(_) => Err(WireError::BadExtent),
    }
}

/// Secret proofs: HMAC-SHA256 over a role label and both nonces, so a proof is bound to
/// this exchange and to its direction (a reflected proof does not verify).
pub mod auth {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    type HmacSha256 = Hmac<Sha256>;

    pub const CLIENT: &str = "twinlun-peer-client";
    pub const SERVER: &str = "twinlun-peer-server";

    /// A fresh 32-byte nonce, hex.
    pub fn nonce() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    fn mac(secret: &str, label: &str, first: &str, second: &str) -> HmacSha256 {
        let mut m =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        for part in [label, first, second] {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part.as_bytes());
        }
        m
    }

    /// The proof of `label`'s side: `first` is its own nonce, `second` the other's.
    pub fn prove(secret: &str, label: &str, first: &str, second: &str) -> String {
        hex::encode(mac(secret, label, first, second).finalize().into_bytes())
    }

    /// Checks a proof in constant time.
    pub fn verify(secret: &str, label: &str, first: &str, second: &str, proof: &str) -> bool {
        let Ok(bytes) = hex::decode(proof) else {
            return false;
        };
        mac(secret, label, first, second)
            .verify_slice(&bytes)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn round_trip(frames: Vec<Frame>) -> Vec<Frame> {
        let (mut a, mut b) = tokio::io::duplex(1 << 22);
        let n = frames.len();
        let writer = tokio::spawn(async move {
            for f in frames {
                match f {
                    Frame::Control(m) => write_message(&mut a, &m).await.unwrap(),
                    Frame::Extent(e) => write_extent(&mut a, &e).await.unwrap(),
                }
            }
            a.flush().await.unwrap();
            a
        });
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(read_frame(&mut b).await.unwrap());
        }
        drop(writer.await.unwrap());
        assert!(matches!(read_frame(&mut b).await, Err(WireError::Closed)));
        got
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::Control(Message::Hello {
                version: PROTOCOL_VERSION,
                nonce: auth::nonce(),
            }),
            Frame::Extent(Extent {
                volume: 1,
                offset: 4096,
                kind: ExtentKind::Data(Bytes::from(vec![7u8; 8192])),
                crc: crc32c::crc32c(&[7u8; 8192]),
            }),
            Frame::Extent(Extent {
                volume: 0,
                offset: 1 << 30,
                kind: ExtentKind::Zero { len: 1 << 20 },
                crc: 0,
            }),
            Frame::Control(Message::EndCut {
                set: "s".into(),
                cut: 9,
                extents: 2,
            }),
        ];
        assert_eq!(round_trip(frames.clone()).await, frames);
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_refused() {
        let mut big = BytesMut::new();
        big.put_u32((MAX_FRAME + 100) as u32);
        big.put_u8(KIND_EXTENT);
        assert!(matches!(
            read_frame(&mut &big[..]).await,
            Err(WireError::TooLarge(_))
        ));
        let mut unknown = BytesMut::new();
        unknown.put_u32(1);
        unknown.put_u8(9);
        assert!(matches!(
            read_frame(&mut &unknown[..]).await,
            Err(WireError::UnknownKind(9))
        ));
        // A data extent whose length field disagrees with its bytes.
        let mut e = BytesMut::new();
        encode_extent_header(
            &Extent {
                volume: 0,
                offset: 0,
                kind: ExtentKind::Data(Bytes::from_static(b"abcd")),
                crc: 0,
            },
            &mut e,
        );
        e.put_slice(b"abc");
        let len = (e.len() - 4) as u32;
        e[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            read_frame(&mut &e[..]).await,
            Err(WireError::BadExtent)
        ));
    }

    #[test]
    fn proofs_bind_secret_direction_and_nonces() {
        let (c, s) = (auth::nonce(), auth::nonce());
        let p = auth::prove("secret", auth::CLIENT, &c, &s);
        assert!(auth::verify("secret", auth::CLIENT, &c, &s, &p));
        assert!(!auth::verify("other", auth::CLIENT, &c, &s, &p));
        assert!(
            !auth::verify("secret", auth::SERVER, &c, &s, &p),
            "reflected"
        );
        assert!(!auth::verify("secret", auth::CLIENT, &s, &c, &p));
        assert!(!auth::verify("secret", auth::CLIENT, &c, &s, "zz"));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_body(Bytes::from(body));
        }
    }
}
