//! One TCP connection: the login phase, then the full feature phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::events::EventKind;
use crate::iscsi::discovery::{TextContext, TextExchange};
use crate::iscsi::login::{Login, LoginError, LoginStep};
use crate::iscsi::params::{SessionType, TargetSettings};
use crate::iscsi::pdu::{Digests, FrameLimits, LoginResponse, Pdu};
use crate::iscsi::pdu::{Reject, TextRequest};
use crate::iscsi::Request;
use crate::scsi::alua::TargetPort;
use crate::server::directory::Directory;
use crate::server::ffp::{Ffp, Setup};
use crate::server::frames::{FrameReader, ReadError};
use crate::server::luns::LunView;
use crate::server::presence::ConnPresence;
use crate::server::registry::SessionEntry;
use crate::server::writer::{self, Traffic, Window};
use crate::server::Shared;
use crate::throttle::Source;

/// A connection that sends no login PDU for this long is dropped, so half-open
/// connections do not pile up.
const LOGIN_PDU_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Login PDUs carry at most this much text each (RFC 7143 §12.12: the default
/// MaxRecvDataSegmentLength of 8192 applies during login).
const LOGIN_SEGMENT_MAX: u32 = 8192;

pub async fn serve(
    node: Arc<Shared>,
    stream: TcpStream,
    settings: Arc<TargetSettings>,
    shutdown: watch::Receiver<bool>,
    port: TargetPort,
) {
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let span = tracing::info_span!("conn", peer = ?peer);
    async move {
        let (Some(peer), Some(local)) = (peer, local) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = serve_inner(node, stream, peer, local, settings, shutdown, port).await {
            debug!(error = %e, "connection ended");
        }
    }
    .instrument(span)
    .await
}

async fn send_now(
    w: &mut (impl AsyncWriteExt + Unpin),
    pdu: Pdu,
    traffic: &Traffic,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    pdu.encode(Digests::default(), &mut buf);
    traffic
        .bytes_out
        .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
    w.write_all(&buf).await
}

/// The `reason` label of a refused login: the Status-Class and Status-Detail of the
/// Login Response (RFC 7143 §11.13.5) as a short fixed name.
fn refusal_reason(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0x02, 0x01) => "authentication",
        (0x02, 0x02) => "authorization",
        (0x02, 0x03) => "target-not-found",
        (0x02, 0x04) => "target-removed",
        (0x02, 0x05) => "unsupported-version",
        (0x02, 0x06) => "too-many-connections",
        (0x02, 0x07) => "missing-parameter",
        (0x02, 0x08) => "cannot-include-in-session",
        (0x02, 0x09) => "session-type-not-supported",
        (0x02, 0x0a) => "session-does-not-exist",
        (0x02, 0x0b) => "invalid-request-during-login",
        (0x02, _) => "initiator-error",
        (0x03, _) => "target-error",
        _ => "other",
    }
}

async fn serve_inner(
    node: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    settings: Arc<TargetSettings>,
    shutdown: watch::Receiver<bool>,
    port: TargetPort,
) -> std::io::Result<()> {
    // Each portal is its own iSCSI target portal group (RFC 7143 §4.4.1), which is
    // its SCSI target port and its ALUA target port group: one number for all three.
    let tpgt = port.group;
    let _counted = node.metrics.connection();
    let presence = Arc::new(ConnPresence::new(&stream));
    let (rd, mut wr) = stream.into_split();
    let traffic = Arc::new(Traffic::default());
    let mut reader = FrameReader::new(
        rd,
        FrameLimits {
            digests: Digests::default(),
            max_data_segment: LOGIN_SEGMENT_MAX,
        },
    );
    let dir = Directory::new(node.clone());
    let mut login = Login::new((*settings).clone(), local, tpgt);
    let mut bytes_in = 0u64;
    // The names the login requests declared, for the event of a refusal (the login
    // state machine forgets them when it fails).
    let mut declared = Declared::default();
    // The login phase (RFC 7143 §6): only Login requests until it completes.
    let (mut response, outcome) = loop {
        let next = tokio::time::timeout(LOGIN_PDU_TIMEOUT, reader.next(&mut bytes_in)).await;
        let Ok(next) = next else {
            info!("no login request within {LOGIN_PDU_TIMEOUT:?}; closing the connection");
            return Ok(());
        };
        let pdu = match next {
            Ok(p) => p,
            Err(ReadError::Frame(e)) => {
                warn!(error = %e, "bad PDU during login");
                let r = login_error_response(0x00);
                send_now(&mut wr, r.to_pdu(), &traffic).await?;
                return Ok(());
            }
            Err(e) => {
                debug!(error = %e, "connection ended during login");
                return Ok(());
            }
        };
        let req = match Request::parse(pdu) {
            Ok(Request::Login(req)) => req,
            other => {
                // §6.1: anything but a Login request here ends the login with an
                // initiator error.
                warn!(request = ?other.map(|r| std::mem::discriminant(&r)), "non-login PDU during login");
                let r = login_error_response(0x00);
                send_now(&mut wr, r.to_pdu(), &traffic).await?;
                return Ok(());
            }
        };
        // CHAP guessing is slowed per source (§12.1.3; `throttle`): before a
        // CHAP response is checked, wait what this address and initiator owe for
        // their recent failures. Only this connection's task sleeps.
        let chap_check = login.awaits_chap_response();
        let sources = if chap_check {
            let mut v = vec![Source::Address(peer.ip())];
            if let Some(name) = login.initiator_name() {
                v.push(Source::Initiator(name.to_owned()));
            }
            v
        } else {
            Vec::new()
        };
        if chap_check {
            let delay = node.auth_throttle.lock().delay(&sources, Instant::now());
            if !delay.is_zero() {
                debug!(?delay, "CHAP response held back after recent failures");
                tokio::time::sleep(delay).await;
            }
        }
        declared.note(&req.data);
        let step = login.handle(&req, &dir);
        if chap_check {
            note_chap_outcome(&node, &login, &step, &sources, peer);
        }
        match step {
            LoginStep::Continue(r) => send_now(&mut wr, r.to_pdu(), &traffic).await?,
            LoginStep::Fail(r) => {
                let reason = match login.failure() {
                    Some(e) => e.to_string(),
                    None => "refused by the login state machine".to_string(),
                };
                node.metrics
                    .login_refused(refusal_reason(r.status_class, r.status_detail));
                info!(
                    initiator = declared.initiator.as_deref().unwrap_or("?"),
                    target = declared.target.as_deref().unwrap_or("?"),
                    class = r.status_class,
                    detail = r.status_detail,
                    %reason,
                    "login refused"
                );
                node.events.emit_with(|| EventKind::LoginRefused {
                    initiator: declared.initiator.clone(),
                    target: declared.target.clone(),
                    address: peer.to_string(),
                    reason,
                    status_class: r.status_class,
                    status_detail: r.status_detail,
                });
                send_now(&mut wr, r.to_pdu(), &traffic).await?;
                let _ = wr.shutdown().await;
                return Ok(());
            }
            LoginStep::Done(r, outcome) => break (r, outcome),
        }
    };
    traffic
        .bytes_in
        .fetch_add(bytes_in, std::sync::atomic::Ordering::Relaxed);

    let discovery = outcome.session_type == SessionType::Discovery;
    let target = outcome.target_name.clone().unwrap_or_default();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (entry, replaced) = node.sessions.register(|tsih| SessionEntry {
        target: target.clone(),
        initiator: outcome.initiator_name.clone(),
        isid: outcome.isid,
        tsih,
        negotiated: outcome.negotiated.clone(),
        traffic: traffic.clone(),
        stop: stop_tx,
    });
    for old in replaced {
        // §6.3.5: session reinstatement; the old session's tasks end with it.
        info!(tsih = old.tsih, "reinstating session: closing the old one");
        let _ = old.stop.send(true);
    }
    response.tsih = entry.tsih;
    send_now(&mut wr, response.to_pdu(), &traffic).await?;

    let span = tracing::info_span!(
        "session",
        initiator = %outcome.initiator_name,
        isid = %hex::encode(outcome.isid),
        tsih = entry.tsih,
        target = %target,
    );
    info!(parent: &span, discovery, "logged in");
    node.events.emit_with(|| EventKind::SessionLogin {
        initiator: outcome.initiator_name.clone(),
        target: target.clone(),
        tsih: entry.tsih,
        isid: hex::encode(outcome.isid),
        address: peer.to_string(),
        discovery,
    });
    let logout_event = {
        let (initiator, target, tsih) =
            (outcome.initiator_name.clone(), target.clone(), entry.tsih);
        move || EventKind::SessionLogout {
            initiator,
            target,
            tsih,
        }
    };

    // Shutdown of the whole server also stops this session.
    let mut shutdown = shutdown;
    let stop_on_shutdown = {
        let entry = entry.clone();
        tokio::spawn(
            async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    let _ = entry.stop.send(true);
                }
            }
            .instrument(span.clone()),
        )
    };
    stop_rx.mark_unchanged();

    let digests = Digests {
        header: outcome.conn.header_digest,
        data: outcome.conn.data_digest,
    };
    reader.limits = FrameLimits {
        digests,
        max_data_segment: outcome.conn.max_recv_data_segment_length,
    };
    let window = Window::new(outcome.cmd_sn, settings.cmd_window.max(1));
    let (tx, rx) = mpsc::channel(256);
    let writer = tokio::spawn(
        writer::run(
            wr,
            rx,
            window.clone(),
            outcome.stat_sn,
            digests,
            traffic.clone(),
        )
        .instrument(span.clone()),
    );
    let text = {
        let dir = Directory::new(node.clone());
        let initiator = outcome.initiator_name.clone();
        let target_name = outcome.target_name.clone();
        let session_type = outcome.session_type;
        let max_send = outcome.conn.max_send_data_segment_length;
        // The other portals, by group; a wildcard one as the address this connection
        // reached (the initiator knows it routes there), if of the same family.
        let other_portals: Vec<(SocketAddr, u16)> = node
            .portals
            .read()
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let group = u16::try_from(i + 1).ok()?;
                let mut a = *a;
                if a.ip().is_unspecified() {
                    if a.is_ipv4() != local.is_ipv4() {
                        return None;
                    }
                    a.set_ip(local.ip());
                }
                (group != tpgt).then_some((a, group))
            })
            .collect();
        let mut exchange = TextExchange::new();
        Box::new(move |req: &TextRequest| {
            let ctx = TextContext {
                session_type,
                initiator_name: &initiator,
                target_name: target_name.as_deref(),
                portal: local,
                tpgt,
                other_portals: &other_portals,
                max_send_data_segment_length: max_send,
            };
            match exchange.handle(req, &ctx, &dir) {
                Ok(r) => r.to_pdu(),
                Err(e) => {
                    debug!(error = %e, "text request rejected");
                    let r = Reject {
                        reason: e.reject_reason() as u8,
                        stat_sn: 0,
                        exp_cmd_sn: 0,
                        max_cmd_sn: 0,
                        data_sn: 0,
                        header: req.to_pdu().bhs,
                    };
                    r.to_pdu()
                }
            }
        })
    };
    let mut ffp = Ffp::new(Setup {
        node: node.clone(),
        reader,
        out: tx,
        window,
        session: outcome.session,
        conn: outcome.conn,
        cid: outcome.cid,
        discovery,
        luns: LunView::new(target, port, presence.clone()),
        entry: entry.clone(),
        stop: stop_rx,
        text,
        presence: presence.clone(),
    });
    ffp.run().instrument(span.clone()).await;
    drop(ffp);
    presence.end();
    // The writer ends once every task holding a sender has finished.
    let _ = writer.await;
    stop_on_shutdown.abort();
    node.sessions.unregister(&entry);
    info!(parent: &span, "session closed");
    node.events.emit_with(logout_event);
    Ok(())
}

/// InitiatorName and TargetName as the login requests declared them.
#[derive(Default)]
struct Declared {
    initiator: Option<String>,
    target: Option<String>,
}

impl Declared {
    /// Takes the names from one request's text; text that does not parse (a segment
    /// continued in the next PDU, garbage) leaves them as they were.
    fn note(&mut self, data: &[u8]) {
        let Ok(pairs) = crate::iscsi::text::parse(data) else {
            return;
        };
        for (k, v) in pairs {
            match k.as_str() {
                "InitiatorName" => self.initiator = Some(v),
                "TargetName" => self.target = Some(v),
                _ => {}
            }
        }
    }
}

/// Record the outcome of a CHAP check for the guessing delay.
fn note_chap_outcome(
    node: &Shared,
    login: &Login,
    step: &LoginStep,
    sources: &[Source],
    peer: SocketAddr,
) {
    let initiator = sources.iter().find_map(|s| match s {
        Source::Initiator(n) => Some(n.as_str()),
        Source::Address(_) => None,
    });
    match (step, login.failure()) {
        (LoginStep::Fail(_), Some(LoginError::Chap(reason))) => {
            let mut throttle = node.auth_throttle.lock();
            let failures = throttle.failed(sources, Instant::now());
            let next_delay = throttle.policy().delay_after(failures);
            drop(throttle);
            // The secret and the response never reach the log; the name and address do.
            warn!(
                initiator = initiator.unwrap_or("?"),
                address = %peer.ip(),
                %reason,
                failures,
                ?next_delay,
                "CHAP authentication failed"
            );
        }
        (LoginStep::Fail(_), _) => {}
        // The response was checked and accepted.
        _ if !login.awaits_chap_response() => node.auth_throttle.lock().succeeded(sources),
        _ => {}
    }
}

/// A Login response ending the login with an initiator error (class 2), for input the
/// login state machine never saw: an unreadable PDU (detail 0x00) or a PDU other than
/// Login (detail 0x0b, "invalid request during login", RFC 7143 §11.13.5).
fn login_error_response(detail: u8) -> LoginResponse {
    LoginResponse {
        transit: false,
        cont: false,
        csg: 0,
        nsg: 0,
        version_max: 0,
        version_active: 0,
        isid: [0; 6],
        tsih: 0,
        itt: 0,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        status_class: 2,
        status_detail: detail,
        data: bytes::Bytes::new(),
    }
}
