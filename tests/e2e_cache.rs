//! End to end tests of the block cache through the real binary over a `--test` directory:
//! a persistent cache file across a clean restart and across kill -9 (with dirty-block
//! recovery), read-ahead seen in the stats file, a corrupt cache file refused clearly, and a
//! cache file resized by a changed --blockCacheSize (also killed with -9 mid-resize).

mod common;
use common::*;
use std::os::unix::fs::FileExt;

fn blocks_in_store(store: &std::path::Path) -> usize {
    std::fs::read_dir(store).map(|d| d.count()).unwrap_or(0)
}

/// ext4 over a cache file: clean round trip (reloaded blocks are verified against the store),
/// then kill -9 after sync and a restart with --blockCacheRecoverDirtyBlocks: data present and
/// e2fsck clean.
#[test]
fn cache_file_ext4_round_trip_and_kill9_recovery() {
    let s = Scratch::new();
    let cache = s.path("cache");
    let args = [
        "--size=64m",
        "--blockSize=64k",
        "--blockCacheSize=200",
        &format!("--blockCacheFile={}", cache.display()),
        "--blockCacheRecoverDirtyBlocks",
    ];
    let (m, e) = Mount::test_dir_ext4(&s, &args);
    let tree = write_tree(&s.ext4(), 100, 1);
    e.unmount();
    assert_eq!(m.unmount(), 0);

    // Clean restart: the cache file's blocks come back and are checked with If-None-Match.
    let m = Mount::test_dir(&s, &args);
    assert!(stat_value(&m.stats(), "block_cache_initial_size") > 0, "{}", m.stats());
    let e = Ext4::mount(&m.file(), &s.ext4());
    drop_caches();
    check_tree(&s.ext4(), &tree);
    let tree2 = write_tree(&s.ext4(), 50, 2);
    sh(&format!("sync -f {}", s.ext4().display()));
    let stats = m.stats();
    assert!(stat_value(&stats, "block_cache_verified") > 0, "{stats}");
    assert_eq!(stat_value(&stats, "block_cache_mismatch"), 0, "{stats}");
    // Crash after the sync.
    let pid = m.child.as_ref().unwrap().id();
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    e.unmount();
    m.kill9();

    let m = Mount::test_dir(&s, &args);
    let e = Ext4::mount(&m.file(), &s.ext4());
    // The second tree rewrote the first 50 files of the first.
    check_tree(&s.ext4(), &tree[50..]);
    check_tree(&s.ext4(), &tree2);
    e.unmount();
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

/// Writes that were never fsynced, still dirty in the cache file when the daemon is killed,
/// are uploaded by the next mount with --blockCacheRecoverDirtyBlocks, and are discarded
/// without it (the fsynced ones are always there).
#[test]
fn dirty_blocks_in_cache_file_survive_kill9_only_with_recovery() {
    use rand::{RngCore, SeedableRng};
    for recover in [true, false] {
        let s = Scratch::new();
        let store = s.store();
        let (_, file_arg) = s.cache_file();
        let args = vec![
            "--size=4m",
            "--blockSize=64k",
            "--directIO",
            "--blockCacheSize=32",
            &file_arg,
            "--blockCacheWriteDelay=600000",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut synced = vec![0u8; 512 << 10];
        rng.fill_bytes(&mut synced);
        let mut unsynced = vec![0u8; 512 << 10];
        rng.fill_bytes(&mut unsynced);

        let m = Mount::test_dir(&s, &args);
        write_synced(&m.file(), 0, &synced);
        // Written by a process that keeps the file open: closing it would flush.
        let writer = write_and_hold(&m.file(), 1 << 20, &unsynced);
        assert_eq!(blocks_in_store(&store), 8, "only the fsynced blocks were uploaded");
        // Crash with the file still open.
        m.kill9();
        drop(writer);
        assert_eq!(blocks_in_store(&store), 8);

        let mut restart = args.clone();
        restart.retain(|a| !a.starts_with("--blockCacheWriteDelay"));
        if recover {
            restart.insert(0, "--blockCacheRecoverDirtyBlocks");
        }
        let m = Mount::test_dir(&s, &restart);
        let all = std::fs::read(m.file()).unwrap();
        assert!(all[..512 << 10] == synced[..], "fsynced data present");
        let want_unsynced = if recover { unsynced.clone() } else { vec![0u8; 512 << 10] };
        assert!(all[1 << 20..(1 << 20) + (512 << 10)] == want_unsynced[..], "recover={recover}");
        if recover {
            assert!(m.stderr().contains("recovering 8 dirty blocks"), "{}", m.stderr());
        }
        assert_eq!(m.unmount(), 0);
        assert_eq!(blocks_in_store(&store), if recover { 16 } else { 8 });
    }
}

/// Sequential reads cause fewer block cache misses with read-ahead than without.
#[test]
fn read_ahead_reduces_misses() {
    let mut misses = Vec::new();
    for ra in ["--readAhead=0", "--readAhead=4"] {
        let s = Scratch::new();
        let m = Mount::test_dir(&s, &["--size=8m", "--blockSize=4k", "--directIO", ra]);
        let f = std::fs::File::open(m.file()).unwrap();
        let mut buf = vec![0u8; 4096];
        for i in 0..1024u64 {
            f.read_exact_at(&mut buf, i * 4096).unwrap();
        }
        drop(f);
        let stats = m.stats();
        misses.push(stat_value(&stats, "block_cache_read_misses"));
        assert_eq!(
            stat_value(&stats, "block_cache_read_hits") + stat_value(&stats, "block_cache_read_misses"),
            1024,
            "{stats}"
        );
        assert_eq!(m.unmount(), 0);
    }
    eprintln!("block_cache_read_misses for 1024 sequential 4k reads, readAhead 0 vs 4: {misses:?}");
    assert_eq!(misses[0], 1024);
    assert!(misses[1] < misses[0] / 4, "misses without/with read-ahead: {misses:?}");
}

/// A damaged cache file, or one made for another block size, is refused with one clear line.
#[test]
fn bad_cache_file_is_refused_clearly() {
    let s = Scratch::new();
    let store = s.store();
    let (cache, file_arg) = s.cache_file();
    let mnt = s.mnt();
    let run_with =
        |bs: &str| run(&["--test", "--size=1m", bs, &file_arg, "-f", store.to_str().unwrap(), mnt.to_str().unwrap()]);

    std::fs::write(&cache, vec![0x5au8; 100_000]).unwrap();
    let out = run_with("--blockSize=4k");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an s3backer-rs cache file or is corrupt"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    std::fs::remove_file(&cache).unwrap();
    let m = Mount::test_dir(&s, &["--size=1m", "--blockSize=4k", &file_arg]);
    assert_eq!(m.unmount(), 0);
    let out = run_with("--blockSize=8k");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("was made for block size 4096, not 8192"), "{err}");
    assert!(!is_mounted(&s.mnt()));
}

/// A cache file on a file system too small for it is refused at startup with one line (its
/// space is reserved when it is made), nothing is written to the store, and no half-made file
/// is left behind.
#[test]
fn cache_file_on_a_full_file_system_is_refused_at_startup() {
    let s = Scratch::new();
    let store = s.store();
    let small = s.path("small");
    std::fs::create_dir_all(&small).unwrap();
    sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", small.display()));
    let cache = small.join("cache");
    let out = run(&[
        "--test",
        "--size=16m",
        "--blockSize=64k",
        "--blockCacheSize=100",
        &format!("--blockCacheFile={}", cache.display()),
        "-f",
        store.to_str().unwrap(),
        s.mnt().to_str().unwrap(),
    ]);
    let exists = cache.exists();
    sh(&format!("umount {}", small.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("can't reserve 7 MiB for 100 blocks") && err.contains("No space left"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!exists, "half-made cache file left behind");
    assert_eq!(blocks_in_store(&store), 0);
    assert!(!is_mounted(&s.mnt()));
}

/// ext4 over a cache file whose --blockCacheSize changes between mounts: grown, then shrunk.
/// The file is resized (not refused), the blocks that fit come back (verified against the
/// store), and the file system reads back identical and checks clean.
#[test]
fn cache_file_grows_and_shrinks_with_block_cache_size() {
    let s = Scratch::new();
    let (cache, file_arg) = s.cache_file();
    let start = |size: &str| Mount::test_dir(&s, &["--size=64m", "--blockSize=64k", size, &file_arg]);
    let m = start("--blockCacheSize=100");
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 60, 11);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    let len_100 = std::fs::metadata(&cache).unwrap().len();

    // How many blocks the file holds, from a restart with the same size.
    let m = start("--blockCacheSize=100");
    let held = stat_value(&m.stats(), "block_cache_initial_size");
    assert!(held > 20, "{}", m.stats());
    assert_eq!(m.unmount(), 0);

    // Grow: every block of the old file comes back.
    let m = start("--blockCacheSize=300");
    assert_eq!(stat_value(&m.stats(), "block_cache_initial_size"), held, "{}", m.stats());
    assert!(std::fs::metadata(&cache).unwrap().len() > len_100 * 2);
    let e = Ext4::mount(&m.file(), &s.ext4());
    drop_caches();
    check_tree(&s.ext4(), &tree);
    let stats = m.stats();
    assert!(stat_value(&stats, "block_cache_verified") > 0, "{stats}");
    assert_eq!(stat_value(&stats, "block_cache_mismatch"), 0, "{stats}");
    let tree2 = write_tree(&s.ext4(), 200, 12);
    e.unmount();
    assert_eq!(m.unmount(), 0);

    // Shrink: as many blocks as fit.
    let m = start("--blockCacheSize=40");
    assert_eq!(stat_value(&m.stats(), "block_cache_initial_size"), 40, "{}", m.stats());
    assert!(std::fs::metadata(&cache).unwrap().len() < len_100);
    let e = Ext4::mount(&m.file(), &s.ext4());
    drop_caches();
    // The second tree rewrote every file of the first.
    check_tree(&s.ext4(), &tree2);
    assert_eq!(stat_value(&m.stats(), "block_cache_mismatch"), 0, "{}", m.stats());
    e.unmount();
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
    assert!(!s.path("cache.resize").exists());
}

/// Dirty blocks (never uploaded, daemon killed) survive a resize of their cache file with
/// --blockCacheRecoverDirtyBlocks; a size below their number is refused with one line, nothing
/// is written to the store and the file is left as it was.
#[test]
fn cache_file_resize_keeps_dirty_blocks() {
    let s = Scratch::new();
    let store = s.store();
    let (cache, file_arg) = s.cache_file();
    let with =
        |extra: &[&str]| test_args(&s, &[&["--size=4m", "--blockSize=64k", "--directIO", &file_arg], extra].concat());
    let start = |extra: &[&str]| Mount::start_owned(with(extra), &s.mnt());
    let data = random_bytes(21, 20 * 65536);
    let m = start(&["--blockCacheSize=32", "--blockCacheWriteDelay=600000"]);
    let writer = write_and_hold(&m.file(), 65536, &data);
    m.kill9();
    drop(writer);
    assert_eq!(blocks_in_store(&store), 0);

    // Shrinking below the 20 dirty blocks: refused, nothing changes.
    let before = std::fs::read(&cache).unwrap();
    let mut a = with(&["--blockCacheSize=19", "--blockCacheRecoverDirtyBlocks", "-f"]);
    a.push(s.mnt().to_string_lossy().into_owned());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = run(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("holds 20 dirty blocks not yet uploaded, more than the new cache size of 19 blocks"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(std::fs::read(&cache).unwrap() == before, "cache file changed");
    assert_eq!(blocks_in_store(&store), 0);
    assert!(!is_mounted(&s.mnt()));

    // Growing, then shrinking to exactly the dirty blocks: all of them still there.
    let m = start(&["--blockCacheSize=64", "--blockCacheRecoverDirtyBlocks", "--blockCacheWriteDelay=600000"]);
    assert!(m.stderr().contains("recovering 20 dirty blocks"), "{}", m.stderr());
    m.kill9();
    let m = start(&["--blockCacheSize=20", "--blockCacheRecoverDirtyBlocks"]);
    assert!(m.stderr().contains("recovering 20 dirty blocks"), "{}", m.stderr());
    let all = std::fs::read(m.file()).unwrap();
    assert!(all[65536..65536 + data.len()] == data[..], "recovered data differs");
    assert!(all[..65536].iter().chain(&all[65536 + data.len()..]).all(|&b| b == 0));
    assert_eq!(m.unmount(), 0);
    assert_eq!(blocks_in_store(&store), 20);
}

/// kill -9 while the daemon resizes its cache file (caught by watching for the temporary file
/// the resize writes): the next mount loses no dirty block and serves no wrong data.
#[test]
fn kill9_during_cache_file_resize() {
    use std::process::Command;
    let s = Scratch::new();
    let (_, file_arg) = s.cache_file();
    let tmp = s.path("cache.resize");
    let base = ["--size=128m", "--blockSize=64k", "--directIO", "--blockCacheWriteDelay=600000", &file_arg];
    let with = |extra: &[&str]| test_args(&s, &[&base[..], extra].concat());
    // 1000 dirty blocks (62.5 MiB) in a 1200-block cache file, never uploaded.
    let data = random_bytes(31, 1000 * 65536);
    {
        let m = Mount::start_owned(with(&["--blockCacheSize=1200"]), &s.mnt());
        let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
        f.write_all_at(&data, 0).unwrap();
        m.kill9();
    }
    let mut caught = 0;
    for size in ["--blockCacheSize=2000", "--blockCacheSize=1000", "--blockCacheSize=1800", "--blockCacheSize=1100"] {
        let mut a = with(&[size, "--blockCacheRecoverDirtyBlocks", "-f"]);
        a.push(s.mnt().to_string_lossy().into_owned());
        let stderr_path = s.path("resize.stderr");
        let child = spawn_logged(Command::new(bin()).args(&a), &stderr_path);
        let mut m = Mount { child: Some(child), mnt: s.mnt(), stderr_path };
        // Wait for the resize to start (or the mount to come up when it was too quick).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !tmp.exists() && !is_mounted(&s.mnt()) {
            assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "exited: {}", m.stderr());
            assert!(std::time::Instant::now() < end, "no resize seen: {}", m.stderr());
            std::thread::yield_now();
        }
        // SIGKILL (what `Child::kill` sends): the crash under test.
        m.child.as_mut().unwrap().kill().unwrap();
        m.child.as_mut().unwrap().wait().unwrap();
        if tmp.exists() {
            caught += 1;
        }
        m.kill9();
    }
    eprintln!("kill -9 landed mid-resize in {caught} of 4 attempts");
    assert!(caught > 0, "no kill landed during a resize");

    let m = Mount::start_owned(with(&["--blockCacheSize=1000", "--blockCacheRecoverDirtyBlocks"]), &s.mnt());
    let all = std::fs::read(m.file()).unwrap();
    assert!(all[..data.len()] == data[..], "recovered data differs");
    assert_eq!(m.unmount(), 0);
    assert!(!tmp.exists());
    // All of it reached the store: read it back without any cache.
    let m = Mount::test_dir(&s, &["--size=128m", "--blockSize=64k", "--blockCacheSize=0"]);
    let all = std::fs::read(m.file()).unwrap();
    assert!(all[..data.len()] == data[..], "stored data differs");
    assert_eq!(m.unmount(), 0);
}
