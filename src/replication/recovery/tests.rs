use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;

const BLOCK: u64 = 512;

/// Data written in place between two checkpoints: small, so the crash tests cross
/// checkpoints.
const CHECKPOINT_BYTES: u64 = 2048;
const SMALL: StoreConfig = StoreConfig {
    checkpoint_bytes: CHECKPOINT_BYTES,
};

/// A set directory and its volume files in one temporary directory (on tmpfs when
/// there is one: the crash tests replay thousands of fsyncs).
struct Rig {
    _tmp: TempDir,
    root: PathBuf,
    sizes: Vec<u64>,
}

fn temp_root() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("twinlun-recv")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

impl Rig {
    fn new(sizes: &[u64]) -> Rig {
        Rig::in_dir(temp_root(), sizes)
    }

    /// A rig on the disk's file system: tmpfs keeps every page in memory, so only
    /// there does a write or read past the page cache show (kernels before 6.6 also
    /// take no `O_DIRECT` on tmpfs).
    fn on_disk(sizes: &[u64]) -> Rig {
        Rig::in_dir(tempfile::tempdir().expect("temp dir"), sizes)
    }

    fn in_dir(tmp: TempDir, sizes: &[u64]) -> Rig {
        let root = tmp.path().to_owned();
        for (i, &size) in sizes.iter().enumerate() {
            let f = File::create(root.join(format!("vol{i}.img"))).expect("create volume");
            f.set_len(size).expect("size volume");
        }
        Rig {
            _tmp: tmp,
            root,
            sizes: sizes.to_vec(),
        }
    }

    /// A copy of everything, volumes and set directory.
    fn copy(&self) -> Rig {
        let tmp = temp_root();
        let root = tmp.path().to_owned();
        copy_tree(&self.root, &root);
        Rig {
            _tmp: tmp,
            root,
            sizes: self.sizes.clone(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("set")
    }

    fn targets(&self) -> Vec<VolumeTarget> {
        self.sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| VolumeTarget {
                name: format!("vol{i}"),
                path: self.root.join(format!("vol{i}.img")),
                size,
            })
            .collect()
    }

    fn open(&self) -> ReceiverStore {
        ReceiverStore::open_with(&self.dir(), self.targets(), SMALL).expect("open")
    }

    fn content(&self) -> Model {
        let volumes = self
            .targets()
            .iter()
            .map(|t| {
                let mut bytes = fs::read(&t.path).expect("read volume");
                bytes.resize(t.size as usize, 0);
                bytes
            })
            .collect();
        Model(volumes)
    }

    fn zeros(&self) -> Model {
        Model(self.sizes.iter().map(|&s| vec![0; s as usize]).collect())
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir())
            .expect("read set dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dst = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            fs::copy(entry.path(), dst).expect("copy");
        }
    }
}

/// The content of every volume; printed as lengths and checksums, not bytes.
#[derive(Clone, PartialEq, Eq)]
struct Model(Vec<Vec<u8>>);

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sums: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{} bytes crc {:#010x}", v.len(), crc32c::crc32c(v)))
            .collect();
        write!(f, "Model{sums:?}")
    }
}

impl std::ops::Deref for Model {
    type Target = Vec<Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[derive(Debug, Clone)]
enum Ext {
    Data { vol: u32, off: u64, bytes: Vec<u8> },
    Zero { vol: u32, off: u64, len: u64 },
}

impl Ext {
    fn data(vol: u32, off: u64, len: u64, seed: u8) -> Ext {
        let bytes = (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8).max(1))
            .collect();
        Ext::Data { vol, off, bytes }
    }
}

fn apply_model(model: &mut Model, exts: &[Ext]) {
    for e in exts {
        match e {
            Ext::Data { vol, off, bytes } => {
                let o = *off as usize;
                model[*vol as usize][o..o + bytes.len()].copy_from_slice(bytes);
            }
            Ext::Zero { vol, off, len } => {
                let o = *off as usize;
                model[*vol as usize][o..o + *len as usize].fill(0);
            }
        }
    }
}

fn put(store: &mut ReceiverStore, e: &Ext) -> Result<(), RecoveryError> {
    match e {
        Ext::Data { vol, off, bytes } => {
            store.put(*vol, *off, ExtentData::Data(bytes), crc32c::crc32c(bytes))
        }
        Ext::Zero { vol, off, len } => store.put(*vol, *off, ExtentData::Zero { len: *len }, 0),
    }
}

fn meta(generation: u64, cut: u64) -> CutMeta {
    CutMeta {
        generation,
        cut,
        taken_unix: 1_700_000_000 + generation * 1000 + cut,
    }
}

fn run_cut(
    store: &mut ReceiverStore,
    m: CutMeta,
    exts: &[Ext],
    keep: usize,
) -> Result<(), RecoveryError> {
    let progress = store.begin(m)?;
    for e in &exts[progress.extents as usize..] {
        put(store, e)?;
    }
    store.commit_and_apply(keep)
}

/// Five cuts over two volumes: overlapping data, zero ranges, ranges no cut touches.
fn sample_cuts() -> Vec<Vec<Ext>> {
    vec![
        vec![
            Ext::data(0, 0, 4096, 1),
            Ext::data(1, 1024, 2048, 2),
            Ext::data(0, 8192, 512, 3),
        ],
        vec![
            Ext::data(0, 512, 1024, 4),
            Ext::Zero {
                vol: 1,
                off: 0,
                len: 2048,
            },
        ],
        vec![
            Ext::data(1, 4096, 4096, 5),
            Ext::data(1, 5000, 100, 6),
            Ext::Zero {
                vol: 0,
                off: 2048,
                len: 4096,
            },
        ],
        vec![Ext::data(0, 0, 16384, 7)],
        vec![
            Ext::data(0, 100, 3, 8),
            Ext::data(1, 8191, 1, 9),
            Ext::Zero {
                vol: 0,
                off: 12288,
                len: 4096,
            },
        ],
    ]
}

/// Applies `cuts` as cuts 1.. of generation 1; returns the model after each (index =
/// cut id; index 0 is the initial content).
fn apply_all(rig: &Rig, store: &mut ReceiverStore, cuts: &[Vec<Ext>], keep: usize) -> Vec<Model> {
    let mut models = vec![rig.content()];
    for (i, exts) in cuts.iter().enumerate() {
        run_cut(store, meta(1, i as u64 + 1), exts, keep).expect("cut");
        let mut next = models[i].clone();
        apply_model(&mut next, exts);
        assert_eq!(rig.content(), next, "after cut {}", i + 1);
        assert_eq!(store.current(), Some(&meta(1, i as u64 + 1)));
        assert!(store.staged().is_none());
        models.push(next);
    }
    models
}

fn point_cuts(store: &ReceiverStore) -> Vec<u64> {
    store.recovery_points().iter().map(|p| p.cut).collect()
}

#[test]
fn cuts_apply_in_order_and_match_the_model() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    assert_eq!(store.current(), None);
    assert!(store.recovery_points().is_empty());
    apply_all(&rig, &mut store, &sample_cuts(), 3);
    drop(store);
    // A clean reopen changes nothing.
    let store = rig.open();
    assert_eq!(store.current(), Some(&meta(1, 5)));
    assert_eq!(point_cuts(&store), vec![5, 4, 3]);
}

#[test]
fn recovery_points_are_newest_first_and_pruned_to_keep() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    run_cut(&mut store, meta(1, 1), &cuts[0], 3).expect("cut 1");
    // The first cut of a generation keeps no point before it.
    assert_eq!(point_cuts(&store), vec![1]);
    assert_eq!(store.recovery_points()[0].undo_bytes, 0);
    run_cut(&mut store, meta(1, 2), &cuts[1], 3).expect("cut 2");
    assert_eq!(point_cuts(&store), vec![2, 1]);
    let points = store.recovery_points();
    assert_eq!(points[1].taken_unix, meta(1, 1).taken_unix);
    assert_eq!(
        points[1].undo_bytes,
        fs::metadata(rig.dir().join("undo-1.log"))
            .expect("undo")
            .len()
    );
    for (i, exts) in cuts.iter().enumerate().skip(2) {
        run_cut(&mut store, meta(1, i as u64 + 1), exts, 3).expect("cut");
    }
    assert_eq!(point_cuts(&store), vec![5, 4, 3]);
    assert_eq!(rig.files(), vec!["state.json", "undo-3.log", "undo-4.log"]);
    // A smaller keep prunes at the next commit.
    run_cut(&mut store, meta(1, 6), &cuts[0], 2).expect("cut 6");
    assert_eq!(point_cuts(&store), vec![6, 5]);
    assert_eq!(rig.files(), vec!["state.json", "undo-5.log"]);
    run_cut(&mut store, meta(1, 7), &cuts[1], 1).expect("cut 7");
    assert_eq!(point_cuts(&store), vec![7]);
    assert_eq!(rig.files(), vec!["state.json"]);
    run_cut(&mut store, meta(1, 8), &cuts[2], 0).expect("cut 8");
    assert_eq!(point_cuts(&store), vec![8]);
}

#[test]
fn undo_log_holds_exactly_the_ranges_the_cut_writes() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    run_cut(&mut store, meta(1, 1), &cuts[0], 2).expect("cut 1");
    run_cut(&mut store, meta(1, 2), &cuts[1], 2).expect("cut 2");
    let path = rig.dir().join("undo-1.log");
    let file = File::open(&path).expect("undo");
    let scan = scan_log(&file, &path, UNDO_MAGIC, &rig.sizes)
        .expect("scan")
        .expect("valid");
    assert_eq!(scan.meta, meta(1, 1));
    assert!(scan.end.is_some());
    let mut ranges = Vec::new();
    for_each_record(&file, &path, &scan, &rig.sizes, |r, _| {
        match r {
            Record::Data {
                volume,
                offset,
                len,
                ..
            }
            | Record::Zero {
                volume,
                offset,
                len,
            } => ranges.push((volume, offset, len)),
            Record::Placed { .. } => panic!("a placed record in an undo log"),
            Record::End { .. } => {}
        }
        Ok(())
    })
    .expect("records");
    assert_eq!(ranges, vec![(0, 512, 1024), (1, 0, 2048)]);
}

#[test]
fn roll_back_to_every_kept_point_gives_exactly_that_cut() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts, 5);
    assert_eq!(point_cuts(&store), vec![5, 4, 3, 2, 1]);
    drop(store);
    for target in 1..=5u64 {
        let copy = rig.copy();
        let mut store = copy.open();
        store.roll_back_to(target).expect("roll back");
        assert_eq!(copy.content(), models[target as usize], "cut {target}");
        assert_eq!(store.current(), Some(&meta(1, target)));
        let expected: Vec<u64> = (1..=target).rev().collect();
        assert_eq!(point_cuts(&store), expected);
        drop(store);
        // Durable, and further back still works.
        let mut store = copy.open();
        assert_eq!(store.current(), Some(&meta(1, target)));
        if target > 1 {
            store.roll_back_to(1).expect("roll back to 1");
            assert_eq!(copy.content(), models[1]);
        }
        // Deltas of generation 1 were taken on content the volumes no longer hold.
        assert!(matches!(
            store.begin(meta(1, 9)),
            Err(RecoveryError::NeedsNewGeneration { generation: 1 })
        ));
        run_cut(&mut store, meta(2, 1), &cuts[3], 5).expect("new generation");
        assert_eq!(point_cuts(&store), vec![1]);
    }
    let mut store = rig.open();
    assert!(matches!(
        store.roll_back_to(42),
        Err(RecoveryError::UnknownPoint { cut: 42 })
    ));
    store.roll_back_to(5).expect("the current cut is a no-op");
    assert_eq!(rig.content(), models[5]);
}

#[test]
fn a_retired_store_refuses_every_cut_reset_and_roll_back() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..3], 5);
    assert_eq!(store.retire().expect("retire"), Some(meta(1, 3)));
    assert!(matches!(
        store.begin(meta(1, 4)),
        Err(RecoveryError::Retired)
    ));
    assert!(matches!(store.reset(2), Err(RecoveryError::Retired)));
    assert!(matches!(store.roll_back_to(1), Err(RecoveryError::Retired)));
    assert!(matches!(
        store.roll_back_to_base(2),
        Err(RecoveryError::Retired)
    ));
    assert_eq!(rig.content(), models[3]);
    // A promote that failed after it gives the set back.
    store.unretire();
    run_cut(&mut store, meta(1, 4), &cuts[3], 5).expect("receives again");
}

#[test]
fn roll_back_to_the_primarys_base_keeps_the_generation_across_a_reopen() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..3], 5);
    store.roll_back_to_base(2).expect("roll back to the base");
    assert_eq!(rig.content(), models[2]);
    drop(store);
    let mut store = rig.open();
    assert_eq!(store.current(), Some(&meta(1, 2)));
    // The primary's next cut of the same generation, computed from cut 2, applies.
    run_cut(&mut store, meta(1, 4), &cuts[3], 5).expect("same generation goes on");
    assert_eq!(point_cuts(&store), vec![4, 2, 1]);
    assert!(matches!(
        store.roll_back_to_base(3),
        Err(RecoveryError::UnknownPoint { cut: 3 })
    ));
}

#[test]
fn roll_back_discards_a_staged_cut() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..3], 3);
    store.begin(meta(1, 4)).expect("begin");
    put(&mut store, &cuts[3][0]).expect("put");
    store.roll_back_to(2).expect("roll back");
    assert!(store.staged().is_none());
    assert_eq!(rig.content(), models[2]);
    assert_eq!(rig.files(), vec!["state.json", "undo-1.log"]);
}

#[test]
fn reset_deletes_every_point_and_starts_a_generation() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..3], 4);
    store.begin(meta(1, 4)).expect("begin");
    put(&mut store, &cuts[3][0]).expect("put");
    store.reset(2).expect("reset");
    assert_eq!(store.current(), None);
    assert_eq!(store.generation(), 2);
    assert!(store.staged().is_none());
    assert!(store.recovery_points().is_empty());
    assert_eq!(rig.files(), vec!["state.json"]);
    assert_eq!(rig.content(), models[3], "content is left as is");
    assert!(matches!(
        store.begin(meta(1, 9)),
        Err(RecoveryError::StaleGeneration {
            generation: 1,
            current: 2
        })
    ));
    assert!(matches!(
        store.reset(1),
        Err(RecoveryError::StaleGeneration { .. })
    ));
    drop(store);
    let mut store = rig.open();
    assert_eq!(store.generation(), 2);
    assert_eq!(store.current(), None);
    run_cut(&mut store, meta(2, 1), &cuts[4], 4).expect("cut");
    run_cut(&mut store, meta(2, 2), &cuts[0], 4).expect("cut");
    assert_eq!(point_cuts(&store), vec![2, 1]);
    store.reset(2).expect("reset again, same generation");
    assert_eq!(store.current(), None);
}

#[test]
fn a_newer_generation_without_reset_drops_the_old_points() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    apply_all(&rig, &mut store, &cuts[..3], 4);
    run_cut(&mut store, meta(2, 1), &cuts[3], 4).expect("cut");
    assert_eq!(point_cuts(&store), vec![1]);
    assert_eq!(store.generation(), 2);
    assert_eq!(rig.files(), vec!["state.json"]);
}

#[test]
fn old_cuts_and_generations_are_refused() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    apply_all(&rig, &mut store, &cuts[..2], 4);
    assert!(matches!(
        store.begin(meta(1, 2)),
        Err(RecoveryError::StaleCut { cut: 2, current: 2 })
    ));
    assert!(matches!(
        store.begin(meta(0, 7)),
        Err(RecoveryError::StaleGeneration { .. })
    ));
    assert!(matches!(
        store.commit_and_apply(3),
        Err(RecoveryError::NotStaging)
    ));
    assert!(matches!(
        put(&mut store, &cuts[0][0]),
        Err(RecoveryError::NotStaging)
    ));
    // Cuts may skip ids.
    run_cut(&mut store, meta(1, 10), &cuts[2], 4).expect("cut 10");
    assert_eq!(point_cuts(&store), vec![10, 2, 1]);
}

#[test]
fn a_partly_staged_cut_resumes_and_a_different_one_is_discarded() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..2], 3);
    let third = &cuts[2];
    let p = store.begin(meta(1, 3)).expect("begin");
    assert_eq!((p.extents, p.bytes, p.last_end), (0, 0, None));
    put(&mut store, &third[0]).expect("put");
    put(&mut store, &third[1]).expect("put");
    let expect = StagedProgress {
        meta: meta(1, 3),
        extents: 2,
        bytes: 4096 + 100,
        last_end: Some((1, 5100)),
    };
    assert_eq!(store.staged(), Some(expect));
    // The link drops; the same cut begins again.
    assert_eq!(store.begin(meta(1, 3)).expect("resume"), expect);
    drop(store);
    // The receiver restarts; what was staged is still there.
    let mut store = rig.open();
    assert_eq!(store.staged(), Some(expect));
    assert_eq!(store.begin(meta(1, 3)).expect("resume"), expect);
    put(&mut store, &third[2]).expect("put");
    store.commit_and_apply(3).expect("commit");
    let mut m3 = models[2].clone();
    apply_model(&mut m3, third);
    assert_eq!(rig.content(), m3);

    // A different cut replaces what was staged.
    store.begin(meta(1, 4)).expect("begin");
    put(&mut store, &cuts[3][0]).expect("put");
    let p = store.begin(meta(1, 5)).expect("a different cut");
    assert_eq!(p.extents, 0);
    put(&mut store, &cuts[4][0]).expect("put");
    // The same id taken at another time is another cut too.
    let mut other = meta(1, 5);
    other.taken_unix += 1;
    assert_eq!(store.begin(other).expect("begin").extents, 0);
    for e in &cuts[4] {
        put(&mut store, e).expect("put");
    }
    store.commit_and_apply(3).expect("commit");
    apply_model(&mut m3, &cuts[4]);
    assert_eq!(rig.content(), m3);
    assert_eq!(store.current(), Some(&other));
}

#[test]
fn a_bad_crc_is_refused_and_stages_nothing() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    store.begin(meta(1, 1)).expect("begin");
    let bytes = vec![7u8; 1000];
    let good = crc32c::crc32c(&bytes);
    let err = store
        .put(0, 0, ExtentData::Data(&bytes), good ^ 1)
        .expect_err("bad crc");
    assert!(matches!(
        err,
        RecoveryError::CrcMismatch {
            volume: 0,
            offset: 0,
            len: 1000,
            ..
        }
    ));
    assert_eq!(store.staged().expect("staged").extents, 0);
    let len = fs::metadata(rig.dir().join(STAGING_FILE))
        .expect("log")
        .len();
    assert_eq!(len, LOG_HEADER as u64);
    store.commit_and_apply(2).expect("commit an empty cut");
    assert_eq!(rig.content(), rig.zeros());
    assert_eq!(store.current(), Some(&meta(1, 1)));
}

#[test]
fn extents_outside_the_volumes_are_refused() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    store.begin(meta(1, 1)).expect("begin");
    let bytes = vec![1u8; 512];
    let crc = crc32c::crc32c(&bytes);
    assert!(matches!(
        store.put(1, 8192 - 511, ExtentData::Data(&bytes), crc),
        Err(RecoveryError::OutOfRange { volume: 1, .. })
    ));
    assert!(matches!(
        store.put(0, u64::MAX - 10, ExtentData::Zero { len: 100 }, 0),
        Err(RecoveryError::OutOfRange { volume: 0, .. })
    ));
    assert!(matches!(
        store.put(2, 0, ExtentData::Data(&bytes), crc),
        Err(RecoveryError::NoSuchVolume {
            volume: 2,
            count: 2
        })
    ));
    assert!(matches!(
        store.put(0, 0, ExtentData::Zero { len: 0 }, 0),
        Err(RecoveryError::EmptyExtent { .. })
    ));
    assert_eq!(store.staged().expect("staged").extents, 0);
    store
        .put(1, 8192 - 512, ExtentData::Data(&bytes), crc)
        .expect("the last block fits");
    assert_eq!(store.staged().expect("staged").extents, 1);
}

/// Where the staging log's next record goes (the log may hold less until a flush).
fn staged_len(store: &ReceiverStore) -> u64 {
    store.staging.as_ref().expect("staging").appender.position()
}

#[test]
fn a_torn_staging_tail_resumes_before_the_torn_record() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..1], 3);
    let exts = &cuts[2];
    store.begin(meta(1, 2)).expect("begin");
    // Where each record ends.
    let mut ends = vec![LOG_HEADER as u64];
    for e in exts {
        put(&mut store, e).expect("put");
        ends.push(staged_len(&store));
    }
    drop(store);
    let full = *ends.last().expect("ends");
    let mut cut_points: Vec<u64> = (0..full).step_by(7).collect();
    cut_points.extend(ends.iter().flat_map(|&e| [e.saturating_sub(1), e, e + 1]));
    for len in cut_points.into_iter().filter(|&l| l <= full) {
        let copy = rig.copy();
        let log = copy.dir().join(STAGING_FILE);
        OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|f| f.set_len(len))
            .expect("truncate");
        let mut store = copy.open();
        let whole = ends.iter().filter(|&&e| e <= len).count();
        match store.staged() {
            // The header itself was torn: nothing staged.
            None => assert!(len < LOG_HEADER as u64, "len {len}"),
            Some(p) => {
                assert_eq!(p.extents as usize, whole - 1, "len {len}");
                let on_disk = fs::metadata(&log).expect("log").len();
                assert_eq!(on_disk, ends[whole - 1], "torn tail truncated");
            }
        }
        run_cut(&mut store, meta(1, 2), exts, 3).expect("resume");
        let mut expected = models[1].clone();
        apply_model(&mut expected, exts);
        assert_eq!(copy.content(), expected, "len {len}");
    }
}

#[test]
fn a_damaged_record_ends_the_staged_prefix() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    // A cut before, so this one is staged rather than written in place.
    let models = apply_all(&rig, &mut store, &cuts[..1], 3);
    let exts = &cuts[2];
    store.begin(meta(1, 2)).expect("begin");
    put(&mut store, &exts[0]).expect("put");
    let first_end = staged_len(&store);
    put(&mut store, &exts[1]).expect("put");
    put(&mut store, &exts[2]).expect("put");
    drop(store);
    // Flip a data byte of the second record.
    let log = rig.dir().join(STAGING_FILE);
    let mut bytes = fs::read(&log).expect("read");
    bytes[first_end as usize + RECORD_HEADER + 10] ^= 0xff;
    fs::write(&log, bytes).expect("write");
    let mut store = rig.open();
    assert_eq!(store.staged().expect("staged").extents, 1);
    run_cut(&mut store, meta(1, 2), exts, 3).expect("resume");
    let mut expected = models[1].clone();
    apply_model(&mut expected, exts);
    assert_eq!(rig.content(), expected);
}

#[test]
fn open_reset_clears_a_set_whose_state_is_damaged() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let cuts = sample_cuts();
    let models = apply_all(&rig, &mut store, &cuts[..3], 3);
    drop(store);
    fs::write(rig.dir().join(STATE_FILE), b"{ not json").expect("damage");
    let err = ReceiverStore::open_with(&rig.dir(), rig.targets(), SMALL).expect_err("damaged");
    assert!(matches!(err, RecoveryError::StateFile { .. }));
    let mut store = ReceiverStore::open_reset(&rig.dir(), rig.targets(), 2).expect("reset");
    assert_eq!(store.current(), None);
    assert_eq!(store.generation(), 2);
    assert_eq!(rig.files(), vec!["state.json"]);
    assert_eq!(rig.content(), models[3]);
    run_cut(&mut store, meta(2, 1), &cuts[3], 3).expect("cut");
}

#[test]
fn changed_volumes_are_refused_once_there_is_a_cut() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    store.begin(meta(1, 1)).expect("begin");
    drop(store);
    // Before any cut a different set of volumes is taken as is (the staged log goes).
    let mut targets = rig.targets();
    targets[1].size = 4096;
    let mut store = ReceiverStore::open_with(&rig.dir(), targets.clone(), SMALL).expect("open");
    assert!(store.staged().is_none());
    run_cut(&mut store, meta(1, 1), &[], 3).expect("cut");
    drop(store);
    let err = ReceiverStore::open_with(&rig.dir(), rig.targets(), SMALL).expect_err("changed");
    assert!(matches!(err, RecoveryError::VolumesChanged { .. }));
    ReceiverStore::open_with(&rig.dir(), targets, SMALL).expect("same volumes");
}

#[test]
fn zero_extents_read_as_zeros_and_short_volume_files_are_extended() {
    let rig = Rig::new(&[16384, 8192]);
    // A volume file shorter than its size.
    File::create(rig.root.join("vol1.img")).expect("truncate");
    let mut store = rig.open();
    assert_eq!(
        fs::metadata(rig.root.join("vol1.img")).expect("meta").len(),
        8192
    );
    let fill = vec![Ext::data(0, 0, 16384, 3), Ext::data(1, 0, 8192, 4)];
    run_cut(&mut store, meta(1, 1), &fill, 3).expect("cut");
    let zero = vec![
        Ext::Zero {
            vol: 0,
            off: 4096,
            len: 8192,
        },
        Ext::Zero {
            vol: 1,
            off: 100,
            len: 300,
        },
    ];
    run_cut(&mut store, meta(1, 2), &zero, 3).expect("cut");
    let mut expected = rig.zeros();
    apply_model(&mut expected, &fill);
    apply_model(&mut expected, &zero);
    assert_eq!(rig.content(), expected);
    store.roll_back_to(1).expect("roll back");
    let mut one = rig.zeros();
    apply_model(&mut one, &fill);
    assert_eq!(rig.content(), one);
}

#[test]
fn large_extents_go_through_in_chunks() {
    let size = 3 * CHUNK as u64 + 4096;
    let rig = Rig::new(&[size]);
    let mut store = rig.open();
    let first = vec![Ext::data(0, 100, size - 200, 11)];
    let second = vec![
        Ext::data(0, 0, size, 12),
        Ext::Zero {
            vol: 0,
            off: CHUNK as u64 - 7,
            len: CHUNK as u64 + 9,
        },
    ];
    run_cut(&mut store, meta(1, 1), &first, 2).expect("cut");
    run_cut(&mut store, meta(1, 2), &second, 2).expect("cut");
    let mut m1 = rig.zeros();
    apply_model(&mut m1, &first);
    let mut m2 = m1.clone();
    apply_model(&mut m2, &second);
    assert_eq!(rig.content(), m2);
    store.roll_back_to(1).expect("roll back");
    assert_eq!(rig.content(), m1);
}

// ---- the first cut, in place -----------------------------------------------------------

/// The staging log's flags word and length.
fn staging_log(rig: &Rig) -> (u32, u64) {
    let bytes = fs::read(rig.dir().join(STAGING_FILE)).expect("staging log");
    (le_u32(&bytes, 40), bytes.len() as u64)
}

#[test]
fn the_first_cut_goes_in_place_and_its_log_holds_no_data() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let exts = vec![
        Ext::data(0, 0, 4096, 1),
        Ext::data(1, 1024, 2048, 2),
        Ext::Zero {
            vol: 0,
            off: 8192,
            len: 8192,
        },
        Ext::data(0, 8192, 512, 3),
    ];
    store.begin(meta(1, 1)).expect("begin");
    assert_eq!(staging_log(&rig), (FLAG_IN_PLACE, LOG_HEADER as u64));
    for e in &exts {
        put(&mut store, e).expect("put");
    }
    // The data is in the volumes before the commit; the log holds records only.
    let mut expected = rig.zeros();
    apply_model(&mut expected, &exts);
    assert_eq!(rig.content(), expected);
    let (_, len) = staging_log(&rig);
    assert!(
        len <= (LOG_HEADER + 4 * RECORD_HEADER) as u64,
        "log of {len} bytes"
    );
    assert_eq!(store.current(), None, "nothing committed yet");
    assert!(store.recovery_points().is_empty());
    store.commit_and_apply(3).expect("commit");
    assert_eq!(store.current(), Some(&meta(1, 1)));
    assert_eq!(point_cuts(&store), vec![1]);
    assert_eq!(rig.files(), vec!["state.json"]);
    assert_eq!(rig.content(), expected);
    // The next cut has a cut to protect: it is staged, with its data in the log.
    store.begin(meta(1, 2)).expect("begin");
    assert_eq!(staging_log(&rig), (0, LOG_HEADER as u64));
    put(&mut store, &Ext::data(0, 0, 512, 9)).expect("put");
    assert_eq!(rig.content(), expected, "staged, not applied");
    store.commit_and_apply(3).expect("commit");
    assert_eq!(point_cuts(&store), vec![2, 1]);
    // After a reset there is nothing to protect again.
    store.reset(2).expect("reset");
    store.begin(meta(2, 1)).expect("begin");
    assert_eq!(staging_log(&rig).0, FLAG_IN_PLACE);
}

/// How many of the pages of `len` bytes at `at` of `path` are in the page cache.
fn resident_pages(path: &Path, at: u64, len: usize) -> usize {
    use std::os::unix::io::AsRawFd;
    let file = File::open(path).expect("open volume");
    let mut pages = vec![0u8; len.div_ceil(4096)];
    // SAFETY: a shared read-only mapping of `len` bytes of an open file (offset and
    // length page-aligned), unmapped before it returns; mincore writes one byte per
    // page of it into `pages`, which has that many. Mapping reads no page in.
    let rc = unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            at as libc::off_t,
        );
        assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
        let rc = libc::mincore(map, len, pages.as_mut_ptr());
        libc::munmap(map, len);
        rc
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    pages.iter().filter(|&&p| p & 1 == 1).count()
}

#[test]
fn aligned_data_reaches_the_volumes_past_the_page_cache() {
    let rig = Rig::on_disk(&[1 << 20]);
    let mut store = rig.open();
    let exts = vec![
        Ext::data(0, 0, 256 << 10, 1),
        // Not aligned to 4 KiB: written through the page cache.
        Ext::data(0, (512 << 10) + 512, 1000, 2),
        // Aligned but small: one page is cheaper to copy than to send on its own.
        Ext::data(0, 768 << 10, 4096, 3),
    ];
    store.begin(meta(1, 1)).expect("begin");
    for e in &exts {
        put(&mut store, e).expect("put");
    }
    store.commit_and_apply(3).expect("commit");
    let path = &rig.targets()[0].path;
    assert_eq!(resident_pages(path, 0, 256 << 10), 0);
    assert_eq!(
        resident_pages(path, 512 << 10, 4096),
        1,
        "the unaligned extent's page is cached (and the probe sees cached pages)"
    );
    assert_eq!(resident_pages(path, 768 << 10, 4096), 1, "the small extent");
    // A staged cut's data goes the same way when it is applied.
    let next = Ext::data(0, 64 << 10, 64 << 10, 4);
    store.begin(meta(1, 2)).expect("begin");
    put(&mut store, &next).expect("put");
    store.commit_and_apply(3).expect("commit");
    assert_eq!(resident_pages(path, 64 << 10, 64 << 10), 0);
    let mut expected = rig.zeros();
    apply_model(&mut expected, &exts);
    apply_model(&mut expected, std::slice::from_ref(&next));
    assert_eq!(rig.content(), expected);
}

/// An incremental cut is staged, saved for its undo log and applied without filling
/// the secondary's memory: the staging log, the undo log and the old content it reads
/// all go past the page cache, and the point still rolls back exactly.
#[test]
fn a_staged_cut_its_undo_log_and_the_old_content_stay_out_of_the_page_cache() {
    let size = 4 << 20;
    let rig = Rig::on_disk(&[size]);
    let mut store = rig.open();
    let first = vec![Ext::data(0, 0, size, 1)];
    let models = apply_all(&rig, &mut store, &[first], 3);
    let path = rig.targets()[0].path.clone();
    // The model was read through the cache; those clean pages go.
    let volume = File::open(&path).expect("open volume");
    // SAFETY: posix_fadvise on a file descriptor open for the call; no pointers.
    let rc = unsafe { libc::posix_fadvise(volume.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    assert_eq!(resident_pages(&path, 0, size as usize), 0);
    // Extents of a MiB and more, with log records in between: the log's data is not
    // aligned in the file.
    let cut = vec![
        Ext::data(0, 0, (1 << 20) + 4096, 2),
        Ext::data(0, 2 << 20, 1 << 20, 3),
        Ext::Zero {
            vol: 0,
            off: 3 << 20,
            len: 64 << 10,
        },
    ];
    store.begin(meta(1, 2)).expect("begin");
    for e in &cut {
        put(&mut store, e).expect("put");
    }
    // A resume puts what was staged in the log file.
    store.begin(meta(1, 2)).expect("resume");
    let log = rig.dir().join(STAGING_FILE);
    let log_len = fs::metadata(&log).expect("log").len() as usize;
    assert!(log_len > 2 << 20, "the log holds the data: {log_len}");
    assert_eq!(resident_pages(&log, 0, log_len), 0, "staging log cached");
    store.commit_and_apply(3).expect("commit");
    let undo = rig.dir().join(undo_name(1));
    let undo_len = fs::metadata(&undo).expect("undo log").len() as usize;
    assert!(
        undo_len > 2 << 20,
        "the undo log holds the old data: {undo_len}"
    );
    assert_eq!(resident_pages(&undo, 0, undo_len), 0, "undo log cached");
    assert_eq!(resident_pages(&path, 0, size as usize), 0, "volume cached");
    let mut second = models[1].clone();
    apply_model(&mut second, &cut);
    assert_eq!(rig.content(), second);
    store.roll_back_to(1).expect("roll back");
    assert_eq!(rig.content(), models[1]);
}

#[test]
fn an_in_place_cut_resumes_from_its_last_checkpoint() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let half = CHECKPOINT_BYTES / 2;
    let exts: Vec<Ext> = (0..5)
        .map(|i| Ext::data(0, i * half, half, i as u8 + 1))
        .collect();
    store.begin(meta(1, 1)).expect("begin");
    for e in &exts[..3] {
        put(&mut store, e).expect("put");
    }
    assert_eq!(store.staged().expect("staged").extents, 3);
    // Killed: the third extent was written after the last checkpoint, so it does not
    // count, though the volume may well hold it.
    drop(store);
    let mut store = rig.open();
    assert_eq!(store.current(), None);
    let p = store.staged().expect("staged");
    assert_eq!((p.extents, p.bytes), (2, CHECKPOINT_BYTES));
    assert_eq!(p.last_end, Some((0, CHECKPOINT_BYTES)));
    // A link cut instead: `begin` makes what was written durable before it counts it.
    put(&mut store, &exts[2]).expect("put");
    let p = store.begin(meta(1, 1)).expect("resume");
    assert_eq!(p.extents, 3);
    drop(store);
    let mut store = rig.open();
    assert_eq!(store.staged().expect("staged").extents, 3);
    run_cut(&mut store, meta(1, 1), &exts, 3).expect("resume");
    let mut expected = rig.zeros();
    apply_model(&mut expected, &exts);
    assert_eq!(rig.content(), expected);
    assert_eq!(store.current(), Some(&meta(1, 1)));
}

#[test]
fn a_damaged_placed_record_ends_the_durable_prefix() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    let exts: Vec<Ext> = (0..3)
        .map(|i| Ext::data(0, i * CHECKPOINT_BYTES, CHECKPOINT_BYTES, i as u8 + 1))
        .collect();
    store.begin(meta(1, 1)).expect("begin");
    for e in &exts {
        put(&mut store, e).expect("put");
    }
    drop(store);
    let log = rig.dir().join(STAGING_FILE);
    let mut bytes = fs::read(&log).expect("read");
    assert_eq!(bytes.len(), LOG_HEADER + 3 * RECORD_HEADER);
    bytes[LOG_HEADER + RECORD_HEADER + 9] ^= 0xff;
    fs::write(&log, bytes).expect("write");
    let mut store = rig.open();
    assert_eq!(store.staged().expect("staged").extents, 1);
    run_cut(&mut store, meta(1, 1), &exts, 3).expect("resume");
    let mut expected = rig.zeros();
    apply_model(&mut expected, &exts);
    assert_eq!(rig.content(), expected);
}

#[test]
fn a_different_first_cut_rewrites_what_an_abandoned_one_left() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    store.begin(meta(1, 1)).expect("begin");
    for e in &sample_cuts()[3] {
        put(&mut store, e).expect("put");
    }
    drop(store);
    // The primary lost that cut; its next one is full: every page, holes as zeros.
    let full = vec![
        Ext::Zero {
            vol: 0,
            off: 0,
            len: 4096,
        },
        Ext::data(0, 4096, 4096, 5),
        Ext::Zero {
            vol: 0,
            off: 8192,
            len: 8192,
        },
        Ext::data(1, 0, 8192, 6),
    ];
    let mut store = rig.open();
    assert_eq!(store.begin(meta(1, 2)).expect("begin").extents, 0);
    for e in &full {
        put(&mut store, e).expect("put");
    }
    store.commit_and_apply(3).expect("commit");
    let mut expected = rig.zeros();
    apply_model(&mut expected, &full);
    assert_eq!(rig.content(), expected);
    assert_eq!(store.current(), Some(&meta(1, 2)));
}

#[test]
fn an_in_place_log_beside_a_kept_cut_is_refused() {
    let rig = Rig::new(&[16384, 8192]);
    let mut store = rig.open();
    store.begin(meta(1, 1)).expect("begin");
    drop(store);
    let log = fs::read(rig.dir().join(STAGING_FILE)).expect("log");
    let mut store = rig.open();
    run_cut(&mut store, meta(1, 0), &[], 3).expect("cut 0");
    drop(store);
    fs::write(rig.dir().join(STAGING_FILE), log).expect("put the log back");
    assert!(matches!(
        ReceiverStore::open_with(&rig.dir(), rig.targets(), SMALL),
        Err(RecoveryError::Corrupt { .. })
    ));
}

// ---- crash safety by fault injection --------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Cut(CutMeta, Vec<Ext>),
    RollBack(u64),
    Reset(u64),
}

/// What a run looks like after each op: current cut and recovery points.
type Seen = (Option<CutMeta>, Vec<RecoveryPoint>);

fn do_op(store: &mut ReceiverStore, op: &Op, keep: usize) -> Result<(), RecoveryError> {
    match op {
        Op::Cut(m, exts) => run_cut(store, *m, exts, keep),
        Op::RollBack(cut) => store.roll_back_to(*cut),
        Op::Reset(g) => store.reset(*g),
    }
}

/// The expected content after each op, from the model alone.
fn expected_contents(initial: &Model, ops: &[Op]) -> (Vec<Model>, HashMap<(u64, u64), Model>) {
    let mut by_cut = HashMap::new();
    let mut after = Vec::new();
    let mut content = initial.clone();
    for op in ops {
        match op {
            Op::Cut(m, exts) => {
                apply_model(&mut content, exts);
                by_cut.insert((m.generation, m.cut), content.clone());
            }
            Op::RollBack(cut) => {
                let generation = by_cut.keys().map(|k| k.0).max().unwrap_or(0);
                content = by_cut[&(generation, *cut)].clone();
            }
            Op::Reset(_) => {}
        }
        after.push(content.clone());
    }
    (after, by_cut)
}

/// Runs `ops` with a crash at the `k`-th durable step (with `power_loss`, losing every
/// write not fsynced; then recovery may crash the same way); after the crash reopens, checks
/// the volumes hold exactly the cut the store says is current (the one before the op or
/// the one it makes), redoes the op the way a sender or an admin would, and goes on.
/// Returns whether the crash happened.
fn run_with_crash(
    sizes: &[u64],
    ops: &[Op],
    keep: usize,
    k: u64,
    power_loss: bool,
    reference: &[Seen],
) -> bool {
    let rig = Rig::new(sizes);
    let (after, by_cut) = expected_contents(&rig.zeros(), ops);
    let mut store = rig.open();
    store.crash_after(k, power_loss);
    let mut crashed = false;
    for (i, op) in ops.iter().enumerate() {
        match do_op(&mut store, op, keep) {
            Ok(()) => {}
            Err(RecoveryError::InjectedCrash) if !crashed => {
                crashed = true;
                drop(store);
                // Recovery itself crashes at every step in turn before it gets through.
                store = (0..)
                    .find_map(|j| {
                        match ReceiverStore::open_crashing(
                            &rig.dir(),
                            rig.targets(),
                            SMALL,
                            j,
                            power_loss,
                        ) {
                            Ok(s) => Some(s),
                            Err(RecoveryError::InjectedCrash) => None,
                            Err(e) => panic!("k {k}: reopen after {j} recovery steps: {e}"),
                        }
                    })
                    .expect("recovery ends");
                let before = if i == 0 { None } else { reference[i - 1].0 };
                let now = store.current().copied();
                let content = rig.content();
                match (op, now) {
                    (Op::Reset(_), _) => {
                        let prior = if i == 0 {
                            rig.zeros()
                        } else {
                            after[i - 1].clone()
                        };
                        assert_eq!(content, prior, "k {k}: reset changed the volumes");
                    }
                    (Op::Cut(..), None) if before.is_none() => {
                        // The first cut goes in place: the volumes hold no cut and none
                        // is claimed.
                        assert!(store.recovery_points().is_empty(), "k {k}: op {i}");
                    }
                    (_, None) => {
                        assert_eq!(before, None, "k {k}: op {i} lost the current cut");
                        let prior = if i == 0 {
                            rig.zeros()
                        } else {
                            after[i - 1].clone()
                        };
                        assert_eq!(content, prior, "k {k}: op {i}");
                    }
                    (_, Some(m)) => {
                        assert!(
                            Some(m) == before || Some(m) == reference[i].0,
                            "k {k}: op {i}: current {m:?}"
                        );
                        assert_eq!(
                            content,
                            by_cut[&(m.generation, m.cut)],
                            "k {k}: op {i}: volumes are not exactly cut {m:?}"
                        );
                    }
                }
                if let (Op::Cut(m, exts), Some(p)) = (op, store.staged()) {
                    assert_eq!(p.meta, *m);
                    assert!(p.extents as usize <= exts.len(), "k {k}: staged too much");
                }
                let done = match op {
                    Op::Cut(m, _) => store.current() == Some(m),
                    Op::RollBack(cut) => store.current().is_some_and(|c| c.cut == *cut),
                    Op::Reset(g) => store.current().is_none() && store.generation() == *g,
                };
                if !done {
                    do_op(&mut store, op, keep).expect("redo after the crash");
                }
            }
            Err(e) => panic!("k {k}: op {i}: {e}"),
        }
        assert_eq!(rig.content(), after[i], "k {k}: after op {i}");
        let seen = (store.current().copied(), store.recovery_points());
        assert_eq!(seen, reference[i], "k {k}: state after op {i}");
    }
    let mut names = rig.files();
    names.retain(|n| n != "state.json" && !n.starts_with("undo-"));
    assert!(names.is_empty(), "k {k}: left behind {names:?}");
    crashed
}

fn reference_run(sizes: &[u64], ops: &[Op], keep: usize) -> Vec<Seen> {
    let rig = Rig::new(sizes);
    let mut store = rig.open();
    ops.iter()
        .map(|op| {
            do_op(&mut store, op, keep).expect("reference op");
            (store.current().copied(), store.recovery_points())
        })
        .collect()
}

/// Every crash point of a plan: cuts of generation 1, a roll back to the oldest kept
/// point, cuts of generation 2, a reset, a cut of generation 3.
fn check_every_crash_point(sizes: &[u64], cuts: &[Vec<Ext>], keep: usize) {
    let mut ops = Vec::new();
    for (i, exts) in cuts.iter().enumerate() {
        ops.push(Op::Cut(meta(1, i as u64 + 1), exts.clone()));
    }
    let reference = reference_run(sizes, &ops, keep);
    let oldest = reference
        .last()
        .and_then(|(_, points)| points.last())
        .map(|p| p.cut);
    if let Some(oldest) = oldest {
        ops.push(Op::RollBack(oldest));
    }
    for (i, exts) in cuts.iter().rev().take(2).enumerate() {
        ops.push(Op::Cut(meta(2, i as u64 + 1), exts.clone()));
    }
    ops.push(Op::Reset(3));
    if let Some(exts) = cuts.first() {
        ops.push(Op::Cut(meta(3, 1), exts.clone()));
    }
    let reference = reference_run(sizes, &ops, keep);
    for power_loss in [false, true] {
        let mut k = 0;
        while run_with_crash(sizes, &ops, keep, k, power_loss, &reference) {
            k += 1;
        }
        assert!(k > 10, "the plan has durable steps");
    }
}

#[test]
fn a_crash_at_any_step_leaves_exactly_one_cut_sample() {
    check_every_crash_point(&[16384, 8192], &sample_cuts(), 3);
}

fn ext_strategy(sizes: Vec<u64>) -> impl Strategy<Value = Ext> {
    let blocks: Vec<u64> = sizes.iter().map(|s| s / BLOCK).collect();
    (
        0..sizes.len() as u32,
        any::<bool>(),
        1u8..=255,
        0u64..64,
        1u64..6,
    )
        .prop_map(move |(vol, zero, seed, start, len)| {
            let n = blocks[vol as usize];
            let start = start % n;
            let len = len.min(n - start);
            let (off, len) = (start * BLOCK, len * BLOCK);
            if zero {
                Ext::Zero { vol, off, len }
            } else {
                Ext::data(vol, off, len, seed)
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_crash_at_any_step_leaves_exactly_one_cut(
        cuts in proptest::collection::vec(
            proptest::collection::vec(ext_strategy(vec![8192, 4096]), 0..5),
            1..5,
        ),
        keep in 1usize..5,
    ) {
        check_every_crash_point(&[8192, 4096], &cuts, keep);
    }
}

#[test]
fn the_store_can_move_between_threads_and_be_shared() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ReceiverStore>();
}

#[test]
fn a_new_set_starts_empty_with_its_state_on_disk() {
    let rig = Rig::new(&[4096]);
    let store = rig.open();
    assert_eq!(store.current(), None);
    assert_eq!(store.generation(), 0);
    assert!(store.staged().is_none());
    assert!(store.recovery_points().is_empty());
    assert_eq!(rig.files(), vec!["state.json"]);
}

/// A disk that fails (ENOSPC, EIO) at any step of a cut: the cut fails with an error
/// whose cause chain says the OS error, and the set stays at the cut before, or, when
/// the failure came after the new cut was made durable, at the new one; the volumes
/// hold exactly that cut. The same cut sent again then goes through.
#[test]
fn a_failing_disk_at_any_step_of_a_cut_keeps_a_whole_cut_and_says_why() {
    let cuts = sample_cuts();
    for errno in [libc::ENOSPC, libc::EIO] {
        let cause = io::Error::from_raw_os_error(errno).to_string();
        for k in 0.. {
            let rig = Rig::new(&[16384, 8192]);
            let mut store = rig.open();
            let models = apply_all(&rig, &mut store, &cuts[..2], 3);
            store.fail_at(k, errno);
            let result = run_cut(&mut store, meta(1, 3), &cuts[2], 3);
            let mut third = models[2].clone();
            apply_model(&mut third, &cuts[2]);
            let Err(e) = result else {
                assert_eq!(rig.content(), third);
                break;
            };
            let text = crate::chain::ErrorChain(&e).to_string();
            assert!(text.contains(&cause), "step {k}: {text}");
            drop(store);
            let mut store = rig.open();
            match store.current().map(|c| c.cut) {
                Some(2) => assert_eq!(rig.content(), models[2], "step {k}"),
                Some(3) => assert_eq!(rig.content(), third, "step {k}"),
                other => panic!("step {k}: the set is at {other:?}"),
            }
            if store.current() != Some(&meta(1, 3)) {
                run_cut(&mut store, meta(1, 3), &cuts[2], 3).expect("the cut again");
            }
            assert_eq!(rig.content(), third, "step {k}");
            assert_eq!(point_cuts(&store), vec![3, 2, 1], "step {k}");
        }
    }
}

// ---- recovery points read in place (DR drill views) ---------------------------------

use crate::replication::views::{PointView, PointViews};

fn open_viewed(rig: &Rig, pins: &[u64]) -> (ReceiverStore, Arc<PointViews>) {
    let views = Arc::new(PointViews::new(
        &rig.dir(),
        rig.sizes.clone(),
        pins.iter().copied(),
    ));
    let store = ReceiverStore::open_with_views(&rig.dir(), rig.targets(), SMALL, views.clone())
        .expect("open");
    (store, views)
}

/// What a drill LUN reads of volume `vol` through `view`: the volume file now, then the
/// point's logs over it, in windows of `window` bytes.
fn read_view(rig: &Rig, view: &PointView, vol: usize, window: usize) -> Result<Vec<u8>, String> {
    let t = &rig.targets()[vol];
    let file = File::open(&t.path).expect("open volume");
    let mut out = vec![0u8; t.size as usize];
    let mut at = 0;
    while at < out.len() {
        let end = (at + window).min(out.len());
        let buf = &mut out[at..end];
        read_volume(&file, &t.path, buf, at as u64).expect("read volume");
        view.overlay(at as u64, buf).map_err(|e| e.to_string())?;
        at = end;
    }
    Ok(out)
}

fn assert_view(rig: &Rig, views: &[(u64, [Arc<PointView>; 2])], models: &[Model], when: &str) {
    for (cut, pair) in views {
        for (vol, view) in pair.iter().enumerate() {
            for window in [700, 1 << 20] {
                assert_eq!(
                    read_view(rig, view, vol, window).as_ref(),
                    Ok(&models[*cut as usize].0[vol]),
                    "point {cut}, volume {vol}, windows of {window}, {when}"
                );
            }
        }
    }
}

#[test]
fn pinned_points_read_exactly_in_place_while_cuts_go_on_with_keep_1() {
    let rig = Rig::new(&[16384, 8192]);
    let (mut store, registry) = open_viewed(&rig, &[]);
    let mut cuts = sample_cuts();
    cuts.push(vec![
        Ext::data(0, 4096, 8192, 10),
        Ext::data(1, 0, 8192, 11),
    ]);
    cuts.push(vec![Ext::data(0, 0, 16384, 12)]);
    let mut models = vec![rig.content()];
    let mut views: Vec<(u64, [Arc<PointView>; 2])> = Vec::new();
    let view_pair = |cut: u64| [0, 1].map(|v| registry.view(v, cut).expect("view"));
    for (i, exts) in cuts.iter().enumerate() {
        let cut = i as u64 + 1;
        run_cut(&mut store, meta(1, cut), exts, 1).expect("cut");
        let mut next = models[i].clone();
        apply_model(&mut next, exts);
        models.push(next);
        assert_view(&rig, &views, &models, &format!("after cut {cut}"));
        // Pin the current cut after cuts 2 and 3: with keep 1 nothing else is kept.
        if cut == 2 || cut == 3 {
            assert!(
                matches!(
                    registry.view(0, cut),
                    Err(RecoveryError::UnknownPoint { .. })
                ),
                "a point not pinned has no view"
            );
            registry.pin(cut).expect("pin");
            views.push((cut, view_pair(cut)));
            assert_view(&rig, &views, &models, &format!("pinned at {cut}"));
        }
        if cut == 5 {
            // Pinned points and every one after them are kept, whatever keep says.
            assert_eq!(point_cuts(&store), vec![5, 4, 3, 2]);
            // Unpinned, point 2 goes at the next cut; 3 stays.
            registry.unpin(2);
            views.retain(|(c, _)| *c != 2);
        }
    }
    assert_eq!(point_cuts(&store), vec![7, 6, 5, 4, 3]);
    assert!(matches!(
        registry.pin(2),
        Err(RecoveryError::UnknownPoint { cut: 2 })
    ));
    drop(views);
    drop(store);

    // A restart: the pins come back from the mappings before recovery runs.
    let (mut store, registry) = open_viewed(&rig, &[3, 6]);
    let views: Vec<(u64, [Arc<PointView>; 2])> = [3, 6]
        .into_iter()
        .map(|c| (c, [0, 1].map(|v| registry.view(v, c).expect("view"))))
        .collect();
    assert_view(&rig, &views, &models, "after a reopen");
    // Rolled back to 4 (the primary's base): the view of 3 still reads 3, that of 6
    // is gone and says so.
    store.roll_back_to_base(4).expect("roll back");
    assert_view(&rig, &views[..1], &models, "after a roll back to 4");
    let gone = read_view(&rig, &views[1].1[0], 0, 4096).expect_err("point 6 is gone");
    assert!(gone.contains("recovery point 6 is gone"), "{gone}");
    // The next cut of the generation, on top of 4, keeps the view of 3 exact.
    let exts = vec![Ext::data(0, 0, 2048, 13), Ext::data(1, 4096, 512, 14)];
    run_cut(&mut store, meta(1, 5), &exts, 1).expect("cut after the roll back");
    let mut four = models[4].clone();
    apply_model(&mut four, &exts);
    assert_eq!(rig.content(), four);
    assert_view(
        &rig,
        &views[..1],
        &models,
        "after a cut on top of the roll back",
    );
    // A reset for a new generation takes every point: the views say so.
    store.reset(2).expect("reset");
    let gone = read_view(&rig, &views[0].1[1], 1, 4096).expect_err("point 3 is gone");
    assert!(gone.contains("recovery point 3 is gone"), "{gone}");
}

#[test]
fn a_view_read_racing_cuts_being_applied_is_always_exactly_its_point() {
    let rig = Rig::new(&[1 << 20]);
    let (mut store, registry) = open_viewed(&rig, &[]);
    let first = vec![Ext::data(0, 0, 1 << 20, 1)];
    run_cut(&mut store, meta(1, 1), &first, 1).expect("cut 1");
    let mut model = rig.content();
    registry.pin(1).expect("pin");
    let view = registry.view(0, 1).expect("view");
    let expected = model.0[0].clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (view, stop, path) = (view.clone(), stop.clone(), rig.targets()[0].path.clone());
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open");
            let mut reads = 0u64;
            let mut at = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let mut buf = vec![0u8; 64 << 10];
                read_volume(&file, &path, &mut buf, at).expect("read");
                view.overlay(at, &mut buf).expect("overlay");
                let want = &expected[at as usize..at as usize + buf.len()];
                assert!(buf == want, "a read at {at} is not point 1");
                reads += 1;
                at = (at + 12_288) % ((1 << 20) - (64 << 10));
            }
            reads
        })
    };
    let mut rng = 0x9e37_79b9_u64;
    for cut in 2..40u64 {
        let exts: Vec<Ext> = (0..8)
            .map(|_| {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let off = (rng >> 20) % ((1 << 20) - 8192) / 512 * 512;
                Ext::data(0, off, 4096 + (rng >> 50) % 4096 / 512 * 512, cut as u8)
            })
            .collect();
        run_cut(&mut store, meta(1, cut), &exts, 1).expect("cut");
        apply_model(&mut model, &exts);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.join().expect("every read was point 1");
    assert!(reads > 0);
    assert_eq!(rig.content(), model);
}
