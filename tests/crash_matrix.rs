//! Crash matrix: kill -9 at several points of an ext4 write workload, in each cache
//! configuration. After a restart, every file whose fsync returned before the kill is intact
//! and ext4 recovers clean (journal replay on mount, then `e2fsck -fn`). Most cells use a
//! `--test` directory; one runs over a real S3 server (Garage on 127.0.0.1).
//!
//! The workload writes files of random content into ext4 on the exported file and fsyncs each;
//! a file is recorded as durable only once its fsync (and the directory's) returned. The kill
//! comes while the workload writes its first, fifth or seventeenth file, so the points fall in
//! different phases: mkfs metadata still being written back, early and steady writing.

mod common;
use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Files written and fsynced so far: (relative path, sha256).
type Durable = Arc<Mutex<Vec<(String, String)>>>;

/// Writes files until the first error (the daemon died) or `stop`; `begun` counts the files
/// it has started.
fn workload(root: &Path, seed: u64, durable: Durable, begun: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = root.join(format!("w{seed}"));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for i in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        begun.fetch_add(1, Ordering::SeqCst);
        let rel = format!("w{seed}/f{i}");
        let mut data = vec![0u8; rng.gen_range(1..200_000)];
        rng.fill_bytes(&mut data);
        let ok = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(root.join(&rel))?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if ok.is_err() {
            return;
        }
        durable.lock().unwrap().push((rel, hex(&Sha256::digest(&data))));
    }
}

/// Where a cell keeps its blocks.
#[derive(Clone, Copy)]
enum Store {
    /// A `--test` directory.
    Dir,
    /// A bucket on a Garage server of the cell's own.
    S3,
}

/// One cell of the matrix: start with `args`, mkfs, write, kill -9 while the workload writes
/// its file number `kill_in` (counting from 0: after `kill_in` files were fsynced), restart
/// (without `--force`; with `resize_to`, as `--blockCacheSize=<resize_to>`, so the cache file
/// is resized on the way), check. Returns how many fsynced files were verified.
fn crash_case(args: &[String], store: Store, kill_in: usize, seed: u64, resize_to: Option<u32>) -> usize {
    let s = Scratch::new();
    // "{scratch}" in an argument names this cell's scratch directory (for cache files).
    let scratch = s.path("").to_string_lossy().into_owned();
    let mut full: Vec<String> = args.iter().map(|a| a.replace("{scratch}", &scratch)).collect();
    let _server = match store {
        Store::Dir => {
            full.push(s.store().to_string_lossy().into_owned());
            None
        }
        Store::S3 => {
            let g = s3b_testkit::garage::Garage::start();
            full.extend(g.s3backer_flags());
            full.push(s3b_testkit::garage::BUCKET.into());
            Some(g)
        }
    };
    let a: Vec<&str> = full.iter().map(String::as_str).collect();
    let m = Mount::start(&a, &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let durable: Durable = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let begun = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (root, durable, begun, stop) = (s.ext4(), durable.clone(), begun.clone(), stop.clone());
        std::thread::spawn(move || workload(&root, seed, durable, begun, stop))
    };
    wait_for(120, &format!("the workload at file {kill_in}"), || begun.load(Ordering::SeqCst) > kill_in);
    let pid = m.child.as_ref().unwrap().id();
    // SAFETY: killing the daemon we started: the crash under test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // ext4 first, then the dead FUSE mount.
    e.unmount();
    m.kill9();
    let durable = durable.lock().unwrap().clone();

    let mut again = full.clone();
    if let Some(size) = resize_to {
        again.retain(|x| !x.starts_with("--blockCacheSize="));
        again.insert(0, format!("--blockCacheSize={size}"));
    }
    let a: Vec<&str> = again.iter().map(String::as_str).collect();
    let m = Mount::start(&a, &s.mnt());
    // Mounting replays the journal; then the file system must check clean.
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), &durable);
    e.unmount();
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
    durable.len()
}

fn matrix(name: &str, args: &[&str]) {
    matrix_on(name, Store::Dir, args)
}

fn matrix_on(name: &str, store: Store, args: &[&str]) {
    matrix_resizing(name, store, args, None)
}

fn matrix_resizing(name: &str, store: Store, args: &[&str], resize_to: Option<u32>) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    // The cells are independent (own store, own mounts): run them side by side.
    let cells: Vec<_> = [0usize, 4, 16]
        .into_iter()
        .enumerate()
        .map(|(i, kill_in)| {
            let args = args.clone();
            std::thread::spawn(move || (kill_in, crash_case(&args, store, kill_in, i as u64 + 1, resize_to)))
        })
        .collect();
    for c in cells {
        let (kill_in, n) = c.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        eprintln!("crash matrix: {name}: kill -9 while writing file {kill_in}: {n} fsynced files intact");
    }
}

#[test]
fn crash_matrix_test_dir_no_cache() {
    matrix("test dir, no cache", &["--test", "--size=32m", "--blockSize=16k", "--blockCacheSize=0"]);
}

#[test]
fn crash_matrix_test_dir_write_back_cache() {
    // Upstream's default cache (1000 blocks, 250 ms write delay): fsync must still mean durable.
    matrix("test dir, write-back cache", &["--test", "--size=32m", "--blockSize=16k"]);
}

#[test]
fn crash_matrix_test_dir_small_cache_many_workers() {
    // A cache smaller than the workload: writers wait for uploads, eviction runs all the time.
    matrix(
        "test dir, 64-block cache, max 16 dirty",
        &[
            "--test",
            "--size=32m",
            "--blockSize=16k",
            "--blockCacheSize=64",
            "--blockCacheMaxDirty=16",
            "--blockCacheThreads=8",
        ],
    );
}

#[test]
fn crash_matrix_test_dir_memory_cache() {
    matrix("test dir, memory cache", &["--test", "--size=32m", "--blockSize=16k", "--blockCacheSize=100"]);
}

#[test]
fn crash_matrix_test_dir_cache_file_recovering() {
    matrix(
        "test dir, cache file, recovering dirty blocks",
        &[
            "--test",
            "--size=32m",
            "--blockSize=16k",
            "--blockCacheSize=100",
            "--blockCacheFile={scratch}/cache",
            "--blockCacheRecoverDirtyBlocks",
        ],
    );
}

#[test]
fn crash_matrix_test_dir_cache_file_resized_after_crash() {
    // The restart after kill -9 shrinks the cache file (100 -> 40 blocks) while recovering its
    // dirty blocks: at most 40 can be dirty then (--blockCacheMaxDirty), so the resize keeps
    // them all.
    matrix_resizing(
        "test dir, cache file shrunk on recovery",
        Store::Dir,
        &[
            "--test",
            "--size=32m",
            "--blockSize=16k",
            "--blockCacheSize=100",
            "--blockCacheMaxDirty=40",
            "--blockCacheFile={scratch}/cache",
            "--blockCacheRecoverDirtyBlocks",
        ],
        Some(40),
    );
}

#[test]
fn crash_matrix_test_dir_cache_file_no_recovery() {
    matrix(
        "test dir, cache file, dirty blocks discarded",
        &["--test", "--size=32m", "--blockSize=16k", "--blockCacheFile={scratch}/cache"],
    );
}

#[test]
fn crash_matrix_s3_cache_file_recovering() {
    // Over a real S3 server: the restart after kill -9 needs no --force (the cache file holds the
    // crashed mount's token) and re-uploads the dirty blocks it finds.
    matrix_on(
        "S3, cache file, recovering dirty blocks",
        Store::S3,
        &[
            "--size=32m",
            "--blockSize=16k",
            "--blockCacheSize=100",
            "--blockCacheFile={scratch}/cache",
            "--blockCacheRecoverDirtyBlocks",
        ],
    );
}
