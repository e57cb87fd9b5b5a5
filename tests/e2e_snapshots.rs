//! Snapshots end to end, as a user runs them, on Garage and on s3s-fs: ext4 on the live volume,
//! snapshots taken between rounds of writes, each snapshot mounted read-only beside the live
//! mount and every file checked by SHA-256 against what was there when it was taken, e2fsck
//! clean; the middle of three snapshots deleted, the others still identical; and kill -9 of the
//! daemon during the first writes after a snapshot, and of `--deleteSnapshot` half-way. Snapshots
//! of the mounted volume through its daemon: ext4 frozen for each, read back with FUSE and NBD,
//! mistakes through the socket, and kill -9 right after one and during the first writes after.

mod common;
mod nbd_common;
use common::*;
use s3b_testkit::garage::{BUCKET, signed_curl};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

impl Server {
    /// Our flags for this server, `extra`, then the bucket.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = self.flags.clone();
        a.extend(strings(extra));
        a.push(BUCKET.into());
        a
    }

    /// Runs a command of ours to completion and returns its stdout (panics on failure).
    fn run(&self, extra: &[&str]) -> String {
        checked_output(Command::new(bin()).args(self.args(extra)).stdin(Stdio::null()), &format!("s3backer {extra:?}"))
    }

    fn keys(&self) -> Vec<String> {
        s3b_testkit::garage::list_keys_at(self.port, BUCKET)
    }

    fn index(&self) -> String {
        let (code, body) = signed_curl(self.port, &[], &format!("{BUCKET}/s3backer-snapshots"));
        assert_eq!(code, 200, "GET index");
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// Stands for the mount point in argument lists (it goes after the bucket).
const MNT: &str = "<mount point>";

/// A read-only FUSE mount of snapshot `name` on `mnt`, and its ext4 mounted read-only on `dir`.
fn mount_snapshot(srv: &Server, flags: &[&str], name: &str, mnt: &Path, dir: &Path) -> (Mount, Ext4) {
    let from = format!("--fromSnapshot={name}");
    let mut extra = vec!["--readOnly", from.as_str()];
    extra.extend_from_slice(flags);
    let m = Mount::start_owned(srv.args(&extra), mnt);
    fsck_clean(&m.file());
    sh(&format!("mount -o loop,ro {} {}", m.file().display(), dir.display()));
    (m, Ext4 { dir: dir.to_path_buf() })
}

/// Files changed in a second round: some rewritten, some removed, some new.
fn second_round(root: &Path, tree: &[(String, String)], seed: u64) -> Vec<(String, String)> {
    let mut now = Vec::new();
    for (i, (rel, sum)) in tree.iter().enumerate() {
        match i % 4 {
            0 => std::fs::remove_file(root.join(rel)).unwrap(),
            1 => {
                let data = pattern(5000 + i * 31, seed + i as u64);
                std::fs::write(root.join(rel), &data).unwrap();
                now.push((rel.clone(), sha256_hex(&data)));
            }
            _ => now.push((rel.clone(), sum.clone())),
        }
    }
    let extra = write_tree(&root.join(format!("round{seed}")), 30, seed);
    now.extend(extra.into_iter().map(|(rel, sum)| (format!("round{seed}/{rel}"), sum)));
    now
}

fn snapshots_of_ext4(srv: Server, flags: &[&str]) {
    let s = Scratch::new();
    let d = s.dirs(&["snap1", "snap1fs", "snap2", "snap2fs", "snap3", "snap3fs"]);
    let mut live_flags = vec!["--size=64m", "--blockSize=64k"];
    live_flags.extend_from_slice(flags);

    // Round 1, then snapshot "one" (the volume unmounted: the daemon path is not there yet).
    let m = Mount::start_owned(srv.args(&live_flags), &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let t1 = write_tree(&s.ext4(), 80, 1);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    srv.run(&["--snapshot=one"]);

    // Round 2, snapshot "two".
    let m = Mount::start_owned(srv.args(flags), &s.mnt());
    let e = Ext4::mount(&m.file(), &s.ext4());
    let t2 = second_round(&s.ext4(), &t1, 2);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    srv.run(&["--snapshot=two"]);
    let copies_before = srv.keys().iter().filter(|k| k.starts_with("s3backer-snap/")).count();

    // Round 3 with the live volume mounted; both snapshots mounted beside it.
    let live = Mount::start_owned(srv.args(flags), &s.mnt());
    let e = Ext4::mount(&live.file(), &s.ext4());
    let t3 = second_round(&s.ext4(), &t2, 3);
    sh("sync");
    let copies_after = srv.keys().iter().filter(|k| k.starts_with("s3backer-snap/")).count();
    assert!(copies_after > copies_before, "writes after a snapshot preserve blocks first");
    let (m1, e1) = mount_snapshot(&srv, flags, "one", &d[0], &d[1]);
    let (m2, e2) = mount_snapshot(&srv, flags, "two", &d[2], &d[3]);
    check_tree(&d[1], &t1);
    check_tree(&d[3], &t2);
    // The live volume keeps changing beside them; they do not.
    let t3b = second_round(&s.ext4(), &t3, 4);
    sh("sync");
    drop_caches();
    check_tree(&d[1], &t1);
    check_tree(&d[3], &t2);
    check_tree(&s.ext4(), &t3b);
    // At most one copy per block, however often it was written.
    let st = live.stats();
    let made = stat_value(&st, "snapshot_copies") + stat_value(&st, "snapshot_zero_copies");
    assert!(made > 0 && made <= 1024, "{st}");
    e1.unmount();
    e2.unmount();
    assert_eq!(m1.unmount(), 0);
    assert_eq!(m2.unmount(), 0);
    e.unmount();
    assert_eq!(live.unmount(), 0);
    fsck_clean_volume(&srv, flags, &s);

    // A third snapshot; the middle one deleted; the others identical.
    srv.run(&["--snapshot=three"]);
    let list = srv.run(&["--listSnapshots"]);
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["one", "two", "three"], "{list}");
    srv.run(&["--deleteSnapshot=two"]);
    let list = srv.run(&["--listSnapshots"]);
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["one", "three"], "{list}");
    assert!(!srv.keys().iter().any(|k| k.starts_with("s3backer-snap/00000002/")), "two's copies are gone");
    let (m1, e1) = mount_snapshot(&srv, flags, "one", &d[0], &d[1]);
    let (m3, e3) = mount_snapshot(&srv, flags, "three", &d[4], &d[5]);
    check_tree(&d[1], &t1);
    check_tree(&d[5], &t3b);
    e1.unmount();
    e3.unmount();
    assert_eq!(m1.unmount(), 0);
    assert_eq!(m3.unmount(), 0);

    // One line for each mistake, nothing written.
    let before = srv.index();
    for (extra, needle) in [
        (vec!["--quiet", "--snapshot=one"], "exists already"),
        (vec!["--quiet", "--deleteSnapshot=two"], "no snapshot named \"two\""),
        (vec!["--quiet", "--readOnly", "--fromSnapshot=two", "-f", MNT], "no snapshot named \"two\""),
    ] {
        let mut a = srv.args(&extra[..extra.len() - usize::from(extra.last() == Some(&MNT))]);
        if extra.last() == Some(&MNT) {
            a.push(d[0].to_string_lossy().into_owned());
        }
        let line = one_error_line(Command::new(bin()).args(a));
        assert!(line.contains(needle), "{extra:?}: {line}");
    }
    // A mount whose daemon listens elsewhere (as another host's or C s3backer's would not at
    // all): the command says so in one line. Asked on its socket, the daemon takes it.
    let other = s.path("elsewhere.sock");
    let at = format!("--controlSocket={}", other.display());
    let mut live_flags = flags.to_vec();
    live_flags.push(&at);
    let live = Mount::start_owned(srv.args(&live_flags), &s.mnt());
    let line = one_error_line(Command::new(bin()).args(srv.args(&["--quiet", "--snapshot=four"])));
    assert!(line.contains("is mounted (mount token") && line.contains("no daemon answers on"), "{line}");
    assert_eq!(srv.index(), before);
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let m = std::fs::symlink_metadata(&other).expect("the control socket");
        assert!(m.file_type().is_socket() && m.permissions().mode() & 0o777 == 0o600, "{m:?}");
    }
    let out = srv.run(&[&at, "--snapshot=four"]);
    assert!(out.is_empty(), "{out}");
    assert!(srv.index().lines().any(|l| l.ends_with(" four")), "{}", srv.index());
    assert_eq!(live.unmount(), 0);
    assert!(!other.exists(), "the control socket is removed at exit");
}

/// e2fsck of the live volume (mounted read-only for the check).
fn fsck_clean_volume(srv: &Server, flags: &[&str], s: &Scratch) {
    let mut extra = vec!["--readOnly"];
    extra.extend_from_slice(flags);
    let m = Mount::start_owned(srv.args(&extra), &s.mnt());
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

/// Writes `data` over the exported file with O_DIRECT writes of 1 MiB (each reaches the daemon
/// at once), in a child process that can be left running.
fn dd_direct(data_file: &Path, file: &Path) -> std::process::Child {
    Command::new("dd")
        .arg(format!("if={}", data_file.display()))
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", "oflag=direct", "conv=notrunc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dd")
}

/// How many copies snapshot `id` holds, by a LIST of its prefix.
fn copies(srv: &Server, id: u32) -> usize {
    loop {
        if let Some(n) = try_copies(srv, id) {
            return n;
        }
    }
}

/// [`copies`], or `None` when the server fails the LIST (s3s-fs answers 500 when a file goes
/// away while it walks the directory, as during a deletion).
fn try_copies(srv: &Server, id: u32) -> Option<usize> {
    let mut count = 0;
    let mut marker = String::new();
    loop {
        // Parameters in sorted order: curl signs the query as written.
        let mut path = format!("{BUCKET}?");
        if !marker.is_empty() {
            path.push_str(&format!("marker={}&", marker.replace('/', "%2F")));
        }
        path.push_str(&format!("max-keys=1000&prefix=s3backer-snap%2F{id:08x}%2F"));
        let (code, body) = signed_curl(srv.port, &[], &path);
        if code != 200 {
            return None;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let keys: Vec<&str> = text.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).collect();
        count += keys.len();
        match keys.last() {
            Some(last) if text.contains("<IsTruncated>true</IsTruncated>") => marker = last.to_string(),
            _ => return Some(count),
        }
    }
}

/// Reads the whole volume of snapshot `name` (or the live one) and returns its SHA-256.
fn volume_sum(srv: &Server, name: Option<&str>, mnt: &Path) -> String {
    let from = name.map(|n| format!("--fromSnapshot={n}"));
    let mut extra = vec!["--readOnly"];
    extra.extend(from.as_deref());
    let m = Mount::start_owned(srv.args(&extra), mnt);
    let sum = sha256_hex(&std::fs::read(m.file()).unwrap());
    assert_eq!(m.unmount(), 0);
    sum
}

/// kill -9 of the daemon while it writes blocks for the first time after a snapshot (taken
/// with the volume unmounted, or through the mounted daemon): the snapshot reads back exactly
/// as it was, the volume mounts again (with --force, as after any crashed mount) and the next
/// command repairs the bookkeeping by itself.
fn kill_during_first_writes(srv: Server, through_daemon: bool) {
    let s = Scratch::new();
    let d = s.dirs(&["view"]);
    let size = 32 << 20;
    let a = pattern(size, 1);
    let b_file = s.path("b.bin");
    std::fs::write(&b_file, pattern(size, 2)).unwrap();
    let m = Mount::start_owned(srv.args(&["--size=32m", "--blockSize=16k", "--blockCacheSize=0"]), &s.mnt());
    write_synced(&m.file(), 0, &a);
    let m = if through_daemon {
        daemon_snapshot(&srv, &[], "before");
        m
    } else {
        assert_eq!(m.unmount(), 0);
        srv.run(&["--snapshot=before"]);
        Mount::start_owned(srv.args(&["--blockCacheSize=0"]), &s.mnt())
    };
    let mut dd = dd_direct(&b_file, &m.file());
    wait_for(60, "first copies after the snapshot", || copies(&srv, 1) >= 100);
    m.kill9();
    let _ = dd.wait();
    let preserved = copies(&srv, 1);
    assert!(preserved < 2048, "the kill came before the end ({preserved} copies)");
    eprintln!("killed after {preserved} copies; index:\n{}", srv.index());

    assert_eq!(volume_sum(&srv, Some("before"), &d[0]), sha256_hex(&a), "the snapshot is as it was");
    let list = remount_after_kill(&srv, &s, &d[0], ("before", &sha256_hex(&a)), "after", |_| ());
    assert!(list.lines().nth(1).is_some_and(|l| l.starts_with("before")), "{list}");
}

/// After a kill -9: the volume mounts again with --force (`live` checks it, then a write
/// goes in), the snapshot `kept.0` still reads as the checksum `kept.1`, and the next
/// snapshot `next` repairs the bookkeeping (no writer left in the index). Returns the
/// `--listSnapshots` output.
fn remount_after_kill(
    srv: &Server,
    s: &Scratch,
    view: &Path,
    kept: (&str, &str),
    next: &str,
    live: impl FnOnce(&Mount),
) -> String {
    let m = Mount::start_owned(srv.args(&["--force"]), &s.mnt());
    live(&m);
    write_synced(&m.file(), 0, &pattern(1 << 20, 3));
    assert_eq!(m.unmount(), 0);
    assert_eq!(volume_sum(srv, Some(kept.0), view), kept.1);
    srv.run(&[&format!("--snapshot={next}")]);
    assert!(srv.index().lines().any(|l| l == "writer 00000000"), "{}", srv.index());
    let list = srv.run(&["--listSnapshots"]);
    assert_eq!(volume_sum(srv, Some(kept.0), view), kept.1);
    list
}

/// kill -9 of `--deleteSnapshot` of the middle of three snapshots half-way: the other two read
/// back exactly, the half-deleted one is no longer listed, and the next command finishes the
/// deletion (nothing of it is left on the server).
fn kill_during_delete(srv: Server) {
    let s = Scratch::new();
    let d = s.dirs(&["view"]);
    let size: usize = 32 << 20;
    let geometry = ["--size=32m", "--blockSize=4k", "--blockCacheSize=0"];
    let mut vol = pattern(size, 10);
    let m = Mount::start_owned(srv.args(&geometry), &s.mnt());
    write_synced(&m.file(), 0, &vol);
    assert_eq!(m.unmount(), 0);
    let one = sha256_hex(&vol);
    srv.run(&["--snapshot=one"]);
    // Half the blocks change before "two", all of them before "three".
    let m = Mount::start_owned(srv.args(&["--blockCacheSize=0"]), &s.mnt());
    let half = pattern(size / 2, 11);
    write_synced(&m.file(), 0, &half);
    assert_eq!(m.unmount(), 0);
    srv.run(&["--snapshot=two"]);
    let m = Mount::start_owned(srv.args(&["--blockCacheSize=0"]), &s.mnt());
    vol = pattern(size, 12);
    write_synced(&m.file(), 0, &vol);
    assert_eq!(m.unmount(), 0);
    let three = sha256_hex(&vol);
    srv.run(&["--snapshot=three"]);
    assert_eq!((copies(&srv, 1), copies(&srv, 2)), (4096, 8192));
    // Name, date, time, blocks held, blocks changed since.
    let list = srv.run(&["--listSnapshots"]);
    let rows: Vec<Vec<&str>> = list.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    let counts: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[3], r[4])).collect();
    assert_eq!(counts, [("one", "4096", "8192"), ("two", "8192", "8192"), ("three", "0", "0")], "{list}");

    // Deleting "two" hands its copies of the second half on to "one", then frees the rest. It
    // runs over a link that delays every request, so that it is still under way when the
    // listing below (sent directly, and slow itself on thousands of objects) sees it started.
    let link = slow_link(srv.port, std::time::Duration::from_millis(25));
    let args: Vec<String> = srv
        .args(&["--deleteSnapshot=two"])
        .into_iter()
        .map(|a| if a.starts_with("--baseURL=") { format!("--baseURL=http://127.0.0.1:{link}/") } else { a })
        .collect();
    let mut del = Command::new(bin()).args(args).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for(60, "the deletion to be under way", || {
        try_copies(&srv, 1).is_some_and(|n| n > 4096) || try_copies(&srv, 2).is_some_and(|n| n < 8192)
    });
    del.kill().unwrap();
    let _ = del.wait();
    let idx = srv.index();
    assert!(idx.contains(" deleting "), "the kill came half-way:\n{idx}");
    eprintln!("killed with {} and {} copies", copies(&srv, 1), copies(&srv, 2));

    let list = srv.run(&["--listSnapshots"]);
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["one", "three"], "{list}");
    assert_eq!(volume_sum(&srv, Some("one"), &d[0]), one);
    assert_eq!(volume_sum(&srv, Some("three"), &d[0]), three);
    let mut a = srv.args(&["--quiet", "--readOnly", "--fromSnapshot=two", "-f"]);
    a.push(d[0].to_string_lossy().into_owned());
    let line = one_error_line(Command::new(bin()).args(a));
    assert!(line.contains("no snapshot named \"two\""), "{line}");

    // The next command finishes it (with --force: the killed command left its mount token, as
    // a killed mount does).
    srv.run(&["--force", "--snapshot=four"]);
    assert!(!srv.index().contains(" deleting "), "{}", srv.index());
    assert_eq!(copies(&srv, 2), 0);
    assert!(!srv.keys().iter().any(|k| k == "s3backer-snapmap/00000002"));
    assert_eq!(copies(&srv, 1), 8192, "one holds every block now");
    assert_eq!(volume_sum(&srv, Some("one"), &d[0]), one);
    assert_eq!(volume_sum(&srv, Some("three"), &d[0]), three);
    assert_eq!(volume_sum(&srv, None, &d[0]), three);
}

/// `--nbd --readOnly --fromSnapshot` serves the snapshot while the live volume is mounted and
/// being changed: nbdcopy reads back exactly the snapshot.
#[test]
fn nbd_serves_a_snapshot_beside_the_live_mount_on_garage() {
    let srv = garage();
    let s = Scratch::new();
    let a = pattern(8 << 20, 21);
    let m = Mount::start_owned(srv.args(&["--size=8m", "--blockSize=64k"]), &s.mnt());
    write_synced(&m.file(), 0, &a);
    assert_eq!(m.unmount(), 0);
    srv.run(&["--snapshot=img"]);
    let live = Mount::start_owned(srv.args(&[]), &s.mnt());
    let b = pattern(4 << 20, 22);
    write_synced(&live.file(), 1 << 20, &b);
    let sock = s.path("sock");
    let nbd = nbd_common::NbdServer::start(&srv.args(&["--readOnly", "--fromSnapshot=img"]), &sock);
    let back = s.path("back");
    cmd("nbdcopy", &[&nbd.uri(), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == a, "the snapshot served over NBD differs");
    assert_eq!(nbd.stop(), 0);
    let now = std::fs::read(live.file()).unwrap();
    assert!(now[1 << 20..5 << 20] == b[..] && now[..1 << 20] == a[..1 << 20]);
    assert_eq!(live.unmount(), 0);
}

/// `--snapshot=NAME` (with `extra` flags) of a mounted volume: taken by its daemon, said in one
/// line; returns how long the command took.
fn daemon_snapshot(srv: &Server, extra: &[&str], name: &str) -> std::time::Duration {
    let flag = format!("--snapshot={name}");
    let mut a = extra.to_vec();
    a.push(&flag);
    let start = std::time::Instant::now();
    let out = Command::new(bin()).args(srv.args(&a)).stdin(Stdio::null()).output().expect("run s3backer");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--snapshot={name}: {err}");
    assert!(err.contains(&format!("took snapshot \"{name}\"")) && err.contains("through its daemon"), "{err}");
    took
}

/// The ext4 on a directory frozen (`fsfreeze -f`) until dropped.
struct Frozen(PathBuf);

impl Frozen {
    fn new(dir: &Path) -> Frozen {
        sh(&format!("fsfreeze -f {}", dir.display()));
        Frozen(dir.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}

/// Snapshots of a mounted ext4 through the daemon, as the man page advises: write, freeze,
/// snapshot, unfreeze, write more, snapshot again. One snapshot is mounted read-only with
/// FUSE, the other served read-only over NBD, beside the live mount: every file as it was at
/// its snapshot, e2fsck clean; mistakes through the socket get one line each.
fn live_snapshots_of_ext4(srv: Server, flags: &[&str]) {
    let s = Scratch::new();
    let d = s.dirs(&["snap1", "snap1fs", "snap2fs"]);
    let mut live_flags = vec!["--size=64m", "--blockSize=64k"];
    live_flags.extend_from_slice(flags);
    let live = Mount::start_owned(srv.args(&live_flags), &s.mnt());
    let e = Ext4::create(&live.file(), &s.ext4());
    let t1 = write_tree(&s.ext4(), 60, 1);
    let took1 = {
        let _frozen = Frozen::new(&s.ext4());
        daemon_snapshot(&srv, &[], "one")
    };
    let t2 = second_round(&s.ext4(), &t1, 2);
    let took2 = {
        let _frozen = Frozen::new(&s.ext4());
        daemon_snapshot(&srv, &[], "two")
    };
    eprintln!("snapshots of the mounted volume took {took1:?} and {took2:?}");
    let t3 = second_round(&s.ext4(), &t2, 3);
    sh("sync");

    let (m1, e1) = mount_snapshot(&srv, flags, "one", &d[0], &d[1]);
    check_tree(&d[1], &t1);
    let mut nbd_flags = vec!["--readOnly", "--fromSnapshot=two"];
    nbd_flags.extend_from_slice(flags);
    let sock = s.path("nbd.sock");
    let nbd = nbd_common::NbdServer::start(&srv.args(&nbd_flags), &sock);
    let img = s.path("two.img");
    cmd("nbdcopy", &[&nbd.uri(), img.to_str().unwrap()]);
    assert_eq!(nbd.stop(), 0);
    fsck_clean(&img);
    sh(&format!("mount -o loop,ro {} {}", img.display(), d[2].display()));
    let e2 = Ext4 { dir: d[2].clone() };
    check_tree(&d[2], &t2);
    check_tree(&s.ext4(), &t3);
    check_tree(&d[1], &t1);

    for (extra, needle) in [
        ("--snapshot=one", "a snapshot named \"one\" exists already"),
        ("--deleteSnapshot=nope", "no snapshot named \"nope\""),
    ] {
        let line = one_error_line(Command::new(bin()).args(srv.args(&["--quiet", extra])));
        assert!(line.contains(needle), "{extra}: {line}");
    }
    e2.unmount();
    e1.unmount();
    assert_eq!(m1.unmount(), 0);
    // Deleted through the daemon while it writes: "two" still reads back.
    let out = srv.run(&["--deleteSnapshot=one"]);
    assert!(out.is_empty(), "{out}");
    let t4 = second_round(&s.ext4(), &t3, 4);
    sh("sync");
    let list = srv.run(&["--listSnapshots"]);
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["two"], "{list}");
    let (m2, e2) = mount_snapshot(&srv, flags, "two", &d[0], &d[1]);
    check_tree(&d[1], &t2);
    e2.unmount();
    assert_eq!(m2.unmount(), 0);
    e.unmount();
    assert_eq!(live.unmount(), 0);
    let live = Mount::start_owned(srv.args(flags), &s.mnt());
    checked_ext4(&live, &s, &t4).unmount();
    assert_eq!(live.unmount(), 0);
}

/// kill -9 of the daemon right after it took a snapshot through its socket, with writes the
/// snapshot request flushed out of the block cache: the snapshot holds them, the volume
/// mounts again (--force) with everything, and the next command repairs the bookkeeping.
fn kill_right_after_a_daemon_snapshot(srv: Server) {
    let s = Scratch::new();
    let d = s.dirs(&["view"]);
    let size = 8 << 20;
    let mut vol = pattern(size, 31);
    let m = Mount::start_owned(srv.args(&["--size=8m", "--blockSize=16k"]), &s.mnt());
    write_synced(&m.file(), 0, &vol);
    // Written, not synced: in the daemon's block cache when the snapshot is asked for.
    let late = pattern(1 << 20, 32);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
        f.write_all_at(&late, 3 << 20).unwrap();
    }
    vol[3 << 20..4 << 20].copy_from_slice(&late);
    daemon_snapshot(&srv, &[], "now");
    m.kill9();
    assert!(srv.index().lines().any(|l| l.ends_with(" now")), "{}", srv.index());
    assert_eq!(volume_sum(&srv, Some("now"), &d[0]), sha256_hex(&vol), "the snapshot holds the flushed writes");
    let live = |m: &Mount| assert!(std::fs::read(m.file()).unwrap() == vol, "the live volume after the crash");
    let list = remount_after_kill(&srv, &s, &d[0], ("now", &sha256_hex(&vol)), "later", live);
    let rows: Vec<Vec<&str>> = list.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.iter().map(|r| (r[0], r[4])).collect::<Vec<_>>(), [("now", "64"), ("later", "0")], "{list}");
}

/// The blocks `nbdinfo --map=CONTEXT` reports with flag 1, in blocks of `bs` bytes.
fn mapped_blocks(uri: &str, context: &str, bs: u64) -> std::collections::BTreeSet<u64> {
    let out = cmd("nbdinfo", &[&format!("--map={context}"), uri]);
    let mut set = std::collections::BTreeSet::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(off), Some(len), Some(flags)) = (f.first(), f.get(1), f.get(2)) else { continue };
        let (off, len, flags): (u64, u64, u32) = (off.parse().unwrap(), len.parse().unwrap(), flags.parse().unwrap());
        if flags & 1 == 1 {
            set.extend(off / bs..(off + len).div_ceil(bs));
        }
    }
    set
}

/// Changed-block tracking over NBD: the live export offers `qemu:dirty-bitmap:NAME` for each
/// snapshot, and `nbdinfo --map` of one lists exactly the blocks the test wrote since it
/// (whole, partial and zero writes, some still in the block cache), as `--listSnapshots`
/// counts them.
fn dirty_bitmaps_over_nbd(srv: Server) {
    let s = Scratch::new();
    let sock = s.path("live.sock");
    const BS: u64 = 64 << 10;
    let nbd = nbd_common::NbdServer::start(&srv.args(&["--size=16m", "--blockSize=64k"]), &sock);
    let uri = nbd.uri();
    let io = |cmds: &[String]| {
        let mut a = vec!["-f".to_string(), "raw".to_string()];
        for c in cmds {
            a.extend(["-c".to_string(), c.clone()]);
        }
        a.push(uri.clone());
        cmd("qemu-io", &a.iter().map(String::as_str).collect::<Vec<_>>());
    };
    io(&["write -P 1 0 16m".into(), "flush".into()]);
    daemon_snapshot(&srv, &[], "a");
    let mut since_a: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    // Whole blocks, a partial one, the last byte, a zeroed block; not flushed.
    io(&[
        format!("write -P 2 {} {}", 3 * BS, 2 * BS),
        format!("write -P 3 {} 100", 10 * BS + 10),
        format!("write -P 4 {} 1", 256 * BS - 1),
        format!("write -z {} {}", 50 * BS, BS),
    ]);
    since_a.extend([3, 4, 10, 255, 50]);
    assert_eq!(mapped_blocks(&uri, "qemu:dirty-bitmap:a", BS), since_a);
    daemon_snapshot(&srv, &[], "b");
    io(&[format!("write -P 5 {} {}", 7 * BS, BS), format!("write -P 6 {} {}", 10 * BS, BS)]);
    since_a.extend([7, 10]);
    let since_b: std::collections::BTreeSet<u64> = [7, 10].into_iter().collect();
    assert_eq!(mapped_blocks(&uri, "qemu:dirty-bitmap:a", BS), since_a);
    assert_eq!(mapped_blocks(&uri, "qemu:dirty-bitmap:b", BS), since_b);
    let list = srv.run(&["--listSnapshots"]);
    let rows: Vec<Vec<&str>> = list.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    let counts: Vec<(&str, usize)> = rows.iter().map(|r| (r[0], r[4].parse().unwrap())).collect();
    assert_eq!(counts, [("a", since_a.len()), ("b", since_b.len())], "{list}");
    // A context that is not there is refused by the client: nothing listed for it.
    let out = Command::new("nbdinfo").args(["--map=qemu:dirty-bitmap:zz", &uri]).output().unwrap();
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{out:?}");
    assert_eq!(nbd.stop(), 0);
}

on_each_server! {
    kill9_during_first_writes_after_a_snapshot => |srv| kill_during_first_writes(srv, false);
    kill9_during_first_writes_after_a_daemon_snapshot => |srv| kill_during_first_writes(srv, true);
    kill9_during_delete_snapshot => kill_during_delete;
    kill9_right_after_a_daemon_snapshot => kill_right_after_a_daemon_snapshot;
    dirty_bitmaps_over_nbd => dirty_bitmaps_over_nbd;
}

plain_and_encrypted_compressed! {
    snapshots_of_ext4 => snapshots_of_ext4;
    live_snapshots_of_ext4 => live_snapshots_of_ext4;
}
