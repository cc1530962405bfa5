//! Mode parameters (SPC-5 7.5, SBC-4 6.5): MODE SENSE(6)/(10) answers and MODE SELECT
//! parameter lists. The pages: read-write error recovery (01h), caching (08h, WCE
//! changeable), control (0Ah, SWP changeable) and informational exceptions control (1Ch).
//! Nothing can be saved: PS is 0 and page control 11b is refused.

use super::cdb::{cut, Cdb};
use super::{LogicalUnit, Response, Sense};

/// What MODE SELECT can change. `Default` is the power-on state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// Caching page WCE (SBC-4 6.5.5).
    pub wce: bool,
    /// Control page SWP, software write protect (SPC-5 7.5.8).
    pub swp: bool,
}

impl Default for ModeState {
    fn default() -> ModeState {
        ModeState {
            wce: true,
            swp: false,
        }
    }
}

const PAGE_RW_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0A;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const PAGE_ALL: u8 = 0x3F;

/// Every page we return for 3Fh, in ascending order (SPC-5 6.14: pages in ascending order).
const PAGES: [u8; 4] = [
    PAGE_RW_ERROR_RECOVERY,
    PAGE_CACHING,
    PAGE_CONTROL,
    PAGE_INFORMATIONAL_EXCEPTIONS,
];

/// Device-specific parameter of the mode parameter header for direct access devices
/// (SBC-4 6.5.1): WP bit 7, DPOFUA bit 4 (we accept DPO and FUA in READ/WRITE CDBs).
const DSP_WP: u8 = 0x80;
const DSP_DPOFUA: u8 = 0x10;

/// Current (or default) values of one page, page code and PAGE LENGTH included.
fn page_values(code: u8, st: &ModeState) -> Option<Vec<u8>> {
    let page = match code {
        // SBC-4 6.5.9: no recovery knobs; everything zero.
        PAGE_RW_ERROR_RECOVERY => vec![PAGE_RW_ERROR_RECOVERY, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        PAGE_CACHING => {
            // SBC-4 6.5.5: byte 2 WCE bit 2, RCD bit 0 (read cache stays enabled).
            let mut p = vec![0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 0x12;
            if st.wce {
                p[2] |= 0x04;
            }
            p
        }
        PAGE_CONTROL => {
            // SPC-5 7.5.8: TST 000b, D_SENSE 0 (fixed format sense), QUEUE ALGORITHM MODIFIER
            // 1h (unrestricted reordering: commands run concurrently), QERR 00b,
            // UA_INTLCK_CTRL 00b, SWP bit 3 of byte 4, BUSY TIMEOUT PERIOD FFFFh (unlimited).
            let mut p = vec![0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 0x0A;
            p[3] = 0x10;
            if st.swp {
                p[4] |= 0x08;
            }
            p[8] = 0xFF;
            p[9] = 0xFF;
            p
        }
        // SPC-5 7.5.14: DEXCPT=1, no informational exception reporting.
        PAGE_INFORMATIONAL_EXCEPTIONS => {
            vec![
                PAGE_INFORMATIONAL_EXCEPTIONS,
                0x0A,
                0x08,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]
        }
        _ => return None,
    };
    Some(page)
}

/// Changeable-values mask of one page (SPC-5 6.14.3, page control 01b): header bytes as in
/// the page, a one for every bit MODE SELECT may change.
fn page_mask(code: u8) -> Option<Vec<u8>> {
    let mut p = page_values(code, &ModeState::default())?;
    for b in p.iter_mut().skip(2) {
        *b = 0;
    }
    match code {
        PAGE_CACHING => p[2] = 0x04,
        PAGE_CONTROL => p[4] = 0x08,
        _ => {}
    }
    Some(p)
}

/// MODE SENSE(6) (SPC-5 6.13) and MODE SENSE(10) (SPC-5 6.14).
pub fn mode_sense(cdb: Cdb, lu: &LogicalUnit, ten: bool) -> Response {
    let dbd = cdb.byte(1) & 0x08 != 0;
    let llbaa = ten && cdb.byte(1) & 0x10 != 0;
    let pc = cdb.byte(2) >> 6;
    let code = cdb.byte(2) & 0x3F;
    let subpage = cdb.byte(3);
    let alloc = if ten {
        usize::from(cdb.u16(7))
    } else {
        usize::from(cdb.byte(4))
    };

    // SPC-5 6.14.3, table 170: saved values are not supported.
    if pc == 0b11 {
        return Response::check(Sense::saving_parameters_not_supported());
    }
    // No subpages: only subpage 00h, or FFh ("all subpages", which is just the page).
    if subpage != 0x00 && subpage != 0xFF {
        return Response::check(Sense::invalid_field_in_cdb(3));
    }
    let single = [code];
    let codes: &[u8] = if code == PAGE_ALL {
        &PAGES
    } else if PAGES.contains(&code) {
        &single
    } else {
        return Response::check(Sense::invalid_field_in_cdb_bit(2, 5));
    };

    let state = lu.mode_state();
    let mut pages = Vec::new();
    for &c in codes {
        let page = match pc {
            0b00 => page_values(c, &state),
            0b01 => page_mask(c),
            _ => page_values(c, &ModeState::default()),
        };
        pages.extend(page.unwrap_or_default());
    }

    // Block descriptor (SBC-4 6.5.2): nothing in it is changeable.
    let changeable = pc == 0b01;
    let (blocks, block_len) = if changeable {
        (0, 0)
    } else {
        (lu.num_blocks(), lu.block_size())
    };
    let descriptor: Vec<u8> = if dbd {
        Vec::new()
    } else if llbaa {
        // Long LBA mode parameter block descriptor (SBC-4 6.5.2.3).
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&blocks.to_be_bytes());
        d[12..16].copy_from_slice(&block_len.to_be_bytes());
        d
    } else {
        // Short LBA mode parameter block descriptor (SBC-4 6.5.2.2): more blocks than fit
        // read as FFFFFFFFh.
        let mut d = vec![0u8; 8];
        let short = u32::try_from(blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&short.to_be_bytes());
        d[5..8].copy_from_slice(&block_len.to_be_bytes()[1..4]);
        d
    };

    let mut dsp = DSP_DPOFUA;
    if lu.write_protected() {
        dsp |= DSP_WP;
    }

    let mut out = Vec::with_capacity(8 + descriptor.len() + pages.len());
    if ten {
        // Mode parameter header(10) (SPC-5 7.5.5): MODE DATA LENGTH excludes itself (2 bytes).
        let total = 8 + descriptor.len() + pages.len();
        out.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        out.push(0); // medium type
        out.push(dsp);
        out.push(if llbaa && !dbd { 0x01 } else { 0x00 }); // LONGLBA
        out.push(0);
        out.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
    } else {
        // Mode parameter header(6): at most 4 + 8 + 56 bytes here, fits the one-byte length.
        let total = 4 + descriptor.len() + pages.len();
        out.push((total - 1) as u8);
        out.push(0);
        out.push(dsp);
        out.push(descriptor.len() as u8);
    }
    out.extend_from_slice(&descriptor);
    out.extend_from_slice(&pages);
    Response::good(cut(out, alloc))
}

fn offset(at: usize) -> u16 {
    u16::try_from(at).unwrap_or(u16::MAX)
}

/// Validate a MODE SELECT parameter list (SPC-5 6.11, 6.12, 7.5) against the current state
/// and return the state it asks for. Every page is checked before anything is applied.
pub fn parse_select(
    ten: bool,
    data: &[u8],
    current: &ModeState,
    block_size: u32,
) -> Result<ModeState, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(Sense::parameter_list_length_error());
    }
    // MEDIUM TYPE must be 00h for direct access devices (SBC-4 6.5.1).
    let medium_at = if ten { 2 } else { 1 };
    if data[medium_at] != 0 {
        return Err(Sense::invalid_field_in_parameter_list(
            offset(medium_at),
            None,
        ));
    }
    let (bd_len, bd_len_at) = if ten {
        (usize::from(u16::from_be_bytes([data[6], data[7]])), 6)
    } else {
        (usize::from(data[3]), 3)
    };
    let long_lba = ten && data[4] & 0x01 != 0;
    let desc_size = if long_lba { 16 } else { 8 };
    if bd_len != 0 && bd_len != desc_size {
        return Err(Sense::invalid_field_in_parameter_list(
            offset(bd_len_at),
            None,
        ));
    }
    if hdr + bd_len > data.len() {
        return Err(Sense::parameter_list_length_error());
    }
    if bd_len != 0 {
        // The block length cannot change (no FORMAT UNIT); zero means "unchanged". The number
        // of blocks is ignored (SBC-4 6.5.2: it cannot change the capacity here).
        let d = &data[hdr..hdr + bd_len];
        let (len_at, len) = if long_lba {
            (12, u32::from_be_bytes([d[12], d[13], d[14], d[15]]))
        } else {
            (5, u32::from_be_bytes([0, d[5], d[6], d[7]]))
        };
        if len != 0 && len != block_size {
            return Err(Sense::invalid_field_in_parameter_list(
                offset(hdr + len_at),
                None,
            ));
        }
    }

    let mut next = *current;
    let mut at = hdr + bd_len;
    while at < data.len() {
        if at + 2 > data.len() {
            return Err(Sense::parameter_list_length_error());
        }
        // SPF (bit 6): sub_page format; we have no subpages.
        if data[at] & 0x40 != 0 {
            return Err(Sense::invalid_field_in_parameter_list(offset(at), Some(6)));
        }
        let code = data[at] & 0x3F;
        let (Some(ours), Some(mask)) = (page_values(code, &next), page_mask(code)) else {
            return Err(Sense::invalid_field_in_parameter_list(offset(at), Some(5)));
        };
        let len = usize::from(data[at + 1]);
        if len + 2 != ours.len() {
            return Err(Sense::invalid_field_in_parameter_list(offset(at + 1), None));
        }
        if at + 2 + len > data.len() {
            return Err(Sense::parameter_list_length_error());
        }
        let page = &data[at..at + 2 + len];
        // SPC-5 7.5.1: a parameter that is not changeable must be sent with its current value.
        for i in 2..page.len() {
            let bad = (page[i] ^ ours[i]) & !mask[i];
            if bad != 0 {
                let bit = 7 - bad.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_parameter_list(
                    offset(at + i),
                    Some(bit),
                ));
            }
        }
        match code {
            PAGE_CACHING => next.wce = page[2] & 0x04 != 0,
            PAGE_CONTROL => next.swp = page[4] & 0x08 != 0,
            _ => {}
        }
        at += 2 + len;
    }
    Ok(next)
}
