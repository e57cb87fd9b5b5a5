//! Chaos end to end: fio with data verification on ext4 on our file, over the real S3 server
//! behind a proxy that breaks 10% of requests (503s, reset connections, stalls past
//! `--timeout`), with the server restarted once mid-run. fio's verification must pass, e2fsck
//! must be clean, everything fio wrote must read back after a remount, and the stats must show
//! the retries.

mod common;
use common::*;
use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
use s3b_testkit::garage::Garage;
use std::time::Duration;

fn fio(dir: &std::path::Path, verify_only: bool) {
    let job = ["--name=chaos", "--size=1m", "--numjobs=2", "--fsync=8", "--randseed=1234", "--group_reporting"];
    fio_verify(dir, &job, verify_only);
}

#[test]
fn fio_verify_survives_faults_and_a_server_restart() {
    let mut g = Garage::start();
    let proxy = FaultProxy::start(
        g.port,
        FaultConfig {
            error_percent: 4,
            reset_percent: 3,
            stall_percent: 3,
            stall: Duration::from_secs(4),
            corrupt_percent: 0,
        },
    );
    let s = Scratch::new();
    let flags = ["--size=128m", "--blockSize=4k", "--timeout=2", "--initialRetryPause=100", "--maxRetryPause=60000"];
    let a = garage_args_at(&proxy.base_url(), &flags);
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let (m, e) = ext4_behind_faults(&proxy, &args, &s);

    // Restart the server once while fio runs: as soon as its writes are reaching the server
    // (seen at the proxy), not after a fixed time that a slow or fast machine would miss.
    let puts = || proxy.method_counts().get("PUT").copied().unwrap_or(0);
    let before = puts();
    let g = std::thread::scope(|scope| {
        let restarter = scope.spawn(move || {
            wait_for(120, "fio's writes reaching the server", || puts() >= before + 20);
            g.restart();
            g
        });
        fio(&s.ext4(), false);
        restarter.join().unwrap()
    });
    e.unmount();
    proxy.set_faults(false);
    let stats = m.stats();
    let counts = proxy.counts();
    eprintln!("proxy: {counts:?}\n{stats}");
    assert!(counts.faults() >= 5, "too few faults injected: {counts:?}");
    assert!(stat_value(&stats, "http_num_retries") >= 1, "{stats}");
    assert_eq!(m.unmount(), 0, "unclean exit after faults");

    // Everything fio wrote is in the bucket: remount and verify again.
    drop_caches();
    let m = Mount::start(&args, &s.mnt());
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    fio(&s.ext4(), true);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    drop(proxy);
    drop(g);
}
