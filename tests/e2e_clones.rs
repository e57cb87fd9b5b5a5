//! Writable clones end to end, as a user runs them, on Garage and on s3s-fs: ext4 on a volume,
//! a snapshot of it cloned (`--cloneOf=SOURCE@NAME`) and mounted, files written into the clone
//! while the source stays untouched (SHA-256 of every file); a clone of a public image served
//! by a plain web server, which sees only GET and HEAD; trims and zero writes that read as
//! zeros after a remount; `--flatten`, after which C s3backer 1.5.4 mounts the volume; kill -9
//! during a clone's first writes and half-way through a flatten; and every bad input refused
//! with one line and nothing written.

mod common;
mod nbd_common;
use common::*;
use s3b_testkit::garage::BUCKET;
use s3b_testkit::public_http::{PublicServer, objects_from_dir};
use std::path::Path;
use std::process::{Command, Stdio};

const C_S3BACKER: &str = "/usr/bin/s3backer";

impl Server {
    /// Our flags for this server, `extra`, then the volume `BUCKET/sub`.
    fn args(&self, sub: &str, extra: &[&str]) -> Vec<String> {
        let mut a = self.flags.clone();
        a.extend(strings(extra));
        a.push(format!("{BUCKET}/{sub}"));
        a
    }

    /// [`Server::args`] with the requests sent to 127.0.0.1:`port` instead (a slow link).
    fn args_via(&self, port: u16, sub: &str, extra: &[&str]) -> Vec<String> {
        let url = format!("--baseURL=http://127.0.0.1:{port}/");
        self.args(sub, extra).into_iter().map(|a| if a.starts_with("--baseURL=") { url.clone() } else { a }).collect()
    }

    /// Runs a command of ours on `BUCKET/sub` to completion; returns its stdout.
    fn run(&self, sub: &str, extra: &[&str]) -> String {
        let what = format!("s3backer {extra:?} {sub}");
        checked_output(Command::new(bin()).args(self.args(sub, extra)).stdin(Stdio::null()), &what)
    }

    /// The one error line of a command of ours on `BUCKET/sub` that must fail.
    fn refused(&self, sub: &str, extra: &[&str], mnt: Option<&Path>) -> String {
        let mut a = self.args(sub, extra);
        if let Some(m) = mnt {
            a.push("-f".into());
            a.push(m.to_string_lossy().into_owned());
        }
        one_error_line(Command::new(bin()).args(a).stdin(Stdio::null()))
    }

    /// Every key in the bucket (a listing that fails while objects come and go is sent again).
    fn keys(&self) -> Vec<String> {
        loop {
            if let Ok(keys) = s3b_testkit::garage::try_list_keys_at(self.port, BUCKET) {
                return keys;
            }
        }
    }

    /// How many block objects the volume `BUCKET/sub` has (by a LIST).
    fn blocks(&self, sub: &str) -> usize {
        let p = format!("{sub}/");
        self.keys()
            .iter()
            .filter_map(|k| k.strip_prefix(&p))
            .filter(|k| k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()))
            .count()
    }

    /// C s3backer 1.5.4 mounted read-only on `BUCKET/sub` (`extra`: geometry, codec flags).
    fn c_mount(&self, sub: &str, extra: &[&str], mnt: &Path) -> Mount {
        let mut a = self.flags.clone();
        a.extend(strings(&["--readOnly", &format!("--prefix={sub}/"), "-f"]));
        a.extend(strings(extra));
        a.push(BUCKET.into());
        a.push(mnt.to_string_lossy().into_owned());
        Mount::start_program(C_S3BACKER, &a, mnt)
    }

    /// C s3backer 1.5.4 reads `BUCKET/sub` (see [`Self::c_mount`]) as an ext4 holding `tree`,
    /// e2fsck clean, loop-mounted read-only on `dir`; everything unmounted after.
    fn c_reads_tree(&self, sub: &str, extra: &[&str], mnt: &Path, dir: &Path, tree: &[(String, String)]) {
        let cm = self.c_mount(sub, extra, mnt);
        fsck_clean(&cm.file());
        sh(&format!("mount -o loop,ro {} {}", cm.file().display(), dir.display()));
        let ce = Ext4 { dir: dir.to_path_buf() };
        check_tree(dir, tree);
        ce.unmount();
        assert_eq!(cm.unmount(), 0);
    }
}

/// Removes every third file of `tree` under `root`; returns what is left.
fn remove_some(root: &Path, tree: &[(String, String)]) -> Vec<(String, String)> {
    let mut left = Vec::new();
    for (i, (rel, sum)) in tree.iter().enumerate() {
        if i % 3 == 0 {
            std::fs::remove_file(root.join(rel)).unwrap();
        } else {
            left.push((rel.clone(), sum.clone()));
        }
    }
    left
}

/// Files under `sub` of a tree, with their paths relative to the tree's root.
fn under(sub: &str, tree: Vec<(String, String)>) -> Vec<(String, String)> {
    tree.into_iter().map(|(rel, sum)| (format!("{sub}/{rel}"), sum)).collect()
}

/// A FUSE mount of our program and the ext4 inside it, read-only or not.
fn ext4_of(args: Vec<String>, mnt: &Path, dir: &Path, read_only: bool) -> (Mount, Ext4) {
    let m = Mount::start_owned(args, mnt);
    if read_only {
        fsck_clean(&m.file());
        sh(&format!("mount -o loop,ro {} {}", m.file().display(), dir.display()));
        return (m, Ext4 { dir: dir.to_path_buf() });
    }
    let e = Ext4::mount(&m.file(), dir);
    (m, e)
}

/// Checks the ext4 of `m` against `tree` and e2fsck, and unmounts both.
fn check_and_unmount(m: Mount, e: Ext4, tree: &[(String, String)]) {
    check_tree(&e.dir, tree);
    e.unmount();
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

fn clone_of_a_snapshot(srv: Server, codec: &[&str]) {
    let s = Scratch::new();
    let d = s.dirs(&["m2", "fs2"]);
    let geometry = ["--size=64m", "--blockSize=64k"];

    // The source: ext4, files, snapshot "base"; then more changes on the live volume.
    let m = Mount::start_owned(srv.args("src", &[&geometry[..], codec].concat()), &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let t1 = write_tree(&s.ext4(), 60, 1);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    srv.run("src", &["--snapshot=base"]);
    let (live, e) = ext4_of(srv.args("src", codec), &s.mnt(), &s.ext4(), false);
    let mut t2 = remove_some(&s.ext4(), &t1);
    t2.extend(under("after", write_tree(&s.ext4().join("after"), 20, 2)));
    sh("sync");

    // The clone, made by its first mount while the source is mounted and written beside it.
    let of = format!("--cloneOf={BUCKET}/src@base");
    let (c, ce) = ext4_of(srv.args("clone", &[&[of.as_str()][..], codec].concat()), &d[0], &d[1], false);
    check_tree(&d[1], &t1);
    let mut t3 = remove_some(&d[1], &t1);
    t3.extend(under("mine", write_tree(&d[1].join("mine"), 40, 3)));
    ce.unmount();
    let st = c.stats();
    assert!(stat_value(&st, "clone_base_reads") > 0, "{st}");
    assert_eq!(c.unmount(), 0);
    assert!(srv.keys().contains(&"clone/s3backer-clone".to_string()));

    // Later mounts need no flag; the source and its snapshot are untouched.
    let (c, ce) = ext4_of(srv.args("clone", codec), &d[0], &d[1], true);
    check_and_unmount(c, ce, &t3);
    check_tree(&s.ext4(), &t2);
    e.unmount();
    assert_eq!(live.unmount(), 0);
    let from = ["--readOnly", "--fromSnapshot=base"];
    let (m, e) = ext4_of(srv.args("src", &[&from[..], codec].concat()), &s.mnt(), &s.ext4(), true);
    check_and_unmount(m, e, &t1);
    let (m, e) = ext4_of(srv.args("src", &[&["--readOnly"][..], codec].concat()), &s.mnt(), &s.ext4(), true);
    check_and_unmount(m, e, &t2);

    // Flattened, it no longer needs its base: the snapshot is deleted, C s3backer mounts it.
    let out = checked_output(
        Command::new(bin())
            .args(srv.args("clone", &[&["--flatten"][..], codec].concat()))
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
        "--flatten",
    );
    eprintln!("{out}");
    assert!(!srv.keys().contains(&"clone/s3backer-clone".to_string()));
    srv.run("src", &["--deleteSnapshot=base"]);
    let (c, ce) = ext4_of(srv.args("clone", &[&["--readOnly"][..], codec].concat()), &d[0], &d[1], true);
    check_and_unmount(c, ce, &t3);
    srv.c_reads_tree("clone", &[&geometry[..], codec].concat(), &d[0], &d[1], &t3);
}

/// A clone of a public image on a plain web server (no credentials; it refuses listings and
/// writes): files written into the clone, read back after a remount, the server sees only GET
/// and HEAD, also during the flatten; C s3backer mounts the flattened clone.
#[test]
fn clone_of_a_public_image_on_garage() {
    let srv = garage();
    let s = Scratch::new();
    let d = s.dirs(&["m2", "fs2"]);
    let m = Mount::start(&["--test", "--size=64m", "--blockSize=64k", s.store().to_str().unwrap()], &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let t1 = write_tree(&s.ext4(), 50, 11);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    let objects = objects_from_dir(&s.store());
    let web = PublicServer::start("pubvol", objects);
    let url = format!("--cloneBaseURL={}", web.base_url());

    let (c, ce) = ext4_of(srv.args("img", &["--cloneOf=pubvol", &url, "--size=64m"]), &d[0], &d[1], false);
    check_tree(&d[1], &t1);
    let mut t2 = remove_some(&d[1], &t1);
    t2.extend(under("mine", write_tree(&d[1].join("mine"), 30, 12)));
    ce.unmount();
    assert_eq!(c.unmount(), 0);
    let (c, ce) = ext4_of(srv.args("img", &[]), &d[0], &d[1], true);
    check_and_unmount(c, ce, &t2);
    let counts = web.method_counts();
    assert!(counts.keys().all(|m| m == "GET" || m == "HEAD"), "{counts:?}");

    srv.run("img", &["--flatten"]);
    let counts = web.method_counts();
    assert!(counts.keys().all(|m| m == "GET" || m == "HEAD"), "{counts:?}");
    let writes = web.requests().iter().filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD ")).count();
    assert_eq!(writes, 0);
    drop(web);
    srv.c_reads_tree("img", &["--size=64m", "--blockSize=64k"], &d[0], &d[1], &t2);
}

/// Zero writes and trims (a punched hole) in a clone read as zeros after a remount, though the
/// base has data there; the same over NBD; and after a flatten, in C s3backer too.
#[test]
fn zeros_and_trims_in_a_clone_read_as_zeros_after_remount_on_garage() {
    let srv = garage();
    let s = Scratch::new();
    let size: usize = 8 << 20;
    let base = pattern(size, 31);
    let m = Mount::start_owned(srv.args("src", &["--size=8m", "--blockSize=64k"]), &s.mnt());
    write_synced(&m.file(), 0, &base);
    assert_eq!(m.unmount(), 0);
    srv.run("src", &["--snapshot=img"]);

    // Made and written over NBD.
    let sock = s.path("sock");
    let of = format!("--cloneOf={BUCKET}/src@img");
    let nbd = nbd_common::NbdServer::start(&srv.args("clone", &[&of]), &sock);
    let back = s.path("back");
    cmd("nbdcopy", &[&nbd.uri(), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == base, "the new clone does not read as its base over NBD");
    let head = s.path("head");
    std::fs::write(&head, pattern(1 << 20, 32)).unwrap();
    python(
        r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); m = 1 << 20
h.pwrite(open(sys.argv[2], 'rb').read(), 0)
h.trim(m, 6 * m)
h.zero(m, 7 * m)
h.flush()
assert h.pread(m, 6 * m) == bytes(m) and h.pread(m, 7 * m) == bytes(m)
h.shutdown()
"#,
        &[&nbd.uri(), head.to_str().unwrap()],
    );
    assert_eq!(nbd.stop(), 0);
    let mut want = base.clone();
    want[..1 << 20].copy_from_slice(&pattern(1 << 20, 32));
    want[6 << 20..8 << 20].fill(0);

    // Over FUSE: a zero write and a punched hole.
    let m = Mount::start_owned(srv.args("clone", &[]), &s.mnt());
    write_synced(&m.file(), 2 << 20, &vec![0u8; 1 << 20]);
    sh(&format!("fallocate -p -o {} -l {} {}", 4 << 20, 1 << 20, m.file().display()));
    let st = m.stats();
    assert!(stat_value(&st, "clone_zero_markers") > 0, "{st}");
    assert_eq!(m.unmount(), 0);
    want[2 << 20..3 << 20].fill(0);
    want[4 << 20..5 << 20].fill(0);
    drop_caches();
    let m = Mount::start_owned(srv.args("clone", &["--readOnly"]), &s.mnt());
    assert!(std::fs::read(m.file()).unwrap() == want, "the clone does not read back as written");
    assert_eq!(m.unmount(), 0);
    let m = Mount::start_owned(srv.args("src", &["--readOnly", "--fromSnapshot=img"]), &s.mnt());
    assert!(std::fs::read(m.file()).unwrap() == base, "the base changed");
    assert_eq!(m.unmount(), 0);

    srv.run("clone", &["--flatten"]);
    assert!(!srv.keys().iter().any(|k| k.starts_with("clone/s3backer-clone")));
    let cm = srv.c_mount("clone", &["--size=8m", "--blockSize=64k"], &s.mnt());
    assert!(std::fs::read(cm.file()).unwrap() == want, "C s3backer reads the flattened clone differently");
    assert_eq!(cm.unmount(), 0);
}

/// Reads the whole volume `BUCKET/sub` (read-only, `--force`: a killed process left its mount
/// token) and returns it.
fn read_volume(srv: &Server, sub: &str, extra: &[&str], mnt: &Path) -> Vec<u8> {
    let mut a = vec!["--readOnly", "--force"];
    a.extend_from_slice(extra);
    let m = Mount::start_owned(srv.args(sub, &a), mnt);
    let data = std::fs::read(m.file()).unwrap();
    assert_eq!(m.unmount(), 0);
    data
}

/// kill -9 of the daemon during a clone's first writes: every block reads as either the base's
/// or the new data, the base is untouched, and the clone mounts again and takes writes.
fn kill_during_first_writes(srv: Server) {
    let s = Scratch::new();
    let size: usize = 32 << 20;
    let bs: usize = 16 << 10;
    let a = pattern(size, 41);
    let b = pattern(size, 42);
    let b_file = s.path("b.bin");
    std::fs::write(&b_file, &b).unwrap();
    let m = Mount::start_owned(srv.args("src", &["--size=32m", "--blockSize=16k", "--blockCacheSize=0"]), &s.mnt());
    write_synced(&m.file(), 0, &a);
    assert_eq!(m.unmount(), 0);
    srv.run("src", &["--snapshot=base"]);

    // Over a latency link, so that the kill lands while the writes are under way.
    let of = format!("--cloneOf={BUCKET}/src@base");
    let link = slow_link(srv.port, std::time::Duration::from_millis(30));
    let m = Mount::start_owned(srv.args_via(link, "clone", &[&of, "--blockCacheSize=0"]), &s.mnt());
    let mut dd = Command::new("dd")
        .arg(format!("if={}", b_file.display()))
        .arg(format!("of={}", m.file().display()))
        .args(["bs=1M", "oflag=direct", "conv=notrunc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(60, "the clone's first writes", || srv.blocks("clone") >= 100);
    m.kill9();
    let _ = dd.wait();
    let written = srv.blocks("clone");
    assert!(written < size / bs, "the kill came before the end ({written} blocks)");
    eprintln!("killed after {written} blocks were written into the clone");

    let now = read_volume(&srv, "clone", &[], &s.mnt());
    let (mut old, mut new) = (0, 0);
    for (i, chunk) in now.chunks(bs).enumerate() {
        let r = i * bs..(i + 1) * bs;
        if chunk == &b[r.clone()] {
            new += 1;
        } else {
            assert!(chunk == &a[r], "block {i} is neither the base's nor the new data");
            old += 1;
        }
    }
    assert!(new > 0 && old > 0, "{new} new, {old} old");
    assert!(read_volume(&srv, "src", &["--fromSnapshot=base"], &s.mnt()) == a, "the base changed");
    let m = Mount::start_owned(srv.args("clone", &["--force"]), &s.mnt());
    let c = pattern(1 << 20, 43);
    write_synced(&m.file(), 0, &c);
    assert_eq!(m.unmount(), 0);
    let mut want = now;
    want[..1 << 20].copy_from_slice(&c);
    assert!(read_volume(&srv, "clone", &[], &s.mnt()) == want);
}

/// kill -9 of `--flatten` half-way (over a latency link, so that it is still copying): the
/// clone reads exactly as before at that point, and the next `--flatten` finishes it, after
/// which C s3backer reads the same volume.
fn kill_during_flatten(srv: Server) {
    let s = Scratch::new();
    let size: usize = 16 << 20;
    let a = pattern(size, 51);
    let m = Mount::start_owned(srv.args("src", &["--size=16m", "--blockSize=4k", "--blockCacheSize=0"]), &s.mnt());
    write_synced(&m.file(), 0, &a);
    assert_eq!(m.unmount(), 0);
    srv.run("src", &["--snapshot=base"]);
    let of = format!("--cloneOf={BUCKET}/src@base");
    let m = Mount::start_owned(srv.args("clone", &[&of]), &s.mnt());
    let mut want = a.clone();
    let mine = pattern(1 << 20, 52);
    write_synced(&m.file(), 3 << 20, &mine);
    write_synced(&m.file(), 5 << 20, &vec![0u8; 1 << 20]);
    want[3 << 20..4 << 20].copy_from_slice(&mine);
    want[5 << 20..6 << 20].fill(0);
    assert_eq!(m.unmount(), 0);
    let before = srv.blocks("clone");

    let link = slow_link(srv.port, std::time::Duration::from_millis(40));
    let mut flat = Command::new(bin())
        .args(srv.args_via(link, "clone", &["--flatten"]))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(120, "the flatten to be under way", || srv.blocks("clone") > before + 300);
    flat.kill().unwrap();
    let _ = flat.wait();
    let copied = srv.blocks("clone") - before;
    assert!(copied < 4096 - 512, "the kill came half-way ({copied} copied)");
    assert!(srv.keys().contains(&"clone/s3backer-clone".to_string()));
    eprintln!("killed after {copied} blocks were copied");
    assert!(read_volume(&srv, "clone", &[], &s.mnt()) == want, "the half-flattened clone reads wrong");

    let out = Command::new(bin()).args(srv.args("clone", &["--flatten", "--force"])).stdin(Stdio::null()).output();
    let out = out.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let summary = err.lines().last().unwrap_or_default();
    eprintln!("{summary}");
    assert!(summary.starts_with("s3backer: flattened ") && summary.contains(" base blocks "), "{err}");
    assert!(!srv.keys().iter().any(|k| k.starts_with("clone/s3backer-clone")), "bookkeeping is left");
    assert!(!srv.keys().contains(&"clone/s3backer-clone".to_string()));
    assert!(read_volume(&srv, "clone", &[], &s.mnt()) == want);
    srv.run("src", &["--deleteSnapshot=base"]);
    let cm = srv.c_mount("clone", &["--size=16m", "--blockSize=4k"], &s.mnt());
    assert!(std::fs::read(cm.file()).unwrap() == want, "C s3backer reads it differently");
    assert_eq!(cm.unmount(), 0);
}

/// Every mistake gets one line, a non-zero exit, and nothing is written to the bucket.
#[test]
fn bad_clone_input_is_refused_with_one_line_and_nothing_written_on_garage() {
    let srv = garage();
    let s = Scratch::new();
    let mnt = s.mnt();
    let m = Mount::start_owned(srv.args("src", &["--size=4m", "--blockSize=64k"]), &mnt);
    write_synced(&m.file(), 0, &pattern(1 << 20, 61));
    assert_eq!(m.unmount(), 0);
    srv.run("src", &["--snapshot=base"]);
    let of = format!("--cloneOf={BUCKET}/src@base");
    let m = Mount::start_owned(srv.args("clone", &[&of]), &mnt);
    assert_eq!(m.unmount(), 0);
    let m = Mount::start_owned(srv.args("plain", &["--size=4m", "--blockSize=64k"]), &mnt);
    write_synced(&m.file(), 0, &pattern(1 << 16, 62));
    assert_eq!(m.unmount(), 0);

    let keys = srv.keys();
    let other = format!("--cloneOf={BUCKET}/src");
    let chain = format!("--cloneOf={BUCKET}/clone");
    let nope = format!("--cloneOf={BUCKET}/src@nope");
    let empty = format!("--cloneOf={BUCKET}/nothing");
    let itself = format!("--cloneOf={BUCKET}/new");
    for (sub, extra, needle) in [
        ("new", vec![nope.as_str()], "no snapshot named \"nope\""),
        ("new", vec![empty.as_str()], "has no block 0"),
        ("new", vec![chain.as_str()], "is itself a clone"),
        ("new", vec![itself.as_str()], "names"),
        ("new", vec![of.as_str(), "--readOnly"], "cannot be --readOnly"),
        ("new", vec![of.as_str(), "--size=8m"], "has size"),
        ("plain", vec![of.as_str()], "already holds a volume"),
        ("new", vec![of.as_str(), "--encrypt", "--password=x"], "is not encrypted: --encrypt cannot be used"),
        ("clone", vec![other.as_str()], "is already a clone of"),
        ("clone", vec!["--size=8m"], "the clone's size is"),
    ] {
        let line = srv.refused(sub, &extra, Some(&mnt));
        assert!(line.contains(needle), "{sub} {extra:?}: {line}");
    }
    for (sub, extra, needle) in [
        ("src", vec!["--flatten"], "is not a clone"),
        ("clone", vec!["--snapshot=x"], "is a clone"),
        ("clone", vec!["--listSnapshots", "--flatten"], "cannot be used"),
    ] {
        let line = srv.refused(sub, &extra, None);
        assert!(line.contains(needle), "{sub} {extra:?}: {line}");
    }
    assert_eq!(srv.keys(), keys, "a refused command wrote to the bucket");

    // The base taken again under the same name, then gone: the clone refuses to mount.
    srv.run("src", &["--deleteSnapshot=base"]);
    let line = srv.refused("clone", &[], Some(&mnt));
    assert!(line.contains("is missing"), "{line}");
    srv.run("src", &["--snapshot=base"]);
    let line = srv.refused("clone", &[], Some(&mnt));
    assert!(line.contains("changed since the clone was made"), "{line}");
    let line = srv.refused("clone", &["--flatten"], None);
    assert!(line.contains("changed since the clone was made"), "{line}");
}

on_each_server! {
    kill9_during_first_writes_of_a_clone => kill_during_first_writes;
    kill9_during_flatten => kill_during_flatten;
}

plain_and_encrypted_compressed! {
    clone_of_a_snapshot => clone_of_a_snapshot;
}
