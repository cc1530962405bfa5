//! Text keys (`iscsi::text`): any bytes parse or fail cleanly; what parses encodes and
//! parses back to the same pairs; the assembler keeps to its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlun::iscsi::text::{encode, parse, split, Assembler};

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse(data) {
        let again = encode(&pairs);
        assert_eq!(parse(&again).as_ref(), Ok(&pairs));
        for piece in split(&again, 64) {
            assert!(piece.len() <= 64);
        }
    }
    let mut a = Assembler::new(1024);
    for chunk in data.chunks(97) {
        if a.push(chunk).is_err() {
            break;
        }
    }
    assert!(a.take().len() <= 1024);
});
