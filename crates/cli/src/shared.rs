//! `--sharedDiskMode`: several hosts mount one volume at once (under a cluster file system that
//! does its own locking), so this host must cache nothing.
//!
//! As upstream: every caching flag is refused with it (block cache, read-ahead, cache file,
//! consistency layer, `--listBlocks`); the stack is built without the block cache, the
//! consistency layer and the zero-block cache (see `stack.rs`); the exported file uses direct
//! I/O so the kernel caches nothing either; and the volume carries the shared mount token
//! 0x7fffffff, which other shared mounts accept, plain mounts refuse, and unmount leaves set.

use crate::args::cache::CacheArgs;
use crate::args::s3::S3Args;
use anyhow::{Result, bail};

/// The flags upstream refuses in shared disk mode, with whether each was given.
fn caching_flags(k: &CacheArgs, s: &S3Args) -> [(&'static str, bool); 18] {
    [
        ("--listBlocks", s.list_blocks),
        ("--listBlocksThreads", s.list_blocks_threads.is_some()),
        ("--blockCacheSize", k.block_cache_size.is_some()),
        ("--blockCacheSync", k.block_cache_sync),
        ("--blockCacheThreads", k.block_cache_threads.is_some()),
        ("--blockCacheTimeout", k.block_cache_timeout.is_some()),
        ("--blockCacheWriteDelay", k.block_cache_write_delay.is_some()),
        ("--blockCacheMaxDirty", k.block_cache_max_dirty.is_some()),
        ("--blockCacheRecoverDirtyBlocks", k.block_cache_recover_dirty_blocks),
        ("--readAhead", k.read_ahead.is_some()),
        ("--readAheadTrigger", k.read_ahead_trigger.is_some()),
        ("--blockCacheNumProtected", k.block_cache_num_protected.is_some()),
        ("--blockCacheFile", k.block_cache_file.is_some()),
        ("--blockCacheNoVerify", k.block_cache_no_verify),
        ("--blockCacheFileAdvise", k.block_cache_file_advise),
        ("--minWriteDelay", k.min_write_delay.is_some()),
        ("--md5CacheSize", k.md5_cache_size.is_some()),
        ("--md5CacheTime", k.md5_cache_time.is_some()),
    ]
}

/// Refuses caching flags combined with `--sharedDiskMode`.
pub(crate) fn check(k: &CacheArgs, s: &S3Args) -> Result<()> {
    if !k.shared_disk_mode {
        return Ok(());
    }
    if let Some((flag, _)) = caching_flags(k, s).iter().find(|(_, given)| *given) {
        bail!("{flag} cannot be used with --sharedDiskMode (it caches nothing)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_args(extra: &[&str]) -> Result<()> {
        let mut a = vec!["--test", "--size=1m", "--sharedDiskMode"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["dir", "mnt"]);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        let cli = crate::args::parse(&a)?;
        check(&cli.cache, &cli.s3)
    }

    #[test]
    fn every_caching_flag_is_refused() {
        assert!(check_args(&[]).is_ok());
        assert!(check_args(&["--directIO", "--readOnly"]).is_ok());
        for f in [
            "--listBlocks",
            "--listBlocksThreads=2",
            "--blockCacheSize=0",
            "--blockCacheSync",
            "--blockCacheThreads=2",
            "--blockCacheTimeout=1",
            "--blockCacheWriteDelay=0",
            "--blockCacheMaxDirty=1",
            "--blockCacheRecoverDirtyBlocks",
            "--readAhead=0",
            "--readAheadTrigger=1",
            "--blockCacheNumProtected=1",
            "--blockCacheFile=/tmp/x",
            "--blockCacheNoVerify",
            "--blockCacheFileAdvise",
            "--minWriteDelay=0",
            "--md5CacheSize=0",
            "--md5CacheTime=0",
        ] {
            let e = check_args(&[f]).unwrap_err().to_string();
            let name = f.split('=').next().unwrap();
            assert_eq!(e, format!("{name} cannot be used with --sharedDiskMode (it caches nothing)"));
        }
    }
}
