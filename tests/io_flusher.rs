//! The daemon marks itself an I/O flusher (`PR_SET_IO_FLUSHER`) before it starts any thread,
//! so memory reclaim started by the loop device and ext4 on top of our file cannot make the
//! daemon — which must clean those pages — wait for itself. And ext4 on our file, written by a
//! process in a small memory cgroup far beyond its limit, completes with nothing lost.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Task flags (linux/sched.h) that PR_SET_IO_FLUSHER sets.
const PF_MEMALLOC_NOIO: u64 = 0x0008_0000;
const PF_LOCAL_THROTTLE: u64 = 0x0010_0000;
/// CAP_SYS_RESOURCE, which the kernel requires for PR_SET_IO_FLUSHER.
const CAP_SYS_RESOURCE: u32 = 24;

fn have_cap(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_string();
    u64::from_str_radix(&eff, 16).unwrap() & (1 << cap) != 0
}

/// The `flags` field of /proc/PID/task/TID/stat for every thread of `pid`.
fn thread_flags(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        // Fields after the ")" of the command name: state is field 3, flags field 9.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(6).unwrap().parse().unwrap());
    }
    out
}

#[test]
fn daemon_asks_to_be_an_io_flusher_before_any_thread_exists() {
    let s = Scratch::new();
    let trace = s.path("strace.log");
    let store = s.store();
    let mnt = s.mnt();
    let args: Vec<String> = [
        "-f",
        "-qq",
        "-e",
        "trace=prctl,clone,clone3",
        "-o",
        trace.to_str().unwrap(),
        bin(),
        "--test",
        "--size=16m",
        "-f",
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let m = Mount::start_program("strace", &args, &s.mnt());
    let pid = daemon_pids(store.to_str().unwrap())[0];
    let flags = thread_flags(pid);
    assert!(flags.len() > 2, "expected the runtime's and FUSE's threads: {flags:?}");
    if have_cap(CAP_SYS_RESOURCE) {
        // The kernel accepted it: every thread carries both flags.
        for f in &flags {
            assert_eq!(f & (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE, "{flags:x?}");
        }
        assert!(!m.stderr().contains("I/O flusher"), "{}", m.stderr());
    } else {
        // Refused (no CAP_SYS_RESOURCE, as in some containers): one warning, the mount works.
        let stderr = m.stderr();
        let warnings: Vec<&str> =
            stderr.lines().filter(|l| l.contains("can't mark the process as an I/O flusher")).collect();
        assert_eq!(warnings.len(), 1, "{stderr}");
        assert!(warnings[0].starts_with("s3backer: warning: "), "{stderr}");
    }
    std::fs::write(m.file(), b"still works").unwrap();
    assert_eq!(m.unmount(), 0);

    // The call came before the first thread was created.
    let log = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let flusher = lines
        .iter()
        .position(|l| l.contains("PR_SET_IO_FLUSHER, 1"))
        .unwrap_or_else(|| panic!("no PR_SET_IO_FLUSHER call:\n{log}"));
    let first_thread = lines.iter().position(|l| l.contains("CLONE_THREAD")).expect("no thread created");
    assert!(flusher < first_thread, "PR_SET_IO_FLUSHER after the first thread:\n{log}");
}

/// A child memory cgroup of our own, removed on drop (v1 `memory` controller, or v2).
struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    fn new(limit: u64) -> MemCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("s3b-test-{}", std::process::id());
        // cgroup v1: "N:memory:/path"; v2: "0::/path".
        let (dir, limit_file) = if let Some(p) =
            own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            (Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')).join(&name), "memory.limit_in_bytes")
        } else {
            let p = own.lines().find_map(|l| l.strip_prefix("0::")).expect("no memory cgroup").to_string();
            (Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/')).join(&name), "memory.max")
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        std::fs::write(dir.join(limit_file), limit.to_string()).unwrap();
        MemCgroup { dir }
    }

    /// Runs `cmd` with `sh -c` inside the cgroup; panics if it fails.
    fn run(&self, cmd: &str) {
        sh(&format!("echo $$ > {}/cgroup.procs && {cmd}", self.dir.display()));
    }

    /// How often the limit made the kernel reclaim (v1 failcnt), if known.
    fn failcnt(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.failcnt")).ok().and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn ext4_written_far_beyond_a_memory_cgroup_limit_loses_nothing() {
    let s = Scratch::new();
    let (m, e) = Mount::test_dir_ext4(&s, &["--size=512m", "--blockSize=64k"]);
    // 24 MiB for the writer; it writes 256 MiB (random, so no block is a zero block).
    let cg = MemCgroup::new(24 << 20);
    let data = s.ext4().join("big.bin");
    cg.run(&format!(
        "head -c 268435456 /dev/urandom | tee {} | sha256sum | cut -d' ' -f1 > {}",
        data.display(),
        s.path("sum").display()
    ));
    cg.run(&format!("sync {}", data.display()));
    if let Some(n) = cg.failcnt() {
        assert!(n > 0, "the writer never hit its memory limit");
    }
    drop(cg);
    let want = std::fs::read_to_string(s.path("sum")).unwrap().trim().to_string();
    e.unmount();
    assert_eq!(m.unmount(), 0);

    let m = Mount::test_dir(&s, &["--size=512m", "--blockSize=64k"]);
    fsck_clean(&m.file());
    let e = Ext4::mount(&m.file(), &s.ext4());
    let got = sh(&format!("sha256sum {} | cut -d' ' -f1", data.display()));
    assert_eq!(got.trim(), want);
    e.unmount();
    assert_eq!(m.unmount(), 0);
}
