//! A sequential write that starts inside a block (as when ext4 places a file at an offset that
//! is not a multiple of the block size) is combined in the block cache instead of reading every
//! block it only partly covers: over Garage, with GETs counted at the server's side of a proxy,
//! 512 MiB written at an unaligned offset sends at most 1 % as many GETs as blocks written, and
//! reads back identical — including the bytes of the first and last blocks it did not write.

mod common;
use common::*;
use s3b_testkit::fault_proxy::FaultProxy;
use s3b_testkit::garage::{BUCKET, Garage};

const BLOCK: u64 = 256 << 10;
const LEN: u64 = 512 << 20;
/// Inside block 2.
const OFFSET: u64 = 2 * BLOCK + 12345;

#[test]
fn unaligned_sequential_write_sends_almost_no_gets() {
    let g = Garage::start();
    let p = FaultProxy::counting(g.port);
    let s = Scratch::new();
    let mut a = g.s3backer_flags_at(&p.base_url());
    a.extend(["--size=1g".to_string(), "--blockSize=256k".to_string(), BUCKET.to_string()]);
    let args: Vec<&str> = a.iter().map(String::as_str).collect();

    // Data already in the volume around the region, so a merge with zeros would show.
    let span_start = OFFSET / BLOCK * BLOCK;
    let span_end = (OFFSET + LEN).div_ceil(BLOCK) * BLOCK;
    let before = s.path("before");
    let pattern = s.path("pattern");
    sh(&format!("head -c {} /dev/urandom > {}", span_end - span_start, before.display()));
    sh(&format!("head -c {LEN} /dev/urandom > {}", pattern.display()));
    let m = Mount::start(&args, &s.mnt());
    sh(&format!(
        "dd if={} of={} bs=1M seek={span_start} oflag=seek_bytes conv=notrunc,fsync status=none",
        before.display(),
        m.file().display()
    ));
    assert_eq!(m.unmount(), 0);

    // The unaligned write, on a fresh mount (nothing cached).
    let m = Mount::start(&args, &s.mnt());
    let gets_before = p.method_counts().get("GET").copied().unwrap_or(0);
    sh(&format!(
        "dd if={} of={} bs=1M seek={OFFSET} oflag=seek_bytes conv=notrunc,fsync status=none",
        pattern.display(),
        m.file().display()
    ));
    let gets = p.method_counts().get("GET").copied().unwrap_or(0) - gets_before;
    let blocks = (span_end - span_start) / BLOCK;
    eprintln!("{LEN} bytes at offset {OFFSET}: {gets} GETs for {blocks} blocks written");
    assert!(gets * 100 <= blocks, "{gets} GETs for {blocks} blocks");
    assert_eq!(m.unmount(), 0);

    // Read back from the store alone: the written bytes, and the old bytes around them.
    let m = Mount::start(&args, &s.mnt());
    let got = s.path("got");
    sh(&format!(
        "dd if={} of={} bs=1M skip={span_start} count={} iflag=skip_bytes,count_bytes status=none",
        m.file().display(),
        got.display(),
        span_end - span_start
    ));
    assert_eq!(m.unmount(), 0);
    let want = s.path("want");
    sh(&format!(
        "cp {} {w} && dd if={} of={w} bs=1M seek={} oflag=seek_bytes conv=notrunc status=none",
        before.display(),
        pattern.display(),
        OFFSET - span_start,
        w = want.display()
    ));
    sh(&format!("cmp {} {}", want.display(), got.display()));
}
