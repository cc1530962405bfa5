//! The secondary side: `serve --replication-listen ADDR` accepts peer connections.
//! Each must prove it knows the secret of one of this node's peers before anything
//! else; the peer it proved is then the only one whose sets it may touch.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use super::recovery::{CutMeta, ExtentData};
use super::wire::{self, auth, Frame, Message, PointView, WireError, PROTOCOL_VERSION};
use crate::admin::replication::{accept_secondary, drop_secondary};
use crate::catalog::ReplicationRole;
use crate::server::Node;
use crate::throttle::Source;

/// Accepts peer connections until the node goes away.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "replication listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        let span = tracing::info_span!("peer", %addr);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = connection(node, stream, addr).await {
                    tracing::info!(error = %e, "peer connection ended");
                }
            },
            span,
        ));
    }
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = BufWriter<tokio::net::tcp::OwnedWriteHalf>;

async fn send(w: &mut Writer, m: &Message) -> Result<(), WireError> {
    wire::write_message(w, m).await
}

fn error(code: &str, message: impl Into<String>) -> Message {
    Message::Error {
        code: code.into(),
        message: message.into(),
    }
}

/// A receiver store's failure: logged here and told to the peer with its whole cause
/// chain ("i/o error on .../staging.log: No space left on device").
fn stored_error(code: &str, set: &str, e: &super::recovery::RecoveryError) -> Message {
    let why = crate::chain::ErrorChain(e).to_string();
    tracing::warn!(set = %set, error = %why, "receiver store failed");
    error(code, why)
}

/// The challenge-response: returns the name of the peer whose secret the client
/// proved, or `None` after telling it why not. Guessing is slowed per source address
/// (`throttle`): a proof is checked only after the delay the address owes for its
/// recent failures, right or wrong, and only this connection waits.
async fn authenticate(
    r: &mut Reader,
    w: &mut Writer,
    node: &Node,
    addr: std::net::SocketAddr,
) -> Result<Option<String>, WireError> {
    let theirs = match wire::read_message(r).await? {
        Message::Hello { version, nonce } if version == PROTOCOL_VERSION => nonce,
        Message::Hello { version, .. } => {
            let m = format!(
                "this node speaks replication protocol version {PROTOCOL_VERSION}, not {version}"
            );
            send(w, &error("version", m)).await?;
            return Ok(None);
        }
        _ => {
            send(w, &error("protocol", "expected hello")).await?;
            return Ok(None);
        }
    };
    let ours = auth::nonce();
    send(
        w,
        &Message::Challenge {
            version: PROTOCOL_VERSION,
            nonce: ours.clone(),
            compress: wire::codecs(),
        },
    )
    .await?;
    let Message::Proof { mac } = wire::read_message(r).await? else {
        send(w, &error("protocol", "expected proof")).await?;
        return Ok(None);
    };
    let source = [Source::Address(addr.ip())];
    let delay = node
        .peer_auth_throttle
        .lock()
        .delay(&source, Instant::now());
    if !delay.is_zero() {
        tracing::debug!(?delay, "peer proof held back after recent failures");
        tokio::time::sleep(delay).await;
    }
    let peers: Vec<(String, String)> = node
        .catalog
        .read()
        .peers
        .iter()
        .map(|(n, p)| (n.clone(), p.secret.clone()))
        .collect();
    let found = peers
        .into_iter()
        .find(|(_, secret)| auth::verify(secret, auth::CLIENT, &theirs, &ours, &mac));
    let Some((name, secret)) = found else {
        let (failures, next_delay) = {
            let mut throttle = node.peer_auth_throttle.lock();
            let failures = throttle.failed(&source, Instant::now());
            (failures, throttle.policy().delay_after(failures))
        };
        tracing::warn!(address = %addr.ip(), failures, ?next_delay, "peer failed to prove a known secret: authentication failed");
        send(w, &error("auth_failed", "authentication failed")).await?;
        return Ok(None);
    };
    node.peer_auth_throttle.lock().succeeded(&source);
    let mac = auth::prove(&secret, auth::SERVER, &ours, &theirs);
    send(w, &Message::Welcome { mac }).await?;
    Ok(Some(name))
}

async fn connection(
    node: Arc<Node>,
    stream: TcpStream,
    addr: std::net::SocketAddr,
) -> Result<(), WireError> {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    // Smaller than an extent frame: most of a frame's body is read straight into its
    // buffer rather than copied through this one.
    let mut r = BufReader::with_capacity(64 << 10, r);
    let mut w = BufWriter::new(w);
    let Some(peer) = authenticate(&mut r, &mut w, &node, addr).await? else {
        w.flush().await?;
        return Ok(());
    };
    tracing::info!(peer = %peer, "peer authenticated");
    loop {
        let m = match wire::read_message(&mut r).await {
            Ok(m) => m,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let answer = match m {
            Message::Ping => Message::Pong,
            Message::CreateSet {
                set,
                group,
                volumes,
                keep,
                ..
            } => {
                let peer = peer.clone();
                admin_change(&node, move |n| {
                    accept_secondary(n, &set, &peer, group.as_deref(), &volumes, keep)
                })
                .await
            }
            Message::DeleteSet { set } => match owned_set(&node, &peer, &set) {
                Err(m) => m,
                Ok(()) => admin_change(&node, move |n| drop_secondary(n, &set)).await,
            },
            Message::Reset { set, generation } => match owned_set(&node, &peer, &set) {
                Err(m) => m,
                Ok(()) => match node.receiver(&set) {
                    None => error("not_found", format!("no secondary set '{set}' here")),
                    Some(store) => {
                        let mut store = store.lock().await;
                        match tokio::task::block_in_place(|| store.reset(generation)) {
                            Ok(()) => Message::Ok,
                            Err(e) => stored_error("io", &set, &e),
                        }
                    }
                },
            },
            Message::RecoveryPoints { set } => match node.receiver_summary(&set) {
                None => error("not_found", format!("no secondary set '{set}' here")),
                Some(summary) => Message::Points {
                    points: summary
                        .points
                        .into_iter()
                        .map(|p| PointView {
                            cut: p.cut,
                            taken_unix: p.taken_unix,
                            undo_bytes: p.undo_bytes,
                        })
                        .collect(),
                },
            },
            Message::BeginCut {
                set,
                generation,
                cut,
                taken_unix,
                full,
                base,
            } => {
                if let Err(m) = owned_set(&node, &peer, &set) {
                    send(&mut w, &m).await?;
                    continue;
                }
                let Some(store) = node.receiver(&set) else {
                    send(
                        &mut w,
                        &error("not_found", format!("no secondary set '{set}' here")),
                    )
                    .await?;
                    continue;
                };
                let keep = node
                    .catalog
                    .read()
                    .replications
                    .get(&set)
                    .map_or(1, |r| r.keep as usize);
                // A cut committed by an attempt whose answer was lost.
                let at = store.lock().await.current().map(|c| (c.generation, c.cut));
                if at == Some((generation, cut)) {
                    send(&mut w, &Message::Committed { cut }).await?;
                    continue;
                }
                // Changes apply only on top of the cut they were computed from.
                if !full {
                    let mut st = store.lock().await;
                    let at = st.current().map(|c| (c.generation, c.cut));
                    // A primary that crashed after we committed its last cut, before it
                    // recorded that, computes from the cut before: that cut is our
                    // previous recovery point, and the primary resends everything since.
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
                        let m = format!(
                            "the secondary is at {}, not at cut {} of generation {generation}: restart replication",
                            at.map_or("no cut".to_string(), |(g, c)| format!("cut {c} of generation {g}")),
                            base.map_or("-".to_string(), |b| b.to_string()),
                        );
                        // The sender waits for `Begun` before any extent: nothing follows.
                        send(&mut w, &error("base", m)).await?;
                        continue;
                    }
                }
                receive_cut(
                    &mut r,
                    &mut w,
                    &set,
                    store,
                    CutMeta {
                        generation,
                        cut,
                        taken_unix,
                    },
                    keep,
                )
                .await?;
                continue;
            }
            _ => error("protocol", "unexpected message"),
        };
        send(&mut w, &answer).await?;
    }
}

/// Runs a catalog change the peer asked for on a blocking thread (it fsyncs) and
/// answers `Ok` or why not.
async fn admin_change<F>(node: &Arc<Node>, change: F) -> Message
where
    F: FnOnce(&Node) -> Result<(), crate::admin::AdminError> + Send + 'static,
{
    let node = node.clone();
    match tokio::task::spawn_blocking(move || change(&node)).await {
        Ok(Ok(())) => Message::Ok,
        Ok(Err(e)) => error("refused", e.to_string()),
        Err(e) => error("internal", e.to_string()),
    }
}

/// The set exists here as a secondary of `peer`.
fn owned_set(node: &Node, peer: &str, set: &str) -> Result<(), Message> {
    match node.catalog.read().replications.get(set) {
        Some(r) if r.role == ReplicationRole::Secondary && r.peer == peer => Ok(()),
        Some(_) => Err(error(
            "refused",
            format!("set '{set}' here is not a secondary of this peer"),
        )),
        None => Err(error("not_found", format!("no secondary set '{set}' here"))),
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
        Err(e) => return send(w, &stored_error("refused", set, &e)).await,
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
    let writer = tokio::task::spawn_blocking(move || {
        // After a refused extent nothing more is staged: the cut is refused at its end.
        let mut failed: Option<super::recovery::RecoveryError> = None;
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
        }
        (store, failed)
    });
    let ended = loop {
        match wire::read_frame(r).await {
            // A writer that is gone (it panicked) shows when it is joined below.
            Ok(Frame::Extent(e)) => drop(tx.send(e).await),
            Ok(Frame::Control(Message::EndCut { cut: end, .. })) if end == cut => break Ok(true),
            Ok(Frame::Control(_)) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    // The writer ends once it has written every extent queued.
    drop(tx);
    let written = writer.await;
    if !ended? {
        return send(w, &error("protocol", "expected extents or the cut's end")).await;
    }
    let (mut store, failed) = match written {
        Ok(x) => x,
        Err(e) => return send(w, &error("internal", e.to_string())).await,
    };
    if let Some(why) = failed {
        return send(w, &stored_error("refused", set, &why)).await;
    }
    match tokio::task::block_in_place(|| store.commit_and_apply(keep)) {
        Ok(()) => send(w, &Message::Committed { cut }).await,
        Err(e) => send(w, &stored_error("io", set, &e)).await,
    }
}
