//! A hostile server cannot make the daemon use unbounded memory or time. Garage sits behind
//! s3b-testkit's hostile proxy; reads of the mounted volume meet, two answers at a time, a body
//! announced as 1 GiB, a body that never ends, a header flood, and a body trickled past
//! `--timeout`; `--erase` meets a LIST document that never ends. Each is an error that is logged
//! and retried, the data read is right, and the daemon's peak RSS stays where it was.

mod common;
use common::*;
use s3b_testkit::garage::{BUCKET, Garage};
use s3b_testkit::hostile::{HostileProxy, Misbehaviour, Target};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::{Command, Stdio};
use std::time::Instant;

const BLOCK: usize = 64 << 10;

fn flags(g: &Garage, proxy: &HostileProxy) -> Vec<String> {
    let mut a = g.s3backer_flags();
    a[0] = format!("--baseURL={}", proxy.base_url());
    a.extend(
        [
            "--size=16m",
            "--blockSize=64k",
            "--blockCacheSize=0",
            "--timeout=2",
            "--initialRetryPause=50",
            "--maxRetryPause=3000",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.push(BUCKET.into());
    a
}

/// Peak resident set of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmHWM:")
}

/// Reads one block with O_DIRECT (past the page cache, so the daemon is asked).
fn read_block(file: &std::path::Path, n: usize) -> Vec<u8> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(file).unwrap();
    let layout = std::alloc::Layout::from_size_align(BLOCK, 4096).unwrap();
    // An aligned buffer, as O_DIRECT wants.
    let mut v = vec![0u8; BLOCK + 4096];
    let off = v.as_ptr().align_offset(layout.align());
    let buf = &mut v[off..off + BLOCK];
    f.read_exact_at(buf, (n * BLOCK) as u64).unwrap();
    buf.to_vec()
}

#[test]
fn hostile_answers_are_bounded_errors_that_are_retried() {
    let g = Garage::start();
    let proxy = HostileProxy::start(g.port);
    let s = Scratch::new();
    let a = flags(&g, &proxy);
    let m = Mount::start(&a.iter().map(String::as_str).collect::<Vec<_>>(), &s.mnt());
    let pid = m.child.as_ref().unwrap().id();

    // 16 blocks of data, in S3 once fsync returns.
    let data = pattern(16 * BLOCK, 7);
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // A first pass of reads: the memory a normal read costs.
    for n in 0..16 {
        assert!(read_block(&m.file(), n) == data[n * BLOCK..(n + 1) * BLOCK]);
    }
    let rss_before = peak_rss_kib(pid);
    let retries_before = stat_value(&m.stats(), "http_num_retries");

    let cases = [
        (Misbehaviour::Oversize, "more than the"),
        (Misbehaviour::Endless, "more than the"),
        (Misbehaviour::HeaderFlood, "retrying"),
        (Misbehaviour::SlowLoris, "no complete answer within 2000 ms"),
    ];
    for (i, (mis, logged)) in cases.into_iter().enumerate() {
        let hostile_before = proxy.counts().hostile;
        proxy.arm(mis, Target::ObjectGet, 2);
        let started = Instant::now();
        let n = 3 + i;
        let got = read_block(&m.file(), n);
        let took = started.elapsed();
        assert!(got == data[n * BLOCK..(n + 1) * BLOCK], "{mis:?}: wrong data after the retries");
        assert_eq!(proxy.counts().hostile - hostile_before, 2, "{mis:?}: both hostile answers were met");
        assert_eq!(proxy.pending(), 0);
        let log = m.stderr();
        assert!(log.contains(logged), "{mis:?}: nothing logged about it:\n{log}");
        eprintln!("{mis:?}: read back after 2 hostile answers in {} ms", took.as_millis());
    }
    let stats = m.stats();
    let retries = stat_value(&stats, "http_num_retries") - retries_before;
    assert!(retries >= 8, "every hostile answer retried: {retries}\n{stats}");
    assert!(stat_value(&stats, "curl_timeouts") >= 2, "{stats}");
    let rss_after = peak_rss_kib(pid);
    let c = proxy.counts();
    eprintln!(
        "hostile answers {}, hostile bytes sent {} MiB, retries {retries}, peak RSS {} -> {} KiB",
        c.hostile,
        c.hostile_bytes >> 20,
        rss_before,
        rss_after
    );
    assert!(rss_after < rss_before + 16 * 1024, "peak RSS grew from {rss_before} to {rss_after} KiB");
    assert_eq!(m.unmount(), 0);

    // A LIST page without end (--erase lists the volume): retried, then the erase completes.
    proxy.arm(Misbehaviour::EndlessListing, Target::List, 1);
    let mut e = g.s3backer_flags();
    e[0] = format!("--baseURL={}", proxy.base_url());
    e.extend(["--erase", "--force", "--timeout=2", "--initialRetryPause=50", BUCKET].iter().map(|s| s.to_string()));
    let out = Command::new(bin()).args(&e).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying"), "the endless listing was not retried:\n{err}");
    assert_eq!(proxy.pending(), 0);
    assert!(g.list_keys(BUCKET).is_empty(), "{:?}", g.list_keys(BUCKET));
}
