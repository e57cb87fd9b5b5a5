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
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// The tests of this file share one cluster and kill its OSDs: they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The shared 3-OSD cluster, and the right to kill its OSDs (a failed test does not block).
fn cluster() -> (&'static Ceph, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Ceph> = OnceLock::new();
    let guard = one_at_a_time(&ONE_AT_A_TIME);
    (CLUSTER.get_or_init(|| Ceph::start_logged(3)), guard)
}

fn mount(c: &Ceph, vol: &str, extra: &[&str], mnt: &Path) -> Mount {
    Mount::start_owned(volume_args(c.s3backer_flags(), extra, &format!("{BUCKET}/{vol}")), mnt)
}

#[test]
fn fio_verify_through_ext4_while_an_osd_is_killed_and_returns() {
    let (c, _one) = cluster();
    let s = Scratch::new();
    let flags = ["--size=64m", "--blockSize=16k", "--timeout=5", "--initialRetryPause=100", "--maxRetryPause=30000"];
    let m = mount(c, "one", &flags, &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 40, 5);
    let fio = FioLoop::start(s.ext4(), "osd");
    let puts = m.wait_stat_grown("http_puts", stat_value(&m.stats(), "http_puts"), 20, "writes before the crash");
    let t = Instant::now();
    c.kill_osd(1);
    eprintln!("osd.1 killed and marked down in {} ms", t.elapsed().as_millis());
    let puts = m.wait_stat_grown("http_puts", puts, 60, "writes with osd.1 down");
    c.start_osd(1);
    c.wait_clean();
    m.wait_stat_grown("http_puts", puts, 20, "writes after osd.1 returned");
    let jobs = fio.finish();
    e.unmount();
    let stats = m.stats();
    eprintln!("fio jobs verified: {jobs}\n{stats}");
    assert!(jobs >= 1);
    assert_eq!(stat_value(&stats, "http_5xx_error"), 0, "{stats}");
    assert_eq!(m.unmount(), 0);

    drop_caches();
    let m = mount(c, "one", &flags, &s.mnt());
    let e = checked_ext4(&m, &s, &tree);
    fio_job(&s.ext4(), "osd", jobs, true);
    e.unmount();
    assert_eq!(m.unmount(), 0);
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
    let at = |block: usize| u64::try_from(block * BS).unwrap();
    let parts =
        [(&p1[..], at(0), "fsync'd before the outage"), (&p2, at(32), "written in it"), (&p3, at(40), "after it")];
    assert_reads_back(&m.file(), &parts);
    assert_eq!(m.unmount(), 0);
}
