//! Session-level behaviour on raw connections: reinstatement of a session by a new
//! login with the same initiator and ISID, NOP-In pings for dead-peer detection, and
//! task management on a write waiting for its data.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::RawClient;
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::tmf::tmf_response;
use twinlun::iscsi::pdu::{
    Digests, NopIn, NopOut, Opcode, R2t, ScsiCommand, ScsiResponse, TmfFunction, TmfRequest,
    TmfResponse, RESERVED_TAG,
};

const INITIATOR: &str = "iqn.2026-11.test:sessions";

fn session_count(s: &TestServer) -> usize {
    let out = s.ctl_ok(&["--json", "session", "list"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("session list JSON");
    v["sessions"].as_array().map(|a| a.len()).unwrap_or(0)
}

/// A command that needs no data, answered GOOD once the power-on unit attention is
/// consumed.
fn test_unit_ready(c: &mut RawClient) -> ScsiResponse {
    let itt = c.next_itt();
    let cmd = ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: false,
        attr: 1,
        lun: 0,
        itt,
        expected_len: 0,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: Bytes::from_static(&[0u8; 6]),
        bidi_read_len: None,
        data: Bytes::new(),
    };
    c.send(&cmd.to_pdu());
    c.cmd_sn += 1;
    loop {
        let p = c.recv().expect("response to TEST UNIT READY");
        if p.bhs.opcode() == Opcode::SCSI_RESPONSE {
            let r = ScsiResponse::from_pdu(&p).unwrap();
            c.exp_stat_sn = r.stat_sn.wrapping_add(1);
            assert_eq!(r.itt, itt);
            return r;
        }
    }
}

#[test]
fn a_new_login_with_the_same_isid_replaces_the_session() {
    let s = TestServer::start();
    let mut first = RawClient::connect(s.addr);
    first.login(INITIATOR, DEMO_IQN, Digests::default());
    assert_eq!(session_count(&s), 1);
    let mut second = RawClient::connect(s.addr);
    second.login(INITIATOR, DEMO_IQN, Digests::default());
    assert!(first.closed(), "the old session's connection stayed open");
    test_unit_ready(&mut second);
    assert_eq!(session_count(&s), 1, "reinstatement left two sessions");
}

#[test]
fn idle_connections_are_pinged_and_answers_keep_them() {
    let s = TestServer::start();
    let mut c = RawClient::connect(s.addr);
    c.login(INITIATOR, DEMO_IQN, Digests::default());
    let start = Instant::now();
    let p = c.recv().expect("no NOP-In ping on an idle connection");
    assert_eq!(p.bhs.opcode(), Opcode::NOP_IN);
    let ping = NopIn::from_pdu(&p).unwrap();
    assert_eq!(
        ping.itt, RESERVED_TAG,
        "a target ping carries the reserved ITT"
    );
    assert_ne!(ping.ttt, RESERVED_TAG, "a target ping asks for an answer");
    assert!(start.elapsed() < Duration::from_secs(9));
    // RFC 7143 §11.18: the answer echoes the TTT with the reserved ITT.
    let answer = NopOut {
        immediate: true,
        lun: 0,
        itt: RESERVED_TAG,
        ttt: ping.ttt,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        data: Bytes::new(),
    };
    c.send(&answer.to_pdu());
    test_unit_ready(&mut c);
}

#[test]
fn abort_task_ends_a_write_waiting_for_data_and_lun_reset_completes() {
    let s = TestServer::start();
    let mut c = RawClient::connect(s.addr);
    c.login(INITIATOR, DEMO_IQN, Digests::default());
    test_unit_ready(&mut c);

    // WRITE(10) of 8 blocks without immediate data: the raw client negotiated
    // InitialR2T=Yes, so the target asks for the data with an R2T.
    let write_itt = c.next_itt();
    let write = ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: true,
        attr: 1,
        lun: 0,
        itt: write_itt,
        expected_len: 4096,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: Bytes::from_static(&[0x2a, 0, 0, 0, 0, 64, 0, 0, 8, 0]),
        bidi_read_len: None,
        data: Bytes::new(),
    };
    c.send(&write.to_pdu());
    c.cmd_sn += 1;
    let p = c.recv().expect("R2T");
    assert_eq!(p.bhs.opcode(), Opcode::R2T);
    let r2t = R2t::from_pdu(&p).unwrap();
    assert_eq!(
        (r2t.itt, r2t.buffer_offset, r2t.desired_len),
        (write_itt, 0, 4096)
    );

    let tmf_itt = c.next_itt();
    let abort = TmfRequest {
        immediate: true,
        function: TmfFunction::AbortTask,
        lun: 0,
        itt: tmf_itt,
        referenced_tag: write_itt,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ref_cmd_sn: write.cmd_sn,
        exp_data_sn: 0,
    };
    c.send(&abort.to_pdu());
    let p = c.recv().expect("TMF response");
    assert_eq!(
        p.bhs.opcode(),
        Opcode::TMF_RESPONSE,
        "the aborted write must not answer"
    );
    let r = TmfResponse::from_pdu(&p).unwrap();
    assert_eq!((r.itt, r.response), (tmf_itt, tmf_response::COMPLETE));
    c.exp_stat_sn = r.stat_sn.wrapping_add(1);

    // The session goes on; a LUN reset completes and raises a unit attention.
    test_unit_ready(&mut c);
    let reset_itt = c.next_itt();
    let reset = TmfRequest {
        immediate: true,
        function: TmfFunction::LogicalUnitReset,
        lun: 0,
        itt: reset_itt,
        referenced_tag: RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ref_cmd_sn: 0,
        exp_data_sn: 0,
    };
    c.send(&reset.to_pdu());
    let r = TmfResponse::from_pdu(&c.recv().expect("reset response")).unwrap();
    assert_eq!((r.itt, r.response), (reset_itt, tmf_response::COMPLETE));
    c.exp_stat_sn = r.stat_sn.wrapping_add(1);
    let ua = test_unit_ready(&mut c);
    assert_eq!(ua.status, 0x02);
    assert_eq!(
        (ua.sense[2] & 0x0f, ua.sense[12]),
        (0x06, 0x29),
        "expected a reset unit attention"
    );
    assert_eq!(test_unit_ready(&mut c).status, 0);

    // A reset of a LUN that is not mapped says so.
    let itt = c.next_itt();
    let reset = TmfRequest {
        lun: 9 << 48,
        itt,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ..reset
    };
    c.send(&reset.to_pdu());
    let r = TmfResponse::from_pdu(&c.recv().expect("reset response")).unwrap();
    assert_eq!(r.response, tmf_response::LUN_DOES_NOT_EXIST);
}
