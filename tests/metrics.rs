//! The Prometheus endpoint (`serve --metrics-listen`): a real Prometheus scraping a
//! replicating pair agrees with `ctl`, promtool accepts the output and the alert
//! rules, the Grafana dashboard queries only exported names, and a node with 1,000
//! volumes answers a scrape in under 50 ms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{free_port, qemu_io, repo_root, require_tool, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;

const SECRET: &str = "metrics-secret-1";

/// `GET path` over HTTP/1.0 (so neither side chunks the body); returns the status
/// code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("an HTTP answer in UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_string())
}

/// The endpoint's page, asserting it answered 200.
fn scrape(s: &TestServer) -> String {
    let addr = s.metrics_addr.expect("started with --metrics-listen");
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the one sample `name{labels}` (labels exactly as written) in `page`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus of this test's own: loopback, a free port, a temporary storage dir,
/// a 1 s scrape interval. Dropping it stops exactly this process.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: twinlun\n    static_configs:\n      \
                 - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        wait_until("prometheus ready", Duration::from_secs(60), || {
            match TcpStream::connect(p.addr) {
                Ok(_) => {}
                Err(e) => return Err(format!("{e}; log: {}", p.log())),
            }
            match http_get(p.addr, "/-/ready") {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {body}")),
            }
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query?query=Q`: the result array (vector or matrix).
    fn query(&self, q: &str) -> Vec<Value> {
        let (code, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(q)),
        );
        assert_eq!(code, 200, "query {q}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON from prometheus");
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The one value an instant query gives, if it gives exactly one.
    fn scalar(&self, q: &str) -> Result<f64, String> {
        let r = self.query(q);
        match r.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{one}")),
            other => Err(format!("{q}: {} series: {other:?}", other.len())),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary and a secondary, each with its metrics endpoint, naming each other.
fn pair() -> (TestServer, TestServer) {
    let primary_repl = format!("127.0.0.1:{}", free_port());
    let secondary_repl = format!("127.0.0.1:{}", free_port());
    let p = TestServer::launch()
        .args(&[
            "--replication-listen",
            &primary_repl,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();
    let s = TestServer::launch()
        .args(&[
            "--replication-listen",
            &secondary_repl,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();
    let to_s = s.repl_addr.expect("secondary replication address");
    p.ctl_ok(&[
        "peer",
        "create",
        "dr",
        &to_s.to_string(),
        "--secret",
        SECRET,
    ]);
    s.ctl_ok(&["peer", "create", "prod", &primary_repl, "--secret", SECRET]);
    (p, s)
}

/// `replicate` and wait until that cycle committed; returns `replication show`.
fn replicate(p: &TestServer, set: &str) -> Value {
    let before = p.ctl_json(&["replication", "show", set])["cycles"]
        .as_u64()
        .unwrap();
    p.ctl_ok(&["replicate", set]);
    wait_until("the cycle to commit", Duration::from_secs(120), || {
        let v = p.ctl_json(&["replication", "show", set]);
        assert!(v["error"].is_null(), "cycle failed: {v}");
        if v["cycles"].as_u64().unwrap() > before && v["status"] == "ready" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `promtool check metrics` on `page`; panics with what it said unless it accepts it.
fn promtool_check_metrics(page: &str) {
    require_tool("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "promtool check metrics refused the page ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scraping_a_pair_reads_the_lag_and_shipped_bytes_ctl_reports() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x41 0 4m", "write -P 0x42 16m 1m"]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    let pm_addr = p.metrics_addr.unwrap();
    let prom = Prometheus::start(&[pm_addr, s.metrics_addr.unwrap()]);

    let first = replicate(&p, "r");
    qemu_io(&url, &["write -P 0x43 8m 256k", "read -P 0x41 0 4k"]);
    let second = replicate(&p, "r");
    let cycle_sum = |key: &str| {
        first["last_cycle"][key].as_u64().unwrap() + second["last_cycle"][key].as_u64().unwrap()
    };
    let data = cycle_sum("data_bytes");
    let wire =
        cycle_sum("wire_data_bytes") + cycle_sum("record_bytes") + cycle_sum("overhead_bytes");
    assert!(data >= 5 << 20, "two cycles shipped {data} bytes: {second}");

    // The counters as Prometheus stored them reach exactly what ctl reports.
    let sel = format!("{{set=\"r\",instance=\"{pm_addr}\"}}");
    let want = [
        ("twinlun_replication_data_bytes_total", data as f64),
        ("twinlun_replication_wire_bytes_total", wire as f64),
        (
            "twinlun_replication_record_bytes_total",
            cycle_sum("record_bytes") as f64,
        ),
        ("twinlun_replication_cycles_total", 2.0),
        ("twinlun_replication_failed_cycles_total", 0.0),
    ];
    wait_until(
        "prometheus to scrape the committed cycles",
        Duration::from_secs(30),
        || {
            for (name, value) in want {
                let got = prom.scalar(&format!("{name}{sel}"))?;
                if got != value {
                    return Err(format!("{name} = {got}, ctl says {value}"));
                }
            }
            Ok(())
        },
    );
    let ready = prom
        .scalar(&format!(
            "twinlun_replication_status{{set=\"r\",state=\"ready\",instance=\"{pm_addr}\"}}"
        ))
        .unwrap();
    assert_eq!(ready, 1.0);
    let not_ready = prom
        .query(&format!(
            "twinlun_replication_status{{set=\"r\",instance=\"{pm_addr}\"}} == 0"
        ))
        .len();
    assert_eq!(not_ready, 8, "one gauge per state, 0 for all but ready");
    let writes = prom
        .scalar(&format!(
            "twinlun_volume_write_ops_total{{volume=\"v\",instance=\"{pm_addr}\"}}"
        ))
        .unwrap();
    assert!(writes >= 3.0, "the volume counted {writes} writes");

    // Lag: the last sample Prometheus scraped (its value and scrape time), carried
    // forward to when ctl answered, is ctl's lag (whole seconds, so within 1 s).
    let shown_cut = twinlun::time::parse_rfc3339_utc(second["last_cut_time"].as_str().unwrap())
        .expect("last_cut_time") as f64;
    let (lag, scraped_at) = wait_until(
        "a scrape of the lag of the second cut",
        Duration::from_secs(30),
        || {
            let m = prom.query(&format!("twinlun_replication_lag_seconds{sel}[5s]"));
            let [series] = m.as_slice() else {
                return Err(format!("{m:?}"));
            };
            let last = series["values"]
                .as_array()
                .and_then(|v| v.last())
                .ok_or_else(|| series.to_string())?;
            let ts = last[0].as_f64().unwrap();
            let lag: f64 = last[1].as_str().unwrap().parse().unwrap();
            // A sample taken before the second cut committed shows the first.
            if (ts - lag - shown_cut).abs() < 1.0 {
                Ok((lag, ts))
            } else {
                Err(format!("lag {lag} at {ts}"))
            }
        },
    );
    let before = unix_now();
    let shown = p.ctl_json(&["replication", "show", "r"]);
    let after = unix_now();
    let ctl_lag = shown["lag_secs"].as_u64().unwrap() as f64;
    assert!(
        after - scraped_at <= 3.0,
        "the sample is {}s old: not from the last scrapes",
        after - scraped_at
    );
    let carried = lag + (after - scraped_at);
    assert!(
        carried - ctl_lag > -0.1 && carried - ctl_lag < 1.1 + (after - before),
        "prometheus: lag {lag} at {scraped_at}, {carried} when ctl answered; ctl: {ctl_lag}"
    );
    let cut_time = prom
        .scalar(&format!(
            "twinlun_replication_last_cut_timestamp_seconds{sel}"
        ))
        .unwrap();
    assert_eq!(cut_time, shown_cut);

    // The secondary reports the set too, with its recovery points.
    let sm_addr = s.metrics_addr.unwrap();
    let points = s.ctl_json(&["recovery-points", "r"]);
    let n_points = points
        .as_array()
        .or_else(|| points["points"].as_array())
        .map(|a| a.len())
        .unwrap_or_else(|| panic!("recovery points: {points}"));
    wait_until(
        "the secondary's recovery points in prometheus",
        Duration::from_secs(30),
        || {
            let got = prom.scalar(&format!(
                "twinlun_replication_recovery_points{{set=\"r\",instance=\"{sm_addr}\"}}"
            ))?;
            if got == n_points as f64 {
                Ok(())
            } else {
                Err(format!("{got}, ctl lists {n_points}"))
            }
        },
    );

    // promtool accepts both endpoints' pages, with every family populated.
    promtool_check_metrics(&scrape(&p));
    promtool_check_metrics(&scrape(&s));
    drop(prom);
}

#[test]
fn promtool_accepts_the_alert_rules() {
    require_tool("promtool");
    let rules = repo_root().join("contrib/prometheus/alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
    // Every metric the rules use is exported.
    let yml = std::fs::read_to_string(&rules).unwrap();
    let s = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let exported = exported_names(&scrape(&s));
    for name in metric_names(&yml) {
        assert!(
            exported.contains(&name),
            "alerts.yml uses {name}, not exported"
        );
    }
}

/// Every sample name the page can hold: its families, and a histogram's series.
fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in page.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The `twinlun_...` identifiers in a PromQL text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("twinlun_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_the_endpoint_serves_only_metrics() {
    let path = repo_root().join("contrib/grafana/twinlun.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let used: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "twinlun_replication_lag_seconds",
        "twinlun_volume_read_ops_total",
        "twinlun_volume_write_ops_total",
        "twinlun_volume_write_latency_seconds_bucket",
        "twinlun_replication_data_bytes_total",
        "twinlun_replication_failed_cycles_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }

    let s = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let page = scrape(&s);
    let exported = exported_names(&page);
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unexported names: {missing:?}"
    );
    for family in &exported {
        assert!(
            page.contains(&format!("# HELP {}", family.trim_end_matches("_bucket")))
                || family.ends_with("_sum")
                || family.ends_with("_count"),
            "{family} has no HELP"
        );
    }
    assert_eq!(
        sample(
            &page,
            &format!(
                "twinlun_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&page, "twinlun_volume_dirty_pages{volume=\"demo\"}"),
        Some(0.0)
    );
    promtool_check_metrics(&page);

    let addr = s.metrics_addr.unwrap();
    assert_eq!(http_get(addr, "/").0, 404);
    assert_eq!(http_get(addr, "/metrics/x").0, 404);
    // A request head past the bound is refused, not buffered.
    let mut c = TcpStream::connect(addr).unwrap();
    let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let _ = c.write_all(long.as_bytes());
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Still serving.
    assert!(scrape(&s).contains("twinlun_build_info"));
}

#[test]
fn the_config_key_serves_metrics_and_a_bad_value_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nmetrics_listen = \"127.0.0.1:0\"\n").unwrap();
    let s = TestServer::launch()
        .args(&["--config", good.to_str().unwrap()])
        .start();
    assert!(scrape(&s).contains("# TYPE twinlun_volume_read_ops_total counter"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nmetrics_listen = \"localhost-ish\"\n").unwrap();
    let data = dir.path().join("bad-data");
    let err = TestServer::launch()
        .data_dir(&data)
        .args(&["--config", bad.to_str().unwrap()])
        .try_start()
        .err()
        .expect("a bad metrics_listen is refused");
    assert!(err.contains("metrics_listen"), "{err}");
}

/// A config declaring `n` small volumes.
fn many_volumes(dir: &Path, n: usize) -> PathBuf {
    let mut toml = String::from("[server]\nmetrics_listen = \"127.0.0.1:0\"\n");
    for i in 0..n {
        toml.push_str(&format!("[[volume]]\nname = \"v{i:04}\"\nsize = \"1M\"\n"));
    }
    let path = dir.join("many.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn a_node_with_1000_volumes_answers_a_scrape_in_under_50_ms() {
    let dir = tempfile::tempdir().unwrap();
    let config = many_volumes(dir.path(), 1000);
    let s = TestServer::launch()
        .args(&["--config", config.to_str().unwrap()])
        .start();
    let addr = s.metrics_addr.unwrap();
    let first = scrape(&s);
    let volumes: BTreeMap<&str, ()> = first
        .lines()
        .filter_map(|l| l.strip_prefix("twinlun_volume_write_ops_total{volume=\""))
        .map(|l| (l.split('"').next().unwrap(), ()))
        .collect();
    assert_eq!(volumes.len(), 1000, "every declared volume");

    let mut times: Vec<Duration> = (0..25)
        .map(|_| {
            let t = Instant::now();
            let (code, body) = http_get(addr, "/metrics");
            let took = t.elapsed();
            assert_eq!(code, 200);
            assert!(body.len() > 1_000_000, "a page of {} bytes", body.len());
            took
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "scrape of {} bytes, 1,000 volumes: min {:?}, median {median:?}, max {:?}",
        first.len(),
        times[0],
        times[times.len() - 1]
    );
    assert!(
        median < Duration::from_millis(50),
        "median scrape {median:?} (all: {times:?})"
    );
}

#[test]
fn io_sessions_connections_and_refused_logins_are_counted() {
    use common::raw::RawClient;
    use twinlun::iscsi::pdu::{Digests, LoginResponse};

    let s = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let wait_for = |what: &str, series: &[(&str, f64)]| {
        wait_until(what, Duration::from_secs(20), || {
            let page = scrape(&s);
            for (name, want) in series {
                let got = sample(&page, name);
                if got != Some(*want) {
                    return Err(format!("{name} = {got:?}, want {want}"));
                }
            }
            Ok(())
        })
    };
    let sessions = format!("twinlun_sessions{{target=\"{DEMO_IQN}\"}}");
    wait_for(
        "no sessions yet",
        &[(&sessions, 0.0), ("twinlun_connections", 0.0)],
    );

    let mut c = RawClient::connect(s.addr);
    c.login("iqn.2026-11.test:metrics", DEMO_IQN, Digests::default());
    c.write10(0, 8, &[0x5a; 4096], 512);
    assert_eq!(c.read10(0, 8, 8, 512), vec![0x5a; 4096]);
    wait_for(
        "one session, its I/O counted",
        &[
            (&sessions, 1.0),
            ("twinlun_connections", 1.0),
            ("twinlun_volume_write_ops_total{volume=\"demo\"}", 1.0),
            ("twinlun_volume_write_bytes_total{volume=\"demo\"}", 4096.0),
            ("twinlun_volume_read_ops_total{volume=\"demo\"}", 1.0),
            ("twinlun_volume_read_bytes_total{volume=\"demo\"}", 4096.0),
            (
                "twinlun_volume_write_latency_seconds_count{volume=\"demo\"}",
                1.0,
            ),
            (
                "twinlun_volume_read_latency_seconds_bucket{volume=\"demo\",le=\"+Inf\"}",
                1.0,
            ),
            ("twinlun_volume_dirty_pages{volume=\"demo\"}", 1.0),
        ],
    );

    // A login naming no such target is refused (0x0203) and counted by reason.
    let mut bad = RawClient::connect(s.addr);
    let p = bad.login_pdu(
        0,
        1,
        true,
        "InitiatorName=iqn.2026-11.test:metrics\0TargetName=iqn.2026-11.test:nope\0\
         SessionType=Normal\0AuthMethod=None\0",
    );
    bad.send(&p);
    let r = LoginResponse::from_pdu(&bad.recv().expect("login response")).unwrap();
    assert_eq!((r.status_class, r.status_detail), (2, 3));
    wait_for(
        "the refusal counted",
        &[(
            "twinlun_login_refused_total{reason=\"target-not-found\"}",
            1.0,
        )],
    );

    drop(c);
    drop(bad);
    wait_for(
        "the connections gone",
        &[(&sessions, 0.0), ("twinlun_connections", 0.0)],
    );
}
