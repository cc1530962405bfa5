//! Files at rest: volume data, snapshots' old content, undo logs and secrets are
//! readable by the server's user alone, whatever the umask and whatever mode a data
//! dir made beforehand had.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::pair::{create_set_of_v, pair_of, replicate};
use common::{qemu_io, run, TestServer, DEMO_IQN};

/// A data dir an admin made beforehand, as `mkdir` under umask 022 makes it.
fn premade(parent: &Path) -> PathBuf {
    let d = parent.join("data");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// What `find DIR -perm /044` lists: anything group or others may read.
fn readable_by_others(dir: &Path) -> Vec<String> {
    common::require_tool("find");
    let o = run("find", &[dir.to_str().unwrap(), "-perm", "/044"]);
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A server on `dir` that keeps the test's umask (022) instead of setting its own,
/// so what is checked is the stores' own modes.
fn launch_at(dir: &Path) -> common::Launch {
    TestServer::launch()
        .data_dir(dir)
        .env("TWINLUN_TEST_KEEP_UMASK", "1")
}

#[test]
fn nothing_in_either_data_dir_is_readable_by_others() {
    // SAFETY: umask only swaps the test process's file creation mask (inherited by the
    // servers it starts); this file's only test.
    unsafe { libc::umask(0o022) };
    let tmp = tempfile::tempdir().unwrap();
    let (pd, sd) = (
        premade(&tmp.path().join("p")),
        premade(&tmp.path().join("s")),
    );
    let (mut p, mut s) = pair_of(launch_at(&pd), launch_at(&sd), |a| a);
    for (side, node) in [("primary", &p), ("secondary", &s)] {
        let log = node.stderr();
        assert!(
            log.contains("the data dir was open to other users (mode 0755): made it 0700"),
            "no warning naming the old mode on the {side}:\n{log}"
        );
        assert_eq!(mode(&node.data_dir), 0o700, "{side}");
    }

    // Volumes, a snapshot with preserved pages, cycles, recovery points.
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x51 0 8m"]);
    create_set_of_v(&p, &["--keep", "3"]);
    replicate(&p, "r");
    p.ctl_ok(&["snapshot", "create", "snap", "--volume", "v"]);
    qemu_io(&url, &["write -P 0x52 0 4m"]);
    replicate(&p, "r");
    qemu_io(&url, &["write -P 0x53 2m 4m"]);
    replicate(&p, "r");
    // A clean restart saves the snapshot's kept pages to a file of their own.
    p.restart();
    qemu_io(&url, &["write -P 0x54 1m 1m"]);
    replicate(&p, "r");
    let points = s.ctl_json(&["recovery-points", "r"]);
    assert!(points["points"].as_array().unwrap().len() >= 3, "{points}");
    let p_files = files_under(&pd);
    let s_files = files_under(&sd);
    let names = |files: &[PathBuf]| -> String {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Not a vacuous check: the kinds of files named in the issue are there.
    assert!(
        p_files
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".cow")),
        "no snapshot store on the primary:\n{}",
        names(&p_files)
    );
    assert!(
        s_files
            .iter()
            .filter(|f| f.to_string_lossy().contains("/replication/"))
            .count()
            >= 3,
        "no undo logs on the secondary:\n{}",
        names(&s_files)
    );
    for (side, dir) in [("primary", &pd), ("secondary", &sd)] {
        let open = readable_by_others(dir);
        assert!(
            open.is_empty(),
            "readable by others on the {side}: {open:#?}"
        );
    }

    // Files and folders an older version left open are made private at start.
    s.stop();
    let o = run("chmod", &["-R", "go+rX", sd.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert!(!readable_by_others(&sd).is_empty());
    s.restart();
    assert!(
        s.stderr()
            .contains("files and folders under the data dir were readable by other users"),
        "{}",
        s.stderr()
    );
    let open = readable_by_others(&sd);
    assert!(open.is_empty(), "still readable by others: {open:#?}");
    assert_eq!(s.ctl_json(&["recovery-points", "r"]), points);
}
