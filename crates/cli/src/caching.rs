//! The caching layers of the stack (block cache, zero cache, read-ahead, MD5/ETag consistency
//! layer), configured from the command line.
//!
//! The block cache ([`s3b_cache`]) is built here from the settings checked in
//! [`crate::config::cache`]. It is on by default (the layer's default size);
//! `--blockCacheSize=0` leaves it out. Below it sits the MD5/ETag consistency layer
//! ([`s3b_ec`], `--md5CacheSize` and friends; off by default as in upstream 2.x, and on
//! read-only mounts). The zero cache goes on top (see `stack.rs`).

use crate::config::cache::CacheSettings;
use anyhow::{Context, Result, bail};
use s3b_cache::{BlockCache, CacheFile};
use s3b_ec::EcProtect;
use s3b_store::{BlockStore, StatsRegistry};
use std::sync::Arc;

/// What [`wrap`] built.
pub struct Caching {
    /// The top store.
    pub top: Arc<dyn BlockStore>,
    /// The block cache file, when `--blockCacheFile` is used (for the mount-token protocol).
    pub cache_file: Option<Arc<CacheFile>>,
}

/// Puts the caching layers the configuration asks for on top of `inner` (the codec's store)
/// and registers their counters.
/// `show_progress`: the cache file's recovery may draw a progress bar on the terminal (a
/// foreground start without `--quiet`); it ends with one summary line in the log either way.
pub fn wrap(
    settings: &CacheSettings,
    read_only: bool,
    inner: Arc<dyn BlockStore>,
    stats: &StatsRegistry,
    show_progress: bool,
) -> Result<Caching> {
    let inner: Arc<dyn BlockStore> = match settings.ec.config(Some(inner.num_blocks()))? {
        Some(ec) => {
            let layer = EcProtect::new(inner, ec);
            stats.register(layer.stats());
            Arc::new(layer)
        }
        None => inner,
    };
    let Some(s) = &settings.block_cache else {
        return Ok(Caching { top: inner, cache_file: None });
    };
    let mut cache_cfg = s.cache.clone();
    cache_cfg.size = cache_cfg.size.min(usize::try_from(inner.num_blocks()).unwrap_or(usize::MAX));
    if read_only {
        // Nothing is ever dirty on a read-only mount.
        cache_cfg.max_dirty = 0;
    }
    let (cache, file) = match &s.file {
        Some(path) => {
            let slots = u32::try_from(cache_cfg.size).ok().context("--blockCacheSize is too big for a cache file")?;
            if (slots as u64).checked_mul(inner.block_size() as u64).is_none_or(|b| b > i64::MAX as u64 / 2) {
                bail!(
                    "the block cache is too big to fit within a single file ({slots} blocks x {} bytes)",
                    inner.block_size()
                );
            }
            crate::notify::status("reading the block cache file");
            let bar =
                crate::progress::Progress::start("reading the block cache file", Some(slots.into()), !show_progress);
            let file = CacheFile::open_with_progress(path, inner.block_size(), slots, s.file_options, &|n| bar.inc(n));
            let file = Arc::new(file?);
            log::info!(
                "block cache file {}: {} of {slots} slots hold blocks, read {}",
                path.display(),
                file.blocks_found(),
                bar.finish(slots.into())
            );
            if file.dirty_found() > 0 && read_only {
                bail!(
                    "block cache file {} holds {} dirty blocks to recover; mount read-write to upload them",
                    path.display(),
                    file.dirty_found()
                );
            }
            if file.dirty_found() > 0 {
                log::info!("block cache file: recovering {} dirty blocks", file.dirty_found());
            }
            (BlockCache::with_file(inner, cache_cfg, file.clone()), Some(file))
        }
        None => (BlockCache::new(inner, cache_cfg), None),
    };
    stats.register(cache.stats());
    crate::metrics::observe_cache(cache.stats());
    Ok(Caching { top: Arc::new(cache), cache_file: file })
}
