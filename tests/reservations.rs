//! Persistent reservations against the real server through raw sessions of two
//! initiators: a reservation made with APTPL (activate persist through power loss) is
//! saved in the data dir and is there again after the server process restarts, with its
//! registrations and its conflicts; one made without APTPL is gone after the restart.

mod common;

use common::raw::RawClient;
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const A: &str = "iqn.2026-12.test:reservations-a";
const B: &str = "iqn.2026-12.test:reservations-b";

const KEY_A: u64 = 0xA11CE;
const KEY_B: u64 = 0xB0B;
/// WRITE EXCLUSIVE (SPC-5 table 217).
const WRITE_EXCLUSIVE: u8 = 1;
const RESERVATION_CONFLICT: u8 = 0x18;

fn login(s: &TestServer, initiator: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr);
    c.login(initiator, DEMO_IQN, Digests::default());
    c
}

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list; returns the status.
fn prout(c: &mut RawClient, lun: u64, sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> u8 {
    let mut params = [0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    params[20] = u8::from(aptpl);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = sa;
    cdb[2] = kind;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    // The first command of a nexus meets its power-on unit attention: retry past it.
    for _ in 0..3 {
        let o = c.scsi(lun, &cdb, &params, 0);
        if o.sense_key() != Some(0x6) {
            return o.status;
        }
    }
    panic!("LUN {lun}: unit attentions do not stop");
}

fn prin(c: &mut RawClient, lun: u64, sa: u8) -> Vec<u8> {
    let cdb = [0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0];
    c.scsi_good(lun, &cdb, &[], 4096)
}

/// The registered keys (READ KEYS).
fn keys(c: &mut RawClient, lun: u64) -> Vec<u64> {
    let d = prin(c, lun, 0);
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
    d[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

/// The reservation's key and type (READ RESERVATION), if there is one.
fn reservation(c: &mut RawClient, lun: u64) -> Option<(u64, u8)> {
    let d = prin(c, lun, 1);
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    (len == 16).then(|| {
        (
            u64::from_be_bytes(d[8..16].try_into().unwrap()),
            d[21] & 0x0F,
        )
    })
}

/// WRITE(10) of one 512-byte block at LBA 0; returns the status.
fn write_status(c: &mut RawClient, lun: u64) -> u8 {
    let cdb = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    for _ in 0..3 {
        let o = c.scsi(lun, &cdb, &[0x5A; 512], 0);
        if o.sense_key() != Some(0x6) {
            return o.status;
        }
    }
    panic!("LUN {lun}: unit attentions do not stop");
}

/// LUN 1 reserved with APTPL, LUN 2 without: after a restart of the server process, LUN 1
/// still has both registrations and A's WRITE EXCLUSIVE reservation (B's writes still
/// conflict, A's go through), LUN 2 has nothing left.
#[test]
fn a_reservation_with_aptpl_survives_a_restart_and_one_without_does_not() {
    let mut s = TestServer::start();
    for (lun, name) in [(1, "kept"), (2, "lost")] {
        s.ctl_ok(&["volume", "create", name, "--size", "16M"]);
        s.ctl_ok(&["lun", "map", DEMO_IQN, &lun.to_string(), name]);
    }
    let (mut a, mut b) = (login(&s, A), login(&s, B));
    for (lun, aptpl) in [(1, true), (2, false)] {
        // REGISTER AND IGNORE EXISTING KEY (06h) for both, then A reserves (01h).
        assert_eq!(prout(&mut a, lun, 0x06, 0, 0, KEY_A, aptpl), 0);
        assert_eq!(prout(&mut b, lun, 0x06, 0, 0, KEY_B, aptpl), 0);
        assert_eq!(
            prout(&mut a, lun, 0x01, WRITE_EXCLUSIVE, KEY_A, 0, false),
            0
        );
        assert_eq!(reservation(&mut b, lun), Some((KEY_A, WRITE_EXCLUSIVE)));
        assert_eq!(write_status(&mut b, lun), RESERVATION_CONFLICT);
        assert_eq!(write_status(&mut a, lun), 0);
    }
    let saved = s.data_dir.join("reservations");
    let files: Vec<_> = std::fs::read_dir(&saved)
        .unwrap_or_else(|e| panic!("{}: {e}", saved.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "only the APTPL LU is saved: {files:?}");
    drop((a, b));

    s.restart();

    let (mut a, mut b) = (login(&s, A), login(&s, B));
    // LUN 1: the same registrations, the same holder and type, the same conflicts.
    let mut k = keys(&mut b, 1);
    k.sort_unstable();
    assert_eq!(k, vec![KEY_B, KEY_A]);
    assert_eq!(reservation(&mut b, 1), Some((KEY_A, WRITE_EXCLUSIVE)));
    assert_eq!(write_status(&mut b, 1), RESERVATION_CONFLICT);
    assert_eq!(write_status(&mut a, 1), 0);
    // LUN 2: nothing survived.
    assert_eq!(keys(&mut b, 2), Vec::<u64>::new());
    assert_eq!(reservation(&mut b, 2), None);
    assert_eq!(write_status(&mut b, 2), 0);

    // A releases and both unregister: the saved file goes too, so another restart
    // brings nothing back.
    assert_eq!(prout(&mut a, 1, 0x02, WRITE_EXCLUSIVE, KEY_A, 0, false), 0);
    assert_eq!(prout(&mut a, 1, 0x00, 0, KEY_A, 0, false), 0);
    assert_eq!(prout(&mut b, 1, 0x00, 0, KEY_B, 0, false), 0);
    drop((a, b));
    s.restart();
    let mut b = login(&s, B);
    assert_eq!(keys(&mut b, 1), Vec::<u64>::new());
    assert_eq!(reservation(&mut b, 1), None);
    assert_eq!(saved_files(&s), 0);

    // Saved again, then the volume is deleted: its saved reservations go with it.
    assert_eq!(prout(&mut b, 1, 0x06, 0, 0, KEY_B, true), 0);
    assert_eq!(saved_files(&s), 1);
    drop(b);
    s.ctl_ok(&["lun", "unmap", DEMO_IQN, "1"]);
    s.ctl_ok(&["volume", "delete", "kept"]);
    assert_eq!(saved_files(&s), 0);
}

/// Files in `DATA_DIR/reservations` (none when the folder is not there).
fn saved_files(s: &TestServer) -> usize {
    std::fs::read_dir(s.data_dir.join("reservations"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// TEST UNIT READY's sense as (key, ASC, ASCQ), or None when GOOD.
fn tur_sense(c: &mut RawClient, lun: u64) -> Option<(u8, u8, u8)> {
    let o = c.scsi(lun, &[0u8; 6], &[], 0);
    if o.status == 0 {
        return None;
    }
    assert_eq!(o.status, 0x02, "TEST UNIT READY: status {:#x}", o.status);
    Some((o.sense[2] & 0x0F, o.sense[12], o.sense[13]))
}

/// Clears the unit attentions a new nexus starts with.
fn settle(c: &mut RawClient, lun: u64) {
    for _ in 0..4 {
        if tur_sense(c, lun).is_none() {
            return;
        }
    }
    panic!("LUN {lun}: unit attentions do not stop");
}

/// What another nexus's PERSISTENT RESERVE OUT does to this one is reported to it as a
/// unit attention on its next command (SPC-5 5.14.11): REGISTRATIONS PREEMPTED to the
/// preempted, RESERVATIONS RELEASED to registrants when a registrants-only reservation
/// is released, RESERVATIONS PREEMPTED to every registrant on CLEAR.
#[test]
fn other_nexuses_hear_of_preempt_release_and_clear() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "ua", "--size", "16M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "ua"]);
    let (mut a, mut b) = (login(&s, A), login(&s, B));
    settle(&mut a, 1);
    settle(&mut b, 1);
    assert_eq!(prout(&mut a, 1, 0x06, 0, 0, KEY_A, false), 0);
    assert_eq!(prout(&mut b, 1, 0x06, 0, 0, KEY_B, false), 0);
    // EXCLUSIVE ACCESS by A, then A preempts B's registration.
    assert_eq!(prout(&mut a, 1, 0x01, 3, KEY_A, 0, false), 0);
    assert_eq!(prout(&mut a, 1, 0x04, 3, KEY_A, KEY_B, false), 0);
    assert_eq!(tur_sense(&mut b, 1), Some((0x6, 0x2A, 0x05)));
    assert_eq!(tur_sense(&mut b, 1), None, "reported once");
    assert_eq!(
        tur_sense(&mut a, 1),
        None,
        "the preempting nexus hears nothing"
    );
    assert_eq!(keys(&mut a, 1), vec![KEY_A]);
    // B registers again; A's registrants-only reservation released: B hears of it.
    assert_eq!(prout(&mut a, 1, 0x02, 3, KEY_A, 0, false), 0);
    assert_eq!(prout(&mut b, 1, 0x06, 0, 0, KEY_B, false), 0);
    assert_eq!(prout(&mut a, 1, 0x01, 6, KEY_A, 0, false), 0);
    assert_eq!(prout(&mut a, 1, 0x02, 6, KEY_A, 0, false), 0);
    assert_eq!(tur_sense(&mut b, 1), Some((0x6, 0x2A, 0x04)));
    // CLEAR by A: B hears RESERVATIONS PREEMPTED, and nothing is left.
    assert_eq!(prout(&mut a, 1, 0x03, 0, KEY_A, 0, false), 0);
    assert_eq!(tur_sense(&mut b, 1), Some((0x6, 0x2A, 0x03)));
    assert_eq!(keys(&mut b, 1), Vec::<u64>::new());
}
