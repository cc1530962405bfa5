//! A node without I/O for the handlers' tests, and the helpers they share.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::{apply, create_volume_file, volume_file, Host, RuntimeInfo};
use super::{TakeSnapshotError, TakenSnapshot};
use crate::admin::protocol::{Change, ErrorCode, Query, Request, Response, VolumeView};
use crate::admin::store;
use crate::catalog::{Catalog, VolumeSpec};
use crate::iscsi::SessionInfo;
use crate::tracking::{CutError, SnapshotInfo};
use crate::volume::VolumeError;

/// A node without io: records which volumes are open.
pub(super) struct Fake {
    pub(super) dir: tempfile::TempDir,
    pub(super) catalog: RwLock<Catalog>,
    pub(super) lock: Mutex<()>,
    pub(super) open: Mutex<HashSet<String>>,
    pub(super) sessions: Mutex<Vec<SessionInfo>>,
    pub(super) fail_open: bool,
    /// Snapshot state the fake volumes hold: (volume, cut).
    pub(super) snaps: Mutex<std::collections::BTreeSet<(String, u64)>>,
    pub(super) next_cut: Mutex<u64>,
    pub(super) fail_cut: bool,
}

impl Fake {
    pub(super) fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::embedded_default(42);
        create_volume_file(&volume_file(dir.path(), &catalog.volumes["demo"]), 1 << 30).unwrap();
        store::save(dir.path(), &catalog).unwrap();
        Fake {
            dir,
            catalog: RwLock::new(catalog),
            lock: Mutex::new(()),
            open: Mutex::new(["demo".to_string()].into()),
            sessions: Mutex::new(Vec::new()),
            fail_open: false,
            snaps: Mutex::new(Default::default()),
            next_cut: Mutex::new(1),
            fail_cut: false,
        }
    }
    pub(super) fn on_disk(&self) -> Catalog {
        store::load(self.dir.path()).unwrap().unwrap()
    }
    #[allow(clippy::type_complexity)]
    pub(super) fn snapshot(
        &self,
    ) -> (
        Catalog,
        Catalog,
        HashSet<String>,
        Vec<String>,
        std::collections::BTreeSet<(String, u64)>,
    ) {
        let mut files: Vec<String> = fs::read_dir(self.dir.path().join("volumes"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        (
            self.catalog.read().clone(),
            self.on_disk(),
            self.open.lock().clone(),
            files,
            self.snaps.lock().clone(),
        )
    }
    /// Applies a request that must be refused with `code`, and checks nothing changed.
    pub(super) fn refuse(&self, req: impl Into<Request>, code: ErrorCode) -> String {
        let req = req.into();
        let before = self.snapshot();
        let r = apply(self, req.clone());
        let Response::Error { code: got, message } = r else {
            panic!("{req:?} should be refused, got {r:?}");
        };
        assert_eq!(got, code, "{req:?}: {message}");
        assert_eq!(
            self.snapshot(),
            before,
            "{req:?} was refused but changed something"
        );
        message
    }
    pub(super) fn ok(&self, req: impl Into<Request>) -> Response {
        let req = req.into();
        let r = apply(self, req.clone());
        assert!(!r.is_error(), "{req:?} failed: {r:?}");
        assert_eq!(
            *self.catalog.read(),
            self.on_disk(),
            "memory and disk differ after {req:?}"
        );
        r
    }
}

impl Host for Fake {
    fn data_dir(&self) -> &Path {
        self.dir.path()
    }
    fn catalog(&self) -> &RwLock<Catalog> {
        &self.catalog
    }
    fn change_lock(&self) -> &Mutex<()> {
        &self.lock
    }
    fn open_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), VolumeError> {
        if self.fail_open {
            return Err(VolumeError::EngineStopped);
        }
        assert!(
            volume_file(self.dir.path(), spec).exists(),
            "file is created before open"
        );
        self.open.lock().insert(name.into());
        Ok(())
    }
    fn close_volume(&self, name: &str, _spec: &VolumeSpec) {
        self.open.lock().remove(name);
    }
    fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.lock().clone()
    }
    fn runtime(&self) -> RuntimeInfo {
        RuntimeInfo {
            engine: "fake".into(),
            ..Default::default()
        }
    }
    fn take_snapshot(&self, volumes: &[String]) -> Result<TakenSnapshot, TakeSnapshotError> {
        if self.fail_cut {
            return Err(TakeSnapshotError::Cut(CutError::EmptyGroup));
        }
        let mut next = self.next_cut.lock();
        let cut = *next;
        *next += 1;
        for v in volumes {
            self.snaps.lock().insert((v.clone(), cut));
        }
        Ok(TakenSnapshot {
            cut,
            created: 1_795_321_625,
            pause: std::time::Duration::from_micros(250),
        })
    }
    fn drop_snapshot(&self, volumes: &[String], cut: u64) {
        for v in volumes {
            self.snaps.lock().remove(&(v.clone(), cut));
        }
    }
    fn snapshot_usage(&self, volume: &str, cut: u64) -> Option<SnapshotInfo> {
        self.snaps
            .lock()
            .contains(&(volume.to_string(), cut))
            .then_some(SnapshotInfo {
                cut: crate::tracking::CutId(cut),
                taken_at: std::time::SystemTime::UNIX_EPOCH,
                stats: crate::tracking::CowStats {
                    pages: 3,
                    memory_bytes: 3 * 4096,
                    file_bytes: 0,
                },
                scope_pages: None,
                invalidated: false,
            })
    }
}

pub(super) const T: &str = "iqn.2026-11.io.twinlun:t1";

pub(super) const INI: &str = "iqn.1994-05.com.redhat:client1";

pub(super) fn vcreate(name: &str, size: u64, bs: u32) -> Change {
    Change::VolumeCreate {
        name: name.into(),
        size,
        block_size: bs,
        page_size: 4096,
        provisioning: crate::catalog::Provisioning::Thin,
        allow_sanitize: false,
    }
}

pub(super) fn tcreate(iqn: &str) -> Change {
    Change::TargetCreate { iqn: iqn.into() }
}

pub(super) fn map(iqn: &str, lun: u64, vol: &str) -> Change {
    Change::LunMap {
        iqn: iqn.into(),
        lun,
        volume: vol.into(),
        read_only: false,
        removable: false,
    }
}

pub(super) fn session(target: &str) -> SessionInfo {
    SessionInfo {
        target: target.into(),
        initiator: INI.into(),
        isid: "400001370000".into(),
        tsih: 1,
        connections: 1,
        negotiated: vec![("HeaderDigest".into(), "None".into())],
        bytes_in: 0,
        bytes_out: 0,
    }
}

pub(super) fn gcreate(name: &str, vols: &[&str]) -> Change {
    Change::GroupCreate {
        name: name.into(),
        volumes: vols.iter().map(|v| v.to_string()).collect(),
    }
}

pub(super) fn volume_of(f: &Fake, name: &str) -> VolumeView {
    match f.ok(Query::VolumeShow { name: name.into() }) {
        Response::Volume(v) => v,
        other => panic!("{other:?}"),
    }
}
