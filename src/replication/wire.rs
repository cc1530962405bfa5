//! The peer protocol: frames on a TCP stream between two twinlun nodes.
//!
//! A frame is `[u32 length][u8 kind][body]` (big-endian length of kind and body, at most
//! [`MAX_FRAME`]). Kind 1 carries a control [`Message`] as JSON; kind 2 carries one
//! extent of a cut in binary: `[u32 volume][u64 offset][u8 what][u64 len][u32 crc32c]`
//! then the payload. `len` is always the extent's length and the crc32c is always of
//! its uncompressed bytes; `what` says what the payload is:
//!
//! | what | extent                  | payload                                        |
//! |------|-------------------------|------------------------------------------------|
//! | 0    | data                    | the `len` bytes                                |
//! | 1    | zeros (holes, unmapped) | none                                           |
//! | 2    | data                    | zstd frame of the `len` bytes (`len` ≤ [`MAX_EXTENT`]) |
//! | 3    | data                    | LZ4 block of the `len` bytes (`len` ≤ [`MAX_EXTENT`])  |
//!
//! A compressed payload that does not give exactly `len` bytes is a malformed frame;
//! [`read_frame`] hands the receiver plain data extents whatever travelled.
//!
//! Frames travel inside TLS 1.3 (`tls`). Control messages name the protocol version
//! from the first one on ([`Message::Hello`]); both ends prove they know the shared
//! secret (HMAC-SHA256 challenge-response over the TLS session's exporter value,
//! [`auth`]) before anything else travels, and until then a frame may not exceed
//! [`PREAUTH_FRAME`]. Compressed extents came
//! after version 1 without changing it: a receiver lists the codecs it decodes in its
//! [`Message::Challenge`] (a receiver built before them lists none, and an older
//! sender ignores the list), and a sender compresses only with a listed codec, so
//! builds with and without compression keep talking, uncompressed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::compress::{self, DecompressError};
use crate::catalog::Compression;

/// The version this build speaks; a peer with another one is refused at the first
/// message, saying both. Version 2: the link runs over TLS and the proofs cover the
/// channel binding.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame body before authentication: the handshake messages are a few hundred
/// bytes, so a stranger cannot make the listener buffer more.
pub const PREAUTH_FRAME: usize = 4 << 10;
/// How often a secondary says [`Message::Committing`] while it commits a cut: well
/// inside the sender's answer timeout (30 s).
pub const COMMIT_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest frame body: an extent of at most [`MAX_EXTENT`] bytes and its header, or a
/// control message.
pub const MAX_FRAME: usize = MAX_EXTENT + 64;
/// Largest data extent one frame carries.
pub const MAX_EXTENT: usize = 1 << 20;

const KIND_CONTROL: u8 = 1;
const KIND_EXTENT: u8 = 2;
const EXTENT_HEADER: usize = 4 + 8 + 1 + 8 + 4;

/// `what` of an extent frame.
const WHAT_DATA: u8 = 0;
const WHAT_ZERO: u8 = 1;
const WHAT_ZSTD: u8 = 2;
const WHAT_LZ4: u8 = 3;

/// Set in the environment of a build with the `fault-injection` feature (the tests'),
/// a receiver lists only these codecs (comma-separated, possibly none) in its
/// challenge, as a build that lacks the others would. Other builds do not have it.
#[cfg(feature = "fault-injection")]
pub const CODECS_ENV: &str = "TWINLUN_TEST_CODECS";

/// The codecs this build decodes, as a receiver lists them in its challenge.
pub fn codecs() -> Vec<String> {
    #[cfg(feature = "fault-injection")]
    if let Ok(listed) = std::env::var(CODECS_ENV) {
        return listed
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
    }
    [Compression::Zstd, Compression::Lz4]
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

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
    #[error("malformed compressed extent at offset {offset} of volume {volume}")]
    Decompress {
        volume: u32,
        offset: u64,
        #[source]
        source: DecompressError,
    },
    #[error("the peer closed the connection")]
    Closed,
}

/// A volume as the other side must create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteVolume {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    /// The primary's write-tracking page size, so the secondary tracks (and, once
    /// promoted, replicates back) in the same unit. `None` from a peer built before
    /// it was sent: the secondary takes its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
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
    /// Server's answer: its version and its nonce, and the codecs it decodes in
    /// extents (absent from builds before compression: none).
    Challenge {
        version: u32,
        nonce: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        compress: Vec<String>,
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
        /// The set's volumes by the secondary's names, in the order extents number
        /// them: a secondary holding other volumes (a membership change one side missed)
        /// refuses the cut rather than write a volume's pages into another. Absent from
        /// builds before membership changes: not checked.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        volumes: Vec<String>,
    },
    /// The cut is whole: commit and apply it. `keepalive`: the sender takes
    /// [`Message::Committing`] while it waits (absent from builds before it: false).
    EndCut {
        set: String,
        cut: u64,
        extents: u64,
        #[serde(default)]
        keepalive: bool,
    },
    /// `replication modify`: the secondary keeps this many recovery points from its
    /// next commit on. Answered `Ok`.
    ModifySet {
        set: String,
        keep: u32,
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
    /// The secondary is still writing and committing cut `cut` (every
    /// [`COMMIT_KEEPALIVE`] after `EndCut`, to a sender that asked): a slow disk is
    /// not a dead peer.
    Committing {
        cut: u64,
    },
    Points {
        points: Vec<PointView>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The answer to a cut or reset of a set that was promoted here: this side forked
    /// the set's history, so the asking side is the old primary and ships nothing more.
    Promoted {
        set: String,
        fork: Fork,
    },
    /// Failback, from the promoted side to the old primary: become the secondary of
    /// `set` in the fork's generation, after keeping your divergent writes.
    Failback {
        set: String,
        fork: Fork,
        /// `resolve` after a split brain: go ahead even though this side wrote after
        /// the promote.
        #[serde(default)]
        resolve: bool,
    },
    /// From the old primary that learned of the promote and had written after it: both
    /// sides diverged; neither resumes until `resolve`. Answered `Ok`.
    SplitBrain {
        set: String,
        fork: Fork,
    },
    /// `resolve --keep` the old primary's side, from the promoted side, which became
    /// its secondary again: ship `pages` (hex per volume; none: all written data) with
    /// your own changes since the common cut. Answered `Ok`.
    TakeBack {
        set: String,
        fork: Fork,
        pages: Option<Vec<String>>,
        kept: Vec<String>,
    },
    /// `resolve` run on the old primary: the promoted side carries it out (`keep_yours`:
    /// the promoted side's data survives). Answered with the outcome as `Done`.
    Resolve {
        set: String,
        keep_yours: bool,
    },
    Done {
        message: String,
    },
    /// Switchover, from the primary: promote at exactly `fork.cut` (this side's current
    /// cut) and become the primary; the sender becomes the secondary. Answered `Ok`.
    Switchover {
        set: String,
        fork: Fork,
    },
    /// The old primary's answer to `Failback`: per volume of the set (in the set's
    /// order), the pages it wrote since its last committed cut (a roaring bitmap,
    /// serialized, hex), and the volumes its pre-failback content was kept in.
    Divergent {
        pages: Vec<String>,
        kept: Vec<String>,
    },
    /// Restart Replication with a change of the set's membership (a group set only):
    /// the secondary checks the whole change first (refusing it changes nothing),
    /// then drops every recovery point for `generation` as `Reset` does, creates the
    /// `add`ed volumes and takes the `remove`d ones (its own names) out of the set and
    /// its group, keeping them as plain volumes. Answered `Ok`; the full cycle of the
    /// restart follows. A build before it closes the connection on it (an unknown
    /// message), which the primary reports as such.
    RestartMembers {
        set: String,
        generation: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        add: Vec<MemberVolume>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<String>,
    },
}

/// Where a promote forked a set's history: the promoted side's new generation, the
/// generation it came from and the cut of that generation it was promoted at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub generation: u64,
    pub parent: u64,
    pub cut: u64,
    /// When the promote happened, Unix milliseconds: the old primary wrote after it
    /// (split brain) or not.
    pub promoted_ms: u64,
}

/// Now, in Unix milliseconds (a fork's time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A page bitmap as `Divergent` carries it.
pub fn pages_to_hex(pages: &roaring::RoaringBitmap) -> String {
    let mut buf = Vec::with_capacity(pages.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = pages.serialize_into(&mut buf);
    hex::encode(buf)
}

/// The bitmap of `pages_to_hex`; `None` when it is not one.
pub fn pages_from_hex(hex: &str) -> Option<roaring::RoaringBitmap> {
    let bytes = hex::decode(hex).ok()?;
    roaring::RoaringBitmap::deserialize_from(&bytes[..]).ok()
}

/// A volume a membership change adds to the secondary: created with the primary's
/// size, block size and tracking page size (so a cut's pages mean the same on both
/// sides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberVolume {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    #[serde(default = "crate::catalog::default_page_size")]
    pub page_size: u32,
}

/// Why a receiver refused a request: the `code` of an `Error` message. The message
/// beside it is for a human; peers act on the code alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    Version,
    /// A message out of turn or of the wrong kind.
    Protocol,
    /// The client did not prove a secret of one of the receiver's peers.
    AuthFailed,
    /// The request is understood and refused (a name taken, a set of another peer,
    /// an extent that does not fit).
    Refused,
    /// No such set here.
    NotFound,
    /// The receiver is not at the cut the changes were computed from.
    Base,
    /// The receiver's disk failed it.
    Io,
    /// The client proved the secret but presented another key than the one pinned.
    KeyChanged,
    /// Something inside the receiver failed.
    Internal,
    /// A code of a later build.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Version => "version",
            ErrorCode::Protocol => "protocol",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Refused => "refused",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Base => "base",
            ErrorCode::Io => "io",
            ErrorCode::KeyChanged => "key_changed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A code equals its wire name.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, name: &str) -> bool {
        self.as_str() == name
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    /// The memory the extent's data was read into, for [`read_frame_into`] to read a
    /// later frame into; `None` for zeros, decompressed data, or data still shared.
    pub fn into_buffer(self) -> Option<BytesMut> {
        match self.kind {
            ExtentKind::Data(d) => d.try_into_mut().ok(),
            ExtentKind::Zero { .. } => None,
        }
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

/// An extent frame ready to write: its header (with the frame length) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExtent {
    pub head: BytesMut,
    pub payload: Bytes,
    /// The codec the payload is in (`none`: as read, or a zero record).
    pub codec: Compression,
}

impl EncodedExtent {
    /// Bytes the frame takes on the wire.
    pub fn wire_len(&self) -> u64 {
        (self.head.len() + self.payload.len()) as u64
    }
}

/// Encodes an extent's frame, a data extent compressed with `how` when that makes it
/// smaller (else as read). Compressing is CPU work: callers keep large batches off
/// the runtime's threads.
pub fn encode_extent(e: &Extent, how: Compression) -> EncodedExtent {
    let (what, payload, codec) = match &e.kind {
        ExtentKind::Zero { .. } => (WHAT_ZERO, Bytes::new(), Compression::None),
        // Only what a receiver may decompress (at most MAX_EXTENT) is compressed.
        ExtentKind::Data(d) => match (d.len() <= MAX_EXTENT)
            .then(|| compress::compress(how, d))
            .flatten()
        {
            Some(c) => (what_of(how), Bytes::from(c), how),
            None => (WHAT_DATA, d.clone(), Compression::None),
        },
    };
    let mut head = BytesMut::with_capacity(4 + 1 + EXTENT_HEADER);
    put_extent_header(e, what, payload.len(), &mut head);
    EncodedExtent {
        head,
        payload,
        codec,
    }
}

fn what_of(how: Compression) -> u8 {
    match how {
        Compression::None => WHAT_DATA,
        Compression::Zstd => WHAT_ZSTD,
        Compression::Lz4 => WHAT_LZ4,
    }
}

fn put_extent_header(e: &Extent, what: u8, payload: usize, out: &mut BytesMut) {
    out.put_u32((1 + EXTENT_HEADER + payload) as u32);
    out.put_u8(KIND_EXTENT);
    out.put_u32(e.volume);
    out.put_u64(e.offset);
    out.put_u8(what);
    out.put_u64(e.len());
    out.put_u32(e.crc);
}

/// Encodes an uncompressed extent's frame header; for data, the data follows it on
/// the wire.
pub fn encode_extent_header(e: &Extent, out: &mut BytesMut) {
    match &e.kind {
        ExtentKind::Data(d) => put_extent_header(e, WHAT_DATA, d.len(), out),
        ExtentKind::Zero { .. } => put_extent_header(e, WHAT_ZERO, 0, out),
    }
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
                WHAT_DATA if body.len() as u64 == len => ExtentKind::Data(body),
                WHAT_ZERO if body.is_empty() => ExtentKind::Zero { len },
                WHAT_ZSTD | WHAT_LZ4 => {
                    let how = if what == WHAT_ZSTD {
                        Compression::Zstd
                    } else {
                        Compression::Lz4
                    };
                    let data = compress::decompress(how, &body, len).map_err(|source| {
                        WireError::Decompress {
                            volume,
                            offset,
                            source,
                        }
                    })?;
                    ExtentKind::Data(Bytes::from(data))
                }
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
    read_frame_within(r, MAX_FRAME + 1).await
}

/// [`read_frame`] into the memory of `buf` (what it holds is dropped): a receiver
/// that hands back the buffers of the extents it wrote ([`Extent::into_buffer`])
/// reads a cut without allocating, and the kernel faulting in, a MiB per extent.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: BytesMut,
) -> Result<Frame, WireError> {
    read_frame_in(r, MAX_FRAME + 1, buf).await
}

/// Reads one frame whose body is at most `limit` bytes (kind included), refusing a
/// longer one before buffering it.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Frame, WireError> {
    read_frame_in(r, limit, BytesMut::new()).await
}

async fn read_frame_in<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    mut body: BytesMut,
) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(WireError::TooLarge(len));
    }
    // Read into spare capacity: zeroing a MiB first, for every extent, cost the
    // receiving side more CPU than checking its CRC.
    body.clear();
    body.reserve(len);
    while body.len() < len {
        let want = len - body.len();
        if r.read_buf(&mut (&mut body).limit(want)).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    let body = body.freeze();
    if is_compressed_extent(&body) && multi_thread() {
        // Up to a MiB to decompress: not on a runtime thread others wait for.
        tokio::task::block_in_place(|| decode_body(body))
    } else {
        decode_body(body)
    }
}

/// Whether a frame body is an extent with a compressed payload.
fn is_compressed_extent(body: &[u8]) -> bool {
    body.first() == Some(&KIND_EXTENT)
        && matches!(body.get(1 + 4 + 8), Some(&WHAT_ZSTD) | Some(&WHAT_LZ4))
}

/// `block_in_place` works on the multi-threaded runtime only (tests run others).
fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    encode_message(m, &mut out);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Writes an uncompressed extent frame (buffered: callers flush after a batch).
pub async fn write_extent<W: AsyncWrite + Unpin>(w: &mut W, e: &Extent) -> Result<(), WireError> {
    write_encoded(w, &encode_extent(e, Compression::None)).await
}

/// Writes an encoded extent frame (buffered: callers flush after a batch).
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    e: &EncodedExtent,
) -> Result<(), WireError> {
    w.write_all(&e.head).await?;
    w.write_all(&e.payload).await?;
    Ok(())
}

/// Reads the next frame, which must be a control message.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, WireError> {
    read_message_within(r, MAX_FRAME + 1).await
}

/// Reads the next frame, a control message of at most `limit` bytes.
pub async fn read_message_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Message, WireError> {
    match read_frame_within(r, limit).await? {
        Frame::Control(m) => Ok(m),
        Frame::Extent(_) => Err(WireError::BadExtent),
    }
}

/// Secret proofs: HMAC-SHA256 over a role label, the TLS channel binding and both
/// nonces, so a proof is bound to this exchange, to its direction (a reflected proof
/// does not verify) and to this TLS session (a relay that terminates TLS has another
/// binding on each leg, and a proof made on one does not verify on the other).
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

    fn mac(secret: &str, label: &str, binding: &[u8], first: &str, second: &str) -> HmacSha256 {
        let mut m =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        for part in [
            label.as_bytes(),
            binding,
            first.as_bytes(),
            second.as_bytes(),
        ] {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part);
        }
        m
    }

    /// The proof of `label`'s side over the session's `binding` (`tls::link`):
    /// `first` is its own nonce, `second` the other's.
    pub fn prove(secret: &str, label: &str, binding: &[u8], first: &str, second: &str) -> String {
        hex::encode(
            mac(secret, label, binding, first, second)
                .finalize()
                .into_bytes(),
        )
    }

    /// Checks a proof in constant time.
    pub fn verify(
        secret: &str,
        label: &str,
        binding: &[u8],
        first: &str,
        second: &str,
        proof: &str,
    ) -> bool {
        let Ok(bytes) = hex::decode(proof) else {
            return false;
        };
        mac(secret, label, binding, first, second)
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
                keepalive: true,
            }),
            Frame::Control(Message::Committing { cut: 9 }),
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

    /// Block-like data that compresses well.
    fn compressible(len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| if i % 512 < 400 { b'x' } else { (i % 13) as u8 })
                .collect::<Vec<u8>>(),
        )
    }

    fn data_extent(d: Bytes) -> Extent {
        Extent {
            volume: 3,
            offset: 1 << 20,
            crc: crc32c::crc32c(&d),
            kind: ExtentKind::Data(d),
        }
    }

    /// An encoded extent as one buffer, its frame length recomputed.
    fn frame_of(head: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut f = head.to_vec();
        f.extend_from_slice(payload);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f
    }

    #[tokio::test]
    async fn a_frame_is_read_into_the_memory_of_a_buffer_handed_back() {
        let (a, b) = (
            data_extent(Bytes::from(vec![1; MAX_EXTENT])),
            data_extent(Bytes::from(vec![2; 4096])),
        );
        let mut buf = Vec::new();
        for e in [&a, &b] {
            write_extent(&mut buf, e).await.unwrap();
        }
        let mut r = &buf[..];
        let Frame::Extent(got) = read_frame(&mut r).await.unwrap() else {
            panic!("not an extent")
        };
        assert_eq!(got, a);
        let spare = got.into_buffer().expect("the only handle on its data");
        let memory = spare.as_ptr() as usize..spare.as_ptr() as usize + spare.capacity();
        let Frame::Extent(got) = read_frame_into(&mut r, spare).await.unwrap() else {
            panic!("not an extent")
        };
        assert_eq!(got, b);
        let ExtentKind::Data(d) = &got.kind else {
            panic!("not data")
        };
        assert!(
            memory.contains(&(d.as_ptr() as usize)),
            "read into new memory"
        );
        // A handle still shared gives nothing back.
        let kept = got.clone();
        assert!(got.into_buffer().is_none());
        drop(kept);
    }

    #[tokio::test]
    async fn compressed_extents_arrive_as_plain_data() {
        let e = data_extent(compressible(MAX_EXTENT));
        for how in [Compression::Zstd, Compression::Lz4] {
            let enc = encode_extent(&e, how);
            assert_eq!(enc.codec, how);
            assert!(enc.payload.len() * 4 < MAX_EXTENT, "{how}");
            assert_eq!(enc.head[4 + 1 + 4 + 8], what_of(how));
            let mut buf = Vec::new();
            write_encoded(&mut buf, &enc).await.unwrap();
            assert_eq!(buf.len() as u64, enc.wire_len());
            let got = read_frame(&mut &buf[..]).await.unwrap();
            assert_eq!(got, Frame::Extent(e.clone()), "{how}");
        }
        // Zero records and `none` are as before.
        let z = Extent {
            volume: 0,
            offset: 0,
            kind: ExtentKind::Zero { len: 4096 },
            crc: 0,
        };
        let enc = encode_extent(&z, Compression::Zstd);
        assert_eq!((enc.codec, enc.payload.len()), (Compression::None, 0));
        let mut head = BytesMut::new();
        encode_extent_header(&e, &mut head);
        assert_eq!(encode_extent(&e, Compression::None).head, head);
    }

    #[tokio::test]
    async fn data_that_does_not_shrink_travels_as_read() {
        let noise = crate::replication::compress::noise(8192, 88172645463325252);
        let e = data_extent(Bytes::from(noise));
        for how in [Compression::Zstd, Compression::Lz4] {
            let enc = encode_extent(&e, how);
            assert_eq!(enc.codec, Compression::None, "{how}");
            assert_eq!(enc.head[4 + 1 + 4 + 8], WHAT_DATA);
            let buf = frame_of(&enc.head, &enc.payload);
            assert_eq!(
                read_frame(&mut &buf[..]).await.unwrap(),
                Frame::Extent(e.clone())
            );
        }
    }

    #[tokio::test]
    async fn bad_compressed_extents_are_protocol_errors() {
        let e = data_extent(compressible(64 << 10));
        for how in [Compression::Zstd, Compression::Lz4] {
            let enc = encode_extent(&e, how);
            assert_eq!(enc.codec, how);
            let at_len = 4 + 1 + 4 + 8 + 1;
            let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
            // Corrupt payload: bytes flipped, then cut short.
            let mut flipped = enc.payload.to_vec();
            for b in &mut flipped[4..] {
                *b = b.wrapping_add(0x3b);
            }
            cases.push(("flipped", frame_of(&enc.head, &flipped)));
            cases.push((
                "cut short",
                frame_of(&enc.head, &enc.payload[..enc.payload.len() / 2]),
            ));
            cases.push(("no payload", frame_of(&enc.head, &[])));
            // Wrong declared lengths: one less, one more, and over MAX_EXTENT.
            for declared in [
                (64 << 10) - 1,
                (64 << 10) + 1,
                MAX_EXTENT as u64 + 1,
                u64::MAX,
            ] {
                let mut head = enc.head.to_vec();
                head[at_len..at_len + 8].copy_from_slice(&declared.to_be_bytes());
                cases.push(("declared", frame_of(&head, &enc.payload)));
            }
            for (what, f) in cases {
                match read_frame(&mut &f[..]).await {
                    Err(WireError::Decompress {
                        volume: 3, offset, ..
                    }) => {
                        assert_eq!(offset, 1 << 20)
                    }
                    other => panic!("{how} {what}: {other:?}"),
                }
            }
            let mut head = enc.head.to_vec();
            head[at_len..at_len + 8].copy_from_slice(&(MAX_EXTENT as u64 + 1).to_be_bytes());
            let err = decode_body(Bytes::from(frame_of(&head, &enc.payload)[4..].to_vec()));
            assert!(
                matches!(
                    err,
                    Err(WireError::Decompress {
                        source: DecompressError::TooLarge(_),
                        ..
                    })
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_challenge_without_codecs_is_an_older_peer() {
        let old = r#"{"msg":"challenge","version":1,"nonce":"ab"}"#;
        assert_eq!(
            serde_json::from_str::<Message>(old).unwrap(),
            Message::Challenge {
                version: 1,
                nonce: "ab".into(),
                compress: vec![],
            }
        );
        // And what an older build reads from a newer one: the same fields and one it
        // ignores (control messages do not deny unknown fields).
        let new = serde_json::to_string(&Message::Challenge {
            version: PROTOCOL_VERSION,
            nonce: "ab".into(),
            compress: codecs(),
        })
        .unwrap();
        assert_eq!(
            new,
            r#"{"msg":"challenge","version":2,"nonce":"ab","compress":["zstd","lz4"]}"#
        );
    }

    #[test]
    fn proofs_bind_secret_direction_nonces_and_channel() {
        let (c, s) = (auth::nonce(), auth::nonce());
        let b = [7u8; 32];
        let p = auth::prove("secret", auth::CLIENT, &b, &c, &s);
        assert!(auth::verify("secret", auth::CLIENT, &b, &c, &s, &p));
        assert!(!auth::verify("other", auth::CLIENT, &b, &c, &s, &p));
        assert!(
            !auth::verify("secret", auth::SERVER, &b, &c, &s, &p),
            "reflected"
        );
        assert!(!auth::verify("secret", auth::CLIENT, &b, &s, &c, &p));
        assert!(!auth::verify("secret", auth::CLIENT, &b, &c, &s, "zz"));
        // A proof made on one TLS session does not verify on another (a relay's legs).
        assert!(!auth::verify(
            "secret",
            auth::CLIENT,
            &[8u8; 32],
            &c,
            &s,
            &p
        ));
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_body_arrives() {
        // A header announcing a MiB and a few bytes of body: refused from the header.
        let mut f = BytesMut::new();
        f.put_u32(1 << 20);
        f.put_u8(KIND_CONTROL);
        f.put_slice(b"{}");
        assert!(matches!(
            read_frame_within(&mut &f[..], PREAUTH_FRAME).await,
            Err(WireError::TooLarge(n)) if n == 1 << 20
        ));
        let mut hello = BytesMut::new();
        encode_message(
            &Message::Hello {
                version: PROTOCOL_VERSION,
                nonce: auth::nonce(),
            },
            &mut hello,
        );
        assert!(hello.len() < PREAUTH_FRAME);
        assert!(matches!(
            read_message_within(&mut &hello[..], PREAUTH_FRAME).await,
            Ok(Message::Hello { .. })
        ));
    }

    #[test]
    fn membership_messages_keep_the_forms_older_builds_send() {
        // A BeginCut from a build before membership changes names no volumes.
        let old = r#"{"msg":"begin_cut","set":"s","generation":3,"cut":9,"taken_unix":5,"full":false,"base":8}"#;
        assert_eq!(
            serde_json::from_str::<Message>(old).unwrap(),
            Message::BeginCut {
                set: "s".into(),
                generation: 3,
                cut: 9,
                taken_unix: 5,
                full: false,
                base: Some(8),
                volumes: vec![],
            }
        );
        // Without volumes it is written as before.
        let again = serde_json::to_string(&serde_json::from_str::<Message>(old).unwrap()).unwrap();
        assert_eq!(again, old);
        // A member volume without a page size takes the default one.
        let m = r#"{"msg":"restart_members","set":"s","generation":4,"add":[{"name":"c","size":1048576,"block_size":512}]}"#;
        assert_eq!(
            serde_json::from_str::<Message>(m).unwrap(),
            Message::RestartMembers {
                set: "s".into(),
                generation: 4,
                add: vec![MemberVolume {
                    name: "c".into(),
                    size: 1 << 20,
                    block_size: 512,
                    page_size: crate::catalog::DEFAULT_PAGE_SIZE,
                }],
                remove: vec![],
            }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_body(Bytes::from(body));
        }

        #[test]
        fn arbitrary_compressed_extents_never_panic(
            what in prop_oneof![Just(WHAT_ZSTD), Just(WHAT_LZ4)],
            len in prop_oneof![0u64..70000, Just(MAX_EXTENT as u64), any::<u64>()],
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut body = BytesMut::new();
            body.put_u8(KIND_EXTENT);
            body.put_u32(0);
            body.put_u64(0);
            body.put_u8(what);
            body.put_u64(len);
            body.put_u32(0);
            body.put_slice(&payload);
            if let Ok(Frame::Extent(e)) = decode_body(body.freeze()) {
                prop_assert_eq!(e.len(), len);
            }
        }
    }
}
