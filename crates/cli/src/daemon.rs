//! Daemonizing without losing startup errors.
//!
//! The process forks before any thread exists (tokio cannot survive a fork). The parent waits on
//! a pipe: the child writes "ready" once the file system is mounted, or the one-line error that
//! stopped it. The parent then exits 0, or prints the error and exits 1 — so
//! `s3backer bucket /mnt && mkfs.ext4 /mnt/file` works, and a failed start is never silent.

use anyhow::{Result, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};

/// The child's end of the pipe: tell the parent how startup went.
pub struct ReadyPipe {
    file: File,
}

impl ReadyPipe {
    /// Reports success: the parent exits 0.
    pub fn ready(mut self) {
        let _ = self.file.write_all(b"ready\n");
    }

    /// Reports a startup failure: the parent prints it and exits 1.
    pub fn failed(mut self, msg: &str) {
        let _ = self.file.write_all(format!("error:{msg}\n").as_bytes());
    }
}

/// Forks. Returns in the child with its pipe end; the parent never returns.
pub fn daemonize() -> Result<ReadyPipe> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills two valid fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("can't create pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: called before any thread is started, so the child is a faithful copy.
    match unsafe { libc::fork() } {
        -1 => bail!("can't fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: fds[0] is ours to close; fds[1] becomes the child's File.
            unsafe { libc::close(fds[0]) };
            // SAFETY: detach from the controlling terminal's session.
            unsafe { libc::setsid() };
            // SAFETY: fds[1] is an open pipe end that nothing else owns or closes.
            Ok(ReadyPipe { file: unsafe { File::from_raw_fd(fds[1]) } })
        }
        _child => {
            // SAFETY: fds[1] is ours to close; fds[0] becomes the parent's File.
            unsafe { libc::close(fds[1]) };
            // SAFETY: fds[0] is an open pipe end that nothing else owns or closes.
            let mut f = unsafe { File::from_raw_fd(fds[0]) };
            let mut msg = String::new();
            let _ = f.read_to_string(&mut msg);
            let code = match msg.lines().next() {
                Some("ready") => 0,
                Some(l) => {
                    eprintln!("s3backer: {}", l.strip_prefix("error:").unwrap_or(l));
                    1
                }
                None => {
                    eprintln!("s3backer: the daemon exited during startup (see syslog)");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null (after a daemon is ready).
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let fd = null.into_raw_fd();
        // SAFETY: dup2 onto the standard descriptors; fd is valid and closed afterwards.
        unsafe {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// `PR_SET_IO_FLUSHER` (Linux 5.6): not in every libc crate release, so spelled out here.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Marks this process as an I/O flusher, as upstream 2.1 does: the kernel then never makes its
/// allocations wait for I/O (`PF_MEMALLOC_NOIO`) and throttles its writes on its own backing
/// device only (`PF_LOCAL_THROTTLE`). Without that, memory reclaim started by the loop device
/// and file system on top of our file could wait for pages that only we can clean: a deadlock,
/// or at least a stall. Call it before any thread is started — threads inherit the flag when
/// they are created. The kernel refuses it without `CAP_SYS_RESOURCE` (some containers drop
/// it); the caller reports that as a warning once mounted ([`io_flusher_warning`]), not as a
/// failure: the mount still works, only not under memory pressure from its own users.
pub fn set_io_flusher() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; it changes this task's flags and nothing else.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Logs the one-line warning for a refused [`set_io_flusher`].
pub fn io_flusher_warning(e: &std::io::Error) {
    log::warn!(
        "can't mark the process as an I/O flusher ({}): under memory pressure from the file system \
         on top, writes may stall",
        crate::io_msg(e)
    );
}

/// A serving mode's failure before it was ready, with the pipe to report it through (daemon
/// mode) if there is one.
pub type ServeError = (anyhow::Error, Option<ReadyPipe>);

/// Runs a serving mode (a FUSE mount, an NBD server) the one way both need: daemonizes unless
/// `foreground` (logging to syslog, working directory `/`), marks the process an I/O flusher
/// before any thread exists ([`set_io_flusher`]; `serve` reports a refusal once it is ready),
/// then runs `serve` with the ready pipe. A failure before ready in daemon mode is logged and
/// handed to the waiting parent, which prints it (exit 1); in the foreground it is returned.
pub fn run_serving(
    foreground: bool,
    serve: impl FnOnce(Option<ReadyPipe>, std::io::Result<()>) -> std::result::Result<i32, ServeError>,
) -> Result<i32> {
    let pipe = if foreground {
        None
    } else {
        let p = daemonize()?;
        crate::logging::start_syslog();
        let _ = std::env::set_current_dir("/");
        Some(p)
    };
    let flusher = set_io_flusher();
    match serve(pipe, flusher) {
        Ok(code) => Ok(code),
        Err((e, Some(pipe))) => {
            // The parent prints the error on the terminal; the daemon only logs it to syslog.
            crate::logging::stop_stderr();
            let msg = crate::one_line(&e);
            log::error!("{msg}");
            pipe.failed(&msg);
            Ok(1)
        }
        Err((e, None)) => Err(e),
    }
}

/// Once the front end serves: tells the waiting parent (which then exits 0), leaves the
/// terminal, and starts the stats mirror when one was asked for (`--statsFileMirror`).
pub fn now_serving(
    pipe: Option<ReadyPipe>,
    mirror: Option<crate::stats_mirror::MirrorConfig>,
    stats: std::sync::Arc<s3b_store::StatsRegistry>,
) -> Option<crate::stats_mirror::StatsMirror> {
    crate::metrics::start(stats.clone());
    crate::notify::ready("serving");
    if let Some(p) = pipe {
        p.ready();
        detach_stdio();
        crate::logging::stop_stderr();
    }
    mirror.map(|m| crate::stats_mirror::StatsMirror::start(m, stats))
}

/// After the front end stopped and the volume was flushed: stops the mirror and turns the
/// shutdown's outcome into the exit code (`ok_code` when the flush succeeded, 1 otherwise).
pub fn finished(
    shutdown: Result<()>,
    mirror: Option<crate::stats_mirror::StatsMirror>,
    quiet: bool,
    ok_code: i32,
) -> i32 {
    if let Some(m) = mirror {
        m.stop();
    }
    crate::notify::status(if shutdown.is_ok() { "flushed; exiting" } else { "flushing failed; exiting" });
    match shutdown {
        Ok(()) => {
            if !quiet {
                log::info!("shutdown complete");
            }
            ok_code
        }
        Err(e) => {
            log::error!("{}", crate::one_line(&e));
            1
        }
    }
}

/// The daemon's tokio runtime (worker threads named `s3backer`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("s3backer").build()
}
