//! A throw-away single-host Ceph cluster on 127.0.0.1 for tests: one monitor, one manager, one
//! or more OSDs and a RADOS Gateway (RGW, Ceph's S3 server) with the test user, started from the
//! Debian packages without systemd (`scripts/setup.sh` installs them).
//!
//! [`Ceph::start`] writes a `ceph.conf` and a keyring with every daemon's key into a fresh
//! directory under /tmp, makes the monitor's store, starts `ceph-mon`, `ceph-mgr`, the OSDs and
//! `radosgw` in the foreground, creates the S3 user with the test keys
//! ([`crate::garage::ACCESS_KEY_ID`]) and the bucket [`BUCKET`], and returns once a signed
//! request on that bucket answers 200. Pools get `size` = the number of OSDs (at most 3) and
//! `min_size` 2 when there are 3 OSDs, so one OSD of three may be lost without stopping I/O.
//!
//! **OSDs store on BlueStore over a sparse file** (8 GiB apparent, a few hundred MiB used), not
//! on the memory store: BlueStore is what people deploy, and only a store that survives a
//! `kill -9` lets a test crash an OSD and start it again on its data (a memory-store OSD comes
//! back empty and cannot even read its own superblock). Its cache is capped at 128 MiB.
//! Cephx is on (as deployed); the monitors' proposal interval and the OSD heartbeat grace are
//! shortened so the cluster forms and notices a dead OSD in seconds rather than tens of seconds.
//!
//! **Nothing outlives the test process.** Besides the daemons, the fixture starts a watchdog
//! shell that holds the read end of a pipe whose write end only this process has; when the
//! process ends for any reason (tests done, panic, `kill -9`), the pipe closes and the watchdog
//! kills every daemon it was told about (checking the process's command line still names this
//! cluster's directory, so a reused pid is never hit) and deletes the directory. That is what
//! lets a test binary keep one cluster in a `static` (never dropped) for all its tests.
//! Dropping a [`Ceph`] does the same at once.

use crate::garage::{BUCKET, free_port, list_keys_at, signed_curl};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to serve S3 before [`Ceph::start`] gives up.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A running cluster; every daemon killed and the directory deleted on drop (or when the test
/// process ends, whichever comes first).
pub struct Ceph {
    dir: PathBuf,
    conf: PathBuf,
    osds: usize,
    /// Port of RGW's S3 API on 127.0.0.1.
    pub port: u16,
    /// How long [`Ceph::start`] took, from nothing to S3 serving.
    pub startup: Duration,
    daemons: Mutex<BTreeMap<String, Child>>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// The programs the fixture runs, found on `PATH`.
const PROGRAMS: [&str; 8] =
    ["ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool"];

/// Whether the Ceph packages are installed.
pub fn installed() -> bool {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    PROGRAMS.iter().all(|p| dirs.iter().any(|d| d.join(p).is_file()))
}

fn write_conf(dir: &Path, fsid: &str, mon_port: u16, rgw_port: u16, osds: usize) -> PathBuf {
    let d = dir.display();
    let size = osds.min(3);
    let min_size = if size >= 3 { 2 } else { 1 };
    let conf = format!(
        "[global]\n\
         fsid = {fsid}\n\
         mon host = v2:127.0.0.1:{mon_port}\n\
         public addr = 127.0.0.1\n\
         ms bind msgr1 = false\n\
         auth allow insecure global id reclaim = false\n\
         keyring = {d}/keyring\n\
         run dir = {d}/run\n\
         admin socket = {d}/run/$name.asok\n\
         log file = {d}/$name.log\n\
         mon data = {d}/mon\n\
         mgr data = {d}/mgr\n\
         osd data = {d}/osd$id\n\
         rgw data = {d}/rgw\n\
         mon data avail warn = 1\n\
         mon data avail crit = 0\n\
         mon allow pool delete = true\n\
         mon allow pool size one = true\n\
         mon warn on pool no redundancy = false\n\
         mon osd min down reporters = 1\n\
         mon osd down out interval = 3600\n\
         paxos propose interval = 0.01\n\
         paxos min wait = 0.001\n\
         osd pool default size = {size}\n\
         osd pool default min size = {min_size}\n\
         osd pool default pg num = 8\n\
         osd pool default pgp num = 8\n\
         osd pool default pg autoscale mode = off\n\
         osd crush chooseleaf type = 0\n\
         osd heartbeat interval = 1\n\
         osd heartbeat grace = 4\n\
         osd objectstore = bluestore\n\
         bluestore block create = true\n\
         bluestore block size = 8589934592\n\
         bluestore fsck on mkfs = false\n\
         bluestore fsck on mount = false\n\
         bluestore cache autotune = false\n\
         bluestore cache size = 134217728\n\
         osd memory target = 536870912\n\
         [client.rgw]\n\
         rgw frontends = beast endpoint=127.0.0.1:{rgw_port}\n\
         rgw thread pool size = 128\n"
    );
    let path = dir.join("ceph.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A random UUID from the kernel.
fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("read a random UUID").trim().to_string()
}

/// The shell script of the watchdog: waits for its stdin to close, then kills every pid listed
/// in `pids` whose command line still names the cluster's directory, and deletes it.
const WATCHDOG: &str = r#"cat >/dev/null
for p in $(cat "$1/pids" 2>/dev/null); do
  if tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qF "$1/"; then kill -9 $p; fi
done
rm -rf "$1""#;

impl Ceph {
    /// [`Ceph::start`], then one line on stderr: how long the cluster took to serve S3 and
    /// its daemons' memory (what a test run's log should show of the cluster it used).
    pub fn start_logged(osds: usize) -> Ceph {
        let c = Ceph::start(osds);
        let rss = c.rss_kib();
        let total: u64 = rss.iter().map(|(_, k)| k).sum();
        eprintln!(
            "ceph, {osds} OSD(s): serving S3 after {:.1} s; daemons' RSS {} MiB: {rss:?}",
            c.startup.as_secs_f64(),
            total >> 10
        );
        c
    }

    /// Starts a fresh cluster with `osds` OSDs (1 to 3), RGW and the bucket [`BUCKET`]; panics
    /// if it does not serve S3 within two minutes.
    pub fn start(osds: usize) -> Ceph {
        assert!((1..=3).contains(&osds), "1 to 3 OSDs");
        assert!(installed(), "the Ceph packages are not installed; run scripts/setup.sh");
        let t0 = Instant::now();
        let dir = tempfile::Builder::new().prefix("s3b-ceph-").tempdir_in("/tmp").expect("tempdir").keep();
        for d in ["run", "mon", "mgr", "rgw"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        let mut wd = Command::new("sh")
            .args(["-c", WATCHDOG, "ceph-watchdog"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the watchdog");
        let wd_in = wd.stdin.take().unwrap();
        let (mon_port, port) = (free_port(), free_port());
        let fsid = uuid();
        let conf = write_conf(&dir, &fsid, mon_port, port, osds);
        let mut c = Ceph {
            dir,
            conf,
            osds,
            port,
            startup: Duration::ZERO,
            daemons: Mutex::new(BTreeMap::new()),
            watchdog: Mutex::new(Some((wd, wd_in))),
        };
        c.make_keys();
        let monmap = c.dir.join("monmap");
        c.run_ok(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a", &format!("[v2:127.0.0.1:{mon_port}]")])
                .arg(&monmap),
        );
        c.run_ok(c.daemon_cmd("ceph-mon", &["-i", "a", "--mkfs", "--monmap"]).arg(&monmap));
        c.spawn("mon.a", c.daemon_cmd("ceph-mon", &["-i", "a", "-f"]));
        c.spawn("mgr.x", c.daemon_cmd("ceph-mgr", &["-i", "x", "-f"]));
        std::thread::scope(|s| {
            for i in 0..osds {
                let c = &c;
                s.spawn(move || {
                    let id = i.to_string();
                    let u = uuid();
                    c.ceph(&["osd", "new", &u, &id]);
                    std::fs::create_dir(c.dir.join(format!("osd{i}"))).unwrap();
                    c.run_ok(&mut c.daemon_cmd("ceph-osd", &["-i", &id, "--mkfs", "--osd-uuid", &u]));
                    c.start_osd(i);
                });
            }
        });
        c.run_ok(&mut c.daemon_cmd(
            "radosgw-admin",
            &[
                "user",
                "create",
                "--uid=s3backer",
                "--display-name=s3backer tests",
                &format!("--access-key={}", crate::garage::ACCESS_KEY_ID),
                &format!("--secret={}", crate::garage::SECRET_KEY),
            ],
        ));
        c.spawn("client.rgw", c.daemon_cmd("radosgw", &["-n", "client.rgw", "-f"]));
        let end = t0 + START_LIMIT;
        while c.curl(&["--max-time", "5", "-X", "PUT"], BUCKET).0 != 200 {
            assert!(Instant::now() < end, "RGW does not serve S3; logs:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        c.startup = t0.elapsed();
        c
    }

    /// Every daemon's key, in one keyring that all of them read.
    fn make_keys(&self) {
        let k = self.dir.join("keyring");
        let caps: [(&str, &[&str]); 4] = [
            ("mon.", &["mon", "allow *"]),
            ("client.admin", &["mon", "allow *", "osd", "allow *", "mgr", "allow *", "mds", "allow *"]),
            ("mgr.x", &["mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"]),
            ("client.rgw", &["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"]),
        ];
        let osd_caps: &[&str] = &["mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"];
        let osd_names: Vec<String> = (0..self.osds).map(|i| format!("osd.{i}")).collect();
        let all = caps.iter().map(|(n, c)| (*n, *c)).chain(osd_names.iter().map(|n| (n.as_str(), osd_caps)));
        for (i, (name, caps)) in all.enumerate() {
            let mut cmd = Command::new("ceph-authtool");
            cmd.arg(&k);
            if i == 0 {
                cmd.arg("--create-keyring");
            }
            cmd.args(["--gen-key", "-n", name]);
            for pair in caps.chunks(2) {
                cmd.args(["--cap", pair[0], pair[1]]);
            }
            self.run_ok(&mut cmd);
        }
    }

    /// Runs a command to completion (the watchdog knows its pid: a command waiting for a dead
    /// cluster does not outlive the test), panicking with its output unless it succeeds.
    fn run_ok(&self, cmd: &mut Command) -> String {
        let out = self.run(cmd);
        crate::stdout_of_success(&out, &format!("{cmd:?}"))
    }

    /// Runs a command to completion, whatever the outcome, its pid told to the watchdog.
    fn run(&self, cmd: &mut Command) -> Output {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        self.tell_watchdog(child.id());
        child.wait_with_output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
    }

    fn tell_watchdog(&self, pid: u32) {
        let mut pids = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("pids")).unwrap();
        writeln!(pids, "{pid}").unwrap();
    }

    /// `program --conf <ours> args…`.
    fn daemon_cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.arg("--conf").arg(&self.conf).args(args);
        c
    }

    /// Starts a daemon in the foreground, its output in `<dir>/<name>.out`, and tells the
    /// watchdog its pid.
    fn spawn(&self, name: &str, mut cmd: Command) {
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.out"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.tell_watchdog(child.id());
        self.daemons.lock().insert(name.to_string(), child);
    }

    /// Runs the `ceph` command line as the admin; panics unless it succeeds; returns stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        self.run_ok(&mut self.daemon_cmd("ceph", args))
    }

    /// Runs the `ceph` command line as the admin, whatever the outcome.
    pub fn ceph_output(&self, args: &[&str]) -> Output {
        self.run(&mut self.daemon_cmd("ceph", args))
    }

    /// The cluster's configuration file (for `CEPH_CONF`, fio's `rbd` engine, `rbd`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's directory (configuration, keyring, data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of OSDs.
    pub fn osds(&self) -> usize {
        self.osds
    }

    /// Base URL of RGW's S3 API, ending in `/` (as `--baseURL` wants).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Command-line flags that point s3backer (ours or C) at RGW with the test credentials.
    pub fn s3backer_flags(&self) -> Vec<String> {
        self.s3backer_flags_at(&self.base_url())
    }

    /// Like [`Ceph::s3backer_flags`], with requests sent to `base_url` (a proxy in front).
    pub fn s3backer_flags_at(&self, base_url: &str) -> Vec<String> {
        vec![
            format!("--baseURL={base_url}"),
            format!("--accessId={}", crate::garage::ACCESS_KEY_ID),
            format!("--accessKey={}", crate::garage::SECRET_KEY),
        ]
    }

    /// Runs `curl` signed for RGW (`extra` are more curl arguments, `path` is after the host);
    /// returns (HTTP status, body).
    pub fn curl(&self, extra: &[&str], path: &str) -> (u16, Vec<u8>) {
        signed_curl(self.port, extra, path)
    }

    /// Keys of every object in `bucket`, in key order.
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        list_keys_at(self.port, bucket)
    }

    /// Creates another bucket owned by the test user.
    pub fn create_bucket(&self, name: &str) {
        let (code, body) = self.curl(&["-X", "PUT"], name);
        assert_eq!(code, 200, "create bucket {name}: {}", String::from_utf8_lossy(&body));
    }

    /// Pids of the running daemons, by name (`mon.a`, `mgr.x`, `osd.0`…, `client.rgw`).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.daemons.lock().iter().map(|(n, c)| (n.clone(), c.id())).collect()
    }

    /// RGW's log so far (its access lines show each request's answer).
    pub fn rgw_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("client.rgw.log")).unwrap_or_default()
    }

    /// The tail of every daemon's log and output.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = self.daemons.lock().keys().cloned().collect();
        names.push("client.admin".into());
        for n in names {
            for ext in ["log", "out"] {
                let text = std::fs::read_to_string(self.dir.join(format!("{n}.{ext}"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {n}.{ext}\n"));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Kills OSD `i` with SIGKILL (a crash) and waits until the monitor has marked it down.
    pub fn kill_osd(&self, i: usize) {
        if let Some(mut c) = self.daemons.lock().remove(&format!("osd.{i}")) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.wait_until(&format!("osd.{i} marked down"), || !self.osd_up(i));
    }

    /// Starts OSD `i` on its data (after [`Ceph::kill_osd`], or the first time).
    pub fn start_osd(&self, i: usize) {
        let id = i.to_string();
        self.spawn(&format!("osd.{i}"), self.daemon_cmd("ceph-osd", &["-i", &id, "-f"]));
    }

    /// Whether the monitor's map has OSD `i` up.
    pub fn osd_up(&self, i: usize) -> bool {
        let out = self.ceph_output(&["osd", "dump", "--format", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        // `"osd":<i>,"uuid":"…","up":<0|1>` in the OSD list.
        let needle = format!("{{\"osd\":{i},");
        text.find(&needle)
            .and_then(|p| text[p..].find("\"up\":").map(|q| &text[p + q + 5..]))
            .is_some_and(|r| r.starts_with('1'))
    }

    /// Waits until every placement group is `active+clean` (after an OSD came back).
    pub fn wait_clean(&self) {
        self.wait_until("every placement group active+clean", || {
            let out = self.ceph_output(&["pg", "stat"]);
            let text = String::from_utf8_lossy(&out.stdout);
            // "<n> pgs: <n> active+clean; …"
            let mut w = text.split_whitespace();
            let total = w.next().map(str::to_string);
            let _ = w.next();
            let clean = w.next().map(str::to_string);
            out.status.success() && total.is_some() && total == clean && text.contains(" active+clean;")
        });
    }

    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + START_LIMIT;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}; logs:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Resident memory of every daemon now, in KiB, by name.
    pub fn rss_kib(&self) -> Vec<(String, u64)> {
        self.pids()
            .into_iter()
            .map(|(n, pid)| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                (n, kib)
            })
            .collect()
    }

    /// CPU time (user + system) every daemon has used so far, in seconds, by name.
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.pids()
            .into_iter()
            .map(|(n, pid)| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = after.split_whitespace().collect();
                let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok())).sum();
                (n, ticks as f64 / hz)
            })
            .collect()
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut *self.daemons.lock()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((mut wd, stdin)) = self.watchdog.lock().take() {
            drop(stdin);
            let _ = wd.wait();
        }
    }
}
