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

    /// The next thing the connection does within the read timeout: a PDU, its close
    /// (EOF or reset), nothing yet (the timeout: only a cue to move on), or bytes that
    /// do not frame as a PDU (which a target must never send).
    pub fn recv_event(&mut self) -> RecvEvent {
        let limits = FrameLimits {
            digests: self.digests,
            max_data_segment: 16 << 20,
        };
        loop {
            match frame_len(&self.buf, &limits) {
                Ok(Some(n)) => {
                    let frame = self.buf.split_to(n).freeze();
                    return match Pdu::decode(frame, &limits) {
                        Ok(p) => RecvEvent::Pdu(p),
                        Err(e) => RecvEvent::Corrupt(e.to_string()),
                    };
                }
                Ok(None) => {}
                Err(e) => return RecvEvent::Corrupt(e.to_string()),
            }
            let mut tmp = [0u8; 65536];
            match self.sock.read(&mut tmp) {
                Ok(0) => return RecvEvent::Closed,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return RecvEvent::Idle
                }
                Err(_) => return RecvEvent::Closed,
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
        self.login_with(initiator, target, digests, 65536)
    }

    /// As `login`, declaring `max_recv` as our MaxRecvDataSegmentLength.
    pub fn login_with(
        &mut self,
        initiator: &str,
        target: &str,
        digests: Digests,
        max_recv: u32,
    ) -> LoginResponse {
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
            "HeaderDigest={}\0DataDigest={}\0MaxRecvDataSegmentLength={max_recv}\0InitialR2T=Yes\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0",
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

/// What `RawClient::recv_event` saw.
#[derive(Debug)]
pub enum RecvEvent {
    Pdu(Pdu),
    Closed,
    Idle,
    Corrupt(String),
}

pub fn bhs_bytes(pdu: &Pdu) -> [u8; BHS_LEN] {
    let mut out = BytesMut::new();
    pdu.encode(Digests::default(), &mut out);
    let mut b = [0u8; BHS_LEN];
    b.copy_from_slice(&out[..BHS_LEN]);
    b
}

/// What a SCSI command got back.
#[derive(Debug)]
pub struct ScsiOutcome {
    pub status: u8,
    /// Fixed-format sense data when the status is CHECK CONDITION.
    pub sense: Bytes,
    /// Data-In, concatenated.
    pub data: Vec<u8>,
}

impl ScsiOutcome {
    /// The sense key, if there is sense data.
    pub fn sense_key(&self) -> Option<u8> {
        (self.sense.len() > 2).then(|| self.sense[2] & 0x0f)
    }
}

impl RawClient {
    /// Runs one SCSI command on `lun` and waits for its end: `data_out` travels as
    /// immediate data (so at most the negotiated FirstBurstLength of 64 KiB), and up
    /// to `read_len` bytes of Data-In are collected.
    pub fn scsi(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], read_len: u32) -> ScsiOutcome {
        use twinlun::iscsi::pdu::{DataIn, Opcode, ScsiCommand, ScsiResponse};
        assert!(data_out.len() <= 65536, "immediate data only");
        let mut cdb16 = [0u8; 16];
        cdb16[..cdb.len()].copy_from_slice(cdb);
        let itt = self.next_itt();
        let lun_field = u64::from_be_bytes(twinlun::scsi::encode_lun(lun).expect("valid LUN"));
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: read_len > 0,
            write: !data_out.is_empty(),
            attr: 1,
            lun: lun_field,
            itt,
            expected_len: if data_out.is_empty() {
                read_len
            } else {
                data_out.len() as u32
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb16),
            bidi_read_len: None,
            data: Bytes::copy_from_slice(data_out),
        };
        self.send(&cmd.to_pdu());
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut data = Vec::new();
        loop {
            let p = self.recv().expect("the target answers the command");
            match p.bhs.opcode() {
                Opcode::DATA_IN => {
                    let d = DataIn::from_pdu(&p).unwrap();
                    assert_eq!(d.itt, itt);
                    assert_eq!(d.buffer_offset as usize, data.len(), "Data-In in order");
                    data.extend_from_slice(&d.data);
                    if let Some(status) = d.status {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        return ScsiOutcome {
                            status,
                            sense: Bytes::new(),
                            data,
                        };
                    }
                }
                Opcode::SCSI_RESPONSE => {
                    let r = ScsiResponse::from_pdu(&p).unwrap();
                    assert_eq!(r.itt, itt);
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    return ScsiOutcome {
                        status: r.status,
                        sense: r.sense,
                        data,
                    };
                }
                // NOP-In pings and the like: not this command's.
                _ => {}
            }
        }
    }

    /// As `scsi`, retrying once past a UNIT ATTENTION (the first command of a nexus
    /// after login, a LUN change) and requiring GOOD.
    pub fn scsi_good(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], read_len: u32) -> Vec<u8> {
        for _ in 0..3 {
            let o = self.scsi(lun, cdb, data_out, read_len);
            if o.status == 0 {
                return o.data;
            }
            assert_eq!(
                o.sense_key(),
                Some(0x6),
                "LUN {lun} CDB {cdb:02x?}: status {:#x}, sense {:02x?}",
                o.status,
                &o.sense[..]
            );
        }
        panic!("LUN {lun}: unit attentions do not stop");
    }

    /// WRITE(10) of `data` (whole blocks of `block` bytes) at `lba`, requiring GOOD.
    pub fn write10(&mut self, lun: u64, lba: u32, data: &[u8], block: usize) {
        let blocks = (data.len() / block) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.scsi_good(lun, &cdb, data, 0);
    }

    /// READ(10) of `blocks` blocks of `block` bytes at `lba`, requiring GOOD.
    pub fn read10(&mut self, lun: u64, lba: u32, blocks: u16, block: usize) -> Vec<u8> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let data = self.scsi_good(lun, &cdb, &[], blocks as u32 * block as u32);
        assert_eq!(data.len(), blocks as usize * block);
        data
    }
}
