//! Stack assembly: builds the layers the configuration asks for, bottom up, in one place.
//!
//! ```text
//! transport (S3 | --test directory) → [fault injection] → codec → … caching layers … → zero cache → front end
//! ```
//! Layers that are disabled are left out, as upstream does. This module also settles the
//! volume geometry (given, or auto-detected from block 0) and owns the mount-token protocol:
//! refuse a volume that appears mounted unless `--force`, set our token while mounted, clear it
//! on clean unmount; read-only mounts write nothing at all. Setting and clearing are
//! compare-and-swaps ([`ObjectStore::swap_mount_token`]), so two mounts that start at the same
//! instant cannot both come up.

use crate::config::{Config, DEFAULT_BLOCK_SIZE, Location, check_geometry};
use crate::size::unparse_size;
use anyhow::{Context, Result, bail};
use s3b_cache::CacheFile;
use s3b_codec::{Codec, CodecConfig, CodecStore};
use s3b_dir::DirStore;
use s3b_store::faults::{FaultConfig, FaultyObjects};
use s3b_store::keys::BlockKeys;
use s3b_store::{BlockStore, ObjectStore, SHARED_DISK_TOKEN, StatsRegistry, TokenOp, TokenSwap};
use s3b_zero::ZeroCache;
use std::sync::Arc;

/// Percentage of operations failed by `--test-errors`.
pub const TEST_ERROR_PERCENT: u32 = 1;

/// The assembled layers.
pub struct Stack {
    /// The top block store, what the front end talks to.
    pub top: Arc<dyn BlockStore>,
    /// The transport (below any fault injection), for the mount token and maintenance modes.
    pub objects: Arc<dyn ObjectStore>,
    /// All layers' counters.
    pub stats: Arc<StatsRegistry>,
    /// Block size in bytes.
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// The block cache file, if any: it remembers the mount token of its last mount.
    pub cache_file: Option<Arc<CacheFile>>,
}

impl Stack {
    /// Ends a mount or an NBD server after its last request: writes every dirty block down, then
    /// clears our mount token (`token`, from [`acquire_mount_token`]; 0: nothing to clear).
    pub async fn shutdown(&self, token: u32) -> Result<()> {
        self.top.shutdown().await.context("flushing the volume failed")?;
        release_mount_token(self.objects.as_ref(), token, self.cache_file.as_deref()).await
    }
}

/// Opens the transport named by the configuration and registers its counters.
pub async fn open_transport(cfg: &Config, stats: &StatsRegistry) -> Result<Arc<dyn ObjectStore>> {
    match &cfg.location {
        Location::Dir(dir) => {
            let keys = BlockKeys::new(cfg.prefix.clone(), cfg.hash_prefix);
            Ok(Arc::new(DirStore::open(dir, keys).map_err(|e| anyhow::anyhow!("test directory {e}"))?))
        }
        Location::Bucket(_) => crate::s3::open_bucket(cfg, stats).await,
    }
}

/// Settles block size and block count: given on the command line, detected from block 0, or both
/// (then they must agree unless `--force`).
pub async fn resolve_geometry(cfg: &Config, objects: &dyn ObjectStore) -> Result<(u32, u64)> {
    let detect = !cfg.is_test() && !cfg.cli.s3.no_auto_detect;
    let detected =
        if detect { objects.read_volume_meta().await.context("can't auto-detect the volume size")? } else { None };
    let (block_size, size) = match detected {
        Some(meta) => {
            if !cfg.quiet {
                log::info!(
                    "auto-detected block size={} and total size={}",
                    unparse_size(meta.block_size as u64),
                    unparse_size(meta.file_size)
                );
            }
            for (what, given, found) in [
                ("block size", cfg.block_size.map(u64::from), meta.block_size as u64),
                ("file size", cfg.size, meta.file_size),
            ] {
                if let Some(given) = given.filter(|&g| g != found) {
                    let msg = format!(
                        "configured {what} {} != the volume's {what} {}",
                        unparse_size(given),
                        unparse_size(found)
                    );
                    if !cfg.force {
                        bail!("{msg}; use --force to override");
                    }
                    log::warn!("{msg} (proceeding because of --force)");
                }
            }
            (cfg.block_size.unwrap_or(meta.block_size), cfg.size.unwrap_or(meta.file_size))
        }
        None => {
            let Some(size) = cfg.size else {
                if cfg.is_test() {
                    bail!("--size is required with --test (a test directory has no size metadata)");
                }
                bail!("--size is required: the volume's size could not be auto-detected (no block 0 metadata)");
            };
            (cfg.block_size.unwrap_or(DEFAULT_BLOCK_SIZE), size)
        }
    };
    let num_blocks = check_geometry(size, block_size)?;
    Ok((block_size, num_blocks))
}

/// Builds the whole stack for a mount, with the codec settings from
/// [`crate::encoding::codec_config`] (resolved before daemonizing, as it may prompt).
pub async fn build(cfg: &Config, codec: CodecConfig) -> Result<Stack> {
    let stats = Arc::new(StatsRegistry::new());
    let transport = open_transport(cfg, &stats).await?;
    let (block_size, num_blocks) = resolve_geometry(cfg, transport.as_ref()).await?;
    transport.set_block_size(block_size);

    let mut objects = transport.clone();
    let f = cfg.faults;
    if f.delays || f.discard || f.errors {
        let faulty = FaultyObjects::new(
            objects,
            FaultConfig {
                delays: f.delays,
                discard: f.discard,
                error_percent: if f.errors { TEST_ERROR_PERCENT } else { 0 },
            },
        );
        stats.register(faulty.counters());
        objects = Arc::new(faulty);
    }

    let codec = CodecStore::new(objects, Codec::new(block_size, codec), num_blocks);
    codec.check_password().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let coded: Arc<dyn BlockStore> = Arc::new(codec);
    if cfg.shared_disk {
        // Other hosts write the volume too: nothing may be cached here.
        return Ok(Stack { top: coded, objects: transport, stats, block_size, num_blocks, cache_file: None });
    }
    let caching = crate::caching::wrap(cfg, coded, &stats)?;
    // The zero-block cache sits on top, as upstream; --listBlocks fills it from a survey.
    let zero = ZeroCache::new(caching.top, cfg.cli.s3.list_blocks);
    stats.register(zero.stats());
    let top: Arc<dyn BlockStore> = Arc::new(zero);
    Ok(Stack { top, objects: transport, stats, block_size, num_blocks, cache_file: caching.cache_file })
}

/// Checks the volume is not mounted elsewhere and, unless read-only, marks it mounted by us
/// (in the store and in the block cache file, if any). Returns our token, 0 when there is
/// nothing to clear at unmount (read-only, or `--sharedDiskMode`, whose shared token 0x7fffffff
/// other hosts' mounts accept and which stays set).
///
/// A crashed mount leaves its token both in the store and in its cache file. When they match
/// and `--blockCacheRecoverDirtyBlocks` is given, the "already mounted" conflict is waived: the
/// volume was last mounted by this cache, whose dirty blocks are about to be recovered.
pub async fn acquire_mount_token(
    cfg: &Config,
    objects: &dyn ObjectStore,
    cache_file: Option<&CacheFile>,
) -> Result<u32> {
    let old = objects.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
    let cached = cache_file.map_or(0, |f| f.stored_token());
    let recovering = old != 0 && cached == old && cfg.cli.cache.block_cache_recover_dirty_blocks;
    if cached != 0 && cached != old {
        log::warn!("block cache file was last used by mount token {cached:08x}, but the volume has {old:08x}");
    }
    let shared_set = cfg.shared_disk && old == SHARED_DISK_TOKEN;
    if recovering {
        log::info!("volume was last mounted with this cache file (token {old:08x}): recovering after a crash");
    } else if old != 0 && !shared_set {
        let msg = if old == SHARED_DISK_TOKEN {
            "volume appears to be configured for --sharedDiskMode (mount token 7fffffff)".to_string()
        } else {
            format!("volume appears to be already mounted (mount token {old:08x})")
        };
        if !cfg.force {
            bail!("{msg}; if it is not, use --reset-mounted-flag, or --force to override");
        }
        log::warn!("{msg}; proceeding because of --force");
    }
    if cfg.read_only {
        return Ok(0);
    }
    if cfg.shared_disk {
        if !shared_set {
            objects.mount_token(TokenOp::Set(SHARED_DISK_TOKEN)).await.context("can't set the mount token")?;
            log::info!("established the mount token for shared disk mode");
        }
        // Never cleared by us: other hosts may still have the volume mounted.
        return Ok(0);
    }
    let token = loop {
        let t = rand::random::<u32>() & 0x7fff_ffff;
        if t != 0 && t != SHARED_DISK_TOKEN {
            break t;
        }
    };
    // A compare-and-swap from the token read above: of mounts starting at the same instant, at
    // most one gets past this line.
    match objects.swap_mount_token(old, token).await.context("can't set the mount token")? {
        TokenSwap::Done => {}
        TokenSwap::Changed(now) => bail!(
            "volume appears to be already mounted (mount token {now:08x}, set by another mount while this one was starting); \
             if it is not, use --reset-mounted-flag, or --force to override"
        ),
    }
    if let Some(f) = cache_file {
        f.set_token(token).map_err(|e| anyhow::anyhow!("{e}"))?;
        f.allow_uploads();
    }
    Ok(token)
}

/// Clears the mount token on clean unmount (if we set one), in the store and the cache file.
pub async fn release_mount_token(objects: &dyn ObjectStore, token: u32, cache_file: Option<&CacheFile>) -> Result<()> {
    if token != 0 {
        match objects.swap_mount_token(token, 0).await.context("can't clear the mount token")? {
            TokenSwap::Done => {}
            // Someone replaced ours (--force, or --reset-mounted-flag and a new mount): theirs stays.
            TokenSwap::Changed(now) => log::warn!(
                "the volume's mount token is {now:08x}, not ours ({token:08x}): another mount took the volume over; left it in place"
            ),
        }
        if let Some(f) = cache_file {
            f.set_token(0).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_cache::FileOptions;
    use s3b_store::mock::{MemObjects, Op};

    fn cfg(extra: &[&str]) -> Config {
        let mut a = vec!["--test", "--size=1m", "--blockCacheFile=/unused", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        crate::config::validate(crate::args::parse(&a).unwrap()).unwrap()
    }

    /// Runs `acquire` while another mount sets its token (0x1234) on `objects` between our read
    /// of the token and our swap.
    async fn raced<T>(objects: &MemObjects, acquire: impl std::future::Future<Output = T>) -> T {
        let gate = objects.hold(Op::Token);
        gate.allow(1); // our read
        let other_mount = async {
            gate.arrived(2).await; // our swap waits at the gate
            objects.set_token(0x1234);
            gate.release();
        };
        tokio::join!(acquire, other_mount).0
    }

    #[tokio::test]
    async fn a_mount_that_loses_the_race_is_refused_and_leaves_the_winner_alone() {
        let objects = MemObjects::new();
        let err = raced(&objects, acquire_mount_token(&cfg(&[]), &objects, None)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted (mount token 00001234"), "{err}");
        assert_eq!(objects.token(), 0x1234);
        // Same with --force: the token it was told to override is not the one there now.
        objects.set_token(0x77);
        let err =
            raced(&objects, acquire_mount_token(&cfg(&["--force"]), &objects, None)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted"), "{err}");
        assert_eq!(objects.token(), 0x1234);
        // Unmounting after someone else took the volume over leaves their token.
        release_mount_token(&objects, 0x99, None).await.unwrap();
        assert_eq!(objects.token(), 0x1234);
    }

    #[tokio::test]
    async fn crashed_mount_with_its_cache_file_recovers_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let objects = MemObjects::new();
        let file = CacheFile::open(&path, 4096, 8, FileOptions::default()).unwrap();
        // First mount: token set in both places; then a "crash" (no release).
        let t1 = acquire_mount_token(&cfg(&[]), &objects, Some(&file)).await.unwrap();
        assert_eq!(file.stored_token(), t1);
        assert_eq!(objects.token(), t1);
        drop(file);

        let file = CacheFile::open(&path, 4096, 8, FileOptions { recover_dirty: true, ..Default::default() }).unwrap();
        // Without the recovery flag: the usual "already mounted" refusal.
        let err = acquire_mount_token(&cfg(&[]), &objects, Some(&file)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted"), "{err}");
        // With it, and the same token in the cache file: allowed.
        let t2 = acquire_mount_token(&cfg(&["--blockCacheRecoverDirtyBlocks"]), &objects, Some(&file)).await.unwrap();
        assert_ne!(t2, t1);
        assert!(file.uploads_allowed());
        release_mount_token(&objects, t2, Some(&file)).await.unwrap();
        assert_eq!((file.stored_token(), objects.token()), (0, 0));

        // Another mount's token (not ours): still refused.
        objects.set_token(0x55);
        let err =
            acquire_mount_token(&cfg(&["--blockCacheRecoverDirtyBlocks"]), &objects, Some(&file)).await.unwrap_err();
        assert!(err.to_string().contains("already mounted"));
    }
}
