//! Volume and engine tests. Every behavioural test runs on both engines.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Engine, EngineConfig, EngineKind, Volume, VolumeError};

/// The engines every behavioural test runs on: io_uring as shipped (writes on the pool,
/// cached I/O inline), the same with every request through the ring and pool, io_uring
/// doing writes in the ring too, and the thread pool.
fn engines() -> Vec<(EngineKind, EngineConfig)> {
    let engine_only = EngineConfig {
        inline_nowait: false,
        ..EngineConfig::default()
    };
    let ring_writes = EngineConfig {
        uring_writes_on_pool: false,
        inline_nowait: false,
        ..EngineConfig::default()
    };
    vec![
        (EngineKind::Uring, EngineConfig::default()),
        (EngineKind::Uring, engine_only),
        (EngineKind::Uring, ring_writes),
        (EngineKind::Threads, engine_only),
    ]
}
const MIB: u64 = 1 << 20;

/// Bytes that differ per seed and per position (xorshift; cheap even in debug builds).
fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn open(dir: &Path, name: &str, size: u64, engine: &Engine) -> Volume {
    Volume::open_or_create(&dir.join(name), size, 512, engine.clone()).expect("open volume")
}

#[test]
fn engine_kind_parses_and_displays() {
    for k in [EngineKind::Auto, EngineKind::Uring, EngineKind::Threads] {
        assert_eq!(k.to_string().parse::<EngineKind>(), Ok(k));
    }
    assert_eq!("io_uring".parse::<EngineKind>(), Ok(EngineKind::Uring));
    assert_eq!("THREADS".parse::<EngineKind>(), Ok(EngineKind::Threads));
    assert!("aio".parse::<EngineKind>().is_err());
    assert_eq!(EngineKind::default(), EngineKind::Auto);
}

#[test]
fn auto_chooses_uring_here() {
    // io_uring works on the machines this is developed and benchmarked on.
    let e = Engine::start(EngineKind::Auto).unwrap();
    assert_eq!(e.name(), "io_uring");
    assert_eq!(Engine::start(EngineKind::Uring).unwrap().name(), "io_uring");
    assert_eq!(
        Engine::start(EngineKind::Threads).unwrap().name(),
        "threads"
    );
}

#[test]
fn auto_falls_back_to_threads_and_says_why() {
    #[derive(Clone, Default)]
    struct Log(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();

    super::engine::FAIL_URING_FOR_TEST.with(|f| f.set(true));
    tracing::subscriber::with_default(subscriber, || {
        let e = Engine::start(EngineKind::Auto).unwrap();
        assert_eq!(e.name(), "threads");
        assert!(matches!(
            Engine::start(EngineKind::Uring),
            Err(VolumeError::UringUnavailable(_))
        ));
    });
    super::engine::FAIL_URING_FOR_TEST.with(|f| f.set(false));

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("io engine started"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("engine=\"threads\""), "{text}");
    assert!(lines[0].contains("io_uring unavailable"), "{text}");
}

#[test]
fn creates_a_sparse_file_and_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineKind::Threads).unwrap();
    let path = dir.path().join("a/b/vol.img");
    let v = Volume::open_or_create(&path, 4 << 30, 4096, engine).unwrap();
    assert_eq!(v.size(), 4 << 30);
    assert_eq!(v.block_size(), 4096);
    assert_eq!(v.path(), path);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 4 << 30);
    // 4 GiB apparent, (almost) nothing allocated.
    assert!(meta.blocks() <= 8, "st_blocks = {}", meta.blocks());
}

#[test]
fn geometry_and_size_checks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineKind::Threads).unwrap();
    let p = dir.path().join("v.img");
    for (size, bs) in [
        (0, 512),
        (1000, 512),
        (MIB, 1000),
        (MIB, 256),
        (MIB, 1 << 17),
    ] {
        assert!(
            matches!(
                Volume::open_or_create(&p, size, bs, engine.clone()),
                Err(VolumeError::InvalidGeometry { .. })
            ),
            "{size}/{bs}"
        );
    }
    // A directory is not a volume.
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert!(Volume::open_or_create(&dir.path().join("d"), MIB, 512, engine.clone()).is_err());

    // Shorter file: extended. Longer than the volume: refused.
    std::fs::write(&p, vec![7u8; 4096]).unwrap();
    let v = Volume::open_or_create(&p, MIB, 512, engine.clone()).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), MIB);
    drop(v);
    match Volume::open_or_create(&p, MIB / 2, 512, engine) {
        Err(VolumeError::FileTooLarge {
            file_size, size, ..
        }) => {
            assert_eq!((file_size, size), (MIB, MIB / 2));
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_patterns_match_a_model() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let size = 32 * MIB;
        let v = open(dir.path(), "v.img", size, &engine);
        let mut model = vec![0u8; size as usize];
        let mut rng = StdRng::seed_from_u64(42);
        for i in 0..200u64 {
            // Block aligned, often not 4 KiB aligned; sizes from one block to 3 MiB.
            let blocks = match i % 4 {
                0 => 1,
                1 => rng.gen_range(1..16),
                2 => rng.gen_range(1..256),
                _ => rng.gen_range(2048..6144),
            };
            let len = blocks * 512;
            let offset = rng.gen_range(0..(size / 512 - blocks as u64 + 1)) * 512;
            let data = pattern(i, len);
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
            v.write(offset, data, i % 7 == 0).await.unwrap();

            let roff = rng.gen_range(0..(size / 512 - blocks as u64 + 1)) * 512;
            let got = v.read(roff, len).await.unwrap();
            assert_eq!(
                &got[..],
                &model[roff as usize..roff as usize + len],
                "{kind}/{config:?} read {roff}+{len}"
            );
        }
        // Whole volume, in 4 MiB reads.
        for off in (0..size).step_by(4 * MIB as usize) {
            let got = v.read(off, 4 * MIB as usize).await.unwrap();
            assert!(
                got[..] == model[off as usize..(off + 4 * MIB) as usize],
                "{kind}/{config:?} at {off}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writes_then_read_back() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = Arc::new(open(dir.path(), "v.img", 64 * MIB, &engine));
        // 1024 writes, 256+ in flight (more than the io_uring in-flight table, so the
        // backpressure path runs too), each 4 KiB..64 KiB in its own 64 KiB slot.
        let mut tasks = Vec::new();
        for i in 0..1024u64 {
            let v = Arc::clone(&v);
            tasks.push(tokio::spawn(async move {
                let len = 4096 * (1 + (i as usize % 16));
                v.write(i * 65536, pattern(i, len), false).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..1024u64 {
            let v = Arc::clone(&v);
            tasks.push(tokio::spawn(async move {
                let len = 4096 * (1 + (i as usize % 16));
                let got = v.read(i * 65536, 65536).await.unwrap();
                assert_eq!(got[..len], pattern(i, len)[..], "slot {i}");
                assert!(got[len..].iter().all(|&b| b == 0), "slot {i} tail");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_flush_and_sync() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = open(dir.path(), "v.img", 8 * MIB, &engine);
        v.write(4096, pattern(1, 8192), true).await.unwrap();
        v.write(MIB + 512, pattern(2, 512), false).await.unwrap();
        v.flush().await.unwrap();
        v.sync_blocking().unwrap();
        assert_eq!(v.read(4096, 8192).await.unwrap(), pattern(1, 8192));
        assert_eq!(v.read(MIB + 512, 512).await.unwrap(), pattern(2, 512));
        // What a flush made durable is in the file, seen without the engine.
        let raw = std::fs::read(dir.path().join("v.img")).unwrap();
        assert_eq!(&raw[4096..4096 + 8192], &pattern(1, 8192)[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_is_refused() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let size = MIB;
        let v = open(dir.path(), "v.img", size, &engine);
        let oor = |r: Result<_, VolumeError>| matches!(r, Err(VolumeError::OutOfRange { .. }));
        assert!(oor(v.read(size - 512, 1024).await.map(drop)));
        assert!(oor(v.read(size, 1).await.map(drop)));
        assert!(oor(v.read(u64::MAX, 2).await.map(drop)));
        assert!(oor(v.write(size - 512, pattern(0, 1024), false).await));
        assert!(oor(v.write(u64::MAX - 10, pattern(0, 512), true).await));
        // The last block and empty transfers at the end are in range.
        v.write(size - 512, pattern(3, 512), false).await.unwrap();
        assert_eq!(v.read(size - 512, 512).await.unwrap(), pattern(3, 512));
        assert!(v.read(size, 0).await.unwrap().is_empty());
        v.write(size, Bytes::new(), false).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritten_ranges_read_as_zeros() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = open(dir.path(), "v.img", 64 * MIB, &engine);
        v.write(10 * MIB, pattern(5, 4096), false).await.unwrap();
        let got = v.read(0, 8 * MIB as usize).await.unwrap();
        assert_eq!(got.len(), 8 * MIB as usize);
        assert!(got.iter().all(|&b| b == 0));
        let got = v.read(10 * MIB - 512, 4096 + 1024).await.unwrap();
        assert!(got[..512].iter().all(|&b| b == 0));
        assert_eq!(got[512..512 + 4096], pattern(5, 4096)[..]);
        assert!(got[512 + 4096..].iter().all(|&b| b == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_end_of_a_short_file_are_zero_filled() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = open(dir.path(), "v.img", 4 * MIB, &engine);
        v.write(0, pattern(9, 8192), false).await.unwrap();
        // Someone truncates the file under us; reads must not fail or return short.
        std::fs::OpenOptions::new()
            .write(true)
            .open(v.path())
            .unwrap()
            .set_len(6144)
            .unwrap();
        let got = v.read(4096, 8192).await.unwrap();
        assert_eq!(got.len(), 8192);
        assert_eq!(got[..2048], pattern(9, 8192)[4096..6144]);
        assert!(got[2048..].iter().all(|&b| b == 0));
        assert!(v.read(MIB, 4096).await.unwrap().iter().all(|&b| b == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = open(dir.path(), "v.img", 4 * MIB, &engine);
        v.write(3 * MIB, pattern(11, 65536), false).await.unwrap();
        v.flush().await.unwrap();
        drop(v);
        drop(engine);

        let engine = Engine::start_with(kind, config).unwrap();
        // Reopen larger: the old data stays, the new tail reads as zeros.
        let v = open(dir.path(), "v.img", 8 * MIB, &engine);
        assert_eq!(v.size(), 8 * MIB);
        assert_eq!(v.read(3 * MIB, 65536).await.unwrap(), pattern(11, 65536));
        assert!(v.read(6 * MIB, 4096).await.unwrap().iter().all(|&b| b == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_do_not_hurt_the_engine() {
    for (kind, config) in engines() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let v = Arc::new(open(dir.path(), "v.img", 16 * MIB, &engine));
        // The engine handle may go: volumes keep their own.
        drop(engine);
        let mut tasks = Vec::new();
        for i in 0..128u64 {
            let v = Arc::clone(&v);
            tasks.push(tokio::spawn(async move {
                v.write(i * 131072, pattern(i, 131072), false)
                    .await
                    .unwrap();
                v.read(i * 131072, 131072).await.unwrap()
            }));
        }
        // Abandon half of them mid-flight: their buffers stay with the engine until done.
        for t in tasks.iter().step_by(2) {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        v.write(0, pattern(77, 4096), true).await.unwrap();
        assert_eq!(v.read(0, 4096).await.unwrap(), pattern(77, 4096));
    }
}

#[test]
fn volumes_share_one_engine_across_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineKind::Auto).unwrap();
    let a = open(dir.path(), "a.img", MIB, &engine);
    let b = open(dir.path(), "b.img", MIB, &engine);
    for _ in 0..2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            a.write(0, pattern(1, 4096), false).await.unwrap();
            b.write(0, pattern(2, 4096), false).await.unwrap();
            assert_eq!(a.read(0, 4096).await.unwrap(), pattern(1, 4096));
            assert_eq!(b.read(0, 4096).await.unwrap(), pattern(2, 4096));
        });
    }
}

#[tokio::test]
async fn a_dead_engine_answers_engine_stopped() {
    for accept in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "v.img", MIB, &Engine::dead_for_test(accept));
        let stopped = |r: Result<(), VolumeError>| matches!(r, Err(VolumeError::EngineStopped));
        assert!(stopped(v.read(0, 512).await.map(drop)), "accept={accept}");
        assert!(stopped(v.write(0, pattern(1, 512), true).await));
        assert!(stopped(v.flush().await));
        // Shutdown still syncs without the engine.
        v.sync_blocking().unwrap();
    }
}

/// User + system CPU time of the whole process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass; no other pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Kernel io_uring worker threads (io-wq) of this process: operations the kernel could
/// not complete inline or by polling run there.
fn io_wq_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("iou-wrk"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// 4 KiB random reads and writes at queue depth 32 through the public API, on both engines.
/// Run by hand: `cargo test --release --lib volume::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_engines_4k_qd32() {
    const QD: usize = 32;
    const SPAN: u64 = 256 * MIB;
    let secs: u64 = std::env::var("TWINLUN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let configs = [
        ("uring", EngineKind::Uring, 1, true),
        ("uring x2", EngineKind::Uring, 2, true),
        ("uring-rw", EngineKind::Uring, 1, false),
        ("threads", EngineKind::Threads, 1, true),
    ];
    // TWINLUN_BENCH_ONLY=<label> runs one configuration (for profiling).
    let only = std::env::var("TWINLUN_BENCH_ONLY").ok();
    let mut first = true;
    for round in 0..2 {
        for (label, kind, rings, uring_writes_on_pool) in configs {
            if only.as_deref().is_some_and(|o| o != label) {
                continue;
            }
            let config = EngineConfig {
                rings,
                uring_writes_on_pool,
                ..EngineConfig::default()
            };
            let engine = Engine::start_with(kind, config).unwrap();
            let v = Arc::new(open(dir.path(), "bench.img", SPAN, &engine));
            rt.block_on(async {
                if std::mem::take(&mut first) {
                    // Allocate and cache the whole span once, so reads hit data.
                    for off in (0..SPAN).step_by(MIB as usize) {
                        v.write(off, pattern(off, MIB as usize), false)
                            .await
                            .unwrap();
                    }
                }
                for (write, qd) in [(false, 1), (false, 4), (false, QD), (true, 1), (true, QD)] {
                    let cpu0 = cpu_time();
                    let stop = Instant::now() + Duration::from_secs(secs);
                    let mut tasks = Vec::new();
                    for q in 0..qd {
                        let v = Arc::clone(&v);
                        tasks.push(tokio::spawn(async move {
                            let mut rng = StdRng::seed_from_u64(q as u64);
                            let buf = pattern(q as u64, 4096);
                            let mut n = 0u64;
                            while Instant::now() < stop {
                                let off = rng.gen_range(0..SPAN / 4096) * 4096;
                                if write {
                                    v.write(off, buf.clone(), false).await.unwrap();
                                } else {
                                    v.read(off, 4096).await.unwrap();
                                }
                                n += 1;
                            }
                            n
                        }));
                    }
                    let mut total = 0;
                    for t in tasks {
                        total += t.await.unwrap();
                    }
                    let cpu = cpu_time() - cpu0;
                    println!(
                        "round {round} {label:>9} 4k rand{} qd{qd:<2}: {:>8.0} IOPS, {:.2} us cpu/io, {} io-wq workers",
                        if write { "write" } else { "read " },
                        total as f64 / secs as f64,
                        cpu.as_secs_f64() * 1e6 / total as f64,
                        io_wq_workers(),
                    );
                }
            });
        }
    }
}

/// A clone's base for the tests: bytes in memory.
struct MemBase(Vec<u8>);

impl super::BaseImage for MemBase {
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}

/// Random writes, discards, WRITE SAMEs and read-modify-writes of 512-byte blocks on a
/// clone read back as the base with the changes over it, on every engine; the file
/// holds only the grains written; a reopen over the same file and base reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_reads_its_base_where_never_written_and_its_writes_elsewhere() {
    const SIZE: u64 = 4 * MIB;
    let base = Arc::new(MemBase(pattern(7, SIZE as usize).to_vec()));
    for (i, (kind, config)) in engines().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start_with(kind, config).unwrap();
        let path = dir.path().join("clone.img");
        let open = || {
            Volume::open_or_create(&path, SIZE, 512, engine.clone())
                .unwrap()
                .with_base(base.clone())
                .unwrap()
        };
        let v = open();
        assert!(v.is_clone());
        let mut model = base.0.clone();
        assert_eq!(&v.read(0, SIZE as usize).await.unwrap()[..], &model[..]);
        let mut rng = StdRng::seed_from_u64(i as u64);
        for step in 0..300u64 {
            let blocks = 1 + rng.gen_range(0..24u64);
            let at = rng.gen_range(0..SIZE / 512 - blocks) * 512;
            let len = blocks * 512;
            let r = at as usize..(at + len) as usize;
            match rng.gen_range(0..10) {
                0..=5 => {
                    let data = pattern(1000 + step, len as usize);
                    v.write(at, data.clone(), false).await.unwrap();
                    model[r].copy_from_slice(&data);
                }
                6 => {
                    v.discard(at, len).await.unwrap();
                    model[r].fill(0);
                }
                7 => {
                    let block = pattern(2000 + step, 512);
                    v.write_same(at, len, &block, false).await.unwrap();
                    for c in model[r].chunks_mut(512) {
                        c.copy_from_slice(&block);
                    }
                }
                8 => {
                    // COMPARE AND WRITE's shape: read and write under one hold.
                    let x = v.exclusive(at, len).await.unwrap();
                    let old = x.read().await.unwrap();
                    assert_eq!(&old[..], &model[r.clone()], "step {step}: exclusive read");
                    let data = pattern(3000 + step, len as usize);
                    x.write(at, data.clone(), false).await.unwrap();
                    model[r].copy_from_slice(&data);
                }
                _ => {
                    let got = v.read(at, len as usize).await.unwrap();
                    assert_eq!(&got[..], &model[r], "step {step}: read at {at}");
                }
            }
        }
        assert_eq!(&v.read(0, SIZE as usize).await.unwrap()[..], &model[..]);
        // The file holds the grains written, not the base: far less than the volume.
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < SIZE / 2, "{allocated} bytes allocated");
        assert_eq!(v.allocation(0, SIZE).unwrap(), vec![(0, SIZE, true)]);
        drop(v);
        let v = open();
        assert_eq!(
            &v.read(0, SIZE as usize).await.unwrap()[..],
            &model[..],
            "after a reopen"
        );
    }
}

/// Writes of distinct 512-byte blocks racing inside the same grains of a clone (all at
/// once, through the engine so they interleave): each completes a grain from the base
/// under an exclusive hold, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_into_one_grain_of_a_clone_all_land() {
    const SIZE: u64 = MIB;
    let base = Arc::new(MemBase(pattern(9, SIZE as usize).to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        inline_nowait: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start_with(EngineKind::Threads, config).unwrap();
    let v = Arc::new(
        Volume::open_or_create(&dir.path().join("c.img"), SIZE, 512, engine)
            .unwrap()
            .with_base(base.clone())
            .unwrap(),
    );
    let mut model = base.0.clone();
    let mut tasks = Vec::new();
    // One writer per block of each of 64 grains, all at once.
    for g in 0..64u64 {
        for b in 0..8u64 {
            let at = g * 4096 + b * 512;
            let v = v.clone();
            tasks.push(tokio::spawn(async move {
                v.write(at, pattern(at, 512), false).await.unwrap();
            }));
            model[at as usize..at as usize + 512].copy_from_slice(&pattern(at, 512));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(&v.read(0, SIZE as usize).await.unwrap()[..], &model[..]);
}
