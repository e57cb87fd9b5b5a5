//! Prometheus metrics (`--metricsListen`), scraped while a workload runs: every scrape passes
//! `promtool check metrics` (Debian's prometheus package), and once the volume is quiet each
//! counter of the stats file has the same value in the scrape. Over a bucket (Garage on
//! 127.0.0.1, TCP endpoint) and over a `--test` directory (Unix-socket endpoint). The block
//! cache's write-back gauges (dirty blocks, uploads in flight, upload backlog) are checked
//! against a cache held in known states: blocks kept dirty, then uploads held up by a server
//! that stalls, then all uploaded.

mod common;
use common::*;
use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
use s3b_testkit::garage::{BUCKET, Garage};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One scrape over TCP (`addr` = HOST:PORT) or a Unix socket (a path).
fn scrape(addr: &str) -> String {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "30"]);
    if addr.contains('/') {
        c.args(["--unix-socket", addr, "http://localhost/metrics"]);
    } else {
        c.arg(format!("http://{addr}/metrics"));
    }
    checked_output(&mut c, "curl /metrics")
}

/// `promtool check metrics` on a scrape: the format is valid (lint findings fail too).
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (apt package prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample line starting with `name` (name and labels exactly as written).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A free port on 127.0.0.1 (the kernel picks it; released for the daemon to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes and reads `rounds` MiB with fsync while scraping after each round; checks each scrape.
fn workload_with_scrapes(file: &Path, addr: &str, rounds: u64) {
    for i in 0..rounds {
        write_synced(file, i << 20, &random_bytes(i, 1 << 20));
        promtool(&scrape(addr));
    }
    drop_caches();
    let back = std::fs::read(file).unwrap();
    assert_eq!(&back[..1 << 20], &random_bytes(0, 1 << 20)[..]);
}

/// Once nothing changes (two stats reads around a scrape agree), every count line of the
/// stats file (`at_least` of them) equals its counter in the scrape; returns that scrape.
fn agrees_with_stats(m: &Mount, addr: &str, at_least: usize) -> String {
    for _ in 0..50 {
        let before = m.stats();
        let text = scrape(addr);
        if m.stats() != before {
            continue;
        }
        promtool(&text);
        let mut compared = 0;
        for line in before.lines() {
            let mut w = line.split_whitespace();
            let (Some(name), Some(value), None) = (w.next(), w.next(), w.next()) else { continue };
            let Ok(v) = value.parse::<u64>() else { continue };
            let got = sample(&text, &format!("s3backer_{name}_total"));
            assert_eq!(got, Some(v as f64), "{name}: stats file {v}, scrape {got:?}\n{text}");
            compared += 1;
        }
        assert!(compared >= at_least, "only {compared} counters compared:\n{before}");
        return text;
    }
    panic!("the stats never held still for a scrape");
}

#[test]
fn metrics_over_s3_pass_promtool_and_agree_with_the_stats_file() {
    let g = Garage::start();
    let s = Scratch::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut a = g.s3backer_flags();
    a.extend(strings(&["--size=16m", "--blockSize=64k", &format!("--metricsListen={addr}"), BUCKET]));
    let m = Mount::start_owned(a, &s.mnt());
    workload_with_scrapes(&m.file(), &addr, 4);
    let text = agrees_with_stats(&m, &addr, 30);
    // The histograms saw the workload.
    let puts = sample(&text, r#"s3backer_s3_request_duration_seconds_count{method="PUT",outcome="ok"}"#);
    assert!(puts.is_some_and(|n| n >= 64.0), "PUT attempts: {puts:?}\n{text}");
    let up = sample(&text, r#"s3backer_s3_transferred_bytes_total{direction="up"}"#).unwrap_or(0.0);
    assert!(up >= (4 << 20) as f64, "bytes up: {up}");
    let writes = sample(&text, r#"s3backer_request_duration_seconds_count{frontend="fuse",op="write",outcome="ok"}"#);
    assert!(writes.is_some_and(|n| n > 0.0), "{text}");
    eprintln!(
        "scrape excerpt:\n{}",
        text.lines().filter(|l| l.contains("http_puts") || l.contains("PUT")).take(24).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(m.unmount(), 0);
}

#[test]
fn metrics_on_a_unix_socket_over_a_test_directory() {
    let s = Scratch::new();
    let sock = s.path("metrics.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let m = Mount::test_dir(&s, &["--size=8m", "--blockSize=64k", &format!("--metricsListen={sock_s}")]);
    workload_with_scrapes(&m.file(), &sock_s, 3);
    let text = agrees_with_stats(&m, &sock_s, 9);
    let written = sample(&text, "s3backer_block_cache_write_misses_total").unwrap_or(0.0)
        + sample(&text, "s3backer_block_cache_write_hits_total").unwrap_or(0.0);
    assert!(written >= 48.0, "{text}");
    assert!(sample(&text, "s3backer_block_cache_dirty_blocks").is_some(), "{text}");
    // Only /metrics is served.
    let other = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", &sock_s, "http://localhost/"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout), "404");
    assert_eq!(m.unmount(), 0);
}

/// The write-back gauges of a scrape: (dirty blocks, uploads in flight, upload backlog).
fn write_back(text: &str) -> (f64, f64, f64) {
    let g = |name: &str| sample(text, name).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    (
        g("s3backer_block_cache_dirty_blocks"),
        g("s3backer_block_cache_uploads_in_flight"),
        g("s3backer_block_cache_upload_backlog_blocks"),
    )
}

/// Write-back threads of [`write_back_gauges_follow_the_cache`]'s mount.
const THREADS: f64 = 2.0;

/// Blocks written and held dirty (a long write delay; the writer keeps the file open, since a
/// close flushes) are all dirty and all in the backlog, no upload in flight, as the stats
/// file's dirty ratio says. An fsync while the server stalls every request starts uploads
/// that cannot finish: they show in flight (at most the write-back threads) and leave the
/// backlog. Once the server answers again the fsync returns and all three gauges are 0.
#[test]
fn write_back_gauges_follow_the_cache() {
    let g = Garage::start();
    let stall = FaultConfig { stall_percent: 100, stall: Duration::from_secs(2), ..FaultConfig::default() };
    let proxy = FaultProxy::start(g.port, stall);
    proxy.set_faults(false);
    let s = Scratch::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--size=4m",
        "--blockSize=64k",
        "--blockCacheSize=64",
        "--blockCacheThreads=2",
        "--blockCacheWriteDelay=600000",
        "--timeout=10",
        &format!("--metricsListen={addr}"),
    ];
    let m = Mount::start_owned(garage_args_at(&proxy.base_url(), &flags), &s.mnt());
    const DIRTY: u32 = 8;
    let dirty_blocks = f64::from(DIRTY);
    let data = random_bytes(7, usize::try_from(DIRTY).unwrap() << 16);
    let writer = write_and_hold(&m.file(), 0, &data);
    let text = scrape(&addr);
    promtool(&text);
    assert_eq!(write_back(&text), (dirty_blocks, 0.0, dirty_blocks), "{text}");
    assert_eq!(stat_float(&m.stats(), "block_cache_dirty_ratio"), dirty_blocks / 64.0);
    assert!(sample(&text, "s3backer_block_cache_current_size_blocks").is_some_and(|n| n >= dirty_blocks), "{text}");

    proxy.set_faults(true);
    // From a child process: a descriptor of the test process's own would be inherited by every
    // curl it forks meanwhile and closed at exec, a flush that waits for the stalled uploads.
    let script = "import os, sys\nos.fsync(os.open(sys.argv[1], os.O_WRONLY))";
    let mut fsync = Command::new("/usr/bin/python3").args(["-c", script]).arg(m.file()).spawn().unwrap();
    let mut seen = (0.0, 0.0, 0.0);
    wait_for(60, "uploads in flight in a scrape", || {
        seen = write_back(&scrape(&addr));
        seen.1 > 0.0
    });
    let (dirty, in_flight, backlog) = seen;
    assert!(in_flight <= THREADS && dirty == dirty_blocks && backlog == dirty - in_flight, "{seen:?}");

    proxy.set_faults(false);
    let synced = fsync.wait().unwrap();
    assert!(synced.success(), "the fsync once the server answers again failed:\n{}", m.stderr());
    let text = scrape(&addr);
    assert_eq!(write_back(&text), (0.0, 0.0, 0.0), "{text}");
    assert_eq!(stat_float(&m.stats(), "block_cache_dirty_ratio"), 0.0);
    drop(writer);
    assert_eq!(m.unmount(), 0);
    assert!(proxy.counts().stalls > 0);
}
