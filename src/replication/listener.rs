//! The secondary side: `serve --replication-listen ADDR` accepts peer connections.
//! Each runs TLS 1.3 and must prove it knows the secret of one of this node's peers,
//! over the session's channel binding, and present that peer's pinned key, before
//! anything else; the peer it proved is then the only one whose sets it may touch.
//! Until then a connection is bounded: [`HANDSHAKE_TIMEOUT`] in time,
//! `wire::PREAUTH_FRAME` per frame, [`MAX_PENDING`] such connections at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;

use super::host::{ChangeRefused, Host, MembersRequest, SecondaryRequest};
use super::idle::IdleLimit;
use super::readahead::ReadAhead;
use super::recovery::{CutMeta, ExtentData, RecoveryError};
use super::sets::{PeerConnHandle, Sets};
use super::tls::{self, Tls};
use super::wire::{
    self, auth, ErrorCode, Fork, Frame, Message, PointView, WireError, PROTOCOL_VERSION,
};
use crate::catalog::ReplicationRole;
use crate::throttle::Source;

/// Why this side refuses what a peer sent: each becomes an `Error` message with its
/// code ([`Refusal::code`], the one place they are mapped).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("this node speaks replication protocol version {PROTOCOL_VERSION}, not {0}")]
    Version(u32),
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("unexpected message")]
    Unexpected,
    #[error("authentication failed")]
    AuthFailed,
    #[error("peer '{peer}' (as the refusing node names it) proved the secret but presented TLS key {presented}, and {pinned} is pinned there. If that key was regenerated on purpose, run `twinlun ctl peer update {peer} --accept-new-key` on the refusing node")]
    KeyChanged {
        peer: String,
        pinned: String,
        presented: String,
    },
    #[error("set '{0}' here is not a secondary of this peer")]
    NotOwned(String),
    #[error("no secondary set '{0}' here")]
    NoSet(String),
    #[error("set '{0}' is being promoted here")]
    Promoting(String),
    /// The node refused the catalog change (its message as it is).
    #[error("{0}")]
    Change(ChangeRefused),
    /// A cut or an extent that the store does not take.
    #[error("{}", crate::chain::ErrorChain(.0))]
    Staging(RecoveryError),
    /// The store could not write or apply what it took.
    #[error("{}", crate::chain::ErrorChain(.0))]
    Store(RecoveryError),
    #[error("the secondary is at {at}, not at cut {base} of generation {generation}: restart replication")]
    Base {
        at: String,
        base: String,
        generation: u64,
    },
    #[error("the extent writer failed: {0}")]
    Writer(tokio::task::JoinError),
    /// The set was promoted here: answered with `Promoted`, not an error.
    #[error("set '{set}' was promoted here")]
    Promoted { set: String, fork: Fork },
    #[error("set '{set}' here holds volumes {here}, and the cut is of {theirs}: restart replication on the primary with --add-volume/--remove-volume to match")]
    OtherVolumes {
        set: String,
        theirs: String,
        here: String,
    },
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::Version(_) => ErrorCode::Version,
            Refusal::Expected(_) | Refusal::Unexpected => ErrorCode::Protocol,
            Refusal::AuthFailed => ErrorCode::AuthFailed,
            Refusal::KeyChanged { .. } => ErrorCode::KeyChanged,
            Refusal::NotOwned(_)
            | Refusal::Promoting(_)
            | Refusal::Change(_)
            | Refusal::Staging(_)
            | Refusal::OtherVolumes { .. } => ErrorCode::Refused,
            Refusal::NoSet(_) => ErrorCode::NotFound,
            Refusal::Store(_) => ErrorCode::Io,
            Refusal::Base { .. } => ErrorCode::Base,
            Refusal::Writer(_) => ErrorCode::Internal,
            Refusal::Promoted { .. } => ErrorCode::Refused,
        }
    }
}

impl From<Refusal> for Message {
    fn from(r: Refusal) -> Message {
        if let Refusal::Promoted { set, fork } = r {
            return Message::Promoted { set, fork };
        }
        Message::Error {
            code: r.code(),
            message: r.to_string(),
        }
    }
}

/// How long a cut in flight may go without a byte from the primary before the
/// connection is given up (its cut is left as a broken link leaves it: staged, not
/// committed, resumed by the next attempt). Longer than the primary's own answer
/// timeout (30 s), so a live primary gives up first and says why.
const CUT_READ_LIMIT: Duration = Duration::from_secs(60);
/// How long an authenticated connection may sit between requests. Primaries connect
/// per cycle and keep no connection open between cycles, so this only ends
/// connections nobody uses; keepalive notices a vanished host sooner.
const IDLE_READ_LIMIT: Duration = Duration::from_secs(300);

/// In a build with the `fault-injection` feature, [`CUT_READ_LIMIT`] in milliseconds
/// from the environment, so a test sees the bound without waiting a minute.
#[cfg(feature = "fault-injection")]
pub const CUT_READ_LIMIT_MS: &str = "TWINLUN_TEST_CUT_READ_LIMIT_MS";

/// In a build with the `fault-injection` feature, the receiver waits this many
/// milliseconds before it commits a cut, as a disk slower than the sender's answer
/// timeout would make it. Other builds do not have it.
#[cfg(feature = "fault-injection")]
pub const COMMIT_DELAY_MS: &str = "TWINLUN_TEST_COMMIT_DELAY_MS";

fn cut_read_limit() -> Duration {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var(CUT_READ_LIMIT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    CUT_READ_LIMIT
}

/// Longest the whole handshake of a connection may take, from the TCP accept through
/// TLS to the `Welcome`: a connection that has not authenticated by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections that may be unauthenticated at once. A new one past it drops the
/// oldest pending one: a flood cannot lock a real peer out (its client retries).
pub const MAX_PENDING: usize = 64;

/// The connections still in their handshake, oldest first; each holds the sender whose
/// drop tells it to give up.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A connection's place among the pending ones; leaving it (authenticated, refused or
/// gone) frees the place.
struct Admission {
    id: u64,
    evicted: oneshot::Receiver<()>,
    pending: Arc<Mutex<Pending>>,
}

impl Admission {
    /// Admits a new connection, dropping the oldest pending one when full.
    fn admit(pending: &Arc<Mutex<Pending>>) -> Admission {
        let (tx, rx) = oneshot::channel();
        let mut p = pending.lock();
        let id = p.next;
        p.next += 1;
        if p.queue.len() >= MAX_PENDING {
            // Dropping its sender wakes it.
            p.queue.pop_front();
        }
        p.queue.push_back((id, tx));
        Admission {
            id,
            evicted: rx,
            pending: pending.clone(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.pending.lock().queue.retain(|(id, _)| *id != self.id);
    }
}

/// Why a connection was closed before it authenticated; logged, never sent (there is
/// no authenticated channel to send it on).
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("no authentication within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    #[error("{MAX_PENDING} newer connections were waiting to authenticate")]
    Crowded,
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("{0}")]
    Link(#[from] tls::LinkError),
}

/// Accepts peer connections until the node goes away.
pub async fn serve(sets: Arc<Sets>, listener: TcpListener) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "replication listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let sets = sets.clone();
        let admission = Admission::admit(&pending);
        let span = tracing::info_span!("peer", %addr);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let conn = PeerConnHandle::new();
                tokio::select! {
                    r = connection(&sets, stream, addr, admission, &conn) => {
                        if let Err(e) = r {
                            tracing::info!(error = %e, "peer connection ended");
                        }
                    }
                    () = conn.superseded() => {
                        tracing::warn!("peer connection stopped: a newer connection or a promote took its set over");
                    }
                }
                sets.release(&conn);
            },
            span,
        ));
    }
}

type Link = TlsStream<ReadAhead<TcpStream>>;
type Reader = BufReader<IdleLimit<ReadHalf<Link>>>;
type Writer = BufWriter<WriteHalf<Link>>;

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), WireError> {
    wire::write_message(w, m).await
}

/// A pre-authentication message: small ([`wire::PREAUTH_FRAME`]), read straight from
/// the TLS stream, which buffers what arrived.
async fn read_preauth(s: &mut Link) -> Result<Message, WireError> {
    wire::read_message_within(s, wire::PREAUTH_FRAME).await
}

/// The challenge-response over the session's channel binding, then the pin: returns
/// the name of the peer whose secret the client proved and whose key it presented, or
/// `None` after telling it why not. Guessing is slowed per source address
/// (`throttle`): a proof is checked only after the delay the address owes for its
/// recent failures, right or wrong, and only this connection waits.
async fn authenticate(
    s: &mut Link,
    sets: &Sets,
    host: &dyn Host,
    addr: std::net::SocketAddr,
    link: &tls::Link,
) -> Result<Option<String>, WireError> {
    let theirs = match read_preauth(s).await? {
        Message::Hello { version, nonce } if version == PROTOCOL_VERSION => nonce,
        Message::Hello { version, .. } => {
            send(s, &Refusal::Version(version).into()).await?;
            return Ok(None);
        }
        _ => {
            send(s, &Refusal::Expected("hello").into()).await?;
            return Ok(None);
        }
    };
    let ours = auth::nonce();
    send(
        s,
        &Message::Challenge {
            version: PROTOCOL_VERSION,
            nonce: ours.clone(),
            compress: wire::codecs(),
        },
    )
    .await?;
    let Message::Proof { mac } = read_preauth(s).await? else {
        send(s, &Refusal::Expected("proof").into()).await?;
        return Ok(None);
    };
    let source = [Source::Address(addr.ip())];
    let delay = sets.auth_throttle.lock().delay(&source, Instant::now());
    if !delay.is_zero() {
        tracing::debug!(?delay, "peer proof held back after recent failures");
        tokio::time::sleep(delay).await;
    }
    let peers: Vec<(String, String, Option<String>)> = host
        .catalog()
        .read()
        .peers
        .iter()
        .map(|(n, p)| (n.clone(), p.secret.clone(), p.pinned_key.clone()))
        .collect();
    let binding = &link.binding;
    let found = peers
        .into_iter()
        .find(|(_, secret, _)| auth::verify(secret, auth::CLIENT, binding, &theirs, &ours, &mac));
    let Some((name, secret, pinned)) = found else {
        let (failures, next_delay) = {
            let mut throttle = sets.auth_throttle.lock();
            let failures = throttle.failed(&source, Instant::now());
            (failures, throttle.policy().delay_after(failures))
        };
        tracing::warn!(address = %addr.ip(), failures, ?next_delay, "peer failed to prove a known secret: authentication failed");
        send(s, &Refusal::AuthFailed.into()).await?;
        return Ok(None);
    };
    sets.auth_throttle.lock().succeeded(&source);
    match pinned {
        Some(pinned) if pinned != link.presented => {
            let refusal = Refusal::KeyChanged {
                peer: name,
                pinned,
                presented: link.presented.clone(),
            };
            send(s, &refused(refusal)).await?;
            return Ok(None);
        }
        Some(_) => {}
        None => {
            tracing::info!(peer = %name, key = %link.presented, "pinned the peer's TLS key at first contact");
            host.pin_peer_key(&name, &link.presented);
        }
    }
    let mac = auth::prove(&secret, auth::SERVER, binding, &ours, &theirs);
    send(s, &Message::Welcome { mac }).await?;
    Ok(Some(name))
}

/// An older build speaks the protocol in plaintext: its first frame starts with a
/// length (a zero byte), a TLS record with 0x16 (RFC 8446 section 5.1, handshake). It
/// is answered in its own terms, with the version refusal it understands.
async fn refuse_plaintext(mut stream: TcpStream) -> Result<(), WireError> {
    if let Message::Hello { version, .. } =
        wire::read_message_within(&mut stream, wire::PREAUTH_FRAME).await?
    {
        let refusal = Refusal::Version(version);
        tracing::info!(error = %refusal, "peer speaks replication without TLS: refused");
        send(&mut stream, &refusal.into()).await?;
    }
    Ok(())
}

/// TCP to `Welcome`: TLS, then the secret and the pin. `None` when the connection was
/// refused (and told why, where it could be).
async fn handshake(
    sets: &Sets,
    host: &dyn Host,
    tls: &Tls,
    stream: TcpStream,
    addr: std::net::SocketAddr,
) -> Result<Option<(Link, String)>, HandshakeError> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plaintext(stream).await?;
        return Ok(None);
    }
    let mut s = tls
        .acceptor()
        .accept(ReadAhead::new(stream))
        .await
        .map_err(Dropped::Tls)?;
    let link = tls::link(s.get_ref().1).map_err(Dropped::from)?;
    let Some(peer) = authenticate(&mut s, sets, host, addr, &link).await? else {
        s.flush().await?;
        return Ok(None);
    };
    tls.saw(&peer, &link);
    Ok(Some((s, peer)))
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Dropped(#[from] Dropped),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Wire(e.into())
    }
}

async fn connection(
    sets: &Arc<Sets>,
    stream: TcpStream,
    addr: std::net::SocketAddr,
    mut admission: Admission,
    conn: &PeerConnHandle,
) -> Result<(), WireError> {
    let Some(host) = sets.host() else {
        return Ok(());
    };
    let tls = match host.tls() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %crate::chain::ErrorChain(&e), "no TLS identity: peer connection refused");
            return Ok(());
        }
    };
    let _ = stream.set_nodelay(true);
    super::idle::keep_alive(&stream);
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(sets, &*host, &tls, stream, addr),
    );
    let outcome = tokio::select! {
        r = handshake => r.unwrap_or(Err(HandshakeError::Dropped(Dropped::Timeout))),
        _ = &mut admission.evicted => Err(HandshakeError::Dropped(Dropped::Crowded)),
    };
    drop(admission);
    let (stream, peer) = match outcome {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()),
        Err(HandshakeError::Wire(e)) => return Err(e),
        Err(HandshakeError::Dropped(why)) => {
            tracing::info!(error = %crate::chain::ErrorChain(&why), "unauthenticated peer connection closed");
            return Ok(());
        }
    };
    tracing::info!(peer = %peer, "peer authenticated");
    // The large buffers only now, for a peer that proved itself. Smaller than an
    // extent frame: most of a frame's body is read straight into its buffer rather
    // than copied through this one.
    let mut stream = stream;
    stream.get_mut().0.enlarge(tls::SOCKET_BUFFER);
    let (r, w) = tokio::io::split(stream);
    let mut r = BufReader::with_capacity(64 << 10, IdleLimit::new(r, IDLE_READ_LIMIT));
    let mut w = BufWriter::new(w);
    loop {
        let m = match wire::read_message(&mut r).await {
            Ok(m) => m,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let answer = match m {
            Message::BeginCut {
                set,
                generation,
                cut,
                taken_unix,
                full,
                base,
                volumes,
            } => {
                let meta = CutMeta {
                    generation,
                    cut,
                    taken_unix,
                };
                let begun = match begin_cut(sets, &*host, &peer, conn, &set, meta, full, base).await
                {
                    Ok(Begin::Receive { store, keep }) if !volumes.is_empty() => {
                        let here = store.lock().await.volume_names();
                        if here == volumes {
                            Ok(Begin::Receive { store, keep })
                        } else {
                            Err(Refusal::OtherVolumes {
                                set: set.clone(),
                                theirs: volumes.join(", "),
                                here: here.join(", "),
                            })
                        }
                    }
                    other => other,
                };
                match begun {
                    Ok(Begin::Receive { store, keep }) => {
                        r.get_mut().set_limit(cut_read_limit());
                        let received = receive_cut(&mut r, &mut w, &set, store, meta, keep).await;
                        r.get_mut().set_limit(IDLE_READ_LIMIT);
                        received?;
                        continue;
                    }
                    Ok(Begin::Committed) => Ok(Message::Committed { cut }),
                    Err(refusal) => Err(refusal),
                }
            }
            other => answer(sets, &host, &peer, conn, other).await,
        };
        send(&mut w, &answer.unwrap_or_else(Message::from)).await?;
    }
}

/// The answer to a request other than a cut.
async fn answer(
    sets: &Sets,
    host: &Arc<dyn Host>,
    peer: &str,
    conn: &PeerConnHandle,
    m: Message,
) -> Result<Message, Refusal> {
    match m {
        Message::Ping => Ok(Message::Pong),
        Message::CreateSet {
            set,
            group,
            volumes,
            keep,
            ..
        } => {
            let req = SecondaryRequest {
                set,
                peer: peer.to_string(),
                group,
                volumes,
                keep,
            };
            node_change(host, move |h| h.accept_secondary(req)).await
        }
        Message::DeleteSet { set } => {
            owned_set(sets, &**host, peer, &set)?;
            node_change(host, move |h| h.drop_secondary(&set)).await
        }
        Message::ModifySet { set, keep } => {
            owned_set(sets, &**host, peer, &set)?;
            node_change(host, move |h| h.modify_secondary(&set, keep)).await
        }
        Message::Reset { set, generation } => {
            owned_set(sets, &**host, peer, &set)?;
            // A reset takes every point, those DR drills use too: refused, naming them.
            sets.check_unpinned(&set)
                .map_err(|e| Refusal::Change(Box::new(e)))?;
            if !sets.claim(&set, conn) {
                return Err(Refusal::Promoting(set));
            }
            let store = sets.receiver(&set).ok_or(Refusal::NoSet(set))?;
            let mut store = store.lock().await;
            tokio::task::block_in_place(|| store.reset(generation)).map_err(Refusal::Store)?;
            Ok(Message::Ok)
        }
        Message::SplitBrain { set, fork } => {
            peers_set(&**host, peer, &set, None)?;
            sets.note_split_brain(&set, fork).map_err(Refusal::Change)?;
            tracing::error!(set = %set, cut = fork.cut, "split brain: the old primary wrote after this side's promote; nothing resumes until `resolve`");
            Ok(Message::Ok)
        }
        Message::TakeBack {
            set,
            fork,
            pages,
            kept,
        } => {
            peers_set(&**host, peer, &set, Some(ReplicationRole::Primary))?;
            sets.take_back(&set, fork, pages).map_err(Refusal::Change)?;
            tracing::warn!(set = %set, kept = ?kept, "resolved: the promoted peer yielded and is this side's secondary again");
            Ok(Message::Ok)
        }
        Message::Resolve { set, keep_yours } => {
            peers_set(&**host, peer, &set, None)?;
            match sets.resolve(&set, keep_yours).await {
                Ok(message) => Ok(Message::Done { message }),
                Err(e) => Err(Refusal::Change(Box::new(e))),
            }
        }
        Message::Failback { set, fork, resolve } => {
            let (pages, kept) = sets
                .demote_here(&set, peer, fork, resolve)
                .await
                .map_err(Refusal::Change)?;
            tracing::warn!(set = %set, cut = fork.cut, kept = ?kept, "failback: the peer was promoted; this side is the secondary now");
            Ok(Message::Divergent { pages, kept })
        }
        Message::Switchover { set, fork } => {
            owned_set(sets, &**host, peer, &set)?;
            let at = sets
                .receiver_summary(&set)
                .and_then(|s| s.current.map(|c| (s.generation, c.cut)));
            if at != Some((fork.parent, fork.cut)) {
                return Err(Refusal::Base {
                    at: at.map_or("no cut".to_string(), |(g, c)| {
                        format!("cut {c} of generation {g}")
                    }),
                    base: fork.cut.to_string(),
                    generation: fork.parent,
                });
            }
            let answer = node_change(host, move |h| h.promote_switchover(&set, fork)).await;
            if answer.is_ok() {
                tracing::warn!(
                    cut = fork.cut,
                    generation = fork.generation,
                    "switchover: this side is the primary now"
                );
            }
            answer
        }
        Message::RestartMembers {
            set,
            generation,
            add,
            remove,
        } => {
            owned_set(sets, &**host, peer, &set)?;
            sets.check_unpinned(&set)
                .map_err(|e| Refusal::Change(Box::new(e)))?;
            if !sets.claim(&set, conn) {
                return Err(Refusal::Promoting(set));
            }
            let store = sets
                .receiver(&set)
                .ok_or_else(|| Refusal::NoSet(set.clone()))?;
            let req = MembersRequest {
                set,
                generation,
                add,
                remove,
            };
            node_change(host, move |h| {
                // Locked by the reset (inside the node's change lock, the order
                // `drop_secondary` takes them in) and held until the store has been
                // reopened over the new volumes: no cut lands in between.
                let mut held = None;
                let mut reset = || {
                    let mut store = store.blocking_lock();
                    store
                        .reset(req.generation)
                        .map_err(|e| super::ReplicationError::Recovery {
                            set: req.set.clone(),
                            source: Box::new(e),
                        })?;
                    held = Some(store);
                    Ok(())
                };
                let changed = h.restart_secondary_members(&req, &mut reset);
                drop(held);
                changed
            })
            .await
        }
        Message::RecoveryPoints { set } => {
            let summary = sets.receiver_summary(&set).ok_or(Refusal::NoSet(set))?;
            Ok(Message::Points {
                points: summary
                    .points
                    .into_iter()
                    .map(|p| PointView {
                        cut: p.cut,
                        taken_unix: p.taken_unix,
                        undo_bytes: p.undo_bytes,
                    })
                    .collect(),
            })
        }
        _ => Err(Refusal::Unexpected),
    }
}

/// What follows a `BeginCut`.
enum Begin {
    /// Receive the cut's extents into the store.
    Receive {
        store: Arc<tokio::sync::Mutex<super::recovery::ReceiverStore>>,
        keep: usize,
    },
    /// The cut is the one committed last, by an attempt whose answer was lost.
    Committed,
}

/// Checks a `BeginCut`: the set is this peer's, and changes apply on top of the cut
/// they were computed from. The connection becomes the set's holder, superseding an
/// older one ([`Sets::claim`]).
#[allow(clippy::too_many_arguments)]
async fn begin_cut(
    sets: &Sets,
    host: &dyn Host,
    peer: &str,
    conn: &PeerConnHandle,
    set: &str,
    meta: CutMeta,
    full: bool,
    base: Option<u64>,
) -> Result<Begin, Refusal> {
    owned_set(sets, host, peer, set)?;
    if !sets.claim(set, conn) {
        return Err(Refusal::Promoting(set.to_string()));
    }
    let store = sets
        .receiver(set)
        .ok_or_else(|| Refusal::NoSet(set.to_string()))?;
    let keep = host
        .catalog()
        .read()
        .replications
        .get(set)
        .map_or(1, |r| r.keep as usize);
    let (generation, cut) = (meta.generation, meta.cut);
    let at = store.lock().await.current().map(|c| (c.generation, c.cut));
    if at == Some((generation, cut)) {
        return Ok(Begin::Committed);
    }
    if !full {
        let mut st = store.lock().await;
        let at = st.current().map(|c| (c.generation, c.cut));
        // A primary that crashed after we committed its last cut, before it recorded
        // that, computes from the cut before: that cut is our previous recovery point,
        // and the primary resends everything since.
        if let (Some((g, c)), Some(b)) = (at, base) {
            if g == generation && c > b {
                match tokio::task::block_in_place(|| st.roll_back_to_base(b)) {
                    Ok(()) => {
                        tracing::warn!(set = %set, from = c, to = b, "the primary computes from an older cut: rolled back to it")
                    }
                    Err(e) => {
                        tracing::warn!(set = %set, error = %crate::chain::ErrorChain(&e), "cannot roll back to the primary's base cut")
                    }
                }
            }
        }
        let at = st.current().map(|c| (c.generation, c.cut));
        drop(st);
        if at != base.map(|b| (generation, b)) {
            // The sender waits for `Begun` before any extent: nothing follows.
            return Err(Refusal::Base {
                at: at.map_or("no cut".to_string(), |(g, c)| {
                    format!("cut {c} of generation {g}")
                }),
                base: base.map_or("-".to_string(), |b| b.to_string()),
                generation,
            });
        }
    }
    Ok(Begin::Receive { store, keep })
}

/// Runs a catalog change the peer asked for on a blocking thread (it fsyncs).
async fn node_change<F>(host: &Arc<dyn Host>, change: F) -> Result<Message, Refusal>
where
    F: FnOnce(&dyn Host) -> Result<(), ChangeRefused> + Send + 'static,
{
    let host = host.clone();
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(|| change(&*host))).await {
        Ok(Ok(())) => Ok(Message::Ok),
        Ok(Err(e)) => Err(Refusal::Change(e)),
        Err(e) => Err(Refusal::Writer(e)),
    }
}

/// The set exists here as a secondary of `peer`.
/// The set `set` here is the peer's counterpart (in `role` when given), whatever side
/// of a promote it is on.
fn peers_set(
    host: &dyn Host,
    peer: &str,
    set: &str,
    role: Option<ReplicationRole>,
) -> Result<(), Refusal> {
    match host.catalog().read().replications.get(set) {
        Some(r) if r.peer == peer && role.is_none_or(|role| r.role == role) => Ok(()),
        _ => Err(Refusal::NotOwned(set.to_string())),
    }
}

fn owned_set(sets: &Sets, host: &dyn Host, peer: &str, set: &str) -> Result<(), Refusal> {
    match host.catalog().read().replications.get(set) {
        Some(r) if r.role == ReplicationRole::Secondary && r.peer == peer => Ok(()),
        // Promoted here: the peer is the old primary, and learns it from the answer.
        Some(r) if r.peer == peer => match sets.fork_of(set) {
            Some(fork) => Err(Refusal::Promoted {
                set: set.to_string(),
                fork,
            }),
            None => Err(Refusal::NotOwned(set.to_string())),
        },
        Some(_) => Err(Refusal::NotOwned(set.to_string())),
        None => Err(Refusal::NoSet(set.to_string())),
    }
}

/// Extents waiting between the connection and the thread that writes them: bounded,
/// so a disk slower than the link holds the peer back, with at most this many extents
/// (each of at most `wire::MAX_EXTENT` bytes) in memory.
const WRITE_QUEUE: usize = 8;

/// Stages the extents of one cut and commits it at its end record. The store is held
/// for the whole cut: one cut at a time per set. The extents are written on a blocking
/// thread of their own, in the order they came, while the next ones arrive.
async fn receive_cut(
    r: &mut Reader,
    w: &mut Writer,
    set: &str,
    store: Arc<tokio::sync::Mutex<super::recovery::ReceiverStore>>,
    meta: CutMeta,
    keep: usize,
) -> Result<(), WireError> {
    let mut store = store.lock_owned().await;
    let cut = meta.cut;
    let progress = match tokio::task::block_in_place(|| store.begin(meta)) {
        Ok(p) => p,
        Err(e) => return send(w, &stored(set, Refusal::Staging(e))).await,
    };
    send(
        w,
        &Message::Begun {
            extents: progress.extents,
            bytes: progress.bytes,
        },
    )
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<wire::Extent>(WRITE_QUEUE);
    // The buffers of extents written, back to the reading side for the next ones.
    let (spare_tx, mut spare_rx) = tokio::sync::mpsc::channel::<BytesMut>(WRITE_QUEUE);
    // Whether the cut ended whole (and is to be committed), told once the extents end.
    let (end_tx, end_rx) = oneshot::channel::<bool>();
    // The staging thread logs in the cut's span (peer connection, set, cut).
    let span = tracing::info_span!("cut", set, cut);
    let writer = tokio::task::spawn_blocking(move || {
        let _in_cut = span.enter();
        // After a refused extent nothing more is staged: the cut is refused at its end.
        let mut failed: Option<RecoveryError> = None;
        while let Some(e) = rx.blocking_recv() {
            if failed.is_some() {
                continue;
            }
            let data = match &e.kind {
                wire::ExtentKind::Data(d) => ExtentData::Data(d),
                wire::ExtentKind::Zero { len } => ExtentData::Zero { len: *len },
            };
            if let Err(err) = store.put(e.volume, e.offset, data, e.crc) {
                failed = Some(err);
            }
            if let Some(buf) = e.into_buffer() {
                // A full return queue: this one is freed instead.
                drop(spare_tx.try_send(buf));
            }
        }
        // The commit runs here too, so the connection can say the secondary is alive
        // while a slow disk takes its time.
        let commit = end_rx.blocking_recv().unwrap_or(false) && failed.is_none();
        #[cfg(feature = "fault-injection")]
        if let Some(ms) = std::env::var(COMMIT_DELAY_MS)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|_| commit)
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let committed = commit.then(|| store.commit_and_apply(keep));
        Written { failed, committed }
    });
    let ended = loop {
        let buf = spare_rx.try_recv().unwrap_or_default();
        match wire::read_frame_into(r, buf).await {
            // A writer that is gone (it panicked) shows when it is joined below.
            Ok(Frame::Extent(e)) => drop(tx.send(e).await),
            Ok(Frame::Control(Message::EndCut {
                cut: end,
                keepalive,
                ..
            })) if end == cut => break Ok(Some(keepalive)),
            Ok(Frame::Control(_)) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    // The writer writes every extent queued, then commits if the cut ended whole (a
    // writer gone, which the join below shows, takes no word).
    let _ = end_tx.send(matches!(ended, Ok(Some(_))));
    drop(tx);
    let keepalive = matches!(ended, Ok(Some(true)));
    let written = wait_saying_committing(w, cut, keepalive, writer).await;
    let Some(_) = ended? else {
        return send(w, &Refusal::Expected("extents or the cut's end").into()).await;
    };
    let written = match written? {
        Ok(x) => x,
        Err(e) => return send(w, &Refusal::Writer(e).into()).await,
    };
    if let Some(why) = written.failed {
        return send(w, &stored(set, Refusal::Staging(why))).await;
    }
    match written.committed {
        Some(Ok(())) => send(w, &Message::Committed { cut }).await,
        Some(Err(e)) => send(w, &stored(set, Refusal::Store(e))).await,
        None => send(w, &Refusal::Expected("extents or the cut's end").into()).await,
    }
}

/// What the writer of a cut did: the extent it refused (nothing more was staged after
/// it), and the commit's result when the cut ended whole and every extent was staged.
struct Written {
    failed: Option<RecoveryError>,
    committed: Option<Result<(), RecoveryError>>,
}

/// Waits for the writer; with `keepalive`, tells the sender every
/// [`wire::COMMIT_KEEPALIVE`] that cut `cut` is still being committed. A connection
/// that fails meanwhile is the error (the writer finishes on its own, and the store
/// is free once it has).
async fn wait_saying_committing<T>(
    w: &mut Writer,
    cut: u64,
    keepalive: bool,
    mut writer: tokio::task::JoinHandle<T>,
) -> Result<Result<T, tokio::task::JoinError>, WireError> {
    let mut tick = tokio::time::interval(wire::COMMIT_KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut writer => return Ok(done),
            _ = tick.tick(), if keepalive => send(w, &Message::Committing { cut }).await?,
        }
    }
}

/// A receiver store's failure: logged here, and told to the peer with its whole
/// cause chain ("i/o error on .../staging.log: No space left on device").
/// A refusal before authentication completed (a changed key): logged here, and told
/// to the peer.
fn refused(r: Refusal) -> Message {
    tracing::warn!(error = %r, "peer connection refused");
    r.into()
}

fn stored(set: &str, r: Refusal) -> Message {
    tracing::warn!(set = %set, error = %r, "receiver store failed");
    r.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_of_pending_connections_drops_the_oldest_to_admit_a_new_one() {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let mut admitted: Vec<Admission> = (0..MAX_PENDING)
            .map(|_| Admission::admit(&pending))
            .collect();
        for a in &mut admitted {
            assert!(a
                .evicted
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        }
        let newest = Admission::admit(&pending);
        assert_eq!(pending.lock().queue.len(), MAX_PENDING);
        // The oldest is told to go; the others and the newest stay.
        assert_eq!(
            admitted[0].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        for a in &mut admitted[1..] {
            assert_eq!(
                a.evicted.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            );
        }
        // Leaving (authenticated or refused) frees the place at once.
        drop(admitted.remove(5));
        assert_eq!(pending.lock().queue.len(), MAX_PENDING - 1);
        let another = Admission::admit(&pending);
        assert_eq!(
            admitted[1].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "admitted without dropping anyone while there was room"
        );
        drop((newest, another, admitted));
        assert!(pending.lock().queue.is_empty());
    }
}
