//! End to end over the `--test` directory store: the real binary, a real FUSE mount, ext4 on a
//! loop device, a restart in between, checksums and e2fsck.

mod common;
use common::*;
use std::os::unix::fs::{FileExt, MetadataExt};

#[test]
fn ext4_round_trip_survives_restart() {
    let s = Scratch::new();
    let args = ["--size=256m", "--blockSize=64k"];
    let (m, e) = Mount::test_dir_ext4(&s, &args);
    let tree = write_tree(&s.ext4(), 300, 1);
    e.unmount();
    assert_eq!(m.unmount(), 0, "clean exit after unmount");

    // Blocks are files named like S3 keys; no temp files are left behind.
    let store = s.store();
    let names: Vec<String> =
        std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.len() > 10, "blocks were written: {}", names.len());
    assert!(names.iter().all(|n| n.len() == 8 && n.chars().all(|c| c.is_ascii_hexdigit())), "{names:?}");

    let m = Mount::test_dir(&s, &args);
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    drop_caches();
    check_tree(&s.ext4(), &tree);
    e.unmount();
    let stats = m.stats();
    assert!(stats.ends_with("out_of_memory_errors         0\n"), "{stats}");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn exported_files_modes_sizes_and_stats_reset() {
    let s = Scratch::new();
    let m = Mount::test_dir(
        &s,
        &["--size=1m", "--blockSize=4k", "--test-delays", "--filename=disk", "--statsFilename=st", "--fileMode=0640"],
    );
    let md = std::fs::metadata(s.mnt().join("disk")).unwrap();
    assert_eq!(md.len(), 1 << 20);
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.blksize(), 4096);
    let st = std::fs::metadata(s.mnt().join("st")).unwrap();
    assert_eq!(st.mode() & 0o7777, 0o444);
    let mut names: Vec<String> =
        std::fs::read_dir(s.mnt()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["disk", "st"]);

    // Fault injection counts show up in stats; unlinking the stats file resets them.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(s.mnt().join("disk")).unwrap();
    f.write_all_at(&[7u8; 5000], 100).unwrap();
    f.sync_all().unwrap();
    let stats = std::fs::read_to_string(s.mnt().join("st")).unwrap();
    let delays: u64 = stats
        .lines()
        .find(|l| l.starts_with("test_injected_delays"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(delays > 0, "{stats}");
    std::fs::remove_file(s.mnt().join("st")).unwrap();
    let stats = std::fs::read_to_string(s.mnt().join("st")).unwrap();
    assert!(stats.contains("test_injected_delays         0\n"), "{stats}");
    assert!(s.mnt().join("st").exists(), "stats file stays after unlink");
    drop(f);
    assert_eq!(m.unmount(), 0);
}

#[test]
fn read_only_mount_refuses_writes_and_writes_nothing() {
    let s = Scratch::new();
    let store = s.store();
    std::fs::write(store.join("00000001"), vec![9u8; 4096]).unwrap();
    let before = sh(&format!("ls -l --time-style=full-iso {0}; stat -c %y {0}", store.display()));
    let m = Mount::test_dir(&s, &["--size=64k", "--readOnly"]);
    let md = std::fs::metadata(m.file()).unwrap();
    assert_eq!(md.mode() & 0o777, 0o400);
    let data = std::fs::read(m.file()).unwrap();
    assert_eq!(&data[4096..8192], &[9u8; 4096][..]);
    assert!(data[..4096].iter().all(|&b| b == 0));
    let err = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(m.unmount(), 0);
    assert_eq!(before, sh(&format!("ls -l --time-style=full-iso {0}; stat -c %y {0}", store.display())));
}

#[test]
fn punch_hole_deletes_whole_blocks_and_zeroes_edges() {
    let s = Scratch::new();
    let store = s.store();
    let m = Mount::test_dir(&s, &["--size=64k", "--blockSize=4k"]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    f.write_all_at(&vec![0xabu8; 65536], 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 16);
    // Punch [1000, 1000 + 3*4096): zeroes the tail of block 0, blocks 1-2, the head of block 3.
    sh(&format!("fallocate -p -o 1000 -l {} {}", 3 * 4096, m.file().display()));
    f.sync_all().unwrap();
    let mut buf = vec![0u8; 65536];
    f.read_exact_at(&mut buf, 0).unwrap();
    for (i, &b) in buf.iter().enumerate() {
        let hole = (1000..1000 + 3 * 4096).contains(&i);
        assert_eq!(b, if hole { 0 } else { 0xab }, "byte {i}");
    }
    assert!(!store.join("00000001").exists() && !store.join("00000002").exists());
    assert!(store.join("00000000").exists() && store.join("00000003").exists());
    // Past the end: ENOSPC, as upstream.
    let out = std::process::Command::new("fallocate")
        .args(["-p", "-o", "60000", "-l", "10000"])
        .arg(m.file())
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(f);
    assert_eq!(m.unmount(), 0);
}

#[test]
fn daemon_mode_returns_when_mounted_and_sigterm_flushes() {
    let s = Scratch::new();
    let out = run(&["--test", "--size=1m", s.store().to_str().unwrap(), s.mnt().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The parent returned only once the mount was ready.
    assert!(is_mounted(&s.mnt()));
    let f = std::fs::OpenOptions::new().write(true).open(s.mnt().join("file")).unwrap();
    f.write_all_at(&[1u8; 10000], 12345).unwrap();
    drop(f);
    // SIGTERM the daemon: it unmounts, flushes and exits.
    let store = s.store();
    let pids = daemon_pids(store.to_str().unwrap());
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    // SAFETY: sending a signal to a process we started.
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    wait_for(30, "unmount after SIGTERM", || !is_mounted(&s.mnt()));
    wait_for(30, "daemon exit", || daemon_pids(store.to_str().unwrap()).is_empty());
    let m = Mount::test_dir(&s, &["--size=1m"]);
    let data = std::fs::read(m.file()).unwrap();
    assert!(data[12345..22345].iter().all(|&b| b == 1));
    assert_eq!(m.unmount(), 0);
}

#[test]
fn wrong_size_block_file_is_eio_with_logged_reason() {
    let s = Scratch::new();
    let store = s.store();
    std::fs::write(store.join("00000002"), b"too short").unwrap();
    let m = Mount::test_dir(&s, &["--size=64k", "--blockSize=4k"]);
    let f = std::fs::File::open(m.file()).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 4096).unwrap();
    let err = f.read_exact_at(&mut buf, 2 * 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = m.stderr();
    drop(f);
    assert!(log.contains("corrupt block 0x00000002: object is 9 bytes, block size is 4096"), "{log}");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn test_errors_really_injects_errors() {
    let s = Scratch::new();
    // Without the block cache the injected errors reach the writer.
    let m = Mount::test_dir(&s, &["--size=4m", "--blockSize=4k", "--directIO", "--test-errors", "--blockCacheSize=0"]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    let mut failures = 0;
    for i in 0..1024u64 {
        if let Err(e) = f.write_all_at(&[1u8; 4096], i * 4096) {
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
            failures += 1;
        }
    }
    drop(f);
    let stats = m.stats();
    let injected = stat_value(&stats, "test_injected_errors");
    assert!(failures > 0 && injected >= failures, "failures {failures}, stats:\n{stats}");
    assert_eq!(m.unmount(), 0);

    // With the write-back cache every write succeeds and failed uploads are retried. An fsync
    // that an upload fails under reports EIO (the block stays dirty), never more often than
    // errors were injected; fsync again until it succeeds, and all the data is in the store.
    let m = Mount::test_dir(&s, &["--size=4m", "--blockSize=4k", "--directIO", "--test-errors"]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    for i in 0..1024u64 {
        f.write_all_at(&[(i % 200) as u8 + 2; 4096], i * 4096).unwrap();
    }
    let mut failed_fsyncs = 0;
    while let Err(e) = f.sync_all() {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        failed_fsyncs += 1;
        assert!(failed_fsyncs < 100, "fsync keeps failing");
    }
    drop(f);
    let stats = m.stats();
    let injected = stat_value(&stats, "test_injected_errors");
    assert!(injected > 0, "no upload failed and was retried:\n{stats}");
    eprintln!("{failed_fsyncs} fsyncs failed, {injected} errors injected");
    assert!(failed_fsyncs <= injected, "{failed_fsyncs} fsyncs failed, {injected} errors injected");
    assert_eq!(m.unmount(), 0);
    let m = Mount::test_dir(&s, &["--size=4m", "--blockSize=4k"]);
    let data = std::fs::read(m.file()).unwrap();
    for i in 0..1024usize {
        assert!(data[i * 4096..(i + 1) * 4096].iter().all(|&b| b == (i % 200) as u8 + 2), "block {i}");
    }
    assert_eq!(m.unmount(), 0);
}

#[test]
fn killed_daemon_leaves_a_mount_plain_umount_clears() {
    let s = Scratch::new();
    let store = s.store();
    let args = ["--size=64m", "--blockSize=64k"];
    let (m, e) = Mount::test_dir_ext4(&s, &args);
    std::fs::write(s.ext4().join("a"), b"hello").unwrap();
    sh("sync");
    let pid = m.child.as_ref().map(|c| c.id()).unwrap();
    // SAFETY: killing the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for(10, "daemon death", || daemon_pids(store.to_str().unwrap()).is_empty());
    // ext4 first, then the dead FUSE mount: both plain umounts succeed.
    e.unmount();
    assert!(!is_mounted(&s.ext4()));
    let st = std::process::Command::new("umount").arg(s.mnt()).status().unwrap();
    assert!(st.success());
    assert!(!is_mounted(&s.mnt()));
    drop(m);
    // The synced data survived the crash. Mount ext4 first: `sync` makes the journal durable
    // (its commits are flushes that reach us as fsync), not the checkpoint, so the journal must
    // be replayed before e2fsck can judge the file system (as in the crash matrix).
    let m = Mount::test_dir(&s, &args);
    let e = Ext4::mount(&m.file(), &s.ext4());
    assert_eq!(std::fs::read(s.ext4().join("a")).unwrap(), b"hello");
    e.unmount();
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

#[test]
fn fsynced_data_survives_kill_9() {
    use rand::{RngCore, SeedableRng};
    let s = Scratch::new();
    let args = ["--size=16m", "--blockSize=4k"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut model = vec![0u8; 16 << 20];
    for round in 0..3 {
        let m = Mount::test_dir(&s, &args);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
        for _ in 0..20 {
            let off = (rng.next_u64() % (16 << 20)) as usize;
            let len = ((rng.next_u64() % 200_000) as usize).min((16 << 20) - off);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
        // Crash right after fsync returned.
        m.kill9();
        drop(f);
        let m = Mount::test_dir(&s, &args);
        drop_caches();
        assert!(std::fs::read(m.file()).unwrap() == model, "round {round}: fsynced data lost after kill -9");
        assert_eq!(m.unmount(), 0);
    }
}

/// SIGTERM while a writer is busy: the busy mount is detached, the writer's writes and its
/// final fsync still succeed, then the daemon flushes and exits 0; every byte is there after a
/// restart.
#[test]
fn sigterm_during_heavy_writing_loses_nothing_and_exits_zero() {
    let s = Scratch::new();
    let args = ["--size=32m", "--blockSize=64k", "--test-delays"];
    let data = random_bytes(77, 8 << 20);
    let src = s.path("src");
    std::fs::write(&src, &data).unwrap();
    let mut m = Mount::test_dir(&s, &args);
    let mut dd = std::process::Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", m.file().display()))
        .args(["bs=64k", "conv=notrunc,fsync", "status=none"])
        .spawn()
        .unwrap();
    wait_for(60, "the writer's blocks at the daemon", || {
        let stats = m.stats();
        stat_value(&stats, "block_cache_write_hits") + stat_value(&stats, "block_cache_write_misses") > 0
    });
    let child = m.child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "exited before SIGTERM");
    // SAFETY: signalling a process we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(dd.wait().unwrap().success(), "the writer failed after SIGTERM");
    let mut code = None;
    wait_for(60, "exit after SIGTERM", || {
        code = m.child.as_mut().unwrap().try_wait().unwrap().map(|st| st.code());
        code.is_some()
    });
    let code = code.unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM: {}", m.stderr());
    assert!(m.stderr().contains("busy"), "the busy mount was detached: {}", m.stderr());
    m.child = None;
    assert!(!is_mounted(&s.mnt()));
    let m = Mount::test_dir(&s, &args);
    let back = std::fs::read(m.file()).unwrap();
    assert!(back[..data.len()] == data[..], "data written before and after SIGTERM differs");
    assert_eq!(m.unmount(), 0);
}

/// `--statsFileMirror`: the stats also appear in a regular file, updated every interval;
/// deleting it resets the stats; the last update is written at unmount.
#[test]
fn stats_file_mirror_updates_and_resets() {
    let s = Scratch::new();
    let mirror = s.path("mirror.txt");
    let flag = format!("--statsFileMirror={}", mirror.display());
    let m = Mount::start(
        &[
            "--test",
            "--size=1m",
            "--blockSize=4k",
            "--test-delays",
            &flag,
            "--statsFileMirrorInterval=50",
            s.store().to_str().unwrap(),
        ],
        &s.mnt(),
    );
    let delays = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("test_injected_delays"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    f.write_all_at(&[7u8; 20000], 0).unwrap();
    f.sync_all().unwrap();
    wait_for(10, "the mirror to show the writes", || std::fs::read_to_string(&mirror).is_ok_and(|t| delays(&t) > 0));
    let names = |t: &str| t.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(names(&std::fs::read_to_string(&mirror).unwrap()), names(&m.stats()));
    std::fs::remove_file(&mirror).unwrap();
    wait_for(10, "the mirror to come back reset", || {
        std::fs::read_to_string(&mirror).is_ok_and(|t| t.contains("test_injected_delays") && delays(&t) == 0)
    });
    assert_eq!(delays(&m.stats()), 0, "deleting the mirror did not reset the stats");
    f.write_all_at(&[9u8; 20000], 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(m.unmount(), 0);
    assert!(delays(&std::fs::read_to_string(&mirror).unwrap()) > 0, "no final update at unmount");
    assert!(!s.path("mirror.txt.new").exists());
}

/// Regression: relative `--blockCacheFile` and `--statsFileMirror` paths in daemon mode. The
/// daemon changes to `/`, so a relative path used to land there (or fail); both must resolve
/// against the directory the command was run from.
#[test]
fn regression_relative_cache_and_mirror_paths_in_daemon_mode() {
    let s = Scratch::new();
    let store = s.store();
    let cwd = s.path("");
    let out = std::process::Command::new(bin())
        .current_dir(&cwd)
        .args(["--test", "--size=1m", "--blockSize=4k", "--blockCacheFile=rel-cache", "--statsFileMirror=rel-mirror"])
        .args(["--statsFileMirrorInterval=50", store.to_str().unwrap(), s.mnt().to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cwd.join("rel-cache").is_file(), "cache file not in the working directory");
    wait_for(10, "the stats mirror in the working directory", || cwd.join("rel-mirror").is_file());
    assert!(!std::path::Path::new("/rel-cache").exists() && !std::path::Path::new("/rel-mirror").exists());
    let pids = daemon_pids(store.to_str().unwrap());
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    // SAFETY: sending a signal to a process we started.
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    wait_for(30, "unmount after SIGTERM", || !is_mounted(&s.mnt()));
    wait_for(30, "daemon exit", || daemon_pids(store.to_str().unwrap()).is_empty());
}
