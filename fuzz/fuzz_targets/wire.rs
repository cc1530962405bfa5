//! Replication frames (`replication::wire`): any frame body decodes or fails cleanly
//! (control messages, plain, zero and compressed extents), and a decoded extent
//! encodes back to a body that decodes to the same extent.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use twinlun::replication::wire::{
    decode_body, encode_extent_header, encode_message, ExtentKind, Frame,
};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode_body(Bytes::copy_from_slice(data)) else {
        return;
    };
    if let Frame::Control(m) = &frame {
        let mut out = BytesMut::new();
        encode_message(m, &mut out);
        let body = out.split_off(4).freeze();
        match decode_body(body) {
            Ok(Frame::Control(back)) => assert_eq!(&back, m),
            other => panic!("an encoded message did not decode back: {other:?}"),
        }
    }
    if let Frame::Extent(e) = frame {
        let mut out = BytesMut::new();
        encode_extent_header(&e, &mut out);
        if let ExtentKind::Data(d) = &e.kind {
            out.extend_from_slice(d);
        }
        // The header starts with the frame length; the body follows it.
        let body = out.split_off(4).freeze();
        match decode_body(body) {
            Ok(Frame::Extent(back)) => assert_eq!(back, e),
            other => panic!("an encoded extent did not decode back: {other:?}"),
        }
    }
});
