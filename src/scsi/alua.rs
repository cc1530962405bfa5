//! Asymmetric logical unit access (SPC-4 5.15): every portal of the node is a target port
//! in a target port group of its own, whose access state an admin sets (implicit ALUA,
//! TPGS 01b). This layer says what a state allows and formats REPORT TARGET PORT
//! GROUPS; the server knows the ports and reads the states.

use super::cdb::{cut, op, sa, Cdb};
use super::{key, Plan, Response, Sense};

/// A target port group's asymmetric access state (SPC-4 6.27, table 170).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
}

/// The target port a session came in through: its RELATIVE TARGET PORT IDENTIFIER and
/// its TARGET PORT GROUP (VPD 83h designators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPort {
    pub relative_port: u16,
    pub group: u16,
}

/// One target port group as REPORT TARGET PORT GROUPS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroupStatus {
    pub group: u16,
    pub state: AccessState,
    /// Relative target port identifiers of its ports.
    pub ports: Vec<u16>,
}

/// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (04h/0Bh).
pub const fn standby() -> Sense {
    Sense::new(key::NOT_READY, 0x04, 0x0B)
}

/// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
/// (04h/0Ah): initiators retry (Linux's ALUA handler waits for the transition).
pub const fn transitioning() -> Sense {
    Sense::new(key::NOT_READY, 0x04, 0x0A)
}

/// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (04h/0Ch).
pub const fn unavailable() -> Sense {
    Sense::new(key::NOT_READY, 0x04, 0x0C)
}

/// UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h): an admin changed the
/// state of a target port group (SPC-4 5.15.2.5).
pub const fn state_changed() -> Sense {
    Sense::new(key::UNIT_ATTENTION, 0x2A, 0x06)
}

/// The sense a command gets through a port in `state`, or None when it runs. Standby
/// serves what SPC-4 5.15.2.4.4 lists (INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS,
/// REQUEST SENSE, MODE SENSE/SELECT, PERSISTENT RESERVE IN/OUT) and, as the section
/// allows ("may support other commands"), TEST UNIT READY and READ CAPACITY, as LIO
/// does for the capacity: libiscsi (QEMU) sends TEST UNIT READY right after login and
/// gives the login up on anything but GOOD or a unit attention, and Linux reads the
/// capacity of every path. Media access answers NOT READY, TARGET PORT IN STANDBY
/// STATE. Unavailable serves only what 5.15.2.4.5 lists.
pub fn refused(state: AccessState, cdb: &[u8]) -> Option<Sense> {
    let opcode = *cdb.first()?;
    let rtpg = opcode == op::MAINTENANCE_IN
        && cdb
            .get(1)
            .is_some_and(|b| b & 0x1F == sa::REPORT_TARGET_PORT_GROUPS);
    let everywhere = matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) || rtpg;
    match state {
        AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => None,
        AccessState::Standby => {
            // MODE SENSE/SELECT 6/10, PERSISTENT RESERVE IN (5Eh) / OUT (5Fh).
            let read_capacity_16 = opcode == op::SERVICE_ACTION_IN_16
                && cdb.get(1).is_some_and(|b| b & 0x1F == sa::READ_CAPACITY_16);
            let standby_too = matches!(
                opcode,
                op::MODE_SENSE_6
                    | op::MODE_SENSE_10
                    | op::MODE_SELECT_6
                    | op::MODE_SELECT_10
                    | op::TEST_UNIT_READY
                    | op::READ_CAPACITY_10
            ) || read_capacity_16
                || opcode == 0x5E
                || opcode == 0x5F;
            (!everywhere && !standby_too).then(standby)
        }
        AccessState::Unavailable => (!everywhere).then(unavailable),
    }
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.27): the format asked; the server lists the
/// groups with [`target_port_groups_data`].
pub fn report_target_port_groups(cdb: Cdb) -> Plan {
    // PARAMETER DATA FORMAT (byte 1 bits 7-5): 000b length only, 001b extended header.
    let format = cdb.byte(1) >> 5;
    if format > 1 {
        return super::check(Sense::invalid_field_in_cdb_bit(1, 7));
    }
    Plan::ReportTargetPortGroups {
        extended: format == 1,
        alloc: cdb.u32(6),
    }
}

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.27.2, tables 168-171).
pub fn target_port_groups_data(groups: &[PortGroupStatus], extended: bool, alloc: u32) -> Response {
    let mut d = vec![0u8; 4];
    if extended {
        // FORMAT TYPE 001b; IMPLICIT TRANSITION TIME 0 (a change is immediate).
        d.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    for g in groups {
        // PREF 0; the state. Supported states: AO_SUP, AN_SUP, S_SUP, U_SUP (no
        // transitioning, no offline, no LBA dependent).
        d.push(g.state as u8);
        d.push(0x0F);
        d.extend_from_slice(&g.group.to_be_bytes());
        // Reserved; STATUS CODE 00h (no status); vendor specific; TARGET PORT COUNT.
        d.extend_from_slice(&[0, 0, 0, g.ports.len().min(255) as u8]);
        for p in g.ports.iter().take(255) {
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&p.to_be_bytes());
        }
    }
    // RETURN DATA LENGTH: the bytes after the first four.
    let len = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Response::good(cut(d, alloc as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_serves_identity_and_refuses_media_access() {
        let rtpg = [op::MAINTENANCE_IN, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
        for cdb in [
            &[op::INQUIRY, 0, 0, 0, 96, 0][..],
            &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0][..],
            &rtpg[..],
            &[op::MODE_SENSE_6, 0, 0x3F, 0, 0xFF, 0][..],
            &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0][..],
            &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert_eq!(refused(AccessState::Standby, cdb), None, "{cdb:02x?}");
        }
        for cdb in [
            &[
                op::SERVICE_ACTION_IN_16,
                0x12,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0x20,
                0,
                0,
            ][..],
            &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
            &[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
            &[op::MAINTENANCE_IN, 0x0C, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0][..],
        ] {
            assert_eq!(refused(AccessState::Standby, cdb), Some(standby()));
            assert_eq!(refused(AccessState::Unavailable, cdb), Some(unavailable()));
            assert_eq!(refused(AccessState::ActiveNonOptimized, cdb), None);
        }
        assert_eq!(
            refused(
                AccessState::Unavailable,
                &[op::MODE_SENSE_6, 0, 0x3F, 0, 0xFF, 0]
            ),
            Some(unavailable())
        );
        assert_eq!(refused(AccessState::Standby, &[]), None);
    }

    #[test]
    fn report_target_port_groups_lists_states_and_ports() {
        let groups = [
            PortGroupStatus {
                group: 1,
                state: AccessState::ActiveOptimized,
                ports: vec![1],
            },
            PortGroupStatus {
                group: 2,
                state: AccessState::Standby,
                ports: vec![2],
            },
        ];
        let r = target_port_groups_data(&groups, true, 1024);
        assert_eq!(
            r.data,
            [
                0, 0, 0, 28, 0x10, 0, 0, 0, //
                0x00, 0x0F, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, //
                0x02, 0x0F, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2,
            ]
        );
        let r = target_port_groups_data(&groups, false, 6);
        assert_eq!(r.data, [0, 0, 0, 24, 0x00, 0x0F]);
    }
}
