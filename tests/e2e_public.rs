//! What upstream users rely on and a mount must not break: a public read-only disk image served
//! by a plain web server that refuses listings and checks no credentials, and least-privilege
//! keys that may read and write objects but not list the bucket. A mount sends only HEAD and
//! GET (read-only) or HEAD, GET, PUT and DELETE (read-write), as C s3backer does; only
//! `--listBlocks` and `--erase` list, and each copes with a refusal. The request methods each
//! program sent are printed, counted at the server, ours beside C s3backer 1.5.4's.

mod common;
use common::*;
use s3b_testkit::fault_proxy::FaultProxy;
use s3b_testkit::garage::{BUCKET, Garage};
use s3b_testkit::public_http::{Object, PublicServer, objects_from_dir};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const C_S3BACKER: &str = "/usr/bin/s3backer";
const PUBLIC_BUCKET: &str = "pubvol";

/// A command for `program` with no credentials anywhere: no flags, an empty home (no
/// ~/.s3backer_passwd, no ~/.aws), no AWS_* variables.
fn anonymous(program: &str, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", home);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// An [`anonymous`] `program` mounting the image of `server` read-only on the scratch mount
/// point in the foreground, with the flags `extra`.
fn public_mount(program: &str, home: &Path, server: &PublicServer, extra: &[&str], s: &Scratch) -> Command {
    let mut cmd = anonymous(program, home);
    cmd.args(["-f", "--readOnly"]).args(extra);
    cmd.args([&format!("--baseURL={}", server.base_url()), PUBLIC_BUCKET, s.mnt().to_str().unwrap()]);
    cmd
}

/// Loop-mounts the `fs_type` file system in `m`'s file read-only on the scratch ext4 mount
/// point, checks every file of `tree` and unmounts it.
fn check_tree_read_only(m: &Mount, s: &Scratch, fs_type: &str, tree: &[(String, String)]) {
    sh(&format!("mount -t {fs_type} -o loop,ro {} {}", m.file().display(), s.ext4().display()));
    let e = Ext4 { dir: s.ext4() };
    check_tree(&s.ext4(), tree);
    e.unmount();
}

/// Mounts `program` read-only on the public server, loop-mounts the ext4 inside read-only and
/// checks every file; returns the server's method counts for that whole mount.
fn read_public_image(
    program: &str,
    extra: &[&str],
    objects: &BTreeMap<String, Object>,
    s: &Scratch,
    tree: &[(String, String)],
) -> BTreeMap<String, u64> {
    let server = PublicServer::start(PUBLIC_BUCKET, objects.clone());
    let home = s.path("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    let m = Mount::start_command(public_mount(program, &home, &server, extra, s), &s.mnt());
    check_tree_read_only(&m, s, "ext4", tree);
    assert_eq!(m.unmount(), 0);
    let counts = server.method_counts();
    eprintln!("{program} {extra:?}: requests at the public server: {counts:?}");
    counts
}

#[test]
fn public_read_only_image_mounts_without_credentials_and_sends_only_head_and_get() {
    let s = Scratch::new();
    // The image: ext4 written through our --test store, whose files are named like the keys.
    let m = Mount::start(&["--test", "--size=64m", "--blockSize=64k", s.store().to_str().unwrap()], &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 60, 15);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    let mut objects = objects_from_dir(&s.store());
    assert!(objects.len() > 10, "image has only {} objects", objects.len());

    // Size given on the command line, as with C s3backer.
    let ours = read_public_image(bin(), &["--size=64m", "--blockSize=64k"], &objects, &s, &tree);
    assert!(ours.keys().all(|m| m == "GET" || m == "HEAD"), "ours sent more than HEAD and GET: {ours:?}");
    assert!(ours.get("GET").copied().unwrap_or(0) > 10, "{ours:?}");

    // Without --blockSize: taken from block 0's length (it has no size metadata).
    let sized = read_public_image(bin(), &["--size=64m"], &objects, &s, &tree);
    assert!(sized.keys().all(|m| m == "GET" || m == "HEAD"), "{sized:?}");

    // The same image from C s3backer 1.5.4, for comparison.
    let c = read_public_image(C_S3BACKER, &["--size=64m", "--blockSize=64k"], &objects, &s, &tree);
    assert!(c.keys().all(|m| m == "GET" || m == "HEAD"), "{c:?}");

    // A server that returns s3backer's size headers on block 0: auto-detected, no size flags.
    let block0 = objects.entry("00000000".into()).or_default();
    block0.headers.push(("x-amz-meta-s3backer-blocksize".into(), "65536".into()));
    block0.headers.push(("x-amz-meta-s3backer-filesize".into(), (64u64 << 20).to_string()));
    let detected = read_public_image(bin(), &[], &objects, &s, &tree);
    assert!(detected.keys().all(|m| m == "GET" || m == "HEAD"), "{detected:?}");

    // Without the size headers and without --size: one clear line, nothing else sent.
    let server = PublicServer::start(PUBLIC_BUCKET, BTreeMap::new());
    let home = s.path("empty-home");
    let line = one_error_line(&mut public_mount(bin(), &home, &server, &[], &s));
    assert!(line.contains("--size is required"), "{line}");
    // The GET is of the clone record (a public image is no clone), the HEAD of block 0.
    assert_eq!(server.method_counts().keys().collect::<Vec<_>>(), vec!["GET", "HEAD"]);
}

/// Garage behind a proxy that refuses every listing with 403 AccessDenied, as a bucket policy
/// granting only s3:GetObject, s3:PutObject and s3:DeleteObject does.
fn no_list_proxy(g: &Garage) -> FaultProxy {
    let p = FaultProxy::counting(g.port);
    p.set_deny_listing(true);
    p
}

fn flags(g: &Garage, p: &FaultProxy, extra: &[&str]) -> Vec<String> {
    let mut a = g.s3backer_flags_at(&p.base_url());
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(BUCKET.into());
    a
}

/// An ext4 round trip (mkfs, files written, unmount, remount, files read back) by `program`
/// through `p`; returns the methods the server saw for the whole round trip.
fn round_trip(
    program: &str,
    g: &Garage,
    p: &FaultProxy,
    extra: &[&str],
    s: &Scratch,
    seed: u64,
) -> BTreeMap<String, u64> {
    let before = p.method_counts();
    let a = flags(g, p, extra);
    let mut with_mnt = a.clone();
    with_mnt.extend(["-f".to_string(), s.mnt().to_string_lossy().into_owned()]);
    let m = Mount::start_program(program, &with_mnt, &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 40, seed);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    let m = Mount::start_program(program, &with_mnt, &s.mnt());
    drop_caches();
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), &tree);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    fsck_clean_via(program, &with_mnt, s);
    let mut diff = p.method_counts();
    for (k, v) in before {
        *diff.get_mut(&k).unwrap() -= v;
    }
    diff.retain(|_, v| *v > 0);
    eprintln!("{program}: requests at the server for an ext4 round trip: {diff:?}");
    diff
}

/// Mounts again and checks the file system with e2fsck.
fn fsck_clean_via(program: &str, with_mnt: &[String], s: &Scratch) {
    let m = Mount::start_program(program, with_mnt, &s.mnt());
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

#[test]
fn least_privilege_keys_that_may_not_list_work_and_list_blocks_degrades() {
    let g = Garage::start();
    let p = no_list_proxy(&g);
    let s = Scratch::new();
    let geometry = ["--size=64m", "--blockSize=64k"];

    let ours = round_trip(bin(), &g, &p, &[&geometry[..], &["--prefix=ours/"]].concat(), &s, 16);
    assert_eq!(p.listings_denied(), 0, "a plain mount listed the bucket");
    assert!(ours.keys().all(|m| ["GET", "HEAD", "PUT", "DELETE"].contains(&m.as_str())), "{ours:?}");

    // C s3backer 1.5.4, same work, for comparison.
    let c = round_trip(
        C_S3BACKER,
        &g,
        &p,
        &[&geometry[..], &["--prefix=c/", "--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0"]].concat(),
        &s,
        17,
    );
    assert!(c.keys().all(|m| ["GET", "HEAD", "PUT", "DELETE"].contains(&m.as_str())), "{c:?}");

    // --listBlocks: the survey is refused; one warning line and the mount goes on.
    let mut a = flags(&g, &p, &[&geometry[..], &["--prefix=ours/", "--listBlocks"]].concat());
    a.extend(["-f".to_string(), s.mnt().to_string_lossy().into_owned()]);
    let m = Mount::start_program(bin(), &a, &s.mnt());
    wait_for(30, "the refused survey's warning", || m.stderr().contains("block survey failed (--listBlocks"));
    assert!(p.listings_denied() > 0);
    fsck_clean(&m.file());
    let stderr = m.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("block survey failed (--listBlocks")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("access denied"), "{stderr}");
    assert_eq!(m.unmount(), 0);

    // --erase: a clear error, nothing deleted.
    let keys_before = g.list_keys(BUCKET);
    let line = one_error_line(Command::new(bin()).args(flags(&g, &p, &["--prefix=ours/", "--erase", "--force"])));
    assert!(line.contains("can't list the blocks") && line.contains("access denied"), "{line}");
    assert_eq!(g.list_keys(BUCKET), keys_before, "--erase deleted something");
}

/// The images people publish are usually squashfs or erofs: each, written through our `--test`
/// store into 64 KiB block objects, served by the plain web server without size metadata and
/// mounted with `--size` only. The block size comes from block 0's length (said in the log),
/// the kernel mounts the image read-only from the exported file, and every file reads back. A
/// `--blockSize` that contradicts block 0 is refused at mount with one line naming the size
/// found and the flag to give, before anything but a HEAD was sent.
#[test]
fn published_squashfs_and_erofs_images_mount_without_block_size() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    let tree = write_tree(&src, 40, 31);
    let home = s.path("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    for (fs_type, make) in [
        ("squashfs", vec!["mksquashfs", "SRC", "IMG", "-noappend", "-no-progress"]),
        ("erofs", vec!["mkfs.erofs", "IMG", "SRC"]),
    ] {
        let image = s.path(&format!("image.{fs_type}"));
        let store = s.path(&format!("store-{fs_type}"));
        std::fs::create_dir(&store).unwrap();
        let argv: Vec<String> = make
            .iter()
            .map(|a| match *a {
                "SRC" => src.to_string_lossy().into_owned(),
                "IMG" => image.to_string_lossy().into_owned(),
                a => a.to_string(),
            })
            .collect();
        cmd(&argv[0], &argv[1..].iter().map(String::as_str).collect::<Vec<_>>());
        let bytes = std::fs::read(&image).unwrap();
        assert!(bytes.len() < 8 << 20, "{fs_type} image too big: {}", bytes.len());
        // Published as s3backer would store it: 64 KiB blocks, zero blocks left out.
        let m = Mount::start(&["--test", "--size=8m", "--blockSize=64k", store.to_str().unwrap()], &s.mnt());
        write_synced(&m.file(), 0, &bytes);
        assert_eq!(m.unmount(), 0);
        let objects = objects_from_dir(&store);
        assert!(objects.contains_key("00000000"), "{fs_type}: no block 0");

        let server = PublicServer::start(PUBLIC_BUCKET, objects);
        let m = Mount::start_command(public_mount(bin(), &home, &server, &["--size=8m"], &s), &s.mnt());
        // The daemon logs its geometry just after the kernel has the mount.
        wait_for(30, "the mount's log line", || m.stderr().contains(" blocks of "));
        let log = m.stderr();
        assert!(log.contains("auto-detected block size=64k from the size of block 0"), "{fs_type}: {log}");
        assert!(log.contains("128 blocks of 65536 bytes"), "{fs_type}: {log}");
        check_tree_read_only(&m, &s, fs_type, &tree);
        assert_eq!(m.unmount(), 0);
        assert!(server.method_counts().keys().all(|m| m == "GET" || m == "HEAD"));

        // A contradicting --blockSize: one line, nothing but the GET of the clone record and the
        // HEAD of block 0.
        let server = PublicServer::start(PUBLIC_BUCKET, objects_from_dir(&store));
        let line = one_error_line(&mut public_mount(bin(), &home, &server, &["--size=8m", "--blockSize=4k"], &s));
        assert!(line.ends_with("block 0 is 65536 bytes, but the block size is 4k: give --blockSize=64k"), "{line}");
        assert_eq!(
            server.method_counts().into_iter().collect::<Vec<_>>(),
            vec![("GET".to_string(), 1), ("HEAD".to_string(), 1)]
        );
        assert!(!is_mounted(&s.mnt()));
    }
}
