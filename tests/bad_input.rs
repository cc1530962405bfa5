//! Malformed and out-of-order input on raw connections, while another session does
//! real I/O through QEMU's iSCSI driver. Each case gets the RFC's answer (Reject, login
//! failure, or the connection closed), and the other session's data stays correct.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::raw::RawClient;
use common::{run, TestServer, DEMO_IQN};
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
    let io = {
        let stop = stop.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) || rounds < 2 {
                let pat = format!("0x{:02x}", 0x20 + (rounds % 200));
                let out = run(
                    "qemu-io",
                    &[
                        "-f",
                        "raw",
                        "-c",
                        &format!("write -P {pat} 16m 8m"),
                        "-c",
                        &format!("read -P {pat} 16m 8m"),
                        &url,
                    ],
                );
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success() && !text.contains("failed"),
                    "the other session's I/O failed in round {rounds}:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                rounds += 1;
            }
            rounds
        })
    };

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
