//! Tests of the whole layer: a property test against a model over in-memory volumes, and
//! tokio tests of cuts racing writers.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use roaring::RoaringBitmap;

use super::*;

const BLOCK: u64 = 512;

/// A volume whose content is a byte vector, with its tracking: the harness the server's
/// write path is modelled on.
struct MemVolume {
    tracked: TrackedVolume,
    image: Vec<u8>,
}

impl MemVolume {
    fn new(name: &str, size: u64, page: u32, cow: CowConfig) -> Self {
        let page = PageSize::new(page).unwrap();
        MemVolume {
            tracked: TrackedVolume::new(name, size, page, cow).unwrap(),
            image: vec![0; size as usize],
        }
    }

    /// Page `page` of `image`, zero past its end.
    fn read_page(image: &[u8], page_bytes: usize, page: PageIndex, buf: &mut [u8]) {
        let start = page as usize * page_bytes;
        buf.fill(0);
        if start < image.len() {
            let end = (start + page_bytes).min(image.len());
            buf[..end - start].copy_from_slice(&image[start..end]);
        }
    }

    /// The write path: enter, preserve, mark; write; leave. Returns how many pages were
    /// read for copy-on-write.
    async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, TrackingError> {
        let page_bytes = self.tracked.page_size().bytes() as usize;
        let image = &self.image;
        let mut reads = 0;
        let guard = self
            .tracked
            .begin_write(offset, data.len() as u64, |page, buf| {
                reads += 1;
                Self::read_page(image, page_bytes, page, buf);
                Ok(())
            })
            .await?;
        self.image[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        drop(guard);
        Ok(reads)
    }

    /// The whole volume as snapshot `cut` reads it.
    fn read_snapshot(&self, cut: CutId) -> Result<Vec<u8>, TrackingError> {
        let page_bytes = self.tracked.page_size().bytes() as usize;
        let mut out = Vec::with_capacity(self.image.len() + page_bytes);
        let mut buf = vec![0; page_bytes];
        for page in 0..self.tracked.page_count() {
            self.tracked.read_snapshot_page(cut, page, &mut buf, |b| {
                Self::read_page(&self.image, page_bytes, page, b);
                Ok(())
            })?;
            out.extend_from_slice(&buf);
        }
        out.truncate(self.image.len());
        Ok(out)
    }
}

fn cow_config(dir: &std::path::Path, budget: u64) -> CowConfig {
    CowConfig {
        budget: MemoryBudget::new(budget),
        spill_dir: dir.to_owned(),
    }
}

fn options(snapshot: bool) -> CutOptions {
    scoped(if snapshot {
        SnapshotScope::Volume
    } else {
        SnapshotScope::None
    })
}

fn scoped(snapshot: SnapshotScope) -> CutOptions {
    CutOptions {
        timeout: Duration::from_secs(5),
        snapshot,
        freeze_dirty: true,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    /// A write of any kind: `kind` 0 is data, 1 zeros (UNMAP, WRITE SAME of zeros),
    /// 2 one repeated block (WRITE SAME).
    Write {
        vol: usize,
        block: u64,
        blocks: u64,
        kind: u8,
        seed: u8,
    },
    Cut {
        snapshot: SnapshotScope,
        /// Take the dirty maps (a replication cut) or leave them (an admin snapshot).
        freeze: bool,
    },
    /// The replicator sent pages `first..first + count` of a snapshot of one volume.
    Release {
        pick: usize,
        vol: usize,
        first: u32,
        count: u32,
    },
    /// A cut whose transfer fails: its bits go back.
    CutFailed,
    /// A clean shutdown and restart of every volume.
    Restart,
    DeleteSnapshot {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..200u64, 1..40u64, 0..3u8, any::<u8>())
            .prop_map(|(vol, block, blocks, kind, seed)| Op::Write { vol, block, blocks, kind, seed }),
        2 => prop_oneof![
            Just((SnapshotScope::None, true)),
            Just((SnapshotScope::Volume, true)),
            Just((SnapshotScope::Volume, false)),
            Just((SnapshotScope::Frozen, true))
        ]
        .prop_map(|(snapshot, freeze)| Op::Cut { snapshot, freeze }),
        1 => (any::<usize>(), 0..3usize, 0..16u32, 1..8u32)
            .prop_map(|(pick, vol, first, count)| Op::Release { pick, vol, first, count }),
        1 => Just(Op::CutFailed),
        1 => Just(Op::Restart),
        1 => any::<usize>().prop_map(|pick| Op::DeleteSnapshot { pick }),
    ]
}

fn data(kind: u8, seed: u8, len: usize) -> Vec<u8> {
    match kind {
        0 => (0..len)
            .map(|i| seed.wrapping_add((i * 7 + i / 511) as u8))
            .collect(),
        1 => vec![0; len],
        _ => (0..len)
            .map(|i| seed ^ (i % BLOCK as usize) as u8)
            .collect(),
    }
}

/// What the model knows of a snapshot.
struct ModelSnapshot {
    images: Vec<Vec<u8>>,
    /// Per volume, pages written since the cut while in scope: what its store holds.
    kept: Vec<BTreeSet<PageIndex>>,
    /// Per volume, the pages it keeps readable (`None`: all).
    scope: Vec<Option<BTreeSet<PageIndex>>>,
}

impl ModelSnapshot {
    fn in_scope(&self, vol: usize, page: PageIndex) -> bool {
        self.scope[vol].as_ref().is_none_or(|s| s.contains(&page))
    }
}

fn run_model(ops: Vec<Op>, budget_pages: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cow = cow_config(dir.path(), budget_pages * 4096);
    // Page sizes 4 KiB and 8 KiB; one volume whose size is not a whole number of pages;
    // one of more pages than a snapshot overlay takes under one hold of its lock.
    let mut vols = [
        MemVolume::new("b-vol", 96 * 1024, 4096, cow.clone()),
        MemVolume::new("a-vol", 6 * 8192 + 3 * 512, 8192, cow.clone()),
        MemVolume::new("c/vol", 40 * 1024, 4096, cow.clone()),
    ];
    let rt = runtime();
    let coord = CutCoordinator::new(CutId(1));
    let mut dirty: Vec<BTreeSet<PageIndex>> = vec![BTreeSet::new(); vols.len()];
    let mut snaps: BTreeMap<CutId, ModelSnapshot> = BTreeMap::new();
    let mut last_id = None;

    for op in ops {
        match op {
            Op::Write {
                vol,
                block,
                blocks,
                kind,
                seed,
            } => {
                let v = &mut vols[vol];
                let size = v.tracked.size();
                let offset = (block * BLOCK) % size;
                let len = (blocks * BLOCK).min(size - offset);
                let pages = v.tracked.page_size().pages_of(offset, len);
                // Copy-on-write reads: pages some live snapshot has not kept yet.
                let want_reads = pages
                    .clone()
                    .filter(|p| {
                        snaps
                            .values()
                            .any(|s| s.in_scope(vol, *p) && !s.kept[vol].contains(p))
                    })
                    .count() as u64;
                let reads = rt
                    .block_on(v.write(offset, &data(kind, seed, len as usize)))
                    .unwrap();
                prop_assert_eq!(reads, want_reads);
                dirty[vol].extend(pages.clone());
                for s in snaps.values_mut() {
                    let kept: Vec<PageIndex> =
                        pages.clone().filter(|p| s.in_scope(vol, *p)).collect();
                    s.kept[vol].extend(kept);
                }
            }
            Op::Cut { snapshot, freeze } => {
                let refs: Vec<&TrackedVolume> = vols.iter().map(|v| &v.tracked).collect();
                let options = CutOptions {
                    freeze_dirty: freeze,
                    ..scoped(snapshot)
                };
                let cut = rt.block_on(coord.cut_group(&refs, options)).unwrap();
                if let Some(last) = last_id {
                    prop_assert!(cut.id > last);
                }
                last_id = Some(cut.id);
                // Gate order is by name, and the frozen maps are exactly the pages
                // written since the previous cut.
                let names: Vec<&str> = cut.volumes.iter().map(|f| &*f.volume).collect();
                prop_assert_eq!(names, vec!["a-vol", "b-vol", "c/vol"]);
                let scopes: Vec<Option<BTreeSet<PageIndex>>> = dirty
                    .iter()
                    .map(|d| (snapshot == SnapshotScope::Frozen).then(|| d.clone()))
                    .collect();
                for (i, v) in vols.iter().enumerate() {
                    let frozen = cut
                        .volumes
                        .iter()
                        .find(|f| f.volume == *v.tracked.name())
                        .unwrap();
                    let want: RoaringBitmap = dirty[i].iter().copied().collect();
                    if freeze {
                        prop_assert_eq!(&frozen.dirty, &want);
                        prop_assert_eq!(v.tracked.dirty().count(), 0);
                        dirty[i].clear();
                    } else {
                        prop_assert!(frozen.dirty.is_empty());
                        prop_assert_eq!(v.tracked.dirty().count(), want.len());
                    }
                    prop_assert!(!v.tracked.gate().is_closed());
                }
                if snapshot != SnapshotScope::None {
                    snaps.insert(
                        cut.id,
                        ModelSnapshot {
                            images: vols.iter().map(|v| v.image.clone()).collect(),
                            kept: vec![BTreeSet::new(); vols.len()],
                            scope: scopes,
                        },
                    );
                }
            }
            Op::Restart => {
                for (i, v) in vols.iter_mut().enumerate() {
                    let at = state.path().join(i.to_string());
                    rt.block_on(v.tracked.close_and_save(&at, Duration::from_secs(1)))
                        .unwrap();
                    let t = &v.tracked;
                    let (name, size, page) = (t.name().clone(), t.size(), t.page_size());
                    v.tracked = TrackedVolume::load(&name, size, page, cow.clone(), &at).unwrap();
                    let want: RoaringBitmap = dirty[i].iter().copied().collect();
                    prop_assert_eq!(v.tracked.dirty().snapshot(), want);
                }
            }
            Op::CutFailed => {
                let refs: Vec<&TrackedVolume> = vols.iter().map(|v| &v.tracked).collect();
                let cut = rt.block_on(coord.cut_group(&refs, options(false))).unwrap();
                last_id = Some(cut.id);
                cut.merge_back(&refs);
                for (i, v) in vols.iter().enumerate() {
                    let want: RoaringBitmap = dirty[i].iter().copied().collect();
                    prop_assert_eq!(v.tracked.dirty().snapshot(), want);
                }
            }
            Op::Release {
                pick,
                vol,
                first,
                count,
            } => {
                if snaps.is_empty() {
                    continue;
                }
                let cut = *snaps.keys().nth(pick % snaps.len()).unwrap();
                let pages = vols[vol].tracked.page_count();
                let released: RoaringBitmap =
                    (first..first + count).filter(|p| *p < pages).collect();
                vols[vol]
                    .tracked
                    .release_snapshot_pages(cut, &released)
                    .unwrap();
                let s = snaps.get_mut(&cut).unwrap();
                let scope = s.scope[vol].get_or_insert_with(|| (0..pages).collect());
                for p in &released {
                    scope.remove(&p);
                    s.kept[vol].remove(&p);
                }
            }
            Op::DeleteSnapshot { pick } => {
                if snaps.is_empty() {
                    continue;
                }
                let cut = *snaps.keys().nth(pick % snaps.len()).unwrap();
                snaps.remove(&cut);
                for v in &vols {
                    v.tracked.delete_snapshot(cut).unwrap();
                    let again = v.tracked.delete_snapshot(cut);
                    prop_assert!(
                        matches!(again, Err(TrackingError::NoSuchSnapshot { .. })),
                        "deleted twice"
                    );
                }
            }
        }

        // Every live snapshot reads as the model's image at its cut, on every volume, in
        // its scope; outside it, reads are refused.
        for (cut, s) in &snaps {
            for (i, v) in vols.iter().enumerate() {
                let page_bytes = v.tracked.page_size().bytes() as usize;
                let mut buf = vec![0; page_bytes];
                let mut want = vec![0; page_bytes];
                for p in 0..v.tracked.page_count() {
                    let got = v.tracked.read_snapshot_page(*cut, p, &mut buf, |b| {
                        MemVolume::read_page(&v.image, page_bytes, p, b);
                        Ok(())
                    });
                    if s.in_scope(i, p) {
                        prop_assert!(got.is_ok(), "{:?}", got);
                        MemVolume::read_page(&s.images[i], page_bytes, p, &mut want);
                        prop_assert!(
                            buf == want,
                            "snapshot {:?} of volume {} differs at page {}",
                            cut,
                            i,
                            p
                        );
                    } else {
                        prop_assert!(
                            matches!(got, Err(TrackingError::NotInSnapshot { .. })),
                            "{:?}",
                            got
                        );
                    }
                }
                // Byte ranges (the snapshot LUN's read path) read the same, whole and
                // unaligned, where the whole range is in scope.
                let len = v.image.len();
                for (off, n) in [(0, len), (1536, 9216.min(len - 1536)), (len - 700, 700)] {
                    let mut got = v.image[off..off + n].to_vec();
                    let res = v.tracked.overlay_snapshot(*cut, off as u64, &mut got);
                    let pages = v.tracked.pages_of(off as u64, n as u64).unwrap();
                    if pages.clone().all(|p| s.in_scope(i, p)) {
                        prop_assert!(res.is_ok(), "{:?}", res);
                        prop_assert!(
                            got[..] == s.images[i][off..off + n],
                            "snapshot {:?} of volume {} differs in bytes {}+{}",
                            cut,
                            i,
                            off,
                            n
                        );
                    } else {
                        prop_assert!(
                            matches!(res, Err(TrackingError::NotInSnapshot { .. })),
                            "{:?}",
                            res
                        );
                    }
                }
                let info = v
                    .tracked
                    .snapshots()
                    .into_iter()
                    .find(|x| x.cut == *cut)
                    .unwrap();
                prop_assert!(!info.invalidated);
                prop_assert_eq!(info.stats.pages, s.kept[i].len() as u64);
                prop_assert_eq!(
                    info.scope_pages,
                    s.scope[i].as_ref().map(|x| x.len() as u64)
                );
                let page = u64::from(v.tracked.page_size().bytes());
                prop_assert_eq!(
                    info.stats.memory_bytes + info.stats.file_bytes,
                    info.stats.pages * page
                );
            }
        }
        prop_assert!(cow.budget.used() <= cow.budget.limit());
        for v in &vols {
            let mut cuts: Vec<CutId> = v.tracked.snapshots().iter().map(|x| x.cut).collect();
            cuts.sort();
            prop_assert_eq!(cuts, snaps.keys().copied().collect::<Vec<_>>());
        }
    }

    // Deleting every snapshot frees all memory and removes every spill file.
    for cut in snaps.keys() {
        for v in &vols {
            v.tracked.delete_snapshot(*cut).unwrap();
        }
    }
    prop_assert_eq!(cow.budget.used(), 0);
    prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_and_cuts_match_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        budget_pages in 0..8u64,
    ) {
        run_model(ops, budget_pages)?;
    }
}

/// A fixed run that must spill: a budget of one page and many overwritten pages.
#[test]
fn memory_bound_forces_spill_and_reads_match() {
    let dir = tempfile::tempdir().unwrap();
    let cow = cow_config(dir.path(), 4096);
    let rt = runtime();
    let mut v = MemVolume::new("v", 32 * 4096, 4096, cow.clone());
    rt.block_on(v.write(0, &data(0, 1, 32 * 4096))).unwrap();
    let coord = CutCoordinator::new(CutId(7));
    let before = v.image.clone();
    let cut = rt
        .block_on(coord.cut_group(&[&v.tracked], options(true)))
        .unwrap();
    assert_eq!(cut.id, CutId(7));
    assert_eq!(cut.volumes[0].dirty.len(), 32);
    // Overwrite everything twice; the second pass copies nothing.
    assert_eq!(
        rt.block_on(v.write(512, &data(0, 9, 20 * 4096))).unwrap(),
        21
    );
    assert_eq!(rt.block_on(v.write(0, &data(2, 3, 32 * 4096))).unwrap(), 11);
    assert_eq!(rt.block_on(v.write(0, &data(1, 0, 32 * 4096))).unwrap(), 0);
    let info = v.tracked.snapshots()[0];
    assert_eq!(info.stats.pages, 32);
    assert_eq!(info.stats.memory_bytes, 4096);
    assert_eq!(info.stats.file_bytes, 31 * 4096);
    assert_eq!(v.read_snapshot(cut.id).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    v.tracked.delete_snapshot(cut.id).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(cow.budget.used(), 0);
}

#[test]
fn failed_spill_invalidates_the_snapshot_not_the_write() {
    let rt = runtime();
    let cow = CowConfig {
        budget: MemoryBudget::new(0),
        spill_dir: "/nonexistent/twinlun-tracking".into(),
    };
    let mut v = MemVolume::new("v", 8 * 4096, 4096, cow);
    let coord = CutCoordinator::new(CutId(1));
    let cut = rt
        .block_on(coord.cut_group(&[&v.tracked], options(true)))
        .unwrap();
    rt.block_on(v.write(0, &[1; 4096])).unwrap();
    assert_eq!(v.image[0], 1);
    assert!(v.tracked.snapshots()[0].invalidated);
    assert!(matches!(
        v.read_snapshot(cut.id),
        Err(TrackingError::SnapshotInvalidated { .. })
    ));
    // Later writes do not try to copy for it any more.
    assert_eq!(rt.block_on(v.write(4096, &[2; 4096])).unwrap(), 0);
    v.tracked.delete_snapshot(cut.id).unwrap();
}

#[test]
fn read_errors_fail_the_write_and_mark_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let v = TrackedVolume::new(
        "v",
        8 * 4096,
        PageSize::DEFAULT,
        cow_config(dir.path(), 1 << 20),
    )
    .unwrap();
    let coord = CutCoordinator::new(CutId(1));
    rt.block_on(coord.cut_group(&[&v], options(true))).unwrap();
    let r = rt.block_on(v.begin_write(0, 4096, |_, _| Err(io::ErrorKind::Other.into())));
    assert!(matches!(r, Err(TrackingError::ReadOld { page: 0, .. })));
    assert_eq!(v.dirty().count(), 0);
    assert_eq!(v.gate().in_flight(), 0);
    let mut buf = vec![0; 4096];
    let r = v.read_snapshot_page(CutId(1), 0, &mut buf, |_| Err(io::ErrorKind::Other.into()));
    assert!(matches!(r, Err(TrackingError::ReadCurrent { page: 0, .. })));
    assert!(matches!(
        v.read_snapshot_page(CutId(1), 8, &mut buf, |_| Ok(())),
        Err(TrackingError::PageOutOfRange { page: 8, pages: 8 })
    ));
    assert!(matches!(
        rt.block_on(v.begin_write(8 * 4096 - 512, 1024, |_, _| Ok(()))),
        Err(TrackingError::OutOfRange { .. })
    ));
}

#[test]
fn saved_bitmap_restores_dirty_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cow = cow_config(dir.path(), 0);
    let v = TrackedVolume::new("v", 100 * 4096, PageSize::DEFAULT, cow.clone()).unwrap();
    v.dirty().mark(3..9);
    let path = dir.path().join("v.dirty");
    persist::save_bitmap(&path, &v.dirty().snapshot()).unwrap();
    let saved = persist::load_bitmap(&path).unwrap().unwrap();
    let back =
        TrackedVolume::with_dirty("v", 100 * 4096, PageSize::DEFAULT, cow.clone(), saved).unwrap();
    assert_eq!(back.dirty().count(), 6);
    let mut big = RoaringBitmap::new();
    big.insert(100);
    assert!(matches!(
        TrackedVolume::with_dirty("v", 100 * 4096, PageSize::DEFAULT, cow, big),
        Err(TrackingError::SavedBitmapTooLarge { pages: 100 })
    ));
}

fn shared_volume(name: &str, dir: &std::path::Path) -> Arc<TrackedVolume> {
    Arc::new(
        TrackedVolume::new(name, 64 * 4096, PageSize::DEFAULT, cow_config(dir, 1 << 20)).unwrap(),
    )
}

fn no_read(_: PageIndex, _: &mut [u8]) -> io::Result<()> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_before_close_is_in_the_cut_and_write_after_waits() {
    let dir = tempfile::tempdir().unwrap();
    let a = shared_volume("a", dir.path());
    let b = shared_volume("b", dir.path());
    let coord = Arc::new(CutCoordinator::new(CutId(1)));

    // A write to `a` is in flight (entered, marked, data not yet written).
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let a1 = a.clone();
    let early = tokio::spawn(async move {
        let guard = a1.begin_write(4096, 4096, no_read).await.unwrap();
        entered_tx.send(()).unwrap();
        release_rx.await.unwrap();
        drop(guard);
    });
    entered_rx.await.unwrap();

    let (c, a2, b2) = (coord.clone(), a.clone(), b.clone());
    let cut = tokio::spawn(async move { c.cut_group(&[&b2, &a2], options(false)).await });
    while !(a.gate().is_closed() && b.gate().is_closed()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A write issued after the close waits for the gate.
    let b3 = b.clone();
    let late = tokio::spawn(async move {
        let _guard = b3.begin_write(0, 512, no_read).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!late.is_finished(), "a write passed a closed gate");
    assert!(
        !cut.is_finished(),
        "the cut did not wait for the write in flight"
    );

    release_tx.send(()).unwrap();
    let cut = cut.await.unwrap().unwrap();
    early.await.unwrap();
    late.await.unwrap();
    assert!(cut.pause >= Duration::from_millis(25), "{:?}", cut.pause);
    let frozen_a = &cut.volumes[0];
    assert_eq!(&*frozen_a.volume, "a");
    assert_eq!(frozen_a.dirty.iter().collect::<Vec<_>>(), vec![1]);
    assert!(
        cut.volumes[1].dirty.is_empty(),
        "the late write leaked into the cut"
    );
    assert_eq!(b.dirty().snapshot().iter().collect::<Vec<_>>(), vec![0]);
    let stats = coord.stats();
    assert_eq!(stats.cuts, 1);
    assert_eq!(stats.last, Some(cut.pause));
    assert_eq!(stats.max, cut.pause);
}

#[tokio::test]
async fn drain_timeout_reopens_every_gate_and_keeps_bits() {
    let dir = tempfile::tempdir().unwrap();
    let a = shared_volume("a", dir.path());
    let b = shared_volume("b", dir.path());
    let coord = CutCoordinator::new(CutId(5));
    let held = b.begin_write(0, 4096, no_read).await.unwrap();
    let err = coord
        .cut_group(
            &[&a, &b],
            CutOptions {
                timeout: Duration::from_millis(20),
                snapshot: SnapshotScope::Volume,
                freeze_dirty: true,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        CutError::Gate { volume, source: GateError::DrainTimeout { in_flight: 1, .. } } if &**volume == "b"
    ));
    assert!(!a.gate().is_closed() && !b.gate().is_closed());
    assert!(a.snapshots().is_empty() && b.snapshots().is_empty());
    assert_eq!(b.dirty().count(), 1);
    assert_eq!(coord.next_id(), CutId(5));
    let stats = coord.stats();
    assert_eq!((stats.cuts, stats.failures), (0, 1));
    assert!(stats.last.unwrap() >= Duration::from_millis(20));
    // Writes flow, and the next cut works once the slow write is done.
    drop(a.begin_write(0, 512, no_read).await.unwrap());
    drop(held);
    let cut = coord.cut_group(&[&a, &b], options(true)).await.unwrap();
    assert_eq!(cut.id, CutId(5));
    assert_eq!(coord.next_id(), CutId(6));
    assert_eq!(a.snapshots()[0].cut, CutId(5));
    assert_eq!(b.snapshots()[0].cut, CutId(5));
}

#[tokio::test]
async fn busy_gate_duplicate_and_empty_groups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = shared_volume("a", dir.path());
    let b = shared_volume("b", dir.path());
    let coord = CutCoordinator::new(CutId(1));
    b.gate().close().unwrap();
    let err = coord
        .cut_group(&[&a, &b], options(false))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CutError::Gate {
            source: GateError::AlreadyClosed,
            ..
        }
    ));
    assert!(!a.gate().is_closed(), "the gate the cut closed must reopen");
    assert!(
        b.gate().is_closed(),
        "a gate the cut did not close stays as it was"
    );
    b.gate().open();
    assert!(matches!(
        coord.cut_group(&[&a, &a], options(false)).await,
        Err(CutError::DuplicateVolume { .. })
    ));
    assert!(matches!(
        coord.cut_group(&[], options(false)).await,
        Err(CutError::EmptyGroup)
    ));
}

#[tokio::test]
async fn a_cut_dropped_while_draining_reopens_the_gates() {
    let dir = tempfile::tempdir().unwrap();
    let a = shared_volume("a", dir.path());
    let coord = CutCoordinator::new(CutId(1));
    let held = a.begin_write(0, 512, no_read).await.unwrap();
    let group: [&TrackedVolume; 1] = [&a];
    let cut = coord.cut_group(&group, options(false));
    assert!(tokio::time::timeout(Duration::from_millis(20), cut)
        .await
        .is_err());
    assert!(!a.gate().is_closed());
    drop(held);
    assert!(a.gate().try_enter().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_group_cuts_never_deadlock_or_lose_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let vols: Vec<Arc<TrackedVolume>> = ["x", "y", "z"]
        .iter()
        .map(|n| shared_volume(n, dir.path()))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u32 {
        let (vols, stop) = (vols.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            // Each writer records what it wrote where, to check no page is dropped.
            let mut written: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = ((w + i) % 3) as usize;
                let page = (w * 7 + i * 13) % 64;
                let guard = vols[v]
                    .begin_write(u64::from(page) * 4096, 4096, no_read)
                    .await
                    .unwrap();
                written[v].insert(page);
                tokio::task::yield_now().await;
                drop(guard);
                i += 1;
            }
            written
        }));
    }
    let coord = CutCoordinator::new(CutId(1));
    let refs: Vec<&TrackedVolume> = vols.iter().map(|v| &**v).collect();
    let mut seen: Vec<RoaringBitmap> = vec![RoaringBitmap::new(); 3];
    let run = async {
        for n in 0..100u64 {
            let cut = coord.cut_group(&refs, options(n % 10 == 0)).await.unwrap();
            assert_eq!(cut.id, CutId(n + 1));
            for (i, f) in cut.volumes.iter().enumerate() {
                seen[i] |= &f.dirty;
            }
            if n % 10 == 0 {
                for v in &refs {
                    v.delete_snapshot(cut.id).unwrap();
                }
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("cuts wedged");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
    for w in writers {
        let written = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("writer wedged")
            .unwrap();
        for (i, s) in written.into_iter().enumerate() {
            all[i].extend(s);
        }
    }
    for i in 0..3 {
        seen[i] |= vols[i].dirty().take();
        let want: RoaringBitmap = all[i].iter().copied().collect();
        assert_eq!(seen[i], want, "volume {i}");
    }
    let stats = coord.stats();
    assert_eq!(stats.cuts, 100);
    assert!(stats.max >= stats.last.unwrap());
}

/// Readers of a snapshot race writers overwriting its pages (no lock shared between
/// them but the tracking layer's): every read still sees the content at the cut. Each
/// round takes a new snapshot, since only a page's first overwrite after the cut races.
#[test]
fn snapshot_reads_racing_overwrites_see_the_cut() {
    const PAGES: u32 = 8;
    const PAGE: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    // Two pages of memory, the rest spills: both paths race.
    let cow = cow_config(dir.path(), 2 * PAGE as u64);
    let vol = Arc::new(
        TrackedVolume::new(
            "race",
            u64::from(PAGES) * PAGE as u64,
            PageSize::DEFAULT,
            cow,
        )
        .unwrap(),
    );
    // Every page is filled with one byte; writers store a new byte each round.
    let image: Arc<Vec<parking_lot::Mutex<Vec<u8>>>> = Arc::new(
        (0..PAGES)
            .map(|_| parking_lot::Mutex::new(vec![0; PAGE]))
            .collect(),
    );
    let rt = runtime();
    let coord = CutCoordinator::new(CutId(1));
    for round in 1..=30u8 {
        let cut = rt
            .block_on(coord.cut_group(&[&vol], options(true)))
            .unwrap();
        let at_cut: Vec<u8> = image.iter().map(|p| p.lock()[0]).collect();
        let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for r in 0..2u32 {
            let (vol, image, done, at_cut) = (
                vol.clone(),
                image.clone(),
                writers_done.clone(),
                at_cut.clone(),
            );
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0; PAGE];
                let mut p = r;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    p = (p + 1) % PAGES;
                    vol.read_snapshot_page(cut.id, p, &mut buf, |b| {
                        let current = image[p as usize].lock().clone();
                        // A slow read widens the window a wrong order would lose in.
                        std::thread::sleep(Duration::from_micros(20));
                        b.copy_from_slice(&current);
                        Ok(())
                    })
                    .unwrap();
                    let want = at_cut[p as usize];
                    assert!(buf.iter().all(|&x| x == want), "page {p} read past its cut");
                }
            }));
        }
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let (vol, image) = (vol.clone(), image.clone());
                std::thread::spawn(move || {
                    let rt = runtime();
                    std::thread::sleep(Duration::from_micros(200));
                    for p in (0..PAGES).filter(|p| p % 2 == w) {
                        let offset = u64::from(p) * PAGE as u64;
                        let guard = rt
                            .block_on(vol.begin_write(offset, PAGE as u64, |page, buf| {
                                buf.copy_from_slice(&image[page as usize].lock());
                                Ok(())
                            }))
                            .unwrap();
                        image[p as usize].lock().fill(round);
                        drop(guard);
                        std::thread::sleep(Duration::from_micros(50));
                    }
                })
            })
            .collect();
        for t in writers {
            t.join().unwrap();
        }
        writers_done.store(true, std::sync::atomic::Ordering::Release);
        for t in readers {
            t.join().unwrap();
        }
        let info = vol.snapshots()[0];
        assert_eq!(info.stats.pages, u64::from(PAGES));
        vol.delete_snapshot(cut.id).unwrap();
    }
}

#[tokio::test]
async fn clean_shutdown_saves_and_restart_loads_bitmap_and_snapshots() {
    let spill = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let size = 16 * 4096;
    let cow = cow_config(spill.path(), 2 * 4096);
    let mut v = MemVolume::new("v", size, 4096, cow.clone());
    v.write(0, &data(0, 1, size as usize)).await.unwrap();
    let coord = CutCoordinator::new(CutId(1));
    let first = coord.cut_group(&[&v.tracked], options(true)).await.unwrap();
    let image_1 = v.image.clone();
    v.write(4096, &data(0, 2, 5 * 4096)).await.unwrap();
    let deleted = coord.cut_group(&[&v.tracked], options(true)).await.unwrap();
    v.write(8192, &data(2, 3, 3 * 4096)).await.unwrap();
    let second = coord.cut_group(&[&v.tracked], options(true)).await.unwrap();
    let image_2 = v.image.clone();
    v.write(3 * 4096 + 512, &data(0, 4, 4096)).await.unwrap();
    v.tracked.delete_snapshot(deleted.id).unwrap();
    // A save of an earlier life left a file for a snapshot that is gone now.
    std::fs::write(state.path().join("snap-99.cow"), b"stale").unwrap();
    let before = v.tracked.snapshots();
    let dirty = v.tracked.dirty().snapshot();
    assert_eq!(dirty.iter().collect::<Vec<_>>(), vec![3, 4]);

    v.tracked
        .close_and_save(state.path(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        v.tracked.gate().try_enter().is_none(),
        "writes after a save"
    );
    let image = v.image.clone();
    drop(v);
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    assert_eq!(cow.budget.used(), 0);
    assert!(!state.path().join("snap-99.cow").exists());

    let loaded =
        TrackedVolume::load("v", size, PageSize::DEFAULT, cow.clone(), state.path()).unwrap();
    let mut v = MemVolume {
        tracked: loaded,
        image,
    };
    assert_eq!(v.tracked.dirty().snapshot(), dirty);
    let after = v.tracked.snapshots();
    assert_eq!(after.len(), 2);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.cut, b.taken_at, b.stats.pages),
            (a.cut, a.taken_at, a.stats.pages)
        );
        assert_eq!(a.stats.memory_bytes, 0);
    }
    assert_eq!(v.read_snapshot(first.id).unwrap(), image_1);
    assert_eq!(v.read_snapshot(second.id).unwrap(), image_2);

    // A crash now must not find the state clean.
    assert!(matches!(
        TrackedVolume::load("v", size, PageSize::DEFAULT, cow.clone(), state.path()),
        Err(TrackingError::UncleanState { .. })
    ));

    // Copy-on-write goes on after the restart, into memory and the loaded files.
    v.write(0, &data(1, 0, size as usize)).await.unwrap();
    assert_eq!(v.read_snapshot(first.id).unwrap(), image_1);
    assert_eq!(v.read_snapshot(second.id).unwrap(), image_2);
    for s in v.tracked.snapshots() {
        assert_eq!(s.stats.pages, 16);
    }
    // Saving again and loading again keeps it all.
    v.tracked
        .close_and_save(state.path(), Duration::from_secs(1))
        .await
        .unwrap();
    let image = v.image.clone();
    drop(v);
    let v = MemVolume {
        tracked: TrackedVolume::load("v", size, PageSize::DEFAULT, cow.clone(), state.path())
            .unwrap(),
        image,
    };
    assert_eq!(v.read_snapshot(first.id).unwrap(), image_1);
    assert_eq!(v.read_snapshot(second.id).unwrap(), image_2);
    v.tracked.delete_snapshot(first.id).unwrap();
    v.tracked.delete_snapshot(second.id).unwrap();
    assert!(!state.path().join("snap-1.cow").exists());
    persist::discard_state(state.path()).unwrap();
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    // No state at all: a fresh volume.
    let fresh = TrackedVolume::load("v", size, PageSize::DEFAULT, cow, state.path()).unwrap();
    assert_eq!(fresh.dirty().count(), 0);
    assert!(fresh.snapshots().is_empty());
}

#[tokio::test]
async fn bad_saved_state_is_refused_and_left_in_place() {
    let spill = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cow = cow_config(spill.path(), 1 << 20);
    let mut v = MemVolume::new("v", 8 * 4096, 4096, cow.clone());
    let coord = CutCoordinator::new(CutId(1));
    for _ in 0..2 {
        coord.cut_group(&[&v.tracked], options(true)).await.unwrap();
        v.write(0, &[7; 8192]).await.unwrap();
    }
    v.tracked
        .close_and_save(state.path(), Duration::from_secs(1))
        .await
        .unwrap();
    drop(v);

    let page8k = PageSize::new(8192).unwrap();
    assert!(matches!(
        TrackedVolume::load("v", 8 * 4096, page8k, cow.clone(), state.path()),
        Err(TrackingError::SavedPageSize { saved: 4096, .. })
    ));
    // A failed load leaves the state as it was.
    assert!(state.path().join("clean").exists());
    let snap2 = state.path().join("snap-2.cow");
    let len = std::fs::metadata(&snap2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&snap2)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    assert!(matches!(
        TrackedVolume::load("v", 8 * 4096, PageSize::DEFAULT, cow.clone(), state.path()),
        Err(TrackingError::CorruptState { .. })
    ));
    assert!(state.path().join("snap-1.cow").exists());
    assert!(snap2.exists());
    std::fs::write(state.path().join("clean"), b"").unwrap();
    std::fs::write(&snap2, b"TWLNSNAP").unwrap();
    assert!(matches!(
        TrackedVolume::load("v", 8 * 4096, PageSize::DEFAULT, cow, state.path()),
        Err(TrackingError::CorruptState { .. })
    ));
}

#[tokio::test]
async fn frozen_scope_copies_only_frozen_pages_and_survives_a_restart() {
    let spill = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let size = 8 * 4096;
    let cow = cow_config(spill.path(), 1 << 20);
    let mut v = MemVolume::new("v", size, 4096, cow.clone());
    v.write(4096, &data(0, 5, 2 * 4096)).await.unwrap();
    let coord = CutCoordinator::new(CutId(1));
    let cut = coord
        .cut_group(&[&v.tracked], scoped(SnapshotScope::Frozen))
        .await
        .unwrap();
    let at_cut = v.image.clone();
    assert_eq!(cut.volumes[0].dirty.iter().collect::<Vec<_>>(), vec![1, 2]);
    // Only pages 1 and 2 are copied, once.
    assert_eq!(v.write(0, &data(0, 6, size as usize)).await.unwrap(), 2);
    assert_eq!(v.write(0, &data(0, 7, size as usize)).await.unwrap(), 0);
    let mut buf = vec![0; 4096];
    let read = |v: &MemVolume, p: u32, buf: &mut Vec<u8>| {
        v.tracked.read_snapshot_page(cut.id, p, buf, |b| {
            MemVolume::read_page(&v.image, 4096, p, b);
            Ok(())
        })
    };
    read(&v, 2, &mut buf).unwrap();
    assert_eq!(buf, at_cut[2 * 4096..3 * 4096]);
    assert!(matches!(
        read(&v, 0, &mut buf),
        Err(TrackingError::NotInSnapshot { page: 0, .. })
    ));
    // Page 1 was sent: let it go.
    v.tracked
        .release_snapshot_pages(cut.id, &[1].into_iter().collect())
        .unwrap();
    let info = v.tracked.snapshots()[0];
    assert_eq!((info.stats.pages, info.scope_pages), (1, Some(1)));
    assert_eq!(cow.budget.used(), 4096);

    v.tracked
        .close_and_save(state.path(), Duration::from_secs(1))
        .await
        .unwrap();
    let image = v.image.clone();
    drop(v);
    let v = MemVolume {
        tracked: TrackedVolume::load("v", size, PageSize::DEFAULT, cow, state.path()).unwrap(),
        image,
    };
    let info = v.tracked.snapshots()[0];
    assert_eq!((info.stats.pages, info.scope_pages), (1, Some(1)));
    read(&v, 2, &mut buf).unwrap();
    assert_eq!(buf, at_cut[2 * 4096..3 * 4096]);
    assert!(matches!(
        read(&v, 1, &mut buf),
        Err(TrackingError::NotInSnapshot { page: 1, .. })
    ));
}

/// What happens to a volume served with an activity log, as a replication drives it.
#[derive(Clone, Debug)]
enum LifeOp {
    Write {
        page: u32,
        pages: u32,
    },
    /// A replication cut: the dirty map goes to a pending cut.
    Cut,
    /// The peer committed the pending cut and the primary recorded it.
    Commit,
    /// The pending cut's transfer was given up: its pages go back.
    Fail,
    /// Clean shutdown (a pending cut is given up first, as the sender's stop does).
    Restart,
    /// kill -9: nothing saved.
    Crash,
}

fn life_op() -> impl Strategy<Value = LifeOp> {
    prop_oneof![
        8 => (0..LIFE_PAGES, 1..6u32).prop_map(|(page, pages)| LifeOp::Write { page, pages }),
        2 => Just(LifeOp::Cut),
        2 => Just(LifeOp::Commit),
        1 => Just(LifeOp::Fail),
        1 => Just(LifeOp::Restart),
        2 => Just(LifeOp::Crash),
    ]
}

/// 1 MiB pages: 4 to an extent, so extents are easy to tell apart.
const LIFE_PAGE: u32 = 1 << 20;
const LIFE_PAGES: u32 = 38;

fn extent_pages(pages: impl IntoIterator<Item = u32>) -> RoaringBitmap {
    let per = activity::pages_per_extent(PageSize::new(LIFE_PAGE).unwrap());
    let mut out = RoaringBitmap::new();
    for p in pages {
        let first = p / per * per;
        out.insert_range(first..(first + per).min(LIFE_PAGES));
    }
    out
}

fn open_life(dir: &std::path::Path, cow: &CowConfig) -> (TrackedVolume, bool) {
    let page = PageSize::new(LIFE_PAGE).unwrap();
    TrackedVolume::open(
        "v",
        u64::from(LIFE_PAGES * LIFE_PAGE),
        page,
        cow.clone(),
        dir,
    )
    .unwrap()
}

/// After any crash, the dirty pages cover every page changed since the last committed
/// cut (the pending cut's and the active map's), and no more than the extents written
/// since then plus the pages carried into the log when it started.
fn run_life(ops: Vec<LifeOp>) -> Result<(), TestCaseError> {
    let state = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let cow = cow_config(spill.path(), 1 << 20);
    let rt = runtime();
    let coord = CutCoordinator::new(CutId(1));
    let (mut vol, crashed) = open_life(state.path(), &cow);
    prop_assert!(!crashed);
    let mut dirty = RoaringBitmap::new();
    let mut pending: Option<Cut> = None;
    // Pages the log may name: of the current epoch, and of epochs a cut ended but no
    // commit has forgotten yet.
    let mut allowed_current = RoaringBitmap::new();
    let mut allowed_ended = RoaringBitmap::new();

    for op in ops {
        match op {
            LifeOp::Write { page, pages } => {
                let pages = pages.min(LIFE_PAGES - page);
                let offset = u64::from(page) * u64::from(LIFE_PAGE);
                let len = u64::from(pages) * u64::from(LIFE_PAGE);
                drop(rt.block_on(vol.begin_write(offset, len, no_read)).unwrap());
                dirty.insert_range(page..page + pages);
                allowed_current |= extent_pages(page..page + pages);
            }
            LifeOp::Cut => {
                if let Some(p) = pending.take() {
                    p.merge_back(&[&vol]);
                    dirty |= &p.volumes[0].dirty;
                }
                let cut = rt
                    .block_on(coord.cut_group(&[&vol], options(false)))
                    .unwrap();
                prop_assert_eq!(&cut.volumes[0].dirty, &dirty);
                dirty.clear();
                allowed_ended |= std::mem::take(&mut allowed_current);
                pending = Some(cut);
            }
            LifeOp::Commit => {
                if let Some(p) = pending.take() {
                    p.committed(&[&vol]);
                    allowed_ended.clear();
                }
            }
            LifeOp::Fail => {
                if let Some(p) = pending.take() {
                    p.merge_back(&[&vol]);
                    dirty |= &p.volumes[0].dirty;
                }
            }
            LifeOp::Restart => {
                if let Some(p) = pending.take() {
                    p.merge_back(&[&vol]);
                    dirty |= &p.volumes[0].dirty;
                }
                rt.block_on(vol.close_and_save(state.path(), Duration::from_secs(1)))
                    .unwrap();
                drop(vol);
                let (v, crashed) = open_life(state.path(), &cow);
                prop_assert!(!crashed);
                prop_assert_eq!(v.dirty().snapshot(), dirty.clone());
                vol = v;
                allowed_current = dirty.clone();
                allowed_ended.clear();
            }
            LifeOp::Crash => {
                drop(vol);
                let (v, crashed) = open_life(state.path(), &cow);
                prop_assert!(crashed);
                let got = v.dirty().snapshot();
                let mut must = dirty.clone();
                if let Some(p) = pending.take() {
                    must |= &p.volumes[0].dirty;
                }
                prop_assert!(must.is_subset(&got), "lost {:?}", must - &got);
                let may = &allowed_current | &allowed_ended;
                prop_assert!(got.is_subset(&may), "extra {:?}", got - &may);
                vol = v;
                dirty = got;
                allowed_current = dirty.clone();
                allowed_ended.clear();
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn after_a_crash_the_log_covers_every_uncommitted_write(
        ops in proptest::collection::vec(life_op(), 1..50),
    ) {
        run_life(ops)?;
    }
}

#[test]
fn the_log_bounds_a_crash_to_the_extents_written_since_the_commit() {
    let state = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let cow = cow_config(spill.path(), 1 << 20);
    let rt = runtime();
    let coord = CutCoordinator::new(CutId(1));
    let (vol, _) = open_life(state.path(), &cow);
    let write = |vol: &TrackedVolume, page: u32| {
        let offset = u64::from(page) * u64::from(LIFE_PAGE);
        drop(rt.block_on(vol.begin_write(offset, 4096, no_read)).unwrap());
    };
    for page in [0, 1, 9, 37] {
        write(&vol, page);
    }
    assert_eq!(vol.hot_extents(), 3);
    let cut = rt
        .block_on(coord.cut_group(&[&vol], options(false)))
        .unwrap();
    assert_eq!(vol.hot_extents(), 0, "a replication cut starts a new epoch");
    write(&vol, 21);
    cut.committed(&[&vol]);
    // An admin snapshot's cut leaves the epoch alone.
    let admin = CutOptions {
        freeze_dirty: false,
        ..options(true)
    };
    let snap = rt.block_on(coord.cut_group(&[&vol], admin)).unwrap();
    assert_eq!(snap.volumes[0].epoch, None);
    assert_eq!(vol.hot_extents(), 1);
    drop(vol);
    let (vol, crashed) = open_life(state.path(), &cow);
    assert!(crashed);
    assert_eq!(
        vol.dirty().snapshot().iter().collect::<Vec<_>>(),
        vec![20, 21, 22, 23]
    );
}
