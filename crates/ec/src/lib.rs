//! The MD5/ETag consistency layer (upstream's `ec_protect`), for stores that are only
//! eventually consistent: a read soon after a write may return the old version.
//!
//! It remembers, for up to `--md5CacheSize` blocks and for `--md5CacheTime`, the ETag of each
//! block it wrote, and
//! - spaces writes of one block at least `--minWriteDelay` apart (a second write waits; writes
//!   of one block never overlap);
//! - answers reads of a block whose write is still in flight from the data being written;
//! - answers reads of a block it deleted (wrote as zeros) with zeros;
//! - reads other recently written blocks with `If-Match` on the ETag it expects, and retries,
//!   with a doubling pause, an answer that is stale (`412` or another ETag);
//! - after a failed write (which may or may not have reached the store) waits
//!   `--minWriteDelay` before reading the block again.
//!
//! When the table is full, a write of a block not in it waits until the oldest entry expires.
//! The layer is off by default (as in upstream 2.x) and sits between the block cache and the
//! codec. Stats lines `md5_cache_*` as upstream.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use s3b_store::{
    BlockData, BlockNum, BlockStore, Etag, Geometry, ReadOutcome, ReadRequest, Result, Revalidation, StatsSection,
    StatsSource, StatsWriter, StoreError,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Stale answers a read tolerates before it fails: with [`STALE_PAUSE`] doubling, the six
/// pauses add up to 12.6 s, time for an eventually consistent server's replicas to catch up
/// with a write before the read gives up.
const STALE_RETRIES: u32 = 6;
/// First pause after a stale answer (doubles each time): about an S3 request's round trip, so
/// a replica that is only just behind is not asked again at once.
const STALE_PAUSE: Duration = Duration::from_millis(200);

/// Settings of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcConfig {
    /// Most blocks remembered at once (`--md5CacheSize`, > 0).
    pub cache_size: usize,
    /// How long a written block's ETag is remembered (`--md5CacheTime`); `None` = forever.
    pub cache_time: Option<Duration>,
    /// Least time between the end of one write of a block and the start of the next.
    pub min_write_delay: Duration,
    /// Stale answers tolerated per read before it fails.
    pub stale_retries: u32,
    /// First pause after a stale answer (doubles each time).
    pub stale_pause: Duration,
}

impl EcConfig {
    /// Upstream's checks of `--md5CacheSize`, `--md5CacheTime` (ms, 0 = forever) and
    /// `--minWriteDelay` (ms) for a volume of `num_blocks` (`None` while the geometry is not
    /// known yet: the checks that need it are skipped). `Ok(None)` means the layer is off. A
    /// cache larger than the volume is reduced to its size.
    pub fn from_flags(
        size: u64,
        time_ms: u64,
        min_write_delay_ms: u64,
        num_blocks: Option<u64>,
    ) -> std::result::Result<Option<EcConfig>, ConfigError> {
        if size == 0 {
            if time_ms > 0 {
                return Err(ConfigError::TimeWithoutCache);
            }
            if min_write_delay_ms > 0 {
                return Err(ConfigError::DelayWithoutCache);
            }
            return Ok(None);
        }
        if time_ms > 0 && time_ms < min_write_delay_ms {
            return Err(ConfigError::TimeBelowDelay { time_ms, min_write_delay_ms });
        }
        let blocks = num_blocks.unwrap_or(u64::MAX);
        if time_ms == 0 && size < blocks && num_blocks.is_some() {
            return Err(ConfigError::ForeverTooSmall { size, blocks });
        }
        Ok(Some(EcConfig {
            cache_size: usize::try_from(size.min(blocks).max(1)).unwrap_or(usize::MAX),
            cache_time: (time_ms > 0).then(|| Duration::from_millis(time_ms)),
            min_write_delay: Duration::from_millis(min_write_delay_ms),
            stale_retries: STALE_RETRIES,
            stale_pause: STALE_PAUSE,
        }))
    }
}

/// A combination of the layer's flags that cannot work (upstream's checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--md5CacheTime` without the cache.
    #[error("--md5CacheTime must be 0 when the MD5 cache is disabled (--md5CacheSize=0)")]
    TimeWithoutCache,
    /// `--minWriteDelay` without the cache.
    #[error("--minWriteDelay must be 0 when the MD5 cache is disabled (--md5CacheSize=0)")]
    DelayWithoutCache,
    /// Entries would expire before the write delay is over.
    #[error("--md5CacheTime ({time_ms} ms) must be at least --minWriteDelay ({min_write_delay_ms} ms)")]
    TimeBelowDelay {
        /// `--md5CacheTime`.
        time_ms: u64,
        /// `--minWriteDelay`.
        min_write_delay_ms: u64,
    },
    /// Entries kept forever need room for every block.
    #[error(
        "--md5CacheTime=0 remembers blocks forever, so --md5CacheSize ({size}) must be at least the number of blocks ({blocks}), or writes would deadlock"
    )]
    ForeverTooSmall {
        /// `--md5CacheSize`.
        size: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
}

/// Blocks reserved by [`EcProtect::begin_write`] whose write is under way. Settled with what
/// the write's outcome says; if the write's future is dropped first (a cancelled caller), the
/// drop settles them as [`Known::Unknown`] — the write may or may not have landed — so no entry
/// is left "writing" and readers wait out the write delay, then ask the store.
struct Pending<'a> {
    ec: &'a EcProtect,
    blocks: Vec<BlockNum>,
}

impl Pending<'_> {
    fn settle(mut self, known: Known) {
        for n in std::mem::take(&mut self.blocks) {
            self.ec.finish_write(n, known);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for &n in &self.blocks {
            self.ec.finish_write(n, Known::Unknown);
        }
    }
}

/// What the layer knows of a written block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// The stored object has this ETag.
    Etag(Etag),
    /// The block was deleted (written as zeros).
    Zero,
    /// Written, but the store reported no ETag: only write spacing applies.
    NoEtag,
    /// The write failed: it may or may not have reached the store.
    Unknown,
}

#[derive(Clone, Debug)]
enum Info {
    /// A write is in flight with this data (`None` = zeros).
    Writing(Option<Bytes>),
    /// Written at `at`.
    Written { at: Instant, known: Known },
}

#[derive(Default)]
struct State {
    map: HashMap<BlockNum, Info>,
    /// Written entries by completion time, oldest first (for expiry).
    order: BTreeSet<(Instant, BlockNum)>,
}

impl State {
    /// Forgets written entries older than `cache_time`; returns whether any went.
    fn scrub(&mut self, cache_time: Option<Duration>, now: Instant) -> bool {
        let Some(t) = cache_time else { return false };
        let mut removed = false;
        while let Some(&(at, n)) = self.order.first() {
            if now < at + t {
                break;
            }
            self.order.pop_first();
            self.map.remove(&n);
            removed = true;
        }
        removed
    }

    fn remove_written(&mut self, n: BlockNum) {
        if let Some(Info::Written { at, .. }) = self.map.remove(&n) {
            self.order.remove(&(at, n));
        }
    }
}

#[derive(Default)]
struct Counters {
    data_hits: AtomicU64,
    full_delay_us: AtomicU64,
    write_delay_us: AtomicU64,
}

/// The layer's counters, printed as upstream's `md5_cache_*` lines.
pub struct EcStats {
    counters: Counters,
    state: Arc<Mutex<State>>,
}

impl StatsSource for EcStats {
    fn section(&self) -> StatsSection {
        StatsSection::Md5Cache
    }

    fn write_stats(&self, w: &mut StatsWriter) {
        let c = &self.counters;
        w.blocks("md5_cache_current_size", self.state.lock().map.len() as u64);
        w.count("md5_cache_data_hits", c.data_hits.load(Relaxed));
        w.seconds("md5_cache_full_delays", c.full_delay_us.load(Relaxed) as f64 / 1e6);
        w.seconds("md5_cache_write_delays", c.write_delay_us.load(Relaxed) as f64 / 1e6);
    }

    fn reset_stats(&self) {
        let c = &self.counters;
        for a in [&c.data_hits, &c.full_delay_us, &c.write_delay_us] {
            a.store(0, Relaxed);
        }
    }
}

/// The consistency layer over an inner block store.
pub struct EcProtect {
    inner: Arc<dyn BlockStore>,
    cfg: EcConfig,
    state: Arc<Mutex<State>>,
    changed: Notify,
    stats: Arc<EcStats>,
}

/// What a reader or writer must do after looking at the table.
enum Step<T> {
    Done(T),
    /// Wait until `deadline` (or any change when `None`), adding the time to `counter`.
    Wait(Option<Instant>, Option<fn(&Counters) -> &AtomicU64>),
}

impl EcProtect {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockStore>, cfg: EcConfig) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let stats = Arc::new(EcStats { counters: Counters::default(), state: state.clone() });
        EcProtect { inner, cfg, state, changed: Notify::new(), stats }
    }

    /// The layer's counters, to register in the stats registry.
    pub fn stats(&self) -> Arc<EcStats> {
        self.stats.clone()
    }

    /// Runs `look` on the table until it is done, waiting as it asks in between.
    async fn settle<T>(&self, mut look: impl FnMut(&mut State, Instant) -> Step<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let step = {
                let mut st = self.state.lock();
                if st.scrub(self.cfg.cache_time, now) {
                    self.changed.notify_waiters();
                }
                look(&mut st, now)
            };
            match step {
                Step::Done(t) => return t,
                Step::Wait(deadline, counter) => {
                    match deadline {
                        Some(d) => {
                            let _ = tokio::time::timeout_at(d, notified).await;
                        }
                        None => notified.await,
                    }
                    if let Some(c) = counter {
                        c(&self.stats.counters)
                            .fetch_add(u64::try_from(now.elapsed().as_micros()).unwrap_or(u64::MAX), Relaxed);
                    }
                }
            }
        }
    }

    /// Marks the end of a write of `n`.
    fn finish_write(&self, n: BlockNum, known: Known) {
        let at = Instant::now();
        let mut st = self.state.lock();
        st.map.insert(n, Info::Written { at, known });
        st.order.insert((at, n));
        drop(st);
        self.changed.notify_waiters();
    }

    /// Reserves block `n` for a write of `data`: waits for write spacing and for room. The caller
    /// holds a [`Pending`] from then on, which settles the entry however the write ends.
    async fn begin_write(&self, n: BlockNum, data: &Option<Bytes>) {
        let (cap, mwd, cache_time) = (self.cfg.cache_size, self.cfg.min_write_delay, self.cfg.cache_time);
        self.settle(|st, now| match st.map.get(&n) {
            None if st.map.len() >= cap => {
                // Full: wait for the oldest written entry to expire (or any change).
                let deadline = cache_time.and_then(|t| st.order.first().map(|&(at, _)| at + t));
                Step::Wait(deadline, Some(|c| &c.full_delay_us))
            }
            None => {
                st.map.insert(n, Info::Writing(data.clone()));
                Step::Done(())
            }
            // Another write of this block is in flight: wait for it.
            Some(Info::Writing(_)) => Step::Wait(None, Some(|c| &c.write_delay_us)),
            Some(Info::Written { at, .. }) if now < *at + mwd => {
                Step::Wait(Some(*at + mwd), Some(|c| &c.write_delay_us))
            }
            Some(Info::Written { .. }) => {
                st.remove_written(n);
                st.map.insert(n, Info::Writing(data.clone()));
                Step::Done(())
            }
        })
        .await
    }
}

/// What a read should do, decided from the table.
enum ReadPlan {
    /// Answer without the store.
    Answer(ReadOutcome),
    /// Read from the store with this request, expecting this ETag (if any).
    Fetch(ReadRequest, Option<Etag>),
}

#[async_trait]
impl BlockStore for EcProtect {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        let mwd = self.cfg.min_write_delay;
        let plan = self
            .settle(|st, now| match st.map.get(&n).cloned() {
                None => Step::Done(ReadPlan::Fetch(req, None)),
                Some(Info::Writing(data)) => {
                    self.stats.counters.data_hits.fetch_add(1, Relaxed);
                    Step::Done(ReadPlan::Answer(match data {
                        Some(d) => ReadOutcome::Data { data: d, etag: None },
                        None => ReadOutcome::Zero,
                    }))
                }
                Some(Info::Written { at, known }) => match known {
                    Known::Unknown if now < at + mwd => Step::Wait(Some(at + mwd), None),
                    Known::Unknown => {
                        // Long enough for the failed write to have settled either way.
                        st.remove_written(n);
                        Step::Done(ReadPlan::Fetch(req, None))
                    }
                    Known::Zero => {
                        self.stats.counters.data_hits.fetch_add(1, Relaxed);
                        Step::Done(ReadPlan::Answer(ReadOutcome::Zero))
                    }
                    Known::NoEtag => Step::Done(ReadPlan::Fetch(req, None)),
                    Known::Etag(e) => Step::Done(ReadPlan::Fetch(req.with_if_match(e), Some(e))),
                },
            })
            .await;
        let (req, expect) = match plan {
            ReadPlan::Answer(a) => return Ok(a),
            ReadPlan::Fetch(r, e) => (r, e),
        };
        let mut pause = self.cfg.stale_pause;
        let mut attempt = 0;
        loop {
            let stale = match self.inner.read_block(n, req).await {
                Err(StoreError::Stale(_)) => "the store answered with an older version (If-Match failed)".to_string(),
                Ok(ReadOutcome::Data { etag: Some(got), .. }) if expect.is_some_and(|e| e != got) => {
                    format!("the store answered with ETag {got}, expected {}", expect.unwrap_or_default())
                }
                Ok(ReadOutcome::Zero) if expect.is_some() => {
                    "the store has no object for a block just written".to_string()
                }
                other => return other,
            };
            attempt += 1;
            if attempt > self.cfg.stale_retries {
                log::error!("block {n:#010x}: {stale}; giving up after {attempt} attempts");
                return Err(StoreError::Stale(n));
            }
            log::debug!("block {n:#010x}: {stale}; retrying in {} ms", pause.as_millis());
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        let info = self.state.lock().map.get(&n).cloned();
        match info {
            // The caller's copy is the version we wrote: still current.
            Some(Info::Written { known: Known::Etag(e), .. }) if e == etag => Ok(Revalidation::Unchanged),
            // Nothing known that could contradict the store: let it answer.
            None | Some(Info::Written { known: Known::NoEtag, .. }) => self.inner.revalidate(n, etag).await,
            // A write in progress, just done or failed: read what it left, as a plain read does.
            Some(_) => self.read_block(n, ReadRequest::PLAIN).await.map(Revalidation::Changed),
        }
    }

    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        self.begin_write(n, &data.as_ref().map(|d| d.bytes().clone())).await;
        let pending = Pending { ec: self, blocks: vec![n] };
        let r = self.inner.write_block(n, data.clone()).await;
        let known = match (&r, &data) {
            (Err(_), _) => Known::Unknown,
            (Ok(_), None) => Known::Zero,
            (Ok(Some(e)), Some(_)) => Known::Etag(*e),
            (Ok(None), Some(_)) => Known::NoEtag,
        };
        pending.settle(known);
        r
    }

    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        // Blocks the table does not know go down together (one multi-object DELETE) while there
        // is room to track them; the others take the ordinary, spaced, path.
        let mut batch = Vec::new();
        let mut single = Vec::new();
        {
            let mut st = self.state.lock();
            for &n in blocks {
                if !st.map.contains_key(&n) && st.map.len() < self.cfg.cache_size {
                    st.map.insert(n, Info::Writing(None));
                    batch.push(n);
                } else {
                    single.push(n);
                }
            }
        }
        let pending = Pending { ec: self, blocks: batch };
        let r = if pending.blocks.is_empty() { Ok(()) } else { self.inner.bulk_zero(&pending.blocks).await };
        pending.settle(if r.is_ok() { Known::Zero } else { Known::Unknown });
        r?;
        for n in single {
            self.write_block(n, None).await?;
        }
        Ok(())
    }

    fn below(&self) -> Option<&dyn BlockStore> {
        // Writes complete before they return: nothing is held here, so a flush and the
        // shutdown pass straight down.
        Some(&*self.inner)
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let known: Vec<BlockNum> = self.state.lock().map.keys().copied().collect();
        for n in known {
            sink(n);
        }
        self.inner.survey_non_zero(sink).await
    }
}

#[cfg(test)]
mod tests;
