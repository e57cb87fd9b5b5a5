//! End to end over Ceph's RADOS Gateway (RGW 16.2, s3b-testkit's single-host cluster with one
//! BlueStore OSD), the S3 server people self-host: ext4 round trips with e2fsck and size
//! auto-detection, the codecs (with C s3backer 1.5.4 on the same bucket both ways where it has
//! them), `--listBlocks`, `--erase`, discard, the block cache file across a kill -9, NBD, a
//! public read-only image, and racing mounts with RGW's conditional writes.
//!
//! One cluster serves every test of this file (starting one takes about 15 s); each test has
//! its own bucket.

mod common;
use common::*;
use s3b_testkit::ceph::Ceph;
use std::sync::OnceLock;

static CLUSTER: OnceLock<Ceph> = OnceLock::new();

/// The shared cluster, started by the first test that needs it.
fn ceph() -> &'static Ceph {
    CLUSTER.get_or_init(|| {
        let c = Ceph::start(1);
        let rss: u64 = c.rss_kib().iter().map(|(_, k)| k).sum();
        eprintln!(
            "ceph: serving S3 after {:.1} s; daemons' RSS {} MiB: {:?}",
            c.startup.as_secs_f64(),
            rss >> 10,
            c.rss_kib()
        );
        c
    })
}

/// A fresh bucket for one test.
fn bucket(name: &str) -> String {
    ceph().create_bucket(name);
    name.to_string()
}

/// Our flags for `bucket` on RGW plus `extra`.
fn args(bucket: &str, extra: &[&str]) -> Vec<String> {
    let mut a = ceph().s3backer_flags();
    a.extend(strings(extra));
    a.push(bucket.to_string());
    a
}

fn mount(bucket: &str, extra: &[&str], s: &Scratch) -> Mount {
    Mount::start_owned(args(bucket, extra), &s.mnt())
}

#[test]
fn ext4_round_trip_with_auto_detect() {
    let b = bucket("ext4");
    let s = Scratch::new();
    let m = mount(&b, &["--size=64m", "--blockSize=64k"], &s);
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 200, 7);
    e.unmount();
    let stats = m.stats();
    assert!(stat_value(&stats, "http_puts") > 0, "{stats}");
    assert_eq!(stat_value(&stats, "http_5xx_error"), 0, "{stats}");
    assert_eq!(m.unmount(), 0);
    assert!(!ceph().list_keys(&b).iter().any(|k| k == "s3backer-mounted"), "mount token left after unmount");

    drop_caches();
    let m = mount(&b, &[], &s);
    assert!(m.stderr().contains("auto-detected block size=64k and total size=64m"), "{}", m.stderr());
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), &tree);
    e.unmount();
    assert_eq!(m.unmount(), 0);
}
