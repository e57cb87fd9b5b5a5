//! The stats registry: layers register counters, the front end renders the `stats` file.
//!
//! Upstream prints one section per layer that exists, in a fixed order (HTTP, block cache, zero
//! cache, lower zero cache, MD5 cache), each line `"%-28s value"`, and always ends with
//! `out_of_memory_errors`. Tools parse this file, so names, order and number formats follow
//! upstream exactly. Each layer implements [`StatsSource`] and registers itself once; the
//! registry sorts by [`StatsSection`] when rendering, so construction order does not matter.

use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::Arc;

/// Where a layer's lines go in the file. The derive order is the print order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatsSection {
    /// `http_*` and `curl_*` lines (S3 transport).
    Http,
    /// `block_cache_*` lines.
    BlockCache,
    /// `zero_block_cache_*` lines.
    ZeroCache,
    /// `lower_zero_block_cache_*` lines.
    LowerZeroCache,
    /// `md5_cache_*` lines (consistency layer).
    Md5Cache,
    /// Lines of our own, printed after upstream's sections and before `out_of_memory_errors`.
    Extra,
}

/// A layer that reports counters.
pub trait StatsSource: Send + Sync {
    /// Which section the lines belong to: upstream's layers say theirs; a layer of our own
    /// keeps this default, [`StatsSection::Extra`], after all of upstream's lines.
    fn section(&self) -> StatsSection {
        StatsSection::Extra
    }
    /// Writes this layer's lines.
    fn write_stats(&self, w: &mut StatsWriter);
    /// Resets the counters (unlinking the stats file does this).
    fn reset_stats(&self);
}

/// One line of the stats file as a typed value (for monitoring: the Prometheus metrics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StatsValue {
    /// A count (`"%u"`).
    Count(u64),
    /// A number of blocks (`"%u blocks"`).
    Blocks(u64),
    /// A ratio or other fraction.
    Ratio(f64),
    /// A duration in seconds (`"%.3f sec"`).
    Seconds(f64),
}

/// Formats stats lines exactly as upstream's `printf` calls do, and keeps each line's typed
/// value ([`StatsWriter::entries`]).
#[derive(Default)]
pub struct StatsWriter {
    out: String,
    entries: Vec<(String, StatsValue)>,
}

impl StatsWriter {
    /// `"%-28s %u"`.
    pub fn count(&mut self, name: &str, v: u64) {
        let _ = writeln!(self.out, "{name:<28} {v}");
        self.entries.push((name.to_string(), StatsValue::Count(v)));
    }
    /// `"%-28s %u blocks"`.
    pub fn blocks(&mut self, name: &str, v: u64) {
        let _ = writeln!(self.out, "{name:<28} {v} blocks");
        self.entries.push((name.to_string(), StatsValue::Blocks(v)));
    }
    /// `"%-28s %.Nf"` with `decimals` digits.
    pub fn ratio(&mut self, name: &str, v: f64, decimals: usize) {
        let _ = writeln!(self.out, "{name:<28} {v:.decimals$}");
        self.entries.push((name.to_string(), StatsValue::Ratio(v)));
    }
    /// `"%-28s %.3f sec"`.
    pub fn seconds(&mut self, name: &str, secs: f64) {
        let _ = writeln!(self.out, "{name:<28} {secs:.3} sec");
        self.entries.push((name.to_string(), StatsValue::Seconds(secs)));
    }
    /// Every line written so far, by name, in order.
    pub fn entries(self) -> Vec<(String, StatsValue)> {
        self.entries
    }
    /// The rendered text so far.
    pub fn into_string(self) -> String {
        self.out
    }
}

/// All registered stats sources.
#[derive(Default)]
pub struct StatsRegistry {
    sources: Mutex<Vec<Arc<dyn StatsSource>>>,
}

impl StatsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source. Sources of the same section print in registration order.
    pub fn register(&self, source: Arc<dyn StatsSource>) {
        self.sources.lock().push(source);
    }

    /// Renders the whole stats file.
    pub fn render(&self) -> String {
        self.write().into_string()
    }

    /// The lines of the stats file as typed values, in the file's order.
    pub fn entries(&self) -> Vec<(String, StatsValue)> {
        self.write().entries()
    }

    fn write(&self) -> StatsWriter {
        let mut sources = self.sources.lock().clone();
        sources.sort_by_key(|s| s.section());
        let mut w = StatsWriter::default();
        for s in &sources {
            s.write_stats(&mut w);
        }
        // Rust aborts on allocation failure, so this counter is always zero; kept for tools.
        w.count("out_of_memory_errors", 0);
        w
    }

    /// Resets every source's counters.
    pub fn reset(&self) {
        for s in self.sources.lock().iter() {
            s.reset_stats();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Fake(StatsSection, &'static str, AtomicU64);
    impl StatsSource for Fake {
        fn section(&self) -> StatsSection {
            self.0
        }
        fn write_stats(&self, w: &mut StatsWriter) {
            w.count(self.1, self.2.load(Ordering::Relaxed));
        }
        fn reset_stats(&self) {
            self.2.store(0, Ordering::Relaxed);
        }
    }

    #[test]
    fn order_format_and_reset() {
        let r = StatsRegistry::new();
        r.register(Arc::new(Fake(StatsSection::Md5Cache, "md5_cache_data_hits", AtomicU64::new(3))));
        r.register(Arc::new(Fake(StatsSection::Http, "http_gets", AtomicU64::new(7))));
        assert_eq!(
            r.render(),
            "http_gets                    7\nmd5_cache_data_hits          3\nout_of_memory_errors         0\n"
        );
        assert_eq!(r.entries()[0], ("http_gets".to_string(), StatsValue::Count(7)));
        r.reset();
        assert!(r.render().starts_with("http_gets                    0\n"));
    }

    #[test]
    fn number_formats() {
        let mut w = StatsWriter::default();
        w.blocks("block_cache_current_size", 12);
        w.ratio("block_cache_dirty_ratio", 0.5, 8);
        w.seconds("http_avg_get_time", 0.0125);
        assert_eq!(
            w.into_string(),
            "block_cache_current_size     12 blocks\nblock_cache_dirty_ratio      0.50000000\nhttp_avg_get_time            0.013 sec\n"
        );
    }
}
