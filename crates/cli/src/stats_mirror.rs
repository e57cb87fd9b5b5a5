//! `--statsFileMirror`: the stats file's text also kept in a regular file, rewritten every
//! `--statsFileMirrorInterval` milliseconds (default 1000), for monitoring tools that cannot (or
//! should not) read inside the FUSE mount.
//!
//! As upstream: each update writes `FILE.new` and renames it over `FILE`, so readers never see a
//! partial file; deleting `FILE` resets the statistics (like unlinking the stats file in the
//! mount); an error stops mirroring with one logged line and leaves the mount alone. We also
//! write once more at unmount, so the file ends with the final counts.

use anyhow::{Context, Result, bail};
use s3b_store::StatsRegistry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Default period, as upstream.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;

/// Validated mirror settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The mirror file (absolute, as the daemon leaves its working directory).
    pub path: PathBuf,
    /// Time between updates.
    pub interval: Duration,
}

/// Checks `--statsFileMirror` / `--statsFileMirrorInterval` (the interval already parsed).
pub fn settings(path: Option<&str>, interval: Option<Duration>) -> Result<Option<MirrorConfig>> {
    let interval = interval.unwrap_or(Duration::from_millis(DEFAULT_INTERVAL_MS));
    let Some(p) = path else {
        if interval != Duration::from_millis(DEFAULT_INTERVAL_MS) {
            bail!("--statsFileMirrorInterval requires --statsFileMirror");
        }
        return Ok(None);
    };
    if p.is_empty() || p.ends_with('/') {
        bail!("invalid --statsFileMirror \"{p}\": expected a file name");
    }
    let mut path = PathBuf::from(p);
    if path.is_relative() {
        path = std::env::current_dir().with_context(|| format!("can't resolve --statsFileMirror \"{p}\""))?.join(path);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("--statsFileMirror \"{p}\": directory {} does not exist", parent.display());
    }
    if path.is_dir() {
        bail!("--statsFileMirror \"{p}\" is a directory");
    }
    Ok(Some(MirrorConfig { path, interval }))
}

/// A running mirror; [`StatsMirror::stop`] ends it.
pub struct StatsMirror {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl StatsMirror {
    /// Starts updating `cfg.path` from `stats`.
    pub fn start(cfg: MirrorConfig, stats: Arc<StatsRegistry>) -> StatsMirror {
        let (stop, stopped) = channel();
        let thread = std::thread::Builder::new()
            .name("stats-mirror".into())
            .spawn(move || {
                let mut written = false;
                loop {
                    let last =
                        !matches!(stopped.recv_timeout(cfg.interval), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                    // A mirror file we wrote that is gone now was deleted: reset, as upstream.
                    if written && !cfg.path.exists() {
                        stats.reset();
                    }
                    if let Err(e) = write_once(&cfg.path, &stats.render()) {
                        log::error!("stats mirror file {}: {e} (mirroring stopped)", cfg.path.display());
                        return;
                    }
                    written = true;
                    if last {
                        return;
                    }
                }
            })
            .expect("spawn the stats mirror thread");
        StatsMirror { stop, thread }
    }

    /// Writes a last update and stops.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn write_once(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(settings(None, None).unwrap(), None);
        let ms = |v| Some(Duration::from_millis(v));
        let c = settings(Some("/tmp/m"), ms(250)).unwrap().unwrap();
        assert_eq!((c.path, c.interval), (PathBuf::from("/tmp/m"), Duration::from_millis(250)));
        let err = |p: Option<&str>, i: Option<Duration>| settings(p, i).unwrap_err().to_string();
        assert_eq!(err(None, ms(5)), "--statsFileMirrorInterval requires --statsFileMirror");
        assert!(err(Some("/nonexistent/dir/m"), None).contains("directory /nonexistent/dir does not exist"));
        assert!(err(Some("/tmp"), None).contains("is a directory"));
        assert!(settings(Some("rel-name"), None).unwrap().unwrap().path.is_absolute());
    }

    #[test]
    fn mirrors_and_resets_when_deleted() {
        use s3b_store::stats::{StatsSource, StatsWriter};
        use std::sync::atomic::{AtomicU64, Ordering};
        struct Counter(AtomicU64);
        impl StatsSource for Counter {
            fn write_stats(&self, w: &mut StatsWriter) {
                w.count("things", self.0.load(Ordering::SeqCst));
            }
            fn reset_stats(&self) {
                self.0.store(0, Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror");
        let reg = Arc::new(StatsRegistry::new());
        let c = Arc::new(Counter(AtomicU64::new(7)));
        reg.register(c.clone());
        let m = StatsMirror::start(MirrorConfig { path: path.clone(), interval: Duration::from_millis(20) }, reg);
        let wait = |what: &str, f: &dyn Fn() -> bool| {
            for _ in 0..500 {
                if f() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{what}");
        };
        wait("first update", &|| std::fs::read_to_string(&path).is_ok_and(|t| t.contains("things") && t.contains('7')));
        std::fs::remove_file(&path).unwrap();
        wait("reset after delete", &|| c.0.load(Ordering::SeqCst) == 0);
        c.0.store(9, Ordering::SeqCst);
        m.stop();
        let t = std::fs::read_to_string(&path).unwrap();
        assert!(t.contains('9'), "final update missing: {t}");
        assert!(!dir.path().join("mirror.new").exists());
    }
}
