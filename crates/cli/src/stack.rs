//! Stack assembly: builds the layers the configuration asks for, bottom up, in one place.
//!
//! ```text
//! transport (S3 | --test directory) → [fault injection] → codec → … caching layers … → zero cache → front end
//! ```
//! Layers that are disabled are left out, as upstream does. This module also settles the
//! volume geometry (given, or auto-detected from block 0); the mount token is
//! [`crate::token`]'s.

use crate::config::{Config, DEFAULT_BLOCK_SIZE, Location, check_geometry};
use crate::size::unparse_size;
use anyhow::{Context, Result, bail};
use s3b_cache::CacheFile;
use s3b_codec::{Codec, CodecConfig, CodecStore};
use s3b_dir::DirStore;
use s3b_store::faults::{FaultConfig, FaultyObjects};
use s3b_store::keys::BlockKeys;
use s3b_store::{BlockStore, ObjectStore, StatsRegistry};
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
    /// clears our mount token (`token`, from [`crate::token::acquire`]; 0: nothing to clear).
    pub async fn shutdown(&self, token: u32) -> Result<()> {
        self.top.shutdown().await.context("flushing the volume failed")?;
        crate::token::release(self.objects.as_ref(), token, self.cache_file.as_deref()).await
    }
}

/// A volume ready to be offered: the runtime its layers run on, the stack, and the mount token
/// it holds.
pub struct Started {
    /// The daemon's runtime.
    pub rt: tokio::runtime::Runtime,
    /// The layers.
    pub stack: Stack,
    /// Our mount token (0: none was set).
    pub token: u32,
}

/// What a serving daemon does before it offers the volume: starts the runtime, builds the
/// stack and takes the mount token.
pub fn start(cfg: &Config, codec: CodecConfig) -> Result<Started> {
    let rt = crate::daemon::runtime().context("can't start the runtime")?;
    let (stack, token) = rt.block_on(async {
        let stack = build(cfg, codec).await?;
        let token = crate::token::acquire(cfg, stack.objects.as_ref(), stack.cache_file.as_deref()).await?;
        Ok::<_, anyhow::Error>((stack, token))
    })?;
    Ok(Started { rt, stack, token })
}

impl Started {
    /// Gives the mount token back when the volume could not be offered after all (nothing was
    /// mounted or served, so nothing was written). A failure here is only logged for debugging:
    /// the error that stopped the start is the one line the user gets.
    pub fn release_token(&self) {
        let s = &self.stack;
        if let Err(e) = self.rt.block_on(crate::token::release(s.objects.as_ref(), self.token, s.cache_file.as_deref()))
        {
            log::debug!("releasing the mount token: {e:#}");
        }
    }
}

/// Opens the transport named by the configuration and registers its counters.
pub async fn open_transport(cfg: &Config, stats: &StatsRegistry) -> Result<Arc<dyn ObjectStore>> {
    match &cfg.location {
        Location::Dir(dir) => {
            let keys = BlockKeys::new(cfg.prefix.clone(), cfg.hash_prefix);
            Ok(Arc::new(DirStore::open(dir, keys).context("test directory")?))
        }
        Location::Bucket(_) => crate::s3::open_bucket(cfg, stats).await,
    }
}

/// Settles block size and block count: given on the command line, detected from block 0, or both
/// (then they must agree unless `--force`).
pub async fn resolve_geometry(cfg: &Config, objects: &dyn ObjectStore) -> Result<(u32, u64)> {
    let detect = !cfg.is_test() && cfg.geometry.auto_detect;
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
                ("block size", cfg.geometry.block_size.map(u64::from), meta.block_size as u64),
                ("file size", cfg.geometry.size, meta.file_size),
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
            (cfg.geometry.block_size.unwrap_or(meta.block_size), cfg.geometry.size.unwrap_or(meta.file_size))
        }
        None => {
            let Some(size) = cfg.geometry.size else {
                if cfg.is_test() {
                    bail!("--size is required with --test (a test directory has no size metadata)");
                }
                bail!("--size is required: the volume's size could not be auto-detected (no block 0 metadata)");
            };
            (cfg.geometry.block_size.unwrap_or(DEFAULT_BLOCK_SIZE), size)
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

    let objects = crate::snapshot::layer(cfg, &transport, objects, block_size, num_blocks, &stats).await?;
    let codec = CodecStore::new(objects, Codec::new(block_size, codec), num_blocks);
    codec.check_password().await?;
    let coded: Arc<dyn BlockStore> = Arc::new(codec);
    if cfg.shared_disk {
        // Other hosts write the volume too: nothing may be cached here.
        return Ok(Stack { top: coded, objects: transport, stats, block_size, num_blocks, cache_file: None });
    }
    let caching = crate::caching::wrap(&cfg.cache, cfg.read_only, coded, &stats)?;
    // The zero-block cache sits on top, as upstream; --listBlocks fills it from a survey.
    let zero = ZeroCache::new(caching.top, cfg.cache.list_blocks);
    stats.register(zero.stats());
    let top: Arc<dyn BlockStore> = Arc::new(zero);
    Ok(Stack { top, objects: transport, stats, block_size, num_blocks, cache_file: caching.cache_file })
}
