//! PDU framing and parsing (`iscsi::pdu`, `iscsi::Request`): any byte stream, with or
//! without digests, frames, decodes and parses without a panic, and a parsed PDU encodes
//! back to a frame of the length `frame_len` measures.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use twinlun::iscsi::pdu::{frame_len, Digests, FrameLimits, Pdu};
use twinlun::iscsi::Request;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, mut stream)) = input.split_first() else {
        return;
    };
    let limits = FrameLimits {
        digests: Digests {
            header: flags & 1 != 0,
            data: flags & 2 != 0,
        },
        max_data_segment: if flags & 4 != 0 { 8192 } else { 262_144 },
    };
    while let Ok(Some(n)) = frame_len(stream, &limits) {
        let frame = Bytes::copy_from_slice(&stream[..n]);
        stream = &stream[n..];
        let Ok(pdu) = Pdu::decode(frame, &limits) else {
            continue;
        };
        let mut out = BytesMut::new();
        pdu.encode(limits.digests, &mut out);
        assert_eq!(frame_len(&out, &limits), Ok(Some(out.len())));
        let _ = Request::parse(pdu);
    }
});
