//! End to end over a second S3 implementation, s3b-testkit's s3s-fs on 127.0.0.1: the ext4
//! round trip with size auto-detection, the mount token, `--erase`, and a persistent block cache
//! with encryption and compression. s3s-fs ignores `If-None-Match`, so restarting with a cache
//! file exercises the "changed, here is the data" answer to every verification.

mod common;
use common::*;
use s3b_testkit::garage::BUCKET;
use s3b_testkit::s3s_fs::S3sFs;
use std::os::unix::fs::FileExt;

fn args(s: &S3sFs, extra: &[&str]) -> Vec<String> {
    volume_args(s.s3backer_flags(), extra, BUCKET)
}

fn mount(s: &S3sFs, extra: &[&str], mnt: &std::path::Path) -> Mount {
    Mount::start_owned(args(s, extra), mnt)
}

fn block_keys(s: &S3sFs) -> Vec<String> {
    without_mount_token(s.list_keys(BUCKET))
}

#[test]
fn ext4_round_trip_mount_token_and_erase_on_s3s_fs() {
    let srv = S3sFs::start();
    let s = Scratch::new();
    let m = mount(&srv, &["--size=64m", "--blockSize=64k"], &s.mnt());
    let tree = ext4_with_tree(&m, &s, 150, 31);
    // A second mount of the same bucket is refused while the first is up.
    let mnt2 = s.path("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let mut a = args(&srv, &[]);
    a.push(mnt2.to_string_lossy().into_owned());
    let out = std::process::Command::new(bin()).args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--force"), "{err}");
    assert_eq!(m.unmount(), 0);
    assert!(!block_keys(&srv).is_empty());

    drop_caches();
    let m = mount(&srv, &[], &s.mnt());
    assert!(m.stderr().contains("auto-detected block size=64k and total size=64m"), "{}", m.stderr());
    checked_ext4(&m, &s, &tree).unmount();
    assert_eq!(m.unmount(), 0);

    let a = args(&srv, &["--erase", "--force"]);
    let out = std::process::Command::new(bin()).args(&a).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(srv.list_keys(BUCKET).is_empty(), "{:?}", srv.list_keys(BUCKET));
}

#[test]
fn cache_file_encryption_and_compression_on_s3s_fs() {
    let srv = S3sFs::start();
    let s = Scratch::new();
    let pw = password_flag(&s, "s3s-fs secret");
    let (_, cache) = s.cache_file();
    let flags = ["--size=16m", "--blockSize=32k", "--encrypt", "--compress", &pw, &cache];
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| if (i >> 15) % 3 == 0 { 0 } else { (i.wrapping_mul(2_654_435_761) >> 13) as u8 })
        .collect();
    let m = mount(&srv, &flags, &s.mnt());
    write_synced(&m.file(), 1 << 20, &data);
    assert_eq!(m.unmount(), 0);
    // Restart on the cache file: every clean block is verified, and s3s-fs answers each
    // conditional GET with the data (it ignores If-None-Match): still the same bytes.
    drop_caches();
    let m = mount(&srv, &flags, &s.mnt());
    let mut back = vec![0u8; data.len()];
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut back, 1 << 20).unwrap();
    assert!(back == data, "different bytes after a restart on the cache file");
    assert_eq!(m.unmount(), 0);
    // Without the cache, straight from the server.
    drop_caches();
    let m =
        mount(&srv, &["--size=16m", "--blockSize=32k", "--encrypt", "--compress", &pw, "--blockCacheSize=0"], &s.mnt());
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut back, 1 << 20).unwrap();
    assert!(back == data, "different bytes read from s3s-fs");
    assert_eq!(m.unmount(), 0);
}
