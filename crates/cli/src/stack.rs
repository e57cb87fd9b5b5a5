//! Stack assembly: builds the layers the configuration asks for, bottom up, in one place.
//!
//! ```text
//! transport (S3 | --test directory) → [fault injection] → codec → … caching layers … → zero cache → front end
//! ```
//! Layers that are disabled are left out, as upstream does. This module also settles the
//! volume geometry (given, or auto-detected from block 0) and owns the mount-token protocol:
//! refuse a volume that appears mounted unless `--force`, set our token while mounted, clear it
//! on clean unmount; read-only mounts write nothing at all.

use crate::config::{Config, DEFAULT_BLOCK_SIZE, Location, check_geometry};
use crate::size::unparse_size;
use anyhow::{Context, Result, bail};
use s3b_codec::{Codec, CodecConfig, CodecStore};
use s3b_dir::DirStore;
use s3b_zero::ZeroCache;
use s3b_store::faults::{FaultConfig, FaultyObjects};
use s3b_store::keys::BlockKeys;
use s3b_store::{BlockStore, ObjectStore, SHARED_DISK_TOKEN, StatsRegistry, TokenOp};
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
    let detected = if detect {
        objects.read_volume_meta().await.context("can't auto-detect the volume size")?
    } else {
        None
    };
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

    let mut objects = transport.clone();
    let f = cfg.faults;
    if f.delays || f.discard || f.errors {
        let faulty = FaultyObjects::new(
            objects,
            FaultConfig { delays: f.delays, discard: f.discard, error_percent: if f.errors { TEST_ERROR_PERCENT } else { 0 } },
        );
        stats.register(faulty.counters());
        objects = Arc::new(faulty);
    }

    let codec = CodecStore::new(objects, Codec::new(block_size, codec), num_blocks);
    codec.check_password().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let coded: Arc<dyn BlockStore> = Arc::new(codec);
    let cached = crate::caching::wrap(cfg, coded, &stats)?;
    // The zero-block cache sits on top, as upstream; --listBlocks fills it from a survey.
    let zero = ZeroCache::new(cached, cfg.cli.s3.list_blocks);
    stats.register(zero.stats());
    let top: Arc<dyn BlockStore> = Arc::new(zero);
    Ok(Stack { top, objects: transport, stats, block_size, num_blocks })
}

/// Checks the volume is not mounted elsewhere and, unless read-only, marks it mounted by us.
/// Returns our token (0 when nothing was written).
pub async fn acquire_mount_token(cfg: &Config, objects: &dyn ObjectStore) -> Result<u32> {
    let old = objects.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
    if old != 0 {
        let msg = format!("volume appears to be already mounted (mount token {old:08x})");
        if !cfg.force {
            bail!("{msg}; if it is not, use --reset-mounted-flag, or --force to override");
        }
        log::warn!("{msg}; proceeding because of --force");
    }
    if cfg.read_only {
        return Ok(0);
    }
    let token = loop {
        let t = rand::random::<u32>() & 0x7fff_ffff;
        if t != 0 && t != SHARED_DISK_TOKEN {
            break t;
        }
    };
    objects.mount_token(TokenOp::Set(token)).await.context("can't set the mount token")?;
    Ok(token)
}

/// Clears the mount token on clean unmount (if we set one).
pub async fn release_mount_token(objects: &dyn ObjectStore, token: u32) -> Result<()> {
    if token != 0 {
        objects.mount_token(TokenOp::Clear).await.context("can't clear the mount token")?;
    }
    Ok(())
}
