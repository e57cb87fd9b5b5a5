//! A replicated store losing members: s3b-testkit's 3-node Garage cluster (replication factor 3,
//! quorum 2 of 3), nodes killed with SIGKILL and started again while the volume is in use.
//!
//! - One node down at a time (a storage node, then the node we talk to): ext4 and fio with data
//!   verification keep working, retries show in the stats, e2fsck is clean, and a remount reads
//!   everything back, the last time with another node down (so from a node that missed writes).
//! - Two nodes down (no quorum): reads and writes fail with EIO once the retry budget is spent,
//!   with a log line that says why; nothing fsync'd is lost; after the nodes return the volume
//!   remounts without `--force` and every fsync'd byte is there.
//! - The same with a block cache and a cache file: writes are accepted into the cache; an
//!   fsync during the outage fails with EIO once an upload has spent its retry budget (logged),
//!   while the blocks stay dirty, readable from the cache and retried; after the cluster is
//!   back write-back uploads them, fsync works again, and S3 holds every byte.

mod common;
use common::*;
use s3b_testkit::garage::BUCKET;
use s3b_testkit::garage_cluster::GarageCluster;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

/// The tests of this file run one at a time. During an outage a mount's flush waits for the
/// retry budget, and every process a test forks (a Garage node, fio, dd) inherits the open files of
/// the other tests' mounts and closes them at exec, which is a flush: a test restarting its
/// nodes could wait for another test's outage, and two outages could wait for each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mount(c: &GarageCluster, extra: &[&str], mnt: &Path) -> Mount {
    Mount::start_owned(volume_args(c.s3backer_flags(), extra, BUCKET), mnt)
}

#[test]
fn fio_verify_while_nodes_crash_and_return() {
    let _one = one_at_a_time(&ONE_AT_A_TIME);
    let mut c = GarageCluster::start();
    let s = Scratch::new();
    let flags = ["--size=64m", "--blockSize=16k", "--timeout=3", "--initialRetryPause=100", "--maxRetryPause=30000"];
    let m = mount(&c, &flags, &s.mnt());
    Ext4::mkfs(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 40, 5);

    // fio runs job after job (each verifies what it wrote) until told to stop.
    let fio = FioLoop::start(s.ext4(), "cluster");
    let puts = stat_value(&m.stats(), "http_puts");
    let puts = m.wait_stat_grown("http_puts", puts, 20, "writes before the first crash");
    // A storage node crashes: the other two are a quorum.
    c.kill(1);
    let puts = m.wait_stat_grown("http_puts", puts, 40, "writes with node 1 down");
    c.restart(1);
    let puts = m.wait_stat_grown("http_puts", puts, 20, "writes after node 1 returned");
    // The node we talk to crashes: every request fails until it is back.
    let retries = stat_value(&m.stats(), "http_num_retries");
    c.kill(0);
    m.wait_stat_grown("http_num_retries", retries, 2, "retries while node 0 is down");
    c.restart(0);
    m.wait_stat_grown("http_puts", puts, 20, "writes after node 0 returned");
    let jobs = fio.finish();
    assert!(jobs >= 1);
    e.unmount();
    let stats = m.stats();
    eprintln!("fio jobs verified: {jobs}\n{stats}");
    assert!(stat_value(&stats, "http_num_retries") >= 2, "{stats}");
    assert_eq!(m.unmount(), 0);

    // Remount with node 2 down: the data comes from node 0 and node 1, which missed writes.
    c.kill(2);
    drop_caches();
    let m = mount(&c, &flags, &s.mnt());
    let e = checked_ext4(&m, &s, &tree);
    fio_job(&s.ext4(), "cluster", jobs, true);
    e.unmount();
    assert_eq!(m.unmount(), 0);
}

/// An O_DIRECT handle on the exported file, with an aligned buffer helper.
fn direct(file: &Path, write: bool) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(file).unwrap()
}

/// A 4096-aligned copy of `data` (O_DIRECT buffers must be aligned).
struct Aligned {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + 4096];
        let off = buf.as_ptr().align_offset(4096);
        Aligned { buf, off, len }
    }
    fn from(data: &[u8]) -> Self {
        let mut a = Aligned::new(data.len());
        a.as_mut().copy_from_slice(data);
        a
    }
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

const BS: usize = 64 << 10;
const OUTAGE_FLAGS: [&str; 5] =
    ["--size=16m", "--blockSize=64k", "--timeout=2", "--initialRetryPause=100", "--maxRetryPause=2000"];

#[test]
fn two_nodes_down_fails_with_eio_and_loses_nothing_fsynced() {
    let _one = one_at_a_time(&ONE_AT_A_TIME);
    let mut c = GarageCluster::start();
    let s = Scratch::new();
    let mut flags = OUTAGE_FLAGS.to_vec();
    flags.push("--blockCacheSize=0");
    let m = mount(&c, &flags, &s.mnt());
    let p1 = pattern(16 * BS, 1);
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    f.write_all_at(&p1, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);

    c.kill(1);
    c.kill(2);
    let f = direct(&m.file(), true);
    let started = Instant::now();
    let err = f.write_all_at(Aligned::from(&pattern(BS, 2)).as_ref(), 32 * BS as u64).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "write without quorum: {err}");
    let mut back = Aligned::new(BS);
    let err = f.read_exact_at(back.as_mut(), 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "read without quorum: {err}");
    eprintln!("write without quorum failed after {} ms", took.as_millis());
    let log = m.stderr();
    assert!(log.contains("retrying"), "no retry logged:\n{log}");
    assert!(
        log.contains("error: write of 65536 bytes at offset 2097152 failed: HTTP 503")
            && log.contains("error: read of 65536 bytes at offset 0 failed: HTTP 503"),
        "no clear error line for the failed requests:\n{log}"
    );
    let stats = m.stats();
    assert!(stat_value(&stats, "http_num_retries") >= 4, "{stats}");

    c.restart(1);
    c.restart(2);
    // The same mount works again, and what was fsync'd is there.
    f.read_exact_at(back.as_mut(), 0).unwrap();
    assert!(back.as_ref() == &p1[..BS]);
    drop(f);
    assert_eq!(m.unmount(), 0);
    drop_caches();
    let m = mount(&c, &flags, &s.mnt());
    let mut all = vec![0u8; p1.len()];
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut all, 0).unwrap();
    assert!(all == p1, "fsync'd data lost in the outage");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn with_a_cache_file_an_fsync_in_the_outage_fails_and_nothing_is_lost() {
    let _one = one_at_a_time(&ONE_AT_A_TIME);
    let mut c = GarageCluster::start();
    let s = Scratch::new();
    let cache = format!("--blockCacheFile={}", s.path("cache").display());
    let mut flags = OUTAGE_FLAGS.to_vec();
    flags.extend(["--blockCacheSize=64", &cache]);
    let m = mount(&c, &flags, &s.mnt());
    let f = direct(&m.file(), true);
    let p1 = pattern(16 * BS, 3);
    f.write_all_at(Aligned::from(&p1).as_ref(), 0).unwrap();
    f.sync_all().unwrap();

    c.kill(1);
    c.kill(2);
    // Accepted into the cache. The fsync cannot put it in S3: it fails with EIO once an upload
    // has spent its retry budget, rather than pretend or wait for the cluster.
    let p2 = pattern(4 * BS, 4);
    f.write_all_at(Aligned::from(&p2).as_ref(), 32 * BS as u64).unwrap();
    let started = Instant::now();
    let err = f.sync_all().unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "fsync without quorum: {err}");
    eprintln!("fsync without quorum failed after {} ms", took.as_millis());
    assert!(took.as_secs() < 30, "fsync without quorum took {took:?}");
    // The blocks stay dirty in the cache, which answers reads of them (S3 cannot, now).
    assert!(dirty_ratio(&m) > 0.0);
    let mut back = Aligned::new(4 * BS);
    f.read_exact_at(back.as_mut(), 32 * BS as u64).unwrap();
    assert!(back.as_ref() == &p2[..], "dirty blocks not read back from the cache");
    let log = m.stderr();
    assert!(
        log.contains("block cache: upload of block")
            && log.contains("flush failed: upload of block 0x")
            && log.contains("failed: HTTP 503"),
        "no clear log line for the failed upload and fsync:\n{log}"
    );
    // Closing is a flush too: it fails the same way (close's error is not seen here). Closed
    // before the nodes start, whose processes would otherwise inherit it and flush at exec.
    drop(f);

    c.restart(1);
    c.restart(2);
    // Write-back retries the dirty blocks; once they are up, a write and fsync work again.
    wait_for(60, "the dirty blocks uploaded after the outage", || dirty_ratio(&m) == 0.0);
    let f = direct(&m.file(), true);
    let p3 = pattern(2 * BS, 5);
    f.write_all_at(Aligned::from(&p3).as_ref(), 40 * BS as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(stat_value(&m.stats(), "http_num_retries") >= 4);
    assert_eq!(m.unmount(), 0);
    // Straight from S3, without the cache: everything is there.
    drop_caches();
    let mut flags = OUTAGE_FLAGS.to_vec();
    flags.push("--blockCacheSize=0");
    let m = mount(&c, &flags, &s.mnt());
    let at = |block: usize| u64::try_from(block * BS).unwrap();
    let parts =
        [(&p1[..], at(0), "fsync'd before the outage"), (&p2, at(32), "written in it"), (&p3, at(40), "after it")];
    assert_reads_back(&m.file(), &parts);
    assert_eq!(m.unmount(), 0);
}
