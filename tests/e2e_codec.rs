//! Compression and encryption end to end on `--test` volumes: ext4 round trips with each codec,
//! the sidecar headers, a wrong password refused at mount time, and a tampered object read as
//! EIO, never as data. (Interoperability with C s3backer over S3 is in e2e_s3.rs.)

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

fn pwfile(s: &Scratch, pw: &str) -> String {
    let p = s.path("pw");
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    format!("--passwordFile={}", p.display())
}

fn round_trip(extra: &[&str], expect_encoding: &str) {
    let s = Scratch::new();
    let store = s.store();
    let mut a: Vec<String> = vec!["--test".into(), "--size=32m".into(), "--blockSize=16k".into()];
    a.extend(extra.iter().map(|x| x.to_string()));
    if extra.iter().any(|x| x.starts_with("--encrypt")) {
        a.push(pwfile(&s, "correct horse"));
    }
    a.push(store.to_string_lossy().into_owned());
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let m = Mount::start(&args, &s.mnt());
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), 80, 21);
    e.unmount();
    assert_eq!(m.unmount(), 0);
    // Every stored block carries its encoding in a sidecar.
    let meta = std::fs::read_to_string(store.join("00000000.meta")).expect("sidecar of block 0");
    assert!(meta.contains(&format!("content-encoding: {expect_encoding}\n")), "{meta}");
    // Stored block 0 is not the plaintext block (ext4's superblock magic 0xEF53 at byte 1080).
    let raw = std::fs::read(store.join("00000000")).unwrap();
    assert!(raw.len() < 1082 || raw[1080..1082] != [0x53, 0xef], "block 0 stored as plaintext");
    drop_caches();
    let m = Mount::start(&args, &s.mnt());
    checked_ext4(&m, &s, &tree).unmount();
    assert_eq!(m.unmount(), 0);
}

#[test]
fn ext4_round_trip_deflate() {
    round_trip(&["--compress"], "deflate");
}

#[test]
fn ext4_round_trip_zstd() {
    round_trip(&["--compress=zstd", "--compress-level=5"], "zstd");
}

#[test]
fn ext4_round_trip_aes128_cbc() {
    round_trip(&["--encrypt"], "deflate, encrypt-AES-128-CBC");
}

#[test]
fn ext4_round_trip_aes256_gcm() {
    round_trip(&["--encrypt=AES-256-GCM"], "deflate, encrypt-AES-256-GCM");
}

#[test]
fn wrong_password_is_refused_at_mount_and_tampering_is_eio() {
    let s = Scratch::new();
    let store = s.store();
    let st = store.to_str().unwrap();
    let right = pwfile(&s, "right");
    let m = Mount::start(&["--test", "--size=1m", "--blockSize=4k", "--encrypt=aes-256-cbc", &right, st], &s.mnt());
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    write_synced(&m.file(), 0, &data);
    assert_eq!(m.unmount(), 0);

    let wrong = s.path("wrongpw");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let out = Command::new(bin())
        .args(["--test", "--size=1m", "--blockSize=4k", "--encrypt=aes-256-cbc"])
        .arg(format!("--passwordFile={}", wrong.display()))
        .args(["-f", st, s.mnt().to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted with the wrong password");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong password"), "{err}");
    assert!(!is_mounted(&s.mnt()));

    // Without --encrypt, encrypted blocks are refused, not shown as data.
    let m = Mount::start(&["--test", "--size=1m", "--blockSize=4k", st], &s.mnt());
    let mut buf = vec![0u8; 4096];
    let e = std::fs::File::open(m.file()).unwrap().read_exact_at(&mut buf, 8192).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(m.unmount(), 0);

    // Tamper with block 5: its range reads EIO, the others still read right.
    let path = store.join("00000005");
    let mut raw = std::fs::read(&path).unwrap();
    raw[10] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
    // Copy block 7's object over block 6 (a swap): detected by the HMAC's block number.
    std::fs::copy(store.join("00000007"), store.join("00000006")).unwrap();
    std::fs::copy(store.join("00000007.meta"), store.join("00000006.meta")).unwrap();
    let m = Mount::start(&["--test", "--size=1m", "--blockSize=4k", "--encrypt=aes-256-cbc", &right, st], &s.mnt());
    let f = std::fs::File::open(m.file()).unwrap();
    for blk in [5u64, 6] {
        let e = f.read_exact_at(&mut buf, blk * 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "block {blk}");
    }
    f.read_exact_at(&mut buf, 4 * 4096).unwrap();
    assert_eq!(buf, data[4 * 4096..5 * 4096]);
    f.read_exact_at(&mut buf, 7 * 4096).unwrap();
    assert_eq!(buf, data[7 * 4096..8 * 4096]);
    drop(f);
    assert!(m.stderr().contains("HMAC mismatch"), "{}", m.stderr());
    assert_eq!(m.unmount(), 0);
}

/// The password never shows in logs (even with --debug), errors or the stats file; passing it
/// on the command line draws a warning.
#[test]
fn password_never_leaks() {
    let s = Scratch::new();
    let st = s.store();
    let st = st.to_str().unwrap();
    let secret = "Sup3r-Secret-Passw0rd";
    let pw = format!("--password={secret}");
    let m = Mount::start(&["--test", "--size=1m", "--blockSize=4k", "--encrypt", &pw, "--debug", st], &s.mnt());
    std::fs::OpenOptions::new().write(true).open(m.file()).unwrap().write_all_at(&[9u8; 8192], 0).unwrap();
    let stats = m.stats();
    let log = m.stderr();
    assert!(log.contains("visible to other users"), "no warning about --password: {log}");
    assert_eq!(m.unmount(), 0);
    // A wrong password's error does not echo either password.
    let out = Command::new(bin())
        .args(["--test", "--size=1m", "--blockSize=4k", "--encrypt", "--password=Wr0ng-Passw0rd-Here", "-f", st])
        .arg(s.mnt())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong password"), "{err}");
    for text in [&stats, &log, &err.to_string()] {
        assert!(!text.contains(secret) && !text.contains("Wr0ng-Passw0rd-Here"), "password leaked: {text}");
    }
    // Nor is it in the stored objects or their sidecars.
    for e in std::fs::read_dir(s.store()).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}
