//! The io_uring engine: one dedicated thread owns one ring.
//!
//! Requests arrive over the bounded channel. The ring thread keeps a READ on an eventfd in
//! the ring at all times, so it can block in `submit_and_wait(1)` and still wake for either
//! a completion or a new request: a submitter that finds the thread asleep writes the
//! eventfd. While the thread is awake (busy reaping and submitting) submitters skip the
//! write, so under load there is no extra syscall per request.
//!
//! Buffers, the file and the reply sender of every operation live in the in-flight table,
//! keyed by the SQE's user_data, until its CQE arrives (cloud-hypervisor's
//! `block/src/io/async_io` does the same). A full table or SQ is backpressure: requests
//! wait in the channel or in the local `pending` queue, they are never failed for it.
//! Short reads and writes are resubmitted for the rest; EAGAIN and EINTR are retried; a
//! read past the end of the file returns zeros.
//!
//! The ring can run writes too (FUA as RWF_DSYNC), but by default the engine sends them to
//! a pwrite pool instead: see `EngineConfig::uring_writes_on_pool`.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring, Probe};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::{Op, Request};
use crate::volume::VolumeError;

/// Default ring threads per engine: one ring thread saturates far above what the iSCSI
/// path delivers on small machines, and a second one competes with the network tasks.
pub(crate) const RINGS: usize = 1;
/// Submission queue entries; the completion queue gets twice as many.
const RING_ENTRIES: u32 = 256;
/// Operations the thread keeps in the kernel at once. With the eventfd read this never
/// exceeds the SQ size, so the CQ (twice as large) cannot overflow.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;
/// user_data of the eventfd read; slot indices are always smaller.
const EVENTFD_TAG: u64 = u64::MAX;
/// Largest single read or write SQE; longer transfers continue like a short transfer.
const MAX_CHUNK: usize = 1 << 30;
/// EAGAIN/EINTR retries of one operation before its error is returned.
const MAX_RETRIES: u32 = 1000;

/// Wakes the ring thread out of `submit_and_wait`.
pub(crate) struct Waker {
    eventfd: OwnedFd,
    /// True while the ring thread is (about to be) blocked in the kernel waiting.
    sleeping: AtomicBool,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd nobody owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called after a request was sent: wakes the thread if it is asleep.
    pub(crate) fn wake_if_sleeping(&self) {
        // Pairs with the fence in `Ring::run` between setting `sleeping` and looking at the
        // channel: either the ring thread sees our request, or we see it sleeping.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake_always();
        }
    }

    pub(crate) fn wake_always(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live local to an eventfd we own. It cannot block:
        // the counter would have to reach u64::MAX - 1 first, and the ring thread drains it.
        let r = unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        if r < 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "io_uring engine: eventfd write failed");
        }
    }
}

/// Sets up the ring on its own thread and starts it. Returns once the ring is up, or with
/// the reason it could not be set up.
pub(crate) fn start(rx: mpsc::Receiver<Request>) -> Result<Arc<Waker>, VolumeError> {
    let waker = Arc::new(Waker::new().map_err(VolumeError::UringUnavailable)?);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread_waker = Arc::clone(&waker);
    std::thread::Builder::new()
        .name("twinlun-uring".into())
        .spawn(move || match Ring::new(rx, thread_waker) {
            Ok(mut ring) => {
                let _ = ready_tx.send(Ok(()));
                ring.run();
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(VolumeError::EngineSpawn)?;
    ready_rx.recv().map_err(|_| VolumeError::EngineStopped)??;
    Ok(waker)
}

/// One operation in the in-flight table.
struct Slot {
    file: Arc<File>,
    op: SlotOp,
    reply: oneshot::Sender<io::Result<Bytes>>,
    retries: u32,
    /// An SQE for this slot was pushed and its CQE has not arrived: the kernel may be
    /// using the buffer.
    in_kernel: bool,
}

enum SlotOp {
    Read {
        offset: u64,
        /// Capacity `want`; `len()` is what the kernel has filled so far. Not zeroed up
        /// front: only a read that meets the end of the file zero-fills the rest.
        buf: Vec<u8>,
        want: usize,
    },
    Write {
        offset: u64,
        data: Bytes,
        done: usize,
        /// Pass RWF_DSYNC (FUA in one operation).
        dsync: bool,
        /// FUA on a kernel that refused RWF_DSYNC: fdatasync once the write is done.
        fsync_after: bool,
    },
    Fsync,
}

struct Ring {
    ring: IoUring,
    rx: mpsc::Receiver<Request>,
    waker: Arc<Waker>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    in_use: usize,
    /// Slots whose next SQE is not yet in the SQ (new, resubmitted, or the SQ was full).
    pending: VecDeque<usize>,
    /// Where the eventfd read lands. Boxed so its address is stable.
    eventfd_buf: Box<[u8; 8]>,
    eventfd_armed: bool,
    /// All senders are gone: finish what is in flight, then stop.
    closed: bool,
    /// False once the kernel refused RWF_DSYNC; FUA then becomes write + fdatasync.
    dsync_ok: bool,
}

impl Ring {
    fn new(rx: mpsc::Receiver<Request>, waker: Arc<Waker>) -> Result<Ring, VolumeError> {
        // Only this thread submits; completions need not interrupt it with IPIs because it
        // enters the kernel to wait anyway. Older kernels lack these flags: plain ring then.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))
            .map_err(VolumeError::UringUnavailable)?;

        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(VolumeError::UringUnavailable)?;
        for (code, name) in [
            (opcode::Read::CODE, "READ"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::Fsync::CODE, "FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(VolumeError::UringOpcodeMissing { opcode: name });
            }
        }

        let mut r = Ring {
            ring,
            rx,
            waker,
            slots: Vec::with_capacity(MAX_IN_FLIGHT),
            free: Vec::with_capacity(MAX_IN_FLIGHT),
            in_use: 0,
            pending: VecDeque::with_capacity(MAX_IN_FLIGHT),
            eventfd_buf: Box::new([0; 8]),
            eventfd_armed: false,
            closed: false,
            dsync_ok: true,
        };
        // Prove the ring works end to end (seccomp or a sandbox may allow setup but not
        // io_uring_enter): arm the eventfd read and submit it.
        r.arm_eventfd();
        r.ring.submit().map_err(VolumeError::UringUnavailable)?;
        Ok(r)
    }

    fn run(&mut self) {
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(2 * RING_ENTRIES as usize);
        loop {
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(user_data, res) in &cqes {
                self.complete(user_data, res);
            }
            self.intake();
            self.fill_sq();
            if self.closed && self.in_use == 0 {
                return;
            }

            let busy = !self.ring.completion().is_empty() || !self.pending.is_empty();
            let res = if busy {
                // Work in hand: submit what is queued and go round without blocking.
                self.ring.submit()
            } else {
                let accepting = !self.closed && self.in_use < MAX_IN_FLIGHT;
                if accepting {
                    self.waker.sleeping.store(true, Ordering::Relaxed);
                    // Pairs with the fence in `Waker::wake_if_sleeping`.
                    fence(Ordering::SeqCst);
                    if !self.rx.is_empty() {
                        self.waker.sleeping.store(false, Ordering::Relaxed);
                        continue;
                    }
                }
                let r = self.ring.submit_and_wait(1);
                self.waker.sleeping.store(false, Ordering::Relaxed);
                r
            };
            if let Err(e) = res {
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // The kernel is short of room (CQ backlog, memory): reap and retry.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => std::thread::yield_now(),
                    _ => {
                        tracing::error!(error = %e, "io_uring engine: io_uring_enter failed, engine stops");
                        return;
                    }
                }
            }
        }
    }

    /// Takes new requests from the channel while the in-flight table has room.
    fn intake(&mut self) {
        while !self.closed && self.in_use < MAX_IN_FLIGHT {
            match self.rx.try_recv() {
                Ok(req) => self.accept(req),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    fn accept(&mut self, req: Request) {
        let op = match req.op {
            Op::Read { len: 0, .. } => {
                let _ = req.reply.send(Ok(Bytes::new()));
                return;
            }
            Op::Read { offset, len } => SlotOp::Read {
                offset,
                buf: Vec::with_capacity(len),
                want: len,
            },
            Op::Write { data, .. } if data.is_empty() => {
                let _ = req.reply.send(Ok(Bytes::new()));
                return;
            }
            Op::Write { offset, data, fua } => SlotOp::Write {
                offset,
                data,
                done: 0,
                dsync: fua && self.dsync_ok,
                fsync_after: fua && !self.dsync_ok,
            },
            Op::Flush => SlotOp::Fsync,
        };
        let slot = Slot {
            file: req.file,
            op,
            reply: req.reply,
            retries: 0,
            in_kernel: false,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.in_use += 1;
        self.pending.push_back(idx);
    }

    fn arm_eventfd(&mut self) {
        if self.eventfd_armed {
            return;
        }
        let sqe = opcode::Read::new(
            types::Fd(self.waker.eventfd.as_raw_fd()),
            self.eventfd_buf.as_mut_ptr(),
            self.eventfd_buf.len() as u32,
        )
        .build()
        .user_data(EVENTFD_TAG);
        // SAFETY: the buffer is a boxed field of `self`; it is only freed after this read
        // completes, and leaked by `Drop` if the read is still armed. The eventfd lives in
        // `self.waker`, which we hold.
        if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
            self.eventfd_armed = true;
        }
    }

    /// Moves pending slots into the SQ until it is full.
    fn fill_sq(&mut self) {
        self.arm_eventfd();
        while let Some(&idx) = self.pending.front() {
            let Some(Some(slot)) = self.slots.get_mut(idx) else {
                // Not reachable: pending only holds live slots. Drop the stale index.
                self.pending.pop_front();
                continue;
            };
            let fd = types::Fd(slot.file.as_raw_fd());
            let sqe = match &mut slot.op {
                SlotOp::Read { offset, buf, want } => {
                    let done = buf.len();
                    let rest = buf.spare_capacity_mut();
                    let len = (*want - done).min(rest.len()).min(MAX_CHUNK) as u32;
                    opcode::Read::new(fd, rest.as_mut_ptr().cast::<u8>(), len)
                        .offset(*offset + done as u64)
                        .build()
                }
                SlotOp::Write {
                    offset,
                    data,
                    done,
                    dsync,
                    ..
                } => {
                    let rest = &data[*done..];
                    let len = rest.len().min(MAX_CHUNK) as u32;
                    opcode::Write::new(fd, rest.as_ptr(), len)
                        .offset(*offset + *done as u64)
                        .rw_flags(if *dsync { libc::RWF_DSYNC } else { 0 })
                        .build()
                }
                SlotOp::Fsync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
            .user_data(idx as u64);
            // SAFETY: the buffer (read Vec or write Bytes) and the file are owned by the
            // slot, which stays in `self.slots` untouched until this SQE's CQE arrives
            // (`in_kernel`); `Drop` leaks in-kernel slots instead of freeing them.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                // SQ full: backpressure. The slot stays pending for the next round.
                break;
            }
            slot.in_kernel = true;
            self.pending.pop_front();
        }
    }

    fn complete(&mut self, user_data: u64, res: i32) {
        if user_data == EVENTFD_TAG {
            self.eventfd_armed = false;
            if res < 0 && res != -libc::EAGAIN && res != -libc::EINTR && res != -libc::ECANCELED {
                tracing::warn!(error = %io::Error::from_raw_os_error(-res), "io_uring engine: eventfd read failed");
            }
            return;
        }
        let idx = user_data as usize;
        let Some(entry) = self.slots.get_mut(idx) else {
            tracing::error!(user_data, "io_uring engine: completion for an unknown slot");
            return;
        };
        let Some(slot) = entry.as_mut() else {
            tracing::error!(user_data, "io_uring engine: completion for a free slot");
            return;
        };
        slot.in_kernel = false;

        if res < 0 {
            let errno = -res;
            if (errno == libc::EAGAIN || errno == libc::EINTR) && slot.retries < MAX_RETRIES {
                slot.retries += 1;
                self.pending.push_back(idx);
                return;
            }
            if let SlotOp::Write {
                done: 0,
                dsync: dsync @ true,
                fsync_after,
                ..
            } = &mut slot.op
            {
                if errno == libc::EOPNOTSUPP || errno == libc::EINVAL {
                    // The kernel refuses RWF_DSYNC on this file: write, then fdatasync.
                    if self.dsync_ok {
                        tracing::info!(
                            "io_uring engine: RWF_DSYNC refused, FUA writes use fdatasync"
                        );
                    }
                    self.dsync_ok = false;
                    *dsync = false;
                    *fsync_after = true;
                    self.pending.push_back(idx);
                    return;
                }
            }
            self.finish(idx, Err(io::Error::from_raw_os_error(errno)));
            return;
        }

        let n = res as usize;
        match &mut slot.op {
            SlotOp::Read { buf, want, .. } => {
                // The kernel never reports more than the SQE asked for; clamp anyway so
                // `set_len` cannot pass the capacity.
                let n = n.min(*want - buf.len()).min(buf.spare_capacity_mut().len());
                // SAFETY: the completed read wrote `n` bytes at the start of the spare
                // capacity (the SQE pointed there), so they are initialized now.
                unsafe { buf.set_len(buf.len() + n) };
                if n == 0 || buf.len() >= *want {
                    // n == 0 is the end of the file: the rest reads as zeros.
                    buf.resize(*want, 0);
                    let buf = std::mem::take(buf);
                    self.finish(idx, Ok(Bytes::from(buf)));
                } else {
                    self.pending.push_back(idx);
                }
            }
            SlotOp::Write {
                data,
                done,
                fsync_after,
                ..
            } => {
                if n == 0 {
                    self.finish(idx, Err(io::ErrorKind::WriteZero.into()));
                    return;
                }
                *done += n;
                if *done < data.len() {
                    self.pending.push_back(idx);
                } else if *fsync_after {
                    slot.op = SlotOp::Fsync;
                    self.pending.push_back(idx);
                } else {
                    self.finish(idx, Ok(Bytes::new()));
                }
            }
            SlotOp::Fsync => self.finish(idx, Ok(Bytes::new())),
        }
    }

    fn finish(&mut self, idx: usize, out: io::Result<Bytes>) {
        if let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) {
            self.free.push(idx);
            self.in_use -= 1;
            // The caller may have stopped waiting; nothing to do then.
            let _ = slot.reply.send(out);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Normally nothing is in the kernel here but the eventfd read. If the thread stops
        // early (io_uring_enter failed, or a panic unwinds), the kernel may still write into
        // in-flight buffers: leak those rather than free them. Their callers see
        // EngineStopped as the reply senders are dropped.
        for entry in self.slots.iter_mut() {
            if let Some(slot) = entry.take() {
                if slot.in_kernel {
                    let Slot {
                        file, op, reply, ..
                    } = slot;
                    drop(reply);
                    std::mem::forget(file);
                    std::mem::forget(op);
                }
            }
        }
        if self.eventfd_armed {
            std::mem::forget(std::mem::take(&mut self.eventfd_buf));
        }
    }
}
