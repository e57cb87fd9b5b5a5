//! Counters of the block cache and its `block_cache_*` stats lines, in upstream's order.

use s3b_store::StatsWriter;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// The cache's counters.
#[derive(Default)]
pub(crate) struct CacheStats {
    pub read_hits: AtomicU64,
    pub read_misses: AtomicU64,
    pub write_hits: AtomicU64,
    pub write_misses: AtomicU64,
    pub write_errors: AtomicU64,
    pub read_ahead: AtomicU64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if a + b == 0 { 0.0 } else { a as f64 / (a + b) as f64 }
}

impl CacheStats {
    /// Writes the lines; `current` and `dirty` are block counts, `capacity` the cache size.
    pub fn write(&self, w: &mut StatsWriter, current: u64, dirty: u64, capacity: u64) {
        let v = |c: &AtomicU64| c.load(SeqCst);
        w.blocks("block_cache_current_size", current);
        w.blocks("block_cache_initial_size", 0);
        w.ratio(
            "block_cache_dirty_ratio",
            if capacity == 0 {
                0.0
            } else {
                dirty as f64 / capacity as f64
            },
            8,
        );
        w.count("block_cache_read_hits", v(&self.read_hits));
        w.count("block_cache_read_misses", v(&self.read_misses));
        w.ratio(
            "block_cache_read_hit_ratio",
            ratio(v(&self.read_hits), v(&self.read_misses)),
            8,
        );
        w.count("block_cache_write_hits", v(&self.write_hits));
        w.count("block_cache_write_misses", v(&self.write_misses));
        w.ratio(
            "block_cache_write_hit_ratio",
            ratio(v(&self.write_hits), v(&self.write_misses)),
            8,
        );
        w.count("block_cache_verified", 0);
        w.count("block_cache_mismatch", 0);
    }

    /// Our own lines, after upstream's sections.
    pub fn write_extra(&self, w: &mut StatsWriter) {
        w.count("block_cache_write_errors", self.write_errors.load(SeqCst));
        w.count("block_cache_read_ahead_blocks", self.read_ahead.load(SeqCst));
    }

    /// Zeroes the counters.
    pub fn reset(&self) {
        for c in [
            &self.read_hits,
            &self.read_misses,
            &self.write_hits,
            &self.write_misses,
            &self.write_errors,
            &self.read_ahead,
        ] {
            c.store(0, SeqCst);
        }
    }
}
