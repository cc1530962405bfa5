//! The login state machine (`iscsi::login`) fed bytes, against a target that is open,
//! behind an ACL, or behind (mutual) CHAP, until it fails or finishes (as the server
//! stops there). No input panics it. The bytes are either a stream of frames, each
//! parsed as a Login request, or (closer to the text, where most of the logic is)
//! requests separated by 0xff: a byte of T/C/CSG/NSG bits, a byte choosing the TSIH,
//! then the text. `fuzz/login.dict` lists the keys.
#![no_main]

use std::collections::BTreeSet;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use twinlun::catalog::ChapSpec;
use twinlun::iscsi::login::{Login, LoginStep, TargetAccess, TargetDirectory};
use twinlun::iscsi::params::TargetSettings;
use twinlun::iscsi::pdu::{frame_len, Digests, FrameLimits, LoginRequest, Pdu};

struct Dir(TargetAccess);

impl TargetDirectory for Dir {
    fn lookup(&self, target_name: &str) -> Option<TargetAccess> {
        (target_name == "iqn.t").then(|| self.0.clone())
    }
    fn list_targets(&self, _: &str) -> Vec<String> {
        vec!["iqn.t".into()]
    }
    fn session_exists(&self, initiator: &str, _: [u8; 6], tsih: u16, _: Option<&str>) -> bool {
        initiator == "iqn.a" && tsih == 7
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, stream)) = input.split_first() else {
        return;
    };
    let mut access = TargetAccess::default();
    if flags & 1 != 0 {
        access.acl = BTreeSet::from(["iqn.a".to_string()]);
    }
    if flags & 2 != 0 {
        let mutual = flags & 4 != 0;
        access.chap = Some(ChapSpec {
            user: "alice".into(),
            secret: "initiator-secret".into(),
            mutual_user: mutual.then(|| "target".into()),
            mutual_secret: mutual.then(|| "target-secret-x".into()),
        });
    }
    let dir = Dir(access);
    let login = Login::new(
        TargetSettings::default(),
        "127.0.0.1:3260".parse().unwrap(),
        1,
    );
    if flags & 8 != 0 {
        frames(login, &dir, stream);
    } else {
        segments(login, &dir, stream);
    }
});

fn frames(mut login: Login, dir: &Dir, mut stream: &[u8]) {
    let limits = FrameLimits {
        digests: Digests::default(),
        max_data_segment: 8192,
    };
    while let Ok(Some(n)) = frame_len(stream, &limits) {
        let frame = Bytes::copy_from_slice(&stream[..n]);
        stream = &stream[n..];
        let Ok(pdu) = Pdu::decode(frame, &limits) else {
            continue;
        };
        let Ok(req) = LoginRequest::from_pdu(&pdu) else {
            continue;
        };
        if !matches!(login.handle(&req, dir), LoginStep::Continue(_)) {
            break;
        }
    }
}

fn segments(mut login: Login, dir: &Dir, stream: &[u8]) {
    for (i, seg) in stream.split(|&b| b == 0xff).enumerate() {
        let (bits, tsih, text) = match seg {
            [bits, tsih, text @ ..] => (*bits, *tsih, text),
            _ => (0x81, 0, &[][..]),
        };
        let req = LoginRequest {
            transit: bits & 0x80 != 0,
            cont: bits & 0x40 != 0,
            csg: (bits >> 2) & 3,
            nsg: bits & 3,
            version_max: 0,
            version_min: 0,
            isid: [0, 0, 0, 0, 0, 1],
            tsih: if tsih & 1 != 0 {
                7
            } else {
                u16::from(tsih >> 1)
            },
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: i as u32,
            data: Bytes::copy_from_slice(text),
        };
        if !matches!(login.handle(&req, dir), LoginStep::Continue(_)) {
            break;
        }
    }
}
