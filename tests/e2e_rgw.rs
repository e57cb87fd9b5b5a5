//! End to end over Ceph's RADOS Gateway (RGW 16.2, s3b-testkit's single-host cluster with one
//! BlueStore OSD), the S3 server people self-host: ext4 round trips with e2fsck and size
//! auto-detection, the codecs (with C s3backer 1.5.4 on the same bucket both ways where it has
//! them), `--listBlocks`, `--erase`, discard, the block cache file across a kill -9, NBD, a
//! public read-only image, and racing mounts with RGW's conditional writes.
//!
//! One cluster serves every test of this file (starting one takes about 10 s); each test has
//! its own bucket.

mod common;
mod nbd_common;
use common::*;
use nbd_common::*;
use s3b_testkit::ceph::Ceph;
use std::sync::OnceLock;

static CLUSTER: OnceLock<Ceph> = OnceLock::new();

/// The shared cluster, started by the first test that needs it.
fn ceph() -> &'static Ceph {
    CLUSTER.get_or_init(|| Ceph::start_logged(1))
}

/// A fresh bucket for one test.
fn bucket(name: &str) -> String {
    ceph().create_bucket(name);
    name.to_string()
}

/// Our flags for `bucket` on RGW plus `extra`.
fn args(bucket: &str, extra: &[&str]) -> Vec<String> {
    volume_args(ceph().s3backer_flags(), extra, bucket)
}

fn mount(bucket: &str, extra: &[&str], s: &Scratch) -> Mount {
    Mount::start_owned(args(bucket, extra), &s.mnt())
}

/// A fresh bucket `name` for one test, a scratch directory, and our mount of the bucket with
/// `extra`.
fn new_volume(name: &str, extra: &[&str]) -> (String, Scratch, Mount) {
    let (b, s) = (bucket(name), Scratch::new());
    let m = mount(&b, extra, &s);
    (b, s, m)
}

#[test]
fn ext4_round_trip_with_auto_detect() {
    let (b, s, m) = new_volume("ext4", &["--size=64m", "--blockSize=64k"]);
    let tree = ext4_with_tree(&m, &s, 200, 7);
    let stats = m.stats();
    assert!(stat_value(&stats, "http_puts") > 0, "{stats}");
    assert_eq!(stat_value(&stats, "http_5xx_error"), 0, "{stats}");
    assert_eq!(m.unmount(), 0);
    assert!(!ceph().list_keys(&b).iter().any(|k| k == "s3backer-mounted"), "mount token left after unmount");

    drop_caches();
    let m = mount(&b, &[], &s);
    assert!(m.stderr().contains("auto-detected block size=64k and total size=64m"), "{}", m.stderr());
    checked_ext4(&m, &s, &tree).unmount();
    assert_eq!(m.unmount(), 0);
}

const C_S3BACKER: &str = "/usr/bin/s3backer";

/// Keys of `bucket` that are blocks (not the mount token).
fn block_keys(bucket: &str) -> Vec<String> {
    without_mount_token(ceph().list_keys(bucket))
}

/// The lower-cased response headers of a signed HEAD of `path` on RGW.
fn head(path: &str, s: &Scratch) -> String {
    let hdr = s.path("headers");
    let (code, _) = ceph().curl(&["-I", "-D", hdr.to_str().unwrap()], path);
    assert_eq!(code, 200, "HEAD {path}");
    std::fs::read_to_string(&hdr).unwrap().to_ascii_lowercase()
}

/// A password file for both programs.
fn pw_flag(s: &Scratch) -> String {
    password_flag(s, "rgw interop secret")
}

/// ext4 written and read back through our codecs that C 1.5.4 does not have (zstd, AES-GCM):
/// each stored object carries its encoding, which RGW keeps and returns.
#[test]
fn zstd_and_aes_gcm_ext4_round_trip() {
    for (name, flags, encoding) in [
        ("zstd", &["--compress=zstd"][..], "zstd"),
        ("gcm", &["--encrypt=AES-256-GCM"][..], "deflate, encrypt-aes-256-gcm"),
    ] {
        let b = bucket(&format!("codec-{name}"));
        let s = Scratch::new();
        let mut flags: Vec<&str> = flags.to_vec();
        let pw = pw_flag(&s);
        if name == "gcm" {
            flags.push(&pw);
        }
        let mut first = flags.clone();
        first.extend(["--size=32m", "--blockSize=32k"]);
        let m = mount(&b, &first, &s);
        let tree = ext4_with_tree(&m, &s, 60, 3);
        assert_eq!(m.unmount(), 0);
        let headers = head(&format!("{b}/00000000"), &s);
        assert!(headers.contains(&format!("content-encoding: {encoding}\r\n")), "{name}: {headers}");
        drop_caches();
        let m = mount(&b, &flags, &s);
        checked_ext4(&m, &s, &tree).unmount();
        assert_eq!(m.unmount(), 0);
    }
}

fn c_mount(bucket: &str, extra: &[&str], s: &Scratch) -> Mount {
    assert!(std::path::Path::new(C_S3BACKER).exists(), "C s3backer missing: apt-get install s3backer");
    let mut a = ceph().s3backer_flags();
    a.extend(strings(&["-f", "--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0"]));
    a.extend(strings(extra));
    a.push(bucket.into());
    a.push(s.mnt().to_string_lossy().into_owned());
    Mount::start_program(C_S3BACKER, &a, &s.mnt())
}

/// C s3backer 1.5.4 and we share a bucket on RGW both ways, plain, compressed (deflate) and
/// encrypted (deflate + AES-128-CBC): C writes ext4, we check and add files, C checks both.
#[test]
fn interop_with_c_s3backer_plain_deflate_and_aes_cbc() {
    let s0 = Scratch::new();
    let pw = pw_flag(&s0);
    for (name, flags) in [("plain", vec![]), ("deflate", vec!["--compress"]), ("cbc", vec!["--encrypt", &pw])] {
        let b = bucket(&format!("c-{name}"));
        let s = Scratch::new();
        let mut first = flags.clone();
        first.extend(["--size=32m", "--blockSize=32k"]);
        let m = c_mount(&b, &first, &s);
        let tree = ext4_with_tree(&m, &s, 40, 11);
        assert_eq!(m.unmount(), 0);
        assert!(!block_keys(&b).is_empty());

        drop_caches();
        let m = mount(&b, &flags, &s);
        assert!(m.stderr().contains("auto-detected block size=32k and total size=32m"), "{name}: {}", m.stderr());
        let e = checked_ext4(&m, &s, &tree);
        std::fs::create_dir(s.ext4().join("ours")).unwrap();
        let tree2 = write_tree(&s.ext4().join("ours"), 40, 12);
        e.unmount();
        assert_eq!(m.unmount(), 0);

        drop_caches();
        let m = c_mount(&b, &flags, &s);
        let e = checked_ext4(&m, &s, &tree);
        check_tree(&s.ext4().join("ours"), &tree2);
        e.unmount();
        assert_eq!(m.unmount(), 0);
    }
}

/// `--listBlocks` surveys RGW's listing (what exists is found, reads of the rest cost no
/// request), discard deletes what exists, and `--erase` removes every block with RGW's
/// multi-object delete while an object outside the volume's prefix survives.
#[test]
fn list_blocks_discard_and_erase() {
    let (b, s, m) = new_volume("survey", &["--size=16m", "--blockSize=64k", "--prefix=vol/", "--blockHashPrefix"]);
    write_synced(&m.file(), 0, &random_bytes(9, 4 << 16));
    write_synced(&m.file(), 8 << 20, &random_bytes(10, 2 << 16));
    assert_eq!(m.unmount(), 0);
    assert_eq!(block_keys(&b).len(), 6);

    let m = mount(&b, &["--prefix=vol/", "--blockHashPrefix", "--listBlocks"], &s);
    wait_for(30, "the block survey", || m.stderr().contains("block survey done"));
    assert!(m.stderr().contains("6 of 256 blocks are non-zero"), "{}", m.stderr());
    let before = m.stats();
    let mut buf = vec![0u8; 4 << 20];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut buf, 1 << 20).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    assert_eq!(stat_value(&before, "http_gets"), stat_value(&m.stats(), "http_gets"), "{}", m.stats());
    // A discard over the first 1 MiB deletes the 4 blocks that exist there.
    sh(&format!("fallocate --punch-hole --keep-size -o 0 -l 1048576 {}", m.file().display()));
    sh(&format!("sync {}", m.file().display()));
    assert_eq!(m.unmount(), 0);
    assert_eq!(block_keys(&b).len(), 2, "{:?}", block_keys(&b));

    // Fill 4 MiB (block 0, which carried the size, was discarded), then erase it all.
    let m = mount(&b, &["--size=16m", "--blockSize=64k", "--prefix=vol/", "--blockHashPrefix"], &s);
    write_synced(&m.file(), 0, &random_bytes(11, 4 << 20));
    assert_eq!(m.unmount(), 0);
    assert_eq!(block_keys(&b).len(), 66);
    assert_eq!(ceph().curl(&["-X", "PUT", "--data-binary", "keep"], &format!("{b}/other/00000001")).0, 200);
    let out = run(&strs(&args(&b, &["--prefix=vol/", "--blockHashPrefix", "--erase", "--force"])));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ceph().list_keys(&b), vec!["other/00000001".to_string()]);
}

/// The block cache file over RGW: dirty blocks of a daemon killed with -9 are uploaded by the
/// next mount with `--blockCacheRecoverDirtyBlocks`, and ext4 on it checks clean.
#[test]
fn cache_file_kill9_recovery() {
    let b = bucket("cache");
    let s = Scratch::new();
    let (_, cache) = s.cache_file();
    let flags = [
        "--size=32m",
        "--blockSize=64k",
        "--blockCacheSize=64",
        &cache,
        "--blockCacheRecoverDirtyBlocks",
        "--blockCacheWriteDelay=600000",
    ];
    let m = mount(&b, &flags, &s);
    // ext4 on the first 16 MiB; raw data beyond it.
    sh(&format!("mkfs.ext4 -q -F -E nodiscard {} 16M", m.file().display()));
    let e = Ext4::mount(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 30, 4);
    e.unmount();
    let synced = random_bytes(12, 256 << 10);
    write_synced(&m.file(), 20 << 20, &synced);
    let before = block_keys(&b).len();
    // Written by a process that holds the file open (a close would flush), then a crash.
    let unsynced = random_bytes(13, 256 << 10);
    let writer = write_and_hold(&m.file(), 24 << 20, &unsynced);
    m.kill9();
    drop(writer);
    assert_eq!(block_keys(&b).len(), before, "unsynced blocks reached RGW before the crash");

    let m = mount(&b, &flags[..5], &s);
    assert!(m.stderr().contains("recovering 4 dirty blocks"), "{}", m.stderr());
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(m.file()).unwrap();
    let mut back = vec![0u8; 256 << 10];
    f.read_exact_at(&mut back, 20 << 20).unwrap();
    assert!(back == synced, "fsynced data lost");
    f.read_exact_at(&mut back, 24 << 20).unwrap();
    assert!(back == unsynced, "recovered dirty data differs");
    drop(f);
    checked_ext4(&m, &s, &tree).unmount();
    assert_eq!(m.unmount(), 0);
    // Straight from RGW, without the cache file: the recovered blocks were uploaded.
    drop_caches();
    let m = mount(&b, &[], &s);
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut back, 24 << 20).unwrap();
    assert!(back == unsynced, "recovered dirty data did not reach RGW");
    assert_eq!(m.unmount(), 0);
}

/// NBD over RGW: an image copied in through four connections, read back after a restart that
/// auto-detects the size.
#[test]
fn nbd_copy_in_and_out() {
    let b = bucket("nbd");
    let s = Scratch::new();
    let (sock, img) = (s.path("sock"), s.path("img"));
    let data = random_image(&img, 16 << 20, 21);
    let srv = NbdServer::start(&args(&b, &["--size=16m", "--blockSize=256k"]), &sock);
    cmd("nbdcopy", &["-C", "4", "-R", "16", "--flush", img.to_str().unwrap(), &srv.uri()]);
    assert_eq!(srv.stop(), 0);
    let srv = NbdServer::start(&args(&b, &[]), &sock);
    let back = s.path("back");
    cmd("nbdcopy", &["-C", "4", "-R", "16", &srv.uri(), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "image read back from RGW differs");
    assert_eq!(srv.stop(), 0);
}

/// A public read-only image on RGW, mounted read-only with no credentials at all by ours
/// (auto-detecting its size) and by C s3backer 1.5.4. RGW, like AWS, answers a reader that may
/// not list the bucket 403 rather than 404 for an object that does not exist, so with a policy
/// granting only `s3:GetObject` the mount-token HEAD (no token on a volume nobody mounts) is
/// refused and both programs stop; the policy must grant `s3:ListBucket` too. Anonymous writes
/// stay refused.
#[test]
fn public_image_through_an_anonymous_read_bucket_policy() {
    let (b, s, m) = new_volume("public", &["--size=32m", "--blockSize=64k"]);
    let tree = ext4_with_tree(&m, &s, 40, 8);
    assert_eq!(m.unmount(), 0);

    let home = s.path("empty-home");
    std::fs::create_dir(&home).unwrap();
    let anonymous = |program: &str, extra: &[&str]| {
        let mut c = std::process::Command::new(program);
        c.env("HOME", &home).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        c.args(["-f", "--readOnly", &format!("--baseURL={}", ceph().base_url())]).args(extra);
        c.args([b.as_str(), s.mnt().to_str().unwrap()]);
        c
    };
    let set_policy = |actions: &str, resources: &str| {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":[{actions}],"Resource":[{resources}]}}]}}"#
        );
        // `policy=`: curl signs a bare `?policy` otherwise than RGW checks it (same subresource).
        let (code, body) = ceph().curl(&["-X", "PUT", "--data-binary", &policy], &format!("{b}?policy="));
        assert!(code == 200 || code == 204, "put bucket policy: {code} {}", String::from_utf8_lossy(&body));
    };
    let quick = ["--initialRetryPause=100", "--maxRetryPause=400"];
    let refused = |what: &str, want: &str| {
        let out = anonymous(bin(), &quick).stdin(std::process::Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.contains(": warning: ")).unwrap_or("");
        assert!(!out.status.success() && last.contains(want) && last.contains("access denied"), "{what}: {err}");
        assert!(!is_mounted(&s.mnt()));
    };
    refused("private bucket", "");
    set_policy(r#""s3:GetObject""#, &format!(r#""arn:aws:s3:::{b}/*""#));
    refused("s3:GetObject only", "mount token");

    set_policy(r#""s3:GetObject","s3:ListBucket""#, &format!(r#""arn:aws:s3:::{b}/*","arn:aws:s3:::{b}""#));
    for (program, extra) in [(bin(), &[][..]), (C_S3BACKER, &["--size=32m", "--blockSize=64k"][..])] {
        let m = Mount::start_command(anonymous(program, extra), &s.mnt());
        sh(&format!("mount -o loop,ro {} {}", m.file().display(), s.ext4().display()));
        let e = Ext4 { dir: s.ext4() };
        check_tree(&s.ext4(), &tree);
        e.unmount();
        assert_eq!(m.unmount(), 0, "{program}");
    }
    let put = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data-binary", "x"])
        .arg(format!("{}{b}/00000001", ceph().base_url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout), "403", "an anonymous write was not refused");
}
