//! The caching layers of the stack (block cache, zero cache, read-ahead, MD5/ETag consistency
//! layer), configured from the command line.
//!
//! The block cache ([`s3b_cache`]) is built here from the `--blockCache*` and `--readAhead*`
//! flags, validated as upstream does (one-line errors). It is on by default with 1000 blocks;
//! `--blockCacheSize=0` leaves it out. Below it sits the MD5/ETag consistency layer
//! ([`s3b_ec`], `--md5CacheSize` and friends; off by default as in upstream 2.x, and on
//! read-only mounts). The zero cache goes on top (see `stack.rs`).

use crate::args::Cli;
use crate::config::Config;
use crate::size::parse_num;
use anyhow::{Result, anyhow, bail};
use s3b_cache::{BlockCache, CacheConfig, CacheFile, FileOptions};
use s3b_ec::{EcConfig, EcProtect};
use s3b_store::{BlockStore, StatsRegistry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Upstream's default block cache size, in blocks.
pub const DEFAULT_BLOCK_CACHE_SIZE: usize = 1000;

/// The checked block cache flags.
#[derive(Clone, Debug)]
pub struct BlockCacheSettings {
    /// Layer settings (size before clamping to the volume).
    pub cache: CacheConfig,
    /// `--blockCacheFile`.
    pub file: Option<PathBuf>,
    /// `--blockCacheNoVerify`, `--blockCacheRecoverDirtyBlocks`, `--blockCacheFileAdvise`.
    pub file_options: FileOptions,
}

fn num<T: std::str::FromStr>(v: &Option<String>, flag: &str, default: T) -> Result<T> {
    match v {
        Some(s) => parse_num(s, flag).map_err(|e| anyhow!(e)),
        None => Ok(default),
    }
}

/// Checks the block cache flags; `None` when the cache is disabled (`--blockCacheSize=0`).
pub fn block_cache_settings(cli: &Cli) -> Result<Option<BlockCacheSettings>> {
    let k = &cli.cache;
    let d = CacheConfig::default();
    let size: usize = num(&k.block_cache_size, "--blockCacheSize", DEFAULT_BLOCK_CACHE_SIZE)?;
    let threads: usize = num(&k.block_cache_threads, "--blockCacheThreads", d.threads)?;
    let write_delay: u64 = num(&k.block_cache_write_delay, "--blockCacheWriteDelay", d.write_delay.as_millis() as u64)?;
    let timeout: u64 = num(&k.block_cache_timeout, "--blockCacheTimeout", 0)?;
    let max_dirty: usize = num(&k.block_cache_max_dirty, "--blockCacheMaxDirty", 0)?;
    let num_protected: u32 = num(&k.block_cache_num_protected, "--blockCacheNumProtected", 0)?;
    let read_ahead: u32 = num(&k.read_ahead, "--readAhead", d.read_ahead)?;
    let read_ahead_trigger: u32 = num(&k.read_ahead_trigger, "--readAheadTrigger", d.read_ahead_trigger)?;
    if k.block_cache_file.is_none() && k.block_cache_recover_dirty_blocks {
        bail!("--blockCacheRecoverDirtyBlocks requires specifying --blockCacheFile");
    }
    if size == 0 {
        return Ok(None);
    }
    if threads == 0 {
        bail!("invalid block cache thread pool size {threads}");
    }
    if write_delay > 0 && k.block_cache_sync {
        bail!("--blockCacheSync requires setting --blockCacheWriteDelay=0");
    }
    if k.block_cache_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        bail!("--blockCacheFile needs a file name");
    }
    let cache = CacheConfig {
        size,
        threads,
        write_delay: Duration::from_millis(write_delay),
        timeout: (timeout > 0).then(|| Duration::from_millis(timeout)),
        max_dirty,
        sync: k.block_cache_sync,
        num_protected,
        read_ahead,
        read_ahead_trigger,
    };
    Ok(Some(BlockCacheSettings {
        cache,
        // Absolute, because the daemon changes to / before the stack is built.
        file: k.block_cache_file.as_ref().map(|f| std::path::absolute(f).unwrap_or_else(|_| PathBuf::from(f))),
        file_options: FileOptions {
            no_verify: k.block_cache_no_verify,
            recover_dirty: k.block_cache_recover_dirty_blocks,
            advise: k.block_cache_file_advise,
        },
    }))
}

/// What [`wrap`] built.
pub struct Caching {
    /// The top store.
    pub top: Arc<dyn BlockStore>,
    /// The block cache file, when `--blockCacheFile` is used (for the mount-token protocol).
    pub cache_file: Option<Arc<CacheFile>>,
}

/// Checks the consistency-layer flags; `num_blocks` once the geometry is known. `None` when
/// the layer is off (the default, and always on read-only mounts, as upstream).
pub fn ec_settings(cli: &Cli, num_blocks: Option<u64>) -> Result<Option<EcConfig>> {
    let k = &cli.cache;
    let size: u64 = num(&k.md5_cache_size, "--md5CacheSize", 0)?;
    let time: u64 = num(&k.md5_cache_time, "--md5CacheTime", 0)?;
    let delay: u64 = num(&k.min_write_delay, "--minWriteDelay", 0)?;
    let ec = EcConfig::from_flags(size, time, delay, num_blocks)?;
    Ok(ec.filter(|_| !cli.core.read_only))
}

/// Puts the caching layers the configuration asks for on top of `inner` (the codec's store)
/// and registers their counters.
pub fn wrap(cfg: &Config, inner: Arc<dyn BlockStore>, stats: &StatsRegistry) -> Result<Caching> {
    let inner: Arc<dyn BlockStore> = match ec_settings(&cfg.cli, Some(inner.num_blocks()))? {
        Some(ec) => {
            let layer = EcProtect::new(inner, ec);
            stats.register(layer.stats());
            Arc::new(layer)
        }
        None => inner,
    };
    let Some(s) = block_cache_settings(&cfg.cli)? else {
        return Ok(Caching { top: inner, cache_file: None });
    };
    let mut cache_cfg = s.cache;
    cache_cfg.size = cache_cfg.size.min(inner.num_blocks().min(usize::MAX as u64) as usize);
    if cfg.read_only {
        // Nothing is ever dirty on a read-only mount.
        cache_cfg.max_dirty = 0;
    }
    let (cache, file) = match &s.file {
        Some(path) => {
            let slots =
                u32::try_from(cache_cfg.size).map_err(|_| anyhow!("--blockCacheSize is too big for a cache file"))?;
            if (slots as u64).checked_mul(inner.block_size() as u64).is_none_or(|b| b > i64::MAX as u64 / 2) {
                bail!(
                    "the block cache is too big to fit within a single file ({slots} blocks x {} bytes)",
                    inner.block_size()
                );
            }
            let file = Arc::new(CacheFile::open(path, inner.block_size(), slots, s.file_options)?);
            if file.dirty_found() > 0 && cfg.read_only {
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
    Ok(Caching { top: Arc::new(cache), cache_file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[&str]) -> Result<Option<BlockCacheSettings>> {
        let mut a = vec!["--test", "--size=1m", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        block_cache_settings(&crate::args::parse(&a)?)
    }

    #[test]
    fn defaults_as_upstream() {
        let s = settings(&[]).unwrap().unwrap();
        assert_eq!(s.cache.size, 1000);
        assert_eq!(s.cache.threads, 20);
        assert_eq!(s.cache.write_delay, Duration::from_millis(250));
        assert_eq!((s.cache.read_ahead, s.cache.read_ahead_trigger), (4, 2));
        assert_eq!(s.cache.timeout, None);
        assert!(settings(&["--blockCacheSize=0"]).unwrap().is_none());
    }

    #[test]
    fn validation_errors() {
        let err = |a: &[&str]| settings(a).unwrap_err().to_string();
        assert_eq!(err(&["--blockCacheSync"]), "--blockCacheSync requires setting --blockCacheWriteDelay=0");
        assert!(settings(&["--blockCacheSync", "--blockCacheWriteDelay=0"]).unwrap().unwrap().cache.sync);
        assert_eq!(
            err(&["--blockCacheRecoverDirtyBlocks"]),
            "--blockCacheRecoverDirtyBlocks requires specifying --blockCacheFile"
        );
        assert_eq!(err(&["--blockCacheThreads=0"]), "invalid block cache thread pool size 0");
        assert_eq!(err(&["--blockCacheSize=lots"]), "invalid --blockCacheSize \"lots\"");
        assert_eq!(err(&["--readAhead=-1"]), "invalid --readAhead \"-1\"");
        let s =
            settings(&["--blockCacheFile=/tmp/x", "--blockCacheNoVerify", "--blockCacheTimeout=5"]).unwrap().unwrap();
        assert!(s.file_options.no_verify && s.file.is_some());
        assert_eq!(s.cache.timeout, Some(Duration::from_millis(5)));
        let s = settings(&["--blockCacheFile=rel/cache"]).unwrap().unwrap();
        assert!(s.file.unwrap().is_absolute(), "relative names survive the daemon's chdir");
    }
}
