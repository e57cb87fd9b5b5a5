//! The caching layers of the stack, configured from the command line: the block cache with
//! read-ahead (crates/cache). Upstream's defaults: 1000 blocks, 20 upload workers, 250 ms write
//! delay, read-ahead of 4 blocks after 2 sequential reads; `--blockCacheSize=0` removes the layer.
//! The persistent cache file and the MD5/ETag consistency layer are not built yet; their flags
//! are refused in [`unsupported_flags`].

use crate::args::Cli;
use crate::config::Config;
use crate::size::parse_num;
use anyhow::{Result, anyhow, bail};
use s3b_cache::{BlockCache, CacheConfig};
use s3b_store::{BlockStore, StatsRegistry};
use std::sync::Arc;
use std::time::Duration;

fn num<T: std::str::FromStr>(v: &Option<String>, flag: &str) -> Result<Option<T>> {
    v.as_deref().map(|s| parse_num::<T>(s, flag).map_err(|e| anyhow!(e))).transpose()
}

/// The block cache settings the command line asks for; `None` when the cache is off.
pub fn cache_config(cfg: &Config) -> Result<Option<CacheConfig>> {
    let k = &cfg.cli.cache;
    let d = CacheConfig::default();
    let size = num::<usize>(&k.block_cache_size, "--blockCacheSize")?.unwrap_or(d.size);
    let threads = num::<usize>(&k.block_cache_threads, "--blockCacheThreads")?.unwrap_or(d.threads);
    let write_delay = num::<u64>(&k.block_cache_write_delay, "--blockCacheWriteDelay")?.map(Duration::from_millis);
    let timeout = num::<u64>(&k.block_cache_timeout, "--blockCacheTimeout")?.unwrap_or(0);
    let max_dirty = num::<usize>(&k.block_cache_max_dirty, "--blockCacheMaxDirty")?.unwrap_or(0);
    let num_protected = num::<u64>(&k.block_cache_num_protected, "--blockCacheNumProtected")?.unwrap_or(0);
    let read_ahead = num::<usize>(&k.read_ahead, "--readAhead")?.unwrap_or(d.read_ahead);
    let read_ahead_trigger = num::<usize>(&k.read_ahead_trigger, "--readAheadTrigger")?.unwrap_or(d.read_ahead_trigger);
    if size == 0 {
        return Ok(None);
    }
    if threads == 0 {
        bail!("invalid --blockCacheThreads 0: at least one upload worker is needed");
    }
    if max_dirty > size {
        bail!("--blockCacheMaxDirty ({max_dirty}) must not exceed --blockCacheSize ({size})");
    }
    if k.block_cache_sync && write_delay.is_some_and(|d| !d.is_zero()) {
        bail!("--blockCacheSync requires --blockCacheWriteDelay=0");
    }
    let write_delay = if k.block_cache_sync { Duration::ZERO } else { write_delay.unwrap_or(d.write_delay) };
    if read_ahead >= size {
        bail!("--readAhead ({read_ahead}) must be smaller than --blockCacheSize ({size})");
    }
    Ok(Some(CacheConfig {
        size,
        threads,
        write_delay,
        timeout: (timeout > 0).then(|| Duration::from_millis(timeout)),
        max_dirty,
        sync: k.block_cache_sync,
        num_protected,
        read_ahead,
        read_ahead_trigger,
    }))
}

/// Puts the caching layers the configuration asks for on top of `inner` (the codec's store)
/// and registers their counters.
pub fn wrap(cfg: &Config, inner: Arc<dyn BlockStore>, stats: &StatsRegistry) -> Result<Arc<dyn BlockStore>> {
    let Some(cc) = cache_config(cfg)? else { return Ok(inner) };
    let cache = BlockCache::new(inner, cc);
    for s in cache.stats() {
        stats.register(s);
    }
    Ok(Arc::new(cache))
}

/// Flags of the caching layers that are not handled yet (see [`crate::unsupported`]).
pub(crate) fn unsupported_flags(cli: &Cli) -> Vec<(&'static str, bool)> {
    let k = &cli.cache;
    vec![
        ("--blockCacheFile", k.block_cache_file.is_some()),
        ("--blockCacheNoVerify", k.block_cache_no_verify),
        ("--blockCacheRecoverDirtyBlocks", k.block_cache_recover_dirty_blocks),
        ("--blockCacheFileAdvise", k.block_cache_file_advise),
        ("--md5CacheSize", k.md5_cache_size.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--md5CacheTime", k.md5_cache_time.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--minWriteDelay", k.min_write_delay.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--sharedDiskMode", k.shared_disk_mode),
        ("--statsFileMirror", k.stats_file_mirror.is_some()),
        ("--statsFileMirrorInterval", k.stats_file_mirror_interval.is_some()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(args: &[&str]) -> Result<Option<CacheConfig>> {
        let mut a: Vec<String> = vec!["--test".into(), "--size=1m".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend(["/tmp/d".to_string(), "/tmp/m".to_string()]);
        cache_config(&crate::config::validate(crate::args::parse(&a)?)?)
    }

    #[test]
    fn defaults_and_checks() {
        let c = cc(&[]).unwrap().unwrap();
        assert_eq!((c.size, c.threads, c.write_delay, c.read_ahead), (1000, 20, Duration::from_millis(250), 4));
        assert!(cc(&["--blockCacheSize=0"]).unwrap().is_none());
        assert!(cc(&["--blockCacheSync", "--blockCacheWriteDelay=0"]).unwrap().unwrap().sync);
        for (args, needle) in [
            (&["--blockCacheSync", "--blockCacheWriteDelay=10"][..], "requires --blockCacheWriteDelay=0"),
            (&["--blockCacheThreads=0"], "--blockCacheThreads"),
            (&["--blockCacheSize=10", "--blockCacheMaxDirty=11"], "must not exceed"),
            (&["--blockCacheSize=x"], "--blockCacheSize"),
            (&["--blockCacheSize=10", "--readAhead=10"], "--readAhead"),
        ] {
            let e = cc(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
