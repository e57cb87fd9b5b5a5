//! The block cache layer (upstream `block_cache`): an LRU cache of whole plaintext blocks with
//! asynchronous write-back and adaptive read-ahead, sitting between the front end (or zero
//! cache) and the consistency/codec layers.
//!
//! Why it exists: S3 round trips are slow, and a file system issues many small, repeated and
//! sequential block operations. The cache answers repeated reads from memory, absorbs repeated
//! writes of one block into one upload, and fetches ahead of a sequential reader.
//!
//! What it promises (see [`BlockCache`]):
//! * Data accepted by a write is never dropped: dirty blocks are never evicted, and a failed
//!   upload is retried forever with exponential backoff (upstream retries forever too); an
//!   upload fails only once the store below gave up (its own retry budget spent).
//! * A block re-dirtied during its upload keeps the newer data and is uploaded again: every
//!   write bumps the block's generation, and an upload only marks the block clean if no newer
//!   write happened meanwhile.
//! * `flush` waits until the named (or all) dirty blocks, as they were when it was called, are
//!   uploaded, then flushes the inner store. If an upload of one of them fails while it waits,
//!   it returns that error at once rather than pretend or wait for the store to come back: the
//!   block stays dirty (in the cache file too) and its upload is retried, so a later flush can
//!   succeed. `shutdown` (unmount) is the exception: it waits however long the store is away.
//! * Writers never fail for lack of room: they wait while `max_dirty` blocks are dirty or the
//!   cache is full of dirty blocks.
//! * Reads are never queued behind write-back: a miss is read in the caller's own task, never
//!   through the upload pool; when no slot can be freed (the cache is full of dirty blocks) the
//!   block is read through without being cached. While a miss is in flight, write-back starts
//!   uploads on only half its threads, so the read does not wait behind a full set of PUTs.
//! * With a cache file, block data lives in the file only: memory holds each block's
//!   bookkeeping, and hits and uploads read the data from its slot (see [`file`](mod@file)).
//! * Costs per operation do not grow with the cache or the backlog: lookups are hash lookups,
//!   the LRU and the write-back schedule are ordered maps (O(log n) per block), no operation
//!   walks all cached or all dirty entries (a flush of everything looks once at each dirty
//!   block), and the state lock is never held across I/O, the cache file's included.
//!
//! How it is built, module by module:
//! * `state`: the entries and their phases (loading, clean, dirty; partial
//!   blocks), the LRU of clean blocks, the dirty set; phases change only through its
//!   transitions.
//! * `schedule`: the dirty blocks waiting for upload, ordered by due time,
//!   with ready lanes and an urgent path.
//! * `shared`: the state the cache and its tasks share, and the operations on
//!   it (lookups and loads, writes, completing partial blocks, waiting for uploads, keeping the
//!   cache file current outside the lock).
//! * `writeback`: the write-back engine (due uploads, completions of partial
//!   blocks ahead of their upload, retries, idle eviction), woken by events, never polling.
//! * [`readahead`]: sequential-read detection (the window of blocks to fetch ahead).
//! * `prefetch`: the fetches ahead of the reader, in parallel on a bounded pool, and the
//!   neighbours of a miss while the link is idle.
//! * [`ranges`]: the byte ranges a partially written block holds. A write of part of a block
//!   that is not cached is accepted without reading the block; the missing bytes are fetched
//!   once, when a read needs them or the block is due for upload, and merged without
//!   overwriting any newer byte.
//! * [`file`](mod@file): the persistent cache file (`--blockCacheFile`): clean data survives
//!   restarts, dirty data survives crashes.
//! * `stats`: the `block_cache_*` stats lines.
//!
//! Measurements behind these choices (upload/read interplay, cache sizes) are in the
//! repository's `benches/CACHE.md`.

pub mod file;
mod prefetch;
pub mod ranges;
pub mod readahead;
mod schedule;
mod shared;
mod state;
mod stats;
mod writeback;

pub use file::{CacheFile, FileOptions};
pub use stats::{CacheStats, Fill};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use readahead::ReadAhead;
use s3b_store::{
    BlockData, BlockNum, BlockStore, ContractError, Etag, Geometry, ReadIntent, ReadOutcome, ReadRequest, Result,
    Revalidation,
};
use shared::{Raised, Shared};
use state::State;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// Settings of the block cache (upstream's `--blockCache*` and `--readAhead*` flags).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Capacity in blocks (at least 1).
    pub size: usize,
    /// Most uploads in flight at once; also the read-ahead pool size.
    pub threads: usize,
    /// How long a dirty block may wait before its upload starts.
    pub write_delay: Duration,
    /// Evict clean blocks not accessed for this long (`None` = never).
    pub timeout: Option<Duration>,
    /// Writers wait while this many blocks are dirty (0 = only when the cache is full).
    pub max_dirty: usize,
    /// Writes return only once uploaded.
    pub sync: bool,
    /// Blocks numbered below this are evicted only after all others.
    pub num_protected: u32,
    /// Initial read-ahead window in blocks (0 = off).
    pub read_ahead: u32,
    /// Sequential block reads before read-ahead starts.
    pub read_ahead_trigger: u32,
}

/// Upstream s3backer's defaults (`--blockCacheSize=1000`, `--blockCacheThreads=20`,
/// `--blockCacheWriteDelay=250`, `--readAhead=4`, `--readAheadTrigger=2`), so a command line
/// without cache flags behaves as it does with C s3backer.
impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            size: 1000,
            threads: 20,
            write_delay: Duration::from_millis(250),
            timeout: None,
            max_dirty: 0,
            sync: false,
            num_protected: 0,
            read_ahead: 4,
            read_ahead_trigger: 2,
        }
    }
}

/// The block cache. Build it with [`BlockCache::new`] inside a tokio runtime (it spawns its
/// write-back scheduler there).
pub struct BlockCache {
    shared: Arc<Shared>,
}

impl BlockCache {
    /// Wraps `inner` with an in-memory cache.
    pub fn new(inner: Arc<dyn BlockStore>, cfg: CacheConfig) -> BlockCache {
        Self::build(inner, cfg, None, Vec::new())
    }

    /// Wraps `inner` with a cache kept in `file` (opened with [`CacheFile::open`]). Blocks the
    /// file held are loaded: clean ones (checked against the store on first read unless the file
    /// was opened with `no_verify`), and dirty ones when recovery was asked for, which are then
    /// uploaded.
    pub fn with_file(inner: Arc<dyn BlockStore>, cfg: CacheConfig, file: Arc<CacheFile>) -> BlockCache {
        let loaded = file.take_loaded();
        Self::build(inner, cfg, Some(file), loaded)
    }

    fn build(
        inner: Arc<dyn BlockStore>,
        mut cfg: CacheConfig,
        file: Option<Arc<CacheFile>>,
        loaded: Vec<file::Loaded>,
    ) -> BlockCache {
        let num_blocks = inner.num_blocks();
        cfg.size = cfg.size.clamp(1, usize::try_from(num_blocks.max(1)).unwrap_or(usize::MAX));
        if let Some(f) = &file {
            cfg.size = cfg.size.min(f.slots() as usize);
        }
        cfg.threads = cfg.threads.max(1);
        let stats = Arc::new(CacheStats::default());
        let mut state = State::new(cfg.num_protected, cfg.write_delay);
        for l in loaded {
            let now = Instant::now();
            let e = match l.state {
                // Recovered: as if written again, so it is uploaded.
                file::LoadedState::Dirty { valid } => state.write(l.block, None, valid, now),
                file::LoadedState::Clean { etag, verify } => {
                    state.insert_loading(l.block, now);
                    state.set_clean(l.block, etag, verify);
                    state.entries.get_mut(&l.block).expect("inserted above")
                }
            };
            e.data = l.data;
            // The slot holds what the entry holds now.
            (e.slot, e.slot_image) = (Some(l.slot), e.image());
        }
        stats.initial_size.store(state.entries.len() as u64, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            block_size: inner.block_size(),
            inner,
            ra_pool: Arc::new(Semaphore::new(cfg.threads)),
            // Read-ahead never takes more than half the cache: what the reader is about to use
            // is not evicted by what it will use after that.
            ra: Mutex::new(ReadAhead::new(
                cfg.read_ahead,
                cfg.read_ahead_trigger,
                u32::try_from(cfg.size / 2).unwrap_or(u32::MAX),
            )),
            cfg,
            state: Mutex::new(state),
            changed: Notify::new(),
            wake: Notify::new(),
            stats,
            file,
            file_turn: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(writeback::run(shared.clone()));
        BlockCache { shared }
    }

    /// The counters, to register with the stats registry.
    pub fn stats(&self) -> Arc<CacheStats> {
        let st = self.shared.stats.clone();
        let shared: Arc<dyn stats::Occupancy> = self.shared.clone();
        st.attach(Arc::downgrade(&shared));
        st
    }

    /// Capacity in blocks after clamping to the volume (and cache file) size.
    pub fn capacity(&self) -> usize {
        self.shared.cfg.size
    }

    /// Number of dirty blocks right now.
    pub fn dirty_count(&self) -> usize {
        self.shared.state.lock().dirty_count()
    }
}

#[async_trait]
impl BlockStore for BlockCache {
    fn geometry(&self) -> Geometry {
        Geometry { block_size: self.shared.block_size, num_blocks: self.shared.inner.num_blocks() }
    }

    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        let sh = &self.shared;
        if req.if_match.is_some() {
            // Conditional reads are about the stored version: write ours down, then ask.
            sh.wait_uploaded(&sh.dirty_targets(Some(&[n]))).await;
            return sh.inner.read_block(n, req).await;
        }
        // Reads for an update are cached like any read, but start no read-ahead: a writer
        // filling blocks in order would otherwise fetch the blocks it is about to overwrite.
        if req.intent == ReadIntent::Read {
            prefetch::on_miss(sh, n);
        }
        let out = sh.get(n, true).await?;
        if req.intent == ReadIntent::Read {
            prefetch::after_read(sh, n);
        }
        Ok(out)
    }

    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        // About the stored version, as a conditional read: write ours down, then ask.
        let sh = &self.shared;
        sh.wait_uploaded(&sh.dirty_targets(Some(&[n]))).await;
        sh.inner.revalidate(n, etag).await
    }

    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        if let Some(d) = &data
            && d.len() != self.shared.block_size as usize
        {
            let block_size = self.shared.block_size;
            return Err(ContractError::WrongLength { block: n, len: d.len(), block_size }.into());
        }
        self.shared.write(n, data).await?;
        Ok(None)
    }

    async fn write_block_part(&self, n: BlockNum, offset: u32, data: Bytes) -> Result<()> {
        let bs = self.shared.block_size;
        let (off, end) = s3b_store::part_bounds(n, offset, data.len(), bs)?;
        if off == 0 && end == bs as usize {
            return self.shared.write(n, BlockData::new(data)).await;
        }
        if off == end {
            return Ok(());
        }
        // Within the block (checked above), so below its u32 size.
        let end = u32::try_from(end).unwrap_or(bs);
        self.shared.write_part(n, offset, end, data).await
    }

    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        let sh = &self.shared;
        let (off, end) = s3b_store::part_bounds(n, offset, len as usize, sh.block_size)?;
        {
            // Written in part, and the bytes asked for are among those written: no read.
            let mut st = sh.state.lock();
            if let Some(e) = st.entries.get_mut(&n)
                && e.partial().is_some_and(|v| v.covers(offset, offset + len))
            {
                // A partial block's buffer is always in memory.
                if let file::Held::Mem(d) = &e.data {
                    e.last_access = Instant::now();
                    sh.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(match d {
                        Some(d) => d.slice(off..end),
                        None => s3b_store::zero_block(sh.block_size).slice(off..end),
                    });
                }
            }
        }
        let data = self.read_block(n, ReadRequest::PLAIN).await?.into_data(sh.block_size);
        Ok(data.slice(off..end))
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.flush_blocks(blocks, true).await
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let cached: Vec<BlockNum> = self.shared.state.lock().entries.iter().map(|(n, _)| *n).collect();
        for n in cached {
            sink(n);
        }
        self.shared.inner.survey_non_zero(sink).await
    }

    async fn shutdown(&self) -> Result<()> {
        // Waits for every upload however long the store is away: nothing dirty is dropped.
        self.flush_blocks(None, false).await?;
        self.shared.state.lock().stopped = true;
        self.shared.wake.notify_one();
        if let Some(f) = &self.shared.file {
            f.sync()?;
        }
        self.shared.inner.shutdown().await
    }
}

impl BlockCache {
    /// Uploads the named (or all) dirty blocks, then flushes the inner store. With `fail`, a
    /// failed upload attempt of one of them ends the wait with its error (see the module docs).
    async fn flush_blocks(&self, blocks: Option<&[BlockNum]>, fail: bool) -> Result<()> {
        let sh = &self.shared;
        let targets = sh.dirty_targets(blocks);
        let all = blocks.is_none().then(|| Raised::new(sh, |st| &mut st.waiters.flush_all));
        sh.wake.notify_one();
        let stored = sh.wait_stored(&targets, fail).await;
        drop(all);
        if let Some(f) = &sh.file {
            f.sync()?;
        }
        stored?;
        sh.inner.flush(blocks).await
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        self.shared.state.lock().stopped = true;
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
