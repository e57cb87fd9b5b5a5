//! The caching layers of the stack (block cache, zero cache, read-ahead, MD5/ETag consistency
//! layer), configured from the command line.
//!
//! None is built yet: [`wrap`] returns the codec's store unchanged.

use crate::args::Cli;
use crate::config::Config;
use anyhow::Result;
use s3b_store::{BlockStore, StatsRegistry};
use std::sync::Arc;

/// Puts the caching layers the configuration asks for on top of `inner` (the codec's store)
/// and registers their counters.
pub fn wrap(_cfg: &Config, inner: Arc<dyn BlockStore>, _stats: &StatsRegistry) -> Result<Arc<dyn BlockStore>> {
    Ok(inner)
}

/// Flags of the caching layers that are not handled yet (see [`crate::unsupported`]).
pub(crate) fn unsupported_flags(cli: &Cli) -> Vec<(&'static str, bool)> {
    let k = &cli.cache;
    vec![
        ("--blockCacheSize", k.block_cache_size.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--blockCacheThreads", k.block_cache_threads.is_some()),
        ("--blockCacheWriteDelay", k.block_cache_write_delay.is_some()),
        ("--blockCacheTimeout", k.block_cache_timeout.is_some()),
        ("--blockCacheMaxDirty", k.block_cache_max_dirty.is_some()),
        ("--blockCacheSync", k.block_cache_sync),
        ("--blockCacheFile", k.block_cache_file.is_some()),
        ("--blockCacheNoVerify", k.block_cache_no_verify),
        ("--blockCacheRecoverDirtyBlocks", k.block_cache_recover_dirty_blocks),
        ("--blockCacheNumProtected", k.block_cache_num_protected.is_some()),
        ("--blockCacheFileAdvise", k.block_cache_file_advise),
        ("--readAhead", k.read_ahead.is_some()),
        ("--readAheadTrigger", k.read_ahead_trigger.is_some()),
        ("--md5CacheSize", k.md5_cache_size.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--md5CacheTime", k.md5_cache_time.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--minWriteDelay", k.min_write_delay.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--sharedDiskMode", k.shared_disk_mode),
        ("--statsFileMirror", k.stats_file_mirror.is_some()),
        ("--statsFileMirrorInterval", k.stats_file_mirror_interval.is_some()),
    ]
}
