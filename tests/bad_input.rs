//! Malformed and out-of-order input on raw connections, while another session does
//! real I/O through QEMU's iSCSI driver. Each case gets the RFC's answer (Reject, login
//! failure, or the connection closed), and the other session's data stays correct.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::raw::RawClient;
use common::{qemu_io, TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::{
    Bhs, DataOut, Digests, LoginResponse, NopIn, NopOut, Opcode, Pdu, Reject, ScsiCommand, BHS_LEN,
    RESERVED_TAG,
};

const INITIATOR: &str = "iqn.2026-11.test:raw";

fn nop(c: &mut RawClient) -> Pdu {
    let itt = c.next_itt();
    NopOut {
        immediate: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        data: Bytes::from_static(b"ping"),
    }
    .to_pdu()
}

/// The connection still works: a NOP-Out is answered with its data echoed.
fn assert_alive(c: &mut RawClient) {
    let p = nop(c);
    let itt = p.bhs.itt();
    c.send(&p);
    c.cmd_sn += 1;
    loop {
        let r = c.recv().expect("connection died");
        if r.bhs.opcode() == Opcode::NOP_IN {
            let n = NopIn::from_pdu(&r).unwrap();
            if n.itt == itt {
                assert_eq!(&n.data[..], b"ping");
                c.exp_stat_sn = n.stat_sn.wrapping_add(1);
                return;
            }
        }
    }
}

fn expect_reject(c: &mut RawClient, reason: u8) -> Reject {
    let r = c.recv().expect("no answer: expected a Reject");
    assert_eq!(
        r.bhs.opcode(),
        Opcode::REJECT,
        "expected a Reject, got {:?}",
        r.bhs
    );
    let rej = Reject::from_pdu(&r).unwrap();
    assert_eq!(rej.reason, reason, "Reject reason");
    c.exp_stat_sn = rej.stat_sn.wrapping_add(1);
    rej
}

fn logged_in(s: &TestServer, digests: Digests) -> RawClient {
    let mut c = RawClient::connect(s.addr);
    c.login(INITIATOR, DEMO_IQN, digests);
    c
}

fn tur(c: &mut RawClient, cmd_sn: u32) -> Pdu {
    let itt = c.next_itt();
    ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: false,
        attr: 1,
        lun: 0,
        itt,
        expected_len: 0,
        cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: Bytes::from_static(&[0u8; 6]),
        bidi_read_len: None,
        data: Bytes::new(),
    }
    .to_pdu()
}

#[test]
fn malformed_input_is_answered_and_other_sessions_are_undisturbed() {
    let s = TestServer::start();
    let url = s.url(DEMO_IQN, 0);
    let stop = Arc::new(AtomicBool::new(false));
    // The other session: writes and verifies patterns until the malformed cases end.
    let io = other_session(url.clone(), stop.clone());

    // 1. An unknown opcode: Reject "command not supported", connection stays.
    let mut c = logged_in(&s, Digests::default());
    let mut b = Bhs::new(Opcode(0x1c));
    b.0[1] = 0x80;
    b.set_u32(16, 77);
    c.send(&Pdu::new(b, Bytes::new()));
    let rej = expect_reject(&mut c, 0x05);
    assert_eq!(
        rej.header.opcode(),
        Opcode(0x1c),
        "Reject must quote the header"
    );
    assert_alive(&mut c);

    // 2. A DataSegmentLength beyond what was negotiated: refused from the header alone
    // (the data is never sent), then the connection closes.
    let mut c = logged_in(&s, Digests::default());
    let mut p = tur(&mut c, 0);
    p.bhs.0[1] |= 0x20;
    let mut raw = [0u8; BHS_LEN];
    raw.copy_from_slice(&p.bhs.0);
    raw[5..8].copy_from_slice(&[0xff, 0xff, 0xf0]);
    c.send_bytes(&raw);
    expect_reject(&mut c, 0x04);
    assert!(
        c.closed(),
        "connection stayed open after an oversized segment"
    );

    // 3. A truncated header, then the initiator hangs up: nothing breaks.
    let mut c = logged_in(&s, Digests::default());
    c.send_bytes(&[0x01, 0x80, 0, 0, 0, 0, 0]);
    drop(c);

    // 4. A bad header digest: the stream cannot be trusted, the connection closes.
    let digests = Digests {
        header: true,
        data: true,
    };
    let mut c = logged_in(&s, digests);
    let p = nop(&mut c);
    let mut out = bytes::BytesMut::new();
    p.encode(digests, &mut out);
    out[BHS_LEN] ^= 0xff; // first byte of the header digest
    c.send_bytes(&out);
    assert!(
        c.closed(),
        "connection stayed open after a header digest error"
    );

    // 5. A bad data digest: Reject "data digest error", connection stays.
    let mut c = logged_in(&s, digests);
    let p = nop(&mut c);
    let mut out = bytes::BytesMut::new();
    p.encode(digests, &mut out);
    let n = out.len();
    out[n - 1] ^= 0xff; // last byte of the data digest
    c.send_bytes(&out);
    expect_reject(&mut c, 0x02);
    assert_alive(&mut c);

    // 6. Login text garbage: a login failure with an initiator error, then close.
    let mut c = RawClient::connect(s.addr);
    let p = c.login_pdu(0, 1, true, "this is not a key value pair\0\u{1}\u{2}=\0");
    c.send(&p);
    let r = LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap();
    assert_eq!(
        r.status_class, 2,
        "garbage login text must be an initiator error"
    );
    assert!(c.closed());

    // 7. Oversized login text: refused before the text is read.
    let mut c = RawClient::connect(s.addr);
    let p = c.login_pdu(0, 1, true, "InitiatorName=x\0");
    let mut raw = [0u8; BHS_LEN];
    raw.copy_from_slice(&p.bhs.0);
    raw[5..8].copy_from_slice(&[0x10, 0, 0]); // 1 MiB
    c.send_bytes(&raw);
    let r = LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap();
    assert_eq!(r.status_class, 2);
    assert!(c.closed());

    // 8. A SCSI command before login: login failure, connection closed.
    let mut c = RawClient::connect(s.addr);
    let p = tur(&mut c, 1);
    c.send(&p);
    let r = c.recv().expect("an answer to a command before login");
    assert_eq!(r.bhs.opcode(), Opcode::LOGIN_RESPONSE);
    assert_eq!(LoginResponse::from_pdu(&r).unwrap().status_class, 2);
    assert!(c.closed());

    // 9. CmdSN outside the window: silently ignored (RFC 7143 §4.2.2.1); the session
    // goes on and the ignored command is never answered.
    let mut c = logged_in(&s, Digests::default());
    let far = c.cmd_sn.wrapping_add(100_000);
    let p = tur(&mut c, far);
    let ignored_itt = p.bhs.itt();
    c.send(&p);
    let stale = c.cmd_sn.wrapping_sub(5);
    let p = tur(&mut c, stale);
    c.send(&p);
    assert_alive(&mut c);
    c.sock
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    while let Some(p) = c.recv() {
        assert_ne!(
            p.bhs.itt(),
            ignored_itt,
            "a command outside the window was executed"
        );
    }

    // 10. Data-Out for an unknown task: Reject "invalid PDU field", connection stays.
    let mut c = logged_in(&s, Digests::default());
    let d = DataOut {
        final_bit: true,
        lun: 0,
        itt: 0xdead,
        ttt: 0x1234,
        exp_stat_sn: c.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from(vec![0u8; 512]),
    };
    c.send(&d.to_pdu());
    expect_reject(&mut c, 0x09);
    assert_alive(&mut c);

    stop.store(true, Ordering::Relaxed);
    let rounds = io.join().expect("the other session's I/O thread panicked");
    assert!(rounds >= 2);
}

/// Bytes of 8 MiB transfers, and the demo volume's block size.
const BIG: u32 = 8 << 20;
const BLOCK: u32 = 512;

/// A SCSI command PDU with a 16-byte CDB `op` (READ(16) 0x88, WRITE(16) 0x8a) of
/// `blocks` at `lba`, no data.
fn cmd16(c: &mut RawClient, op: u8, immediate: bool, cmd_sn: u32, lba: u64, blocks: u32) -> Pdu {
    let mut cdb = [0u8; 16];
    cdb[0] = op;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let itt = c.next_itt();
    ScsiCommand {
        immediate,
        final_bit: true,
        read: op == 0x88,
        write: op == 0x8a,
        attr: 1,
        lun: 0,
        itt,
        expected_len: blocks * BLOCK,
        cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: Bytes::copy_from_slice(&cdb),
        bidi_read_len: None,
        data: Bytes::new(),
    }
    .to_pdu()
}

/// Send `pdus` in one go. The target may stop reading (backpressure): then the rest
/// is not sent, which is fine. Returns how many bytes went out.
fn flood(c: &mut RawClient, pdus: &[Pdu]) -> usize {
    use std::io::Write;
    let mut out = bytes::BytesMut::new();
    for p in pdus {
        p.encode(c.digests, &mut out);
    }
    c.sock
        .set_write_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut sent = 0;
    while sent < out.len() {
        match c.sock.write(&out[sent..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    sent
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// What came back on a flooded connection once it is read at last.
#[derive(Debug, Default)]
struct Answers {
    statuses: u32,
    rejects: Vec<u8>,
    r2ts: u32,
}

fn drain(c: &mut RawClient) -> Answers {
    c.sock
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut a = Answers::default();
    while let Some(p) = c.recv() {
        match p.bhs.opcode() {
            Opcode::SCSI_RESPONSE => a.statuses += 1,
            Opcode::DATA_IN if p.bhs.0[1] & 0x01 != 0 => a.statuses += 1,
            Opcode::REJECT => a.rejects.push(Reject::from_pdu(&p).unwrap().reason),
            Opcode::R2T => a.r2ts += 1,
            _ => {}
        }
    }
    a
}

/// The other session that malformed input and floods must not disturb: qemu-io writes
/// and reads back 8 MiB patterns through QEMU's iSCSI driver until `stop`, at least
/// twice.
fn other_session(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut rounds = 0u32;
        while !stop.load(Ordering::Relaxed) || rounds < 2 {
            let pat = format!("0x{:02x}", 0x20 + (rounds % 200));
            qemu_io(
                &url,
                &[
                    format!("write -P {pat} 16m 8m"),
                    format!("read -P {pat} 16m 8m"),
                ],
            );
            rounds += 1;
        }
        rounds
    })
}

/// A raw session writes, reads back and compares a few blocks.
fn write_read_verify(c: &mut RawClient, round: u32) {
    let lba = 8192 + round * 128;
    let data: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(31) ^ round) as u8)
        .collect();
    c.write10(0, lba, &data, BLOCK as usize);
    assert_eq!(c.read10(0, lba, 128, BLOCK as usize), data, "round {round}");
}

/// RFC 7143 §4.2.2.1 and bounded memory: floods of 8 MiB READ(16)s (non-immediate,
/// consecutive CmdSNs), of immediate READ(16)s, and of WRITE(16)s whose data never
/// comes, from initiators that never read their sockets, leave the server's RSS under
/// 256 MiB; commands beyond the window never run; other sessions keep working.
#[test]
fn command_floods_stay_within_memory_bounds() {
    let s = TestServer::start();
    let pid = s.child.as_ref().expect("server running").id();
    let stop = Arc::new(AtomicBool::new(false));
    let io = other_session(s.url(DEMO_IQN, 0), stop.clone());
    let blocks = BIG / BLOCK;

    let mut reads = RawClient::connect(s.addr);
    reads.login("iqn.2026-11.test:flood-reads", DEMO_IQN, Digests::default());
    let first = reads.cmd_sn;
    let pdus: Vec<Pdu> = (0..10_000u32)
        .map(|i| cmd16(&mut reads, 0x88, false, first.wrapping_add(i), 0, blocks))
        .collect();
    let sent_reads = flood(&mut reads, &pdus);

    let mut imm = RawClient::connect(s.addr);
    imm.login(
        "iqn.2026-11.test:flood-immediate",
        DEMO_IQN,
        Digests::default(),
    );
    let sn = imm.cmd_sn;
    let pdus: Vec<Pdu> = (0..1_000u32)
        .map(|i| cmd16(&mut imm, 0x88, true, sn, i as u64 * blocks as u64, blocks))
        .collect();
    let sent_imm = flood(&mut imm, &pdus);

    let mut writes = RawClient::connect(s.addr);
    writes.login(
        "iqn.2026-11.test:flood-writes",
        DEMO_IQN,
        Digests::default(),
    );
    let first = writes.cmd_sn;
    let pdus: Vec<Pdu> = (0..1_000u32)
        .map(|i| cmd16(&mut writes, 0x8a, false, first.wrapping_add(i), 0, blocks))
        .collect();
    let sent_writes = flood(&mut writes, &pdus);

    // While all three sit unread: another session does its I/O, and memory stays put.
    let mut other = RawClient::connect(s.addr);
    other.login("iqn.2026-11.test:bystander", DEMO_IQN, Digests::default());
    let mut peak_rss = 0;
    for round in 0..20 {
        write_read_verify(&mut other, round);
        peak_rss = peak_rss.max(proc_kib(pid, "VmRSS"));
        // Paces the sampling over about 2 s of the bystander's I/O; the verdict is
        // VmHWM, the kernel's own record of the peak, which no sleep decides.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hwm = proc_kib(pid, "VmHWM");
    eprintln!(
        "floods sent {sent_reads}/{sent_imm}/{sent_writes} bytes; server VmRSS peak sampled {} MiB, VmHWM {} MiB",
        peak_rss / 1024,
        hwm / 1024
    );
    assert!(
        hwm < 256 * 1024,
        "server peak RSS {} MiB under command floods",
        hwm / 1024
    );

    // What each flood got, once read at last.
    let a = drain(&mut reads);
    let b = drain(&mut imm);
    let w = drain(&mut writes);
    eprintln!(
        "answers: reads {a:?}, immediate {} statuses + {} rejects, writes {w:?}",
        b.statuses,
        b.rejects.len()
    );
    // The window (128 commands) plus the few whose answers the socket buffers took
    // while the initiator was not reading (each answered command opens the window by
    // one); nowhere near the 10,000 sent.
    assert!(
        a.statuses > 0 && a.statuses <= 128 + 8,
        "{} of 10,000 READs ran: only the window's 128 (and a few) may",
        a.statuses
    );
    assert!(b.statuses >= 1, "no immediate READ ran");
    assert!(
        !b.rejects.is_empty() && b.rejects.iter().all(|&r| r == 0x06),
        "immediate commands beyond the allowance get Reject 0x06: {:?}",
        &b.rejects[..b.rejects.len().min(8)]
    );
    assert!(
        b.statuses + b.rejects.len() as u32 <= 1_000,
        "more answers than immediate commands"
    );
    assert!(
        w.r2ts >= 1 && w.r2ts <= 3,
        "{} R2Ts: the session's Data-Out budget (24 MiB) covers three 8 MiB writes",
        w.r2ts
    );
    drop((reads, imm, writes));

    // After the floods: the bystander and new sessions still work.
    for round in 20..24 {
        write_read_verify(&mut other, round);
    }
    let mut c = logged_in(&s, Digests::default());
    assert_alive(&mut c);
    stop.store(true, Ordering::Relaxed);
    let rounds = io.join().expect("the other session's I/O thread panicked");
    assert!(rounds >= 2);
    assert!(proc_kib(pid, "VmHWM") < 256 * 1024);
}

/// The next answer that is not a NOP-In ping.
fn answer(c: &mut RawClient) -> Pdu {
    loop {
        let p = c.recv().expect("an answer");
        if p.bhs.opcode() == Opcode::NOP_IN && p.bhs.itt() == RESERVED_TAG {
            continue;
        }
        return p;
    }
}

/// RFC 7143 §11.1.4: a task's ITT is unique among the session's outstanding tasks.
/// SAM-5: a command reusing the tag of a task still in progress is an overlapped
/// command: CHECK CONDITION, ABORTED COMMAND, 4Eh/00h, and it does not run, whatever
/// the command (READ, TEST UNIT READY, WRITE); the first task goes on unharmed.
#[test]
fn a_tag_in_use_is_an_overlapped_command() {
    use twinlun::iscsi::pdu::{R2t, ScsiResponse};
    let s = TestServer::start();
    let mut c = logged_in(&s, Digests::default());
    // Past the unit attention of the new nexus.
    c.scsi_good(0, &[0u8; 6], &[], 0);
    // A WRITE(16) of 8 blocks without immediate data: the target asks for it (R2T) and
    // the task waits for its data.
    let sn = c.cmd_sn;
    let w = cmd16(&mut c, 0x8a, false, sn, 100, 8);
    let itt = w.bhs.itt();
    c.send(&w);
    c.cmd_sn += 1;
    let r2t = answer(&mut c);
    assert_eq!(r2t.bhs.opcode(), Opcode::R2T);
    let r2t = R2t::from_pdu(&r2t).unwrap();

    let overlapped = |c: &mut RawClient, mut p: Pdu, what: &str| {
        p.bhs.set_u32(16, itt);
        c.send(&p);
        c.cmd_sn += 1;
        let r = answer(c);
        assert_eq!(
            r.bhs.opcode(),
            Opcode::SCSI_RESPONSE,
            "{what} reusing a tag in use must not run"
        );
        let r = ScsiResponse::from_pdu(&r).unwrap();
        c.exp_stat_sn = r.stat_sn.wrapping_add(1);
        assert_eq!(r.itt, itt);
        assert_eq!(r.status, 0x02, "{what}: CHECK CONDITION");
        assert_eq!(r.sense[2] & 0x0f, 0x0b, "{what}: ABORTED COMMAND");
        assert_eq!((r.sense[12], r.sense[13]), (0x4e, 0x00), "{what}: 4E/00");
    };
    let sn = c.cmd_sn;
    let p = cmd16(&mut c, 0x88, false, sn, 0, 8);
    overlapped(&mut c, p, "READ(16)");
    let sn = c.cmd_sn;
    let p = tur(&mut c, sn);
    overlapped(&mut c, p, "TEST UNIT READY");
    let sn = c.cmd_sn;
    let p = cmd16(&mut c, 0x8a, false, sn, 200, 8);
    overlapped(&mut c, p, "WRITE(16)");

    // The first write completes with its data.
    let data = vec![0x5au8; 8 * BLOCK as usize];
    let d = DataOut {
        final_bit: true,
        lun: 0,
        itt,
        ttt: r2t.ttt,
        exp_stat_sn: c.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from(data.clone()),
    };
    c.send(&d.to_pdu());
    let r = answer(&mut c);
    let r = ScsiResponse::from_pdu(&r).unwrap();
    c.exp_stat_sn = r.stat_sn.wrapping_add(1);
    assert_eq!(
        (r.itt, r.status),
        (itt, 0),
        "the first WRITE completes GOOD"
    );
    assert_eq!(c.read10(0, 100, 8, BLOCK as usize), data);
    // Once answered, the tag is free again.
    let sn = c.cmd_sn;
    let mut p = tur(&mut c, sn);
    p.bhs.set_u32(16, itt);
    c.send(&p);
    c.cmd_sn += 1;
    let r = ScsiResponse::from_pdu(&answer(&mut c)).unwrap();
    c.exp_stat_sn = r.stat_sn.wrapping_add(1);
    assert_eq!(r.status, 0, "a finished task's tag can be used again");
}

/// RFC 7143 §11.18.5 / §13.12: a NOP-In echoes the ping data only up to the
/// initiator's MaxRecvDataSegmentLength. A 64 KiB ping from an initiator that receives
/// 8 KiB gets its first 8 KiB back, and the connection goes on.
#[test]
fn nop_in_echo_respects_the_initiators_max_recv_data_segment_length() {
    let s = TestServer::start();
    let mut c = RawClient::connect(s.addr);
    c.login_with(INITIATOR, DEMO_IQN, Digests::default(), 8192);
    let ping: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let itt = c.next_itt();
    let p = NopOut {
        immediate: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        data: Bytes::from(ping.clone()),
    }
    .to_pdu();
    c.send(&p);
    c.cmd_sn += 1;
    let r = answer(&mut c);
    assert_eq!(r.bhs.opcode(), Opcode::NOP_IN);
    let n = NopIn::from_pdu(&r).unwrap();
    c.exp_stat_sn = n.stat_sn.wrapping_add(1);
    assert_eq!(n.itt, itt);
    assert_eq!(n.data.len(), 8192, "echo cut to MaxRecvDataSegmentLength");
    assert_eq!(&n.data[..], &ping[..8192]);
    // Data-In respects the same limit.
    let data = c.read10(0, 0, 64, BLOCK as usize);
    assert_eq!(data.len(), 64 * BLOCK as usize);
    assert_alive(&mut c);
}

/// RFC 7143 §11.13.5: a login naming a TSIH that matches no session is refused with
/// Initiator Error / Session does not exist (02/0A), and the connection closes; the
/// TSIH of a live session of the same initiator and ISID goes on.
#[test]
fn a_login_naming_an_unknown_tsih_is_refused() {
    let s = TestServer::start();
    let mut live = RawClient::connect(s.addr);
    let tsih = live.login(INITIATOR, DEMO_IQN, Digests::default()).tsih;
    assert_ne!(tsih, 0);
    let sec = format!(
        "InitiatorName={INITIATOR}\0TargetName={DEMO_IQN}\0SessionType=Normal\0AuthMethod=None\0"
    );
    let with_tsih = |tsih: u16| {
        let mut c = RawClient::connect(s.addr);
        let mut p = c.login_pdu(0, 1, true, &sec);
        p.bhs.0[14..16].copy_from_slice(&tsih.to_be_bytes());
        c.send(&p);
        let r = LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap();
        (c, r)
    };
    let (mut c, r) = with_tsih(0x7777);
    assert_eq!((r.status_class, r.status_detail), (0x02, 0x0a));
    assert!(c.closed(), "the connection closes after a failed login");
    // The live session's own TSIH is accepted.
    let (_c, r) = with_tsih(tsih);
    assert_eq!((r.status_class, r.status_detail), (0, 0));
    drop(live);
}

/// The text pairs of a Login Response.
fn login_pairs(r: &LoginResponse) -> std::collections::HashMap<String, String> {
    r.data
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// One CHAP login as `initiator` with `secret`: the final response and how long it
/// took to come after CHAP_R was sent.
fn chap_login(
    s: &TestServer,
    initiator: &str,
    secret: &str,
) -> (LoginResponse, std::time::Duration) {
    let mut c = RawClient::connect(s.addr);
    let exchange = |c: &mut RawClient, transit: bool, text: &str| {
        let p = c.login_pdu(0, 1, transit, text);
        c.send(&p);
        let r = LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap();
        c.exp_stat_sn = r.stat_sn.wrapping_add(1);
        r
    };
    let r = exchange(
        &mut c,
        false,
        &format!("InitiatorName={initiator}\0TargetName={DEMO_IQN}\0SessionType=Normal\0AuthMethod=CHAP\0"),
    );
    assert_eq!(
        (r.status_class, login_pairs(&r)["AuthMethod"].as_str()),
        (0, "CHAP")
    );
    let r = exchange(&mut c, false, "CHAP_A=5\0");
    let pairs = login_pairs(&r);
    let id: u8 = pairs["CHAP_I"].parse().unwrap();
    let challenge = twinlun::iscsi::chap::decode_binary(&pairs["CHAP_C"]).unwrap();
    let answer = twinlun::iscsi::chap::response(id, secret.as_bytes(), &challenge);
    let text = format!(
        "CHAP_N=alice\0CHAP_R={}\0",
        twinlun::iscsi::chap::encode_hex(&answer)
    );
    let sent = std::time::Instant::now();
    let r = exchange(&mut c, true, &text);
    (r, sent.elapsed())
}

/// CHAP guessing slows down per source: after failed CHAP logins, the next CHAP
/// response waits a delay doubling from 100 ms (the policy of `throttle`)
/// before it is checked, right or wrong. Only lower bounds on time are asserted.
#[test]
fn wrong_chap_guesses_are_answered_ever_more_slowly() {
    use twinlun::throttle::Policy;
    let s = TestServer::start();
    s.ctl_ok(&[
        "chap",
        "set",
        DEMO_IQN,
        "--user",
        "alice",
        "--secret",
        "alice-secret-12",
    ]);
    let policy = Policy::default();
    let initiator = "iqn.2026-11.test:guesser";
    for n in 0..5u32 {
        let (r, took) = chap_login(&s, initiator, "wrong-secret-99");
        assert_eq!(
            (r.status_class, r.status_detail),
            (0x02, 0x01),
            "a wrong secret fails"
        );
        assert!(
            took >= policy.delay_after(n),
            "guess {} answered after {took:?}, before the policy's {:?}",
            n + 1,
            policy.delay_after(n)
        );
    }
    // The right secret still gets in (after the delay owed, which is bounded).
    let (r, took) = chap_login(&s, initiator, "alice-secret-12");
    assert_eq!(
        (r.status_class, r.status_detail),
        (0, 0),
        "the right secret logs in"
    );
    assert!(took >= policy.delay_after(5));
}

/// An initiator that answers the target's pings but never sends the data it was asked
/// for cannot hold its Data-Out budget forever: after `DATA_OUT_TIMEOUT` without data
/// the connection is closed (ErrorRecoveryLevel 0), and another session still writes.
#[test]
fn a_write_whose_data_never_comes_ends_the_connection() {
    use twinlun::server::ffp::DATA_OUT_TIMEOUT;
    let s = TestServer::start();
    let mut c = logged_in(&s, Digests::default());
    c.scsi_good(0, &[0u8; 6], &[], 0);
    let sn = c.cmd_sn;
    let w = cmd16(&mut c, 0x8a, false, sn, 100, 2048);
    c.send(&w);
    c.cmd_sn += 1;
    assert_eq!(answer(&mut c).bhs.opcode(), Opcode::R2T);
    let asked = std::time::Instant::now();
    let mut pings = 0;
    loop {
        match c.recv() {
            Some(p) if p.bhs.opcode() == Opcode::NOP_IN && p.bhs.itt() == RESERVED_TAG => {
                // Answer the ping: only the missing data may end this connection.
                let n = NopIn::from_pdu(&p).unwrap();
                let pong = NopOut {
                    immediate: true,
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt: n.ttt,
                    cmd_sn: c.cmd_sn,
                    exp_stat_sn: c.exp_stat_sn,
                    data: Bytes::new(),
                };
                c.send(&pong.to_pdu());
                pings += 1;
            }
            Some(p) => panic!("unexpected PDU while the data is owed: {:?}", p.bhs),
            None => {
                assert!(c.closed(), "the target went silent without closing");
                break;
            }
        }
        assert!(
            asked.elapsed() < DATA_OUT_TIMEOUT * 3,
            "the connection lived {:?} without the data it asked for",
            asked.elapsed()
        );
    }
    let lived = asked.elapsed();
    println!("closed {lived:?} after the R2T, {pings} pings answered");
    assert!(
        lived + std::time::Duration::from_secs(1) >= DATA_OUT_TIMEOUT,
        "{lived:?}"
    );
    assert!(
        pings >= 1,
        "the target never pinged: the ping timeout may have closed it"
    );
    // Another session writes and reads back.
    let mut d = logged_in(&s, Digests::default());
    d.scsi_good(0, &[0u8; 6], &[], 0);
    let data = vec![0x5au8; 4096];
    d.write10(0, 64, &data, BLOCK as usize);
    assert_eq!(d.read10(0, 64, 8, BLOCK as usize), data);
}
