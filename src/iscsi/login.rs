//! The login phase (RFC 7143 §6.3, §11.12, §11.13) as a pure state machine.
//!
//! The server feeds every Login Request to [`Login::handle`] and sends what comes back.
//! Inside, each stage is a struct and a transition consumes it (rustls `server/hs.rs`
//! style): `Start` becomes `Security` or `Operational`, `Security` becomes `Operational`
//! or finishes, `Operational` finishes. Around the stages, [`Login`] does what is the
//! same in every stage: header checks, assembling C-bit text (§11.12.2), splitting long
//! answers (§11.13.2), StatSN, and turning errors into a status class/detail in one
//! place ([`LoginError::status`]).

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::catalog::ChapSpec;
use crate::iscsi::chap::{self, ChapError, ChapKeys};
use crate::iscsi::params::{
    classify, ConnParams, KeyClass, Negotiator, ParamError, SessionParams, SessionType,
    TargetSettings, NOT_UNDERSTOOD,
};
use crate::iscsi::pdu::{LoginRequest, LoginResponse, Stage};
use crate::iscsi::text::{self, Assembler, Pair, TextError, MAX_TEXT_LEN};

/// What the server knows about a target, for one login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetAccess {
    /// Initiator names allowed in; empty means open to all.
    pub acl: BTreeSet<String>,
    /// CHAP required when set. (`ChapSpec`'s Debug hides the secrets.)
    pub chap: Option<ChapSpec>,
}

/// The server's catalog, as the login and discovery see it.
pub trait TargetDirectory {
    /// The target named `target_name`, if this node serves it.
    fn lookup(&self, target_name: &str) -> Option<TargetAccess>;
    /// Names of the targets `initiator` may see (ACLs applied), for SendTargets.
    fn list_targets(&self, initiator: &str) -> Vec<String>;
    /// Whether a session `tsih` of `initiator` with `isid` to `target` (None for a
    /// Discovery session) is live, for a login that names a TSIH.
    fn session_exists(
        &self,
        initiator: &str,
        isid: [u8; 6],
        tsih: u16,
        target: Option<&str>,
    ) -> bool;
}

/// Everything the server needs once the login succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// The target of a Normal session; None for Discovery.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// TSIH of the Login Request: 0 for a new session, else the session to join.
    pub tsih_requested: u16,
    pub cid: u16,
    /// The next expected CmdSN (login requests are immediate and do not advance it).
    pub cmd_sn: u32,
    /// The StatSN the next response on this connection carries.
    pub stat_sn: u32,
    pub session: SessionParams,
    pub conn: ConnParams,
    /// Negotiated and declared keys with their results, in order, for `session list`.
    /// Our own MaxRecvDataSegmentLength appears as `TargetMaxRecvDataSegmentLength`.
    pub negotiated: Vec<(String, String)>,
}

/// What to do with one Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // once per connection; boxing buys nothing
pub enum LoginStep {
    /// Send this response and wait for the next Login Request.
    Continue(LoginResponse),
    /// Send this response (non-zero status) and close the connection (§6.3.?, §11.13.5).
    Fail(LoginResponse),
    /// Send this response (after setting its TSIH for a new session) and enter full
    /// feature phase with these results.
    Done(LoginResponse, LoginOutcome),
}

/// Why a login fails; [`LoginError::status`] is the one place that maps it to the wire.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("malformed login text")]
    Text(#[from] TextError),
    #[error("key negotiation error")]
    Param(#[from] ParamError),
    #[error("CHAP authentication failed")]
    Chap(#[from] ChapError),
    #[error("no supported version in the initiator's range")]
    UnsupportedVersion,
    #[error("InitiatorName missing from the first login request")]
    MissingInitiatorName,
    #[error("TargetName missing from the first login request of a Normal session")]
    MissingTargetName,
    #[error("InitiatorName empty or longer than 223 bytes")]
    BadInitiatorName,
    #[error("SessionType is neither Discovery nor Normal")]
    UnsupportedSessionType,
    #[error("no such target")]
    TargetNotFound,
    #[error("initiator not in the target's ACL")]
    NotAuthorized,
    #[error("no AuthMethod acceptable to both sides")]
    AuthMethodRefused,
    #[error("authentication is required but the security stage was skipped")]
    AuthRequired,
    #[error("key sent in a stage where it is not allowed")]
    KeyInWrongStage,
    #[error("InitiatorName, TargetName or SessionType re-declared with another value")]
    IdentityChanged,
    #[error("invalid CSG/NSG or stage transition")]
    BadStage,
    #[error("C and T bits both set")]
    ContinueWithTransit,
    #[error("ISID, TSIH or CID changed during login")]
    HeaderChanged,
    #[error("data sent while the target's answer was still being continued")]
    UnexpectedData,
    #[error("too many login PDUs")]
    TooManyPdus,
    #[error("login PDU after the login ended")]
    AfterCompletion,
    #[error("non-login PDU during login")]
    InvalidDuringLogin,
    #[error("the login names a TSIH that matches no live session")]
    SessionDoesNotExist,
}

impl LoginError {
    /// Status-Class and Status-Detail of the Login Response (§11.13.5).
    pub fn status(&self) -> (u8, u8) {
        match self {
            LoginError::Text(e) => e.status(),
            LoginError::Param(e) => e.status(),
            LoginError::Chap(e) => e.status(),
            // 0x0201 Authentication failure.
            LoginError::AuthMethodRefused | LoginError::AuthRequired => (0x02, 0x01),
            // 0x0202 Authorization failure.
            LoginError::NotAuthorized => (0x02, 0x02),
            // 0x0203 Not found.
            LoginError::TargetNotFound => (0x02, 0x03),
            // 0x0205 Unsupported version.
            LoginError::UnsupportedVersion => (0x02, 0x05),
            // 0x0207 Missing parameter.
            LoginError::MissingInitiatorName | LoginError::MissingTargetName => (0x02, 0x07),
            // 0x0209 Session type not supported.
            LoginError::UnsupportedSessionType => (0x02, 0x09),
            // 0x020a Session does not exist: "attempt to add a connection to a
            // nonexistent session".
            LoginError::SessionDoesNotExist => (0x02, 0x0a),
            // 0x020b Invalid request type during login.
            LoginError::InvalidDuringLogin => (0x02, 0x0b),
            // 0x0200 Initiator error (miscellaneous): protocol violations.
            LoginError::BadInitiatorName
            | LoginError::KeyInWrongStage
            | LoginError::IdentityChanged
            | LoginError::BadStage
            | LoginError::ContinueWithTransit
            | LoginError::HeaderChanged
            | LoginError::UnexpectedData
            | LoginError::TooManyPdus
            | LoginError::AfterCompletion => (0x02, 0x00),
        }
    }
}

/// The only version there is (§11.12.4).
const VERSION: u8 = 0x00;
/// §13.12: MaxRecvDataSegmentLength's 8192 default holds during login; the declared
/// values apply from full feature phase. Every login response segment fits in it.
pub const LOGIN_SEGMENT: usize = 8192;
/// A login takes a handful of exchanges (CHAP: 3-4); 64 bounds a conversation that
/// would otherwise never end.
pub const MAX_LOGIN_PDUS: u32 = 64;
/// §4.2.7.1: iSCSI names are at most 223 bytes.
const MAX_NAME_LEN: usize = 223;

/// Fields that must not change between the PDUs of one login.
#[derive(Debug, Clone, Copy)]
struct Header {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
}

/// Who logs in, gathered from the first text, and the negotiation so far.
#[derive(Debug)]
struct Ctx {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target_name: Option<String>,
    chap: Option<ChapSpec>,
    neg: Negotiator,
    declared_portal_group: bool,
    tpgt: u16,
    target_alias: Option<String>,
}

impl Ctx {
    /// A later InitiatorName/TargetName/SessionType must repeat the first value
    /// (libiscsi re-sends them in the operational stage); a new value is a protocol
    /// error (§6.3: a parameter is declared at most once).
    fn redeclare(&mut self, key: &str, value: &str) -> Result<(), LoginError> {
        let same = match key {
            "InitiatorName" => value == self.initiator_name,
            "SessionType" => value == self.session_type.as_str(),
            // A Discovery session has no target; a TargetName there is ignored.
            "TargetName" => match &self.target_name {
                Some(t) => value == t,
                None => true,
            },
            "InitiatorAlias" => match &self.initiator_alias {
                Some(a) => value == a,
                None => {
                    self.initiator_alias = Some(value.to_owned());
                    true
                }
            },
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(LoginError::IdentityChanged)
        }
    }

    /// §13.9: "TargetPortalGroupTag ... MUST be sent by the target in the first Login
    /// Response of a Normal session"; TargetAlias (§13.6) goes with it when set.
    fn first_declarations(&mut self, out: &mut Vec<Pair>) {
        if self.declared_portal_group || self.session_type != SessionType::Normal {
            return;
        }
        self.declared_portal_group = true;
        out.push(("TargetPortalGroupTag".into(), self.tpgt.to_string()));
        if let Some(a) = &self.target_alias {
            out.push(("TargetAlias".into(), a.clone()));
        }
    }
}

/// Where authentication stands in the security stage.
#[derive(Debug)]
enum Auth {
    /// AuthMethod not agreed yet.
    Pending,
    AwaitAlgorithm(chap::AwaitAlgorithm),
    AwaitResponse(chap::AwaitResponse),
    Done,
}

/// The outcome of one complete request text in a stage.
enum Advance {
    /// Stay in a login stage (maybe a new one) and answer with `pairs`; `transit` is the
    /// next stage when the response carries the T bit.
    Next {
        phase: Phase,
        pairs: Vec<Pair>,
        transit: Option<Stage>,
    },
    /// Answer with `pairs`, T bit, NSG = full feature phase.
    Done { ctx: Box<Ctx>, pairs: Vec<Pair> },
}

#[derive(Debug)]
enum Phase {
    Start,
    Security(Box<Security>),
    Operational(Box<Operational>),
    Finished,
}

/// The first text: identity keys decide the session type, the target and whether
/// authentication is required; the rest goes to the stage the initiator chose.
struct Start;

impl Start {
    fn begin(
        csg: Stage,
        pairs: Vec<Pair>,
        settings: &TargetSettings,
        tpgt: u16,
        dir: &dyn TargetDirectory,
    ) -> Result<(Ctx, Vec<Pair>), LoginError> {
        let mut initiator = None;
        let mut session_type = None;
        let mut target = None;
        let mut alias = None;
        let mut rest = Vec::new();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "InitiatorName" => &mut initiator,
                "SessionType" => &mut session_type,
                "TargetName" => &mut target,
                "InitiatorAlias" => &mut alias,
                _ => {
                    rest.push((k, v));
                    continue;
                }
            };
            if slot.replace(v).is_some() {
                return Err(ParamError::Duplicate.into());
            }
        }
        // §13.5: InitiatorName "MUST be sent by the initiator in the first Login Request".
        let initiator = initiator.ok_or(LoginError::MissingInitiatorName)?;
        if initiator.is_empty() || initiator.len() > MAX_NAME_LEN {
            return Err(LoginError::BadInitiatorName);
        }
        // §13.21: SessionType defaults to Normal.
        let session_type = match session_type.as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginError::UnsupportedSessionType),
        };
        let mut chap = None;
        let target_name = match session_type {
            // §13.4: TargetName "MUST be sent ... in the first Login Request" of a Normal
            // session. In a Discovery session it has no meaning and is ignored.
            SessionType::Discovery => None,
            SessionType::Normal => {
                let t = target.ok_or(LoginError::MissingTargetName)?;
                let access = dir.lookup(&t).ok_or(LoginError::TargetNotFound)?;
                if !access.acl.is_empty() && !access.acl.contains(&initiator) {
                    return Err(LoginError::NotAuthorized);
                }
                chap = access.chap;
                Some(t)
            }
        };
        // §6.3 / §12: when the target requires authentication, starting in the
        // operational stage skips it.
        if chap.is_some() && csg != Stage::Security {
            return Err(LoginError::AuthRequired);
        }
        let ctx = Ctx {
            session_type,
            initiator_name: initiator,
            initiator_alias: alias,
            target_name,
            chap,
            neg: Negotiator::new(settings, session_type),
            declared_portal_group: false,
            tpgt,
            target_alias: settings.target_alias.clone(),
        };
        Ok((ctx, rest))
    }
}

/// Security negotiation stage (§6.3.2, §12).
#[derive(Debug)]
struct Security {
    ctx: Ctx,
    auth: Auth,
}

impl Security {
    fn handle(mut self, pairs: Vec<Pair>, transit: Option<Stage>) -> Result<Advance, LoginError> {
        let mut out = Vec::new();
        self.ctx.first_declarations(&mut out);
        let mut chap_keys = ChapKeys::default();
        let mut method_agreed_now = false;
        for (k, v) in pairs {
            match classify(&k) {
                KeyClass::Identity => self.ctx.redeclare(&k, &v)?,
                KeyClass::Security if k == "AuthMethod" => {
                    self.ctx.neg.mark(&k)?;
                    let answer = self.negotiate_method(&v)?;
                    self.ctx.neg.negotiated.push((k.clone(), answer.into()));
                    out.push((k, answer.into()));
                    method_agreed_now = true;
                }
                KeyClass::Security => chap_keys.set(&k, &v)?,
                // Operational keys belong to the operational stage (§6.3.3).
                KeyClass::Operational => return Err(LoginError::KeyInWrongStage),
                KeyClass::TargetOnly => return Err(ParamError::TargetOnlyKey.into()),
                KeyClass::Unknown => {
                    self.ctx.neg.mark(&k)?;
                    out.push((k, NOT_UNDERSTOOD.into()));
                }
            }
        }
        self.auth = match self.auth {
            Auth::Pending | Auth::Done if !chap_keys.is_empty() => {
                return Err(ChapError::UnexpectedKey.into())
            }
            // The PDU that agreed on CHAP may not carry CHAP_A yet (libiscsi sends it next).
            Auth::AwaitAlgorithm(a) if chap_keys.is_empty() && method_agreed_now => {
                Auth::AwaitAlgorithm(a)
            }
            Auth::AwaitAlgorithm(a) => {
                let (next, reply) = a.on_algorithm(&chap_keys, &mut rand::thread_rng())?;
                out.extend(reply);
                Auth::AwaitResponse(next)
            }
            Auth::AwaitResponse(r) => {
                out.extend(r.verify(&chap_keys)?);
                debug!(initiator = %self.ctx.initiator_name, "CHAP authentication succeeded");
                Auth::Done
            }
            other => other,
        };
        let Some(next) = transit else {
            return Ok(self.stay(out));
        };
        match self.auth {
            Auth::Done => {}
            // §12: an initiator that never offered AuthMethod is taken as offering None;
            // when CHAP is required that is an authentication failure.
            Auth::Pending if !self.ctx.neg.seen("AuthMethod") => {
                if self.ctx.chap.is_some() {
                    return Err(LoginError::AuthRequired);
                }
                self.auth = Auth::Done;
            }
            // §6.3: the target may refuse to transit (T=0) until authentication is done.
            _ => return Ok(self.stay(out)),
        }
        Ok(match next {
            Stage::Operational => Advance::Next {
                phase: Phase::Operational(Box::new(Operational { ctx: self.ctx })),
                pairs: out,
                transit: Some(Stage::Operational),
            },
            Stage::FullFeature => Advance::Done {
                ctx: Box::new(self.ctx),
                pairs: out,
            },
            Stage::Security => return Err(LoginError::BadStage),
        })
    }

    fn stay(self, pairs: Vec<Pair>) -> Advance {
        Advance::Next {
            phase: Phase::Security(Box::new(self)),
            pairs,
            transit: None,
        }
    }

    /// §12.1: AuthMethod is a list; the target answers the first value it accepts.
    /// With CHAP configured we accept only CHAP; without, only None (an initiator that
    /// insists on CHAP against a target without a secret fails: 0x0201).
    fn negotiate_method(&mut self, offer: &str) -> Result<&'static str, LoginError> {
        let offered = |m: &str| offer.split(',').any(|v| v == m);
        match &self.ctx.chap {
            Some(spec) if offered("CHAP") => {
                self.auth = Auth::AwaitAlgorithm(chap::AwaitAlgorithm::new(spec.clone()));
                Ok("CHAP")
            }
            None if offered("None") => {
                self.auth = Auth::Done;
                Ok("None")
            }
            _ => Err(LoginError::AuthMethodRefused),
        }
    }
}

/// Operational negotiation stage (§6.3.3, §13).
#[derive(Debug)]
struct Operational {
    ctx: Ctx,
}

impl Operational {
    fn handle(mut self, pairs: Vec<Pair>, transit: Option<Stage>) -> Result<Advance, LoginError> {
        let mut out = Vec::new();
        self.ctx.first_declarations(&mut out);
        for (k, v) in pairs {
            match classify(&k) {
                KeyClass::Identity => self.ctx.redeclare(&k, &v)?,
                // §6.3.2: security keys only in the security stage.
                KeyClass::Security => return Err(LoginError::KeyInWrongStage),
                KeyClass::TargetOnly => return Err(ParamError::TargetOnlyKey.into()),
                KeyClass::Operational | KeyClass::Unknown => {
                    if let Some(answer) = self.ctx.neg.offer(&k, &v)? {
                        out.push((k, answer));
                    }
                }
            }
        }
        // §13.12: our MaxRecvDataSegmentLength is declared in the first response of the
        // operational stage, offered or not (open-iscsi otherwise assumes 8192).
        out.extend(self.ctx.neg.declarations());
        Ok(match transit {
            None => Advance::Next {
                phase: Phase::Operational(Box::new(self)),
                pairs: out,
                transit: None,
            },
            Some(Stage::FullFeature) => Advance::Done {
                ctx: Box::new(self.ctx),
                pairs: out,
            },
            Some(_) => return Err(LoginError::BadStage),
        })
    }
}

/// The rest of an answer too long for one PDU (§11.13.2, C bit), and how it ends.
#[derive(Debug)]
struct Outgoing {
    csg: Stage,
    chunks: VecDeque<Bytes>,
    transit: Option<Stage>,
    outcome: Option<LoginOutcome>,
}

/// One connection's login. Create with [`Login::new`], feed every Login Request to
/// [`Login::handle`].
#[derive(Debug)]
pub struct Login {
    settings: TargetSettings,
    /// The local end of the connection (for the server's TargetAddress answers).
    portal: SocketAddr,
    tpgt: u16,
    phase: Phase,
    /// The stage the next request must name in CSG (None before the first).
    stage: Option<Stage>,
    header: Option<Header>,
    rx: Assembler,
    tx: Option<Outgoing>,
    stat_sn: u32,
    pdus: u32,
    /// Why the login failed, once it has.
    failure: Option<LoginError>,
}

impl Login {
    pub fn new(settings: TargetSettings, portal: SocketAddr, tpgt: u16) -> Login {
        Login {
            settings: settings.sanitized(),
            portal,
            tpgt,
            phase: Phase::Start,
            stage: None,
            header: None,
            // The whole login's text is bounded, not just one message.
            rx: Assembler::new(MAX_TEXT_LEN),
            tx: None,
            stat_sn: 0,
            pdus: 0,
            failure: None,
        }
    }

    /// The next request's CHAP_N/CHAP_R will be checked (§12.1.3): the moment the
    /// server applies its guessing delay (`throttle`).
    pub fn awaits_chap_response(&self) -> bool {
        matches!(&self.phase, Phase::Security(s) if matches!(s.auth, Auth::AwaitResponse(_)))
    }

    /// The InitiatorName of the login, once the first request has named it.
    pub fn initiator_name(&self) -> Option<&str> {
        match &self.phase {
            Phase::Security(s) => Some(&s.ctx.initiator_name),
            Phase::Operational(o) => Some(&o.ctx.initiator_name),
            Phase::Start | Phase::Finished => None,
        }
    }

    /// Why the login failed, if it has.
    pub fn failure(&self) -> Option<LoginError> {
        self.failure
    }

    pub fn portal(&self) -> SocketAddr {
        self.portal
    }

    /// True once the login succeeded or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished) && self.tx.is_none()
    }

    /// Handle one Login Request.
    pub fn handle(&mut self, req: &LoginRequest, dir: &dyn TargetDirectory) -> LoginStep {
        match self.step(req, dir) {
            Ok(step) => step,
            Err(e) => {
                self.failure = Some(e);
                let (class, detail) = e.status();
                warn!(
                    isid = %hex::encode(req.isid),
                    reason = %e,
                    status_class = class,
                    status_detail = detail,
                    "login refused"
                );
                LoginStep::Fail(self.fail(req, e))
            }
        }
    }

    /// The response ending a login for `err`, for failures the server detects itself
    /// (a non-login PDU during login: [`LoginError::InvalidDuringLogin`]).
    pub fn fail(&mut self, req: &LoginRequest, err: LoginError) -> LoginResponse {
        self.phase = Phase::Finished;
        self.tx = None;
        if self.header.is_none() {
            self.stat_sn = req.exp_stat_sn;
        }
        let (class, detail) = err.status();
        let mut r = self.response(req, req.csg & 3, None, Bytes::new());
        r.status_class = class;
        r.status_detail = detail;
        r
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        dir: &dyn TargetDirectory,
    ) -> Result<LoginStep, LoginError> {
        if self.is_finished() {
            return Err(LoginError::AfterCompletion);
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginError::TooManyPdus);
        }
        self.check_header(req)?;

        // Our previous answer did not fit in one PDU: the initiator asks for the rest
        // with empty requests (§11.13.2 / §6.2).
        if let Some(mut tx) = self.tx.take() {
            if !req.data.is_empty() || req.cont {
                return Err(LoginError::UnexpectedData);
            }
            if req.csg != tx.csg as u8 {
                return Err(LoginError::BadStage);
            }
            let chunk = tx.chunks.pop_front().unwrap_or_default();
            if !tx.chunks.is_empty() {
                let csg = tx.csg as u8;
                self.tx = Some(tx);
                let r = self.response(req, csg, None, chunk);
                return Ok(LoginStep::Continue(LoginResponse { cont: true, ..r }));
            }
            // The last chunk carries the decision.
            return Ok(self.finish_response(req, tx.csg, tx.transit, chunk, tx.outcome));
        }

        // §11.12.2: "A Login Request with the C bit set to 1 MUST have the T bit set to 0."
        if req.cont && req.transit {
            return Err(LoginError::ContinueWithTransit);
        }
        let csg = Stage::from_bits(req.csg).ok_or(LoginError::BadStage)?;
        match self.stage {
            // The first request starts in the security or operational stage (§6.3).
            None if csg == Stage::FullFeature => return Err(LoginError::BadStage),
            None => {}
            Some(s) if s != csg => return Err(LoginError::BadStage),
            Some(_) => {}
        }
        self.stage = Some(csg);
        // §11.12.3: with T=1, NSG names a later stage; 2 is reserved.
        let transit = if req.transit {
            match Stage::from_bits(req.nsg) {
                Some(n) if (n as u8) > (csg as u8) => Some(n),
                _ => return Err(LoginError::BadStage),
            }
        } else {
            None
        };

        self.rx.push(&req.data)?;
        if req.cont {
            // §11.12.2 / §6.2: text continues; answer with an empty response.
            let r = self.response(req, csg as u8, None, Bytes::new());
            return Ok(LoginStep::Continue(r));
        }
        let pairs = text::parse(&self.rx.take())?;

        let advance = match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Start => {
                let (ctx, rest) = Start::begin(csg, pairs, &self.settings, self.tpgt, dir)?;
                // §11.12.4 / §11.13.5: a non-zero TSIH asks to join an existing session
                // (ISID, initiator and target must match it); when there is none the
                // answer is 0x020a "Session does not exist", not a new session.
                if req.tsih != 0
                    && !dir.session_exists(
                        &ctx.initiator_name,
                        req.isid,
                        req.tsih,
                        ctx.target_name.as_deref(),
                    )
                {
                    return Err(LoginError::SessionDoesNotExist);
                }
                debug!(
                    initiator = %ctx.initiator_name,
                    session_type = ctx.session_type.as_str(),
                    target = ?ctx.target_name,
                    "login started"
                );
                match csg {
                    Stage::Security => Security {
                        ctx,
                        auth: Auth::Pending,
                    }
                    .handle(rest, transit)?,
                    _ => Operational { ctx }.handle(rest, transit)?,
                }
            }
            Phase::Security(s) => s.handle(pairs, transit)?,
            Phase::Operational(o) => o.handle(pairs, transit)?,
            Phase::Finished => return Err(LoginError::AfterCompletion),
        };

        let (pairs, transit, outcome) = match advance {
            Advance::Next {
                phase,
                pairs,
                transit,
            } => {
                self.phase = phase;
                (pairs, transit, None)
            }
            Advance::Done { ctx, pairs } => {
                let outcome = self.outcome(*ctx, req);
                (pairs, Some(Stage::FullFeature), Some(outcome))
            }
        };
        if let Some(t) = transit {
            if t != Stage::FullFeature {
                self.stage = Some(t);
            }
        }

        let mut chunks: VecDeque<Bytes> = text::split(&text::encode(&pairs), LOGIN_SEGMENT).into();
        let first = chunks.pop_front().unwrap_or_default();
        if chunks.is_empty() {
            return Ok(self.finish_response(req, csg, transit, first, outcome));
        }
        // §11.13.2: a response longer than the initiator accepts goes out with C=1 and
        // T=0 until the last piece.
        self.tx = Some(Outgoing {
            csg,
            chunks,
            transit,
            outcome,
        });
        let r = self.response(req, csg as u8, None, first);
        Ok(LoginStep::Continue(LoginResponse { cont: true, ..r }))
    }

    fn check_header(&mut self, req: &LoginRequest) -> Result<(), LoginError> {
        let h = Header {
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
        };
        match self.header {
            None => {
                // §11.12.4: versions run from version_min to version_max; we only speak 0.
                // (Version-max is always >= 0.)
                if req.version_min > VERSION {
                    self.stat_sn = req.exp_stat_sn;
                    return Err(LoginError::UnsupportedVersion);
                }
                // §11.13.4: the first response's StatSN starts the connection's numbering;
                // we follow the initiator's ExpStatSN.
                self.stat_sn = req.exp_stat_sn;
                self.header = Some(h);
                Ok(())
            }
            // §11.12.5-§11.12.7: ISID, TSIH and CID identify the login; they stay fixed.
            Some(old) if old.isid != h.isid || old.tsih != h.tsih || old.cid != h.cid => {
                Err(LoginError::HeaderChanged)
            }
            Some(_) => Ok(()),
        }
    }

    fn finish_response(
        &mut self,
        req: &LoginRequest,
        csg: Stage,
        transit: Option<Stage>,
        data: Bytes,
        outcome: Option<LoginOutcome>,
    ) -> LoginStep {
        let r = self.response(req, csg as u8, transit, data);
        match outcome {
            Some(mut o) => {
                o.stat_sn = self.stat_sn;
                o.cmd_sn = req.cmd_sn;
                self.phase = Phase::Finished;
                LoginStep::Done(r, o)
            }
            None => LoginStep::Continue(r),
        }
    }

    /// A success-status response; each one consumes a StatSN (§11.13.4).
    fn response(
        &mut self,
        req: &LoginRequest,
        csg: u8,
        transit: Option<Stage>,
        data: Bytes,
    ) -> LoginResponse {
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        LoginResponse {
            transit: transit.is_some(),
            cont: false,
            csg,
            nsg: transit.map_or(0, |s| s as u8),
            version_max: VERSION,
            version_active: VERSION,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            stat_sn,
            // Login requests are immediate: CmdSN does not advance (§11.12.8).
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(self.settings.cmd_window - 1),
            status_class: 0,
            status_detail: 0,
            data,
        }
    }

    fn outcome(&self, ctx: Ctx, req: &LoginRequest) -> LoginOutcome {
        let (session, conn, negotiated) = ctx.neg.finish();
        LoginOutcome {
            session_type: ctx.session_type,
            initiator_name: ctx.initiator_name,
            initiator_alias: ctx.initiator_alias,
            target_name: ctx.target_name,
            isid: req.isid,
            tsih_requested: req.tsih,
            cid: req.cid,
            cmd_sn: req.cmd_sn,
            stat_sn: 0, // set when the last response goes out
            session,
            conn,
            negotiated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One target, open to all; a single live session (initiator "iqn.a", ISID 1, TSIH 7).
    struct Dir;

    impl TargetDirectory for Dir {
        fn lookup(&self, target_name: &str) -> Option<TargetAccess> {
            (target_name == "iqn.t").then(TargetAccess::default)
        }
        fn list_targets(&self, _: &str) -> Vec<String> {
            vec!["iqn.t".into()]
        }
        fn session_exists(
            &self,
            initiator: &str,
            isid: [u8; 6],
            tsih: u16,
            target: Option<&str>,
        ) -> bool {
            (initiator, isid, tsih, target) == ("iqn.a", [0, 0, 0, 0, 0, 1], 7, Some("iqn.t"))
        }
    }

    fn first_request(tsih: u16, initiator: &str) -> LoginRequest {
        let text = format!("InitiatorName={initiator}\0TargetName=iqn.t\0AuthMethod=None\0");
        LoginRequest {
            transit: true,
            cont: false,
            csg: 0,
            nsg: 1,
            version_max: 0,
            version_min: 0,
            isid: [0, 0, 0, 0, 0, 1],
            tsih,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: Bytes::from(text),
        }
    }

    fn status(step: &LoginStep) -> (u8, u8) {
        match step {
            LoginStep::Continue(r) | LoginStep::Fail(r) | LoginStep::Done(r, _) => {
                (r.status_class, r.status_detail)
            }
        }
    }

    #[test]
    fn a_tsih_naming_no_session_is_refused() {
        let portal = "127.0.0.1:3260".parse().unwrap();
        let cases = [
            // (TSIH, initiator, expected status, login goes on)
            (0, "iqn.a", (0, 0), true),
            (7, "iqn.a", (0, 0), true),
            (8, "iqn.a", (2, 0x0a), false),
            // The session exists, but is another initiator's.
            (7, "iqn.b", (2, 0x0a), false),
        ];
        for (tsih, initiator, want, goes_on) in cases {
            let mut login = Login::new(TargetSettings::default(), portal, 1);
            let step = login.handle(&first_request(tsih, initiator), &Dir);
            assert_eq!(status(&step), want, "TSIH {tsih} from {initiator}");
            assert_eq!(matches!(step, LoginStep::Continue(_)), goes_on);
        }
    }
}
