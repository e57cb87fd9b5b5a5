//! Tests of the cache's state machine against an in-memory store with random delays and
//! injected upload failures, and a property test against a flat model.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap as Map;
use std::sync::atomic::AtomicU32;

const BS: u32 = 8;

/// An in-memory block store: random delays, a share of failing writes, request counters.
struct Mem {
    blocks: Mutex<Map<BlockNum, Bytes>>,
    n: u64,
    delay_ms: u64,
    fail_percent: u32,
    reads: AtomicU32,
    writes: AtomicU32,
}

impl Mem {
    fn new(n: u64, delay_ms: u64, fail_percent: u32) -> Arc<Mem> {
        Arc::new(Mem { blocks: Mutex::default(), n, delay_ms, fail_percent, reads: AtomicU32::new(0), writes: AtomicU32::new(0) })
    }
    async fn pause(&self) {
        if self.delay_ms > 0 {
            let ms = rand::random::<u64>() % self.delay_ms;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    fn get(&self, n: BlockNum) -> Bytes {
        self.blocks.lock().get(&n).cloned().unwrap_or_else(|| s3b_store::zero_block(BS))
    }
}

#[async_trait]
impl BlockStore for Mem {
    fn block_size(&self) -> u32 {
        BS
    }
    fn num_blocks(&self) -> u64 {
        self.n
    }
    async fn read_block(&self, n: BlockNum, _c: ReadCondition) -> Result<ReadOutcome> {
        self.reads.fetch_add(1, SeqCst);
        self.pause().await;
        Ok(match self.blocks.lock().get(&n) {
            Some(d) => ReadOutcome::Data { data: d.clone(), etag: None },
            None => ReadOutcome::Zero,
        })
    }
    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        self.writes.fetch_add(1, SeqCst);
        self.pause().await;
        if rand::random::<u32>() % 100 < self.fail_percent {
            return Err(StoreError::Injected);
        }
        match data {
            Some(d) if !s3b_store::is_zero(&d) => self.blocks.lock().insert(n, d),
            _ => self.blocks.lock().remove(&n),
        };
        Ok(None)
    }
    async fn flush(&self, _b: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }
    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let keys: Vec<BlockNum> = self.blocks.lock().keys().copied().collect();
        keys.into_iter().for_each(sink);
        Ok(())
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

fn block(v: u8) -> Bytes {
    Bytes::from(vec![v; BS as usize])
}

fn cfg(size: usize, delay_ms: u64) -> CacheConfig {
    CacheConfig { size, threads: 4, write_delay: Duration::from_millis(delay_ms), read_ahead: 2, ..Default::default() }
}

async fn read(c: &BlockCache, n: BlockNum) -> Bytes {
    c.read_block(n, ReadCondition::None).await.unwrap().into_data(BS).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_back_flush_and_hits() {
    let mem = Mem::new(64, 0, 0);
    let c = BlockCache::new(mem.clone(), cfg(16, 10_000));
    c.write_block(1, Some(block(1))).await.unwrap();
    assert_eq!(read(&c, 1).await, block(1));
    assert_eq!(mem.writes.load(SeqCst), 0, "written before its delay");
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(1), block(1));
    assert_eq!(c.dirty_blocks(), 0);
    // A miss reads the store once; the next read hits.
    mem.blocks.lock().insert(2, block(2));
    assert_eq!(read(&c, 2).await, block(2));
    assert_eq!(read(&c, 2).await, block(2));
    assert_eq!(mem.reads.load(SeqCst), 1);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_during_upload_keeps_the_newest() {
    let mem = Mem::new(8, 30, 0);
    let c = BlockCache::new(mem.clone(), cfg(8, 0));
    for v in 1..=20u8 {
        c.write_block(3, Some(block(v))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(3), block(20));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_uploads_are_retried_and_writers_wait_when_full() {
    let mem = Mem::new(64, 2, 30);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { max_dirty: 3, ..cfg(4, 0) }));
    let mut tasks = Vec::new();
    for n in 0..40u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.write_block(n, Some(block(n as u8 + 1))).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.flush(None).await.unwrap();
    for n in 0..40u32 {
        assert_eq!(mem.get(n), block(n as u8 + 1), "block {n}");
    }
    assert!(c.shared.stats.write_errors.load(SeqCst) > 0, "no failure was injected");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_reads_trigger_read_ahead() {
    let mem = Mem::new(256, 0, 0);
    for n in 0..256u32 {
        mem.blocks.lock().insert(n, block(n as u8 | 1));
    }
    let c = BlockCache::new(mem.clone(), cfg(200, 0));
    for n in 0..100u32 {
        assert_eq!(read(&c, n).await, block(n as u8 | 1));
    }
    let misses = c.shared.stats.read_misses.load(SeqCst);
    assert!(misses < 40, "read-ahead did not help: {misses} misses of 100");
    c.shutdown().await.unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Write(BlockNum, u8),
    Read(BlockNum),
    Flush,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..12, 0u8..4).prop_map(|(n, v)| Op::Write(n, v)),
        4 => (0u32..12).prop_map(Op::Read),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random batches of concurrent reads and writes (one writer per block at a time, as the
    /// front end guarantees), flushes and restarts, over a slow store that fails 10% of uploads:
    /// every read sees the model, and after a flush or restart the store holds the model.
    #[test]
    fn behaves_like_a_flat_model(ops in proptest::collection::vec(op(), 1..80), size in 2usize..10, delay in 0u64..3) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(async move {
            let mem = Mem::new(12, 3, 10);
            let mut cache = Arc::new(BlockCache::new(mem.clone(), CacheConfig { max_dirty: size / 2, ..cfg(size, delay) }));
            let model: Arc<Vec<tokio::sync::Mutex<u8>>> = Arc::new((0..12).map(|_| tokio::sync::Mutex::new(0)).collect());
            let mut batch = Vec::new();
            for op in ops {
                match op {
                    Op::Write(n, _) | Op::Read(n) => {
                        let (c, m) = (cache.clone(), model.clone());
                        batch.push(tokio::spawn(async move {
                            let mut slot = m[n as usize].lock().await;
                            match op {
                                Op::Write(_, v) => {
                                    c.write_block(n, Some(block(v))).await.unwrap();
                                    *slot = v;
                                }
                                _ => assert_eq!(read(&c, n).await, block(*slot), "block {n}"),
                            }
                        }));
                    }
                    Op::Flush | Op::Restart => {
                        for t in batch.drain(..) {
                            t.await.unwrap();
                        }
                        if matches!(op, Op::Restart) {
                            cache.shutdown().await.unwrap();
                            cache = Arc::new(BlockCache::new(mem.clone(), cfg(size, delay)));
                        } else {
                            cache.flush(None).await.unwrap();
                        }
                        for n in 0..12u32 {
                            assert_eq!(mem.get(n), block(*model[n as usize].lock().await), "store block {n}");
                        }
                    }
                }
            }
            for t in batch {
                t.await.unwrap();
            }
            cache.shutdown().await.unwrap();
            for n in 0..12u32 {
                assert_eq!(mem.get(n), block(*model[n as usize].lock().await), "store block {n} at the end");
            }
        });
    }
}

