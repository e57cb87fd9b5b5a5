//! Progress of long work: `--erase` (listing, then deleting), the `--listBlocks` survey at
//! startup and the block cache file's recovery (reading its directory). On a terminal (stderr), unless `--quiet`, an indicatif bar or spinner shows the
//! count, the rate and, when the total is known, the time left; it is cleared when the work
//! ends. Everywhere the work ends with one summary line — on stderr for the maintenance modes,
//! in the log (stderr or syslog) for a daemon — so a pipe, a log file or a journal gets one
//! line, not a stream of redraws.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A bar (known total) or spinner on the terminal, or nothing off it.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

/// How often a bar redraws by itself (a spinner keeps turning while nothing arrives).
const TICK: Duration = Duration::from_millis(120);
/// Work shorter than this gets no rate in its summary: over so short a time the rate says more
/// about the clock than about the work.
const SHORTEST_RATED: Duration = Duration::from_millis(50);

impl Progress {
    /// Starts showing `what` (e.g. `erasing`): a bar of `total` blocks, or a spinner counting
    /// blocks when `total` is `None`. Shown only when stderr is a terminal and not `quiet`.
    pub fn start(what: &str, total: Option<u64>, quiet: bool) -> Progress {
        let shown = !quiet && std::io::stderr().is_terminal();
        let bar = shown.then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "s3backer: {prefix} [{bar:30}] {human_pos}/{human_len} blocks, {per_sec}, ETA {eta}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "s3backer: {prefix} {spinner} {human_pos} blocks, {per_sec}, {elapsed}",
                ),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(TICK);
            bar
        });
        Progress { bar, started: Instant::now() }
    }

    /// `n` more blocks done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Clears the bar; returns `done` blocks' summary: `in 2.5 s, 400 blocks/s`.
    pub fn finish(self, done: u64) -> String {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        summary(done, self.started.elapsed())
    }
}

/// `in 2.5 s, 400 blocks/s` for `done` blocks in `elapsed`.
pub fn summary(done: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if elapsed < SHORTEST_RATED {
        return format!("in {secs:.1} s");
    }
    format!("in {secs:.1} s, {:.0} blocks/s", done as f64 / secs)
}

/// The `--listBlocks` survey's progress: a spinner on the terminal of a foreground mount, and
/// the service manager's status; the survey itself logs the summary line when it ends.
pub struct Survey {
    progress: parking_lot::Mutex<Option<Progress>>,
    found: AtomicU64,
}

impl Survey {
    /// Follows the survey of a mount or NBD server started in the foreground or not.
    pub fn start(foreground: bool, quiet: bool) -> std::sync::Arc<Survey> {
        crate::notify::status("surveying the stored blocks (--listBlocks)");
        // A daemon's stderr is the terminal only until it is ready: no bar there.
        let progress = Progress::start("surveying the stored blocks", None, quiet || !foreground);
        std::sync::Arc::new(Survey { progress: parking_lot::Mutex::new(Some(progress)), found: AtomicU64::new(0) })
    }
}

impl s3b_zero::SurveyProgress for Survey {
    fn found(&self) {
        self.found.fetch_add(1, Relaxed);
        if let Some(p) = self.progress.lock().as_ref() {
            p.inc(1);
        }
    }

    fn finished(&self, non_zero: Option<u64>) {
        if let Some(p) = self.progress.lock().take() {
            let _ = p.finish(self.found.load(Relaxed));
        }
        crate::notify::status(match non_zero {
            Some(_) => "serving; block survey done",
            None => "serving; block survey failed",
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(summary(400, Duration::from_millis(2500)), "in 2.5 s, 160 blocks/s");
        assert_eq!(summary(3, Duration::from_millis(10)), "in 0.0 s");
        // Off a terminal (as under cargo test) nothing is drawn, and the summary still comes.
        let p = Progress::start("erasing", Some(10), false);
        assert!(p.bar.is_none() || std::io::stderr().is_terminal());
        p.inc(10);
        assert!(p.finish(10).starts_with("in "));
    }
}
