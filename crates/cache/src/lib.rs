//! The block cache: keeps recently used blocks in memory, absorbs writes and uploads them in the
//! background (write-back), evicts clean blocks in LRU order, and reads ahead for sequential
//! readers. Upstream's flags and semantics (`--blockCache*`, `--readAhead*`); the differences
//! are in the details that upstream users complain about:
//!
//! - `flush` (fsync) returns only when every block dirtied before it is in the store;
//! - a block written again while its upload is in flight keeps the newer data, which is
//!   uploaded after the first upload ends, so the store never ends with the older version;
//! - writers wait — never fail — when the dirty limit or the cache is full of dirty blocks;
//! - failed uploads are retried with a growing pause, forever, as upstream does;
//! - cache-miss reads go straight to the store and never queue behind uploads; concurrent
//!   misses of one block make one request;
//! - read-ahead fetches its blocks in parallel and its window doubles (up to a quarter of the
//!   cache) while the reader keeps reading sequentially.
//!
//! State of a cached block: `Clean` (equal to the store), `Dirty` (newer than the store, waiting
//! for its write delay), `Writing` (an upload is in flight; `redirtied` when written again
//! meanwhile). Every write bumps the block's generation; an upload records the generation it
//! carried, which is what `flush` waits for.

#![deny(missing_docs)]

mod stats;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use s3b_store::{
    BlockNum, BlockStore, Etag, ReadCondition, ReadOutcome, Result, StatsSection, StatsSource, StatsWriter, StoreError,
};
use stats::CacheStats;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Block cache settings (upstream's flags).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// `--blockCacheSize`: most blocks held.
    pub size: usize,
    /// `--blockCacheThreads`: most uploads in flight.
    pub threads: usize,
    /// `--blockCacheWriteDelay`: how long a dirty block waits before its upload.
    pub write_delay: Duration,
    /// `--blockCacheTimeout`: clean blocks idle this long are dropped (`None` = never).
    pub timeout: Option<Duration>,
    /// `--blockCacheMaxDirty`: most dirty blocks (`0` = only the cache size limits them).
    pub max_dirty: usize,
    /// `--blockCacheSync`: a write returns only once uploaded.
    pub sync: bool,
    /// `--blockCacheNumProtected`: blocks numbered below this are evicted last.
    pub num_protected: u64,
    /// `--readAhead`: blocks read ahead at first (`0` = no read-ahead).
    pub read_ahead: usize,
    /// `--readAheadTrigger`: sequential block reads before read-ahead starts.
    pub read_ahead_trigger: usize,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Clean,
    Dirty { due: Instant, failures: u32 },
    Writing { redirtied: bool },
}

struct Entry {
    data: Bytes,
    state: State,
    /// Generation of `data` (bumped by every write).
    generation: u64,
    /// Newest generation known to be in the store.
    stored: u64,
    /// Position in the LRU order (clean entries only are in `Inner::lru`).
    tick: u64,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<BlockNum, Entry>,
    /// Clean entries by eviction order: (protected, tick).
    lru: BTreeMap<(bool, u64), BlockNum>,
    /// Blocks being fetched by a cache miss or read-ahead.
    loading: HashSet<BlockNum>,
    dirty: usize,
    tick: u64,
    next_generation: u64,
    /// Flushes waiting: while non-zero, dirty blocks are uploaded without waiting their delay.
    urgent: usize,
    /// Read-ahead: the next block a sequential reader would ask for, the run length, the window.
    seq_next: BlockNum,
    seq_run: usize,
    window: usize,
}

struct Shared {
    cfg: CacheConfig,
    inner: Arc<dyn BlockStore>,
    state: Mutex<Inner>,
    /// Something changed: a load or an upload finished, space was freed.
    changed: Notify,
    /// Work for the upload dispatcher.
    work: Notify,
    uploads: Arc<Semaphore>,
    stop: AtomicBool,
    stats: Arc<CacheStats>,
    running_uploads: AtomicUsize,
}

/// The block cache layer.
pub struct BlockCache {
    shared: Arc<Shared>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    fn protected(cfg: &CacheConfig, n: BlockNum) -> bool {
        (n as u64) < cfg.num_protected
    }

    fn touch(&mut self, cfg: &CacheConfig, n: BlockNum) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.map.get_mut(&n) {
            if e.state == State::Clean {
                self.lru.remove(&(Self::protected(cfg, n), e.tick));
                self.lru.insert((Self::protected(cfg, n), tick), n);
            }
            e.tick = tick;
            e.last_used = Instant::now();
        }
    }

    /// Drops the least recently used clean block; false when every block is dirty.
    fn evict_one(&mut self) -> bool {
        let Some((&key, &n)) = self.lru.iter().next() else {
            return false;
        };
        self.lru.remove(&key);
        self.map.remove(&n);
        true
    }

    fn make_clean(&mut self, cfg: &CacheConfig, n: BlockNum) {
        if let Some(e) = self.map.get_mut(&n) {
            e.state = State::Clean;
            self.lru.insert((Self::protected(cfg, n), e.tick), n);
        }
    }
}

impl Shared {
    /// A future that completes at the next `changed`, registered before the lock is released
    /// so that no wake-up is lost.
    fn wait_changed(
        &self,
        guard: parking_lot::MutexGuard<'_, Inner>,
    ) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.changed.notified());
        notified.as_mut().enable();
        drop(guard);
        notified
    }

    /// Fetches block `n` from the store into the cache (a miss or read-ahead).
    async fn load(self: &Arc<Self>, n: BlockNum) -> Result<Bytes> {
        let r = self.inner.read_block(n, ReadCondition::None).await;
        let mut st = self.state.lock();
        st.loading.remove(&n);
        let out = match r {
            Ok(o) => {
                let data = o.into_data(self.inner.block_size()).expect("plain reads have data");
                // A write that happened while we fetched is newer: keep it.
                if let Some(e) = st.map.get(&n) {
                    let cached = e.data.clone();
                    drop(st);
                    self.changed.notify_waiters();
                    return Ok(cached);
                }
                if st.map.len() >= self.cfg.size {
                    st.evict_one();
                }
                if st.map.len() < self.cfg.size {
                    st.next_generation += 1;
                    let generation = st.next_generation;
                    st.tick += 1;
                    let tick = st.tick;
                    st.map.insert(
                        n,
                        Entry {
                            data: data.clone(),
                            state: State::Clean,
                            generation,
                            stored: generation,
                            tick,
                            last_used: Instant::now(),
                        },
                    );
                    st.lru.insert((Inner::protected(&self.cfg, n), tick), n);
                }
                Ok(data)
            }
            Err(e) => Err(e),
        };
        drop(st);
        self.changed.notify_waiters();
        out
    }

    /// Starts background fetches of blocks `from..from+count` that are neither cached nor loading.
    fn read_ahead(self: &Arc<Self>, st: &mut Inner, from: BlockNum, count: usize) {
        let end = (from as u64 + count as u64).min(self.inner.num_blocks());
        for b in from as u64..end {
            let b = b as BlockNum;
            if st.map.contains_key(&b) || st.loading.contains(&b) || st.map.len() + st.loading.len() >= self.cfg.size {
                continue;
            }
            st.loading.insert(b);
            self.stats.read_ahead.fetch_add(1, SeqCst);
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.load(b).await;
            });
        }
    }

    /// The upload dispatcher: starts uploads of due dirty blocks, up to `threads` at once.
    async fn dispatch(self: Arc<Self>) {
        loop {
            if self.stop.load(SeqCst) {
                return;
            }
            let now = Instant::now();
            let mut next_due: Option<Instant> = None;
            let mut start = Vec::new();
            {
                let mut st = self.state.lock();
                let urgent = st.urgent > 0;
                let free = self.uploads.available_permits();
                let mut due: Vec<(Instant, BlockNum)> = st
                    .map
                    .iter()
                    .filter_map(|(&n, e)| match e.state {
                        State::Dirty { due, .. } => Some((due, n)),
                        _ => None,
                    })
                    .collect();
                due.sort_unstable();
                for (when, n) in due {
                    let ready = when <= now || (urgent && self.failures(&st, n) == 0);
                    if !ready {
                        next_due = Some(next_due.map_or(when, |d: Instant| d.min(when)));
                        continue;
                    }
                    if start.len() >= free {
                        break;
                    }
                    let e = st.map.get_mut(&n).expect("listed");
                    e.state = State::Writing { redirtied: false };
                    start.push((n, e.data.clone(), e.generation));
                }
                // Idle clean blocks past --blockCacheTimeout.
                if let Some(t) = self.cfg.timeout {
                    let old: Vec<BlockNum> = st
                        .map
                        .iter()
                        .filter(|(_, e)| e.state == State::Clean && e.last_used + t <= now)
                        .map(|(&n, _)| n)
                        .collect();
                    for n in old {
                        if let Some(e) = st.map.remove(&n) {
                            st.lru.remove(&(Inner::protected(&self.cfg, n), e.tick));
                        }
                    }
                    let soonest = st
                        .map
                        .values()
                        .filter(|e| e.state == State::Clean)
                        .map(|e| e.last_used + t)
                        .min();
                    if let Some(s) = soonest {
                        next_due = Some(next_due.map_or(s, |d| d.min(s)));
                    }
                }
            }
            for (n, data, generation) in start {
                let permit = self.uploads.clone().try_acquire_owned().ok();
                let me = self.clone();
                self.running_uploads.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let _permit = permit;
                    me.upload(n, data, generation).await;
                    me.running_uploads.fetch_sub(1, SeqCst);
                    me.work.notify_one();
                });
            }
            let wait = next_due
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.work.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn failures(&self, st: &Inner, n: BlockNum) -> u32 {
        match st.map.get(&n).map(|e| e.state) {
            Some(State::Dirty { failures, .. }) => failures,
            _ => 0,
        }
    }

    async fn upload(&self, n: BlockNum, data: Bytes, generation: u64) {
        let r = self.inner.write_block(n, Some(data)).await;
        let mut st = self.state.lock();
        let cfg = &self.cfg;
        let Some(e) = st.map.get_mut(&n) else { return };
        let redirtied = matches!(e.state, State::Writing { redirtied: true });
        match r {
            Ok(_) => {
                e.stored = e.stored.max(generation);
                if redirtied {
                    e.state = State::Dirty {
                        due: Instant::now() + cfg.write_delay,
                        failures: 0,
                    };
                } else {
                    st.dirty -= 1;
                    st.make_clean(cfg, n);
                }
            }
            Err(err) => {
                let failures = match e.state {
                    State::Writing { .. } => 1,
                    State::Dirty { failures, .. } => failures + 1,
                    State::Clean => 1,
                };
                let pause = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
                log::warn!(
                    "upload of block {n:#x} failed ({err}); retrying in {} ms",
                    pause.as_millis()
                );
                self.stats.write_errors.fetch_add(1, SeqCst);
                e.state = State::Dirty {
                    due: Instant::now() + pause,
                    failures,
                };
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }
}

/// Stats view of the cache: upstream's section, or (`true`) our extra lines.
struct View(Arc<Shared>, bool);

impl StatsSource for View {
    fn section(&self) -> StatsSection {
        if self.1 {
            StatsSection::Extra
        } else {
            StatsSection::BlockCache
        }
    }
    fn write_stats(&self, w: &mut StatsWriter) {
        if self.1 {
            self.0.stats.write_extra(w);
        } else {
            let (current, dirty) = {
                let st = self.0.state.lock();
                (st.map.len() as u64, st.dirty as u64)
            };
            self.0.stats.write(w, current, dirty, self.0.cfg.size as u64);
        }
    }
    fn reset_stats(&self) {
        if !self.1 {
            self.0.stats.reset();
        }
    }
}

impl BlockCache {
    /// Puts a cache of `cfg.size` blocks over `inner` and starts its upload dispatcher on the
    /// current tokio runtime.
    pub fn new(inner: Arc<dyn BlockStore>, cfg: CacheConfig) -> Self {
        let shared = Arc::new(Shared {
            uploads: Arc::new(Semaphore::new(cfg.threads.max(1))),
            stats: Arc::new(CacheStats::default()),
            cfg,
            inner,
            state: Mutex::new(Inner {
                window: 0,
                ..Default::default()
            }),
            changed: Notify::new(),
            work: Notify::new(),
            stop: AtomicBool::new(false),
            running_uploads: AtomicUsize::new(0),
        });
        let dispatcher = tokio::spawn(shared.clone().dispatch());
        BlockCache {
            shared,
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    /// The layer's counters, to register in the stats registry (upstream's lines, and ours
    /// after every upstream section).
    pub fn stats(&self) -> Vec<Arc<dyn StatsSource>> {
        vec![
            Arc::new(View(self.shared.clone(), false)),
            Arc::new(View(self.shared.clone(), true)),
        ]
    }

    /// Number of dirty (not yet uploaded) blocks.
    pub fn dirty_blocks(&self) -> usize {
        self.shared.state.lock().dirty
    }

    /// Waits until the blocks dirty now (the given ones, or all) are uploaded.
    async fn wait_uploaded(&self, blocks: Option<&[BlockNum]>) {
        let sh = &self.shared;
        let targets: Vec<(BlockNum, u64)> = {
            let st = sh.state.lock();
            match blocks {
                Some(list) => list
                    .iter()
                    .filter_map(|n| {
                        st.map
                            .get(n)
                            .filter(|e| e.stored < e.generation)
                            .map(|e| (*n, e.generation))
                    })
                    .collect(),
                None => st
                    .map
                    .iter()
                    .filter(|(_, e)| e.stored < e.generation)
                    .map(|(&n, e)| (n, e.generation))
                    .collect(),
            }
        };
        if targets.is_empty() {
            return;
        }
        sh.state.lock().urgent += 1;
        sh.work.notify_one();
        loop {
            let wait = {
                let st = sh.state.lock();
                let pending = targets
                    .iter()
                    .any(|(n, g)| st.map.get(n).is_some_and(|e| e.stored < *g));
                pending.then(|| sh.wait_changed(st))
            };
            let Some(wait) = wait else { break };
            wait.await;
            sh.work.notify_one();
        }
        sh.state.lock().urgent -= 1;
    }
}

#[async_trait]
impl BlockStore for BlockCache {
    fn block_size(&self) -> u32 {
        self.shared.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.shared.inner.num_blocks()
    }

    async fn read_block(&self, n: BlockNum, cond: ReadCondition) -> Result<ReadOutcome> {
        let sh = &self.shared;
        if cond != ReadCondition::None {
            return sh.inner.read_block(n, cond).await;
        }
        let mut counted = false;
        loop {
            let wait = {
                let mut st = sh.state.lock();
                // Sequential-read detection for read-ahead.
                if !counted && sh.cfg.read_ahead > 0 {
                    if n == st.seq_next && st.seq_run > 0 {
                        st.seq_run += 1;
                    } else {
                        st.seq_run = 1;
                        st.window = sh.cfg.read_ahead;
                    }
                    st.seq_next = n.wrapping_add(1);
                    if st.seq_run > sh.cfg.read_ahead_trigger {
                        let window = st.window;
                        sh.read_ahead(&mut st, n.saturating_add(1), window);
                        // The reader keeps up: widen the window, up to a quarter of the cache.
                        st.window = (st.window * 2).min((sh.cfg.size / 4).max(sh.cfg.read_ahead));
                    }
                }
                if let Some(e) = st.map.get(&n) {
                    let data = e.data.clone();
                    st.touch(&sh.cfg, n);
                    if !counted {
                        sh.stats.read_hits.fetch_add(1, SeqCst);
                    }
                    return Ok(ReadOutcome::Data { data, etag: None });
                }
                if !counted {
                    sh.stats.read_misses.fetch_add(1, SeqCst);
                    counted = true;
                }
                if st.loading.contains(&n) {
                    Some(sh.wait_changed(st))
                } else {
                    st.loading.insert(n);
                    None
                }
            };
            match wait {
                Some(w) => w.await,
                None => {
                    let data = sh.load(n).await?;
                    return Ok(ReadOutcome::Data { data, etag: None });
                }
            }
        }
    }

    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        let sh = &self.shared;
        let bs = sh.inner.block_size();
        let data = data.unwrap_or_else(|| s3b_store::zero_block(bs));
        if data.len() != bs as usize {
            return Err(StoreError::Other(format!(
                "write of {} bytes to block {n:#x}",
                data.len()
            )));
        }
        loop {
            let wait = {
                let mut st = sh.state.lock();
                st.next_generation += 1;
                let generation = st.next_generation;
                let delay = sh.cfg.write_delay;
                if let Some(e) = st.map.get_mut(&n) {
                    let was = e.state;
                    e.data = data.clone();
                    e.generation = generation;
                    match was {
                        State::Clean => {
                            let key = (Inner::protected(&sh.cfg, n), e.tick);
                            e.state = State::Dirty {
                                due: Instant::now() + delay,
                                failures: 0,
                            };
                            st.lru.remove(&key);
                            st.dirty += 1;
                        }
                        State::Dirty { .. } => {}
                        State::Writing { .. } => e.state = State::Writing { redirtied: true },
                    }
                    st.touch(&sh.cfg, n);
                    sh.stats.write_hits.fetch_add(1, SeqCst);
                    None
                } else {
                    let limit = sh.cfg.max_dirty > 0 && st.dirty >= sh.cfg.max_dirty;
                    if !limit && (st.map.len() < sh.cfg.size || st.evict_one()) {
                        st.tick += 1;
                        let tick = st.tick;
                        st.map.insert(
                            n,
                            Entry {
                                data: data.clone(),
                                state: State::Dirty {
                                    due: Instant::now() + delay,
                                    failures: 0,
                                },
                                generation,
                                stored: 0,
                                tick,
                                last_used: Instant::now(),
                            },
                        );
                        st.dirty += 1;
                        sh.stats.write_misses.fetch_add(1, SeqCst);
                        None
                    } else {
                        // Full of dirty blocks, or at --blockCacheMaxDirty: wait for uploads.
                        st.urgent += 1;
                        sh.work.notify_one();
                        Some(sh.wait_changed(st))
                    }
                }
            };
            let Some(wait) = wait else { break };
            wait.await;
            sh.state.lock().urgent -= 1;
        }
        if sh.cfg.write_delay.is_zero() {
            sh.work.notify_one();
        }
        if sh.cfg.sync {
            self.wait_uploaded(Some(&[n])).await;
        }
        Ok(None)
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.wait_uploaded(blocks).await;
        self.shared.inner.flush(blocks).await
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        // Cached blocks that are not yet uploaded count too.
        let dirty: Vec<BlockNum> = {
            let st = self.shared.state.lock();
            st.map
                .iter()
                .filter(|(_, e)| e.stored < e.generation)
                .map(|(&n, _)| n)
                .collect()
        };
        dirty.into_iter().for_each(sink);
        self.shared.inner.survey_non_zero(sink).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.flush(None).await?;
        self.shared.stop.store(true, SeqCst);
        self.shared.work.notify_one();
        let handle = self.dispatcher.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.shared.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests;
