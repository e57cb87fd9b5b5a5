//! Bad invocations: each gives one clear line naming the problem on stderr, a non-zero exit,
//! no panic, and writes nothing to the store.

mod common;
use common::*;

/// (arguments, separated by spaces; text the error line must contain). `{store}` and `{mnt}` are
/// replaced by a real empty store directory and mount point, `{file}` by a regular file, and
/// `{empty}` by an empty argument.
const CASES: &[(&str, &str)] = &[
    ("", "no bucket specified"),
    ("--test {store}", "no mount point specified"),
    ("--test {store} {mnt}", "--size is required with --test"),
    ("--test --size=1m --blockSize=3000 {store} {mnt}", "block size must be a power of 2"),
    ("--test --size=1m --blockSize=0 {store} {mnt}", "block size must be a power of 2"),
    ("--test --size=1m --blockSize=4x {store} {mnt}", "invalid block size \"4x\""),
    ("--test --size=1m --blockSize=8g {store} {mnt}", "block size 8g is too big"),
    ("--test --size=1000 --blockSize=4k {store} {mnt}", "must be a multiple of block size 4k"),
    ("--test --size=0 {store} {mnt}", "file size must be greater than zero"),
    ("--test --size=lots {store} {mnt}", "invalid file size \"lots\""),
    ("--test --size=64t --blockSize=4k {store} {mnt}", "more than 2^32 blocks"),
    ("--test --size=99999999999999999999 {store} {mnt}", "is too big"),
    ("--test --size=1m --bogusFlag {store} {mnt}", "unexpected argument '--bogusFlag'"),
    ("--test --size=1m -o bogus {store} {mnt}", "unknown mount option \"bogus\""),
    ("--test --size=1m -o uid=abc {store} {mnt}", "invalid mount option \"uid=abc\""),
    ("--test --size=1m {store} {store}/nonexistent", "No such file or directory"),
    ("--test --size=1m {store} {file}", "is not a directory"),
    ("--test --size=1m {store}/missing {mnt}", "test directory"),
    ("--test --size=1m {file} {mnt}", "regular: not a directory"),
    ("--test --size=1m {store} {mnt} extra", "too many arguments"),
    ("--test --size=1m --fileMode=9 {store} {mnt}", "invalid --fileMode \"9\""),
    ("--test --size=1m --filename=a/b {store} {mnt}", "invalid --filename"),
    ("--test --size=1m --filename=stats {store} {mnt}", "must differ"),
    ("--test --size=1m --statsFilename= {store} {mnt}", "invalid --statsFilename"),
    ("--test --size=1m -F {store}/nofile {store} {mnt}", "can't read config file"),
    ("--erase --reset-mounted-flag bucket", "cannot be used together"),
    ("--erase bucket {mnt}", "mount point cannot be given"),
    ("--test --erase {store}", "needs a bucket"),
    ("--nbd --test --size=1m {store}", "--nbd needs --nbdListen=ADDR"),
    ("--nbd --test --size=1m --nbdListen=0.0.0.0:10809 {store}", "add --nbdAllowRemote"),
    ("--nbd --test --size=1m --nbdListen=127.0.0.1:port {store}", "bad port \"port\""),
    ("--nbd --test --size=1m --nbdListen=10809 {store}", "a port alone; expected HOST:PORT"),
    ("--test --size=1m --metricsListen=9100 {store} {mnt}", "invalid --metricsListen \"9100\": a port alone"),
    ("--test --size=1m --metricsListen=10.1.2.3:9100 {store} {mnt}", "add --metricsAllowRemote"),
    ("--test --size=1m --nbdListen={store}/s {store} {mnt}", "--nbdListen requires --nbd"),
    ("--test --size=1m --nbd-flag=x {store} {mnt}", "--nbd-flag requires --nbd"),
    ("--nbd --erase bucket", "--nbd cannot be used with --erase"),
    ("--nbd --test --size=1m {store} {store}/nbd9", "NBD device"),
    ("--nbd --test --size=1m --nbdListen={store}/s {store} {store}/nbd9", "cannot be given together"),
    ("--nbd --test --size=1m --nbdListen={file} {store}", "exists and is not a socket"),
    ("--nbd --test --size=1m --nbdListen={store}/no/dir/s {store}", "does not exist"),
    ("--nbd --test --size=1m {store} a b", "too many arguments"),
    ("--nbd --test --size=1m --nbdListen={store}/s --nbdTlsCert={file} {store}", "--nbdTlsCert requires --nbdTlsKey"),
    (
        "--nbd --test --size=1m --nbdListen={store}/s --nbdTlsCert={file} --nbdTlsKey={file} {store}",
        "no certificate in the file",
    ),
    (
        "--nbd --test --size=1m --nbdListen={store}/s --nbdTlsCert={store}/none --nbdTlsKey={file} {store}",
        "--nbdTlsCert",
    ),
    ("--test --size=1m --nbdTlsKey={file} {store} {mnt}", "--nbdTlsKey requires --nbd"),
    ("--test --size=1m --blockCacheSync {store} {mnt}", "--blockCacheSync requires setting --blockCacheWriteDelay=0"),
    ("--test --size=1m --blockCacheRecoverDirtyBlocks {store} {mnt}", "requires specifying --blockCacheFile"),
    ("--test --size=1m --blockCacheThreads=0 {store} {mnt}", "thread pool size 0"),
    ("--test --size=1m --encrypt {store} {mnt}", "--encrypt needs a password"),
    ("--test --size=1m --compress=lzma {store} {mnt}", "invalid --compress \"lzma\""),
    ("--test --size=1m --encrypt=DES-CBC --password=x {store} {mnt}", "unsupported cipher"),
    ("--test --size=1m --encrypt --passwordFile={store}/nopw {store} {mnt}", "can't read password file"),
    ("--test --size=1m --password=x {store} {mnt}", "--encrypt was not"),
    ("--test --size=1m --encrypt --password=x --keyLength=65 {store} {mnt}", "--keyLength 65"),
    ("--test --size=1m --md5CacheSize=10 {store} {mnt}", "or writes would deadlock"),
    ("--test --size=1m --md5CacheTime=5 {store} {mnt}", "--md5CacheTime must be 0 when the MD5 cache is disabled"),
    ("--test --size=1m --minWriteDelay=5 {store} {mnt}", "--minWriteDelay must be 0 when the MD5 cache is disabled"),
    (
        "--test --size=1m --md5CacheSize=10 --md5CacheTime=100 --minWriteDelay=500 {store} {mnt}",
        "must be at least --minWriteDelay",
    ),
    ("--test --size=1m --md5CacheSize=many {store} {mnt}", "invalid --md5CacheSize \"many\""),
    ("--test --size=1m --compress extra-value {store} {mnt}", "too many arguments"),
    ("--test --size=1m --blockSize=2m {store} {mnt}", "must be a multiple of block size 2m"),
    ("--test --size=-1 {store} {mnt}", "invalid file size \"-1\""),
    ("--test --size= {store} {mnt}", "invalid file size \"\""),
    ("--test --size=1m --blockSize= {store} {mnt}", "invalid block size \"\""),
    ("--test --size=1m --readOnly=yes {store} {mnt}", "unexpected value 'yes' for '--readOnly'"),
    ("--test --size=1m {store} {mnt} -F", "option -F needs a file name"),
    ("--test --size=1m {store} {mnt} -o", "option -o needs a value"),
    ("--test --size=1m -o readOnly,blockSize=3k {store} {mnt}", "block size must be a power of 2"),
    ("--test --size=1m {empty} {mnt}", "empty directory name"),
    ("--test --size=1m --blockSize=4k --size=3k {store} {mnt}", "file size 3072 must be a multiple"),
    (
        "--test --size=1m --sharedDiskMode --blockCacheSize=10 {store} {mnt}",
        "--blockCacheSize cannot be used with --sharedDiskMode",
    ),
    (
        "--test --size=1m --sharedDiskMode --listBlocks {store} {mnt}",
        "--listBlocks cannot be used with --sharedDiskMode",
    ),
    (
        "--test --size=1m --statsFileMirrorInterval=10 {store} {mnt}",
        "--statsFileMirrorInterval requires --statsFileMirror",
    ),
    ("--test --size=1m --statsFileMirror={store}/no/dir/m {store} {mnt}", "does not exist"),
    ("--test --size=1m --statsFileMirror={store} {store} {mnt}", "is a directory"),
    (
        "--test --size=1m --statsFileMirror={store}/m --statsFileMirrorInterval=0 {store} {mnt}",
        "invalid --statsFileMirrorInterval \"0\"",
    ),
    // Values refused by the flag parsers, also in the fstab spelling, and S3 flags: all before
    // the process daemonizes.
    ("--test --size=1m --blockCacheSize=lots {store} {mnt}", "invalid --blockCacheSize \"lots\""),
    ("--test --size=1m -o blockSize=4q {store} {mnt}", "--blockSize: invalid block size \"4q\""),
    ("--timeout=0 bucket {mnt}", "invalid --timeout \"0\": must be at least 1 second"),
    ("--listBlocksThreads=17 bucket {mnt}", "invalid --listBlocksThreads \"17\""),
    ("--accessKey=x bucket {mnt}", "--accessKey (or --accessKeyEnv) requires --accessId"),
    ("--vhost --no-vhost bucket {mnt}", "--vhost and --no-vhost cannot be used together"),
];

#[test]
fn bad_invocations_fail_with_one_clear_line() {
    let s = Scratch::new();
    let file = s.path("regular");
    std::fs::write(&file, b"x").unwrap();
    let sub = |a: &str| {
        a.replace("{store}", s.store().to_str().unwrap())
            .replace("{mnt}", s.mnt().to_str().unwrap())
            .replace("{file}", file.to_str().unwrap())
            .replace("{empty}", "")
    };
    for (args, want) in CASES {
        let args: Vec<String> = args.split(' ').filter(|a| !a.is_empty()).map(sub).collect();
        let out = std::process::Command::new(bin()).args(&args).env("HOME", s.path("home")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: expected one line, got:\n{err}");
        assert!(err.starts_with("s3backer: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(!is_mounted(&s.mnt()), "{args:?} left a mount");
    }
    // Nothing was written to the store by any of them.
    assert_eq!(std::fs::read_dir(s.store()).unwrap().count(), 0);
}

#[test]
fn already_mounted_mount_point_is_refused() {
    let s = Scratch::new();
    let store = s.store();
    let m = Mount::start(&["--test", "--size=1m", store.to_str().unwrap()], &s.mnt());
    let out = run(&["--test", "--size=1m", "-f", store.to_str().unwrap(), s.mnt().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is already mounted") && err.lines().count() == 1, "{err}");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn help_and_version_exit_zero() {
    for a in ["--help", "-h", "-?"] {
        let out = run(&[a]);
        assert!(out.status.success(), "{a}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("--blockSize"), "{a}");
    }
    for a in ["--version", "-v"] {
        let out = run(&[a]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("s3backer "));
    }
}
