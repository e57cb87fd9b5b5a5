//! `mkfs.ext4` with its default discard on a new, large volume over S3: once discards reach
//! 1/1024 of the volume, the bucket is listed once (a new volume: a handful of LIST requests) and
//! from then on only blocks that exist are deleted — none — instead of every block.
//! Where the keys may not list the bucket, the discard deletes every block as before, and the
//! file system is just as good. Requests are counted at the server's side of a proxy.

mod common;
use common::*;
use s3b_testkit::fault_proxy::FaultProxy;
use s3b_testkit::garage::{BUCKET, Garage};
use std::time::Instant;

fn mount_via(g: &Garage, p: &FaultProxy, extra: &[&str], s: &Scratch) -> Mount {
    let mut a = g.s3backer_flags_at(&p.base_url());
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(BUCKET.into());
    Mount::start_owned(a.to_vec(), &s.mnt())
}

/// mkfs.ext4 with discard (its default) on the mounted file; returns the seconds it took.
fn mkfs_with_discard(m: &Mount) -> f64 {
    let t = Instant::now();
    sh(&format!("mkfs.ext4 -q -F -E discard {}", m.file().display()));
    t.elapsed().as_secs_f64()
}

#[test]
fn mkfs_discard_of_a_new_volume_deletes_almost_nothing() {
    let g = Garage::start();
    let p = FaultProxy::counting(g.port);
    let s = Scratch::new();
    // 64 GiB of 64 KiB blocks: 1 Mi blocks, 1049 multi-object deletes if each were sent.
    let m = mount_via(&g, &p, &["--size=64g", "--blockSize=64k", "--prefix=new/"], &s);
    let before = p.method_counts();
    let secs = mkfs_with_discard(&m);
    let e = Ext4::mount(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 20, 31);
    e.unmount();
    let stderr = m.stderr();
    assert_eq!(m.unmount(), 0);
    let after = p.method_counts();
    let sent = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    eprintln!("mkfs.ext4 of a new 64 GiB volume: {secs:.1} s; requests: {after:?} (before: {before:?})");
    assert!(stderr.contains("block survey done"), "{stderr}");
    // Deletes (single, or multi-object of up to 1000 keys) until the discards reach 1/1024 of
    // the volume (1024 blocks), then one LIST per leading hex digit of the keys, and no more
    // deletes: a full discard would delete all 1048576 blocks.
    let blocks_deleted = sent("DELETE") + 1000 * sent("POST");
    assert!(blocks_deleted <= 2048, "{after:?}");
    assert!(sent("GET") <= 16 + 10, "{after:?}");
    let m = mount_via(&g, &p, &["--prefix=new/"], &s);
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), &tree);
    e.unmount();
    assert_eq!(m.unmount(), 0);
}

/// Block objects under `prefix`.
fn blocks_under(g: &Garage, prefix: &str) -> usize {
    g.list_keys(BUCKET).iter().filter(|k| k.starts_with(prefix) && !k.ends_with("s3backer-mounted")).count()
}

/// Mounts, makes a file system with discard, unmounts (everything flushed); returns the stderr.
fn fresh_fs(g: &Garage, p: &FaultProxy, geometry: &[&str], s: &Scratch) -> String {
    let m = mount_via(g, p, geometry, s);
    mkfs_with_discard(&m);
    fsck_clean(&m.file());
    let stderr = m.stderr();
    assert_eq!(m.unmount(), 0);
    stderr
}

#[test]
fn discard_over_existing_data_deletes_what_exists_with_or_without_list_permission() {
    let g = Garage::start();
    let p = FaultProxy::counting(g.port);
    let s = Scratch::new();
    // What a new file system of this geometry leaves in the bucket.
    fresh_fs(&g, &p, &["--size=1g", "--blockSize=64k", "--prefix=fresh/"], &s);
    let fresh = blocks_under(&g, "fresh/");

    let geometry = ["--size=1g", "--blockSize=64k", "--prefix=old/"];
    let fill = |s: &Scratch| {
        // Data everywhere in the first 64 MiB of the volume (written without discard).
        let m = mount_via(&g, &p, &geometry, s);
        sh(&format!(
            "head -c 67108864 /dev/urandom | dd of={} bs=1M conv=notrunc,fsync status=none",
            m.file().display()
        ));
        assert_eq!(m.unmount(), 0);
        assert!(blocks_under(&g, "old/") >= 1024);
    };

    // Keys that may not list: the survey is refused (one warning) and every block is deleted.
    fill(&s);
    p.set_deny_listing(true);
    let stderr = fresh_fs(&g, &p, &geometry, &s);
    assert!(
        stderr.contains("block survey failed (for a large discard") && stderr.contains("access denied"),
        "{stderr}"
    );
    assert!(p.listings_denied() > 0);
    assert_eq!(blocks_under(&g, "old/"), fresh);
    p.set_deny_listing(false);

    // Listing allowed: the survey finds the blocks that exist, and only those are deleted.
    fill(&s);
    let before = p.method_counts();
    let stderr = fresh_fs(&g, &p, &geometry, &s);
    assert!(stderr.contains("block survey done"), "{stderr}");
    assert_eq!(blocks_under(&g, "old/"), fresh);
    let after = p.method_counts();
    let posts = after.get("POST").copied().unwrap_or(0) - before.get("POST").copied().unwrap_or(0);
    // 1024 existing blocks: about two multi-object deletes, not 16 (one per 1000 of 16384 blocks).
    assert!(posts <= 4, "{posts} multi-object deletes");
}
