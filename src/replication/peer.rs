//! The client end of a peer connection: connect over TLS 1.3, prove the secret both
//! ways over the session's channel binding, check the peer's key against its pin, then
//! request/response control messages and streamed extents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::host::Host;
use super::tls::{self, Link, Tls};
use super::wire::{self, auth, EncodedExtent, Message, PREAUTH_FRAME, PROTOCOL_VERSION};
use super::ReplicationError;
use crate::catalog::{Compression, PeerSpec};

/// How long connecting and each answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Stream = TlsStream<tokio::io::BufStream<TcpStream>>;

pub struct PeerConn {
    name: String,
    reader: BufReader<ReadHalf<Stream>>,
    writer: BufWriter<WriteHalf<Stream>>,
    /// Bytes written so far (framing included), for cycle statistics.
    pub sent: u64,
    /// Codecs the peer said it decodes in extents (none from a build before them).
    pub codecs: Vec<Compression>,
    /// What the TLS handshake established: the key the peer presented, version, suite.
    pub link: Link,
}

impl PeerConn {
    /// Connects to `peer` (named `name` here) with this node's identity and
    /// authenticates; then the key the peer presented must be the pinned one, or,
    /// when none is pinned yet, becomes it (the first authenticated contact).
    pub async fn connect(
        host: &dyn Host,
        name: &str,
        peer: &PeerSpec,
    ) -> Result<PeerConn, ReplicationError> {
        let tls = host.tls()?;
        let conn = PeerConn::open(&tls, name, peer).await?;
        let presented = &conn.link.presented;
        match &peer.pinned_key {
            Some(pinned) if pinned != presented => {
                return Err(ReplicationError::KeyChanged {
                    peer: name.to_string(),
                    pinned: pinned.clone(),
                    presented: presented.clone(),
                })
            }
            Some(_) => {}
            None => {
                tracing::info!(peer = %name, key = %presented, "pinned the peer's TLS key at first contact");
                host.pin_peer_key(name, presented);
            }
        }
        Ok(conn)
    }

    /// Connects and authenticates with `tls`, whatever key the peer presents (the
    /// caller checks it: [`PeerConn::connect`], or `peer update --accept-new-key`).
    pub async fn open(
        tls: &Arc<Tls>,
        name: &str,
        peer: &PeerSpec,
    ) -> Result<PeerConn, ReplicationError> {
        let connect_err = |source| ReplicationError::Connect {
            peer: name.to_string(),
            addr: peer.addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&peer.addr))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        super::idle::keep_alive(&stream);
        let stream =
            tokio::io::BufStream::with_capacity(tls::SOCKET_BUFFER, tls::SOCKET_BUFFER, stream);
        let handshake = tls.connector().connect(Tls::server_name(), stream);
        let stream = match tokio::time::timeout(ANSWER_TIMEOUT, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ReplicationError::Handshake {
                    peer: name.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(ReplicationError::Timeout {
                    peer: name.to_string(),
                    secs: ANSWER_TIMEOUT.as_secs(),
                })
            }
        };
        let link = tls::link(stream.get_ref().1).map_err(|source| ReplicationError::Link {
            peer: name.to_string(),
            source,
        })?;
        let (r, w) = tokio::io::split(stream);
        let mut conn = PeerConn {
            name: name.to_string(),
            reader: BufReader::with_capacity(256 << 10, r),
            writer: BufWriter::with_capacity(1 << 20, w),
            sent: 0,
            codecs: Vec::new(),
            link,
        };
        conn.authenticate(&peer.secret).await?;
        tls.saw(name, &conn.link);
        Ok(conn)
    }

    /// The challenge-response over the channel binding: we prove the secret, then the
    /// peer must prove it before anything else is sent.
    async fn authenticate(&mut self, secret: &str) -> Result<(), ReplicationError> {
        let name = self.name.clone();
        let binding = self.link.binding;
        let ours = auth::nonce();
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: ours.clone(),
        })
        .await?;
        let theirs = match self.recv_within(PREAUTH_FRAME).await? {
            Message::Challenge {
                version,
                nonce,
                compress,
            } if version == PROTOCOL_VERSION => {
                // Names this build does not know are codecs it cannot use.
                self.codecs = compress
                    .iter()
                    .filter_map(|c| Compression::parse(c))
                    .collect();
                nonce
            }
            Message::Challenge { version, .. } => {
                return Err(ReplicationError::Version {
                    peer: name,
                    theirs: version,
                    ours: PROTOCOL_VERSION,
                })
            }
            other => return Err(self.refusal(other)),
        };
        let mac = auth::prove(secret, auth::CLIENT, &binding, &ours, &theirs);
        self.send(&Message::Proof { mac }).await?;
        match self.recv_within(PREAUTH_FRAME).await? {
            Message::Welcome { mac }
                if auth::verify(secret, auth::SERVER, &binding, &theirs, &ours, &mac) =>
            {
                Ok(())
            }
            Message::Welcome { .. } => Err(ReplicationError::PeerUnproven { peer: name }),
            Message::Error {
                code: wire::ErrorCode::AuthFailed,
                ..
            } => Err(ReplicationError::AuthRefused { peer: name }),
            other => Err(self.refusal(other)),
        }
    }

    fn wire_err(&self, source: wire::WireError) -> ReplicationError {
        ReplicationError::Wire {
            peer: self.name.clone(),
            source,
        }
    }

    /// An answer that is not the one expected: the peer's error, or out of turn.
    pub fn refusal(&self, m: Message) -> ReplicationError {
        match m {
            Message::Error { code, message } => ReplicationError::Remote {
                peer: self.name.clone(),
                code,
                message,
            },
            Message::Promoted { fork, .. } => ReplicationError::PeerPromoted {
                peer: self.name.clone(),
                fork,
            },
            _ => ReplicationError::Unexpected {
                peer: self.name.clone(),
            },
        }
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), ReplicationError> {
        let mut out = bytes::BytesMut::new();
        wire::encode_message(m, &mut out);
        self.sent += out.len() as u64;
        let r = tokio::time::timeout(ANSWER_TIMEOUT, async {
            self.writer.write_all(&out).await?;
            self.writer.flush().await
        })
        .await;
        match r {
            Ok(r) => r.map_err(|e| self.wire_err(e.into())),
            Err(_) => Err(self.stalled()),
        }
    }

    /// The peer stopped taking bytes for [`ANSWER_TIMEOUT`].
    fn stalled(&self) -> ReplicationError {
        ReplicationError::Timeout {
            peer: self.name.clone(),
            secs: ANSWER_TIMEOUT.as_secs(),
        }
    }

    /// Whether the peer decodes extents compressed with `how` (`none` always).
    pub fn accepts(&self, how: Compression) -> bool {
        how.is_none() || self.codecs.contains(&how)
    }

    /// Queues an encoded extent (buffered; `send` and `flush` push it out).
    pub async fn send_extent(&mut self, e: &EncodedExtent) -> Result<(), ReplicationError> {
        self.sent += e.wire_len();
        match tokio::time::timeout(ANSWER_TIMEOUT, wire::write_encoded(&mut self.writer, e)).await {
            Ok(r) => r.map_err(|e| self.wire_err(e)),
            Err(_) => Err(self.stalled()),
        }
    }

    pub async fn recv(&mut self) -> Result<Message, ReplicationError> {
        self.recv_within(wire::MAX_FRAME + 1).await
    }

    /// The next control message, of at most `limit` bytes.
    async fn recv_within(&mut self, limit: usize) -> Result<Message, ReplicationError> {
        let read = wire::read_message_within(&mut self.reader, limit);
        match tokio::time::timeout(ANSWER_TIMEOUT, read).await {
            Ok(r) => r.map_err(|e| self.wire_err(e)),
            Err(_) => Err(ReplicationError::Timeout {
                peer: self.name.clone(),
                secs: ANSWER_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Sends `m` and returns the answer, turning an `Error` answer into a refusal.
    pub async fn request(&mut self, m: &Message) -> Result<Message, ReplicationError> {
        self.request_while(m, |_| false).await
    }

    /// [`PeerConn::request`], where answers for which `working` holds say the peer is
    /// still at it: each one starts the answer timeout over.
    pub async fn request_while(
        &mut self,
        m: &Message,
        working: impl Fn(&Message) -> bool,
    ) -> Result<Message, ReplicationError> {
        self.send(m).await?;
        loop {
            match self.recv().await? {
                e @ Message::Error { .. } => return Err(self.refusal(e)),
                answer if working(&answer) => continue,
                answer => return Ok(answer),
            }
        }
    }

    /// A request answered by `Ok`.
    pub async fn expect_ok(&mut self, m: &Message) -> Result<(), ReplicationError> {
        match self.request(m).await? {
            Message::Ok => Ok(()),
            other => Err(self.refusal(other)),
        }
    }

    /// Round trip of a ping.
    pub async fn ping(&mut self) -> Result<Duration, ReplicationError> {
        let start = Instant::now();
        match self.request(&Message::Ping).await? {
            Message::Pong => Ok(start.elapsed()),
            other => Err(self.refusal(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn identity() -> (tempfile::TempDir, Arc<Tls>) {
        let dir = tempfile::tempdir().unwrap();
        let tls = Arc::new(Tls::load_or_create(dir.path()).unwrap());
        (dir, tls)
    }

    /// A fake receiver that authenticates like the listener (over TLS, with the
    /// channel binding) and lists `codecs` (as JSON values) in its challenge, or leaves
    /// the field out like a build before compression.
    async fn fake_peer(
        codecs: Option<serde_json::Value>,
    ) -> (PeerSpec, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spec = PeerSpec {
            addr: l.local_addr().unwrap().to_string(),
            secret: "fake-peer-secret".into(),
            max_rate: None,
            pinned_key: None,
        };
        let secret = spec.secret.clone();
        let task = tokio::spawn(async move {
            let (_dir, tls) = identity();
            let (s, _) = l.accept().await.unwrap();
            let s = tls.acceptor().accept(s).await.unwrap();
            let binding = tls::link(s.get_ref().1).unwrap().binding;
            let (r, mut w) = tokio::io::split(s);
            let mut r = BufReader::new(r);
            let Message::Hello { nonce: theirs, .. } = wire::read_message(&mut r).await.unwrap()
            else {
                panic!("expected hello")
            };
            let ours = auth::nonce();
            let mut challenge = serde_json::json!({
                "msg": "challenge",
                "version": PROTOCOL_VERSION,
                "nonce": ours,
            });
            if let Some(c) = codecs {
                challenge["compress"] = c;
            }
            let body = serde_json::to_vec(&challenge).unwrap();
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(1);
            frame.extend_from_slice(&body);
            w.write_all(&frame).await.unwrap();
            let Message::Proof { .. } = wire::read_message(&mut r).await.unwrap() else {
                panic!("expected proof")
            };
            let mac = auth::prove(&secret, auth::SERVER, &binding, &ours, &theirs);
            wire::write_message(&mut w, &Message::Welcome { mac })
                .await
                .unwrap();
            w.shutdown().await.unwrap();
        });
        (spec, task)
    }

    #[tokio::test]
    async fn the_codecs_a_peer_lists_are_the_ones_used() {
        let (_dir, tls) = identity();
        let cases = [
            (None, vec![]),
            (Some(serde_json::json!([])), vec![]),
            (
                Some(serde_json::json!(["zstd", "lz4"])),
                vec![Compression::Zstd, Compression::Lz4],
            ),
            // A codec of a later build is one this build cannot use.
            (
                Some(serde_json::json!(["brotli", "lz4"])),
                vec![Compression::Lz4],
            ),
        ];
        for (listed, want) in cases {
            let (spec, task) = fake_peer(listed.clone()).await;
            let conn = PeerConn::open(&tls, "fake", &spec).await.unwrap();
            task.await.unwrap();
            assert_eq!(conn.codecs, want, "{listed:?}");
            assert!(conn.accepts(Compression::None));
            for c in [Compression::Zstd, Compression::Lz4] {
                assert_eq!(conn.accepts(c), want.contains(&c), "{listed:?} {c}");
            }
            assert_eq!(conn.link.version, "TLSv1.3");
            assert_eq!(tls.seen("fake").unwrap().presented, conn.link.presented);
        }
    }
}
