//! The `block_cache_*` lines of the stats file, with upstream's names, order and formats.

use parking_lot::Mutex;
use s3b_store::{StatsSection, StatsSource, StatsWriter};
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the block cache.
#[derive(Default)]
pub struct CacheStats {
    pub(crate) initial_size: AtomicU64,
    pub(crate) read_hits: AtomicU64,
    pub(crate) read_misses: AtomicU64,
    pub(crate) write_hits: AtomicU64,
    pub(crate) write_misses: AtomicU64,
    pub(crate) verified: AtomicU64,
    pub(crate) mismatch: AtomicU64,
    /// Partially written blocks completed with a read of the store (not in the stats file,
    /// whose fields are upstream's).
    pub(crate) fills: AtomicU64,
    cache: Mutex<Option<Weak<dyn Occupancy>>>,
}

/// How full the block cache is at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Blocks cached, clean or dirty.
    pub cached: u64,
    /// Dirty blocks: written, not yet in the store (those being uploaded included).
    pub dirty: u64,
    /// Uploads in flight.
    pub uploading: u64,
    /// The cache's size in blocks.
    pub size: u64,
}

/// How full the cache is, as the stats lines show it: what the cache's shared state tells the
/// counters (kept as a trait so that this module needs nothing of the cache's internals).
pub(crate) trait Occupancy: Send + Sync {
    /// How full it is now.
    fn occupancy(&self) -> Fill;
}

impl CacheStats {
    pub(crate) fn attach(&self, sh: Weak<dyn Occupancy>) {
        *self.cache.lock() = Some(sh);
    }

    /// Partially written blocks completed with a read of the store so far.
    pub fn partial_fills(&self) -> u64 {
        self.fills.load(Ordering::Relaxed)
    }

    /// How full the cache is now (`None` once it is gone).
    pub fn fill(&self) -> Option<Fill> {
        self.cache.lock().as_ref().and_then(Weak::upgrade).map(|sh| sh.occupancy())
    }

    /// Read hits and misses so far.
    pub fn reads(&self) -> (u64, u64) {
        (self.read_hits.load(Ordering::Relaxed), self.read_misses.load(Ordering::Relaxed))
    }
}

fn ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 }
}

impl StatsSource for CacheStats {
    fn section(&self) -> StatsSection {
        StatsSection::BlockCache
    }

    fn write_stats(&self, w: &mut StatsWriter) {
        let (size, dirty, cap) = match self.fill() {
            Some(f) => (f.cached, f.dirty as f64, f.size as f64),
            None => (0, 0.0, 1.0),
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (rh, rm, wh, wm) =
            (get(&self.read_hits), get(&self.read_misses), get(&self.write_hits), get(&self.write_misses));
        w.blocks("block_cache_current_size", size);
        w.blocks("block_cache_initial_size", get(&self.initial_size));
        w.ratio("block_cache_dirty_ratio", dirty / cap, 8);
        w.count("block_cache_read_hits", rh);
        w.count("block_cache_read_misses", rm);
        w.ratio("block_cache_read_hit_ratio", ratio(rh, rm), 8);
        w.count("block_cache_write_hits", wh);
        w.count("block_cache_write_misses", wm);
        w.ratio("block_cache_write_hit_ratio", ratio(wh, wm), 8);
        w.count("block_cache_verified", get(&self.verified));
        w.count("block_cache_mismatch", get(&self.mismatch));
    }

    fn reset_stats(&self) {
        for c in
            [&self.read_hits, &self.read_misses, &self.write_hits, &self.write_misses, &self.verified, &self.mismatch]
        {
            c.store(0, Ordering::Relaxed);
        }
    }
}
