//! libiscsi's conformance suite (`iscsi-test-cu --dataloss`) against the real server:
//! every suite listed must end with zero failed tests. CUnit counts a skipped test as
//! passed, so skips are counted from the `[SKIPPED]` lines and reported separately.

mod common;

use common::{run, TestServer, DEMO_IQN};

const SUITES: &[&str] = &[
    "ALL.Inquiry",
    "ALL.Mandatory",
    "ALL.ModeSense6",
    "ALL.NoMedia",
    "ALL.ReadCapacity10",
    "ALL.ReadCapacity16",
    "ALL.Read6",
    "ALL.Read10",
    "ALL.Read12",
    "ALL.Read16",
    "ALL.Write10",
    "ALL.Write12",
    "ALL.Write16",
    "ALL.TestUnitReady",
    "ALL.Verify10",
    "ALL.Verify12",
    "ALL.Verify16",
    "ALL.iSCSIcmdsn",
    "ALL.iSCSIdatasn",
    "ALL.iSCSIResiduals",
    "ALL.iSCSITMF",
];

struct SuiteResult {
    ran: u32,
    failed: u32,
    skipped: u32,
}

/// Parse CUnit's "Run Summary" `tests` row: Total Ran Passed Failed Inactive.
fn parse(out: &str) -> Option<SuiteResult> {
    let row = out.lines().find(|l| l.trim_start().starts_with("tests"))?;
    let nums: Vec<u32> = row
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let skipped = out.lines().filter(|l| l.contains("[SKIPPED]")).count() as u32;
    Some(SuiteResult {
        ran: *nums.get(1)?,
        failed: *nums.get(3)?,
        skipped,
    })
}

#[test]
fn iscsi_test_cu_suites_have_no_failures() {
    let s = TestServer::start();
    // A dedicated LUN so the destructive tests touch nothing else.
    s.ctl_ok(&["volume", "create", "cu", "--size", "256M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "cu"]);
    let url = s.url(DEMO_IQN, 1);
    let mut failures = Vec::new();
    let mut total = (0, 0, 0);
    for suite in SUITES {
        let out = run("iscsi-test-cu", &["--dataloss", "-n", "-t", suite, &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        match parse(&text) {
            Some(r) => {
                eprintln!(
                    "{suite}: ran {} failed {} skipped {}",
                    r.ran, r.failed, r.skipped
                );
                total.0 += r.ran;
                total.1 += r.failed;
                total.2 += r.skipped;
                if r.failed > 0 || r.ran == 0 {
                    failures.push(format!("{suite}: {} failed of {}\n{text}", r.failed, r.ran));
                }
            }
            None => failures.push(format!("{suite}: no CUnit summary\n{text}")),
        }
    }
    eprintln!(
        "iscsi-test-cu total: ran {} failed {} skipped {}",
        total.0, total.1, total.2
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
