//! EXTENDED COPY (LID1) carried out inside the target, and the copy results a session
//! keeps for RECEIVE COPY RESULTS. The parameter list is decoded by `scsi`; here its
//! identification descriptors become volumes (by the NAA designator VPD 83h reports) and
//! each segment is read from its source and written to its destination through
//! `Volume::write`, the path WRITE takes: write gate, dirty bitmap and activity log, so
//! replication and snapshots see a copy like any other write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::chain::ErrorChain as Chain;
use crate::scsi::{self, CopyList, CopyOutcome, Sense, Status};
use crate::server::exec::{read_volume, sense_for, Reply};
use crate::server::luns::{find_by_naa, CopyDevice};
use crate::server::Shared;

/// Bytes a copy reads and writes at a time: memory stays bounded whatever the segment.
const COPY_CHUNK: u64 = 1 << 20;

/// The outcomes of a session's finished copies whose LIST ID USAGE asked them kept, by
/// list identifier (SPC-4 6.18.2: held per I_T nexus; a new session starts empty).
#[derive(Default)]
pub struct CopyResults {
    kept: Mutex<HashMap<u8, CopyOutcome>>,
    /// List identifiers of the session's copies running now.
    running: Mutex<HashSet<u8>>,
}

impl CopyResults {
    pub fn get(&self, list_id: u8) -> Option<CopyOutcome> {
        self.kept.lock().get(&list_id).copied()
    }

    fn keep(&self, list_id: u8, outcome: CopyOutcome) {
        self.kept.lock().insert(list_id, outcome);
    }

    /// Claims `list_id` for a copy that starts; None while another copy of the session
    /// runs under it (SPC-4 6.4.3: the identifier of a kept list is unique).
    fn start(self: &Arc<Self>, list_id: u8) -> Option<Running> {
        self.running.lock().insert(list_id).then(|| Running {
            results: self.clone(),
            list_id,
        })
    }
}

/// A running copy's claim on its list identifier, given back when the copy ends.
struct Running {
    results: Arc<CopyResults>,
    list_id: u8,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.results.running.lock().remove(&self.list_id);
    }
}

/// ILLEGAL REQUEST, OPERATION IN PROGRESS (00h/16h): the list identifier is that of a
/// copy still running.
const fn operation_in_progress() -> Sense {
    Sense::new(scsi::key::ILLEGAL_REQUEST, 0x00, 0x16)
}

/// Who asks for the copy: it reaches the LUs its initiator may reach, no others.
pub struct Requester {
    pub target: String,
    pub initiator: String,
}

/// One segment with its LUs resolved and its range checked, in bytes.
struct Step {
    source: usize,
    destination: usize,
    from: u64,
    to: u64,
    len: u64,
}

/// Resolve every target descriptor and check every segment before a byte moves: a
/// copy that cannot complete changes nothing (each failure with its own sense).
fn prepare(
    node: &Shared,
    who: &Requester,
    list: &CopyList,
) -> Result<(Vec<CopyDevice>, Vec<Step>), Sense> {
    let mut devices = Vec::with_capacity(list.targets.len());
    for t in &list.targets {
        let Some(d) = find_by_naa(node, &who.target, &who.initiator, &t.naa) else {
            return Err(scsi::copy_target_not_reachable());
        };
        if t.block_size != d.volume.block_size() {
            return Err(scsi::incorrect_copy_target_type());
        }
        devices.push(d);
    }
    let mut steps = Vec::with_capacity(list.segments.len());
    for s in &list.segments {
        let (src, dst) = (&devices[s.source], &devices[s.destination]);
        let (sbs, dbs) = (src.volume.block_size(), dst.volume.block_size());
        let len = s.bytes(sbs, dbs);
        // Whole blocks on both sides, or the copy cannot be expressed.
        if len % u64::from(sbs) != 0 || len % u64::from(dbs) != 0 {
            return Err(scsi::incorrect_copy_target_type());
        }
        let from = s.source_lba.checked_mul(u64::from(sbs));
        let to = s.destination_lba.checked_mul(u64::from(dbs));
        let fits = |at: Option<u64>, size: u64| {
            at.and_then(|a| a.checked_add(len))
                .is_some_and(|end| end <= size)
        };
        if !fits(from, src.volume.size()) || !fits(to, dst.volume.size()) {
            return Err(scsi::copy_segment_out_of_range());
        }
        if len > 0 && !dst.writable {
            return Err(scsi::copy_destination_protected());
        }
        steps.push(Step {
            source: s.source,
            destination: s.destination,
            from: from.unwrap_or(0),
            to: to.unwrap_or(0),
            len,
        });
    }
    Ok((devices, steps))
}

/// Copy one segment chunk by chunk. When source and destination overlap on the same
/// volume with the destination after the source, chunks go from the end, so each one
/// is read before it is overwritten (the result is that of a copy through a buffer).
async fn copy_step(
    reply: &Reply,
    src: &CopyDevice,
    dst: &CopyDevice,
    step: &Step,
) -> Result<bool, Sense> {
    let same = Arc::ptr_eq(&src.volume, &dst.volume) && src.snapshot.is_none();
    let backwards = same && step.to > step.from && step.to < step.from + step.len;
    let chunks = step.len.div_ceil(COPY_CHUNK);
    for i in 0..chunks {
        if reply.aborted.load(Ordering::Acquire) {
            return Ok(false);
        }
        let k = if backwards { chunks - 1 - i } else { i };
        let at = k * COPY_CHUNK;
        let n = (step.len - at).min(COPY_CHUNK);
        let started = std::time::Instant::now();
        let data: Bytes = read_volume(&src.volume, src.snapshot, step.from + at, n as usize)
            .await
            .map_err(|e| {
                tracing::warn!(error = %Chain(&e), "extended copy read failed");
                sense_for(&e, false)
            })?;
        // Its chunks count as they go: the command as a whole can take seconds.
        let took = started.elapsed();
        src.volume.io_metrics().read_done(n, took, took);
        let started = std::time::Instant::now();
        dst.volume
            .write(step.to + at, data, false)
            .await
            .map_err(|e| {
                tracing::warn!(error = %Chain(&e), "extended copy write failed");
                sense_for(&e, true)
            })?;
        let took = started.elapsed();
        dst.volume.io_metrics().write_done(n, took, took);
    }
    Ok(true)
}

/// EXTENDED COPY with its parameter list: decode, resolve, check, then copy segment by
/// segment. A failure after the first byte moved ends the copy with COPY ABORTED-class
/// sense of the failing I/O (what moved stays moved, as SPC-4 6.4.1 allows) and, when
/// the list asked it kept, a status of "completed with errors".
pub async fn extended_copy(
    reply: Reply,
    node: Arc<Shared>,
    who: Requester,
    params: Bytes,
    results: Arc<CopyResults>,
    r2ts: u32,
    wanted: u64,
) {
    let list = match scsi::parse_copy_list(&params) {
        Ok(l) => l,
        Err(sense) => {
            return reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await
        }
    };
    let _claim = match list.keep_status.then(|| results.start(list.list_id)) {
        Some(None) => {
            let sense = operation_in_progress();
            return reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await;
        }
        Some(claim) => claim,
        None => None,
    };
    let (devices, steps) = match prepare(&node, &who, &list) {
        Ok(p) => p,
        Err(sense) => {
            tracing::info!(initiator = %who.initiator, %sense, "extended copy refused");
            return reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await;
        }
    };
    let mut outcome = CopyOutcome {
        ok: true,
        segments_processed: 0,
        bytes: 0,
    };
    let mut failure = None;
    for step in &steps {
        match copy_step(
            &reply,
            &devices[step.source],
            &devices[step.destination],
            step,
        )
        .await
        {
            Ok(true) => {
                outcome.segments_processed += 1;
                outcome.bytes += step.len;
            }
            // Aborted by task management: nothing is answered (RFC 7143 4.2.3.3).
            Ok(false) => return,
            Err(sense) => {
                outcome.ok = false;
                failure = Some(sense);
                break;
            }
        }
    }
    if list.keep_status {
        results.keep(list.list_id, outcome);
    }
    match failure {
        None => reply.status(Status::Good, None, r2ts, wanted).await,
        Some(sense) => {
            reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_identifier_is_claimed_once_until_its_copy_ends() {
        let results = Arc::new(CopyResults::default());
        let first = results.start(7).expect("free identifier");
        assert!(results.start(7).is_none(), "in use while the copy runs");
        let other = results.start(8).expect("another identifier");
        drop(first);
        assert!(results.start(7).is_some(), "free again once the copy ended");
        drop(other);
        results.keep(
            7,
            CopyOutcome {
                ok: true,
                segments_processed: 1,
                bytes: 512,
            },
        );
        assert_eq!(results.get(7).map(|o| o.bytes), Some(512));
        assert_eq!(results.get(8), None);
    }
}
