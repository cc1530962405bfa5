//! The thread-pool engine: worker threads (`WORKERS` by default) take requests from the shared channel and run
//! them with positioned reads and writes. Used where io_uring cannot be set up, or when
//! asked for.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Op, Request};
use crate::volume::VolumeError;

/// Default worker threads. Page-cache hits barely block, so this mostly bounds how many slow
/// device writes (FUA, flush) can be outstanding at once.
pub(crate) const WORKERS: usize = 16;

/// Starts the pool. The workers exit once every sender is dropped and the queue is empty.
pub(crate) fn start(rx: mpsc::Receiver<Request>, workers: usize) -> Result<(), VolumeError> {
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..workers {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("twinlun-io-{i}"))
            .spawn(move || worker(&rx))
            .map_err(VolumeError::EngineSpawn)?;
    }
    Ok(())
}

fn worker(rx: &Mutex<mpsc::Receiver<Request>>) {
    loop {
        // One idle worker waits on the channel while holding the lock; the others queue on
        // the lock. The lock is released before the request runs. A std mutex: it sleeps
        // on a futex after a short spin, where parking_lot's yields the CPU in a loop, and
        // sixteen workers yielding in turn took a seventh of the server's CPU when writes
        // went through the pool.
        let next = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            // A worker panicked holding the lock: the channel itself is still sound.
            Err(poisoned) => poisoned.into_inner().blocking_recv(),
        };
        let Some(req) = next else { return };
        let out = run(&req.file, req.op);
        // The caller may have stopped waiting; nothing to do then.
        let _ = req.reply.send(out);
    }
}

fn run(file: &File, op: Op) -> io::Result<Bytes> {
    match op {
        Op::Read { offset, len } => read_at(file, offset, len).map(Bytes::from),
        Op::Write { offset, data, fua } => {
            if fua {
                write_dsync(file, &data, offset)?;
            } else {
                file.write_all_at(&data, offset)?;
            }
            Ok(Bytes::new())
        }
        Op::Flush => file.sync_data().map(|()| Bytes::new()),
    }
}

/// A FUA write: `pwritev2(RWF_DSYNC)` makes just this write durable. Where the kernel
/// refuses the flag, write and then fdatasync the file.
fn write_dsync(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `iov` describes `data`, which is borrowed for the whole call; pwritev2
        // only reads through it. The fd belongs to `file`, alive for the call.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_DSYNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                    file.write_all_at(data, offset)?;
                    return file.sync_data();
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let n = n as usize;
        data = &data[n.min(data.len())..];
        offset += n as u64;
    }
    Ok(())
}

/// Reads `len` bytes at `offset`; whatever lies past the end of the file reads as zeros.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // End of file: the rest is already zero.
    crate::durable::read_up_to(file, &mut buf, offset)?;
    Ok(buf)
}
