//! Task management (RFC 7143 §11.5, §11.6): which tasks a request affects and what it
//! answers. The connection carries it out (ends the tasks, waits for them, answers).

use crate::iscsi::pdu::tmf::tmf_response;
use crate::iscsi::pdu::{TmfFunction, TmfRequest};
use crate::iscsi::serial;

/// Where the referenced task of an ABORT TASK stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Collecting its Data-Out.
    Collecting,
    /// Its I/O is running.
    Running,
    /// No task of this session holds the tag.
    Unknown,
}

/// The tasks a request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affected {
    Nothing,
    /// The one task with this tag.
    Task(u32),
    /// Every task of this session on this LUN.
    Lun(u64),
    /// Every task of this session.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The TMF Response code (§11.6.1).
    pub response: u8,
    pub affected: Affected,
    /// Count a LOGICAL UNIT RESET on the LUN (its unit attention).
    pub reset_lun: bool,
    /// Reset the whole target (every session's tasks, unit attentions).
    pub reset_target: bool,
    /// Close the connection once the response is out (TARGET COLD RESET).
    pub close: bool,
}

impl Decision {
    fn answer(response: u8) -> Decision {
        Decision {
            response,
            affected: Affected::Nothing,
            reset_lun: false,
            reset_target: false,
            close: false,
        }
    }
    fn complete(affected: Affected) -> Decision {
        Decision {
            affected,
            ..Decision::answer(tmf_response::COMPLETE)
        }
    }
}

/// Decide request `t`. `lun` is the decoded LUN and `lun_exists` whether it is mapped
/// for this session; `task` where the referenced task stands; `exp_cmd_sn` the
/// window's ExpCmdSN now.
pub fn decide(
    t: &TmfRequest,
    lun: u64,
    lun_exists: bool,
    task: TaskState,
    exp_cmd_sn: u32,
) -> Decision {
    match t.function {
        TmfFunction::AbortTask => match task {
            TaskState::Collecting | TaskState::Running => {
                Decision::complete(Affected::Task(t.referenced_tag))
            }
            // Already answered (§11.5.1 note: the task is gone).
            TaskState::Unknown if serial::lt(t.ref_cmd_sn, exp_cmd_sn) => {
                Decision::answer(tmf_response::TASK_DOES_NOT_EXIST)
            }
            // Never arrived: nothing to abort, and it is done.
            TaskState::Unknown => Decision::complete(Affected::Nothing),
        },
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet if lun_exists => {
            Decision::complete(Affected::Lun(lun))
        }
        TmfFunction::LogicalUnitReset if lun_exists => Decision {
            reset_lun: true,
            ..Decision::complete(Affected::Lun(lun))
        },
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset => {
            Decision::answer(tmf_response::LUN_DOES_NOT_EXIST)
        }
        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => Decision {
            reset_target: true,
            close: t.function == TmfFunction::TargetColdReset,
            ..Decision::complete(Affected::All)
        },
        TmfFunction::ClearAca => Decision::answer(tmf_response::NOT_SUPPORTED),
        TmfFunction::TaskReassign => Decision::answer(tmf_response::REASSIGN_NOT_SUPPORTED),
        TmfFunction::Other(_) => Decision::answer(tmf_response::REJECTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TmfFunction::*;

    #[test]
    fn tmf_table() {
        use tmf_response::*;
        const TAG: u32 = 0x42;
        struct Case {
            f: TmfFunction,
            lun_exists: bool,
            task: TaskState,
            /// RefCmdSN, ExpCmdSN
            sns: (u32, u32),
            /// response, affected, reset LUN, reset target, close
            want: (u8, Affected, bool, bool, bool),
        }
        let case = |f, lun_exists, task, sns, want| Case {
            f,
            lun_exists,
            task,
            sns,
            want,
        };
        let n = Affected::Nothing;
        let cases = [
            case(
                AbortTask,
                true,
                TaskState::Collecting,
                (5, 6),
                (COMPLETE, Affected::Task(TAG), false, false, false),
            ),
            case(
                AbortTask,
                true,
                TaskState::Running,
                (5, 6),
                (COMPLETE, Affected::Task(TAG), false, false, false),
            ),
            // Answered already: its CmdSN is behind the window.
            case(
                AbortTask,
                true,
                TaskState::Unknown,
                (5, 6),
                (TASK_DOES_NOT_EXIST, n, false, false, false),
            ),
            case(
                AbortTask,
                true,
                TaskState::Unknown,
                (0xffff_fff0, 5),
                (TASK_DOES_NOT_EXIST, n, false, false, false),
            ),
            // Not arrived yet (or never will): nothing to abort.
            case(
                AbortTask,
                true,
                TaskState::Unknown,
                (6, 6),
                (COMPLETE, n, false, false, false),
            ),
            case(
                AbortTask,
                true,
                TaskState::Unknown,
                (3, 0xffff_fff0),
                (COMPLETE, n, false, false, false),
            ),
            case(
                AbortTaskSet,
                true,
                TaskState::Unknown,
                (0, 0),
                (COMPLETE, Affected::Lun(3), false, false, false),
            ),
            case(
                AbortTaskSet,
                false,
                TaskState::Unknown,
                (0, 0),
                (LUN_DOES_NOT_EXIST, n, false, false, false),
            ),
            case(
                ClearTaskSet,
                true,
                TaskState::Unknown,
                (0, 0),
                (COMPLETE, Affected::Lun(3), false, false, false),
            ),
            case(
                ClearTaskSet,
                false,
                TaskState::Unknown,
                (0, 0),
                (LUN_DOES_NOT_EXIST, n, false, false, false),
            ),
            case(
                LogicalUnitReset,
                true,
                TaskState::Running,
                (0, 0),
                (COMPLETE, Affected::Lun(3), true, false, false),
            ),
            case(
                LogicalUnitReset,
                false,
                TaskState::Unknown,
                (0, 0),
                (LUN_DOES_NOT_EXIST, n, false, false, false),
            ),
            case(
                TargetWarmReset,
                false,
                TaskState::Unknown,
                (0, 0),
                (COMPLETE, Affected::All, false, true, false),
            ),
            case(
                TargetColdReset,
                true,
                TaskState::Unknown,
                (0, 0),
                (COMPLETE, Affected::All, false, true, true),
            ),
            case(
                ClearAca,
                true,
                TaskState::Unknown,
                (0, 0),
                (NOT_SUPPORTED, n, false, false, false),
            ),
            case(
                TaskReassign,
                true,
                TaskState::Running,
                (0, 0),
                (REASSIGN_NOT_SUPPORTED, n, false, false, false),
            ),
            case(
                Other(0x1f),
                true,
                TaskState::Unknown,
                (0, 0),
                (REJECTED, n, false, false, false),
            ),
        ];
        for c in cases {
            let t = TmfRequest {
                immediate: true,
                function: c.f,
                lun: 0,
                itt: 1,
                referenced_tag: TAG,
                cmd_sn: 0,
                exp_stat_sn: 0,
                ref_cmd_sn: c.sns.0,
                exp_data_sn: 0,
            };
            let d = decide(&t, 3, c.lun_exists, c.task, c.sns.1);
            let got = (d.response, d.affected, d.reset_lun, d.reset_target, d.close);
            assert_eq!(
                got, c.want,
                "{:?} lun_exists={} {:?} {:?}",
                c.f, c.lun_exists, c.task, c.sns
            );
        }
    }
}
