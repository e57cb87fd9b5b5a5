//! The block cache layer (upstream `block_cache`): an LRU cache of whole plaintext blocks with
//! asynchronous write-back and adaptive read-ahead, sitting between the front end (or zero
//! cache) and the consistency/codec layers.
//!
//! Why it exists: S3 round trips are slow, and a file system issues many small, repeated and
//! sequential block operations. The cache answers repeated reads from memory, absorbs repeated
//! writes of one block into one upload, and fetches ahead of a sequential reader.
//!
//! How it works (see [`BlockCache`]):
//! * Each cached block is *loading* (one inner read in flight, other readers of the block wait
//!   for it), *clean* (equal to the stored version) or *dirty* (newer than the store). Its
//!   entry's state is an enum whose variants carry what only that phase has: a clean block its
//!   ETag and LRU position, a dirty block its upload's progress (failures, retry time, whether
//!   somebody waits) and, when written only in part, its byte ranges; so a clean block with an
//!   upload error, say, cannot be written down. Phases change only through the transitions of
//!   the bookkeeping (module `state`), which keep the LRU list and the dirty count in step. Only
//!   clean blocks are evicted, least recently used first; blocks numbered below
//!   `num_protected` are evicted only when no other clean block is left.
//! * Dirty blocks are uploaded by a write-back scheduler after `write_delay` (sooner when the
//!   cache is filling with dirty blocks, when a writer waits for room, or when a flush asks for
//!   them), with at most `threads` uploads in flight. Every write bumps the block's generation;
//!   an upload only marks the block clean if no newer write happened meanwhile, so a block
//!   re-dirtied during its upload keeps the newer data and is uploaded again.
//! * Failed uploads are logged and retried forever with exponential backoff (upstream retries
//!   forever too): data accepted by a write is never dropped. An upload fails only once the
//!   store below gave up (its own retry budget spent).
//! * Writers never fail for lack of room: they wait while `max_dirty` blocks are dirty or the
//!   cache is full of dirty blocks.
//! * Reads are never queued behind write-back. A cache miss is read in the caller's own task,
//!   never through the upload pool, so it goes to the store at once whatever the upload
//!   backlog; when no slot can be freed (the cache is full of dirty blocks) the block is read
//!   through without being cached rather than waiting for an upload to free one. The transport
//!   below has no connection limit that uploads could use up (each request takes an idle pooled
//!   connection or opens one), so a read never waits for an upload's connection either; and
//!   with no read, uploads use all `threads`. What reads and uploads still share is the link
//!   and the server, and the CPU: the one CPU-heavy step of an upload, hashing its body for
//!   the signature, runs off the runtime's workers (in the transport), so a burst of uploads
//!   starting together does not keep the workers from a read's answer. (Starting a quarter fewer uploads while a read waited was tried; over Garage
//!   behind 20 ms it did not make the reads faster.)
//! * Read-ahead ([`readahead`]) fetches in parallel on its own bounded pool.
//! * `flush` waits until the named (or all) dirty blocks, as they were when it was called, are
//!   uploaded, then flushes the inner store. If an upload of one of them fails while it waits,
//!   it returns that error at once rather than pretend or wait for the store to come back: the
//!   block stays dirty (in the cache file too) and its upload is retried, so a later flush can
//!   succeed. `shutdown` (unmount) is the exception: it waits however long the store is away.
//! * A write of part of a block ([`BlockStore::write_block_part`]) that is not cached is
//!   accepted without reading the block: the entry remembers which byte ranges it holds
//!   ([`ranges`]). The missing bytes are fetched only when needed: by a read of them, or when
//!   the block is due for upload while still partial. Then one read of the stored version is
//!   merged under the cache's lock, taking only the bytes nobody has written (so no newer byte
//!   is overwritten); readers and the uploader of one block share that read. A partial block
//!   stays dirty, so it is never evicted; in the cache file it is recorded as partial.
//!   A block still partial when due and dirty for at least `write_delay` is completed on a
//!   pool of its own (at most `threads` reads beside the `threads` uploads) and only then
//!   takes an upload slot, so the slot is held for the PUT alone: under random writes, where
//!   nearly every due block is partial, a block's GET overlaps other blocks' PUTs instead of
//!   doubling every upload. A younger partial block (due early, under pressure or for a flush)
//!   is completed in its upload slot as before, so a block a sequential writer is still
//!   filling is not read while it waits for a slot.
//! * With a cache file ([`file`](mod@file)) every cached block also lives in a slot of a local file, so
//!   clean data survives restarts and dirty data survives crashes. The file is written (and
//!   `fdatasync`ed, once per cached write) under the cache's lock, on the calling thread: simple
//!   and ordered, at the cost of serialising cache operations while the disk syncs.

pub mod file;
pub mod ranges;
pub mod readahead;
mod state;
mod stats;

pub use file::{CacheFile, FileOptions};
pub use stats::CacheStats;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use ranges::{ByteRanges, MAX_RANGES};
use readahead::ReadAhead;
use s3b_store::{
    BlockData, BlockNum, BlockStore, ContractError, Etag, Geometry, ReadIntent, ReadOutcome, ReadRequest, Result,
    Revalidation, StoreError, is_zero,
};
use state::{BlockState, Entry, State};
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

/// First retry delay after a failed upload; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longest delay between two attempts to upload a block.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How long to wait before the next attempt to upload a block after `retries` failures in a
/// row.
fn retry_delay(retries: u32) -> Duration {
    FIRST_RETRY_DELAY.saturating_mul(1 << retries.min(10)).min(MAX_RETRY_DELAY)
}

/// The block cache. Build it with [`BlockCache::new`] inside a tokio runtime (it spawns its
/// write-back scheduler there).
pub struct BlockCache {
    shared: Arc<Shared>,
}

/// What the cache and its background tasks share.
pub(crate) struct Shared {
    pub(crate) inner: Arc<dyn BlockStore>,
    pub(crate) cfg: CacheConfig,
    pub(crate) block_size: u32,
    pub(crate) state: Mutex<State>,
    /// Signalled (notify_waiters) whenever an entry changes phase or leaves the cache.
    pub(crate) changed: Notify,
    /// Wakes the write-back scheduler.
    pub(crate) wake: Notify,
    /// Bounds read-ahead fetches.
    pub(crate) ra_pool: Arc<Semaphore>,
    pub(crate) ra: Mutex<ReadAhead>,
    pub(crate) stats: Arc<CacheStats>,
    pub(crate) file: Option<Arc<CacheFile>>,
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
        cfg.size = cfg.size.clamp(1, num_blocks.clamp(1, usize::MAX as u64) as usize);
        if let Some(f) = &file {
            cfg.size = cfg.size.min(f.slots() as usize);
        }
        cfg.threads = cfg.threads.max(1);
        let stats = Arc::new(CacheStats::default());
        let mut state = State::new(cfg.num_protected);
        for l in loaded {
            let now = Instant::now();
            match l.state {
                // Recovered: as if written again, so it is uploaded.
                file::LoadedState::Dirty { valid } => drop(state.write(l.block, l.data, valid, Some(l.slot), now)),
                file::LoadedState::Clean { etag, verify } => {
                    let e = state.insert_loading(l.block, now);
                    (e.data, e.slot) = (l.data, Some(l.slot));
                    state.set_clean(l.block, etag, verify);
                }
            }
        }
        stats.initial_size.store(state.entries.len() as u64, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            block_size: inner.block_size(),
            inner,
            ra_pool: Arc::new(Semaphore::new(cfg.threads)),
            ra: Mutex::new(ReadAhead::new(cfg.read_ahead, cfg.read_ahead_trigger, (cfg.size / 2) as u32)),
            cfg,
            state: Mutex::new(state),
            changed: Notify::new(),
            wake: Notify::new(),
            stats,
            file,
        });
        tokio::spawn(writeback_loop(shared.clone()));
        BlockCache { shared }
    }

    /// The counters, to register with the stats registry.
    pub fn stats(&self) -> Arc<CacheStats> {
        let st = self.shared.stats.clone();
        st.attach(Arc::downgrade(&self.shared));
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

impl Shared {
    /// The one way to wait for the state to change: a wait armed now, so that a change made
    /// after this call (while the caller looks at the state under the lock) still wakes it.
    /// Every state change is followed by `changed.notify_waiters()`.
    pub(crate) fn next_change(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.changed.notified());
        notified.as_mut().enable();
        notified
    }

    /// Returns the data of block `n` from the cache, loading it on a miss. `count` says whether
    /// this is a foreground read (counted in the hit/miss stats).
    pub(crate) async fn get(self: &Arc<Self>, n: BlockNum, count: bool) -> Result<ReadOutcome> {
        let mut counted = !count;
        loop {
            let notified = self.next_change();
            enum Step {
                Wait,
                Done(ReadOutcome),
                Through,
                Load(Option<Etag>),
                Fill,
            }
            let step = {
                let mut st = self.state.lock();
                let now = Instant::now();
                match st.entries.get(&n) {
                    Some(e) if matches!(e.state(), BlockState::Loading) => {
                        if !counted {
                            // Somebody (read-ahead or another reader) is already fetching it.
                            self.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                        Step::Wait
                    }
                    Some(e) if e.partial().is_some() => {
                        // Written only in part: the rest comes from the store first.
                        if !counted {
                            self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                        Step::Fill
                    }
                    Some(e) if matches!(e.state(), BlockState::Clean(c) if c.verify) => {
                        // Reloaded from the cache file: check it against the store first.
                        let etag = e.etag();
                        st.start_verify(n);
                        Step::Load(etag)
                    }
                    Some(e) => {
                        let out = outcome(&e.data, e.etag());
                        st.touch(n, now);
                        if !counted {
                            self.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                        }
                        Step::Done(out)
                    }
                    None => {
                        if !counted {
                            self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                        }
                        if self.make_room(&mut st) {
                            st.insert_loading(n, now);
                            Step::Load(None)
                        } else {
                            // Full of dirty or busy blocks: read through without caching.
                            Step::Through
                        }
                    }
                }
            };
            match step {
                Step::Wait => notified.await,
                Step::Done(out) => return Ok(out),
                Step::Through => return self.inner.read_block(n, ReadRequest::PLAIN).await,
                Step::Load(etag) => {
                    if let Some(r) = detached(self, move |sh| async move { sh.load(n, etag).await }).await? {
                        return r;
                    }
                }
                Step::Fill => detached(self, move |sh| async move { sh.fill(n).await }).await??,
            }
        }
    }

    /// Performs the inner read for an entry this task put in the loading phase. `None` when
    /// the entry became a partially written block meanwhile: ask again with [`Shared::get`].
    pub(crate) async fn load(self: &Arc<Self>, n: BlockNum, verify: Option<Etag>) -> Option<Result<ReadOutcome>> {
        let res = match verify {
            Some(etag) => self.inner.revalidate(n, etag).await,
            None => self.inner.read_block(n, ReadRequest::PLAIN).await.map(Revalidation::Changed),
        };
        let mut st = self.state.lock();
        let Some(e) = st.entries.get_mut(&n) else {
            unreachable_entry(n);
            // Without the entry an unchanged answer has no data to give: ask again.
            return match res {
                Ok(Revalidation::Unchanged) => None,
                Ok(Revalidation::Changed(out)) => Some(Ok(out)),
                Err(e) => Some(Err(e)),
            };
        };
        let loading = matches!(e.state(), BlockState::Loading);
        if !loading && e.partial().is_some() {
            // Replaced (and since evicted and written in part) while we read: what we read may
            // predate the block's last upload, so it must not complete the partial block.
            drop(st);
            self.changed.notify_waiters();
            return None;
        }
        let result = if !loading {
            // A write replaced the block while we were reading: its data wins.
            Ok(outcome(&e.data, e.etag()))
        } else {
            match res {
                Ok(Revalidation::Unchanged) => {
                    // Only a check of a reloaded block (`verify` is its ETag) answers this.
                    self.stats.verified.fetch_add(1, Ordering::Relaxed);
                    e.last_access = Instant::now();
                    let out = outcome(&e.data, verify);
                    st.set_clean(n, verify, false);
                    Ok(out)
                }
                Ok(Revalidation::Changed(out)) => {
                    if verify.is_some() {
                        self.stats.mismatch.fetch_add(1, Ordering::Relaxed);
                    }
                    let (data, etag) = match &out {
                        ReadOutcome::Data { data, etag } => (Some(data.clone()), *etag),
                        _ => (None, None),
                    };
                    e.data = data;
                    e.last_access = Instant::now();
                    // A reloaded block that changed in the store: its slot holds the old data.
                    let stale_slot = e.slot.take();
                    if let Some(f) = &self.file {
                        if let Some(slot) = stale_slot {
                            f.release(slot);
                        }
                        e.slot = f.note_clean(n, None, e.data.as_ref(), etag);
                    }
                    st.set_clean(n, etag, false);
                    Ok(out)
                }
                Err(err) => {
                    self.drop_entry(&mut st, n);
                    Err(err)
                }
            }
        };
        drop(st);
        self.changed.notify_waiters();
        Some(result)
    }

    /// Removes a clean or loading entry and frees its file slot.
    fn drop_entry(&self, st: &mut State, n: BlockNum) {
        if let Some(e) = st.remove(n)
            && let (Some(slot), Some(f)) = (e.slot, &self.file)
        {
            f.release(slot);
        }
    }

    /// Makes room for one more entry by evicting a clean block if needed. False when the cache
    /// is full and nothing can be evicted.
    pub(crate) fn make_room(&self, st: &mut State) -> bool {
        while st.entries.len() >= self.cfg.size {
            let Some(victim) = st.lru_oldest() else {
                return false;
            };
            self.drop_entry(st, victim);
        }
        true
    }

    /// Accepts a write of a whole block into the cache, waiting for room when needed.
    async fn write(self: &Arc<Self>, n: BlockNum, data: Option<BlockData>) -> Result<()> {
        let data = data.map(BlockData::into_bytes);
        self.write_with(n, |_| Prepared::Data(data.clone(), None)).await
    }

    /// Accepts `part` at byte `off` of block `n` (not the whole block) without reading the
    /// block when it is not cached.
    async fn write_part(self: &Arc<Self>, n: BlockNum, off: u32, part: Bytes) -> Result<()> {
        let bs = self.block_size;
        let end = off + part.len() as u32;
        self.write_with(n, |e| {
            // What is known of the block: all of it, some ranges, or nothing (not cached, or
            // reloaded from the cache file and not verified yet: its data may be stale).
            let known = match e.map(|e| (e, e.state())) {
                Some((_, BlockState::Loading)) => return Prepared::Wait,
                Some((_, BlockState::Clean(c))) if c.verify => None,
                other => other,
            };
            let (base, valid) = match known {
                Some((e, _)) => (e.data.clone(), e.partial().cloned()),
                None => (None, Some(ByteRanges::default())),
            };
            if let Some(v) = &valid
                && v.len_after(off, end) > MAX_RANGES
            {
                return Prepared::Fill;
            }
            if let Some((_, BlockState::Clean(_))) = known {
                let same =
                    base.as_deref().map_or_else(|| is_zero(&part), |d| d[off as usize..end as usize] == part[..]);
                if same {
                    return Prepared::Unchanged;
                }
            }
            let mut buf = match &base {
                Some(d) => BytesMut::from(&d[..]),
                None => BytesMut::zeroed(bs as usize),
            };
            buf[off as usize..end as usize].copy_from_slice(&part);
            let valid = valid
                .map(|mut v| {
                    v.insert(off, end);
                    v
                })
                .filter(|v| !v.is_full(bs));
            let data = (!is_zero(&buf)).then(|| buf.freeze());
            Prepared::Data(data, valid)
        })
        .await
    }

    /// Accepts a write into the cache, waiting for room when needed. `prepare` sees the
    /// block's entry (under the lock) and says what the block becomes.
    async fn write_with(self: &Arc<Self>, n: BlockNum, prepare: impl Fn(Option<&Entry>) -> Prepared) -> Result<()> {
        let mut counted = false;
        let ver = loop {
            let notified = self.next_change();
            enum Next {
                Changed,
                Room,
                Fill,
                Done(u64),
            }
            let next = {
                let mut st = self.state.lock();
                let now = Instant::now();
                let present = st.entries.contains_key(&n);
                if !counted {
                    let c = if present { &self.stats.write_hits } else { &self.stats.write_misses };
                    c.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                match prepare(st.entries.get(&n)) {
                    Prepared::Unchanged => return Ok(()),
                    Prepared::Wait => Next::Changed,
                    Prepared::Fill => Next::Fill,
                    Prepared::Data(data, valid) => {
                        let already_dirty = st.entries.get(&n).is_some_and(Entry::is_dirty);
                        let over_dirty_limit = self.cfg.max_dirty > 0 && st.dirty_count() >= self.cfg.max_dirty;
                        if (!already_dirty && over_dirty_limit) || (!present && !self.make_room(&mut st)) {
                            Next::Room
                        } else {
                            Next::Done(self.apply_write(&mut st, n, data, valid, now)?)
                        }
                    }
                }
            };
            match next {
                Next::Done(ver) => {
                    self.changed.notify_waiters();
                    if self.cfg.sync || self.cfg.write_delay.is_zero() {
                        self.wake.notify_one();
                    }
                    break ver;
                }
                Next::Changed => notified.await,
                Next::Fill => detached(self, move |sh| async move { sh.fill(n).await }).await??,
                Next::Room => {
                    // Counted while waiting (uploads hurry meanwhile), uncounted however the
                    // wait ends, a cancelled caller included.
                    let _waiting = Raised::new(self, |st| &mut st.waiters.room);
                    self.wake.notify_one();
                    notified.await;
                }
            }
        };
        if self.cfg.sync {
            self.wait_uploaded(&[(n, ver)]).await;
        }
        Ok(())
    }

    /// Makes block `n` dirty with `data` (partial when `valid` is given): in the cache file
    /// first, then in the entry. Returns the block's new generation.
    fn apply_write(
        &self,
        st: &mut State,
        n: BlockNum,
        data: Option<Bytes>,
        valid: Option<ByteRanges>,
        now: Instant,
    ) -> Result<u64> {
        let slot = match &self.file {
            Some(f) => {
                let old = st.entries.get_mut(&n).and_then(|e| e.slot.take());
                f.write_dirty(n, old, data.as_ref(), valid.as_ref())?
            }
            None => None,
        };
        let e = st.write(n, data, valid, slot, now);
        if self.cfg.sync
            && let Some(d) = e.dirty_mut()
        {
            d.upload.urgent = true;
        }
        Ok(e.ver)
    }

    /// Completes a partially written block: reads the stored version once and merges it under
    /// the lock, taking only the bytes outside the block's ranges as they are at merge time, so
    /// a byte written during the read is never overwritten. Several callers share one read.
    /// Returns once the block is whole (at once when it already is).
    pub(crate) async fn fill(self: &Arc<Self>, n: BlockNum) -> Result<()> {
        loop {
            let Some(born) = self.start_fill(n).await else { return Ok(()) };
            let res = self.inner.read_block(n, ReadRequest::PLAIN).await;
            let merged = self.merge_fill(n, born, res);
            self.changed.notify_waiters();
            if merged? {
                return Ok(());
            }
            // A newer partial block than the one the read was for: it needs a read of its own.
        }
    }

    /// Waits until no other completion of block `n` is in flight, then marks one as ours and
    /// returns the generation ([`state::Partial::born`]) of the partial block it is for; `None`
    /// when the block is whole (or not cached).
    async fn start_fill(&self, n: BlockNum) -> Option<u64> {
        loop {
            let notified = self.next_change();
            {
                let mut st = self.state.lock();
                let p = st.entries.get_mut(&n).and_then(Entry::partial_mut)?;
                if !p.filling {
                    p.filling = true;
                    return Some(p.born());
                }
            }
            notified.await;
        }
    }

    /// Merges the stored version of block `n` (`res`, read for the partial block born at
    /// generation `born`) into it. True when the block is whole now (or was already), false
    /// when the read was for an older partial block than the one cached now: it may predate
    /// the stored version, so nothing of it is used.
    fn merge_fill(&self, n: BlockNum, born: u64, res: Result<ReadOutcome>) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(e) = st.entries.get_mut(&n) else {
            unreachable_entry(n);
            return Ok(true);
        };
        match e.partial_mut() {
            // Completed meanwhile by a whole-block write.
            None => return res.map(|_| true),
            // Whatever the read brought (an error included) was about an older block.
            Some(p) if p.born() != born => return Ok(false),
            Some(p) => p.filling = false,
        }
        let stored = res?.into_data(self.block_size);
        let Some(state::Partial { valid, .. }) = e.dirty_mut().and_then(|d| d.partial.take()) else {
            return Ok(true);
        };
        let mut buf = BytesMut::from(&stored[..]);
        for &(a, b) in valid.ranges() {
            let (a, b) = (a as usize, b as usize);
            match &e.data {
                Some(d) => buf[a..b].copy_from_slice(&d[a..b]),
                None => buf[a..b].fill(0),
            }
        }
        let data = (!is_zero(&buf)).then(|| buf.freeze());
        e.data = data.clone();
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.file {
            let old = e.slot.take();
            match f.write_dirty(n, old, data.as_ref(), None) {
                Ok(slot) => e.slot = slot,
                Err(x) => log::error!("block cache: can't record completed block {n:#010x}: {x}"),
            }
        }
        Ok(true)
    }

    /// Waits until each block's upload has reached the given generation (or the block left the
    /// cache, which only clean blocks do).
    async fn wait_uploaded(&self, targets: &[(BlockNum, u64)]) {
        let _ = self.wait_stored(targets, false).await;
    }

    /// [`Shared::wait_uploaded`]; with `fail`, an upload attempt of a block still waited for
    /// that fails meanwhile ends the wait with that attempt's error.
    async fn wait_stored(&self, targets: &[(BlockNum, u64)], fail: bool) -> Result<()> {
        let failures_before: Vec<u64> = {
            let st = self.state.lock();
            targets.iter().map(|(n, _)| st.entries.get(n).map_or(0, Entry::failures)).collect()
        };
        loop {
            let notified = self.next_change();
            {
                let mut st = self.state.lock();
                let mut pending = Vec::new();
                for ((n, g), before) in targets.iter().zip(&failures_before) {
                    let Some(e) = st.entries.get(n).filter(|e| e.stored_ver() < *g) else { continue };
                    if fail && e.failures() > *before {
                        return Err(match e.dirty().and_then(|d| d.upload.failing.as_ref()) {
                            Some(f) => StoreError::UploadFailed { block: *n, source: f.error.clone() },
                            None => StoreError::NotRunning,
                        });
                    }
                    pending.push(*n);
                }
                if pending.is_empty() {
                    return Ok(());
                }
                for n in pending {
                    if let Some(d) = st.entries.get_mut(&n).and_then(Entry::dirty_mut) {
                        d.upload.urgent = true;
                    }
                }
            }
            self.wake.notify_one();
            notified.await;
        }
    }

    fn dirty_targets(&self, blocks: Option<&[BlockNum]>) -> Vec<(BlockNum, u64)> {
        let st = self.state.lock();
        match blocks {
            Some(list) => {
                list.iter().filter_map(|n| st.entries.get(n).filter(|e| e.is_dirty()).map(|e| (*n, e.ver))).collect()
            }
            None => st.entries.iter().filter(|(_, e)| e.is_dirty()).map(|(n, e)| (*n, e.ver)).collect(),
        }
    }
}

/// Runs `f(sh)` as its own task and waits for it. Work that puts an entry in a transient
/// state (loading, filling) and settles it after a read below must finish even when the caller
/// stops waiting (a dropped future): in its own task it does, so no entry is left loading.
async fn detached<T, F, Fut>(sh: &Arc<Shared>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    tokio::spawn(f(sh.clone())).await.map_err(|e| s3b_store::StoreError::Task(e.into()))
}

/// A counter of the state raised for as long as this value lives: lowered on drop, so a caller
/// cancelled while it waits does not leave it raised.
struct Raised<'a> {
    sh: &'a Shared,
    field: fn(&mut State) -> &mut usize,
}

impl<'a> Raised<'a> {
    fn new(sh: &'a Shared, field: fn(&mut State) -> &mut usize) -> Self {
        *field(&mut sh.state.lock()) += 1;
        Raised { sh, field }
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        *(self.field)(&mut self.sh.state.lock()) -= 1;
    }
}

fn unreachable_entry(n: BlockNum) {
    log::error!("block cache: loading entry for block {n:#010x} vanished");
}

/// What a write makes of a block, decided under the lock from its current entry.
enum Prepared {
    /// The block is loading: wait for it.
    Wait,
    /// The block must be completed from the store first (too many ranges).
    Fill,
    /// The write changes nothing (clean block already holding these bytes).
    Unchanged,
    /// New content, and for a partial block the ranges it holds.
    Data(Option<Bytes>, Option<ByteRanges>),
}

/// A cached block as a read result.
fn outcome(data: &Option<Bytes>, etag: Option<Etag>) -> ReadOutcome {
    match data {
        Some(d) => ReadOutcome::Data { data: d.clone(), etag },
        None => ReadOutcome::Zero,
    }
}

/// The write-back scheduler: starts uploads of due dirty blocks, at most `threads` at a time,
/// and evicts clean blocks idle longer than the timeout.
async fn writeback_loop(sh: Arc<Shared>) {
    loop {
        let notified = sh.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let mut next = now + Duration::from_millis(500);
        let mut jobs = Vec::new();
        let mut fills = Vec::new();
        {
            let mut st = sh.state.lock();
            if st.stopped {
                return;
            }
            // Upload early when writers wait, a flush asks, or dirty blocks pile up.
            let limit = if sh.cfg.max_dirty > 0 { sh.cfg.max_dirty.min(sh.cfg.size) } else { sh.cfg.size };
            let paused = sh.file.as_ref().is_some_and(|f| !f.uploads_allowed());
            let pressure = st.waiters.room > 0 || st.dirty_count() * 10 >= limit * 9;
            let threads = sh.cfg.threads;
            let mut i = 0;
            while !paused
                && i < st.dirty_queue.len()
                && (st.in_flight.uploads < threads || st.in_flight.fills < threads)
            {
                let n = st.dirty_queue[i];
                let Some((e, d)) = st.entries.get(&n).and_then(|e| Some((e, e.dirty()?))) else {
                    st.dirty_queue.remove(i);
                    continue;
                };
                if d.upload.in_flight {
                    i += 1;
                    continue;
                }
                let urgent = pressure || st.waiters.flush_all > 0 || d.upload.urgent;
                let mut due = if urgent { now } else { d.since + sh.cfg.write_delay };
                if let Some(f) = &d.upload.failing {
                    due = due.max(f.retry_at);
                }
                if due > now {
                    next = next.min(due);
                    i += 1;
                    continue;
                }
                // A block still partial when due, and partial for at least the write delay, is
                // completed ahead of its upload, on its own pool (see fill_ahead), not in an
                // upload slot. A younger one (due early because of pressure or a flush) may be
                // the one a sequential writer is completing right now: it goes the old way, so
                // no read is started for it while every upload slot is busy.
                if let Some(p) = &d.partial
                    && !p.fill_failed
                    && d.since + sh.cfg.write_delay <= now
                {
                    if p.filling {
                        // A reader completes it: look again soon.
                        next = next.min(now + FILL_RECHECK);
                    } else if st.in_flight.fills < threads {
                        st.in_flight.fills += 1;
                        fills.push(n);
                    }
                    i += 1;
                    continue;
                }
                if st.in_flight.uploads >= threads {
                    i += 1;
                    continue;
                }
                let (ver, data, partial) = (e.ver, e.data.clone(), d.partial.is_some());
                if let Some(d) = st.entries.get_mut(&n).and_then(Entry::dirty_mut) {
                    d.upload.in_flight = true;
                }
                st.in_flight.uploads += 1;
                st.dirty_queue.remove(i);
                jobs.push((n, ver, data, partial));
            }
            if let Some(t) = sh.cfg.timeout {
                while let Some(victim) = st.lru_oldest() {
                    let idle = st.entries.get(&victim).expect("evictable blocks are cached").last_access + t;
                    if idle > now {
                        next = next.min(idle);
                        break;
                    }
                    sh.drop_entry(&mut st, victim);
                }
            }
        }
        for (n, ver, data, partial) in jobs {
            tokio::spawn(upload(sh.clone(), n, ver, data, partial));
        }
        for n in fills {
            tokio::spawn(fill_ahead(sh.clone(), n));
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// How soon the scheduler looks again at a due partial block that a reader is completing.
const FILL_RECHECK: Duration = Duration::from_millis(10);

/// Completes a partial block that is due for upload, then wakes the scheduler to upload it.
/// These reads run beside the uploads (at most `threads` of them), so an upload slot is only
/// ever held for a PUT: with random writes, where nearly every block is partial when due, the
/// GET of one block overlaps the PUTs of others instead of doubling each upload's time. A
/// failed completion is not retried here: the block goes the old way (completed in its upload
/// slot, with the upload's retries and backoff).
async fn fill_ahead(sh: Arc<Shared>, n: BlockNum) {
    let res = sh.fill(n).await;
    {
        let mut st = sh.state.lock();
        st.in_flight.fills -= 1;
        if let Err(err) = res {
            log::debug!("block cache: completing block {n:#010x} ahead of its upload failed: {err}");
            if let Some(p) = st.entries.get_mut(&n).and_then(Entry::partial_mut) {
                p.fill_failed = true;
            }
        }
    }
    sh.wake.notify_one();
}

/// Why a block with an upload in flight is dirty: nothing but that upload makes it clean.
const ONLY_UPLOADS_CLEAN: &str = "a block being uploaded stays dirty";

/// Uploads one block version and settles the entry afterwards. A block still `partial` is
/// completed first, and then its version at that moment is uploaded.
async fn upload(sh: Arc<Shared>, n: BlockNum, mut ver: u64, data: Option<Bytes>, partial: bool) {
    let res = if partial {
        match sh.fill(n).await {
            Ok(()) => {
                let data = {
                    let st = sh.state.lock();
                    let e = st.entries.get(&n).expect("dirty entries are never evicted");
                    ver = e.ver;
                    e.data.clone()
                };
                sh.inner.write_block(n, data.map(BlockData::already_checked)).await
            }
            Err(e) => Err(e),
        }
    } else {
        sh.inner.write_block(n, data.map(BlockData::already_checked)).await
    };
    {
        let mut st = sh.state.lock();
        st.in_flight.uploads -= 1;
        let e = st.entries.get_mut(&n).expect("dirty entries are never evicted");
        let upload = &mut e.dirty_mut().expect(ONLY_UPLOADS_CLEAN).upload;
        match res {
            Ok(etag) => {
                upload.succeeded(ver);
                if e.ver == ver {
                    e.last_access = Instant::now();
                    if let Some(f) = &sh.file {
                        e.slot = f.note_clean(n, e.slot, e.data.as_ref(), etag);
                    }
                    st.set_clean(n, etag, false);
                } else {
                    // Re-dirtied during the upload: the newer data goes up next.
                    st.dirty_queue.push_back(n);
                }
            }
            Err(err) => {
                let now = Instant::now();
                let f = upload.failed(err, retry_delay, now);
                log::warn!(
                    "block cache: upload of block {n:#010x} failed (attempt {}): {}; retrying in {:?}",
                    f.retries,
                    s3b_store::Chain(&*f.error),
                    f.retry_at - now
                );
                st.dirty_queue.push_front(n);
            }
        }
    }
    sh.changed.notify_waiters();
    sh.wake.notify_one();
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
        let out = sh.get(n, true).await?;
        // Reads for an update are cached like any read, but start no read-ahead: a writer
        // filling blocks in order would otherwise fetch the blocks it is about to overwrite.
        if req.intent == ReadIntent::Read {
            readahead::after_read(sh, n);
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
        self.shared.write_part(n, offset, data).await
    }

    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        let sh = &self.shared;
        let (off, end) = s3b_store::part_bounds(n, offset, len as usize, sh.block_size)?;
        {
            // Written in part, and the bytes asked for are among those written: no read.
            let mut st = sh.state.lock();
            if let Some(e) = st.entries.get_mut(&n)
                && e.partial().is_some_and(|v| v.covers(off as u32, end as u32))
            {
                e.last_access = Instant::now();
                sh.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(match &e.data {
                    Some(d) => d.slice(off..end),
                    None => Bytes::from(vec![0u8; end - off]),
                });
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
