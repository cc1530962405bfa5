//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, framing with digests,
//! and one file per PDU kind with its parse (`from_pdu`) and encode (`to_pdu`).
//!
//! The parsers know nothing of sockets. Framing is two steps (mini-redis style):
//! [`frame_len`] says whether a whole PDU is buffered and how long it is, checking the
//! announced DataSegmentLength against the negotiated limit before a byte is reserved;
//! [`Frame::decode`] then verifies digests and splits it.

pub mod async_msg;
mod data;
mod login;
pub mod logout;
mod nop;
mod r2t;
mod reject;
mod scsi_cmd;
mod scsi_resp;
mod snack;
mod text;
pub mod tmf;

pub use async_msg::AsyncMessage;
pub use data::{DataIn, DataOut};
pub use login::{LoginRequest, LoginResponse, Stage};
pub use logout::{LogoutRequest, LogoutResponse};
pub use nop::{NopIn, NopOut};
pub use r2t::R2t;
pub use reject::{Reject, RejectReason};
pub use scsi_cmd::ScsiCommand;
pub use scsi_resp::ScsiResponse;
pub use snack::SnackRequest;
pub use text::{TextRequest, TextResponse};
pub use tmf::{TmfFunction, TmfRequest, TmfResponse};

use bytes::{BufMut, Bytes, BytesMut};

use crate::iscsi::digest;

/// Size of the Basic Header Segment (RFC 7143 §11.2.1).
pub const BHS_LEN: usize = 48;
/// "Reserved" task tag (RFC 7143 §11.2.1.8 / §11.18.1).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// An opcode as it appears on the wire. Unknown codes are values, not parse failures,
/// so the right Reject can be sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    pub const NOP_OUT: Opcode = Opcode(0x00);
    pub const SCSI_COMMAND: Opcode = Opcode(0x01);
    pub const TMF_REQUEST: Opcode = Opcode(0x02);
    pub const LOGIN_REQUEST: Opcode = Opcode(0x03);
    pub const TEXT_REQUEST: Opcode = Opcode(0x04);
    pub const DATA_OUT: Opcode = Opcode(0x05);
    pub const LOGOUT_REQUEST: Opcode = Opcode(0x06);
    pub const SNACK_REQUEST: Opcode = Opcode(0x10);
    pub const NOP_IN: Opcode = Opcode(0x20);
    pub const SCSI_RESPONSE: Opcode = Opcode(0x21);
    pub const TMF_RESPONSE: Opcode = Opcode(0x22);
    pub const LOGIN_RESPONSE: Opcode = Opcode(0x23);
    pub const TEXT_RESPONSE: Opcode = Opcode(0x24);
    pub const DATA_IN: Opcode = Opcode(0x25);
    pub const LOGOUT_RESPONSE: Opcode = Opcode(0x26);
    pub const R2T: Opcode = Opcode(0x31);
    pub const ASYNC_MESSAGE: Opcode = Opcode(0x32);
    pub const REJECT: Opcode = Opcode(0x3f);
}

/// The Basic Header Segment with typed accessors; every field is big-endian.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs(op={:#04x} {})",
            self.opcode().0,
            hex::encode(self.0)
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    pub fn new(opcode: Opcode) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = opcode.0 & 0x3f;
        b
    }
    pub fn opcode(&self) -> Opcode {
        Opcode(self.0[0] & 0x3f)
    }
    /// The I bit: immediate delivery (RFC 7143 §11.2.1.2).
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.0[0] |= 0x40;
        } else {
            self.0[0] &= !0x40;
        }
    }
    /// The F (final) bit, bit 7 of byte 1 in most PDUs.
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_segment_len(&self) -> u32 {
        self.u24(5)
    }
    pub fn set_data_segment_len(&mut self, len: u32) {
        self.set_u24(5, len);
    }
    pub fn lun(&self) -> u64 {
        self.u64(8)
    }
    pub fn itt(&self) -> u32 {
        self.u32(16)
    }

    pub fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn u24(&self, at: usize) -> u32 {
        u32::from_be_bytes([0, self.0[at], self.0[at + 1], self.0[at + 2]])
    }
    pub fn u32(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_be_bytes(b)
    }
    pub fn u64(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_be_bytes(b)
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u24(&mut self, at: usize, v: u32) {
        self.0[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
}

/// A whole PDU: header, additional header segments, data segment (without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

impl Pdu {
    pub fn new(bhs: Bhs, data: Bytes) -> Pdu {
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }

    /// Append the wire form to `out`, with digests when negotiated. DataSegmentLength and
    /// TotalAHSLength are filled in from the segments.
    pub fn encode(&self, digests: Digests, out: &mut BytesMut) {
        let mut bhs = self.bhs;
        debug_assert!(self.ahs.len().is_multiple_of(4) && self.ahs.len() <= 255 * 4);
        bhs.0[4] = (self.ahs.len() / 4) as u8;
        bhs.set_data_segment_len(self.data.len() as u32);
        let start = out.len();
        out.reserve(self.wire_len(digests));
        out.put_slice(&bhs.0);
        out.put_slice(&self.ahs);
        if digests.header {
            let crc = digest::crc32c(&out[start..]);
            out.put_u32_le(crc);
        }
        if !self.data.is_empty() {
            out.put_slice(&self.data);
            let pad = pad_len(self.data.len());
            out.put_bytes(0, pad);
            if digests.data {
                let crc = digest::crc32c_padded(&self.data, pad);
                out.put_u32_le(crc);
            }
        }
    }

    pub fn wire_len(&self, digests: Digests) -> usize {
        let mut n = BHS_LEN + self.ahs.len();
        if digests.header {
            n += 4;
        }
        if !self.data.is_empty() {
            n += self.data.len() + pad_len(self.data.len());
            if digests.data {
                n += 4;
            }
        }
        n
    }
}

/// Padding to the next 4-byte boundary (RFC 7143 §11.1).
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Which digests are in force on a connection (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// What the receiving side accepts: digests and MaxRecvDataSegmentLength.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub digests: Digests,
    /// The largest data segment accepted (our declared MaxRecvDataSegmentLength, or the
    /// login text cap during login).
    pub max_data_segment: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataSegmentTooLong { len: u32, max: u32, bhs: Box<Bhs> },
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The header is intact; only the data segment is corrupt (RFC 7143 §7.8: Reject
    /// with reason "Data (payload) Digest Error" and carry on).
    #[error("data digest mismatch")]
    DataDigest { bhs: Box<Bhs> },
}

/// Is a whole PDU in `buf`? `Ok(Some(len))` if so, `Ok(None)` if more bytes are needed.
/// The length is checked against the limit as soon as the BHS is here, so an oversized
/// announcement is refused before anything is allocated for it.
pub fn frame_len(buf: &[u8], limits: &FrameLimits) -> Result<Option<usize>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut bhs = Bhs::default();
    bhs.0.copy_from_slice(&buf[..BHS_LEN]);
    let dsl = bhs.data_segment_len();
    if dsl > limits.max_data_segment {
        return Err(FrameError::DataSegmentTooLong {
            len: dsl,
            max: limits.max_data_segment,
            bhs: Box::new(bhs),
        });
    }
    let mut n = BHS_LEN + bhs.total_ahs_len();
    if limits.digests.header {
        n += 4;
    }
    if dsl > 0 {
        n += dsl as usize + pad_len(dsl as usize);
        if limits.digests.data {
            n += 4;
        }
    }
    Ok((buf.len() >= n).then_some(n))
}

impl Pdu {
    /// Split one whole frame (as measured by [`frame_len`]) and verify its digests.
    pub fn decode(frame: Bytes, limits: &FrameLimits) -> Result<Pdu, FrameError> {
        let mut bhs = Bhs::default();
        bhs.0.copy_from_slice(&frame[..BHS_LEN]);
        let ahs_end = BHS_LEN + bhs.total_ahs_len();
        let mut at = ahs_end;
        if limits.digests.header {
            let want = u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
            if digest::crc32c(&frame[..ahs_end]) != want {
                return Err(FrameError::HeaderDigest);
            }
            at += 4;
        }
        let dsl = bhs.data_segment_len() as usize;
        let data = frame.slice(at..at + dsl);
        if dsl > 0 && limits.digests.data {
            let pad = pad_len(dsl);
            let d = at + dsl + pad;
            let want = u32::from_le_bytes([frame[d], frame[d + 1], frame[d + 2], frame[d + 3]]);
            if digest::crc32c(&frame[at..at + dsl + pad]) != want {
                return Err(FrameError::DataDigest { bhs: Box::new(bhs) });
            }
        }
        Ok(Pdu {
            bhs,
            ahs: frame.slice(BHS_LEN..ahs_end),
            data,
        })
    }
}

/// Why a PDU's fields could not be accepted, beyond framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("unexpected opcode {0:#04x}")]
    WrongOpcode(u8),
    #[error("malformed additional header segment")]
    BadAhs,
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

/// Check that a PDU has the opcode a parser expects.
fn expect(pdu: &Pdu, op: Opcode) -> Result<(), PduError> {
    if pdu.bhs.opcode() == op {
        Ok(())
    } else {
        Err(PduError::WrongOpcode(pdu.bhs.opcode().0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(header: bool, data: bool) -> FrameLimits {
        FrameLimits {
            digests: Digests { header, data },
            max_data_segment: 8192,
        }
    }

    #[test]
    fn frame_roundtrip_with_and_without_digests() {
        for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut bhs = Bhs::new(Opcode::NOP_OUT);
            bhs.set_u32(16, 7);
            let pdu = Pdu::new(bhs, Bytes::from_static(b"hello"));
            let mut out = BytesMut::new();
            pdu.encode(Digests { header: h, data: d }, &mut out);
            assert_eq!(out.len(), pdu.wire_len(Digests { header: h, data: d }));
            let l = limits(h, d);
            assert_eq!(frame_len(&out[..out.len() - 1], &l), Ok(None));
            let n = frame_len(&out, &l).unwrap().unwrap();
            assert_eq!(n, out.len());
            let back = Pdu::decode(out.freeze(), &l).unwrap();
            assert_eq!(back.data, Bytes::from_static(b"hello"));
            assert_eq!(back.bhs.itt(), 7);
            assert_eq!(back.bhs.data_segment_len(), 5);
        }
    }

    #[test]
    fn oversized_segment_refused_from_header_alone() {
        let mut bhs = Bhs::new(Opcode::SCSI_COMMAND);
        bhs.set_data_segment_len(0xff_ffff);
        let err = frame_len(&bhs.0, &limits(false, false)).unwrap_err();
        assert!(matches!(
            err,
            FrameError::DataSegmentTooLong {
                len: 0xff_ffff,
                max: 8192,
                ..
            }
        ));
    }

    #[test]
    fn corrupted_digests_are_detected() {
        let pdu = Pdu::new(Bhs::new(Opcode::NOP_OUT), Bytes::from_static(b"abcdefg"));
        let l = limits(true, true);
        let mut out = BytesMut::new();
        pdu.encode(l.digests, &mut out);
        let mut bad_header = out.clone();
        bad_header[20] ^= 1;
        assert_eq!(
            Pdu::decode(bad_header.freeze(), &l),
            Err(FrameError::HeaderDigest)
        );
        let mut bad_data = out.clone();
        bad_data[BHS_LEN + 4 + 2] ^= 1;
        assert!(matches!(
            Pdu::decode(bad_data.freeze(), &l),
            Err(FrameError::DataDigest { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_frame_or_fail_without_panic(buf in proptest::collection::vec(any::<u8>(), 0..300), h: bool, d: bool) {
            let l = limits(h, d);
            if let Ok(Some(n)) = frame_len(&buf, &l) {
                let frame = Bytes::copy_from_slice(&buf[..n]);
                if let Ok(pdu) = Pdu::decode(frame, &l) {
                    let _ = crate::iscsi::Request::parse(pdu);
                }
            }
        }
    }
}
