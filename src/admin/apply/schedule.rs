//! Schedules: named tasks that run `replicate SET` at a start time, then every interval.
//! Adding, modifying and deleting one is `admin::replication` (`schedule_add`,
//! `schedule_modify`, `schedule_delete`).

use super::super::protocol::Response;
use super::super::replication as repl;
use crate::catalog::Catalog;

pub(super) fn list(c: &Catalog) -> Response {
    Response::Schedules {
        schedules: repl::schedule_views(c),
    }
}
