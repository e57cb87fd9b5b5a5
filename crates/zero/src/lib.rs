//! The zero-block cache: a bitmap of blocks known to be all zeros, above the block cache as in
//! upstream. Reads of a known-zero block and zero writes onto one never reach the store.
//!
//! The bitmap learns from live traffic (a read that finds no object, a zero write that
//! succeeded) and, with `--listBlocks`, from a survey of the store run in the background at
//! startup: once it completes, every block the survey did not report is zero. Until then only
//! live traffic counts.
//!
//! Races are settled conservatively, so the bitmap never claims zero for a block that may hold
//! data: a non-zero write clears the bit before it starts; a bit is only set when no write of
//! the same block shard was in flight when the read or zero write began, nor began while it
//! was in flight (a write still landing could make the read's answer stale); and the survey's
//! result is not applied to blocks written while it ran, nor to blocks whose writes were already
//! under way when it started. The bitmap is allocated in chunks on first use, so a huge sparse
//! volume costs memory only where it is used.
//!
//! Discarding a large range whose blocks are not known to be zero (`mkfs.ext4` discards the whole
//! device: one delete per block, for objects a new volume never had) first runs the same
//! survey, once per mount, without `--listBlocks`: a listing costs one request per 1000
//! objects that exist, so a new volume is surveyed in a few requests and its discards cost
//! none (docs/design-notes.md has the figures). The survey's answer is authoritative, not a guess; where the keys
//! may not list the bucket it is refused, and the discard deletes every block as before. Nothing
//! is listed at startup unless `--listBlocks` asks for it.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use bytes::Bytes;
use s3b_store::{
    BlockData, BlockNum, BlockStore, Chain, Etag, Geometry, ReadOutcome, ReadRequest, Result, Revalidation,
    StatsSection, StatsSource, StatsWriter, is_zero,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

/// Bits per lazily allocated chunk.
const CHUNK_BITS: u64 = 1 << 16;
/// Number of write-epoch shards (blocks map to shards by number).
const SHARDS: usize = 1024;
/// Discards of blocks not known to be zero run the survey (once) when, over the mount, they add
/// up to this many blocks or to 1/1024 of the volume, whichever is more. A survey costs at most
/// one request per 1000 blocks of the volume — about what the discards before it already cost
/// (up to one delete per block) — so it can at most double what they cost, while a
/// whole-device discard (mkfs) of a new volume saves nearly all of its requests.
pub const DISCARD_SURVEY_MIN_BLOCKS: u64 = 1000;

/// A bitmap over up to 2^32 blocks, allocated in chunks on first set.
pub struct Bitmap {
    chunks: Vec<OnceLock<Box<[AtomicU64]>>>,
    count: AtomicU64,
}

impl Bitmap {
    /// A bitmap of `len` bits, all clear.
    pub fn new(len: u64) -> Self {
        // A volume has at most 2^32 blocks: 2^26 chunks, which fit a usize anywhere.
        let n = usize::try_from(len.div_ceil(CHUNK_BITS)).unwrap_or(usize::MAX);
        Bitmap { chunks: (0..n).map(|_| OnceLock::new()).collect(), count: AtomicU64::new(0) }
    }

    fn word(&self, i: BlockNum, alloc: bool) -> Option<(&AtomicU64, u64)> {
        let i = u64::from(i);
        let chunk = self.chunks.get((i / CHUNK_BITS) as usize)?;
        let words = if alloc {
            chunk.get_or_init(|| (0..CHUNK_BITS / 64).map(|_| AtomicU64::new(0)).collect())
        } else {
            chunk.get()?
        };
        Some((&words[((i % CHUNK_BITS) / 64) as usize], 1u64 << (i % 64)))
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: BlockNum) -> bool {
        self.word(i, false).is_some_and(|(w, m)| w.load(SeqCst) & m != 0)
    }

    /// Sets or clears bit `i`.
    pub fn set(&self, i: BlockNum, on: bool) {
        if !on && self.word(i, false).is_none() {
            return;
        }
        if let Some((w, m)) = self.word(i, true) {
            let old = if on { w.fetch_or(m, SeqCst) } else { w.fetch_and(!m, SeqCst) };
            match (old & m != 0, on) {
                (false, true) => self.count.fetch_add(1, SeqCst),
                (true, false) => self.count.fetch_sub(1, SeqCst),
                _ => 0,
            };
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count.load(SeqCst)
    }
}

#[derive(Default)]
struct Counters {
    read_hits: AtomicU64,
    write_hits: AtomicU64,
}

struct Shared {
    zero: Bitmap,
    /// Incremented when a write of a block in the shard begins.
    epochs: Vec<AtomicU64>,
    /// Blocks written while the survey runs (its answer may predate them).
    touched: Bitmap,
    /// Writes under way, per shard.
    in_flight: Vec<AtomicU64>,
    /// Shards that had writes under way when the survey started (its answer may predate them).
    busy_at_start: Vec<AtomicBool>,
    surveying: AtomicBool,
    /// The survey of this mount, run at most once: `true` once it completed.
    survey: tokio::sync::OnceCell<bool>,
    /// Blocks not known to be zero that discards have asked to zero so far.
    discarded_unknown: AtomicU64,
    counters: Counters,
    /// Told of the `--listBlocks` survey's progress, if anyone is.
    progress: Option<Arc<dyn SurveyProgress>>,
}

/// Follows the `--listBlocks` survey at startup (a progress bar, a service manager's status).
pub trait SurveyProgress: Send + Sync {
    /// One more stored block was found.
    fn found(&self);
    /// The survey ended: `Some(non_zero)` when it completed, `None` when it failed.
    fn finished(&self, non_zero: Option<u64>);
}

impl Shared {
    fn epoch(&self, n: BlockNum) -> &AtomicU64 {
        &self.epochs[n as usize % SHARDS]
    }

    /// Marks the start of a write of block `n`; returns the epoch it started in. Every call is
    /// paired with [`Shared::end_write`].
    fn begin_write(&self, n: BlockNum) -> u64 {
        self.in_flight[n as usize % SHARDS].fetch_add(1, SeqCst);
        if self.surveying.load(SeqCst) {
            self.touched.set(n, true);
        }
        self.epoch(n).fetch_add(1, SeqCst) + 1
    }

    /// Marks the end of a write of block `n`.
    fn end_write(&self, n: BlockNum) {
        self.in_flight[n as usize % SHARDS].fetch_sub(1, SeqCst);
    }

    /// Lists the store and marks every block it does not report, and that nothing wrote
    /// meanwhile, as zero. Returns whether the survey completed.
    async fn survey(&self, inner: &dyn BlockStore, why: &str) -> bool {
        let n = inner.num_blocks();
        let started = std::time::Instant::now();
        self.surveying.store(true, SeqCst);
        // Writes already under way may land after the listing looked: their shards sit out.
        for (busy, count) in self.busy_at_start.iter().zip(&self.in_flight) {
            busy.store(count.load(SeqCst) > 0, SeqCst);
        }
        let non_zero = Bitmap::new(n);
        let progress = self.progress.as_deref().filter(|_| why == LIST_BLOCKS);
        let result = inner
            .survey_non_zero(&|b| {
                non_zero.set(b, true);
                if let Some(p) = progress {
                    p.found();
                }
            })
            .await;
        if let Some(p) = progress {
            p.finished(result.as_ref().ok().map(|()| non_zero.count()));
        }
        match result {
            Ok(()) => {
                // Still `surveying`: a write that begins while the answer is applied marks its
                // block touched, and the check after marking undoes a mark it would outlive.
                // A volume has at most 2^32 blocks, so every number fits a BlockNum.
                for b in (0..n).map_while(|b| BlockNum::try_from(b).ok()) {
                    if !non_zero.get(b) && !self.touched.get(b) && !self.busy_at_start[b as usize % SHARDS].load(SeqCst)
                    {
                        self.zero.set(b, true);
                        if self.touched.get(b) {
                            self.zero.set(b, false);
                        }
                    }
                }
                self.surveying.store(false, SeqCst);
                log::info!(
                    "block survey done in {:.1} s ({why}): {} of {n} blocks are non-zero",
                    started.elapsed().as_secs_f64(),
                    non_zero.count()
                );
                true
            }
            Err(e) => {
                self.surveying.store(false, SeqCst);
                log::warn!("block survey failed ({why}: {}); zero blocks are learned from use only", Chain(&e));
                false
            }
        }
    }
}

/// Why the startup survey runs (the flag that asked for it).
const LIST_BLOCKS: &str = "--listBlocks";

/// The zero-block cache layer.
pub struct ZeroCache {
    inner: Arc<dyn BlockStore>,
    shared: Arc<Shared>,
}

/// The zero cache's stats lines (`zero_block_cache_*`).
struct ZeroStats(Arc<Shared>);

impl StatsSource for ZeroStats {
    fn section(&self) -> StatsSection {
        StatsSection::ZeroCache
    }
    fn write_stats(&self, w: &mut StatsWriter) {
        let c = &self.0.counters;
        w.blocks("zero_block_cache_size", self.0.zero.count());
        w.count("zero_block_cache_read_hits", c.read_hits.load(SeqCst));
        w.count("zero_block_cache_write_hits", c.write_hits.load(SeqCst));
    }
    fn reset_stats(&self) {
        self.0.counters.read_hits.store(0, SeqCst);
        self.0.counters.write_hits.store(0, SeqCst);
    }
}

impl ZeroCache {
    /// A read through the bitmap: known-zero blocks are answered here, others asked below and
    /// remembered when they turn out to be zero.
    async fn read(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        let s = &self.shared;
        if s.zero.get(n) && req.if_match.is_none() {
            s.counters.read_hits.fetch_add(1, SeqCst);
            return Ok(ReadOutcome::Zero);
        }
        let e = s.epoch(n).load(SeqCst);
        // A write of the shard still landing may store the block after the read looked.
        let idle = s.in_flight[n as usize % SHARDS].load(SeqCst) == 0;
        let out = self.inner.read_block(n, req).await?;
        if out == ReadOutcome::Zero && idle && s.epoch(n).load(SeqCst) == e {
            s.zero.set(n, true);
            // A write that began after the check above wins: undo.
            if s.epoch(n).load(SeqCst) != e {
                s.zero.set(n, false);
            }
        }
        Ok(out)
    }

    /// Wraps `inner`. With `survey`, a background task (on the current tokio runtime) lists the
    /// store and marks every block it does not report as zero.
    pub fn new(inner: Arc<dyn BlockStore>, survey: bool) -> Self {
        Self::with_progress(inner, survey, None)
    }

    /// [`ZeroCache::new`], telling `progress` how the startup survey (if any) goes.
    pub fn with_progress(inner: Arc<dyn BlockStore>, survey: bool, progress: Option<Arc<dyn SurveyProgress>>) -> Self {
        let n = inner.num_blocks();
        let shared = Arc::new(Shared {
            zero: Bitmap::new(n),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            touched: Bitmap::new(n),
            in_flight: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            busy_at_start: (0..SHARDS).map(|_| AtomicBool::new(false)).collect(),
            surveying: AtomicBool::new(survey),
            survey: tokio::sync::OnceCell::new(),
            discarded_unknown: AtomicU64::new(0),
            counters: Counters::default(),
            progress,
        });
        let me = ZeroCache { inner, shared };
        if survey {
            let (inner, shared) = (me.inner.clone(), me.shared.clone());
            tokio::spawn(async move {
                shared.survey.get_or_init(|| shared.survey(inner.as_ref(), LIST_BLOCKS)).await;
            });
        }
        me
    }

    /// The layer's counters, to register in the stats registry.
    pub fn stats(&self) -> Arc<dyn StatsSource> {
        Arc::new(ZeroStats(self.shared.clone()))
    }

    /// True while the startup survey runs.
    pub fn surveying(&self) -> bool {
        self.shared.surveying.load(SeqCst)
    }

    /// Whether block `n` is known to be zero.
    pub fn is_known_zero(&self, n: BlockNum) -> bool {
        self.shared.zero.get(n)
    }
}

#[async_trait]
impl BlockStore for ZeroCache {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        self.read(n, req).await
    }

    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        self.inner.revalidate(n, etag).await
    }

    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        let s = &self.shared;
        let zero = data.is_none();
        if zero && s.zero.get(n) {
            s.counters.write_hits.fetch_add(1, SeqCst);
            return Ok(None);
        }
        let e = s.begin_write(n);
        s.zero.set(n, false);
        let r = self.inner.write_block(n, data).await;
        s.end_write(n);
        if zero && r.is_ok() && s.epoch(n).load(SeqCst) == e {
            s.zero.set(n, true);
            if s.epoch(n).load(SeqCst) != e {
                s.zero.set(n, false);
            }
        }
        r
    }

    async fn write_block_part(&self, n: BlockNum, offset: u32, data: Bytes) -> Result<()> {
        let s = &self.shared;
        let bs = self.inner.block_size();
        let (off, end) = s3b_store::part_bounds(n, offset, data.len(), bs)?;
        if s.zero.get(n) {
            // Known zero: the rest of the block is zeros, so build it here, no read below.
            if is_zero(&data) {
                s.counters.write_hits.fetch_add(1, SeqCst);
                return Ok(());
            }
            let mut buf = vec![0u8; bs as usize];
            buf[off..end].copy_from_slice(&data);
            // Not all zeros: `data`, just checked, is in it.
            return self.write_block(n, Some(BlockData::already_checked(Bytes::from(buf)))).await.map(|_| ());
        }
        s.begin_write(n);
        s.zero.set(n, false);
        let r = self.inner.write_block_part(n, offset, data).await;
        s.end_write(n);
        r
    }

    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        let s = &self.shared;
        let (off, end) = s3b_store::part_bounds(n, offset, len as usize, self.inner.block_size())?;
        if s.zero.get(n) {
            s.counters.read_hits.fetch_add(1, SeqCst);
            return Ok(Bytes::from(vec![0u8; end - off]));
        }
        self.inner.read_block_part(n, offset, len).await
    }

    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        let s = &self.shared;
        let unknown = blocks.iter().filter(|&&n| !s.zero.get(n)).count() as u64;
        let so_far = s.discarded_unknown.fetch_add(unknown, SeqCst) + unknown;
        if unknown > 0 && so_far >= DISCARD_SURVEY_MIN_BLOCKS.max(self.inner.num_blocks() / 1024) {
            // Once per mount (and not again after --listBlocks): learn which blocks exist.
            s.survey.get_or_init(|| s.survey(self.inner.as_ref(), "for a large discard")).await;
        }
        let mut todo = Vec::with_capacity(blocks.len());
        for &n in blocks {
            if s.zero.get(n) {
                s.counters.write_hits.fetch_add(1, SeqCst);
            } else {
                todo.push((n, s.begin_write(n)));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let list: Vec<BlockNum> = todo.iter().map(|&(n, _)| n).collect();
        let r = self.inner.bulk_zero(&list).await;
        for &n in &list {
            s.end_write(n);
        }
        r?;
        for (n, e) in todo {
            if s.epoch(n).load(SeqCst) == e {
                s.zero.set(n, true);
                if s.epoch(n).load(SeqCst) != e {
                    s.zero.set(n, false);
                }
            }
        }
        Ok(())
    }

    fn known_zero(&self, n: BlockNum) -> bool {
        self.is_known_zero(n)
    }

    fn below(&self) -> Option<&dyn BlockStore> {
        Some(&*self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_store::StoreError;
    use s3b_store::mock::{Fail, MemBlocks, Op};

    /// An in-memory store of `n` blocks of 4 bytes whose reads, writes and surveys take up to
    /// `delay_ms`.
    fn mem(n: u64, delay_ms: u64) -> Arc<MemBlocks> {
        let m = MemBlocks::new(4, n).without_etags();
        if delay_ms > 0 {
            let d = std::time::Duration::from_millis(delay_ms);
            m.delay_up_to(Op::Read, d);
            m.delay_up_to(Op::Write, d);
            m.delay(Op::List, d);
        }
        Arc::new(m)
    }

    #[test]
    fn bitmap_counts_and_sparse_chunks() {
        let b = Bitmap::new(1 << 32);
        assert!(!b.get(5));
        b.set(5, true);
        b.set(5, true);
        b.set(BlockNum::MAX, true);
        assert_eq!(b.count(), 2);
        b.set(5, false);
        b.set(77, false);
        assert_eq!(b.count(), 1);
        assert_eq!(b.chunks.iter().filter(|c| c.get().is_some()).count(), 2);
    }

    #[tokio::test]
    async fn survey_and_traffic_avoid_requests() {
        let mem = mem(100, 0);
        mem.put(3, Bytes::from_static(b"abcd"));
        let z = ZeroCache::new(mem.clone(), true);
        while z.surveying() {
            tokio::task::yield_now().await;
        }
        assert!(z.is_known_zero(4) && !z.is_known_zero(3));
        assert_eq!(z.read_block(4, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
        z.write_block(5, None).await.unwrap();
        assert_eq!(mem.calls(Op::Read) + mem.calls(Op::Write), 0, "known-zero blocks reached the store");
        z.write_block(4, BlockData::new(Bytes::from_static(b"wxyz"))).await.unwrap();
        assert!(!z.is_known_zero(4));
        assert_eq!(z.read_block(4, ReadRequest::PLAIN).await.unwrap().into_data(4), Bytes::from_static(b"wxyz"));
        z.write_block(3, BlockData::new(Bytes::from_static(&[0; 4]))).await.unwrap();
        assert!(z.is_known_zero(3));
        let mut w = StatsWriter::default();
        z.stats().write_stats(&mut w);
        let text = w.into_string();
        assert!(
            text.contains("zero_block_cache_read_hits   1\n") && text.contains("zero_block_cache_write_hits  1\n"),
            "{text}"
        );
    }

    /// A read that finds no object while a write of the same block is still landing must not
    /// mark the block zero (it did, and the next partial write then wrote zeros over the landed
    /// data).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_during_a_write_in_flight_does_not_mark_the_block_zero() {
        let mem = mem(16, 0);
        let gate = mem.hold_block(Op::Write, 7);
        let z = Arc::new(ZeroCache::new(mem.clone(), false));
        let z2 = z.clone();
        let w = tokio::spawn(async move { z2.write_block(7, BlockData::new(Bytes::from_static(b"abcd"))).await });
        while z.shared.in_flight[7].load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The object is not there yet: the store answers zero.
        assert_eq!(z.read_block(7, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
        assert!(!z.is_known_zero(7), "marked zero while a write was in flight");
        gate.allow(1);
        w.await.unwrap().unwrap();
        assert_eq!(z.read_block(7, ReadRequest::PLAIN).await.unwrap().into_data(4), Bytes::from_static(b"abcd"));
        // Once nothing is in flight, a zero answer is remembered again.
        assert_eq!(z.read_block(8, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
        assert!(z.is_known_zero(8));
    }

    #[tokio::test]
    async fn a_large_discard_surveys_once_and_deletes_only_blocks_that_exist() {
        let mem = mem(10_000, 0);
        for n in [5, 2000, 9000] {
            mem.put(n, Bytes::from_static(b"data"));
        }
        let z = ZeroCache::new(mem.clone(), false);
        // A small discard: no survey, each block deleted.
        z.bulk_zero(&(100..110).collect::<Vec<_>>()).await.unwrap();
        assert_eq!((mem.calls(Op::List), mem.calls(Op::Write)), (0, 10));
        // A large one: one survey, then only the blocks that exist are deleted.
        let all: Vec<BlockNum> = (0..5000).collect();
        z.bulk_zero(&all).await.unwrap();
        assert_eq!((mem.calls(Op::List), mem.calls(Op::Write)), (1, 12));
        assert!(mem.get(5).is_none() && mem.get(2000).is_none());
        // The rest of the volume is known zero too; no second survey.
        z.bulk_zero(&(5000..10_000).collect::<Vec<_>>()).await.unwrap();
        assert_eq!((mem.calls(Op::List), mem.calls(Op::Write)), (1, 13));
        assert!(mem.stored().is_empty());
    }

    #[tokio::test]
    async fn a_refused_survey_falls_back_to_deleting_every_block() {
        let mem = mem(4000, 0);
        mem.fail_with(Op::List, Fail::Always, |_| StoreError::Forbidden("bucket \"b\"".into()));
        let z = ZeroCache::new(mem.clone(), false);
        z.bulk_zero(&(0..2000).collect::<Vec<_>>()).await.unwrap();
        assert_eq!((mem.calls(Op::List), mem.calls(Op::Write)), (1, 2000));
        // Not tried again.
        z.bulk_zero(&(2000..4000).collect::<Vec<_>>()).await.unwrap();
        assert_eq!((mem.calls(Op::List), mem.calls(Op::Write)), (1, 4000));
    }

    #[tokio::test]
    async fn a_write_under_way_when_the_survey_starts_is_never_taken_for_zero() {
        let mem = mem(4000, 0);
        let gate = mem.hold_block(Op::Write, 7);
        let z = Arc::new(ZeroCache::new(mem.clone(), false));
        // Block 7's write has begun but not reached the store when the survey lists it.
        let w = {
            let z = z.clone();
            tokio::spawn(async move { z.write_block(7, BlockData::new(Bytes::from_static(b"late"))).await.unwrap() })
        };
        while z.shared.in_flight[7].load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        z.bulk_zero(&(100..3000).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(mem.calls(Op::List), 1);
        gate.allow(1);
        w.await.unwrap();
        assert!(!z.is_known_zero(7));
        assert_eq!(z.read_block(7, ReadRequest::PLAIN).await.unwrap().into_data(4), Bytes::from_static(b"late"));
        // Blocks of other shards that nothing wrote are known zero.
        assert!(z.is_known_zero(8) && z.is_known_zero(3999));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        /// Concurrent random reads and writes with delays: every read returns what the model
        /// says the last completed write of that block left (writes of one block are serialised,
        /// as the front end does for overlapping writes).
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u32..8, proptest::option::of(0u8..3)), 1..60)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
            rt.block_on(async {
                let mem = mem(8, 3);
                let z = Arc::new(ZeroCache::new(mem.clone(), true));
                let locks: Arc<Vec<tokio::sync::Mutex<Option<u8>>>> = Arc::new((0..8).map(|_| tokio::sync::Mutex::new(None)).collect());
                let mut tasks = Vec::new();
                for (n, op) in ops {
                    let (z, locks) = (z.clone(), locks.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut model = locks[n as usize].lock().await;
                        match op {
                            Some(v) => {
                                let data = if v == 0 { None } else { Some(Bytes::from(vec![v; 4])) };
                                z.write_block(n, data.and_then(BlockData::new)).await.unwrap();
                                *model = (v != 0).then_some(v);
                            }
                            None => {
                                let got = z.read_block(n, ReadRequest::PLAIN).await.unwrap().into_data(4);
                                assert_eq!(got, Bytes::from(vec![model.unwrap_or(0); 4]), "block {n}");
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
        }
    }
}
