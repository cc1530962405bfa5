//! A raw-PDU iSCSI client for tests: logs in with exactly the keys given and can send
//! any bytes at all, so a test can send precisely the malformed thing it wants.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use twinlun::iscsi::pdu::{
    frame_len, Digests, FrameLimits, LoginRequest, LoginResponse, Pdu, BHS_LEN,
};

pub struct RawClient {
    pub sock: TcpStream,
    pub digests: Digests,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    buf: BytesMut,
}

pub const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a];

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        RawClient {
            sock,
            digests: Digests::default(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, pdu: &Pdu) {
        let mut out = BytesMut::new();
        pdu.encode(self.digests, &mut out);
        self.sock.write_all(&out).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send bytes");
    }

    /// The next PDU from the target, or None if the connection closed or timed out.
    pub fn recv(&mut self) -> Option<Pdu> {
        let limits = FrameLimits {
            digests: self.digests,
            max_data_segment: 16 << 20,
        };
        loop {
            if let Ok(Some(n)) = frame_len(&self.buf, &limits) {
                let frame = self.buf.split_to(n).freeze();
                return Some(Pdu::decode(frame, &limits).expect("target sent a corrupt PDU"));
            }
            let mut tmp = [0u8; 65536];
            match self.sock.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// True if the target closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        loop {
            match self.sock.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn login_pdu(&self, csg: u8, nsg: u8, transit: bool, text: &str) -> Pdu {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: ISID,
            tsih: 0,
            itt: self.itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::copy_from_slice(text.as_bytes()),
        }
        .to_pdu()
    }

    /// A plain login to a normal session (security stage with AuthMethod=None, then
    /// operational), with the digests asked for.
    pub fn login(&mut self, initiator: &str, target: &str, digests: Digests) -> LoginResponse {
        let sec = format!(
            "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0"
        );
        let p = self.login_pdu(0, 1, true, &sec);
        self.send(&p);
        let r = LoginResponse::from_pdu(&self.recv().expect("login response")).unwrap();
        assert_eq!(
            (r.status_class, r.status_detail),
            (0, 0),
            "security stage refused"
        );
        self.exp_stat_sn = r.stat_sn.wrapping_add(1);
        let dig = |on: bool| if on { "CRC32C" } else { "None" };
        let op = format!(
            "HeaderDigest={}\0DataDigest={}\0MaxRecvDataSegmentLength=65536\0InitialR2T=Yes\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0",
            dig(digests.header),
            dig(digests.data)
        );
        let p = self.login_pdu(1, 3, true, &op);
        self.send(&p);
        let r = LoginResponse::from_pdu(&self.recv().expect("login response")).unwrap();
        assert_eq!(
            (r.status_class, r.status_detail),
            (0, 0),
            "operational stage refused"
        );
        assert!(
            r.transit && r.nsg == 3,
            "login did not reach full feature phase"
        );
        self.exp_stat_sn = r.stat_sn.wrapping_add(1);
        self.cmd_sn = r.exp_cmd_sn;
        self.digests = digests;
        r
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }
}

pub fn bhs_bytes(pdu: &Pdu) -> [u8; BHS_LEN] {
    let mut out = BytesMut::new();
    pdu.encode(Digests::default(), &mut out);
    let mut b = [0u8; BHS_LEN];
    b.copy_from_slice(&out[..BHS_LEN]);
    b
}
