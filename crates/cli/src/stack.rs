//! Stack assembly: builds the layers the configuration asks for, bottom up, in one place.
//!
//! ```text
//! transport (S3 | --test directory) → [fault injection] → codec → … caching layers … → zero cache → front end
//! ```
//! Layers that are disabled are left out, as upstream does. This module also settles the
//! volume geometry (given, or auto-detected from block 0, by [`crate::geometry`]); the mount
//! token is [`crate::token`]'s.

use crate::config::{Config, Location};
pub use crate::geometry::resolve_geometry;
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
    /// The live volume's snapshot layer (a read-write mount of a bucket): the control socket's.
    pub live: Option<Arc<s3b_snap::LiveStore>>,
}

impl Stack {
    /// Ends a mount or an NBD server after its last request: writes every dirty block down, then
    /// clears our mount token (`token`, from [`crate::token::acquire`]; 0: nothing to clear).
    pub async fn shutdown(&self, token: u32) -> Result<()> {
        self.top.shutdown().await.context("flushing the volume failed")?;
        crate::token::release(self.objects.as_ref(), token, self.cache_file.as_deref()).await
    }
}

/// What a serving daemon does before it offers the volume: starts the runtime, builds the
/// stack and takes the mount token. From the moment the token is ours, the returned guard owns
/// "the volume is started" (see [`Started`]).
pub fn start(cfg: &Config, codec: CodecConfig) -> Result<Started> {
    let rt = crate::daemon::runtime().context("can't start the runtime")?;
    crate::notify::status("opening the volume");
    let (stack, token) = rt.block_on(async {
        let stack = build(cfg, codec).await?;
        let token = crate::token::acquire(cfg, stack.objects.as_ref(), stack.cache_file.as_deref()).await?;
        Ok::<_, anyhow::Error>((stack, token))
    })?;
    let mut started = Started::new(rt, stack, token);
    // Only a mount that holds the volume can take its snapshots.
    if let (Some(live), true) = (started.stack.live.clone(), token != 0) {
        let handler = Arc::new(crate::control::Handler {
            top: started.stack.top.clone(),
            live,
            block_size: started.stack.block_size,
            file_size: started.stack.num_blocks * u64::from(started.stack.block_size),
            what: cfg.describe(),
        });
        let path = crate::control::socket_path(cfg);
        let _ctx = started.rt.enter();
        started.control = Some(crate::control::listen(&path, handler, cfg.force)?);
    }
    Ok(started)
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

/// Builds the whole stack for a mount, with the codec settings from
/// [`crate::encoding::codec_config`] (resolved before daemonizing, as it may prompt).
pub async fn build(cfg: &Config, codec: CodecConfig) -> Result<Stack> {
    let stats = Arc::new(StatsRegistry::new());
    let transport = open_transport(cfg, &stats).await?;
    let clone = crate::clone::open(cfg, &transport, &codec).await?;
    let (block_size, num_blocks) = match &clone {
        Some(c) => c.geometry(cfg)?,
        None => resolve_geometry(cfg, transport.as_ref()).await?,
    };
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

    let (objects, live) = match clone {
        // A clone has no snapshots (until it is flattened): its layer reads the base instead.
        Some(c) => {
            let layer = s3b_clone::CloneStore::new(objects, c.base, &c.record);
            stats.register(layer.stats());
            (Arc::new(layer) as Arc<dyn ObjectStore>, None)
        }
        None => snapshot_layer(cfg, &transport, objects, block_size, num_blocks, &stats).await?,
    };
    let codec = CodecStore::new(objects, Codec::new(block_size, codec), num_blocks);
    codec.check_password().await?;
    let coded: Arc<dyn BlockStore> = Arc::new(codec);
    if cfg.shared_disk {
        // Other hosts write the volume too: nothing may be cached here.
        return Ok(Stack { top: coded, objects: transport, stats, block_size, num_blocks, cache_file: None, live });
    }
    let show_progress = cfg.foreground && !cfg.quiet;
    let caching = crate::caching::wrap(&cfg.cache, cfg.read_only, coded, &stats, show_progress)?;
    // The zero-block cache sits on top, as upstream; --listBlocks fills it from a survey.
    let survey = cfg.cache.list_blocks.then(|| crate::progress::Survey::start(cfg.foreground, cfg.quiet) as _);
    // First writes after a snapshot start their copies as they reach the cache.
    let cached: Arc<dyn BlockStore> = match &live {
        Some(l) if cfg.cache.block_cache.is_some() => Arc::new(s3b_snap::PreserveAhead::new(caching.top, l.clone())),
        _ => caching.top,
    };
    let zero = ZeroCache::with_progress(cached, cfg.cache.list_blocks, survey);
    stats.register(zero.stats());
    let top: Arc<dyn BlockStore> = Arc::new(zero);
    Ok(Stack { top, objects: transport, stats, block_size, num_blocks, cache_file: caching.cache_file, live })
}

/// The volume is started: its stack is built and the mount token (if any) is ours. One owner
/// for that, shared by the FUSE and NBD modes, so that every way out after the token was set
/// gives the volume back: [`finish`](Self::finish) once serving has ended, or — on any early
/// return, an error after the token was set, a panic unwinding — dropping the guard, which
/// does the same: writes every dirty block down, then clears our mount token (left in place
/// when the flush fails, so that a cache file's dirty blocks can still be recovered).
///
/// Drop it outside the runtime (it blocks on it), after whatever still uses the volume (the
/// FUSE session, the NBD server) has stopped.
pub struct Started {
    /// The daemon's runtime.
    pub rt: tokio::runtime::Runtime,
    /// The layers.
    pub stack: Stack,
    /// Our mount token (0: none was set).
    pub token: u32,
    /// Set once the volume was given back.
    finished: bool,
    /// The control socket, while serving (closed before the volume is given back).
    pub control: Option<crate::control::ControlSocket>,
}

impl Started {
    /// Takes ownership of a volume whose mount token `token` was just set.
    pub fn new(rt: tokio::runtime::Runtime, stack: Stack, token: u32) -> Self {
        Started { rt, stack, token, finished: false, control: None }
    }

    /// Gives the volume back after serving: flushes it and clears the token; the error says
    /// what failed (the flush: the token is kept).
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.control.take();
        self.rt.block_on(self.stack.shutdown(self.token))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.control.take();
        if self.finished {
            return;
        }
        // A start that failed after the token was set: the error that stopped it is the one
        // line the user gets; what goes wrong here is only logged.
        if let Err(e) = self.rt.block_on(self.stack.shutdown(self.token)) {
            log::warn!("giving the volume back after a failed start: {}", crate::one_line(&e));
        }
    }
}

/// The snapshot layer for a mount: over `objects` (the store block operations go to; the
/// transport `transport` holds the bookkeeping). A read-write mount of a volume with snapshots
/// gets copy-on-first-write; `--fromSnapshot` gets the snapshot's read-only view; anything else
/// is left as it is. The copy-on-first-write layer is also returned by its own type.
pub async fn snapshot_layer(
    cfg: &Config,
    transport: &Arc<dyn ObjectStore>,
    objects: Arc<dyn ObjectStore>,
    block_size: u32,
    num_blocks: u64,
    stats: &StatsRegistry,
) -> Result<(Arc<dyn ObjectStore>, Option<Arc<s3b_snap::LiveStore>>)> {
    if let Some(name) = &cfg.snap.from {
        let view = s3b_snap::SnapshotView::open(objects, transport.clone(), name).await?;
        let meta = view.meta();
        let size = num_blocks * u64::from(block_size);
        if (meta.block_size, meta.file_size) != (block_size, size) {
            bail!(
                "snapshot \"{name}\" has block size {} and size {}, not the {block_size} and {size} given or detected",
                meta.block_size,
                meta.file_size
            );
        }
        return Ok((Arc::new(view), None));
    }
    if cfg.read_only {
        return Ok((objects, None));
    }
    if cfg.shared_disk {
        // Several hosts would each copy blocks and mark the index: not supported.
        let has = match transport.named() {
            Some(named) => s3b_snap::book::read_index(named).await?.is_some_and(|i| !i.snaps.is_empty()),
            None => false,
        };
        if has {
            bail!("--sharedDiskMode cannot be used on a volume with snapshots");
        }
        return Ok((objects, None));
    }
    Ok(match s3b_snap::layer(objects.clone(), transport.clone(), stats) {
        Some(live) => (live.clone(), Some(live)),
        None => (objects, None),
    })
}
