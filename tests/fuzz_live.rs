//! A PDU fuzzer against the real server. Several fuzz connections log in properly and
//! then send mutated PDUs: bit flips in header fields, wrong opcodes, bad
//! DataSegmentLength and AHS lengths, random CDBs of every opcode with random fields,
//! Data-Out for unknown tags, headers that stop halfway, abrupt closes and oversized
//! segments. Meanwhile a canary session on another target writes and reads back a
//! known pattern and checks every byte.
//!
//! The seed is printed; `TWINLUN_FUZZ_SEED=N` replays it and `TWINLUN_FUZZ_SECS=N`
//! sets how long the fuzzers run (60 s by default). The seed fixes the sequence of
//! choices of each fuzz connection; the time budget only says how far into it the run
//! gets, and how the server's answers interleave can differ between replays.
//!
//! At the end the server must still run, answer a fresh login and `ctl status`, the
//! canary must have read every byte right, no connection may have hung (every probe is
//! answered or the connection closed, within the server's own timeouts), and the
//! server's log must hold no panic.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{RawClient, RecvEvent};
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::digest::crc32c;
use twinlun::iscsi::pdu::{
    pad_len, Bhs, DataOut, Digests, LoginRequest, LogoutRequest, NopIn, NopOut, Opcode, Pdu, R2t,
    Reject, ScsiCommand, TextRequest, TmfFunction, TmfRequest, BHS_LEN, RESERVED_TAG,
};
use twinlun::iscsi::session::timers::{PING_IDLE, PING_TIMEOUT_DELIVERED};

/// The fuzzers' target: two LUNs of their own, so nothing they do reaches the canary's.
const FUZZ_IQN: &str = "iqn.2026-11.test:fuzz";
const CANARY_INITIATOR: &str = "iqn.2026-11.test:canary";
const WORKERS: u64 = 4;
/// Blocks of the fuzz volumes (64 MiB of 512-byte blocks on LUN 0).
const FUZZ_BLOCKS: u64 = 64 << 11;
/// The canary's region of the demo volume.
const CANARY_REGION: usize = 8 << 20;
/// How long an in-step connection's probe may take on a loaded machine: it is
/// answered at once, so only a connection neither answered nor closed by then has
/// hung.
const SERVER_BOUND: Duration = Duration::from_secs(120);
/// The longest the server itself keeps a connection that owes it nothing and hears
/// nothing (`iscsi::session::timers`: a NOP-In ping after `PING_IDLE`, closed
/// `PING_TIMEOUT` later if unanswered, or `PING_TIMEOUT_DELIVERED` when the host's TCP
/// took the ping; a task waiting for Data-Out is dropped after `DATA_OUT_TIMEOUT`),
/// with room for a loaded machine. A desynchronised connection's probe may be read as
/// part of some other PDU the server drops without a word (a command outside the
/// window, RFC 7143 §4.2.2.1); then only this bound applies.
const DESYNC_BOUND: Duration = Duration::from_secs(
    PING_IDLE.as_secs() + PING_TIMEOUT_DELIVERED.as_secs() + SERVER_BOUND.as_secs(),
);
/// Kept open at once per worker: connections left hanging after a half header.
const MAX_HUNG: usize = 16;

/// SplitMix64: small, and the same sequence on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// What the fuzz connections saw, added up.
#[derive(Default, Debug)]
struct Counts {
    connections: u64,
    pdus_sent: u64,
    bytes_sent: u64,
    /// Answers by opcode name.
    answers: BTreeMap<&'static str, u64>,
    /// Rejects by reason code.
    rejects: BTreeMap<u8, u64>,
    r2ts_answered: u64,
    closed_by_server: u64,
    abrupt_closes: u64,
    half_headers: u64,
    half_headers_closed_by_server: u64,
    half_headers_still_open: u64,
    /// Closed by us while still open, to keep at most MAX_HUNG at once per worker.
    half_headers_dropped: u64,
    probes_answered: u64,
    probes_closed: u64,
    slow_verdicts: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.connections += o.connections;
        self.pdus_sent += o.pdus_sent;
        self.bytes_sent += o.bytes_sent;
        for (k, v) in o.answers {
            *self.answers.entry(k).or_default() += v;
        }
        for (k, v) in o.rejects {
            *self.rejects.entry(k).or_default() += v;
        }
        self.r2ts_answered += o.r2ts_answered;
        self.closed_by_server += o.closed_by_server;
        self.abrupt_closes += o.abrupt_closes;
        self.half_headers += o.half_headers;
        self.half_headers_closed_by_server += o.half_headers_closed_by_server;
        self.half_headers_still_open += o.half_headers_still_open;
        self.half_headers_dropped += o.half_headers_dropped;
        self.probes_answered += o.probes_answered;
        self.probes_closed += o.probes_closed;
        self.slow_verdicts += o.slow_verdicts;
    }
}

fn opcode_name(op: Opcode) -> &'static str {
    match op {
        Opcode::NOP_IN => "NOP-In",
        Opcode::SCSI_RESPONSE => "SCSI Response",
        Opcode::TMF_RESPONSE => "TMF Response",
        Opcode::LOGIN_RESPONSE => "Login Response",
        Opcode::TEXT_RESPONSE => "Text Response",
        Opcode::DATA_IN => "Data-In",
        Opcode::LOGOUT_RESPONSE => "Logout Response",
        Opcode::R2T => "R2T",
        Opcode::ASYNC_MESSAGE => "Async Message",
        Opcode::REJECT => "Reject",
        _ => "other",
    }
}

/// The wire bytes of a PDU whose header says exactly what `bhs` says (lengths included,
/// even when they do not match `ahs` and `data`), with digests when negotiated.
fn frame(bhs: &Bhs, ahs: &[u8], data: &[u8], digests: Digests) -> Vec<u8> {
    let mut out = Vec::with_capacity(BHS_LEN + ahs.len() + data.len() + 12);
    out.extend_from_slice(&bhs.0);
    out.extend_from_slice(ahs);
    if digests.header {
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if !data.is_empty() {
        let start = out.len();
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, pad_len(data.len())));
        if digests.data {
            let crc = crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
    out
}

/// Opcodes the random CDBs start with: everything the server implements, the block
/// commands it does not (yet), and a few service-action opcodes.
const CDB_OPCODES: &[u8] = &[
    0x00, 0x03, 0x04, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1d, 0x1e, 0x25, 0x28, 0x2a,
    0x2e, 0x2f, 0x35, 0x41, 0x42, 0x48, 0x4d, 0x55, 0x5a, 0x5e, 0x5f, 0x7f, 0x83, 0x84, 0x88, 0x89,
    0x8a, 0x8e, 0x8f, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xae, 0xaf,
];

/// A CDB with random fields; more often than not its LBA and length are small enough
/// that the command really moves data on the fuzz volume.
fn random_cdb(rng: &mut Rng) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb.copy_from_slice(&rng.bytes(16));
    cdb[0] = if rng.chance(75) {
        rng.pick(CDB_OPCODES)
    } else {
        rng.below(256) as u8
    };
    if rng.chance(60) {
        let lba = rng.below(FUZZ_BLOCKS + FUZZ_BLOCKS / 8);
        let len = rng.below(256) as u32;
        match cdb[0] >> 5 {
            0 => {
                cdb[1] = (lba >> 16) as u8 & 0x1f;
                cdb[2] = (lba >> 8) as u8;
                cdb[3] = lba as u8;
                cdb[4] = len as u8;
                cdb[5] = 0;
            }
            1 | 2 => {
                cdb[1] &= 0x0a;
                cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                cdb[6] = 0;
                cdb[7..9].copy_from_slice(&(len as u16).to_be_bytes());
                cdb[9] = 0;
            }
            5 => {
                cdb[1] &= 0x0a;
                cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                cdb[6..10].copy_from_slice(&len.to_be_bytes());
                cdb[11] = 0;
            }
            _ => {
                cdb[1] &= 0x0a;
                cdb[2..10].copy_from_slice(&lba.to_be_bytes());
                cdb[10..14].copy_from_slice(&len.to_be_bytes());
                cdb[15] = 0;
            }
        }
    }
    cdb
}

/// What became of a fuzz connection's step.
#[derive(PartialEq, Eq, Debug)]
enum Fate {
    /// Still in step with the server, as far as we know.
    Open,
    /// We sent a header whose lengths do not match what followed: the server reads our
    /// later bytes as some other PDU, or waits for the rest.
    Desynced,
    /// The server closed it.
    Closed,
    /// We stopped halfway through a PDU and send nothing more.
    HalfHeader,
    /// We closed it ourselves, abruptly.
    Abrupt,
}

struct FuzzConn {
    c: RawClient,
    /// The largest data segment the target accepts (its MaxRecvDataSegmentLength).
    target_max: u32,
    /// Tags used lately, for Data-Out, TMF and duplicate-tag cases.
    recent_itts: Vec<u32>,
    fate: Fate,
    /// What went out lately, first bytes of each write (opcode byte, flags, length):
    /// told when the connection hangs.
    sent: Vec<String>,
}

impl FuzzConn {
    fn login(addr: SocketAddr, initiator: &str, rng: &mut Rng) -> FuzzConn {
        let mut c = RawClient::connect(addr);
        // A login on a busy machine may take a while; it must not fail for that.
        c.sock.set_read_timeout(Some(SERVER_BOUND)).unwrap();
        let digests = Digests {
            header: rng.chance(30),
            data: rng.chance(30),
        };
        let max_recv = rng.pick(&[512u32, 8192, 65536, 262_144]);
        let r = c.login_with(initiator, FUZZ_IQN, digests, max_recv);
        let pairs = twinlun::iscsi::text::parse(&r.data).expect("the target's login text");
        let target_max = pairs
            .iter()
            .find(|(k, _)| k == "MaxRecvDataSegmentLength")
            .map(|(_, v)| v.parse().expect("MaxRecvDataSegmentLength value"))
            .unwrap_or(8192);
        FuzzConn {
            c,
            target_max,
            recent_itts: Vec::new(),
            fate: Fate::Open,
            sent: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8], counts: &mut Counts) {
        counts.bytes_sent += bytes.len() as u64;
        if self.sent.len() >= 12 {
            self.sent.remove(0);
        }
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.sent.push(format!(
            "{} bytes [{}] {:?}",
            bytes.len(),
            head.join(" "),
            self.fate
        ));
        if self.c.sock.write_all(bytes).is_err() {
            self.fate = Fate::Closed;
        }
    }

    fn itt(&mut self, rng: &mut Rng) -> u32 {
        let itt = if !self.recent_itts.is_empty() && rng.chance(10) {
            rng.pick(&self.recent_itts)
        } else if rng.chance(2) {
            RESERVED_TAG
        } else {
            self.c.next_itt()
        };
        if self.recent_itts.len() >= 16 {
            self.recent_itts.remove(0);
        }
        self.recent_itts.push(itt);
        itt
    }

    /// CmdSN for a new command: mostly the expected one, sometimes anywhere.
    fn cmd_sn(&mut self, immediate: bool, rng: &mut Rng) -> u32 {
        match rng.below(100) {
            0..=84 => {
                let sn = self.c.cmd_sn;
                if !immediate {
                    self.c.cmd_sn = sn.wrapping_add(1);
                }
                sn
            }
            85..=94 => self.c.cmd_sn.wrapping_add(rng.below(64) as u32),
            _ => rng.u32(),
        }
    }

    fn lun(&mut self, rng: &mut Rng) -> u64 {
        match rng.below(100) {
            0..=79 => u64::from_be_bytes(twinlun::scsi::encode_lun(rng.below(2)).unwrap()),
            80..=89 => u64::from_be_bytes(twinlun::scsi::encode_lun(rng.below(400)).unwrap()),
            _ => rng.next(),
        }
    }

    /// A well-formed PDU of a random kind (the base the mutations start from).
    fn template(&mut self, rng: &mut Rng) -> Pdu {
        let exp_stat_sn = self.c.exp_stat_sn;
        match rng.below(100) {
            0..=9 => {
                let len = rng.below(300) as usize;
                let immediate = rng.chance(50);
                NopOut {
                    immediate,
                    lun: 0,
                    itt: self.itt(rng),
                    ttt: RESERVED_TAG,
                    cmd_sn: self.cmd_sn(immediate, rng),
                    exp_stat_sn,
                    data: Bytes::from(rng.bytes(len)),
                }
                .to_pdu()
            }
            10..=39 => self.scsi_command(rng),
            40..=59 => self.io_command(rng),
            60..=67 => {
                let immediate = rng.chance(50);
                let referenced_tag = if !self.recent_itts.is_empty() && rng.chance(60) {
                    rng.pick(&self.recent_itts)
                } else {
                    rng.u32()
                };
                TmfRequest {
                    immediate,
                    function: TmfFunction::from_code(rng.below(16) as u8),
                    lun: self.lun(rng),
                    itt: self.itt(rng),
                    referenced_tag,
                    cmd_sn: self.cmd_sn(immediate, rng),
                    exp_stat_sn,
                    ref_cmd_sn: self.c.cmd_sn.wrapping_sub(rng.below(8) as u32),
                    exp_data_sn: rng.below(4) as u32,
                }
                .to_pdu()
            }
            68..=75 => {
                let text: Vec<u8> = match rng.below(4) {
                    0 => b"SendTargets=All\0".to_vec(),
                    1 => format!("SendTargets={FUZZ_IQN}\0").into_bytes(),
                    2 => b"MaxRecvDataSegmentLength=4096\0X-fuzz=\xff\xfe\0=\0\0".to_vec(),
                    _ => {
                        let n = rng.below(600) as usize;
                        rng.bytes(n)
                    }
                };
                let immediate = rng.chance(50);
                TextRequest {
                    immediate,
                    final_bit: rng.chance(80),
                    cont: rng.chance(10),
                    lun: 0,
                    itt: self.itt(rng),
                    ttt: if rng.chance(80) {
                        RESERVED_TAG
                    } else {
                        rng.u32()
                    },
                    cmd_sn: self.cmd_sn(immediate, rng),
                    exp_stat_sn,
                    data: Bytes::from(text),
                }
                .to_pdu()
            }
            76..=87 => self.data_out(rng, None),
            88..=90 => {
                let immediate = rng.chance(50);
                LogoutRequest {
                    immediate,
                    reason: rng.below(4) as u8,
                    itt: self.itt(rng),
                    cid: rng.below(2) as u16,
                    cmd_sn: self.cmd_sn(immediate, rng),
                    exp_stat_sn,
                }
                .to_pdu()
            }
            91..=93 => {
                // A login request in the full feature phase.
                let text = format!("InitiatorName=iqn.2026-11.test:late\0TargetName={FUZZ_IQN}\0");
                LoginRequest {
                    transit: rng.chance(50),
                    cont: false,
                    csg: rng.below(4) as u8,
                    nsg: rng.below(4) as u8,
                    version_max: 0,
                    version_min: 0,
                    isid: common::raw::ISID,
                    tsih: rng.below(3) as u16,
                    itt: self.itt(rng),
                    cid: 0,
                    cmd_sn: self.c.cmd_sn,
                    exp_stat_sn,
                    data: Bytes::from(text.into_bytes()),
                }
                .to_pdu()
            }
            _ => {
                // Any opcode at all, SNACK and the target's own among them, over a
                // random header.
                let mut b = Bhs::default();
                b.0.copy_from_slice(&rng.bytes(BHS_LEN));
                b.0[0] = rng.below(0x40) as u8 | if rng.chance(30) { 0x40 } else { 0 };
                b.0[4] = 0;
                let len = rng.below(100) as usize;
                Pdu::new(b, Bytes::from(rng.bytes(len)))
            }
        }
    }

    fn scsi_command(&mut self, rng: &mut Rng) -> Pdu {
        let cdb = random_cdb(rng);
        let immediate = rng.chance(10);
        let write = rng.chance(45);
        let read = rng.chance(if write { 10 } else { 60 });
        let expected_len = match rng.below(10) {
            0..=5 => rng.below(256) as u32 * 512,
            6 => 0,
            7 => rng.below(1 << 20) as u32,
            _ => rng.u32(),
        };
        let data_len = if write && rng.chance(70) {
            let cap = (expected_len as u64).min(65536).min(self.target_max as u64);
            if rng.chance(10) {
                rng.below(self.target_max as u64 + 1) as usize
            } else {
                rng.below(cap + 1) as usize
            }
        } else {
            0
        };
        let cmd_sn = self.cmd_sn(immediate, rng);
        ScsiCommand {
            immediate,
            final_bit: rng.chance(85),
            read,
            write,
            attr: rng.below(8) as u8,
            lun: self.lun(rng),
            itt: self.itt(rng),
            expected_len,
            cmd_sn,
            exp_stat_sn: self.c.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data: Bytes::from(rng.bytes(data_len)),
        }
        .to_pdu()
    }

    /// A well-formed READ or WRITE (10 or 16) on one of the fuzz LUNs, up to 256 KiB:
    /// what the mutations start from when they should reach the data paths (immediate
    /// data, R2T and Data-Out, Data-In).
    fn io_command(&mut self, rng: &mut Rng) -> Pdu {
        let lun = rng.below(2);
        let block: u64 = if lun == 0 { 512 } else { 4096 };
        let total = (64 << 20) / block;
        let n = 1 + rng.below((256 << 10) / block);
        let lba = rng.below(total - n + 1);
        let write = rng.chance(50);
        let mut cdb = [0u8; 16];
        if rng.chance(50) {
            cdb[0] = if write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&(n as u32).to_be_bytes());
        } else {
            cdb[0] = if write { 0x2a } else { 0x28 };
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&(n as u16).to_be_bytes());
        }
        let expected_len = (n * block) as u32;
        let immediate_len = if write {
            // FirstBurstLength is 64 KiB (raw.rs's login), ImmediateData=Yes.
            expected_len.min(65536).min(self.target_max) as usize
        } else {
            0
        };
        let cmd_sn = self.cmd_sn(false, rng);
        ScsiCommand {
            immediate: false,
            final_bit: true,
            read: !write,
            write,
            attr: 1,
            lun: u64::from_be_bytes(twinlun::scsi::encode_lun(lun).unwrap()),
            itt: self.itt(rng),
            expected_len,
            cmd_sn,
            exp_stat_sn: self.c.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data: Bytes::from(rng.bytes(immediate_len)),
        }
        .to_pdu()
    }

    /// Data-Out: for the R2T given, or for a random (mostly unknown) task.
    fn data_out(&mut self, rng: &mut Rng, r2t: Option<&R2t>) -> Pdu {
        let (itt, ttt, offset, len) = match r2t {
            Some(r) => {
                let len = r.desired_len.min(self.target_max).min(1 << 20);
                (r.itt, r.ttt, r.buffer_offset, len)
            }
            None => {
                let itt = if !self.recent_itts.is_empty() && rng.chance(50) {
                    rng.pick(&self.recent_itts)
                } else {
                    rng.u32()
                };
                let ttt = if rng.chance(50) {
                    RESERVED_TAG
                } else {
                    rng.below(64) as u32
                };
                let len = rng.below(self.target_max.min(16384) as u64 + 1) as u32;
                (itt, ttt, rng.below(1 << 20) as u32, len)
            }
        };
        let lun = match r2t {
            Some(r) => r.lun,
            None => self.lun(rng),
        };
        DataOut {
            final_bit: r2t.is_some() || rng.chance(70),
            lun,
            itt,
            ttt,
            exp_stat_sn: self.c.exp_stat_sn,
            data_sn: if r2t.is_some() {
                0
            } else {
                rng.below(4) as u32
            },
            buffer_offset: offset,
            data: Bytes::from(rng.bytes(len as usize)),
        }
        .to_pdu()
    }

    /// One fuzz step: a PDU, mutated or not, and what we read back right after it.
    fn step(&mut self, rng: &mut Rng, counts: &mut Counts) {
        let pdu = self.template(rng);
        let digests = self.c.digests;
        let mut bhs = pdu.bhs;
        bhs.0[4] = 0;
        bhs.set_data_segment_len(pdu.data.len() as u32);
        let mut ahs: Vec<u8> = Vec::new();
        let mut data = pdu.data.to_vec();
        let mut fate_after = Fate::Open;
        match rng.below(100) {
            // As built: half the cases.
            0..=49 => {}
            // Bit flips anywhere in the header; the segments follow what it then says.
            50..=69 => {
                for _ in 0..=rng.below(6) {
                    let bit = rng.below(BHS_LEN as u64 * 8);
                    bhs.0[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
                self.fit_segments(&bhs, &mut ahs, &mut data, rng);
            }
            // A wrong opcode on an otherwise sound PDU.
            70..=74 => {
                bhs.0[0] = (bhs.0[0] & 0x40) | rng.below(0x40) as u8;
            }
            // Additional header segments of random length and content.
            75..=79 => {
                let most = if rng.chance(80) { 8 } else { 255 };
                bhs.0[4] = 1 + rng.below(most) as u8;
                self.fit_segments(&bhs, &mut ahs, &mut data, rng);
            }
            // A DataSegmentLength that does not match the data sent.
            80..=84 => {
                let wrong = if data.is_empty() || rng.chance(50) {
                    data.len() as u32 + 1 + rng.below(2048) as u32
                } else {
                    rng.below(data.len() as u64) as u32
                };
                bhs.set_data_segment_len(wrong);
                fate_after = Fate::Desynced;
            }
            // An oversized segment: beyond the target's MaxRecvDataSegmentLength.
            85..=89 => {
                let len =
                    self.target_max as u64 + 1 + rng.below(0xff_ffff - self.target_max as u64);
                bhs.set_data_segment_len(len as u32);
                let send = rng.below(len.min(1 << 18)) as usize;
                data = rng.bytes(send);
                fate_after = Fate::Desynced;
            }
            // One bit flipped anywhere in the frame as sent: the digests catch it when
            // they are on; without them it may fall in a length and put us out of step.
            90..=92 => {
                let mut bytes = frame(&bhs, &ahs, &data, digests);
                let flip = rng.below(bytes.len() as u64 * 8);
                bytes[(flip / 8) as usize] ^= 1 << (flip % 8);
                counts.pdus_sent += 1;
                self.put(&bytes, counts);
                if self.fate == Fate::Open {
                    self.fate = Fate::Desynced;
                }
                self.drain(rng, counts);
                return;
            }
            // A header (or PDU) that stops halfway: nothing more follows on this
            // connection.
            93..=96 => {
                let bytes = frame(&bhs, &ahs, &data, digests);
                // 1 to all but the last byte (a frame is at least the 48-byte header).
                let cut = 1 + rng.below(bytes.len() as u64 - 1) as usize;
                counts.pdus_sent += 1;
                self.put(&bytes[..cut], counts);
                if self.fate == Fate::Open {
                    self.fate = Fate::HalfHeader;
                }
                return;
            }
            // An abrupt close, perhaps in the middle of the PDU.
            _ => {
                let bytes = frame(&bhs, &ahs, &data, digests);
                let cut = rng.below(bytes.len() as u64 + 1) as usize;
                counts.pdus_sent += 1;
                self.put(&bytes[..cut], counts);
                let _ = self.c.sock.shutdown(Shutdown::Both);
                if self.fate == Fate::Open {
                    self.fate = Fate::Abrupt;
                }
                return;
            }
        }
        counts.pdus_sent += 1;
        let bytes = frame(&bhs, &ahs, &data, digests);
        self.put(&bytes, counts);
        if self.fate == Fate::Open {
            self.fate = fate_after;
        }
        self.drain(rng, counts);
    }

    /// Make the AHS and data as long as `bhs` says, when that is within what the target
    /// takes (else the header alone decides, and the data sent is whatever it was).
    fn fit_segments(&mut self, bhs: &Bhs, ahs: &mut Vec<u8>, data: &mut Vec<u8>, rng: &mut Rng) {
        *ahs = rng.bytes(bhs.total_ahs_len());
        let dsl = bhs.data_segment_len() as usize;
        if dsl <= self.target_max as usize {
            let old = data.len().min(dsl);
            data.truncate(old);
            data.extend_from_slice(&rng.bytes(dsl - old));
        } else if self.fate == Fate::Open {
            self.fate = Fate::Desynced;
        }
    }

    /// Note one PDU from the target; answer an R2T with its data most of the time.
    fn note(&mut self, p: Pdu, rng: &mut Rng, counts: &mut Counts) -> Pdu {
        let op = p.bhs.opcode();
        *counts.answers.entry(opcode_name(op)).or_default() += 1;
        // Most target PDUs carry StatSN at 24 and ExpCmdSN at 28 (RFC 7143 §11).
        let exp_cmd_sn = p.bhs.u32(28);
        if op != Opcode::DATA_IN && twinlun::iscsi::serial::lt(self.c.cmd_sn, exp_cmd_sn) {
            self.c.cmd_sn = exp_cmd_sn;
        }
        if matches!(
            op,
            Opcode::SCSI_RESPONSE
                | Opcode::NOP_IN
                | Opcode::TMF_RESPONSE
                | Opcode::TEXT_RESPONSE
                | Opcode::LOGOUT_RESPONSE
                | Opcode::REJECT
        ) && p.bhs.itt() != RESERVED_TAG
        {
            self.c.exp_stat_sn = p.bhs.u32(24).wrapping_add(1);
        }
        if op == Opcode::REJECT {
            let r = Reject::from_pdu(&p).expect("a Reject the target sent parses");
            *counts.rejects.entry(r.reason).or_default() += 1;
        }
        if op == Opcode::R2T && self.fate == Fate::Open && rng.chance(90) {
            let r = R2t::from_pdu(&p).expect("an R2T the target sent parses");
            let mut offset = 0;
            let mut data_sn = 0;
            while offset < r.desired_len && self.fate == Fate::Open {
                let part = R2t {
                    buffer_offset: r.buffer_offset + offset,
                    desired_len: r.desired_len - offset,
                    ..r.clone()
                };
                let mut d = self.data_out(rng, Some(&part));
                let len = d.data.len() as u32;
                if len == 0 {
                    break;
                }
                d.bhs.0[1] = if offset + len >= r.desired_len {
                    0x80
                } else {
                    0
                };
                d.bhs.set_u32(36, data_sn);
                d.bhs.set_data_segment_len(len);
                data_sn += 1;
                let bytes = frame(&d.bhs, &[], &d.data, self.c.digests);
                counts.pdus_sent += 1;
                self.put(&bytes, counts);
                offset += len;
            }
            counts.r2ts_answered += 1;
        }
        p
    }

    /// Read what the target sends until it goes quiet for a moment.
    fn drain(&mut self, rng: &mut Rng, counts: &mut Counts) {
        if self.fate == Fate::Closed {
            return;
        }
        self.c
            .sock
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        loop {
            match self.c.recv_event() {
                RecvEvent::Pdu(p) => {
                    self.note(p, rng, counts);
                }
                RecvEvent::Idle => return,
                RecvEvent::Closed => {
                    self.fate = Fate::Closed;
                    return;
                }
                RecvEvent::Corrupt(e) => panic!("the target sent bytes that are no PDU: {e}"),
            }
        }
    }

    /// Send the closing probe, an immediate NOP-Out (answered by a NOP-In, or a Reject
    /// quoting it); returns its tag for `verdict`.
    fn probe_sent(&mut self, counts: &mut Counts) -> u32 {
        let itt = self.c.next_itt().wrapping_add(0x4000_0000);
        let nop = NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.c.cmd_sn,
            exp_stat_sn: self.c.exp_stat_sn,
            data: Bytes::from_static(b"probe"),
        }
        .to_pdu();
        let bytes = frame(
            &{
                let mut b = nop.bhs;
                b.set_data_segment_len(nop.data.len() as u32);
                b
            },
            &[],
            &nop.data,
            self.c.digests,
        );
        counts.pdus_sent += 1;
        self.put(&bytes, counts);
        itt
    }

    /// Wait for the probe's verdict until `until`: Some(true) answered, Some(false)
    /// closed, None nothing yet.
    fn verdict(
        &mut self,
        itt: u32,
        until: Instant,
        rng: &mut Rng,
        counts: &mut Counts,
    ) -> Option<bool> {
        if self.fate == Fate::Closed {
            return Some(false);
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.c
                .sock
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .unwrap();
            match self.c.recv_event() {
                RecvEvent::Pdu(p) => {
                    let p = self.note(p, rng, counts);
                    if p.bhs.opcode() == Opcode::NOP_IN {
                        let n = NopIn::from_pdu(&p).expect("a NOP-In the target sent parses");
                        if n.itt == itt {
                            return Some(true);
                        }
                    }
                    if p.bhs.opcode() == Opcode::REJECT {
                        let r = Reject::from_pdu(&p).unwrap();
                        if r.header.itt() == itt {
                            return Some(true);
                        }
                    }
                }
                RecvEvent::Idle => {}
                RecvEvent::Closed => {
                    self.fate = Fate::Closed;
                    return Some(false);
                }
                RecvEvent::Corrupt(e) => panic!("the target sent bytes that are no PDU: {e}"),
            }
        }
    }
}

/// A connection whose probe had no verdict yet when its worker moved on.
struct Pending {
    conn: FuzzConn,
    itt: u32,
    since: Instant,
    label: String,
}

fn fuzz_worker(addr: SocketAddr, seed: u64, worker: u64, deadline: Instant) -> Counts {
    let mut rng = Rng(seed ^ worker.wrapping_mul(0xa076_1d64_78bd_642f));
    let mut counts = Counts::default();
    let mut hung: Vec<FuzzConn> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let initiator = format!("iqn.2026-11.test:fuzz-{worker}-{n}");
        let mut conn = FuzzConn::login(addr, &initiator, &mut rng);
        counts.connections += 1;
        let burst = 1 + rng.below(40);
        for _ in 0..burst {
            if conn.fate != Fate::Open || Instant::now() >= deadline {
                break;
            }
            conn.step(&mut rng, &mut counts);
        }
        match conn.fate {
            Fate::Closed => counts.closed_by_server += 1,
            Fate::Abrupt => counts.abrupt_closes += 1,
            Fate::HalfHeader => {
                counts.half_headers += 1;
                if hung.len() >= MAX_HUNG {
                    let old = hung.remove(0);
                    let _ = old.c.sock.shutdown(Shutdown::Both);
                    counts.half_headers_dropped += 1;
                }
                hung.push(conn);
            }
            Fate::Open | Fate::Desynced => {
                let itt = conn.probe_sent(&mut counts);
                let until = Instant::now() + Duration::from_millis(500);
                match conn.verdict(itt, until, &mut rng, &mut counts) {
                    Some(true) => counts.probes_answered += 1,
                    Some(false) => counts.probes_closed += 1,
                    None => pending.push(Pending {
                        conn,
                        itt,
                        since: Instant::now(),
                        label: initiator,
                    }),
                }
            }
        }
    }
    // Every probed connection gets its verdict within the server's own bounds.
    for mut p in pending {
        counts.slow_verdicts += 1;
        let bound = if p.conn.fate == Fate::Open {
            SERVER_BOUND
        } else {
            DESYNC_BOUND
        };
        match p
            .conn
            .verdict(p.itt, p.since + bound, &mut rng, &mut counts)
        {
            Some(true) => counts.probes_answered += 1,
            Some(false) => counts.probes_closed += 1,
            None => panic!(
                "connection {} ({:?}) neither answered its probe nor was closed within \
                 {bound:?}: it hangs; it sent lately {:#?}",
                p.label, p.conn.fate, p.conn.sent
            ),
        }
    }
    // Connections left mid-PDU: the server may close them (its ping goes unanswered)
    // or still wait for the rest; both are right. Count which.
    for mut h in hung {
        h.c.sock
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let closed = loop {
            match h.c.recv_event() {
                RecvEvent::Pdu(_) => continue,
                RecvEvent::Idle => break false,
                RecvEvent::Closed | RecvEvent::Corrupt(_) => break true,
            }
        };
        if closed {
            counts.half_headers_closed_by_server += 1;
        } else {
            counts.half_headers_still_open += 1;
        }
    }
    counts
}

/// What the canary did.
#[derive(Debug, Default)]
struct Canary {
    writes: u64,
    reads_checked: u64,
    bytes_checked: u64,
    /// The region's content as written, and the block size.
    model: Vec<u8>,
    block: usize,
}

/// The canary: a plain session on the demo target writing patterns into its region and
/// reading them back, checking every byte against its model, until told to stop; then
/// the whole region once more.
fn canary(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> Canary {
    let mut rng = Rng(seed ^ 0x00ca_0a27);
    let mut c = RawClient::connect(addr);
    // The canary must not give up before the server's own timeouts would have acted.
    c.sock.set_read_timeout(Some(SERVER_BOUND)).unwrap();
    c.login(
        CANARY_INITIATOR,
        DEMO_IQN,
        Digests {
            header: true,
            data: true,
        },
    );
    let cap = c.scsi_good(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    let block = u32::from_be_bytes([cap[4], cap[5], cap[6], cap[7]]) as usize;
    let blocks = CANARY_REGION / block;
    let mut model = vec![0u8; CANARY_REGION];
    let mut done = Canary::default();
    let max_blocks = 65536 / block;
    let check = |c: &mut RawClient, model: &[u8], lba: usize, n: usize, done: &mut Canary| {
        let got = c.read10(0, lba as u32, n as u16, block);
        let want = &model[lba * block..(lba + n) * block];
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "canary: {} bytes at LBA {lba} read back wrong (first difference at byte {at}: {:#04x} != {:#04x})",
                n * block,
                got[at],
                want[at]
            );
        }
        done.reads_checked += 1;
        done.bytes_checked += (n * block) as u64;
    };
    while !stop.load(Ordering::Acquire) {
        let n = 1 + rng.below(max_blocks as u64) as usize;
        let lba = rng.below((blocks - n) as u64 + 1) as usize;
        let data = rng.bytes(n * block);
        c.write10(0, lba as u32, &data, block);
        model[lba * block..(lba + n) * block].copy_from_slice(&data);
        done.writes += 1;
        check(&mut c, &model, lba, n, &mut done);
        // And somewhere written earlier.
        let n = 1 + rng.below(max_blocks as u64) as usize;
        let lba = rng.below((blocks - n) as u64 + 1) as usize;
        check(&mut c, &model, lba, n, &mut done);
    }
    for lba in (0..blocks).step_by(max_blocks) {
        check(&mut c, &model, lba, max_blocks.min(blocks - lba), &mut done);
    }
    done.model = model;
    done.block = block;
    done
}

#[test]
fn fuzzed_pdus_leave_the_server_and_other_sessions_intact() {
    let seed = env_u64("TWINLUN_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let secs = env_u64("TWINLUN_FUZZ_SECS").unwrap_or(60);
    println!("fuzz_live: seed {seed}, {secs} s (replay with TWINLUN_FUZZ_SEED={seed})");
    eprintln!("fuzz_live: seed {seed}, {secs} s (replay with TWINLUN_FUZZ_SEED={seed})");

    let mut s = TestServer::start_with(&[]);
    for (name, bs) in [("fuzz0", "512"), ("fuzz1", "4096")] {
        s.ctl_ok(&[
            "volume",
            "create",
            name,
            "--size",
            "64M",
            "--block-size",
            bs,
        ]);
    }
    s.ctl_ok(&["target", "create", FUZZ_IQN]);
    s.ctl_ok(&["lun", "map", FUZZ_IQN, "0", "fuzz0"]);
    s.ctl_ok(&["lun", "map", FUZZ_IQN, "1", "fuzz1"]);

    let stop = Arc::new(AtomicBool::new(false));
    let canary = {
        let (addr, stop) = (s.addr, stop.clone());
        std::thread::spawn(move || canary(addr, seed, stop))
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let addr = s.addr;
            std::thread::spawn(move || fuzz_worker(addr, seed, w, deadline))
        })
        .collect();
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for (w, h) in workers.into_iter().enumerate() {
        match h.join() {
            Ok(c) => counts.add(c),
            Err(e) => failures.push(format!(
                "fuzz worker {w}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    stop.store(true, Ordering::Release);
    let canary = canary.join();

    let summary = format!(
        "fuzz_live: seed {seed}: {} connections, {} PDUs ({} bytes) sent, {} R2Ts answered; \
         answers {:?}; rejects by reason {:?}; closed by the server {}, abrupt closes {}, \
         half headers {} ({} closed by the server by the end, {} still open, {} closed by us to bound them); probes answered {}, \
         probes met by a close {} ({} took over 0.5 s); canary (writes, reads checked, bytes checked) {:?}",
        counts.connections,
        counts.pdus_sent,
        counts.bytes_sent,
        counts.r2ts_answered,
        counts.answers,
        counts.rejects,
        counts.closed_by_server,
        counts.abrupt_closes,
        counts.half_headers,
        counts.half_headers_closed_by_server,
        counts.half_headers_still_open,
        counts.half_headers_dropped,
        counts.probes_answered,
        counts.probes_closed,
        counts.slow_verdicts,
        canary.as_ref().ok().map(|c| (c.writes, c.reads_checked, c.bytes_checked)),
    );
    println!("{summary}");
    eprintln!("{summary}");

    let canary = match canary {
        Ok(c) => c,
        Err(e) => {
            failures.push(format!(
                "canary: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ));
            Canary::default()
        }
    };
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    assert!(canary.writes > 0, "seed {seed}: the canary wrote nothing");

    // The server is still there, logs in a new session, and answers the admin socket.
    let alive = s.child.as_mut().expect("server child").try_wait().unwrap();
    assert!(alive.is_none(), "seed {seed}: the server exited: {alive:?}");
    let mut fresh = RawClient::connect(s.addr);
    fresh.login("iqn.2026-11.test:after", FUZZ_IQN, Digests::default());
    let inquiry = fresh.scsi(0, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(inquiry.status, 0, "seed {seed}: INQUIRY on a fresh session");
    let mut fresh = RawClient::connect(s.addr);
    fresh.login("iqn.2026-11.test:after-demo", DEMO_IQN, Digests::default());
    let head = fresh.read10(0, 0, (65536 / canary.block) as u16, canary.block);
    assert!(
        head == canary.model[..65536],
        "seed {seed}: a fresh session reads the canary's first 64 KiB wrong"
    );
    let status = s.ctl_ok(&["status"]);
    assert!(!status.trim().is_empty(), "seed {seed}: empty status");
    let log = s.stderr();
    if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
        panic!("seed {seed}: the server panicked: {line}");
    }
    assert!(counts.pdus_sent > 0 && counts.connections > 0);
}
