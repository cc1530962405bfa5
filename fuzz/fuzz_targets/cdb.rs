//! CDB decoding (`scsi::plan`): any CDB on a mapped or unmapped LUN, with or without a
//! pending unit attention, gives a plan without a panic, and MODE SELECT parameter
//! data of any shape is applied or refused cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlun::scsi::{plan, Context, LogicalUnit, LuConfig, UnitAttentions};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let cdb_len = (rest.len()).min(32);
    let (cdb, param) = rest.split_at(cdb_len.min(16 + (flags as usize >> 4)));
    let lu = LogicalUnit::new(LuConfig {
        block_size: if flags & 1 != 0 { 4096 } else { 512 },
        num_blocks: 1000,
        read_only: flags & 2 != 0,
        id: 0x1234,
        name: "fuzz".into(),
    });
    let mut ua = if flags & 4 != 0 {
        UnitAttentions::power_on()
    } else {
        UnitAttentions::default()
    };
    let mapped = flags & 8 == 0;
    let p = plan(
        cdb,
        Context {
            lu: mapped.then_some(&lu),
            luns: &[0, 1, 300],
            ua: mapped.then_some(&mut ua),
        },
    );
    let _ = p.transfer_bytes(lu.block_size());
    let _ = p.clamp_to_edtl(u32::from_le_bytes([flags, 0, 2, 0]), lu.block_size());
    let _ = lu.mode_select(flags & 16 != 0, param);
});
