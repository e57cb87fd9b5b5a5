//! Shared helpers for end-to-end tests: run the real binary, mount it, loop-mount ext4 on the
//! exported file, and always clean up in the safe order (ext4, then FUSE, then servers) even
//! when a test fails. These tests need root, /dev/fuse and loop devices, as CI has.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_s3backer")
}

/// Runs the binary to completion with `args`.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).stdin(Stdio::null()).output().expect("run s3backer")
}

/// Runs `cmd` to completion, panicking with its output unless it succeeds (`what` names it in
/// the message); returns its stdout.
pub fn checked_output(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    s3b_testkit::stdout_of_success(&out, what)
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    checked_output(Command::new("sh").arg("-c").arg(cmd), cmd)
}

/// Runs a program, panicking with its output unless it succeeds; returns stdout.
pub fn cmd(prog: &str, args: &[&str]) -> String {
    checked_output(Command::new(prog).args(args), &format!("{prog} {args:?}"))
}

/// Runs Debian's python3 (the one with the `nbd` module) on `script` with `args`.
pub fn python(script: &str, args: &[&str]) -> String {
    checked_output(Command::new("/usr/bin/python3").arg("-c").arg(script).args(args), "python")
}

/// Runs `cmd` with stdin closed and checks that it failed with exit code 1 after one line on
/// stderr (warnings aside); returns that line.
pub fn one_error_line(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run the command");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

/// Owned copies of string arguments.
pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `--test` flags for the scratch store plus `extra`, the store last.
pub fn test_args(s: &Scratch, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&["--test"]);
    a.extend(strings(extra));
    a.push(s.store().to_string_lossy().into_owned());
    a
}

/// `len` random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `len` bytes in chunks of `chunk` bytes: every third chunk (1, 4, 7, …) zeros, the others
/// random from `seed`, so that zero blocks are exercised too.
pub fn sparse_pattern(seed: u64, len: usize, chunk: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(chunk).enumerate() {
        if i % 3 != 1 {
            rng.fill_bytes(c);
        }
    }
    v
}

/// Writes `data` at `offset` of `file` and fsyncs it.
pub fn write_synced(file: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap_or_else(|e| panic!("open {file:?}: {e}"));
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// True when `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")) == Some(target.to_string_lossy().into_owned()))
}

/// Waits until `cond` holds, up to `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` as a daemon under test: no stdin, stdout discarded, stderr into the file
/// `stderr` (read it while it runs, as a log).
pub fn spawn_logged(cmd: &mut Command, stderr: &Path) -> Child {
    let errf = std::fs::File::create(stderr).unwrap_or_else(|e| panic!("create {stderr:?}: {e}"));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(errf).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// A process under test that may mount `mnt`. Dropped while it still runs (a check failed),
/// it unmounts `mnt` if mounted, which ends a mount's daemon, sends SIGTERM if `terminate`
/// (for a process that unmounting does not end: an NBD server) and waits for the process, so
/// a failed test leaves nothing running.
pub struct Supervised {
    /// The process.
    pub child: Child,
    /// The mount point it mounts, if any.
    pub mnt: Option<PathBuf>,
    /// Whether dropping it sends SIGTERM after the unmount.
    pub terminate: bool,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let running = self.child.try_wait().ok().flatten().is_none();
        if let Some(m) = self.mnt.as_deref().filter(|m| is_mounted(m)) {
            let _ = Command::new("umount").arg(m).status();
        }
        if running {
            if self.terminate {
                let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            }
            let _ = self.child.wait();
        }
        // A child that died early leaves a dead mount that the plain umount may not clear.
        if let Some(m) = self.mnt.as_deref() {
            clear_mount(m);
        }
    }
}

/// Unmounts `mnt` if it is still mounted (a dead FUSE mount too): umount, then a lazy umount
/// if that failed.
pub fn clear_mount(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg(mnt).stderr(Stdio::null()).status();
    }
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
}

/// A scratch directory with `store/`, `mnt/` and `ext4/` inside, removed on drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("s3b-test-").tempdir_in("/tmp").expect("tempdir");
        for d in ["store", "mnt", "ext4"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Scratch { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Makes directories `names` in the scratch directory; returns their paths.
    pub fn dirs(&self, names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| {
                let p = self.path(n);
                std::fs::create_dir_all(&p).unwrap();
                p
            })
            .collect()
    }
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }
    pub fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }
    pub fn ext4(&self) -> PathBuf {
        self.path("ext4")
    }
    /// The path of a block cache file in the scratch directory, and the flag naming it.
    pub fn cache_file(&self) -> (PathBuf, String) {
        let cache = self.path("cache");
        let flag = format!("--blockCacheFile={}", cache.display());
        (cache, flag)
    }
}

/// A running s3backer (foreground, `-f`) mounted on a directory. Dropping it unmounts and
/// waits for the process to exit.
pub struct Mount {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub stderr_path: PathBuf,
}

impl Mount {
    /// Starts `program` with `args` (which must include `-f` and the mount point last) and
    /// waits for the mount to appear.
    pub fn start_program(program: &str, args: &[String], mnt: &Path) -> Mount {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Mount::start_command(cmd, mnt)
    }

    /// Like [`Mount::start_program`], for a command prepared by the caller (environment, …).
    pub fn start_command(mut cmd: Command, mnt: &Path) -> Mount {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let stderr_path = mnt.with_extension(format!("stderr.{}", std::process::id()));
        let child = spawn_logged(&mut cmd, &stderr_path);
        let mut m = Mount { child: Some(child), mnt: mnt.to_path_buf(), stderr_path };
        let end = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mnt) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{program} exited with {status} before mounting: {}", m.stderr());
            }
            assert!(Instant::now() < end, "mount did not appear: {}", m.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Starts our binary in the foreground: `args` then the mount point.
    pub fn start(args: &[&str], mnt: &Path) -> Mount {
        Mount::start_owned(strings(args), mnt)
    }

    /// [`Mount::start`] with owned arguments.
    pub fn start_owned(mut args: Vec<String>, mnt: &Path) -> Mount {
        args.push("-f".into());
        args.push(mnt.to_string_lossy().into_owned());
        Mount::start_program(bin(), &args, mnt)
    }

    /// Starts our binary in the foreground on the scratch `--test` store with the flags
    /// `extra`, mounted on the scratch mount point.
    pub fn test_dir(s: &Scratch, extra: &[&str]) -> Mount {
        Mount::start_owned(test_args(s, extra), &s.mnt())
    }

    /// [`Mount::test_dir`], then a new ext4 on the exported file, mounted on the scratch ext4
    /// mount point.
    pub fn test_dir_ext4(s: &Scratch, extra: &[&str]) -> (Mount, Ext4) {
        let m = Mount::test_dir(s, extra);
        let e = Ext4::create(&m.file(), &s.ext4());
        (m, e)
    }

    /// Path of the exported file (default name).
    pub fn file(&self) -> PathBuf {
        self.mnt.join("file")
    }

    /// Contents of the stats file.
    pub fn stats(&self) -> String {
        std::fs::read_to_string(self.mnt.join("stats")).expect("read stats")
    }

    /// Waits up to two minutes until line `stat` of the stats has grown by `by` from `from`
    /// (`what` names the wait in a timeout); returns the value it reached.
    pub fn wait_stat_grown(&self, stat: &str, from: u64, by: u64, what: &str) -> u64 {
        let mut now = from;
        wait_for(120, what, || {
            now = stat_value(&self.stats(), stat);
            now >= from + by
        });
        now
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Unmounts and waits for the process; returns its exit status code.
    pub fn unmount(mut self) -> i32 {
        self.finish()
    }

    fn finish(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else { return 0 };
        // umount can fail with EBUSY for a moment when another test thread forks while this
        // one still holds a descriptor of the mounted file (the child holds it until exec);
        // so retry until the mount is gone instead of trying once.
        let mut last_try: Option<Instant> = None;
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if last_try.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) && is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status();
                last_try = Some(Instant::now());
            }
            if let Some(status) = child.try_wait().unwrap() {
                // A daemon that died (or exited while an umount met EBUSY) leaves its mount
                // behind: clear it, so no test leaves a mount point attached.
                clear_mount(&self.mnt);
                let _ = std::fs::remove_file(&self.stderr_path);
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                panic!("s3backer did not exit after unmount: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (a crash), then clears the dead mount.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        clear_mount(&self.mnt);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.finish();
        }
    }
}

/// ext4 loop-mounted on an exported file; unmounted on drop (before the FUSE mount goes).
pub struct Ext4 {
    pub dir: PathBuf,
}

impl Ext4 {
    /// Makes a new ext4 file system on `file`.
    pub fn mkfs(file: &Path) {
        sh(&format!("mkfs.ext4 -q -F -E nodiscard {}", file.display()));
    }

    /// Makes a new ext4 file system on `file` and loop-mounts it on `dir`.
    pub fn create(file: &Path, dir: &Path) -> Ext4 {
        Ext4::mkfs(file);
        Ext4::mount(file, dir)
    }

    /// Loop-mounts `file` on `dir`.
    pub fn mount(file: &Path, dir: &Path) -> Ext4 {
        // noinit_itable: no background inode-table zeroing (ext4lazyinit), whose timing would
        // otherwise decide how many writes a test sees after the mount.
        sh(&format!("mount -o loop,noinit_itable {} {}", file.display(), dir.display()));
        Ext4 { dir: dir.to_path_buf() }
    }

    /// Syncs and unmounts.
    pub fn unmount(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("sync").status();
            // Retry briefly: a descriptor inherited by a concurrently forking test thread makes
            // umount fail with EBUSY for a moment. Lazy unmount only as a last resort.
            for _ in 0..50 {
                let st = Command::new("umount").arg(&self.dir).stderr(Stdio::null()).status();
                if matches!(st, Ok(s) if s.success()) || !is_mounted(&self.dir) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs `e2fsck -fn` on `file` and panics unless it reports a clean file system.
pub fn fsck_clean(file: &Path) {
    checked_output(Command::new("e2fsck").arg("-fn").arg(file), "e2fsck -fn (problems found)");
}

/// Writes a tree of `n` files of random sizes and content under `root`; returns
/// (relative path, sha256 hex) for each.
pub fn write_tree(root: &Path, n: usize, seed: u64) -> Vec<(String, String)> {
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let rel = format!("d{}/e{}/f{i}.bin", i % 7, i % 3);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let len = match i % 10 {
            0 => rng.gen_range(100_000..400_000),
            1 => 0,
            _ => rng.gen_range(1..20_000),
        };
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        std::fs::write(&path, &data).unwrap();
        out.push((rel, hex(&Sha256::digest(&data))));
    }
    out
}

/// Checks every file of `tree` under `root` has its recorded sha256.
pub fn check_tree(root: &Path, tree: &[(String, String)]) {
    use sha2::{Digest, Sha256};
    for (rel, sum) in tree {
        let data = std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert_eq!(&hex(&Sha256::digest(&data)), sum, "content of {rel} differs");
    }
}

/// Makes a new ext4 on `m`'s file, writes a [`write_tree`] of `files` files from `seed` into
/// it on the scratch ext4 mount point and unmounts it again; returns the tree.
pub fn ext4_with_tree(m: &Mount, s: &Scratch, files: usize, seed: u64) -> Vec<(String, String)> {
    let e = Ext4::create(&m.file(), &s.ext4());
    let tree = write_tree(&s.ext4(), files, seed);
    e.unmount();
    tree
}

/// Checks the ext4 on `m`'s file: e2fsck finds it clean and, mounted on the scratch ext4
/// mount point, every file of `tree` has its content. Returns the ext4, still mounted.
pub fn checked_ext4(m: &Mount, s: &Scratch, tree: &[(String, String)]) -> Ext4 {
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    check_tree(&s.ext4(), tree);
    e
}

/// A command line for a volume on an S3 server: the server's own flags (`server`:
/// endpoint and credentials), then `extra`, then the volume (`bucket` or `bucket/subdir`).
pub fn volume_args(server: Vec<String>, extra: &[&str], volume: &str) -> Vec<String> {
    let mut a = server;
    a.extend(strings(extra));
    a.push(volume.to_string());
    a
}

/// `keys` of a bucket without the mount token: the volume's blocks.
pub fn without_mount_token(keys: Vec<String>) -> Vec<String> {
    keys.into_iter().filter(|k| !k.ends_with("s3backer-mounted")).collect()
}

/// Writes `secret` into a password file in the scratch directory; returns the
/// `--passwordFile` flag naming it.
pub fn password_flag(s: &Scratch, secret: &str) -> String {
    let p = s.path("pw");
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    format!("--passwordFile={}", p.display())
}

/// Runs `scenario` with the flags of an encrypted, compressed volume (`--encrypt --compress`
/// and a password file that lives as long as the run).
pub fn encrypted_compressed(scenario: impl FnOnce(&[&str])) {
    let pw = Scratch::new();
    let flag = password_flag(&pw, "secret");
    scenario(&["--encrypt", "--compress", &flag]);
}

/// `&str`s of owned arguments.
pub fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The integer value of line `name` of a stats file's text.
pub fn stat_value(stats: &str, name: &str) -> u64 {
    stat_parsed(stats, name)
}

/// The number (integer or fraction) on line `name` of a stats file's text.
pub fn stat_float(stats: &str, name: &str) -> f64 {
    stat_parsed(stats, name)
}

/// The value on line `name` of a stats file's text, parsed as `T`.
fn stat_parsed<T: std::str::FromStr>(stats: &str, name: &str) -> T {
    stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats:\n{stats}"))
}

/// The block cache's dirty share (`block_cache_dirty_ratio`) in a mount's stats.
pub fn dirty_ratio(m: &Mount) -> f64 {
    stat_float(&m.stats(), "block_cache_dirty_ratio")
}

/// Takes `lock`, which makes the tests of one file run one at a time, for as long as the
/// guard lives; a test that failed holding it does not block the others.
pub fn one_at_a_time(lock: &'static std::sync::Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// One fio job in `dir` with data verification: random 16 KiB writes, every block checked
/// (crc32c, first mismatch fatal) when the job ends; `job` gives the rest (`--name`, `--size`,
/// `--fsync`, `--randseed`…). With `verify_only` it only reads back and checks what the same
/// job wrote. fio keeps its verify state files in the working directory: the one above `dir`.
pub fn fio_verify(dir: &Path, job: &[&str], verify_only: bool) {
    let mut c = Command::new("fio");
    c.args(["--ioengine=psync", "--rw=randwrite", "--bs=16k", "--verify=crc32c", "--verify_fatal=1"]);
    c.args(job);
    c.arg(format!("--directory={}", dir.display()));
    c.current_dir(dir.parent().unwrap());
    if verify_only {
        c.arg("--verify_only");
    }
    let out = c.output().expect("run fio (apt-get install fio)");
    assert!(
        out.status.success(),
        "fio {job:?} {} failed:\n{}\n{}",
        if verify_only { "verify" } else { "write+verify" },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One 1 MiB [`fio_verify`] job named `<name><seed>` in `dir`, an fsync every 8 writes.
pub fn fio_job(dir: &Path, name: &str, seed: u32, verify_only: bool) {
    fio_verify(
        dir,
        &[&format!("--name={name}{seed}"), "--size=1m", "--fsync=8", &format!("--randseed={seed}")],
        verify_only,
    );
}

/// [`fio_job`]s run one after another in a thread (seeds 1, 2, …; each verifies what it
/// wrote) until [`FioLoop::finish`]: a verified workload that goes on while a test breaks
/// the servers under it.
pub struct FioLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    last: std::sync::Arc<std::sync::atomic::AtomicU32>,
    worker: std::thread::JoinHandle<()>,
}

impl FioLoop {
    /// Starts the jobs in `dir`.
    pub fn start(dir: PathBuf, name: &'static str) -> FioLoop {
        use std::sync::atomic::Ordering::SeqCst;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let last = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let worker = {
            let (stop, last) = (stop.clone(), last.clone());
            std::thread::spawn(move || {
                let mut seed = 1;
                while !stop.load(SeqCst) {
                    fio_job(&dir, name, seed, false);
                    last.store(seed, SeqCst);
                    seed += 1;
                }
            })
        };
        FioLoop { stop, last, worker }
    }

    /// Lets the running job end and returns the seed of the last job that verified; panics if
    /// a job failed or none finished.
    pub fn finish(self) -> u32 {
        use std::sync::atomic::Ordering::SeqCst;
        self.stop.store(true, SeqCst);
        self.worker.join().expect("a fio job failed");
        let jobs = self.last.load(SeqCst);
        eprintln!("fio jobs verified: {jobs}");
        assert!(jobs >= 1, "no fio job finished");
        jobs
    }
}

/// Reads `file` back at each `(data, offset, what)` and checks it is `data` (`what` says which
/// data in the message).
pub fn assert_reads_back(file: &Path, parts: &[(&[u8], u64, &str)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("open {file:?}: {e}"));
    for (data, offset, what) in parts {
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, *offset).unwrap();
        assert_eq!(sha256_hex(&back), sha256_hex(data), "{what}");
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift): test data that differs per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A memory figure of a process from /proc/PID/status, in KiB: `VmRSS:` (resident now) or
/// `VmHWM:` (peak resident).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} for process {pid}"))
}

/// Our command line for the test Garage's bucket with requests sent to `base_url` (a proxy in
/// front of one node or a cluster): credentials, `flags`, then the bucket.
pub fn garage_args_at(base_url: &str, flags: &[&str]) -> Vec<String> {
    volume_args(garage_flags_at(base_url), flags, s3b_testkit::garage::BUCKET)
}

/// The flags that send our requests to `base_url` (a proxy in front of a test server) with
/// the test servers' credentials.
pub fn garage_flags_at(base_url: &str) -> Vec<String> {
    use s3b_testkit::garage::{ACCESS_KEY_ID, SECRET_KEY};
    vec![format!("--baseURL={base_url}"), format!("--accessId={ACCESS_KEY_ID}"), format!("--accessKey={SECRET_KEY}")]
}

/// Mounts our binary with `args` behind `proxy` with its faults off (they would only slow the
/// set-up), makes ext4 on the file and mounts it, then turns the faults on.
pub fn ext4_behind_faults(proxy: &s3b_testkit::fault_proxy::FaultProxy, args: &[&str], s: &Scratch) -> (Mount, Ext4) {
    proxy.set_faults(false);
    let m = Mount::start(args, &s.mnt());
    Ext4::mkfs(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    proxy.set_faults(true);
    (m, e)
}

/// Lowercase hex of the SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Drops the kernel's page cache so reads go to the daemon.
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Pids of running s3backer processes whose command line contains `needle`.
pub fn daemon_pids(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with("s3backer"));
        let zombie = std::fs::read_to_string(e.path().join("stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        if is_ours && !zombie && args.iter().any(|a| a.contains(needle)) {
            out.push(pid);
        }
    }
    out
}

/// The block store stack the binary would build for `args` (a full command line, mount point
/// included), without mounting: for tests that drive the layers directly.
pub fn build_stack(args: &[String], rt: &tokio::runtime::Runtime) -> std::sync::Arc<dyn s3b_store::BlockStore> {
    let cfg = s3b_cli::config::validate(s3b_cli::args::parse(args).unwrap()).unwrap();
    rt.block_on(s3b_cli::stack::build(&cfg, s3b_cli::encoding::codec_config(&cfg).unwrap())).unwrap().top
}

/// A child process that wrote to a file and keeps it open until dropped (then SIGKILLed).
pub struct HeldWrite(Child);

impl Drop for HeldWrite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `data` at `offset` of `file` from a child process that keeps the file open until the
/// returned guard is dropped. For crash tests that need dirty data still unflushed when the
/// daemon is killed: every close(2) of the file flushes it, and a descriptor opened by the test
/// process itself is inherited, and closed at exec, by any test thread that forks meanwhile.
pub fn write_and_hold(file: &Path, offset: u64, data: &[u8]) -> HeldWrite {
    use std::io::{BufRead, Write};
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), data).unwrap();
    let script = "import os, sys\n\
                  fd = os.open(sys.argv[1], os.O_WRONLY)\n\
                  data = open(sys.argv[2], 'rb').read()\n\
                  assert os.pwrite(fd, data, int(sys.argv[3])) == len(data)\n\
                  print('written', flush=True)\n\
                  sys.stdin.read()\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(file)
        .arg(src.path())
        .arg(offset.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "written\n", "the writer failed");
    // Keep stdin open (the writer waits on it) by leaking it into the guard's child.
    let _ = child.stdin.as_mut().map(|s| s.flush());
    HeldWrite(child)
}

/// A link to the server on 127.0.0.1:`port` that holds every chunk of bytes for `delay` each
/// way (the benchmarks' latency proxy), for the rest of the test process; returns its port. A
/// kill -9 of a command sent over it lands while the command is still under way.
pub fn slow_link(port: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the slow link");
    let link = listener.local_addr().expect("its address").port();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let _ = s3b_netsim::serve(l, std::net::SocketAddr::from(([127, 0, 0, 1], port)), delay).await;
        });
    });
    link
}

/// A running S3 server (Garage or s3s-fs) for scenarios run on each: the flags that point us
/// at it and its port (for listings and signed requests). The server stops on drop.
pub struct Server {
    pub flags: Vec<String>,
    pub port: u16,
    _keep: Box<dyn std::any::Any>,
}

/// A fresh Garage as a [`Server`].
pub fn garage() -> Server {
    let g = s3b_testkit::garage::Garage::start();
    Server { flags: g.s3backer_flags(), port: g.port, _keep: Box::new(g) }
}

/// A fresh s3s-fs as a [`Server`].
pub fn s3s_fs() -> Server {
    let s = s3b_testkit::s3s_fs::S3sFs::start();
    Server { flags: s.s3backer_flags(), port: s.port, _keep: Box::new(s) }
}

/// One `#[test]` per S3 server for scenarios that take the server they run on:
/// `name => scenario;` defines the module `name` with the tests `on_garage` and `on_s3s_fs`,
/// which run `scenario(garage())` and `scenario(s3s_fs())` with the calling file's `garage`
/// and `s3s_fs` (those of this module unless it has its own).
#[macro_export]
macro_rules! on_each_server {
    (@module $(#[$doc:meta])* $name:ident: $($test:ident => $body:expr),+) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            $(
                #[test]
                fn $test() {
                    $body
                }
            )+
        }
    };
    ($($(#[$doc:meta])* $name:ident => $scenario:expr;)+) => {$(
        $crate::on_each_server!(@module $(#[$doc])* $name:
            on_garage => ($scenario)(garage()), on_s3s_fs => ($scenario)(s3s_fs()));
    )+};
}

/// Two `#[test]`s for scenarios that take a server and extra flags: `name => scenario;`
/// defines the module `name` with `plain_on_garage`, running `scenario(garage(), &[])`, and
/// `encrypted_compressed_on_s3s_fs`, running it on s3s-fs with the flags of
/// [`encrypted_compressed`].
#[macro_export]
macro_rules! plain_and_encrypted_compressed {
    ($($(#[$doc:meta])* $name:ident => $scenario:expr;)+) => {$(
        $crate::on_each_server!(@module $(#[$doc])* $name:
            plain_on_garage => ($scenario)(garage(), &[]),
            encrypted_compressed_on_s3s_fs => encrypted_compressed(|flags| ($scenario)(s3s_fs(), flags)));
    )+};
}
