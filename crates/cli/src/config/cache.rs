//! Caching-layer settings: the block cache (`--blockCache*`, `--readAhead*`), the MD5/ETag
//! consistency layer (`--md5Cache*`, `--minWriteDelay`) and the zero cache's `--listBlocks`,
//! checked as upstream does. Defaults are the layers' own ([`CacheConfig::default`]).

use crate::args::cache::CacheArgs;
use anyhow::{Result, bail};
use s3b_cache::{CacheConfig, FileOptions};
use s3b_ec::EcConfig;
use std::path::PathBuf;
use std::time::Duration;

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

/// The consistency-layer flags; the checks that need the number of blocks run once it is known
/// ([`EcFlags::config`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EcFlags {
    /// `--md5CacheSize`.
    pub size: u64,
    /// `--md5CacheTime`.
    pub time: Duration,
    /// `--minWriteDelay`.
    pub min_write_delay: Duration,
    /// The layer is never used on read-only mounts, as upstream.
    pub read_only: bool,
}

impl EcFlags {
    /// The layer's configuration for a volume of `num_blocks` (`None` while unknown). `None`
    /// when the layer is off (the default, and always on read-only mounts).
    pub fn config(&self, num_blocks: Option<u64>) -> Result<Option<EcConfig>> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ec = EcConfig::from_flags(self.size, ms(self.time), ms(self.min_write_delay), num_blocks)?;
        Ok(ec.filter(|_| !self.read_only))
    }
}

/// The checked caching flags.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// The block cache; `None` when disabled (`--blockCacheSize=0`).
    pub block_cache: Option<BlockCacheSettings>,
    /// The consistency layer.
    pub ec: EcFlags,
    /// `--listBlocks`: fill the zero cache from a survey at startup.
    pub list_blocks: bool,
}

/// Checks the caching flags of a volume (`read_only` turns the consistency layer off).
pub(super) fn settings(k: &CacheArgs, list_blocks: bool, read_only: bool) -> Result<CacheSettings> {
    let block_cache = block_cache(k)?;
    let d = EcFlags::default();
    let ec = EcFlags {
        size: k.md5_cache_size.unwrap_or(d.size),
        time: k.md5_cache_time.unwrap_or(d.time),
        min_write_delay: k.min_write_delay.unwrap_or(d.min_write_delay),
        read_only,
    };
    ec.config(None)?;
    Ok(CacheSettings { block_cache, ec, list_blocks })
}

/// Checks the block cache flags; `None` when the cache is disabled (`--blockCacheSize=0`).
pub fn block_cache(k: &CacheArgs) -> Result<Option<BlockCacheSettings>> {
    let d = CacheConfig::default();
    if k.block_cache_file.is_none() && k.block_cache_recover_dirty_blocks {
        bail!("--blockCacheRecoverDirtyBlocks requires specifying --blockCacheFile");
    }
    let cache = CacheConfig {
        size: k.block_cache_size.unwrap_or(d.size),
        threads: k.block_cache_threads.unwrap_or(d.threads),
        write_delay: k.block_cache_write_delay.unwrap_or(d.write_delay),
        timeout: match k.block_cache_timeout {
            Some(t) => (!t.is_zero()).then_some(t),
            None => d.timeout,
        },
        max_dirty: k.block_cache_max_dirty.unwrap_or(d.max_dirty),
        sync: k.block_cache_sync,
        num_protected: k.block_cache_num_protected.unwrap_or(d.num_protected),
        read_ahead: k.read_ahead.unwrap_or(d.read_ahead),
        read_ahead_trigger: k.read_ahead_trigger.unwrap_or(d.read_ahead_trigger),
    };
    if cache.size == 0 {
        return Ok(None);
    }
    if cache.threads == 0 {
        bail!("invalid block cache thread pool size {}", cache.threads);
    }
    if !cache.write_delay.is_zero() && cache.sync {
        bail!("--blockCacheSync requires setting --blockCacheWriteDelay=0");
    }
    if k.block_cache_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        bail!("--blockCacheFile needs a file name");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[&str]) -> Result<Option<BlockCacheSettings>> {
        let mut a = vec!["--test", "--size=1m", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        block_cache(&crate::args::parse(&a)?.cache)
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
