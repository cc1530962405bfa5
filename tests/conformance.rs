//! libiscsi's conformance suite (`iscsi-test-cu --dataloss`) against the real server:
//! every suite listed must end with zero failed tests. CUnit counts a skipped test as
//! passed, so skips are counted from the `[SKIPPED]` lines and reported separately.

mod common;

use common::{run, TestServer, DEMO_IQN};

/// The LUN a suite runs against: `Small` has 512-byte blocks (8 per 4 KiB physical
/// block: the unaligned-unmap tests need more than one), `FourK` 4096-byte blocks
/// (libiscsi's GetLBAStatus.UnmapSingle expects a descriptor to start one physical
/// block after the LBA it asked about, which only holds with one logical block per
/// physical block).
#[derive(Clone, Copy, PartialEq)]
enum Lun {
    Default,
    FourK,
}

/// Suites that must also end with no skipped test.
const THIN_SUITES: &[(&str, Lun)] = &[
    ("ALL.Unmap", Lun::Default),
    ("ALL.WriteSame10", Lun::Default),
    ("ALL.WriteSame16", Lun::Default),
    ("ALL.GetLBAStatus", Lun::FourK),
    ("ALL.ReadCapacity16", Lun::Default),
    ("ALL.Inquiry", Lun::Default),
];

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
    /// Tests with a `[SKIPPED]` line of their own (not the suite's PERSISTENT RESERVE
    /// probe, which prints between tests), by name.
    skipped_tests: Vec<String>,
}

/// The probe libiscsi runs around every suite; its line lands after whichever test
/// printed last, so it is no test's skip.
const SUITE_PROBE: &str = "PERSISTENT RESERVE IN is not implemented";

fn skipped_tests(out: &str) -> Vec<String> {
    out.split("Test: ")
        .skip(1)
        .filter(|chunk| {
            chunk
                .split("[SKIPPED]")
                .skip(1)
                .any(|after| !after.trim_start().starts_with(SUITE_PROBE))
        })
        .map(|chunk| chunk.split_whitespace().next().unwrap_or("?").to_string())
        .collect()
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
        skipped_tests: skipped_tests(out),
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

#[test]
fn thin_provisioning_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "thin", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "thin"]);
    s.ctl_ok(&[
        "volume",
        "create",
        "thin4k",
        "--size",
        "64M",
        "--block-size",
        "4096",
    ]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "2", "thin4k"]);
    let mut problems = Vec::new();
    for (suite, lun) in THIN_SUITES {
        let url = s.url(DEMO_IQN, if *lun == Lun::FourK { 2 } else { 1 });
        let out = run("iscsi-test-cu", &["--dataloss", "-n", "-t", suite, &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let Some(r) = parse(&text) else {
            problems.push(format!("{suite}: no CUnit summary\n{text}"));
            continue;
        };
        eprintln!(
            "{suite}: ran {} failed {} skipped tests {:?}",
            r.ran, r.failed, r.skipped_tests
        );
        if r.failed > 0 || r.ran == 0 || !r.skipped_tests.is_empty() {
            problems.push(format!(
                "{suite}: {} failed, skipped {:?} of {}\n{text}",
                r.failed, r.skipped_tests, r.ran
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn skipped_tests_are_counted_per_test_without_the_suite_probe() {
    let out = "    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n  Test: ZeroBlocks ...    [SKIPPED] no 0-blocks.\n    [SKIPPED] again\npassed\n  Test: Simple ...passed    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n";
    assert_eq!(skipped_tests(out), vec!["ZeroBlocks".to_string()]);
}

/// Runs one suite with `--dataloss` and `extra` options against `urls` (the first is the
/// LUN under test; more are further paths to it) and says what went wrong: a failed
/// test, a test that skipped, no test run. CUnit's verbose mode (the default, not `-n`)
/// prints the `Test:` line each skip is counted under; every test must have printed
/// one, or a skip could hide outside it.
fn suite_problem(suite: &str, urls: &[String], extra: &[&str]) -> Option<String> {
    let mut args = vec!["--dataloss"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-t", suite]);
    args.extend(urls.iter().map(String::as_str));
    let out = run("iscsi-test-cu", &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let Some(r) = parse(&text) else {
        return Some(format!("{suite}: no CUnit summary\n{text}"));
    };
    eprintln!(
        "{suite}: ran {} failed {} skipped tests {:?}",
        r.ran, r.failed, r.skipped_tests
    );
    let named = text.matches("Test: ").count() as u32;
    (r.failed > 0 || r.ran == 0 || !r.skipped_tests.is_empty() || named != r.ran).then(|| {
        format!(
            "{suite}: {} failed, skipped {:?} of {} ({named} named)\n{text}",
            r.failed, r.skipped_tests, r.ran
        )
    })
}

/// [`suite_problem`] of each suite through `urls`.
fn suites_without_failures_or_skips(suites: &[&str], urls: &[String]) -> Vec<String> {
    suites
        .iter()
        .filter_map(|suite| suite_problem(suite, urls, &[]))
        .collect()
}

/// [`suite_problem`] of each suite against its LUN of `s`, with `extra` options.
fn suites_without_skips(s: &TestServer, suites: &[(&str, u64)], extra: &[&str]) -> Vec<String> {
    suites
        .iter()
        .filter_map(|(suite, lun)| suite_problem(suite, &[s.url(DEMO_IQN, *lun)], extra))
        .collect()
}

/// Persistent reservations (every PERSISTENT RESERVE IN and OUT suite, two initiators
/// for the access and ownership tests) and RESERVE/RELEASE(6) with logout, nexus loss and
/// LUN, warm and cold target resets.
#[test]
fn reservation_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "pr", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "pr"]);
    let suites = [
        "SCSI.PrinReadKeys",
        "SCSI.PrinServiceactionRange",
        "SCSI.PrinReportCapabilities",
        "SCSI.ProutRegister",
        "SCSI.ProutReserve",
        "SCSI.ProutClear",
        "SCSI.ProutPreempt",
        "SCSI.Reserve6",
    ];
    let problems = suites_without_failures_or_skips(&suites, &[s.url(DEMO_IQN, 1)]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Task management as SAM says (iSCSITMF), REPORT SUPPORTED OPERATION CODES (one command,
/// timeouts descriptors), READ DEFECT DATA(10) and (12).
#[test]
fn reset_and_report_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "spc", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "spc"]);
    let suites = [
        "iSCSI.iSCSITMF",
        "SCSI.ReportSupportedOpcodes",
        "SCSI.ReadDefectData10",
        "SCSI.ReadDefectData12",
    ];
    let problems = suites_without_failures_or_skips(&suites, &[s.url(DEMO_IQN, 1)]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A removable LUN, made with `ctl lun map --removable`: START STOP UNIT ejects and loads
/// its medium, PREVENT ALLOW MEDIUM REMOVAL locks it in per I_T nexus (released by
/// logout, nexus loss, LUN and target resets), and with the medium ejected every medium
/// command answers NOT READY, MEDIUM NOT PRESENT (NoMedia also sends PRE-FETCH, COMPARE
/// AND WRITE and ORWRITE: it skips, and this fails, where those are not implemented).
#[test]
fn removable_medium_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "removable", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "removable", "--removable"]);
    let suites = ["SCSI.StartStopUnit", "SCSI.PreventAllow", "SCSI.NoMedia"];
    let problems = suites_without_failures_or_skips(&suites, &[s.url(DEMO_IQN, 1)]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn extended_copy_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "xcopy", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "xcopy"]);
    let url = s.url(DEMO_IQN, 1);
    let problems =
        suites_without_failures_or_skips(&["SCSI.ExtendedCopy", "SCSI.ReceiveCopyResults"], &[url]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The MultipathIO suite through two portals of one target (two paths to one LU, each
/// portal its own target port group). Its COMPARE AND WRITE tests need COMPARE AND
/// WRITE, atomic across sessions.
#[test]
fn multipath_suite_passes_through_two_portals_without_skips() {
    let s = TestServer::start_with(&["--listen", "127.0.0.1:0"]);
    assert_eq!(s.addrs.len(), 2, "two portals: {:?}", s.addrs);
    s.ctl_ok(&["volume", "create", "mpio", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "mpio"]);
    let urls: Vec<String> = s
        .addrs
        .iter()
        .map(|a| format!("iscsi://{a}/{DEMO_IQN}/1"))
        .collect();
    let problems = suites_without_failures_or_skips(&["SCSI.MultipathIO"], &urls);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// COMPARE AND WRITE, on a thin 512-byte LUN (InvalidDataOutSize needs thin
/// provisioning and more than one logical block per physical block).
#[test]
fn compare_and_write_suite_passes_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "caw", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "caw"]);
    let problems = suites_without_skips(&s, &[("SCSI.CompareAndWrite", 1)], &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// ORWRITE, WRITE ATOMIC(16) (its Block Limits fields: alignment and granularity of one
/// 4 KiB physical block, so the suite's misalignment checks run rather than skip) and
/// PRE-FETCH(10/16), on a thin 512-byte LUN.
#[test]
fn orwrite_write_atomic_and_prefetch_suites_pass_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "rmw", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "rmw"]);
    let suites = [
        ("SCSI.OrWrite", 1),
        ("SCSI.WriteAtomic16", 1),
        ("SCSI.Prefetch10", 1),
        ("SCSI.Prefetch16", 1),
    ];
    let problems = suites_without_skips(&s, &suites, &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A LUN mapped read-only (`lun map --read-only`): the suite finds WP set in MODE SENSE
/// and every command that changes blocks (COMPARE AND WRITE, ORWRITE, UNMAP, WRITE,
/// WRITE SAME with and without UNMAP, WRITE AND VERIFY) ends in DATA PROTECT, WRITE
/// PROTECTED.
#[test]
fn read_only_lun_suite_passes_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "ro", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "ro", "--read-only"]);
    let problems = suites_without_skips(&s, &[("SCSI.ReadOnly", 1)], &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A thick volume (`volume create --provisioning thick`) answers as a fully provisioned
/// LU: the provisioning suites pass, and the only tests they skip are the ones libiscsi
/// keeps for thin LUs ("Logical unit is fully provisioned", and Unmap's probe finding
/// UNMAP refused, which is what a fully provisioned LU does).
#[test]
fn thick_lun_passes_the_provisioning_suites_as_fully_provisioned() {
    let s = TestServer::start();
    s.ctl_ok(&[
        "volume",
        "create",
        "fat",
        "--size",
        "64M",
        "--provisioning",
        "thick",
    ]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "fat"]);
    let url = s.url(DEMO_IQN, 1);
    let mut problems = Vec::new();
    for suite in [
        "SCSI.ReadCapacity16",
        "SCSI.Unmap",
        "SCSI.WriteSame10",
        "SCSI.WriteSame16",
        "SCSI.GetLBAStatus",
        "SCSI.Inquiry",
        "SCSI.CompareAndWrite",
    ] {
        let out = run("iscsi-test-cu", &["--dataloss", "-n", "-t", suite, &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let Some(r) = parse(&text) else {
            problems.push(format!("{suite}: no CUnit summary\n{text}"));
            continue;
        };
        let other_skips: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("[SKIPPED]").nth(1))
            .map(str::trim)
            .filter(|why| {
                !why.starts_with(SUITE_PROBE)
                    && !why.starts_with("Logical unit is fully provisioned")
                    && !why.starts_with("UNMAP is not implemented")
            })
            .collect();
        eprintln!(
            "{suite}: ran {} failed {} skipped tests {:?}",
            r.ran, r.failed, r.skipped_tests
        );
        if r.failed > 0 || r.ran == 0 || !other_skips.is_empty() {
            problems.push(format!(
                "{suite}: {} failed of {}, other skips {other_skips:?}\n{text}",
                r.failed, r.ran
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// SANITIZE (`--allow-sanitize`) on a volume created with `--allow-sanitize`: every
/// test of the suite but Readonly, Reservations and Reset, on a 512-byte thin LUN.
/// Readonly sets software write protect from a second session, which only reaches
/// the first once mode pages are shared between sessions; Reservations needs
/// RESERVE(6); Reset (run on a server whose OVERWRITE is paced by the
/// `TWINLUN_TEST_SANITIZE_BYTES_PER_SEC` hook) sees the sanitize survive its aborts,
/// resets and reconnection, then never gets out of its TEST UNIT READY poll.
#[test]
fn sanitize_suite_passes_without_skips() {
    let s = TestServer::start();
    s.ctl_ok(&[
        "volume",
        "create",
        "wipe",
        "--size",
        "64M",
        "--allow-sanitize",
    ]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "wipe"]);
    // A volume without the option does not offer the command at all.
    s.ctl_ok(&["volume", "create", "keep", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "2", "keep"]);
    let tests: Vec<(String, u64)> = [
        "BlockErase",
        "BlockEraseReserved",
        "CryptoErase",
        "CryptoEraseReserved",
        "ExitFailureMode",
        "InvalidServiceAction",
        "Overwrite",
        "OverwriteReserved",
    ]
    .iter()
    .map(|t| (format!("SCSI.Sanitize.{t}"), 1))
    .collect();
    let tests: Vec<(&str, u64)> = tests.iter().map(|(t, l)| (t.as_str(), *l)).collect();
    let problems = suites_without_skips(&s, &tests, &["--allow-sanitize"]);
    // On LUN 2 every test finds SANITIZE missing from REPORT SUPPORTED OPERATION CODES
    // and skips, or gets INVALID COMMAND OPERATION CODE where it expects a field error.
    let out = run(
        "iscsi-test-cu",
        &[
            "--dataloss",
            "--allow-sanitize",
            "-t",
            "SCSI.Sanitize.Overwrite",
            &s.url(DEMO_IQN, 2),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SANITIZE OVERWRITE is not implemented"),
        "{text}"
    );

    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
