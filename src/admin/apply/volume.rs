//! Volumes: sparse files named by their ids, opened before the catalog names them.
//! `volume delete` is refused while the volume is mapped, in a group, in a replication
//! set or has snapshots; it deletes the backing file.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::super::protocol::{MappingView, Response, VolumeView};
use super::super::store::{self, StoreError};
use super::super::validate::{self, format_size};
use super::{done, install, AdminError, Effect, Host};
use crate::catalog::{Catalog, VolumeSpec};

pub(super) fn list<H: Host + ?Sized>(host: &H, c: &Catalog) -> Response {
    Response::Volumes {
        volumes: c.volumes.keys().map(|n| volume_view(host, c, n)).collect(),
    }
}

pub(super) fn show<H: Host + ?Sized>(
    host: &H,
    c: &Catalog,
    name: String,
) -> Result<Response, AdminError> {
    if !c.volumes.contains_key(&name) {
        return Err(AdminError::NoVolume(name));
    }
    Ok(Response::Volume(volume_view(host, c, &name)))
}

/// Backing file of a volume: `spec.path` relative to the data dir unless absolute.
pub fn volume_file(data_dir: &Path, spec: &VolumeSpec) -> PathBuf {
    data_dir.join(&spec.path)
}

fn volume_view<H: Host + ?Sized>(host: &H, c: &Catalog, name: &str) -> VolumeView {
    let spec = &c.volumes[name];
    let allocated = fs::metadata(volume_file(host.data_dir(), spec))
        .ok()
        .map(|m| m.blocks() * 512);
    VolumeView {
        name: name.into(),
        size: spec.size,
        block_size: spec.block_size,
        page_size: spec.page_size,
        provisioning: spec.provisioning,
        dirty_pages: host.dirty_pages(name),
        id: format!("{:016x}", spec.id),
        path: spec.path.clone(),
        allocated,
        group: c.group_of(name).map(str::to_string),
        mappings: c
            .targets
            .iter()
            .flat_map(|(iqn, t)| {
                t.luns
                    .iter()
                    .filter(|(_, l)| l.volume == name)
                    .map(|(lun, l)| MappingView {
                        target: iqn.clone(),
                        lun: *lun,
                        read_only: l.read_only,
                    })
            })
            .collect(),
        clone_of: spec.clone_of.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn create(
    c: &mut Catalog,
    name: String,
    size: u64,
    block_size: u32,
    page_size: u64,
    provisioning: crate::catalog::Provisioning,
    allow_sanitize: bool,
    new_id: &mut dyn FnMut() -> u64,
) -> Result<(Effect, Response), AdminError> {
    validate::check_volume_name(&name)?;
    validate::check_geometry(size, block_size)?;
    validate::check_page_size(page_size)?;
    let page_size = u32::try_from(page_size).expect("check_page_size caps it at 1 MiB");
    if c.volumes.contains_key(&name) {
        return Err(AdminError::VolumeExists(name));
    }
    let mut spec = new_volume_spec(c, size, block_size, page_size, new_id);
    spec.provisioning = provisioning;
    spec.allow_sanitize = allow_sanitize;
    let id = spec.id;
    c.volumes.insert(name.clone(), spec.clone());
    let view = VolumeView {
        name: name.clone(),
        size,
        block_size,
        page_size,
        provisioning,
        dirty_pages: Some(0),
        id: format!("{id:016x}"),
        path: spec.path.clone(),
        allocated: Some(0),
        group: None,
        mappings: Vec::new(),
        clone_of: None,
    };
    Ok((Effect::CreateVolume { name, spec }, Response::Volume(view)))
}

pub(super) fn delete(c: &mut Catalog, name: String) -> Result<(Effect, Response), AdminError> {
    if !c.volumes.contains_key(&name) {
        return Err(AdminError::NoVolume(name));
    }
    let mappings: Vec<String> = c
        .mappings_of(&name)
        .map(|(iqn, lun)| format!("{iqn} LUN {lun}"))
        .collect();
    if !mappings.is_empty() {
        return Err(AdminError::VolumeMapped {
            name,
            mappings: mappings.join(", "),
        });
    }
    if let Some(group) = c.group_of(&name) {
        let group = group.to_string();
        return Err(AdminError::VolumeGrouped { name, group });
    }
    if let Some((set, _)) = c.replication_of(&name) {
        let set = set.to_string();
        return Err(AdminError::VolumeReplicated { volume: name, set });
    }
    let snapshots: Vec<&str> = c.snapshots_of(&name).collect();
    if !snapshots.is_empty() {
        let snapshots = snapshots.join(", ");
        return Err(AdminError::VolumeHasSnapshots { name, snapshots });
    }
    let spec = c.volumes.remove(&name).expect("presence checked above");
    let msg = format!("deleted volume '{name}' and its file {}", spec.path);
    Ok((Effect::DeleteVolume { name, spec }, done(msg)))
}

/// `volume clone NAME --from VOLUME@rp:ID` on a secondary (a DR drill): a new writable
/// copy-on-write volume with the source's geometry, reading recovery point ID of VOLUME
/// wherever it was not written (`volume::clone`). Nothing is copied; the point is pinned
/// while the clone exists (the set keeps it and keeps receiving). On failure nothing is
/// left behind.
pub(super) fn clone_point<H: Host + ?Sized>(
    host: &H,
    name: String,
    from: &str,
) -> Result<Response, AdminError> {
    let (base, cut) = crate::catalog::split_point_ref(from)
        .ok_or_else(|| AdminError::BadPointRef(from.into()))?;
    validate::check_volume_name(&name)?;
    let _serial = host.change_lock().lock();
    let mut new = host.catalog().read().clone();
    if new.volumes.contains_key(&name) {
        return Err(AdminError::VolumeExists(name));
    }
    let source = new
        .volumes
        .get(base)
        .cloned()
        .ok_or_else(|| AdminError::NoVolume(base.to_string()))?;
    let set = match new.replication_of(base) {
        Some((set, r)) if r.role == crate::catalog::ReplicationRole::Secondary => set.to_string(),
        _ => return Err(AdminError::NotASecondary(format!("volume '{base}'"))),
    };
    let mut spec = new_volume_spec(
        &new,
        source.size,
        source.block_size,
        source.page_size,
        &mut rand::random::<u64>,
    );
    spec.clone_of = Some(from.to_string());
    host.pin_point(&set, cut)?;
    if let Err(e) = create_and_open_volume(host, &name, &spec) {
        host.unpin_point(&set, cut);
        return Err(e);
    }
    new.volumes.insert(name.clone(), spec.clone());
    if let Err(e) = install(host, new.clone()) {
        discard_volume(host, &name, &spec);
        host.unpin_point(&set, cut);
        return Err(e.into());
    }
    tracing::info!(volume = %name, from, "volume cloned from a recovery point (copy-on-write)");
    Ok(Response::Volume(volume_view(host, &new, &name)))
}

/// Creates the file and opens it, then installs the catalog that names it; on failure
/// nothing is left behind.
pub(super) fn commit_create<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
    spec: &VolumeSpec,
) -> Result<(), AdminError> {
    create_and_open_volume(host, name, spec)?;
    if let Err(e) = install(host, new) {
        discard_volume(host, name, spec);
        return Err(e.into());
    }
    tracing::info!(volume = %name, size = %format_size(spec.size), "volume created");
    Ok(())
}

/// Installs the catalog without the volume, then removes its file and state.
pub(super) fn commit_delete<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    name: &str,
    spec: &VolumeSpec,
) -> Result<(), AdminError> {
    let pinned = spec.clone_of.as_deref().and_then(|r| {
        let (base, cut) = crate::catalog::split_point_ref(r)?;
        Some((
            host.catalog().read().replication_of(base)?.0.to_string(),
            cut,
        ))
    });
    install(host, new)?;
    discard_volume(host, name, spec);
    // A clone's point is kept no longer for it.
    if let Some((set, cut)) = pinned {
        host.unpin_point(&set, cut);
    }
    tracing::info!(volume = %name, "volume deleted");
    Ok(())
}

/// Creates a new volume's sparse backing file with std (create_new: never clobbers an
/// existing file), then fsyncs its directory.
pub fn create_volume_file(path: &Path, size: u64) -> Result<(), AdminError> {
    let err = |source| AdminError::CreateFile {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::durable::create_private_dir(dir).map_err(err)?;
    let f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(AdminError::FileExists(path.to_path_buf()))
        }
        Err(e) => return Err(err(e)),
    };
    if let Err(e) = f.set_len(size).and_then(|()| f.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    store::sync_dir(dir).map_err(|e| match e {
        StoreError::Io { source, .. } => err(source),
        other => AdminError::Save(other),
    })
}

/// The spec of a new volume with a fresh id. Ids name the LU to initiators (NAA
/// designator): never reuse a live one, never 0.
pub fn new_volume_spec(
    c: &Catalog,
    size: u64,
    block_size: u32,
    page_size: u32,
    new_id: &mut dyn FnMut() -> u64,
) -> VolumeSpec {
    let id = loop {
        let id = new_id();
        if id != 0 && !c.volumes.values().any(|v| v.id == id) {
            break id;
        }
    };
    VolumeSpec {
        size,
        block_size,
        id,
        path: crate::datadir::volume_file_rel(id),
        page_size,
        provisioning: crate::catalog::Provisioning::Thin,
        allow_sanitize: false,
        clone_of: None,
    }
}

/// Stops serving a volume that left the catalog (or never made it in) and removes its
/// backing file and tracking state, only ever under their own folders of the data dir.
/// The catalog no longer has the volume: a leftover file is only disk space, so a
/// failure is logged.
pub fn discard_volume<H: Host + ?Sized>(host: &H, name: &str, spec: &VolumeSpec) {
    host.close_volume(name, spec);
    let file = volume_file(host.data_dir(), spec);
    if let Err(e) = crate::datadir::remove_volume_file(host.data_dir(), &file) {
        tracing::warn!(volume = %name, error = %e, "cannot delete volume file");
    }
}

/// Creates a new volume's backing file and starts serving it; on failure nothing is
/// left behind. Returns the file's path.
pub fn create_and_open_volume<H: Host + ?Sized>(
    host: &H,
    name: &str,
    spec: &VolumeSpec,
) -> Result<PathBuf, AdminError> {
    let file = volume_file(host.data_dir(), spec);
    create_volume_file(&file, spec.size)?;
    if let Err(source) = host.open_volume(name, spec) {
        let _ = fs::remove_file(&file);
        return Err(AdminError::OpenVolume {
            name: name.to_string(),
            source,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::super::change;
    use super::super::fake::*;
    use super::*;
    use crate::admin::protocol::{Change, ErrorCode, Query};

    #[test]
    fn volume_create_show_list_delete() {
        let f = Fake::new();
        let r = f.ok(vcreate("db", 10 << 20, 4096));
        let Response::Volume(v) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (v.name.as_str(), v.size, v.block_size),
            ("db", 10 << 20, 4096)
        );
        let id = f.catalog.read().volumes["db"].id;
        // Files are named by ids, never by names.
        assert_eq!(v.path, crate::datadir::volume_file_rel(id));
        let file = f.dir.path().join(&v.path);
        assert_eq!(fs::metadata(&file).unwrap().len(), 10 << 20);
        assert!(f.open.lock().contains("db"));
        assert_ne!(id, 0);
        assert_eq!(v.id, format!("{id:016x}"));

        let Response::Volume(shown) = f.ok(Query::VolumeShow { name: "db".into() }) else {
            panic!()
        };
        assert_eq!(shown.size, 10 << 20);
        let Response::Volumes { volumes } = f.ok(Query::VolumeList) else {
            panic!()
        };
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["db", "demo"]);
        assert_eq!(
            volumes[1].mappings.len(),
            1,
            "demo is mapped by the default target"
        );

        f.ok(Change::VolumeDelete { name: "db".into() });
        assert!(!file.exists());
        assert!(!f.open.lock().contains("db"));
        assert!(!f.catalog.read().volumes.contains_key("db"));
    }

    #[test]
    fn volume_create_refusals_change_nothing() {
        let f = Fake::new();
        f.refuse(vcreate("demo", 1 << 20, 512), ErrorCode::AlreadyExists);
        f.refuse(vcreate("bad/name", 1 << 20, 512), ErrorCode::Invalid);
        f.refuse(vcreate("", 1 << 20, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 0, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 1000, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 1 << 20, 1024), ErrorCode::Invalid);
        f.refuse(vcreate("x", 6144, 4096), ErrorCode::Invalid);
        // Names are not paths: a stray file named like the volume is not its file,
        // and is left alone.
        fs::write(f.dir.path().join("volumes/stray.img"), b"keep me").unwrap();
        f.ok(vcreate("stray", 1 << 20, 512));
        assert_eq!(
            fs::read(f.dir.path().join("volumes/stray.img")).unwrap(),
            b"keep me"
        );
        // An existing file where a new volume's file would go is never clobbered.
        let taken = f.dir.path().join("volumes/taken.img");
        fs::write(&taken, b"keep me").unwrap();
        assert!(matches!(
            create_volume_file(&taken, 1 << 20),
            Err(AdminError::FileExists(_))
        ));
        assert_eq!(fs::read(&taken).unwrap(), b"keep me");
    }

    #[test]
    fn volume_create_undone_when_open_fails() {
        let mut f = Fake::new();
        f.fail_open = true;
        // `refuse` checks that the folder of volume files is as it was.
        f.refuse(vcreate("x", 1 << 20, 512), ErrorCode::Io);
    }

    #[test]
    fn volume_delete_refusals() {
        let f = Fake::new();
        f.refuse(
            Change::VolumeDelete {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
        let m = f.refuse(
            Change::VolumeDelete {
                name: "demo".into(),
            },
            ErrorCode::InUse,
        );
        assert!(
            m.contains(Catalog::DEMO_TARGET) && m.contains("LUN 0"),
            "{m}"
        );
        assert!(f
            .dir
            .path()
            .join(&f.catalog.read().volumes["demo"].path)
            .exists());
        f.refuse(
            Query::VolumeShow {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
    }

    fn vcreate_paged(name: &str, page_size: u64) -> Change {
        Change::VolumeCreate {
            name: name.into(),
            size: 4 << 20,
            block_size: 512,
            page_size,
            provisioning: crate::catalog::Provisioning::Thin,
            allow_sanitize: false,
        }
    }

    #[test]
    fn page_size_is_chosen_at_creation_and_shown() {
        let f = Fake::new();
        let Response::Volume(v) = f.ok(vcreate("a", 1 << 20, 512)) else {
            panic!()
        };
        assert_eq!(v.page_size, 4096, "4 KiB by default");
        let Response::Volume(v) = f.ok(vcreate_paged("b", 64 << 10)) else {
            panic!()
        };
        assert_eq!(v.page_size, 64 << 10);
        f.ok(vcreate_paged("c", 1 << 20));
        assert_eq!(f.catalog.read().volumes["b"].page_size, 64 << 10);
        assert_eq!(f.on_disk().volumes["c"].page_size, 1 << 20);
        assert_eq!(volume_of(&f, "b").page_size, 64 << 10);
        let Response::Volumes { volumes } = f.ok(Query::VolumeList) else {
            panic!()
        };
        let pages: Vec<u32> = volumes.iter().map(|v| v.page_size).collect();
        assert_eq!(pages, [4096, 64 << 10, 1 << 20, 4096]);
        for bad in [0, 512, 2048, 6144, 3 << 12, 2 << 20, 1 << 40] {
            let m = f.refuse(vcreate_paged("x", bad), ErrorCode::Invalid);
            assert!(m.contains("page size"), "{m}");
        }
    }

    #[test]
    fn volume_ids_are_unique_and_nonzero() {
        let mut c = Catalog::embedded_default(7);
        let mut ids = [0u64, 7, 7, 9].into_iter();
        let (effect, _) = change(&mut c, vcreate("x", 4096, 512), &[], &mut || {
            ids.next().unwrap()
        })
        .unwrap();
        let Effect::CreateVolume { spec, .. } = effect else {
            panic!()
        };
        assert_eq!(spec.id, 9);
    }
}
