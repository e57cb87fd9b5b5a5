//! Node loss on Ceph: s3b-testkit's cluster with three BlueStore OSDs, pools of size 3 and
//! min_size 2, RGW in front; OSDs killed with SIGKILL and started again on their data while
//! the volume is in use.
//!
//! - One OSD down: RADOS goes on with two copies; fio with data verification through ext4 sees
//!   no error, e2fsck is clean and everything reads back after the OSD returned.
//! - Two OSDs down (below min_size): RGW does not refuse, its requests wait on RADOS, and they
//!   time out at our end; a write accepted into the block cache cannot be made durable, and its
//!   fsync fails once an upload has spent its retry budget, with ETIMEDOUT (upstream's errno for
//!   a timed-out request; on Garage it is EIO from the 503s); once the OSDs are back the dirty
//!   blocks are uploaded, and everything fsync'd before, written during and written after is
//!   in RGW.

mod common;
use common::*;
use s3b_testkit::ceph::Ceph;
use s3b_testkit::garage::BUCKET;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// The tests of this file share one cluster and kill its OSDs: they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The shared 3-OSD cluster, and the right to kill its OSDs (a failed test does not block).
fn cluster() -> (&'static Ceph, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Ceph> = OnceLock::new();
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = CLUSTER.get_or_init(|| {
        let c = Ceph::start(3);
        let rss: u64 = c.rss_kib().iter().map(|(_, k)| k).sum();
        eprintln!(
            "ceph, 3 OSDs: serving S3 after {:.1} s; RSS {} MiB: {:?}",
            c.startup.as_secs_f64(),
            rss >> 10,
            c.rss_kib()
        );
        c
    });
    (c, guard)
}

fn mount(c: &Ceph, vol: &str, extra: &[&str], mnt: &Path) -> Mount {
    let mut a = c.s3backer_flags();
    a.extend(strings(extra));
    a.push(format!("{BUCKET}/{vol}"));
    Mount::start_owned(a, mnt)
}

/// Waits until `stat` in the mount's stats has grown by `by` from `from`; returns it.
fn grown(m: &Mount, stat: &str, from: u64, by: u64, what: &str) -> u64 {
    let mut now = from;
    wait_for(120, what, || {
        now = stat_value(&m.stats(), stat);
        now >= from + by
    });
    now
}

fn fio(dir: &Path, seed: u32, verify_only: bool) {
    fio_verify(
        dir,
        &[&format!("--name=osd{seed}"), "--size=1m", "--fsync=8", &format!("--randseed={seed}")],
        verify_only,
    );
}

#[test]
fn fio_verify_through_ext4_while_an_osd_is_killed_and_returns() {
    let (c, _one) = cluster();
    let s = Scratch::new();
    let flags = ["--size=64m", "--blockSize=16k", "--timeout=5", "--initialRetryPause=100", "--maxRetryPause=30000"];
    let m = mount(c, "one", &flags, &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 40, 5);
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU32::new(0));
    let worker = {
        let (stop, last, dir) = (stop.clone(), last.clone(), s.ext4());
        std::thread::spawn(move || {
            let mut seed = 1;
            while !stop.load(Ordering::SeqCst) {
                fio(&dir, seed, false);
                last.store(seed, Ordering::SeqCst);
                seed += 1;
            }
        })
    };
    let puts = grown(&m, "http_puts", stat_value(&m.stats(), "http_puts"), 20, "writes before the crash");
    let t = Instant::now();
    c.kill_osd(1);
    eprintln!("osd.1 killed and marked down in {} ms", t.elapsed().as_millis());
    let puts = grown(&m, "http_puts", puts, 60, "writes with osd.1 down");
    c.start_osd(1);
    c.wait_clean();
    grown(&m, "http_puts", puts, 20, "writes after osd.1 returned");
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("fio failed while an OSD crashed");
    let jobs = last.load(Ordering::SeqCst);
    e.unmount();
    let stats = m.stats();
    eprintln!("fio jobs verified: {jobs}\n{stats}");
    assert!(jobs >= 1);
    assert_eq!(stat_value(&stats, "http_5xx_error"), 0, "{stats}");
    assert_eq!(m.unmount(), 0);

    drop_caches();
    let m = mount(c, "one", &flags, &s.mnt());
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), &tree);
    fio(&s.ext4(), jobs, true);
    e.unmount();
    assert_eq!(m.unmount(), 0);
}

/// The block cache's dirty share, from the stats.
fn dirty_ratio(m: &Mount) -> f64 {
    let stats = m.stats();
    let line = stats.lines().find(|l| l.starts_with("block_cache_dirty_ratio")).expect("block_cache_dirty_ratio");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const BS: usize = 64 << 10;
const OUTAGE_FLAGS: [&str; 5] =
    ["--size=16m", "--blockSize=64k", "--timeout=2", "--initialRetryPause=100", "--maxRetryPause=2000"];

#[test]
fn two_osds_down_fsync_fails_with_eio_and_nothing_acknowledged_is_lost() {
    let (c, _one) = cluster();
    let s = Scratch::new();
    let cache = format!("--blockCacheFile={}", s.path("cache").display());
    let mut flags = OUTAGE_FLAGS.to_vec();
    flags.extend(["--blockCacheSize=64", &cache]);
    let m = mount(c, "two", &flags, &s.mnt());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    let p1 = pattern(16 * BS, 3);
    f.write_all_at(&p1, 0).unwrap();
    f.sync_all().unwrap();

    c.kill_osd(1);
    c.kill_osd(2);
    let p2 = pattern(4 * BS, 4);
    f.write_all_at(&p2, 32 * BS as u64).unwrap();
    let started = Instant::now();
    let err = f.sync_all().unwrap_err();
    let took = started.elapsed();
    // Unlike Garage without quorum (503 at once), RGW answers nothing: its requests wait on
    // RADOS, our timeout fires on every attempt, and the error is upstream's for a timed-out
    // request (ETIMEDOUT; ext4 on a loop device sees EIO).
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "fsync below min_size: {err}");
    eprintln!("fsync with two OSDs of three down failed after {} ms", took.as_millis());
    assert!(dirty_ratio(&m) > 0.0);
    let mut back = vec![0u8; 4 * BS];
    f.read_exact_at(&mut back, 32 * BS as u64).unwrap();
    assert!(back == p2, "dirty blocks not read back from the cache");
    let log = m.stderr();
    assert!(log.contains("flush failed: upload of block 0x"), "no clear log line for the failed fsync:\n{log}");
    drop(f);

    c.start_osd(1);
    c.start_osd(2);
    c.wait_clean();
    wait_for(120, "the dirty blocks uploaded after the outage", || dirty_ratio(&m) == 0.0);
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    let p3 = pattern(2 * BS, 5);
    f.write_all_at(&p3, 40 * BS as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(m.unmount(), 0);

    drop_caches();
    let mut flags = OUTAGE_FLAGS.to_vec();
    flags.push("--blockCacheSize=0");
    let m = mount(c, "two", &flags, &s.mnt());
    let file = std::fs::File::open(m.file()).unwrap();
    for (p, at, what) in [(&p1, 0, "fsync'd before"), (&p2, 32, "written in"), (&p3, 40, "written after")] {
        let mut back = vec![0u8; p.len()];
        file.read_exact_at(&mut back, at * BS as u64).unwrap();
        assert_eq!(sha256_hex(&back), sha256_hex(p), "data {what} the outage");
    }
    drop(file);
    assert_eq!(m.unmount(), 0);
}
