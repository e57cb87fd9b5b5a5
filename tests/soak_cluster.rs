//! A long soak outside CI (ignored by default; the README gives the command): fio jobs with data
//! verification on ext4 on our file, against s3b-testkit's 3-node Garage cluster behind the
//! fault-injecting proxy (a few percent of 503s, resets and stalls), with a storage node
//! SIGKILLed and restarted every `S3B_SOAK_KILL_SECS` (default 120) for `S3B_SOAK_SECS`
//! (default 1800). At the end: e2fsck clean, the last job verified again after a remount, and
//! the figures — requests, faults injected, retries, nodes killed, bytes verified, the daemon's
//! resident memory after the second job (its 64-block cache full) and at the end, and a sample
//! of it after every job (printed as it goes) to show it levels off rather than grows.

mod common;
use common::*;
use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
use s3b_testkit::garage_cluster::GarageCluster;
use std::path::Path;
use std::time::{Duration, Instant};

const JOB_BYTES: u64 = 4 << 20;

fn fio(dir: &Path, seed: u64, verify_only: bool) {
    let (name, size, seed) =
        (format!("--name=soak{seed}"), format!("--size={JOB_BYTES}"), format!("--randseed={seed}"));
    fio_verify(dir, &[&name, &size, "--numjobs=1", "--fsync=16", &seed], verify_only);
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

#[test]
#[ignore = "a long soak: S3B_SOAK_SECS=1800 cargo test --release --test soak_cluster -- --ignored --nocapture"]
fn soak_fio_verify_on_a_cluster_losing_nodes() {
    let total = env_secs("S3B_SOAK_SECS", 1800);
    let kill_every = env_secs("S3B_SOAK_KILL_SECS", 120);
    let mut c = GarageCluster::start();
    let proxy = FaultProxy::start(
        c.port(),
        FaultConfig {
            error_percent: 2,
            reset_percent: 1,
            stall_percent: 1,
            stall: Duration::from_secs(4),
            corrupt_percent: 1,
        },
    );
    let s = Scratch::new();
    let flags = [
        "--size=256m",
        "--blockSize=64k",
        "--blockCacheSize=64",
        "--timeout=3",
        "--initialRetryPause=100",
        "--maxRetryPause=60000",
    ];
    let a = garage_args_at(&proxy.base_url(), &flags);
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let (m, e) = ext4_behind_faults(&proxy, &args, &s);
    let pid = m.child.as_ref().unwrap().id();

    let started = Instant::now();
    let mut next_kill = started + kill_every;
    let (mut seed, mut kills, mut rss_start, mut hwm_start) = (0u64, 0u32, 0u64, 0u64);
    let mut victim = 1;
    // (seconds since the start, VmRSS in KiB) after every job.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut sample = |seed: u64, kills: u32| {
        let (t, rss) = (started.elapsed().as_secs(), proc_kib(pid, "VmRSS:"));
        eprintln!("soak sample: {t} s, {seed} jobs, {kills} nodes killed, daemon RSS {rss} KiB");
        samples.push((t, rss));
    };
    while started.elapsed() < total {
        seed += 1;
        fio(&s.ext4(), seed, false);
        sample(seed, kills);
        if seed == 2 {
            // The cache (64 blocks) is full by now: what is resident from here on should stay.
            rss_start = proc_kib(pid, "VmRSS:");
            hwm_start = proc_kib(pid, "VmHWM:");
        }
        if Instant::now() >= next_kill {
            // A storage node crashes; the next job runs on two of three; then it returns.
            c.kill(victim);
            kills += 1;
            seed += 1;
            fio(&s.ext4(), seed, false);
            sample(seed, kills);
            c.restart(victim);
            victim = if victim == 1 { 2 } else { 1 };
            next_kill = Instant::now() + kill_every;
        }
        // Keep the file system from filling up: each job's file is rewritten by its next run.
        if seed % 8 == 0 {
            for f in std::fs::read_dir(s.ext4()).unwrap().flatten() {
                if f.file_name().to_string_lossy().starts_with("soak")
                    && !f.file_name().to_string_lossy().contains(&format!("soak{seed}."))
                {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
    e.unmount();
    proxy.set_faults(false);
    let stats = m.stats();
    let rss_end = proc_kib(pid, "VmRSS:");
    let hwm = proc_kib(pid, "VmHWM:");
    let counts = proxy.counts();
    assert_eq!(m.unmount(), 0, "unclean exit after the soak");
    drop_caches();
    let m = Mount::start(&args, &s.mnt());
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    fio(&s.ext4(), seed, true);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    // The median of the samples in each quarter of the run: a leak shows as a rising series.
    let quarters: Vec<u64> = (0..4)
        .map(|q| {
            let mut v: Vec<u64> =
                samples.iter().filter(|(t, _)| (t * 4 / total.as_secs().max(1)).min(3) == q).map(|&(_, r)| r).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        })
        .collect();
    let requests =
        stat_value(&stats, "http_gets") + stat_value(&stats, "http_puts") + stat_value(&stats, "http_deletes");
    eprintln!(
        "soak: {} s, {seed} fio jobs verified ({} MiB written and read back), {requests} successful requests, \
         {} proxy requests with {} faults injected ({counts:?}), {} retries, {kills} nodes killed, \
         daemon RSS {rss_start} KiB after the second job (peak {hwm_start} KiB), {rss_end} KiB at the end \
         (peak {hwm} KiB); median RSS by quarter of the run: {quarters:?} KiB",
        started.elapsed().as_secs(),
        (seed * JOB_BYTES) >> 20,
        counts.requests,
        counts.faults(),
        stat_value(&stats, "http_num_retries"),
    );
    assert!(kills >= 1 || total < kill_every, "no node was killed");
    assert!(rss_end < rss_start + 64 * 1024, "resident memory grew from {rss_start} to {rss_end} KiB");
    // After the warm-up (the first quarter), the typical resident size stays within 8 MiB.
    if quarters[1] > 0 && quarters[3] > 0 {
        assert!(quarters[3] < quarters[1] + 8 * 1024, "resident memory keeps growing: {quarters:?} KiB");
    }
}
