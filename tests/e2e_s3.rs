//! End to end over a real S3 server (Garage on 127.0.0.1): ext4 on our file with the blocks in
//! a bucket, size auto-detection, the mount token, `--erase`, `--reset-mounted-flag`, read-only
//! mounts that write nothing, bad S3 invocations, and compatibility with C s3backer 1.5.4 on the
//! same bucket in both directions.

mod common;
use common::*;
use s3b_testkit::garage::{BUCKET, Garage};
use s3b_testkit::listener::Listener;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

const C_S3BACKER: &str = "/usr/bin/s3backer";

/// Our flags for `bucket` on `g` plus `extra`.
fn args(g: &Garage, bucket: &str, extra: &[&str]) -> Vec<String> {
    volume_args(g.s3backer_flags(), extra, bucket)
}

fn mount(g: &Garage, bucket: &str, extra: &[&str], mnt: &std::path::Path) -> Mount {
    Mount::start_owned(args(g, bucket, extra), mnt)
}

/// `a` followed by the mount point.
fn with_mnt(mut a: Vec<String>, mnt: &std::path::Path) -> Vec<String> {
    a.push(mnt.to_string_lossy().into_owned());
    a
}

/// Stderr without warning lines (every test run passes --accessKey, which warns).
fn errors(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains(": warning: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs our binary to completion (stdin not a terminal).
fn run_ours(a: &[String]) -> std::process::Output {
    Command::new(bin()).args(a).stdin(Stdio::null()).output().unwrap()
}

fn block_keys(g: &Garage, bucket: &str) -> Vec<String> {
    without_mount_token(g.list_keys(bucket))
}

#[test]
fn ext4_round_trip_over_s3_with_auto_detect() {
    let g = Garage::start();
    let s = Scratch::new();
    let m = mount(&g, BUCKET, &["--size=64m", "--blockSize=64k"], &s.mnt());
    let tree = ext4_with_tree(&m, &s, 200, 7);
    let stats = m.stats();
    assert!(stat_value(&stats, "http_puts") > 0, "{stats}");
    assert_eq!(stat_value(&stats, "http_5xx_error"), 0);
    assert_eq!(m.unmount(), 0);
    assert!(!g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"), "mount token left after clean unmount");
    assert!(block_keys(&g, BUCKET).iter().all(|k| k.len() == 8), "{:?}", block_keys(&g, BUCKET));

    // Remount without geometry flags: detected from block 0.
    drop_caches();
    let m = mount(&g, BUCKET, &[], &s.mnt());
    assert!(m.stderr().contains("auto-detected block size=64k and total size=64m"), "{}", m.stderr());
    assert_eq!(std::fs::metadata(m.file()).unwrap().len(), 64 << 20);
    checked_ext4(&m, &s, &tree).unmount();
    assert_eq!(m.unmount(), 0);

    // A size that contradicts the volume is refused (and --force overrides).
    let out = run_ours(&with_mnt(args(&g, BUCKET, &["--size=32m", "-f", "--quiet"]), &s.mnt()));
    let err = errors(&out);
    assert!(!out.status.success() && err.contains("file size") && err.contains("--force"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let m = mount(&g, BUCKET, &["--blockSize=64k", "--size=64m", "--force", "--readOnly"], &s.mnt());
    assert_eq!(m.unmount(), 0);
}

#[test]
fn mount_token_second_mount_force_and_reset() {
    let g = Garage::start();
    let (s1, s2) = (Scratch::new(), Scratch::new());
    let m1 = mount(&g, BUCKET, &["--size=4m", "--blockSize=16k"], &s1.mnt());
    assert!(g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"));
    // A second mount of the same bucket is refused while the first is up.
    let out = run_ours(&with_mnt(args(&g, BUCKET, &["--size=4m", "--blockSize=16k", "-f"]), &s2.mnt()));
    let err = errors(&out);
    assert!(!out.status.success() && err.contains("already mounted") && err.lines().count() == 1, "{err}");
    assert!(!is_mounted(&s2.mnt()));
    // --force overrides.
    let m2 = mount(&g, BUCKET, &["--size=4m", "--blockSize=16k", "--force", "--readOnly"], &s2.mnt());
    assert_eq!(m2.unmount(), 0);
    // A crash leaves the token; --reset-mounted-flag clears it.
    std::fs::OpenOptions::new().write(true).open(m1.file()).unwrap().write_all_at(&[7u8; 16384], 0).unwrap();
    m1.kill9();
    assert!(g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"));
    let out = run_ours(&with_mnt(args(&g, BUCKET, &["--size=4m", "--blockSize=16k", "-f"]), &s1.mnt()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reset-mounted-flag"));
    let out = run_ours(&args(&g, BUCKET, &["--reset-mounted-flag"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"));
    let m = mount(&g, BUCKET, &["--size=4m", "--blockSize=16k"], &s1.mnt());
    assert_eq!(m.unmount(), 0);
}

#[test]
fn read_only_mount_writes_nothing() {
    let g = Garage::start();
    let s = Scratch::new();
    let m = mount(&g, BUCKET, &["--size=4m", "--blockSize=16k"], &s.mnt());
    std::fs::OpenOptions::new().write(true).open(m.file()).unwrap().write_all_at(&[1u8; 40000], 5000).unwrap();
    assert_eq!(m.unmount(), 0);
    let before = g.list_keys(BUCKET);
    let m = mount(&g, BUCKET, &["--readOnly"], &s.mnt());
    assert_eq!(std::fs::read(m.file()).unwrap()[5000..45000], [1u8; 40000][..]);
    let w = std::fs::OpenOptions::new().write(true).open(m.file());
    assert!(w.is_err(), "read-only file opened for writing");
    assert!(!g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"), "read-only mount set the token");
    let stats = m.stats();
    assert_eq!((stat_value(&stats, "http_puts"), stat_value(&stats, "http_deletes")), (0, 0), "{stats}");
    assert_eq!(m.unmount(), 0);
    assert_eq!(g.list_keys(BUCKET), before);
}

#[test]
fn erase_removes_every_block() {
    let g = Garage::start();
    let s = Scratch::new();
    let m = mount(&g, BUCKET, &["--size=4m", "--blockSize=4k", "--prefix=vol/"], &s.mnt());
    write_synced(&m.file(), 0, &random_bytes(3, 4 << 20));
    assert_eq!(m.unmount(), 0);
    assert_eq!(block_keys(&g, BUCKET).len(), 1024);
    // An object outside the volume's prefix survives.
    assert_eq!(g.curl(&["-X", "PUT", "--data-binary", "keep"], &format!("{BUCKET}/other/00000001")).0, 200);
    // Without --force and without a terminal: refused, nothing deleted.
    let out = run_ours(&args(&g, BUCKET, &["--prefix=vol/", "--erase"]));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(block_keys(&g, BUCKET).len(), 1025);
    let out = run_ours(&args(&g, BUCKET, &["--prefix=vol/", "--erase", "--force"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(g.list_keys(BUCKET), vec!["other/00000001".to_string()]);
}

#[test]
fn bad_s3_invocations_fail_cleanly_and_write_nothing() {
    let g = Garage::start();
    let s = Scratch::new();
    let mnt = s.mnt();
    let mnt = mnt.to_str().unwrap();
    let base = g.base_url();
    let good_id = format!("--accessId={}", s3b_testkit::garage::ACCESS_KEY_ID);
    let good_key = format!("--accessKey={}", s3b_testkit::garage::SECRET_KEY);
    let pwfile = s.path("pw");
    std::fs::write(&pwfile, "someid:somekey\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                format!("--baseURL={base}"),
                good_id.clone(),
                "--accessKey=wrong".into(),
                "--size=1m".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "access denied",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                "--accessId=GKnobody".into(),
                "--accessKey=x".into(),
                "--size=1m".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "bucket \"blocks\"",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                good_id.clone(),
                good_key.clone(),
                "--size=1m".into(),
                "nosuchbucket".into(),
                mnt.into(),
            ],
            "nosuchbucket",
        ),
        (
            vec![
                "--baseURL=http://127.0.0.1:1/".into(),
                good_id.clone(),
                good_key.clone(),
                "--size=1m".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "cannot connect",
        ),
        (
            vec![format!("--baseURL={base}"), good_id.clone(), good_key.clone(), BUCKET.into(), mnt.into()],
            "--size is required",
        ),
        (
            vec![format!("--baseURL={}", base.trim_end_matches('/')), "--size=1m".into(), BUCKET.into(), mnt.into()],
            "must end with '/'",
        ),
        (
            vec![format!("--baseURL={base}"), "--authVersion=aws2".into(), BUCKET.into(), mnt.into()],
            "aws2 is not supported",
        ),
        (vec![format!("--baseURL={base}"), "--accessId=x".into(), BUCKET.into(), mnt.into()], "no secret key"),
        (vec![format!("--baseURL={base}"), "--accessKey=x".into(), BUCKET.into(), mnt.into()], "requires --accessId"),
        (
            vec![
                format!("--baseURL={base}"),
                format!("--accessFile={}", s.path("missing").display()),
                BUCKET.into(),
                mnt.into(),
            ],
            "can't read access file",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                format!("--accessFile={}", pwfile.display()),
                "--accessId=other".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "no secret key for access id \"other\"",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                "--accessKeyEnv=S3B_NO_SUCH_VAR".into(),
                "--accessId=x".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "S3B_NO_SUCH_VAR",
        ),
        (vec![format!("--baseURL={base}"), "--sse=aws:kms".into(), BUCKET.into(), mnt.into()], "--sse-key-id"),
        (vec![format!("--baseURL={base}"), "--storageClass=FAST".into(), BUCKET.into(), mnt.into()], "--storageClass"),
        (
            vec![format!("--baseURL={base}"), "--accessEC2IAM-IMDSv2".into(), BUCKET.into(), mnt.into()],
            "requires --accessEC2IAM",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                good_id.clone(),
                good_key.clone(),
                "--size=1m".into(),
                format!("{BUCKET}/a//b"),
                mnt.into(),
            ],
            "slashes",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                good_id.clone(),
                good_key.clone(),
                "--size=1m".into(),
                "--ipTOS=300".into(),
                BUCKET.into(),
                mnt.into(),
            ],
            "invalid --ipTOS value \"300\"",
        ),
        (
            vec![
                format!("--baseURL={base}"),
                good_id.clone(),
                good_key.clone(),
                "--size=1m".into(),
                BUCKET.into(),
                format!("{mnt}/missing"),
            ],
            "missing",
        ),
    ];
    for (a, want) in &cases {
        let mut full = a.clone();
        full.insert(0, "-f".into());
        let out = Command::new(bin()).args(&full).env("HOME", s.path("home")).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let err_lines: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
        assert!(!out.status.success(), "{a:?} succeeded");
        assert_ne!(out.status.code(), Some(101), "{a:?} panicked: {err}");
        assert_eq!(err_lines.len(), 1, "{a:?}: expected one error line:\n{err}");
        assert!(err_lines[0].starts_with("s3backer: ") && err_lines[0].contains(want), "{a:?}: want {want:?} in {err}");
        assert!(!err.contains(s3b_testkit::garage::SECRET_KEY), "{a:?} leaked the secret: {err}");
        assert!(!is_mounted(&s.mnt()));
    }
    assert!(g.list_keys(BUCKET).is_empty(), "a bad invocation wrote to the bucket: {:?}", g.list_keys(BUCKET));
}

fn read_head(file: &std::path::Path, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::fs::File::open(file).unwrap().read_exact_at(&mut v, 0).unwrap();
    v
}

fn c_mount(g: &Garage, extra: &[&str], mnt: &std::path::Path) -> Mount {
    assert!(std::path::Path::new(C_S3BACKER).exists(), "C s3backer missing: apt-get install s3backer");
    let mut a = g.s3backer_flags();
    a.extend(["-f", "--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0"].iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(BUCKET.into());
    a.push(mnt.to_string_lossy().into_owned());
    Mount::start_program(C_S3BACKER, &a, mnt)
}

/// C writes an ext4 volume and a raw pattern, we read both; then we write, C reads.
/// `c_extra`/`ours_extra` select the same layout in each program's spelling.
fn interop(c_extra: &[&str], ours_bucket: &str, ours_extra: &[&str]) {
    let g = Garage::start();
    let s = Scratch::new();
    // C creates the volume (with size metadata on block 0) and writes ext4 + files.
    let mut c_first: Vec<&str> = vec!["--size=32m", "--blockSize=32k"];
    c_first.extend_from_slice(c_extra);
    let m = c_mount(&g, &c_first, &s.mnt());
    let tree = ext4_with_tree(&m, &s, 60, 11);
    assert_eq!(m.unmount(), 0);
    let c_keys = block_keys(&g, BUCKET);
    assert!(!c_keys.is_empty());

    // We mount it (auto-detecting its geometry), check, and add files.
    let m = mount(&g, ours_bucket, ours_extra, &s.mnt());
    let e = checked_ext4(&m, &s, &tree);
    std::fs::create_dir(s.ext4().join("ours")).unwrap();
    let tree2 = write_tree(&s.ext4().join("ours"), 60, 12);
    e.unmount();
    assert_eq!(m.unmount(), 0);

    // C mounts what we wrote.
    let m = c_mount(&g, c_extra, &s.mnt());
    let e = checked_ext4(&m, &s, &tree);
    check_tree(&s.ext4().join("ours"), &tree2);
    e.unmount();
    assert_eq!(m.unmount(), 0);

    // Raw bytes with zero blocks in between: ours writes, C reads, and the other way round.
    // 4 MiB of it, with zero blocks in between.
    let data = sparse_pattern(5, 4 << 20, 32 << 10);
    let m = mount(&g, ours_bucket, ours_extra, &s.mnt());
    write_synced(&m.file(), 0, &data);
    assert_eq!(m.unmount(), 0);
    drop_caches();
    let m = c_mount(&g, c_extra, &s.mnt());
    assert!(read_head(&m.file(), data.len()) == data, "C reads different bytes than we wrote");
    let data2 = sparse_pattern(6, 4 << 20, 32 << 10);
    std::fs::OpenOptions::new().write(true).open(m.file()).unwrap().write_all_at(&data2, 0).unwrap();
    assert_eq!(m.unmount(), 0);
    drop_caches();
    let m = mount(&g, ours_bucket, ours_extra, &s.mnt());
    assert!(read_head(&m.file(), data2.len()) == data2, "we read different bytes than C wrote");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn interop_with_c_s3backer_plain() {
    interop(&[], BUCKET, &[]);
}

#[test]
fn interop_with_c_s3backer_hash_prefix() {
    interop(&["--blockHashPrefix"], BUCKET, &["--blockHashPrefix"]);
}

#[test]
fn interop_with_c_s3backer_subdir() {
    // C 1.5.4 has no bucket/subdir syntax; its --prefix is the same thing.
    interop(&["--prefix=vol1/"], &format!("{BUCKET}/vol1"), &[]);
}

/// A password file for both programs.
fn pw_flag(s: &Scratch) -> String {
    password_flag(s, "interop secret")
}

#[test]
fn interop_with_c_s3backer_compress() {
    interop(&["--compress"], BUCKET, &["--compress"]);
}

#[test]
fn interop_with_c_s3backer_aes128_cbc() {
    let s = Scratch::new();
    let pw = pw_flag(&s);
    interop(&["--encrypt", &pw], BUCKET, &["--encrypt", &pw]);
}

#[test]
fn interop_with_c_s3backer_aes256_cbc_subdir() {
    let s = Scratch::new();
    let pw = pw_flag(&s);
    interop(
        &["--encrypt=AES-256-CBC", &pw, "--prefix=enc/"],
        &format!("{BUCKET}/enc"),
        &["--encrypt=aes-256-cbc", &pw],
    );
}

/// Known answer from the real C s3backer: an object it encrypted decodes with our codec alone
/// (key derivation, per-block IV, CBC, HMAC and headers all as C makes them).
#[test]
fn c_encrypted_object_decodes_with_our_codec() {
    use s3b_codec::{Cipher, Codec, CodecConfig, Encryption};
    let g = Garage::start();
    let s = Scratch::new();
    let pw = pw_flag(&s);
    let m = c_mount(&g, &["--size=1m", "--blockSize=32k", "--encrypt", &pw], &s.mnt());
    let block: Vec<u8> = (0..32768u32).map(|i| (i * 7 % 253) as u8).collect();
    write_synced(&m.file(), 3 * 32768, &block);
    assert_eq!(m.unmount(), 0);
    let hdr = s.path("headers");
    let (code, body) = g.curl(&["-D", hdr.to_str().unwrap()], &format!("{BUCKET}/00000003"));
    assert_eq!(code, 200);
    let headers = std::fs::read_to_string(&hdr).unwrap().to_ascii_lowercase();
    let get =
        |name: &str| headers.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(|v| v.trim().to_string());
    let encoding = get("content-encoding").expect("Content-Encoding");
    assert_eq!(encoding, "deflate, encrypt-aes-128-cbc");
    let hmac = get("x-amz-meta-s3backer-hmac").expect("HMAC header");
    let codec = Codec::new(
        32768,
        CodecConfig {
            encrypt: Some(Encryption {
                cipher: Cipher::Aes128Cbc,
                password: "interop secret".to_string().into(),
                key_length: None,
                salt: format!("{BUCKET}/"),
            }),
            ..Default::default()
        },
    );
    let obj = s3b_store::ObjectBody {
        data: body.clone().into(),
        content_encoding: Some(encoding.clone()),
        hmac: Some(hmac.clone()),
    };
    assert_eq!(&codec.decode(3, obj).expect("C's object decodes")[..], &block[..]);
    // Our encryption of C's compressed stream gives C's exact bytes and HMAC (CBC with
    // upstream's per-block IV is deterministic; deflate output itself differs between zlib
    // implementations, which does not matter to either reader).
    let keys = s3b_codec::crypt::Keys::derive(Cipher::Aes128Cbc, b"interop secret", &format!("{BUCKET}/"), None);
    let deflated = keys.decrypt(3, &body, Some(&hmac)).unwrap();
    let (ct, mac) = keys.encrypt(3, &deflated);
    assert_eq!(ct, body, "our ciphertext differs from C's");
    assert_eq!(mac.as_deref(), Some(hmac.as_str()));
    // Our encoding of the block decodes to it too.
    let ours = codec.encode(3, block.clone().into()).unwrap();
    assert_eq!(&codec.decode(3, ours).unwrap()[..], &block[..]);
}

/// `--listBlocks`: after the startup survey, reads of never-written blocks and zero writes onto
/// them cost no HTTP request; written blocks still read back.
#[test]
fn list_blocks_survey_avoids_requests_for_zero_blocks() {
    let g = Garage::start();
    let s = Scratch::new();
    let m = mount(&g, BUCKET, &["--size=16m", "--blockSize=64k", "--blockHashPrefix"], &s.mnt());
    let data = vec![0xabu8; 4 << 16];
    write_synced(&m.file(), 0, &data);
    assert_eq!(m.unmount(), 0);

    let m = mount(&g, BUCKET, &["--blockHashPrefix", "--listBlocks", "--listBlocksThreads=4"], &s.mnt());
    wait_for(20, "the block survey", || m.stderr().contains("block survey done"));
    assert!(m.stderr().contains("4 of 256 blocks are non-zero"), "{}", m.stderr());
    let before = m.stats();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    f.read_exact_at(&mut buf, 8 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Zeros written over zero blocks, and a hole punched over 16 of them.
    f.write_all_at(&vec![0u8; 1 << 20], 4 << 20).unwrap();
    use std::os::fd::AsRawFd;
    let r = unsafe {
        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 6 << 20, 1 << 20)
    };
    assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    let after = m.stats();
    for name in ["http_gets", "http_puts", "http_deletes", "http_zero_blocks_read", "http_zero_blocks_written"] {
        assert_eq!(stat_value(&before, name), stat_value(&after, name), "{name} grew:\n{after}");
    }
    assert!(stat_value(&after, "zero_block_cache_read_hits") >= 128, "{after}");
    assert!(stat_value(&after, "zero_block_cache_write_hits") >= 16, "{after}");
    let mut head = vec![0u8; 4 << 16];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head == data);
    drop(f);
    assert_eq!(m.unmount(), 0);
}

/// A minimal EC2 instance-metadata service on 127.0.0.1 that hands out the test server's keys
/// for role `s3b-role`; with `v2`, only to requests carrying the session token it issued.
fn metadata_server(v2: bool) -> (Listener, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let server = Listener::start(move |mut conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        let mut token_ok = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("x-aws-ec2-metadata-token: tok-123") {
                token_ok = true;
            }
        }
        let (status, body) = if line.starts_with("PUT /latest/api/token") {
            ("200 OK", "tok-123".to_string())
        } else if line.starts_with("GET /latest/meta-data/iam/security-credentials/s3b-role ") && (token_ok || !v2) {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (
                "200 OK",
                format!(
                    "{{\"Code\":\"Success\",\"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\",\"Token\":\"\",\"Expiration\":\"2099-01-01T00:00:00Z\"}}",
                    s3b_testkit::garage::ACCESS_KEY_ID,
                    s3b_testkit::garage::SECRET_KEY
                ),
            )
        } else {
            ("401 Unauthorized", String::new())
        };
        let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    });
    (server, served)
}

#[test]
fn ec2_iam_credentials_v1_and_v2() {
    let g = Garage::start();
    for v2 in [false, true] {
        let (server, served) = metadata_server(v2);
        let port = server.port;
        let s = Scratch::new();
        let mut a = vec![
            format!("--baseURL={}", g.base_url()),
            "--accessEC2IAM=s3b-role".into(),
            "--size=1m".into(),
            "-f".into(),
        ];
        if v2 {
            a.push("--accessEC2IAM-IMDSv2".into());
        }
        a.push(BUCKET.into());
        a.push(s.mnt().to_string_lossy().into_owned());
        let stderr_path = s.path("stderr");
        let child = Command::new(bin())
            .args(&a)
            .env("S3BACKER_EC2_METADATA_URL", format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let m = Mount { child: Some(child), mnt: s.mnt(), stderr_path };
        wait_for(20, "the IAM-credentialed mount", || is_mounted(&s.mnt()));
        std::fs::OpenOptions::new().write(true).open(m.file()).unwrap().write_all_at(&[3u8; 4096], 0).unwrap();
        assert_eq!(m.unmount(), 0);
        assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1, "metadata never asked (v2={v2})");
        assert!(block_keys(&g, BUCKET).contains(&"00000000".to_string()));
    }
    // A role the metadata service does not know: one clear line, nothing written.
    let (server, _) = metadata_server(true);
    let port = server.port;
    let s = Scratch::new();
    let out = Command::new(bin())
        .args([format!("--baseURL={}", g.base_url()), "--accessEC2IAM=other".into(), "--size=1m".into(), "-f".into()])
        .arg(BUCKET)
        .arg(s.mnt())
        .env("S3BACKER_EC2_METADATA_URL", format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metadata") && err.lines().count() == 1, "{err}");
}

/// One ext4 round trip (mkfs + 200 files written, unmount; fresh mount, read them back) with
/// each program on its own bucket, behind a request-counting proxy. Prints the counts for the
/// release notes and checks that we never need notably more requests than C 1.5.4 for the same
/// work (10 % slack: how many writes the ext4 mount itself makes, and how many blocks read-ahead
/// fetches, vary with timing).
#[test]
fn request_counts_of_an_ext4_round_trip_vs_c() {
    use s3b_testkit::fault_proxy::FaultProxy;
    let g = Garage::start();
    g.create_bucket("bucket-c");
    let mut results = Vec::new();
    for (name, bucket) in [("ours", BUCKET), ("C 1.5.4", "bucket-c")] {
        let s = Scratch::new();
        let proxy = FaultProxy::counting(g.port);
        let flags = g.s3backer_flags_at(&proxy.base_url());
        let start = |geometry: &[&str]| -> Mount {
            let mut a = flags.clone();
            a.extend(geometry.iter().map(|s| s.to_string()));
            if name == "ours" {
                a.push(bucket.into());
                a.push(s.mnt().to_string_lossy().into_owned());
                Mount::start_program(bin(), &a, &s.mnt())
            } else {
                a.extend(["-f", "--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0"].map(String::from));
                a.push(bucket.into());
                a.push(s.mnt().to_string_lossy().into_owned());
                Mount::start_program(C_S3BACKER, &a, &s.mnt())
            }
        };
        let m = start(&["--size=256m", "--blockSize=64k"]);
        let tree = ext4_with_tree(&m, &s, 200, 21);
        assert_eq!(m.unmount(), 0);
        let written = proxy.method_counts();
        drop_caches();
        let m = start(&[]);
        let e = Ext4::mount(&m.file(), &s.ext4());
        check_tree(&s.ext4(), &tree);
        e.unmount();
        assert_eq!(m.unmount(), 0);
        let total = proxy.method_counts();
        let read: std::collections::BTreeMap<String, u64> =
            total.iter().map(|(k, v)| (k.clone(), v - written.get(k).copied().unwrap_or(0))).collect();
        eprintln!("{name}: write phase {written:?}, read phase {read:?}");
        results.push((written.values().sum::<u64>(), read.values().sum::<u64>()));
    }
    let ((ow, or), (cw, cr)) = (results[0], results[1]);
    eprintln!("requests ours/C: write {ow}/{cw}, read {or}/{cr}");
    // The read phase alone varies with read-ahead timing (speculative fetches on both sides);
    // the round trip as a whole must not cost notably more than C's.
    assert!(ow * 10 <= cw * 11, "we need more requests than C to write: {ow} vs {cw}");
    assert!((ow + or) * 10 <= (cw + cr) * 11, "we need more requests than C: write {ow} vs {cw}, read {or} vs {cr}");
}

/// `--ipTOS` sets the type-of-service byte on every connection to the server (seen with `ss`).
#[test]
fn ip_tos_is_set_on_connections() {
    let g = Garage::start();
    let s = Scratch::new();
    let m = mount(&g, BUCKET, &["--size=8m", "--blockSize=64k", "--ipTOS=0xb8", "--blockCacheSize=0"], &s.mnt());
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    f.write_all_at(&sparse_pattern(3, 1 << 20, 64 << 10), 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let ss = sh(&format!("ss -tnp --tos 'dport = :{}'", g.port));
    let ours: Vec<&str> = ss.lines().filter(|l| l.contains("\"s3backer\"")).collect();
    assert!(!ours.is_empty(), "no connection of ours to the server:\n{ss}");
    assert!(ours.iter().all(|l| l.contains("tos:0xb8")), "{ss}");
    assert_eq!(m.unmount(), 0);
}

/// A TLS front for the server: a CA and a certificate for 127.0.0.1 made with openssl, and a
/// small Python TLS terminator forwarding to `port`. Returns (https port, CA file, process).
fn tls_front(s: &Scratch, port: u16) -> (u16, std::path::PathBuf, std::process::Child) {
    let d = s.path("tls");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.display();
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf \
         && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null"
    ));
    let script = r#"
import socket, ssl, sys, threading
cert, key, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(64)
print(ls.getsockname()[1], flush=True)
def pump(a, b):
    try:
        while (d := a.recv(65536)):
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except (OSError, ssl.SSLError):
        c.close(); return
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pump, args=(t, u), daemon=True).start()
    pump(u, t)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &format!("{d}/srv.pem"), &format!("{d}/srv.key"), &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    (line.trim().parse().unwrap(), s.path("tls/ca.pem"), child)
}

/// TLS: the server's certificate is verified by default (an unknown CA is refused with one line
/// and nothing written), `--cacert` adds a trusted CA, `--insecure` skips verification.
#[test]
fn tls_verification_cacert_and_insecure() {
    let g = Garage::start();
    let s = Scratch::new();
    let (port, ca, mut front) = tls_front(&s, g.port);
    let https = format!("--baseURL=https://127.0.0.1:{port}/");
    let flags = |extra: &[&str]| {
        let mut a = g.s3backer_flags();
        a[0] = https.clone();
        a.extend(["--size=4m", "--blockSize=64k", "--timeout=5"].map(String::from));
        a.extend(extra.iter().map(|x| x.to_string()));
        a.push(BUCKET.into());
        a
    };
    let out = run_ours(&with_mnt(flags(&["--maxRetryPause=1000"]), &s.mnt()));
    let err = errors(&out);
    assert!(!out.status.success() && err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(g.list_keys(BUCKET).is_empty(), "{:?}", g.list_keys(BUCKET));

    let data = sparse_pattern(9, 1 << 20, 64 << 10);
    let cacert = format!("--cacert={}", ca.display());
    let a = flags(&[&cacert]);
    let m = Mount::start_owned(a.to_vec(), &s.mnt());
    write_synced(&m.file(), 0, &data);
    assert_eq!(m.unmount(), 0);
    assert!(!block_keys(&g, BUCKET).is_empty());

    drop_caches();
    let a = flags(&["--insecure"]);
    let m = Mount::start_owned(a.to_vec(), &s.mnt());
    assert!(read_head(&m.file(), data.len()) == data, "different bytes over TLS");
    assert_eq!(m.unmount(), 0);
    let _ = front.kill();
    let _ = front.wait();
}

/// `--sharedDiskMode`: two mounts of one bucket at once, each seeing the other's writes at once
/// (nothing cached); the shared token stays after unmount and keeps plain mounts out until
/// `--reset-mounted-flag`.
#[test]
fn shared_disk_mode_two_mounts_see_each_other() {
    let g = Garage::start();
    let s = Scratch::new();
    let mnt2 = s.path("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let flags = ["--size=8m", "--blockSize=32k", "--sharedDiskMode"];
    let a = mount(&g, BUCKET, &flags, &s.mnt());
    let b = mount(&g, BUCKET, &flags, &mnt2);
    let stats = a.stats();
    assert!(!stats.contains("block_cache_") && !stats.contains("zero_block_cache_"), "{stats}");

    let one = sparse_pattern(1, 256 << 10, 32 << 10);
    let fa = std::fs::OpenOptions::new().read(true).write(true).open(a.file()).unwrap();
    let fb = std::fs::OpenOptions::new().read(true).write(true).open(b.file()).unwrap();
    fa.write_all_at(&one, 64 << 10).unwrap();
    fa.sync_all().unwrap();
    let mut back = vec![0u8; one.len()];
    fb.read_exact_at(&mut back, 64 << 10).unwrap();
    assert!(back == one, "B does not see A's write");
    let two = sparse_pattern(2, 256 << 10, 32 << 10);
    fb.write_all_at(&two, 64 << 10).unwrap();
    fb.sync_all().unwrap();
    fa.read_exact_at(&mut back, 64 << 10).unwrap();
    assert!(back == two, "A still sees its own old data after B's write");
    drop((fa, fb));

    // A plain mount is refused while the volume is in shared mode, and stays refused after the
    // shared mounts are gone.
    let mnt3 = s.path("mnt3");
    std::fs::create_dir(&mnt3).unwrap();
    let out = run_ours(&with_mnt(args(&g, BUCKET, &["--size=8m", "--blockSize=32k"]), &mnt3));
    assert!(!out.status.success() && errors(&out).contains("--sharedDiskMode"), "{}", errors(&out));
    assert_eq!(a.unmount(), 0);
    assert_eq!(b.unmount(), 0);
    assert!(g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"), "shared token cleared at unmount");
    let out = run_ours(&with_mnt(args(&g, BUCKET, &["--size=8m", "--blockSize=32k"]), &mnt3));
    assert!(!out.status.success() && errors(&out).contains("--sharedDiskMode"), "{}", errors(&out));
    let out = run_ours(&args(&g, BUCKET, &["--reset-mounted-flag"]));
    assert!(out.status.success(), "{}", errors(&out));
    let m = mount(&g, BUCKET, &["--size=8m", "--blockSize=32k"], &s.mnt());
    assert!(read_head(&m.file(), (64 << 10) + two.len())[64 << 10..] == two[..]);
    assert_eq!(m.unmount(), 0);
}

/// A block changed in the bucket behind the cache's back while unmounted: a restart on the cache
/// file verifies its clean blocks (If-None-Match) and serves the fresh data; with
/// `--blockCacheNoVerify` the stale cached copy is served (the documented trade-off).
#[test]
fn block_changed_behind_the_cache_file_is_detected_unless_no_verify() {
    let g = Garage::start();
    let s = Scratch::new();
    let (_, cache) = s.cache_file();
    let flags = ["--size=4m", "--blockSize=64k", "--blockCacheSize=16", cache.as_str()];
    let at = 5u64 << 16;
    let read5 = |m: &Mount| {
        let mut b = vec![0u8; 64 << 10];
        std::fs::File::open(m.file()).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    };
    let put5 = |data: &[u8]| {
        let p = s.path("obj");
        std::fs::write(&p, data).unwrap();
        let (code, body) = g.curl(
            &[
                "-X",
                "PUT",
                "--data-binary",
                &format!("@{}", p.display()),
                "-H",
                "Content-Type: application/x-s3backer-block",
            ],
            &format!("{BUCKET}/00000005"),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    };
    let (a, b, c) = (
        sparse_pattern(1, 64 << 10, 64 << 10),
        sparse_pattern(2, 64 << 10, 64 << 10),
        sparse_pattern(3, 64 << 10, 64 << 10),
    );

    let m = mount(&g, BUCKET, &flags, &s.mnt());
    write_synced(&m.file(), at, &a);
    drop_caches();
    assert!(read5(&m) == a);
    assert_eq!(m.unmount(), 0);

    // Changed behind the cache: detected on restart.
    put5(&b);
    drop_caches();
    let m = mount(&g, BUCKET, &flags, &s.mnt());
    assert!(read5(&m) == b, "stale cached block served after the object changed");
    let stats = m.stats();
    assert!(stat_value(&stats, "block_cache_mismatch") >= 1, "{stats}");
    assert_eq!(m.unmount(), 0);

    // With --blockCacheNoVerify the cached copy is trusted, as documented.
    put5(&c);
    drop_caches();
    let mut nv = flags.to_vec();
    nv.push("--blockCacheNoVerify");
    let m = mount(&g, BUCKET, &nv, &s.mnt());
    assert!(read5(&m) == b, "--blockCacheNoVerify did not serve the cached copy");
    assert_eq!(m.unmount(), 0);
}

/// S3 credentials never appear in `--debug` / `--debug-http` output, the stats file or error
/// messages; an access file readable by other users is used but warned about.
#[test]
fn s3_secrets_never_leak_and_open_access_file_warns() {
    use s3b_testkit::garage::{ACCESS_KEY_ID, SECRET_KEY};
    use std::os::unix::fs::PermissionsExt;
    let g = Garage::start();
    let s = Scratch::new();
    let access = s.path("passwd");
    std::fs::write(&access, format!("{ACCESS_KEY_ID}:{SECRET_KEY}\n")).unwrap();
    std::fs::set_permissions(&access, std::fs::Permissions::from_mode(0o644)).unwrap();
    let base = format!("--baseURL={}", g.base_url());
    let file = format!("--accessFile={}", access.display());
    let m = Mount::start(&[&base, &file, "--debug", "--debug-http", "--size=4m", "--blockSize=64k", BUCKET], &s.mnt());
    let f = std::fs::OpenOptions::new().write(true).open(m.file()).unwrap();
    f.write_all_at(&sparse_pattern(4, 1 << 20, 64 << 10), 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop_caches();
    let _ = read_head(&m.file(), 1 << 20);
    let stats = m.stats();
    let log = m.stderr();
    assert_eq!(m.unmount(), 0);
    assert!(log.contains("HTTP PUT"), "no --debug-http output to check:\n{log}");
    assert!(log.contains("is readable by other users"), "no warning for a 0644 access file:\n{log}");
    for (what, text) in [("log", &log), ("stats", &stats)] {
        assert!(!text.contains(SECRET_KEY), "secret key in the {what}");
    }

    // A wrong secret: the error names the problem, and neither secret shows.
    let wrong = "wrong-secret-key-00000000000000000000";
    std::fs::write(&access, format!("{ACCESS_KEY_ID}:{wrong}\n")).unwrap();
    std::fs::set_permissions(&access, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_ours(&[
        base,
        file,
        "--debug".into(),
        "--debug-http".into(),
        "-f".into(),
        BUCKET.into(),
        s.mnt().to_string_lossy().into_owned(),
    ]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(!all.contains(wrong) && !all.contains(SECRET_KEY), "a secret in the output:\n{all}");
    assert!(!all.contains("readable by other users"), "warned about a 0600 access file:\n{all}");
}

/// Regression: a relative `--accessFile` in daemon mode. The transport is set up after the
/// daemon changes to `/`, so the file used to be looked for there and the mount failed.
#[test]
fn regression_relative_access_file_in_daemon_mode() {
    use s3b_testkit::garage::{ACCESS_KEY_ID, SECRET_KEY};
    use std::os::unix::fs::PermissionsExt;
    let g = Garage::start();
    let s = Scratch::new();
    let cwd = s.path("");
    std::fs::write(cwd.join("rel-passwd"), format!("{ACCESS_KEY_ID}:{SECRET_KEY}\n")).unwrap();
    std::fs::set_permissions(cwd.join("rel-passwd"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(bin())
        .current_dir(&cwd)
        .args([format!("--baseURL={}", g.base_url()), "--accessFile=rel-passwd".into(), "--size=4m".into()])
        .args([BUCKET, s.mnt().to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&s.mnt()));
    sh(&format!("umount {}", s.mnt().display()));
    wait_for(30, "daemon exit", || daemon_pids(&s.mnt().to_string_lossy()).is_empty());
    assert!(!g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"), "mount token left: unclean exit");
}

/// The consistency layer over a real server: ext4 round trip with `--md5CacheSize` (no block
/// cache, so reads of recently written blocks go out with If-Match, which Garage checks), e2fsck
/// clean, and the `md5_cache_*` stats lines show the layer at work.
#[test]
fn consistency_layer_ext4_round_trip_over_s3() {
    let g = Garage::start();
    let s = Scratch::new();
    let flags = [
        "--size=32m",
        "--blockSize=32k",
        "--blockCacheSize=0",
        "--md5CacheSize=1024",
        "--md5CacheTime=5000",
        "--minWriteDelay=20",
    ];
    let m = mount(&g, BUCKET, &flags, &s.mnt());
    let tree = ext4_with_tree(&m, &s, 80, 41);
    drop_caches();
    checked_ext4(&m, &s, &tree).unmount();
    let stats = m.stats();
    assert!(stat_value(&stats, "md5_cache_current_size") > 0, "{stats}");
    assert!(stats.contains("md5_cache_write_delays"), "{stats}");
    assert_eq!(m.unmount(), 0);
    drop_caches();
    let m = mount(&g, BUCKET, &["--md5CacheSize=1024", "--md5CacheTime=5000"], &s.mnt());
    fsck_clean(&m.file());
    assert_eq!(m.unmount(), 0);
}

/// A bucket in another region (S3 answers 301 PermanentRedirect with the bucket's region): one
/// line naming the region to use, no retries, nothing written.
#[test]
fn redirect_to_another_region_names_the_region() {
    use std::io::{Read, Write};
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let server = Listener::start(move |mut c| {
        let mut buf = [0u8; 8192];
        let _ = c.read(&mut buf);
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message><Region>eu-west-1</Region></Error>";
        let _ = write!(
            c,
            "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let port = server.port;
    let s = Scratch::new();
    let out = run_ours(&[
        format!("--baseURL=http://127.0.0.1:{port}/"),
        "--accessId=AKIDEXAMPLE".into(),
        "--accessKey=secret-example-key".into(),
        "--size=1m".into(),
        "-f".into(),
        BUCKET.into(),
        s.mnt().to_string_lossy().into_owned(),
    ]);
    let err = errors(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--region=eu-west-1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) <= 2, "a redirect was retried");
    assert!(!is_mounted(&s.mnt()));
}

/// Uploads carry the SHA-256 of their body in the signature instead of upstream's `Content-MD5`:
/// a body damaged on the way (a proxy flips a byte in a quarter of them) is refused by the
/// server, retried, and what lands in the bucket is exactly what was written.
#[test]
fn upload_bodies_damaged_in_transit_are_refused_and_sent_again() {
    use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
    let g = Garage::start();
    let s = Scratch::new();
    let proxy = FaultProxy::start(g.port, FaultConfig { corrupt_percent: 25, ..FaultConfig::default() });
    let mut a = args(&g, BUCKET, &["--size=8m", "--blockSize=64k", "--blockCacheSize=0", "--initialRetryPause=20"]);
    a[0] = format!("--baseURL={}", proxy.base_url());
    let m = Mount::start_owned(a.to_vec(), &s.mnt());
    let data = sparse_pattern(11, 2 << 20, 64 << 10);
    write_synced(&m.file(), 0, &data);
    let retries = stat_value(&m.stats(), "http_num_retries");
    assert_eq!(m.unmount(), 0);
    let corrupted = proxy.counts().corrupts;
    assert!(corrupted >= 3, "the proxy damaged only {corrupted} bodies");
    assert!(retries >= corrupted, "{corrupted} damaged uploads but {retries} retries");
    // Straight from the server, without the proxy: every byte as written.
    drop_caches();
    let m = mount(&g, BUCKET, &["--readOnly"], &s.mnt());
    let mut got = vec![0u8; data.len()];
    std::fs::File::open(m.file()).unwrap().read_exact_at(&mut got, 0).unwrap();
    assert!(got == data, "the bucket holds other bytes than were written");
    assert_eq!(m.unmount(), 0);
}
