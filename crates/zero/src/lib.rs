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
//! result is not applied to blocks written while it ran. The bitmap is allocated in chunks on
//! first use, so a huge sparse volume costs memory only where it is used.

#![deny(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
use s3b_store::{
    BlockNum, BlockStore, Etag, ReadCondition, ReadOutcome, Result, StatsSection, StatsSource, StatsWriter, is_zero,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

/// Bits per lazily allocated chunk.
const CHUNK_BITS: u64 = 1 << 16;
/// Number of write-epoch shards (blocks map to shards by number).
const SHARDS: usize = 1024;

/// A bitmap over up to 2^32 blocks, allocated in chunks on first set.
pub struct Bitmap {
    chunks: Vec<OnceLock<Box<[AtomicU64]>>>,
    count: AtomicU64,
}

impl Bitmap {
    /// A bitmap of `len` bits, all clear.
    pub fn new(len: u64) -> Self {
        let n = len.div_ceil(CHUNK_BITS) as usize;
        Bitmap { chunks: (0..n).map(|_| OnceLock::new()).collect(), count: AtomicU64::new(0) }
    }

    fn word(&self, i: u64, alloc: bool) -> Option<(&AtomicU64, u64)> {
        let chunk = self.chunks.get((i / CHUNK_BITS) as usize)?;
        let words = if alloc {
            chunk.get_or_init(|| (0..CHUNK_BITS / 64).map(|_| AtomicU64::new(0)).collect())
        } else {
            chunk.get()?
        };
        Some((&words[((i % CHUNK_BITS) / 64) as usize], 1u64 << (i % 64)))
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        self.word(i, false).is_some_and(|(w, m)| w.load(SeqCst) & m != 0)
    }

    /// Sets or clears bit `i`.
    pub fn set(&self, i: u64, on: bool) {
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
    /// Writes of blocks in the shard in flight right now.
    writing: Vec<AtomicU64>,
    /// Blocks written while the survey runs (its answer may predate them).
    touched: Bitmap,
    surveying: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn epoch(&self, n: BlockNum) -> &AtomicU64 {
        &self.epochs[n as usize % SHARDS]
    }

    fn writing(&self, n: BlockNum) -> &AtomicU64 {
        &self.writing[n as usize % SHARDS]
    }

    /// Marks the start of a write of block `n`; the guard marks its end when dropped.
    fn begin_write(&self, n: BlockNum) -> WriteGuard<'_> {
        if self.surveying.load(SeqCst) {
            self.touched.set(n as u64, true);
        }
        let alone = self.writing(n).fetch_add(1, SeqCst) == 0;
        let epoch = self.epoch(n).fetch_add(1, SeqCst) + 1;
        WriteGuard { shared: self, n, epoch, alone }
    }

    /// Whether the block may be marked zero after an operation that saw it zero: only when no
    /// write of its shard was in flight when the operation began (`alone`) and none began
    /// since (`epoch` unchanged). A write in flight when a read starts may land after the read
    /// looked, so the read's "zero" would be stale.
    fn settle_zero(&self, n: BlockNum, alone: bool, epoch: u64) {
        if alone && self.epoch(n).load(SeqCst) == epoch {
            self.zero.set(n as u64, true);
            // A write that began after the check above wins: undo.
            if self.epoch(n).load(SeqCst) != epoch {
                self.zero.set(n as u64, false);
            }
        }
    }
}

/// A write in flight (see [`Shared::begin_write`]).
struct WriteGuard<'a> {
    shared: &'a Shared,
    n: BlockNum,
    /// The epoch the write started in.
    epoch: u64,
    /// No other write of the shard was in flight when it began.
    alone: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.shared.writing(self.n).fetch_sub(1, SeqCst);
    }
}

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
    /// A read through the bitmap: known-zero blocks are answered here, others asked below
    /// (`update`: for a read-modify-write) and remembered when they turn out to be zero.
    async fn read(&self, n: BlockNum, cond: ReadCondition, update: bool) -> Result<ReadOutcome> {
        let s = &self.shared;
        if s.zero.get(n as u64) && cond == ReadCondition::None {
            s.counters.read_hits.fetch_add(1, SeqCst);
            return Ok(ReadOutcome::Zero);
        }
        let e = s.epoch(n).load(SeqCst);
        let idle = s.writing(n).load(SeqCst) == 0;
        let out = if update { self.inner.read_for_update(n).await? } else { self.inner.read_block(n, cond).await? };
        if out == ReadOutcome::Zero {
            s.settle_zero(n, idle, e);
        }
        Ok(out)
    }

    /// Wraps `inner`. With `survey`, a background task (on the current tokio runtime) lists the
    /// store and marks every block it does not report as zero.
    pub fn new(inner: Arc<dyn BlockStore>, survey: bool) -> Self {
        let n = inner.num_blocks();
        let shared = Arc::new(Shared {
            zero: Bitmap::new(n),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            writing: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            touched: Bitmap::new(n),
            surveying: AtomicBool::new(survey),
            counters: Counters::default(),
        });
        let me = ZeroCache { inner, shared };
        if survey {
            let (inner, shared) = (me.inner.clone(), me.shared.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let non_zero = Bitmap::new(n);
                match inner.survey_non_zero(&|b| non_zero.set(b as u64, true)).await {
                    Ok(()) => {
                        shared.surveying.store(false, SeqCst);
                        for b in 0..n {
                            if !non_zero.get(b) && !shared.touched.get(b) {
                                shared.zero.set(b, true);
                            }
                        }
                        log::info!(
                            "block survey done in {:.1} s: {} of {n} blocks are non-zero",
                            started.elapsed().as_secs_f64(),
                            non_zero.count()
                        );
                    }
                    Err(e) => {
                        shared.surveying.store(false, SeqCst);
                        log::warn!("block survey failed ({e}); zero blocks are learned from use only");
                    }
                }
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
        self.shared.zero.get(n as u64)
    }
}

#[async_trait]
impl BlockStore for ZeroCache {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    async fn read_block(&self, n: BlockNum, cond: ReadCondition) -> Result<ReadOutcome> {
        self.read(n, cond, false).await
    }

    async fn read_for_update(&self, n: BlockNum) -> Result<ReadOutcome> {
        self.read(n, ReadCondition::None, true).await
    }

    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        let s = &self.shared;
        let zero = data.as_ref().is_none_or(|d| is_zero(d));
        if zero && s.zero.get(n as u64) {
            s.counters.write_hits.fetch_add(1, SeqCst);
            return Ok(None);
        }
        let w = s.begin_write(n);
        s.zero.set(n as u64, false);
        let r = self.inner.write_block(n, if zero { None } else { data }).await;
        if zero && r.is_ok() {
            s.settle_zero(n, w.alone, w.epoch);
        }
        r
    }

    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        let s = &self.shared;
        let mut todo = Vec::with_capacity(blocks.len());
        for &n in blocks {
            if s.zero.get(n as u64) {
                s.counters.write_hits.fetch_add(1, SeqCst);
            } else {
                todo.push((n, s.begin_write(n)));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let list: Vec<BlockNum> = todo.iter().map(|&(n, _)| n).collect();
        self.inner.bulk_zero(&list).await?;
        for (n, w) in todo {
            s.settle_zero(n, w.alone, w.epoch);
        }
        Ok(())
    }

    fn known_zero(&self, n: BlockNum) -> bool {
        self.is_known_zero(n)
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.inner.flush(blocks).await
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.inner.survey_non_zero(sink).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use s3b_store::StoreError;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    /// An in-memory store that counts requests and can delay them.
    struct Mem {
        blocks: Mutex<HashMap<BlockNum, Bytes>>,
        reads: AtomicUsize,
        writes: AtomicUsize,
        n: u64,
        delay_ms: u64,
    }

    impl Mem {
        fn new(n: u64, delay_ms: u64) -> Arc<Mem> {
            Arc::new(Mem { blocks: Mutex::default(), reads: AtomicUsize::new(0), writes: AtomicUsize::new(0), n, delay_ms })
        }
    }

    #[async_trait]
    impl BlockStore for Mem {
        fn block_size(&self) -> u32 {
            4
        }
        fn num_blocks(&self) -> u64 {
            self.n
        }
        async fn read_block(&self, n: BlockNum, _c: ReadCondition) -> Result<ReadOutcome> {
            self.reads.fetch_add(1, SeqCst);
            if self.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(rand_ms(self.delay_ms))).await;
            }
            Ok(match self.blocks.lock().get(&n) {
                Some(d) => ReadOutcome::Data { data: d.clone(), etag: None },
                None => ReadOutcome::Zero,
            })
        }
        async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
            self.writes.fetch_add(1, SeqCst);
            if self.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(rand_ms(self.delay_ms))).await;
            }
            match data {
                Some(d) if !is_zero(&d) => self.blocks.lock().insert(n, d),
                _ => self.blocks.lock().remove(&n),
            };
            Ok(None)
        }
        async fn flush(&self, _b: Option<&[BlockNum]>) -> Result<()> {
            Ok(())
        }
        async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
            if self.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms)).await;
            }
            let keys: Vec<BlockNum> = self.blocks.lock().keys().copied().collect();
            keys.into_iter().for_each(sink);
            Ok(())
        }
        async fn shutdown(&self) -> Result<()> {
            Err(StoreError::NotRunning)
        }
    }

    fn rand_ms(max: u64) -> u64 {
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64) % max
    }

    /// A store whose writes wait for a go-ahead, to hold one in flight.
    struct Gate {
        inner: Arc<Mem>,
        started: tokio::sync::Notify,
        go: tokio::sync::Notify,
    }

    #[async_trait]
    impl BlockStore for Gate {
        fn block_size(&self) -> u32 {
            4
        }
        fn num_blocks(&self) -> u64 {
            self.inner.n
        }
        async fn read_block(&self, n: BlockNum, c: ReadCondition) -> Result<ReadOutcome> {
            self.inner.read_block(n, c).await
        }
        async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
            self.started.notify_one();
            self.go.notified().await;
            self.inner.write_block(n, data).await
        }
        async fn flush(&self, _b: Option<&[BlockNum]>) -> Result<()> {
            Ok(())
        }
        async fn survey_non_zero(&self, _: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
            Ok(())
        }
        async fn shutdown(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Regression: a read that finds no object while a write of the block is still landing must
    /// not mark the block zero (it did, and the next read-modify-write then wrote zeros over
    /// the landed data).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_during_a_write_in_flight_does_not_mark_the_block_zero() {
        let gate = Arc::new(Gate { inner: Mem::new(16, 0), started: Default::default(), go: Default::default() });
        let z = Arc::new(ZeroCache::new(gate.clone(), false));
        let z2 = z.clone();
        let w = tokio::spawn(async move { z2.write_block(7, Some(Bytes::from_static(b"abcd"))).await });
        gate.started.notified().await;
        // The object is not there yet: the store answers zero.
        assert_eq!(z.read_block(7, ReadCondition::None).await.unwrap(), ReadOutcome::Zero);
        assert!(!z.is_known_zero(7), "marked zero while a write was in flight");
        gate.go.notify_one();
        w.await.unwrap().unwrap();
        assert_eq!(z.read_block(7, ReadCondition::None).await.unwrap().into_data(4).unwrap(), Bytes::from_static(b"abcd"));
        // Once nothing is in flight, a zero answer is remembered again.
        assert_eq!(z.read_block(8, ReadCondition::None).await.unwrap(), ReadOutcome::Zero);
        assert!(z.is_known_zero(8));
    }

    #[test]
    fn bitmap_counts_and_sparse_chunks() {
        let b = Bitmap::new(1 << 32);
        assert!(!b.get(5));
        b.set(5, true);
        b.set(5, true);
        b.set((1 << 32) - 1, true);
        assert_eq!(b.count(), 2);
        b.set(5, false);
        b.set(77, false);
        assert_eq!(b.count(), 1);
        assert_eq!(b.chunks.iter().filter(|c| c.get().is_some()).count(), 2);
    }

    #[tokio::test]
    async fn survey_and_traffic_avoid_requests() {
        let mem = Mem::new(100, 0);
        mem.blocks.lock().insert(3, Bytes::from_static(b"abcd"));
        let z = ZeroCache::new(mem.clone(), true);
        while z.surveying() {
            tokio::task::yield_now().await;
        }
        assert!(z.is_known_zero(4) && !z.is_known_zero(3));
        assert_eq!(z.read_block(4, ReadCondition::None).await.unwrap(), ReadOutcome::Zero);
        z.write_block(5, None).await.unwrap();
        assert_eq!(mem.reads.load(SeqCst) + mem.writes.load(SeqCst), 0, "known-zero blocks reached the store");
        z.write_block(4, Some(Bytes::from_static(b"wxyz"))).await.unwrap();
        assert!(!z.is_known_zero(4));
        assert_eq!(z.read_block(4, ReadCondition::None).await.unwrap().into_data(4).unwrap(), Bytes::from_static(b"wxyz"));
        z.write_block(3, Some(Bytes::from_static(&[0; 4]))).await.unwrap();
        assert!(z.is_known_zero(3));
        let mut w = StatsWriter::default();
        z.stats().write_stats(&mut w);
        let text = w.into_string();
        assert!(text.contains("zero_block_cache_read_hits   1\n") && text.contains("zero_block_cache_write_hits  1\n"), "{text}");
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
                let mem = Mem::new(8, 3);
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
                                z.write_block(n, data).await.unwrap();
                                *model = (v != 0).then_some(v);
                            }
                            None => {
                                let got = z.read_block(n, ReadCondition::None).await.unwrap().into_data(4).unwrap();
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
