//! Running one SCSI command against its volume and answering it: Data-In sequences
//! with status in the last PDU, SCSI Responses with sense, residuals (RFC 7143 §11.4.5,
//! §11.7), and the rule that a task aborted by task management says nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Semaphore};

use crate::iscsi::pdu::{DataIn, ScsiResponse, RESERVED_TAG};
use crate::scsi::{Response, Sense, Status};
use crate::server::luns::LunHandle;
use crate::server::writer::{CmdSlot, Hold, Outgoing, Stat};
use crate::volume::VolumeError;
use tracing::Instrument;

/// What an answer needs to know about its command.
pub struct Reply {
    pub out: mpsc::Sender<Outgoing>,
    pub itt: u32,
    pub lun: u64,
    /// Expected Data Transfer Length from the command PDU.
    pub edtl: u32,
    /// The initiator set the R bit: Data-In may be sent.
    pub read: bool,
    /// Largest Data-In segment (the initiator's MaxRecvDataSegmentLength).
    pub max_segment: u32,
    /// MaxBurstLength: Data-In sequences end (F bit) at most this far apart.
    pub max_burst: u32,
    /// Set by task management; an aborted task sends nothing (RFC 7143 §4.2.3.3).
    pub aborted: Arc<AtomicBool>,
    pub slot: Option<CmdSlot>,
    /// Released with the final PDU: the task's tag, the bytes its data holds.
    pub hold: Hold,
    /// When the command arrived: the time a read or write spends in the target is how
    /// replication cycles measure the initiators' load (`replication/pace.rs`).
    pub arrived: std::time::Instant,
}

/// Bytes of read data a session may hold for Data-In at once: a read waits for its
/// share before it reads, and gives it back once its last Data-In PDU has been copied
/// to the socket's send buffer. At least one largest transfer fits.
pub const SESSION_READ_BUDGET: u32 = 4 * crate::scsi::MAX_TRANSFER_BYTES;

/// Permits for `len` bytes of `budget` (a transfer larger than the whole budget takes
/// all of it); None once the budget is closed.
async fn take(budget: &Arc<Semaphore>, len: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let n = len.min(SESSION_READ_BUDGET as u64) as u32;
    budget.clone().acquire_many_owned(n).await.ok()
}

/// Residual flags and count for `sent` bytes against the EDTL and the command's own
/// transfer length `wanted` (§11.4.5).
fn residual(edtl: u32, wanted: u64) -> (bool, bool, u32) {
    let edtl64 = edtl as u64;
    if wanted > edtl64 {
        (true, false, (wanted - edtl64).min(u32::MAX as u64) as u32)
    } else if wanted < edtl64 {
        (false, true, (edtl64 - wanted) as u32)
    } else {
        (false, false, 0)
    }
}

impl Reply {
    fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Send the command's final SCSI Response, releasing its CmdSN slot with it.
    async fn finish(mut self, mut r: ScsiResponse) {
        r.itt = self.itt;
        let slot = self.slot.take();
        let hold = std::mem::take(&mut self.hold);
        let _ = self
            .out
            .send(Outgoing::ending(r.to_pdu(), slot, hold))
            .await;
    }

    /// Send `data` (the command's whole natural transfer, `wanted` bytes long before
    /// truncation to the EDTL) as Data-In with GOOD status in the last PDU.
    pub async fn data_in(mut self, data: Bytes, wanted: u64) {
        if self.aborted() {
            return;
        }
        let (overflow, underflow, res) = residual(self.edtl, wanted);
        let len = data.len().min(self.edtl as usize);
        if len == 0 || !self.read {
            let r = ScsiResponse {
                overflow,
                underflow,
                status: Status::Good as u8,
                residual: res,
                ..Default::default()
            };
            return self.finish(r).await;
        }
        let seg = self.max_segment.max(512) as usize;
        let burst = self.max_burst.max(seg as u32) as usize;
        let mut off = 0usize;
        let mut data_sn = 0u32;
        while off < len {
            let burst_end = (off / burst + 1) * burst;
            let end = (off + seg).min(len).min(burst_end);
            let last = end == len;
            let d = DataIn {
                final_bit: last || end == burst_end,
                ack: false,
                overflow: last && overflow,
                underflow: last && underflow,
                status: last.then_some(Status::Good as u8),
                lun: self.lun,
                itt: self.itt,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                data_sn,
                buffer_offset: off as u32,
                residual: if last { res } else { 0 },
                data: data.slice(off..end),
            };
            let out = if last {
                Outgoing::ending(d.to_pdu(), self.slot.take(), std::mem::take(&mut self.hold))
            } else {
                Outgoing::new(d.to_pdu(), Stat::Leave)
            };
            if self.out.send(out).await.is_err() {
                return;
            }
            data_sn += 1;
            off = end;
        }
    }

    /// Send a SCSI Response for a command that moved no Data-In.
    pub async fn status(
        self,
        status: Status,
        sense: Option<&Sense>,
        exp_data_sn: u32,
        wanted: u64,
    ) {
        if self.aborted() {
            return;
        }
        let (overflow, underflow, res) = if status == Status::Good {
            residual(self.edtl, wanted)
        } else {
            (false, false, 0)
        };
        let r = ScsiResponse {
            overflow,
            underflow,
            status: status as u8,
            exp_data_sn,
            residual: res,
            sense: sense.map(|s| Bytes::from(s.to_fixed())).unwrap_or_default(),
            ..Default::default()
        };
        self.finish(r).await;
    }

    /// Answer a response computed without touching the volume.
    pub async fn respond(self, resp: Response) {
        if resp.status == Status::Good && resp.sense.is_none() {
            let wanted = resp.data.len() as u64;
            self.data_in(Bytes::from(resp.data), wanted).await;
        } else {
            self.status(resp.status, resp.sense.as_ref(), 0, 0).await;
        }
    }

    /// Overflow on a write (EDTL shorter than the CDB's transfer): nothing is written,
    /// CHECK CONDITION, INVALID FIELD IN COMMAND INFORMATION UNIT (FCP-4 9.4.2 b).
    pub async fn write_overflow(self, wanted: u64) {
        if self.aborted() {
            return;
        }
        let (overflow, underflow, res) = residual(self.edtl, wanted);
        let r = ScsiResponse {
            overflow,
            underflow,
            status: Status::CheckCondition as u8,
            residual: res,
            sense: Bytes::from(Sense::invalid_field_in_information_unit().to_fixed()),
            ..Default::default()
        };
        self.finish(r).await;
    }
}

/// The one map from a failed volume operation to the sense its command answers with:
/// the cause's OS error decides (ENOSPC on a thin volume is SPACE ALLOCATION FAILED
/// WRITE PROTECT, 27h/07h; EROFS write protected; any other a medium error), through
/// `Sense::from_io_error`, wherever in the chain it sits (a write tracking failure
/// carries its activity log's I/O error).
pub(super) fn sense_for(e: &VolumeError, writing: bool) -> Sense {
    if let VolumeError::OutOfRange { .. } = e {
        return Sense::lba_out_of_range();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Sense::from_io_error(io, writing);
        }
        cause = err.source();
    }
    if writing {
        Sense::write_error()
    } else {
        Sense::medium_error()
    }
}

// An error and every cause under it, for a log line: "write tracking failed: ...:
// No space left on device".
use crate::chain::ErrorChain as Chain;

/// Reads `len` bytes at `offset` of the LUN: the volume, or for a snapshot LUN the
/// volume's content at the snapshot's cut (current content, then the kept copies of
/// pages overwritten since laid over it).
async fn read_lun(lun: &LunHandle, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
    let data = read_volume(&lun.volume, lun.snapshot, offset, len).await?;
    let Some(point) = &lun.point else {
        return Ok(data);
    };
    // A drill LUN: the secondary volume as read just now, as at its recovery point.
    let mut buf = BytesMut::from(&data[..]);
    point
        .overlay(offset, &mut buf)
        .map_err(|why| VolumeError::Io {
            path: lun.spec.volume.clone(),
            source: std::io::Error::other(why),
        })?;
    Ok(buf.freeze())
}

/// [`read_lun`] for a volume and an optional snapshot cut, wherever they come from
/// (EXTENDED COPY names its LUs by designator, not by a LUN of the session).
pub(super) async fn read_volume(
    volume: &crate::volume::Volume,
    snapshot: Option<crate::tracking::CutId>,
    offset: u64,
    len: usize,
) -> Result<Bytes, VolumeError> {
    let data = volume.read(offset, len).await?;
    let Some(cut) = snapshot else {
        return Ok(data);
    };
    let tracking = volume.tracking().ok_or(VolumeError::NotTracked)?;
    let mut buf = BytesMut::from(&data[..]);
    tracking
        .overlay_snapshot(cut, offset, &mut buf)
        .map_err(VolumeError::Tracking)?;
    Ok(buf.freeze())
}

/// Read `blocks` at `lba` and send them, once the session's read budget has room for
/// them: memory follows the budget, not the number of reads the initiator queues.
pub async fn read(
    mut reply: Reply,
    lun: Arc<LunHandle>,
    lba: u64,
    blocks: u32,
    _fua: bool,
    budget: Arc<Semaphore>,
) {
    let bs = lun.volume.block_size() as u64;
    let wanted = blocks as u64 * bs;
    let len = wanted.min(reply.edtl as u64);
    let Some(permit) = take(&budget, len).await else {
        return;
    };
    if reply.aborted() {
        return;
    }
    reply.hold.push(permit);
    let started = std::time::Instant::now();
    match read_lun(&lun, lba * bs, len as usize).await {
        Ok(data) => {
            lun.volume.io_metrics().read_done(
                data.len() as u64,
                started.elapsed(),
                reply.arrived.elapsed(),
            );
            reply.data_in(data, wanted).await
        }
        Err(e) => {
            tracing::warn!(lun = lun.lun, error = %Chain(&e), "read failed");
            let sense = sense_for(&e, false);
            reply
                .status(Status::CheckCondition, Some(&sense), 0, 0)
                .await
        }
    }
}

/// Write collected Data-Out; `wanted` is the command's own transfer length, which
/// may exceed `data` when the EDTL cut it short (reported as overflow).
pub async fn write(
    reply: Reply,
    lun: Arc<LunHandle>,
    lba: u64,
    data: Bytes,
    fua: bool,
    r2ts: u32,
    wanted: u64,
) {
    let bs = lun.volume.block_size() as u64;
    let started = std::time::Instant::now();
    let len = data.len() as u64;
    match lun.volume.write(lba * bs, data, fua).await {
        Ok(()) => {
            lun.volume
                .io_metrics()
                .write_done(len, started.elapsed(), reply.arrived.elapsed());
            reply.status(Status::Good, None, r2ts, wanted).await
        }
        Err(e) => {
            tracing::warn!(lun = lun.lun, error = %Chain(&e), "write failed");
            let sense = sense_for(&e, true);
            reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await
        }
    }
}

/// Largest piece VERIFY reads at once: a medium verification may span the whole
/// volume, and memory stays bounded whatever it asks for.
const VERIFY_CHUNK: u64 = 1 << 20;

/// VERIFY: read the range piece by piece; with BYTCHK compare it to the Data-Out
/// (MISCOMPARE names the first differing byte's offset, SBC-4 5.31).
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    reply: Reply,
    lun: Arc<LunHandle>,
    lba: u64,
    blocks: u32,
    compare: Option<Bytes>,
    r2ts: u32,
    wanted: u64,
    budget: Arc<Semaphore>,
) {
    let bs = lun.volume.block_size() as u64;
    let len = blocks as u64 * bs;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(VERIFY_CHUNK);
        // Each piece read counts against the session's read budget while it is held.
        let Some(_permit) = take(&budget, n).await else {
            return;
        };
        let media = match read_lun(&lun, lba * bs + done, n as usize).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(lun = lun.lun, error = %Chain(&e), "verify read failed");
                let s = sense_for(&e, false);
                return reply
                    .status(Status::CheckCondition, Some(&s), r2ts, 0)
                    .await;
            }
        };
        if let Some(c) = &compare {
            let expected = &c[done as usize..(done + n) as usize];
            if let Some(at) = media.iter().zip(expected).position(|(a, b)| a != b) {
                let s = Sense::miscompare(done + at as u64);
                return reply
                    .status(Status::CheckCondition, Some(&s), r2ts, 0)
                    .await;
            }
        }
        done += n;
    }
    reply.status(Status::Good, None, r2ts, wanted).await
}

/// Answers a command that failed on its volume with the sense its cause calls for.
async fn failed(reply: Reply, lun: &LunHandle, what: &str, e: VolumeError, r2ts: u32) {
    tracing::warn!(lun = lun.lun, error = %Chain(&e), "{what} failed");
    let sense = sense_for(&e, true);
    reply
        .status(Status::CheckCondition, Some(&sense), r2ts, 0)
        .await
}

/// UNMAP with its parameter list: every range checked first (nothing is deallocated
/// when one descriptor is bad), then deallocated in order.
pub async fn unmap(reply: Reply, lun: Arc<LunHandle>, params: Bytes, r2ts: u32, wanted: u64) {
    let ranges = match crate::scsi::unmap_ranges(&lun.lu, &params) {
        Ok(r) => r,
        Err(sense) => {
            return reply
                .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                .await
        }
    };
    let bs = u64::from(lun.volume.block_size());
    for (lba, blocks) in ranges {
        let (offset, len) = (lba * bs, u64::from(blocks) * bs);
        if let Err(e) = lun.volume.discard(offset, len).await {
            return failed(reply, &lun, "unmap", e, r2ts).await;
        }
        lun.volume.io_metrics().unmap_done(len);
    }
    reply.status(Status::Good, None, r2ts, wanted).await
}

/// WRITE SAME: `block` written to every block of the range, or with UNMAP the range
/// deallocated, whatever the block holds (as LIO and tgt do, and as libiscsi's suite
/// expects: deallocated blocks read as zeros, LBPRZ). Without UNMAP, zeros (NDOB) are
/// written: the initiator asked for mapped blocks.
#[allow(clippy::too_many_arguments)]
pub async fn write_same(
    reply: Reply,
    lun: Arc<LunHandle>,
    lba: u64,
    blocks: u64,
    unmap: bool,
    block: Option<Bytes>,
    r2ts: u32,
    wanted: u64,
) {
    let bs = u64::from(lun.volume.block_size());
    let (offset, len) = (lba * bs, blocks * bs);
    let fua = !lun.lu.write_cache_enabled();
    let done = if unmap {
        let r = lun.volume.discard(offset, len).await;
        if r.is_ok() {
            lun.volume.io_metrics().unmap_done(len);
        }
        r
    } else {
        let zero_block;
        let pattern = match &block {
            Some(b) => &b[..],
            None => {
                zero_block = vec![0u8; bs as usize];
                &zero_block[..]
            }
        };
        let started = std::time::Instant::now();
        let r = lun.volume.write_same(offset, len, pattern, fua).await;
        if r.is_ok() {
            lun.volume
                .io_metrics()
                .write_done(len, started.elapsed(), reply.arrived.elapsed());
        }
        r
    };
    match done {
        Ok(()) => reply.status(Status::Good, None, r2ts, wanted).await,
        Err(e) => failed(reply, &lun, "write same", e, r2ts).await,
    }
}

/// A write that runs holding its range exclusively (`Volume::exclusive`).
#[derive(Debug, Clone, Copy)]
pub enum ExclusiveWrite {
    /// COMPARE AND WRITE: the Data-Out is the verify instance, then the write instance.
    CompareAndWrite { lba: u64, blocks: u32, fua: bool },
    /// ORWRITE: the Data-Out is ORed into the blocks.
    OrWrite { lba: u64, blocks: u32, fua: bool },
    /// WRITE ATOMIC: the Data-Out is written whole or not seen at all.
    WriteAtomic { lba: u64, blocks: u32, fua: bool },
}

impl ExclusiveWrite {
    /// The exclusive write a plan asks for, if it is one.
    pub fn of(plan: &crate::scsi::Plan) -> Option<ExclusiveWrite> {
        use crate::scsi::Plan;
        Some(match *plan {
            Plan::CompareAndWrite { lba, blocks, fua } => {
                ExclusiveWrite::CompareAndWrite { lba, blocks, fua }
            }
            Plan::OrWrite { lba, blocks, fua } => ExclusiveWrite::OrWrite { lba, blocks, fua },
            Plan::WriteAtomic { lba, blocks, fua } => {
                ExclusiveWrite::WriteAtomic { lba, blocks, fua }
            }
            _ => return None,
        })
    }
}

/// COMPARE AND WRITE (SBC-4 5.3), ORWRITE (5.10), WRITE ATOMIC (5.48): the range is held
/// exclusively from before the medium is read until the new data has landed, so no other
/// command, from any session, reads or writes those blocks in between. The write goes
/// through the volume's write path (gate, snapshots, activity log, dirty pages).
pub async fn exclusive_write(
    reply: Reply,
    lun: Arc<LunHandle>,
    kind: ExclusiveWrite,
    data: Bytes,
    r2ts: u32,
    wanted: u64,
) {
    let bs = u64::from(lun.volume.block_size());
    let (lba, blocks, fua) = match kind {
        ExclusiveWrite::CompareAndWrite { lba, blocks, fua }
        | ExclusiveWrite::OrWrite { lba, blocks, fua }
        | ExclusiveWrite::WriteAtomic { lba, blocks, fua } => (lba, blocks, fua),
    };
    let (offset, len) = (lba * bs, u64::from(blocks) * bs);
    let need = match kind {
        ExclusiveWrite::CompareAndWrite { .. } => 2 * len,
        _ => len,
    };
    // The Data-Out was collected whole (an EDTL that cut it short was refused).
    if (data.len() as u64) < need {
        let s = Sense::invalid_field_in_information_unit();
        return reply
            .status(Status::CheckCondition, Some(&s), r2ts, 0)
            .await;
    }
    let started = std::time::Instant::now();
    let held = match lun.volume.exclusive(offset, len).await {
        Ok(h) => h,
        Err(e) => return failed(reply, &lun, "exclusive write", e, r2ts).await,
    };
    let new = match kind {
        ExclusiveWrite::CompareAndWrite { .. } => {
            let medium = match held.read().await {
                Ok(m) => m,
                Err(e) => return failed(reply, &lun, "compare and write read", e, r2ts).await,
            };
            if let Some(at) = crate::scsi::first_difference(&medium, &data[..len as usize]) {
                // SBC-4 5.3.2: nothing is written; INFORMATION is the offset of the
                // first byte that differed.
                drop(held);
                let s = Sense::miscompare(at);
                return reply
                    .status(Status::CheckCondition, Some(&s), r2ts, 0)
                    .await;
            }
            data.slice(len as usize..need as usize)
        }
        ExclusiveWrite::OrWrite { .. } => {
            let medium = match held.read().await {
                Ok(m) => m,
                Err(e) => return failed(reply, &lun, "orwrite read", e, r2ts).await,
            };
            let mut merged = data[..len as usize].to_vec();
            crate::scsi::or_into(&medium, &mut merged);
            Bytes::from(merged)
        }
        ExclusiveWrite::WriteAtomic { .. } => data.slice(..len as usize),
    };
    match held.write(offset, new, fua).await {
        Ok(()) => {
            drop(held);
            lun.volume
                .io_metrics()
                .write_done(len, started.elapsed(), reply.arrived.elapsed());
            reply.status(Status::Good, None, r2ts, wanted).await
        }
        Err(e) => {
            drop(held);
            failed(reply, &lun, "exclusive write", e, r2ts).await
        }
    }
}

/// Bytes a SANITIZE OVERWRITE writes at once.
const SANITIZE_PIECE: u64 = 1 << 20;

/// A `fault-injection` build paces SANITIZE OVERWRITE at this many bytes per second when
/// it is set, so a test can watch a sanitize in progress on a small volume (libiscsi's
/// Sanitize.Reset needs one that lasts for seconds). Other builds never pace it.
#[cfg(feature = "fault-injection")]
pub const SANITIZE_PACE_ENV: &str = "TWINLUN_TEST_SANITIZE_BYTES_PER_SEC";

fn sanitize_pace() -> Option<u64> {
    #[cfg(feature = "fault-injection")]
    if let Some(rate) = std::env::var(SANITIZE_PACE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|r| *r > 0)
    {
        return Some(rate);
    }
    None
}

/// Overwrites the whole volume `count` times with `block` (inverted on every other pass
/// with `invert`), through the write path, then makes it durable.
async fn overwrite_volume(
    volume: &crate::volume::Volume,
    block: &[u8],
    count: u8,
    invert: bool,
) -> Result<(), VolumeError> {
    let inverted: Vec<u8> = block.iter().map(|b| !b).collect();
    let pace = sanitize_pace();
    let started = tokio::time::Instant::now();
    let mut written = 0u64;
    for pass in 0..count {
        let pattern = if invert && pass % 2 == 1 {
            &inverted[..]
        } else {
            block
        };
        let mut at = 0;
        while at < volume.size() {
            let n = (volume.size() - at).min(SANITIZE_PIECE);
            volume.write_same(at, n, pattern, false).await?;
            at += n;
            written += n;
            if let Some(rate) = pace {
                let due =
                    started + std::time::Duration::from_secs_f64(written as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
        }
    }
    volume.flush().await
}

/// SANITIZE (SBC-4 5.30): OVERWRITE with `params`, else BLOCK/CRYPTOGRAPHIC ERASE (the
/// whole volume deallocated: it reads as zeros). It runs in a task of its own, so
/// neither an abort, a reset nor the end of the session stops it (SBC-4 4.34.1); until
/// it ends the volume answers other commands with SANITIZE IN PROGRESS. Everything it
/// changes goes through the write path: every page of the volume ends dirty.
pub async fn sanitize(
    reply: Reply,
    lun: Arc<LunHandle>,
    params: Option<Bytes>,
    immed: bool,
    r2ts: u32,
    wanted: u64,
) {
    let bs = lun.volume.block_size();
    let overwrite = match &params {
        Some(p) => match crate::scsi::overwrite_block(p, bs) {
            Ok(o) => Some(o),
            Err(sense) => {
                return reply
                    .status(Status::CheckCondition, Some(&sense), r2ts, 0)
                    .await
            }
        },
        None => None,
    };
    if !lun.volume.start_sanitize() {
        let s = Sense::sanitize_in_progress();
        return reply
            .status(Status::CheckCondition, Some(&s), r2ts, 0)
            .await;
    }
    let volume = lun.volume.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let which = lun.lun;
    tokio::spawn(
        async move {
            let r = match overwrite {
                Some((block, count, invert)) => {
                    overwrite_volume(&volume, &block, count, invert).await
                }
                None => match volume.discard(0, volume.size()).await {
                    Ok(()) => volume.flush().await,
                    Err(e) => Err(e),
                },
            };
            volume.finish_sanitize();
            match &r {
                Ok(()) => tracing::info!(lun = which, "sanitize done"),
                Err(e) => tracing::warn!(lun = which, error = %Chain(e), "sanitize failed"),
            }
            let _ = done_tx.send(r);
        }
        .in_current_span(),
    );
    if immed {
        return reply.status(Status::Good, None, r2ts, wanted).await;
    }
    // An ABORT TASK (or a reset) ends the task, which says nothing, but not the
    // sanitize (SBC-4 4.34.1): stop waiting once the task is aborted.
    let aborted = reply.aborted.clone();
    let abort_seen = async move {
        while !aborted.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let done = tokio::select! {
        r = done_rx => r,
        () = abort_seen => return,
    };
    match done {
        Ok(Ok(())) => reply.status(Status::Good, None, r2ts, wanted).await,
        Ok(Err(e)) => failed(reply, &lun, "sanitize", e, r2ts).await,
        Err(_) => {
            let s = Sense::internal_target_failure();
            reply
                .status(Status::CheckCondition, Some(&s), r2ts, 0)
                .await
        }
    }
}

/// Bytes GET LBA STATUS looks at from its LBA: enough for the descriptors one answer
/// carries on a fragmented file; the initiator asks again from where it ends.
const LBA_STATUS_WINDOW: u64 = 1 << 30;

/// GET LBA STATUS: the file's data and holes from `lba`, in blocks. A snapshot or drill LUN's
/// blocks all read from somewhere: it reports them mapped.
pub async fn lba_status(reply: Reply, lun: Arc<LunHandle>, lba: u64, alloc: u32) {
    let bs = u64::from(lun.volume.block_size());
    let offset = lba * bs;
    let len = (lun.volume.size() - offset.min(lun.volume.size())).min(LBA_STATUS_WINDOW);
    // A thick volume's blocks are all allocated (its preallocated extents may look like
    // holes to SEEK_DATA until written).
    let runs = if lun.snapshot.is_some() || lun.point.is_some() || lun.lu.thick() {
        Ok(vec![(offset, len, true)])
    } else {
        lun.volume.allocation(offset, len)
    };
    let runs = match runs {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(lun = lun.lun, error = %Chain(&e), "get lba status failed");
            let sense = sense_for(&e, false);
            return reply
                .status(Status::CheckCondition, Some(&sense), 0, 0)
                .await;
        }
    };
    // Holes start and end on file-system blocks, whole logical blocks; should one not,
    // the block it shares with data counts as mapped (it was the data's run before).
    let mut extents: Vec<crate::scsi::LbaExtent> = Vec::new();
    for (at, n, mapped) in runs {
        // SBC-4 5.8.2: the first descriptor starts at the LBA asked for, whatever
        // file-system block the run around it began at.
        let mut first = (at / bs).max(lba);
        let end = (at + n).div_ceil(bs);
        if let Some(last) = extents.last_mut() {
            first = first.max(last.lba + last.blocks);
            if last.mapped == mapped && last.lba + last.blocks == first {
                last.blocks = end.max(first) - last.lba;
                continue;
            }
        }
        if end > first {
            extents.push(crate::scsi::LbaExtent {
                lba: first,
                blocks: end - first,
                mapped,
            });
        }
    }
    extents.retain(|e| e.blocks > 0);
    reply
        .respond(crate::scsi::lba_status_data(&extents, alloc))
        .await
}

/// PERSISTENT RESERVE OUT with its parameter list: the LU's reservations change, and
/// when they must outlive a power loss (APTPL) they are saved before GOOD goes back
/// (SPC-5 5.14.4). A save that fails undoes the change and answers HARDWARE ERROR.
#[allow(clippy::too_many_arguments)]
pub async fn persistent_reserve_out(
    reply: Reply,
    node: Arc<crate::server::Shared>,
    lun: Arc<LunHandle>,
    sa: u8,
    scope_type: u8,
    params: Bytes,
    r2ts: u32,
    wanted: u64,
) {
    let run = {
        let lun = lun.clone();
        move || {
            let state = lun.lu.state();
            let _saving = state.saving();
            let before = state.pr();
            let outcome = state.prout(lun.lu.nexus(), sa, scope_type, &params);
            if outcome.changed {
                if let Err(e) = node.lu_states.save(lun.lu.id(), &state.pr()) {
                    tracing::warn!(lun = lun.lun, error = %Chain(&e), "saving persistent reservations failed; change undone");
                    state.restore_pr(before);
                    return Response::check(Sense::internal_target_failure());
                }
            }
            outcome.response
        }
    };
    let resp = match tokio::task::spawn_blocking(run).await {
        Ok(r) => r,
        Err(_) => Response::check(Sense::internal_target_failure()),
    };
    if resp.status == Status::Good {
        reply.status(Status::Good, None, r2ts, wanted).await
    } else {
        reply
            .status(resp.status, resp.sense.as_ref(), r2ts, 0)
            .await
    }
}

/// SYNCHRONIZE CACHE with IMMED: GOOD first, then the flush, whose failure can only be
/// logged (the command has already ended).
pub async fn sync_immed(reply: Reply, lun: Arc<LunHandle>) {
    reply.status(Status::Good, None, 0, 0).await;
    if let Err(e) = lun.volume.flush().await {
        tracing::warn!(lun = lun.lun, error = %Chain(&e), "flush after SYNCHRONIZE CACHE with IMMED failed");
    }
}

/// PRE-FETCH: the range is handed to the file's cache to read ahead; GOOD.
pub async fn prefetch(reply: Reply, lun: Arc<LunHandle>, lba: u64, blocks: u64) {
    let bs = u64::from(lun.volume.block_size());
    if let Err(e) = lun.volume.prefetch(lba * bs, blocks * bs).await {
        // Only a hint: the command still succeeds, the blocks are read when asked for.
        tracing::debug!(lun = lun.lun, error = %Chain(&e), "pre-fetch hint failed");
    }
    reply.status(Status::Good, None, 0, 0).await
}

pub async fn sync(reply: Reply, lun: Arc<LunHandle>) {
    match lun.volume.flush().await {
        Ok(()) => reply.status(Status::Good, None, 0, 0).await,
        Err(e) => {
            tracing::warn!(lun = lun.lun, error = %Chain(&e), "flush failed");
            let sense = sense_for(&e, true);
            reply
                .status(Status::CheckCondition, Some(&sense), 0, 0)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn volume_errors_answer_by_their_cause() {
        let io = |errno| VolumeError::Io {
            path: "v.img".into(),
            source: os(errno),
        };
        // A thin volume whose disk is full: SPACE ALLOCATION FAILED WRITE PROTECT.
        assert_eq!(
            sense_for(&io(libc::ENOSPC), true),
            Sense::space_allocation_failed()
        );
        // So is a write whose activity log record could not get space.
        let tracking = VolumeError::Tracking(crate::tracking::TrackingError::Io {
            path: "tracking/00000000000000aa/al-1.log".into(),
            source: os(libc::ENOSPC),
        });
        assert_eq!(sense_for(&tracking, true), Sense::space_allocation_failed());
        assert!(
            Chain(&tracking)
                .to_string()
                .contains("No space left on device"),
            "{}",
            Chain(&tracking)
        );
        assert_eq!(sense_for(&io(libc::EROFS), true), Sense::write_protected());
        assert_eq!(sense_for(&io(libc::EIO), true), Sense::write_error());
        assert_eq!(sense_for(&io(libc::EIO), false), Sense::medium_error());
        let beyond = VolumeError::OutOfRange {
            offset: 1 << 30,
            len: 512,
            size: 1 << 20,
        };
        assert_eq!(sense_for(&beyond, false), Sense::lba_out_of_range());
        assert_eq!(
            sense_for(&VolumeError::EngineStopped, true),
            Sense::write_error()
        );
    }
}
