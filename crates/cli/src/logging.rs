//! Logging: to stderr in the foreground (`-f`), to syslog once daemonized, as upstream.
//!
//! Until a daemon reports that the mount is ready it logs to both, so startup warnings still
//! reach the terminal that started it. Only our own crates log below error level, so a library's
//! chatter never floods syslog.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

struct Logger {
    level: LevelFilter,
    to_stderr: AtomicBool,
    to_syslog: AtomicBool,
}

static LOGGER: Logger =
    Logger { level: LevelFilter::Trace, to_stderr: AtomicBool::new(true), to_syslog: AtomicBool::new(false) };
/// Whether debug messages are logged (else info and above).
static DEBUG: AtomicBool = AtomicBool::new(false);

fn max_level() -> LevelFilter {
    if DEBUG.load(Ordering::Relaxed) { LevelFilter::Debug } else { LevelFilter::Info }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let max = max_level();
        // Other crates (fuser) only reach us with errors: their warnings are noise for a user.
        m.level() <= max && (m.level() <= Level::Error || m.target().starts_with("s3b"))
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) || self.level == LevelFilter::Off {
            return;
        }
        let msg = match r.level() {
            Level::Error => format!("error: {}", r.args()),
            Level::Warn => format!("warning: {}", r.args()),
            _ => r.args().to_string(),
        };
        if self.to_stderr.load(Ordering::Relaxed) {
            let _ = writeln!(std::io::stderr(), "s3backer: {msg}");
        }
        if self.to_syslog.load(Ordering::Relaxed) {
            let prio = match r.level() {
                Level::Error => libc::LOG_ERR,
                Level::Warn => libc::LOG_WARNING,
                Level::Info => libc::LOG_INFO,
                _ => libc::LOG_DEBUG,
            };
            if let Ok(c) = CString::new(msg.replace('\0', " ")) {
                // SAFETY: a constant "%s" format with one valid NUL-terminated argument.
                unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger, logging info and above.
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max_level());
}

/// Enables or disables debug messages.
pub fn set_debug(debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    log::set_max_level(max_level());
}

/// Starts logging to syslog (daemon mode).
pub fn start_syslog() {
    // SAFETY: the identifier is a static NUL-terminated string that outlives the process.
    unsafe { libc::openlog(c"s3backer".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    LOGGER.to_syslog.store(true, Ordering::Relaxed);
}

/// Stops logging to stderr (a daemon whose terminal is gone).
pub fn stop_stderr() {
    LOGGER.to_stderr.store(false, Ordering::Relaxed);
}
