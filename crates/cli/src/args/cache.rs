//! Block cache, read-ahead, zero cache and consistency-layer flags, with upstream's names and
//! defaults. Owned by crates/cache and crates/ec: a flag of those layers is added here, next to
//! its siblings, and checked against the others in `config::cache`. Each value is typed by its
//! parser ([`super::values`]), so a bad one is refused before anything starts.

use super::values::{self, Flag};
use clap::Args;
use std::time::Duration;

/// Flags of the caching layers.
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Block cache size in blocks; 0 disables the cache [default: 1000].
    #[arg(long = "blockCacheSize", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<usize>))]
    pub block_cache_size: Option<usize>,
    /// Block cache worker count [default: 20].
    #[arg(long = "blockCacheThreads", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<usize>))]
    pub block_cache_threads: Option<usize>,
    /// Longest time a dirty block waits before upload, in milliseconds [default: 250].
    #[arg(long = "blockCacheWriteDelay", value_name = "MILLIS", help_heading = "Block cache",
          value_parser = Flag(values::millis))]
    pub block_cache_write_delay: Option<Duration>,
    /// Evict clean blocks idle this long, in milliseconds; 0 = never [default: 0].
    #[arg(long = "blockCacheTimeout", value_name = "MILLIS", help_heading = "Block cache",
          value_parser = Flag(values::millis))]
    pub block_cache_timeout: Option<Duration>,
    /// Most dirty blocks at once; writers wait beyond it; 0 = no limit [default: 0].
    #[arg(long = "blockCacheMaxDirty", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<usize>))]
    pub block_cache_max_dirty: Option<usize>,
    /// Writes return only once uploaded (needs --blockCacheWriteDelay=0).
    #[arg(long = "blockCacheSync", help_heading = "Block cache")]
    pub block_cache_sync: bool,
    /// Keep the block cache in this file, across restarts.
    #[arg(long = "blockCacheFile", value_name = "FILE", help_heading = "Block cache")]
    pub block_cache_file: Option<String>,
    /// Trust blocks reloaded from the cache file without checking them against the store.
    #[arg(long = "blockCacheNoVerify", help_heading = "Block cache")]
    pub block_cache_no_verify: bool,
    /// Upload dirty blocks found in the cache file at startup instead of discarding them.
    #[arg(long = "blockCacheRecoverDirtyBlocks", help_heading = "Block cache")]
    pub block_cache_recover_dirty_blocks: bool,
    /// Blocks numbered below NUM are evicted last [default: 0].
    #[arg(long = "blockCacheNumProtected", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<u32>))]
    pub block_cache_num_protected: Option<u32>,
    /// Advise the kernel not to cache the cache file's pages.
    #[arg(long = "blockCacheFileAdvise", help_heading = "Block cache")]
    pub block_cache_file_advise: bool,
    /// Blocks to read ahead [default: 4].
    #[arg(long = "readAhead", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<u32>))]
    pub read_ahead: Option<u32>,
    /// Sequential block reads before read-ahead starts [default: 2].
    #[arg(long = "readAheadTrigger", value_name = "NUM", help_heading = "Block cache",
          value_parser = Flag(values::num::<u32>))]
    pub read_ahead_trigger: Option<u32>,
    /// MD5 (ETag) cache size in blocks; 0 disables the consistency layer [default: 0].
    #[arg(long = "md5CacheSize", value_name = "NUM", help_heading = "Consistency",
          value_parser = Flag(values::num::<u64>))]
    pub md5_cache_size: Option<u64>,
    /// How long a written block's ETag is remembered, in milliseconds [default: 0].
    #[arg(long = "md5CacheTime", value_name = "MILLIS", help_heading = "Consistency",
          value_parser = Flag(values::millis))]
    pub md5_cache_time: Option<Duration>,
    /// Least time between two writes of one block, in milliseconds [default: 0].
    #[arg(long = "minWriteDelay", value_name = "MILLIS", help_heading = "Consistency",
          value_parser = Flag(values::millis))]
    pub min_write_delay: Option<Duration>,
    /// No caching at all, so several hosts can mount the volume at once.
    #[arg(long = "sharedDiskMode", help_heading = "Consistency")]
    pub shared_disk_mode: bool,
    /// Also write the statistics to this regular file, periodically.
    #[arg(long = "statsFileMirror", value_name = "FILE", help_heading = "Files")]
    pub stats_file_mirror: Option<String>,
    /// Period of --statsFileMirror, in milliseconds [default: 1000].
    #[arg(long = "statsFileMirrorInterval", value_name = "MILLIS", help_heading = "Files",
          value_parser = Flag(values::positive_millis))]
    pub stats_file_mirror_interval: Option<Duration>,
}
