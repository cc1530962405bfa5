//! Thick volumes (`volume create --provisioning thick`, `provisioning = "thick"` in the
//! TOML): the file is allocated whole at creation and stays so, and the LU answers as a
//! fully provisioned disk (SBC-4 4.7.2): LBPME 0 in READ CAPACITY(16), provisioning
//! type 000b and no UNMAP in the VPD pages, UNMAP refused as an unsupported command,
//! WRITE SAME with UNMAP refused.

mod common;

use std::os::unix::fs::MetadataExt;

use common::raw::RawClient;
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const MIB: u64 = 1 << 20;

/// Bytes the file system has allocated to a file.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn client(s: &TestServer) -> RawClient {
    let mut c = RawClient::connect(s.addr);
    c.login("iqn.2026-12.test:thick", DEMO_IQN, Digests::default());
    c.scsi_good(1, &[0, 0, 0, 0, 0, 0], &[], 0);
    c
}

#[test]
fn thick_volume_is_preallocated_and_answers_as_fully_provisioned() {
    let mut s = TestServer::start();
    let out = s.ctl_ok(&[
        "volume",
        "create",
        "fat",
        "--size",
        "32M",
        "--provisioning",
        "thick",
    ]);
    assert!(out.contains("thick"), "{out}");
    let view = s.volume_view("fat");
    assert_eq!(view["provisioning"], "thick", "{view}");
    let file = s.volume_file("fat");
    assert!(
        allocated(&file) >= 32 * MIB,
        "a thick volume is allocated whole: {} bytes",
        allocated(&file)
    );
    // A thin one next to it is not.
    s.ctl_ok(&["volume", "create", "lean", "--size", "32M"]);
    assert_eq!(s.volume_view("lean")["provisioning"], "thin");
    assert!(allocated(&s.volume_file("lean")) < MIB);
    // A bad value is a usage error and creates nothing.
    let o = s.ctl(&[
        "volume",
        "create",
        "odd",
        "--size",
        "32M",
        "--provisioning",
        "fat",
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert!(msg.contains("thin or thick"), "{msg}");
    assert!(s
        .ctl_json(&["volume", "list"])
        .to_string()
        .find("odd")
        .is_none());

    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "fat"]);
    let mut c = client(&s);
    // READ CAPACITY(16): LBPME and LBPRZ clear.
    let rc16 = c.scsi_good(
        1,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    assert_eq!(rc16[14] & 0xc0, 0, "LBPME/LBPRZ: {rc16:02x?}");
    // Logical Block Provisioning VPD: no LBPU/LBPWS/LBPWS10, provisioning type 000b.
    let b2 = c.scsi_good(1, &[0x12, 0x01, 0xb2, 0, 0xff, 0], &[], 255);
    assert_eq!((b2[5] & 0xe0, b2[6] & 0x07), (0, 0), "{b2:02x?}");
    // Block Limits: no UNMAP counts.
    let b0 = c.scsi_good(1, &[0x12, 0x01, 0xb0, 0, 0xff, 0], &[], 255);
    assert_eq!(&b0[20..28], &[0; 8], "{b0:02x?}");

    // Data first, so UNMAP has something it could have given back.
    let pattern = vec![0x5au8; 64 * 1024];
    c.write10(1, 0, &pattern, 512);
    // UNMAP: ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE; the data stays.
    let mut params = vec![0u8; 24];
    params[1] = 22;
    params[3] = 16;
    params[8..16].copy_from_slice(&0u64.to_be_bytes());
    params[16..20].copy_from_slice(&128u32.to_be_bytes());
    let o = c.scsi(1, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &params, 0);
    assert_eq!(o.status, 0x02);
    assert_eq!(
        (o.sense[2] & 0x0f, o.sense[12]),
        (0x05, 0x20),
        "{:02x?}",
        &o.sense[..]
    );
    assert_eq!(c.read10(1, 0, 128, 512), pattern);
    // WRITE SAME(16) with UNMAP: INVALID FIELD IN CDB (SBC-4 5.47: LBPWS is 0); without
    // it, the block is written.
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[1] = 0x08;
    ws[13] = 16;
    let o = c.scsi(1, &ws, &[0xabu8; 512], 0);
    assert_eq!(
        (o.sense[2] & 0x0f, o.sense[12]),
        (0x05, 0x24),
        "{:02x?}",
        &o.sense[..]
    );
    assert_eq!(c.read10(1, 0, 128, 512), pattern);
    ws[1] = 0;
    c.scsi_good(1, &ws, &[0xabu8; 512], 0);
    assert_eq!(c.read10(1, 0, 16, 512), vec![0xabu8; 16 * 512]);
    assert_eq!(c.read10(1, 16, 112, 512), vec![0x5au8; 112 * 512]);
    // GET LBA STATUS: everything mapped.
    let mut gls = [0u8; 16];
    gls[0] = 0x9e;
    gls[1] = 0x12;
    gls[13] = 64;
    let d = c.scsi_good(1, &gls, &[], 64);
    assert_eq!(d[20], 0, "mapped: {d:02x?}");
    assert_eq!(
        u32::from_be_bytes(d[16..20].try_into().unwrap()) as u64,
        32 * MIB / 512
    );
    drop(c);
    assert!(allocated(&file) >= 32 * MIB);

    // The export says thick; a restart keeps it.
    let export = s.ctl_ok(&["config", "export"]);
    assert!(export.contains("provisioning = \"thick\""), "{export}");
    s.restart();
    assert_eq!(s.volume_view("fat")["provisioning"], "thick");
    assert!(allocated(&file) >= 32 * MIB);
}

#[test]
fn thick_volume_declared_in_the_config_is_preallocated() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[[volume]]\nname = \"cfgfat\"\nsize = \"16M\"\nprovisioning = \"thick\"\n\n\
         [[volume]]\nname = \"cfglean\"\nsize = \"16M\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start_at(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(s.volume_view("cfgfat")["provisioning"], "thick");
    assert!(allocated(&s.volume_file("cfgfat")) >= 16 * MIB);
    assert_eq!(s.volume_view("cfglean")["provisioning"], "thin");
    assert!(allocated(&s.volume_file("cfglean")) < MIB);

    // A config that calls an existing thick volume thin is refused, naming the key.
    std::fs::write(
        &config,
        "[[volume]]\nname = \"cfgfat\"\nsize = \"16M\"\nprovisioning = \"thin\"\n",
    )
    .unwrap();
    drop(s);
    let e = TestServer::try_start_at(&data, &["--config", config.to_str().unwrap()])
        .err()
        .expect("refused");
    assert!(e.contains("volume[0].provisioning"), "{e}");
}
