//! NBD over a real S3 server (Garage on 127.0.0.1): a random image copied in with nbdcopy
//! through several connections, the server restarted (size auto-detected from the bucket),
//! copied out and compared; the mount token is held while serving and cleared at exit; a
//! read-only export writes nothing to the bucket.

mod common;
mod nbd_common;
use common::*;
use nbd_common::*;
use s3b_testkit::garage::{BUCKET, Garage};

/// Our flags for `BUCKET/vol` on `g` plus `extra`.
fn s3_args(g: &Garage, extra: &[&str]) -> Vec<String> {
    let mut a = g.s3backer_flags();
    a.extend(strings(extra));
    a.push(format!("{BUCKET}/vol"));
    a
}

#[test]
fn nbdcopy_over_garage_through_several_connections_across_a_restart() {
    let g = Garage::start();
    let s = Scratch::new();
    let sock = s.path("sock");
    let img = s.path("img");
    let data = random_image(&img, 24 << 20, 11);
    let srv = NbdServer::start(&s3_args(&g, &["--size=24m", "--blockSize=256k", "--listBlocks"]), &sock);
    cmd("nbdcopy", &["-C", "4", "-R", "16", "--flush", img.to_str().unwrap(), &srv.uri()]);
    // While serving, the volume is marked mounted.
    assert!(g.list_keys(BUCKET).iter().any(|k| k.ends_with("s3backer-mounted")));
    assert_eq!(srv.stop(), 0);
    let keys = g.list_keys(BUCKET);
    assert!(!keys.iter().any(|k| k.ends_with("s3backer-mounted")), "mount token cleared at exit");
    let nonzero = data.chunks(256 * 1024).filter(|c| c.iter().any(|&b| b != 0)).count();
    assert_eq!(keys.len(), nonzero, "one object per non-zero block: {keys:?}");

    // Restart without --size: detected from the bucket. Copy out through 4 connections.
    let srv = NbdServer::start(&s3_args(&g, &["--listBlocks"]), &sock);
    assert_eq!(cmd("nbdinfo", &["--size", &srv.uri()]).trim(), (24u64 << 20).to_string());
    let back = s.path("back");
    cmd("nbdcopy", &["-C", "4", "-R", "16", &srv.uri(), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "image read back from S3 differs");
    assert_eq!(srv.stop(), 0);

    // A read-only export of the same volume: readable, writes refused, nothing written.
    let before = g.list_keys(BUCKET);
    let srv = NbdServer::start(&s3_args(&g, &["--readOnly"]), &sock);
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &srv.uri()])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrote"), "{out:?}");
    cmd("qemu-io", &["-f", "raw", "-r", "-c", &format!("read -P {} 0 1", data[0]), &srv.uri()]);
    assert_eq!(srv.stop(), 0);
    assert_eq!(g.list_keys(BUCKET), before);
}
