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
use s3b_store::{BlockStore, ObjectStore, StatsRegistry, VolumeProbe};
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
    Ok(Started::new(rt, stack, token))
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
/// (then they must agree unless `--force`). A block 0 without size metadata (a disk image on a
/// plain web server) still tells the block size by its length, unless compressed or encrypted
/// (see `bare_block_size`).
pub async fn resolve_geometry(cfg: &Config, objects: &dyn ObjectStore) -> Result<(u32, u64)> {
    let detect = !cfg.is_test() && cfg.geometry.auto_detect;
    if detect {
        crate::notify::status("auto-detecting the volume's size");
    }
    let probe = if detect {
        objects.probe_volume().await.context("can't auto-detect the volume size")?
    } else {
        VolumeProbe::Nothing
    };
    let (block_size, size) = match probe {
        VolumeProbe::Meta(meta) => {
            if !cfg.quiet {
                log::info!(
                    "auto-detected block size={} and total size={}",
                    unparse_size(u64::from(meta.block_size)),
                    unparse_size(meta.file_size)
                );
            }
            for (what, given, found) in [
                ("block size", cfg.geometry.block_size.map(u64::from), u64::from(meta.block_size)),
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
        VolumeProbe::Bare(len) => {
            let Some(size) = cfg.geometry.size else {
                bail!("--size is required: the volume's size could not be auto-detected (no block 0 metadata)");
            };
            (bare_block_size(cfg, len)?, size)
        }
        VolumeProbe::Nothing => {
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

/// The block size of a volume whose block 0 is `len` bytes and has no size metadata. Without
/// compression or encryption every block object is exactly one block long, so a power of two
/// is the block size (logged, as auto-detection is), and a `--blockSize` that differs would
/// only fail every read: refused, naming the size found. Compressed or encrypted objects are
/// of any length: `--blockSize` is needed then.
fn bare_block_size(cfg: &Config, len: Option<u64>) -> Result<u32> {
    let coded = cfg.codec.compress.is_some() || cfg.codec.encrypt.is_some();
    let given = cfg.geometry.block_size;
    let Some(len) = len else {
        return Ok(given.unwrap_or(DEFAULT_BLOCK_SIZE));
    };
    if coded {
        return given.with_context(|| {
            format!(
                "can't tell the block size: block 0 ({len} bytes) has no size metadata and the volume is \
                 compressed or encrypted; give --blockSize"
            )
        });
    }
    let found = u32::try_from(len).ok().filter(|n| n.is_power_of_two());
    match (found, given) {
        (Some(found), None) => {
            if !cfg.quiet {
                log::info!(
                    "auto-detected block size={} from the size of block 0 (it has no size metadata)",
                    unparse_size(u64::from(found))
                );
            }
            Ok(found)
        }
        (Some(found), Some(given)) if found == given => Ok(given),
        (Some(found), Some(given)) => bail!(
            "block 0 is {} bytes, but the block size is {}: give --blockSize={}",
            len,
            unparse_size(u64::from(given)),
            unparse_size(u64::from(found))
        ),
        (None, None) => bail!(
            "block 0 is {len} bytes, which is not a power of two, and it has no size metadata: give --blockSize \
             (and --compress or --encrypt if the image was made with them)"
        ),
        (None, Some(given)) => bail!(
            "block 0 is {len} bytes, but the block size is {}: give the volume's --blockSize (and --compress or \
             --encrypt if the image was made with them)",
            unparse_size(u64::from(given))
        ),
    }
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

    let objects = snapshot_layer(cfg, &transport, objects, block_size, num_blocks, &stats).await?;
    let codec = CodecStore::new(objects, Codec::new(block_size, codec), num_blocks);
    codec.check_password().await?;
    let coded: Arc<dyn BlockStore> = Arc::new(codec);
    if cfg.shared_disk {
        // Other hosts write the volume too: nothing may be cached here.
        return Ok(Stack { top: coded, objects: transport, stats, block_size, num_blocks, cache_file: None });
    }
    let show_progress = cfg.foreground && !cfg.quiet;
    let caching = crate::caching::wrap(&cfg.cache, cfg.read_only, coded, &stats, show_progress)?;
    // The zero-block cache sits on top, as upstream; --listBlocks fills it from a survey.
    let survey = cfg.cache.list_blocks.then(|| crate::progress::Survey::start(cfg.foreground, cfg.quiet) as _);
    let zero = ZeroCache::with_progress(caching.top, cfg.cache.list_blocks, survey);
    stats.register(zero.stats());
    let top: Arc<dyn BlockStore> = Arc::new(zero);
    Ok(Stack { top, objects: transport, stats, block_size, num_blocks, cache_file: caching.cache_file })
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
}

impl Started {
    /// Takes ownership of a volume whose mount token `token` was just set.
    pub fn new(rt: tokio::runtime::Runtime, stack: Stack, token: u32) -> Self {
        Started { rt, stack, token, finished: false }
    }

    /// Gives the volume back after serving: flushes it and clears the token; the error says
    /// what failed (the flush: the token is kept).
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.rt.block_on(self.stack.shutdown(self.token))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
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
/// is left as it is.
pub async fn snapshot_layer(
    cfg: &Config,
    transport: &Arc<dyn ObjectStore>,
    objects: Arc<dyn ObjectStore>,
    block_size: u32,
    num_blocks: u64,
    stats: &StatsRegistry,
) -> Result<Arc<dyn ObjectStore>> {
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
        return Ok(Arc::new(view));
    }
    if cfg.read_only {
        return Ok(objects);
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
        return Ok(objects);
    }
    s3b_snap::open(objects, transport.clone(), stats).await.context("can't read the volume's snapshots")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> Config {
        let mut a = vec!["--test", "--size=1m", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        crate::config::validate(crate::args::parse(&a).unwrap()).unwrap()
    }

    #[test]
    fn a_bare_block_0_gives_the_block_size_unless_coded_or_contradicted() {
        assert_eq!(bare_block_size(&cfg(&[]), Some(65536)).unwrap(), 65536);
        assert_eq!(bare_block_size(&cfg(&["--blockSize=64k"]), Some(65536)).unwrap(), 65536);
        assert_eq!(bare_block_size(&cfg(&[]), None).unwrap(), DEFAULT_BLOCK_SIZE, "no length: as before");
        let e = bare_block_size(&cfg(&["--blockSize=4k"]), Some(65536)).unwrap_err().to_string();
        assert_eq!(e, "block 0 is 65536 bytes, but the block size is 4k: give --blockSize=64k");
        let e = bare_block_size(&cfg(&[]), Some(1000)).unwrap_err().to_string();
        assert!(e.starts_with("block 0 is 1000 bytes, which is not a power of two"), "{e}");
        let e = bare_block_size(&cfg(&["--compress"]), Some(1234)).unwrap_err().to_string();
        assert!(e.contains("compressed or encrypted; give --blockSize"), "{e}");
        assert_eq!(bare_block_size(&cfg(&["--compress", "--blockSize=8k"]), Some(1234)).unwrap(), 8192);
    }
}
