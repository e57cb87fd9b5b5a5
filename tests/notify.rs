//! systemd readiness without systemd: the test binds the Unix datagram socket a service
//! manager would, points `NOTIFY_SOCKET` at it, runs the daemon in the foreground (`-f`, as a
//! `Type=notify` unit does) and checks each message against the volume's real state when it
//! arrives: `READY=1` only once the file system is mounted (FUSE) or the NBD server answers,
//! `STOPPING=1` once the front end is gone, and the last status only once the written blocks
//! are in the store.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The socket a service manager listens on.
struct Manager {
    sock: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Manager { sock }
    }

    /// The next message (its `KEY=value` lines), failing if `child` exits or 60 s pass first.
    fn next(&self, child: &mut Child, stderr: &Path) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string).collect(),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv: {e}"),
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("s3backer exited ({st}) while a message was awaited: {}", read(stderr));
            }
            assert!(Instant::now() < end, "no notify message within 60 s: {}", read(stderr));
        }
    }

    /// The first message after the flush's progress reports (`STATUS=flushing: N dirty blocks
    /// left`, sent every second while it runs), each of which must be a lone status line.
    fn after_flush(&self, child: &mut Child, stderr: &Path) -> Vec<String> {
        loop {
            let m = self.next(child, stderr);
            match &m[..] {
                [l] if l.starts_with("STATUS=flushing: ") && l.ends_with(" dirty blocks left") => {}
                _ => return m,
            }
        }
    }

    /// Messages until one contains `key` (e.g. `READY=1`); returns all of them, that one last.
    fn until(&self, key: &str, child: &mut Child, stderr: &Path) -> Vec<Vec<String>> {
        let mut got = Vec::new();
        loop {
            let m = self.next(child, stderr);
            let done = m.iter().any(|l| l == key);
            got.push(m);
            if done {
                return got;
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The daemon under test (stopped if a check fails), told to notify `notify`.
fn spawn(args: &[String], notify: &Path, stderr: &Path, mnt: Option<&Path>) -> Supervised {
    let child = spawn_logged(Command::new(bin()).args(args).env("NOTIFY_SOCKET", notify), stderr);
    Supervised { child, mnt: mnt.map(Path::to_path_buf), terminate: true }
}

fn statuses(msgs: &[Vec<String>]) -> Vec<String> {
    msgs.iter().flatten().filter_map(|l| l.strip_prefix("STATUS=")).map(str::to_string).collect()
}

fn block_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "s3backer-mounted")).count()
}

fn wait_exit(child: &mut Child, stderr: &Path) -> i32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(Instant::now() < end, "s3backer did not exit: {}", read(stderr));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fuse_mount_notifies_ready_once_mounted_and_stopping_before_the_flush() {
    let s = Scratch::new();
    let notify = s.path("notify");
    let stderr = s.path("stderr");
    let mgr = Manager::bind(&notify);
    let mut args = test_args(&s, &["--size=4m", "--blockSize=64k"]);
    args.extend(strings(&["-f", s.mnt().to_str().unwrap()]));
    let mut daemon = spawn(&args, &notify, &stderr, Some(&s.mnt()));
    let child = &mut daemon.child;

    let start = mgr.until("READY=1", child, &stderr);
    // At READY the volume is mounted and answers.
    assert!(is_mounted(&s.mnt()), "READY=1 before the mount: {start:?}");
    assert_eq!(std::fs::metadata(s.mnt().join("file")).unwrap().len(), 4 << 20);
    let ready = start.last().unwrap();
    assert!(ready.contains(&format!("MAINPID={}", child.id())), "{ready:?}");
    assert_eq!(statuses(&start).first().map(String::as_str), Some("opening the volume"), "{start:?}");

    std::fs::write(s.mnt().join("file"), random_bytes(7, 256 << 10)).unwrap();
    cmd("umount", &[s.mnt().to_str().unwrap()]);

    let stop = mgr.until("STOPPING=1", child, &stderr);
    assert!(!is_mounted(&s.mnt()), "STOPPING=1 while still mounted");
    assert_eq!(statuses(&stop), vec!["unmounted; flushing dirty blocks".to_string()], "{stop:?}");
    let last = mgr.after_flush(child, &stderr);
    assert_eq!(last, vec!["STATUS=flushed; exiting".to_string()]);
    // The last status comes only once the four written blocks are in the store.
    assert_eq!(block_files(&s.store()), 4);
    assert_eq!(wait_exit(child, &stderr), 0, "{}", read(&stderr));
    let all: Vec<Vec<String>> = start.into_iter().chain(stop).chain([last]).collect();
    eprintln!("notify messages of a FUSE mount: {all:?}");
}

#[test]
fn nbd_server_notifies_ready_once_listening_and_the_flush_progress() {
    let s = Scratch::new();
    let notify = s.path("notify");
    let stderr = s.path("stderr");
    let sock = s.path("nbd.sock");
    let mgr = Manager::bind(&notify);
    let mut args = strings(&["--nbd", "-f", &format!("--nbdListen={}", sock.display())]);
    // Slow uploads (random delays, two at a time) that wait for the shutdown: its flush takes
    // seconds, and reports the dirty blocks left meanwhile.
    let slow =
        ["--size=4m", "--blockSize=64k", "--test-delays", "--blockCacheThreads=2", "--blockCacheWriteDelay=600000"];
    args.extend(test_args(&s, &slow));
    let mut daemon = spawn(&args, &notify, &stderr, None);
    let child = &mut daemon.child;

    let start = mgr.until("READY=1", child, &stderr);
    // At READY a client gets the export.
    let size = cmd("nbdinfo", &["--size", &format!("nbd+unix:///?socket={}", sock.display())]);
    assert_eq!(size.trim(), (4u64 << 20).to_string(), "{start:?}");
    assert_eq!(statuses(&start).first().map(String::as_str), Some("opening the volume"), "{start:?}");
    // 64 blocks written and not flushed (NBD_CMD_DISC does not flush).
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    python(
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pwrite(bytes([7]) * (4 << 20), 0)\nh.shutdown()",
        &[&uri],
    );
    assert_eq!(block_files(&s.store()), 0, "uploaded before the shutdown");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let stop = mgr.until("STOPPING=1", child, &stderr);
    assert!(!sock.exists() || std::os::unix::net::UnixStream::connect(&sock).is_err(), "still listening");
    assert_eq!(statuses(&stop), vec!["NBD server stopped; flushing dirty blocks".to_string()], "{stop:?}");
    let mut progress = Vec::new();
    let last = loop {
        let m = mgr.next(child, &stderr);
        match &m[..] {
            [l] if l.starts_with("STATUS=flushing: ") => progress.push(l.clone()),
            _ => break m,
        }
    };
    assert_eq!(last, vec!["STATUS=flushed; exiting".to_string()], "{progress:?}");
    assert!(!progress.is_empty(), "no progress during a flush of seconds");
    let left: Vec<u64> = progress
        .iter()
        .map(|l| l.trim_start_matches("STATUS=flushing: ").trim_end_matches(" dirty blocks left").parse().unwrap())
        .collect();
    assert!(left.windows(2).all(|w| w[0] >= w[1]) && left[0] <= 64, "{progress:?}");
    assert_eq!(block_files(&s.store()), 64, "the last status before every block was stored");
    assert_eq!(wait_exit(child, &stderr), 0, "{}", read(&stderr));
    eprintln!("flush progress of an NBD server: {progress:?}");
}
