//! The login state machine (`iscsi::login`) fed bytes: a stream of frames, each parsed
//! as a Login request and handed to `Login::handle`, against a target that is open,
//! behind an ACL, or behind (mutual) CHAP, until it fails or finishes (as the server
//! stops there). No input panics it.
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
    let Some((&flags, mut stream)) = input.split_first() else {
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
    let mut login = Login::new(
        TargetSettings::default(),
        "127.0.0.1:3260".parse().unwrap(),
        1,
    );
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
        match login.handle(&req, &dir) {
            LoginStep::Continue(_) => {}
            LoginStep::Fail(_) | LoginStep::Done(..) => break,
        }
    }
});
