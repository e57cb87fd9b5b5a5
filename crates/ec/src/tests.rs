//! Unit tests of the consistency layer's state machine over an in-memory store that can answer
//! stale, fail writes, and hold writes in flight.

use super::*;
use s3b_store::ReadCondition;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use tokio::sync::Semaphore;

const BS: u32 = 16;

#[derive(Default)]
struct Mock {
    blocks: Mutex<HashMap<BlockNum, (Bytes, Etag)>>,
    /// Reads that will still answer stale.
    stale_left: AtomicU32,
    /// Conditions the reads came with.
    conds: Mutex<Vec<ReadCondition>>,
    fail_writes: AtomicBool,
    /// When set, every write waits for a permit.
    gate: Option<Semaphore>,
    seq: AtomicU32,
}

fn block(b: u8) -> Bytes {
    Bytes::from(vec![b; BS as usize])
}

#[async_trait]
impl BlockStore for Mock {
    fn block_size(&self) -> u32 {
        BS
    }
    fn num_blocks(&self) -> u64 {
        64
    }
    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        let cond = req.condition();
        self.conds.lock().push(cond);
        if self.stale_left.load(SeqCst) > 0 {
            self.stale_left.fetch_sub(1, SeqCst);
            return Err(StoreError::Stale(n));
        }
        match self.blocks.lock().get(&n).cloned() {
            None => Ok(ReadOutcome::Zero),
            Some((_, e)) if matches!(cond, ReadCondition::IfMatch(w) if w != e) => Err(StoreError::Stale(n)),
            Some((d, e)) => Ok(ReadOutcome::Data { data: d, etag: Some(e) }),
        }
    }
    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        self.conds.lock().push(ReadCondition::IfNoneMatch(etag));
        Ok(match self.blocks.lock().get(&n).cloned() {
            None => Revalidation::Changed(ReadOutcome::Zero),
            Some((_, e)) if e == etag => Revalidation::Unchanged,
            Some((d, e)) => Revalidation::Changed(ReadOutcome::Data { data: d, etag: Some(e) }),
        })
    }
    async fn write_block(&self, n: BlockNum, data: Option<s3b_store::BlockData>) -> Result<Option<Etag>> {
        let data = data.map(s3b_store::BlockData::into_bytes);
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        if self.fail_writes.load(SeqCst) {
            return Err(StoreError::Injected);
        }
        match data {
            None => {
                self.blocks.lock().remove(&n);
                Ok(None)
            }
            Some(d) => {
                let e = Etag([self.seq.fetch_add(1, SeqCst) as u8 + 1; 16]);
                self.blocks.lock().insert(n, (d, e));
                Ok(Some(e))
            }
        }
    }
    async fn flush(&self, _: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }
    async fn survey_non_zero(&self, _: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        Ok(())
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

fn cfg(size: usize, time_ms: u64, mwd_ms: u64) -> EcConfig {
    EcConfig {
        cache_size: size,
        cache_time: (time_ms > 0).then(|| Duration::from_millis(time_ms)),
        min_write_delay: Duration::from_millis(mwd_ms),
        stale_retries: 3,
        stale_pause: Duration::from_millis(1),
    }
}

fn layer(mock: Mock, c: EcConfig) -> (Arc<Mock>, EcProtect) {
    let m = Arc::new(mock);
    (m.clone(), EcProtect::new(m, c))
}

fn stat(ec: &EcProtect, name: &str) -> f64 {
    let mut w = StatsWriter::default();
    ec.stats().write_stats(&mut w);
    let text = w.into_string();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

#[tokio::test]
async fn read_after_write_carries_if_match_and_known_copy_is_not_modified() {
    let (m, ec) = layer(Mock::default(), cfg(8, 0, 0));
    let e = ec.write_block(3, BlockData::new(block(7))).await.unwrap().unwrap();
    let r = ec.read_block(3, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(r, ReadOutcome::Data { data: block(7), etag: Some(e) });
    assert_eq!(m.conds.lock().last(), Some(&ReadCondition::IfMatch(e)));
    // The cache above asks whether its copy (ETag e) is current: we know it is.
    let n = m.conds.lock().len();
    assert_eq!(ec.revalidate(3, e).await.unwrap(), Revalidation::Unchanged);
    assert_eq!(m.conds.lock().len(), n, "answered without the store");
    // A block never written here is read as asked.
    ec.read_block(9, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(m.conds.lock().last(), Some(&ReadCondition::None));
}

#[tokio::test]
async fn stale_answers_are_retried_then_given_up() {
    let (m, ec) = layer(Mock::default(), cfg(8, 0, 0));
    ec.write_block(1, BlockData::new(block(1))).await.unwrap();
    m.stale_left.store(2, SeqCst);
    assert_eq!(ec.read_block(1, ReadRequest::PLAIN).await.unwrap().into_data(BS), block(1));
    assert_eq!(m.conds.lock().len(), 3, "two stale answers, then the data");
    m.stale_left.store(100, SeqCst);
    assert!(matches!(ec.read_block(1, ReadRequest::PLAIN).await, Err(StoreError::Stale(1))));
    assert_eq!(m.conds.lock().len(), 3 + 4, "the first try and 3 retries");
}

#[tokio::test]
async fn writes_of_one_block_are_spaced_by_min_write_delay() {
    let (_, ec) = layer(Mock::default(), cfg(8, 1000, 120));
    ec.write_block(2, BlockData::new(block(1))).await.unwrap();
    let t = Instant::now();
    ec.write_block(5, BlockData::new(block(1))).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(120), "another block is not held back");
    ec.write_block(2, BlockData::new(block(2))).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(110), "second write of block 2 after {:?}", t.elapsed());
    assert!(stat(&ec, "md5_cache_write_delays") > 0.05);
}

#[tokio::test]
async fn entries_expire_after_cache_time() {
    let (m, ec) = layer(Mock::default(), cfg(8, 40, 0));
    ec.write_block(4, BlockData::new(block(4))).await.unwrap();
    assert_eq!(stat(&ec, "md5_cache_current_size"), 1.0);
    tokio::time::sleep(Duration::from_millis(60)).await;
    ec.read_block(4, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(m.conds.lock().last(), Some(&ReadCondition::None), "expired: no condition");
    assert_eq!(stat(&ec, "md5_cache_current_size"), 0.0);
}

#[tokio::test]
async fn a_full_table_makes_writers_wait_for_expiry() {
    let (_, ec) = layer(Mock::default(), cfg(1, 100, 0));
    ec.write_block(1, BlockData::new(block(1))).await.unwrap();
    let t = Instant::now();
    ec.write_block(2, BlockData::new(block(2))).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(80), "waited only {:?}", t.elapsed());
    assert!(stat(&ec, "md5_cache_full_delays") > 0.05);
    assert_eq!(stat(&ec, "md5_cache_current_size"), 1.0);
}

#[tokio::test]
async fn reads_during_a_write_get_the_data_being_written() {
    let mock = Mock { gate: Some(Semaphore::new(0)), ..Default::default() };
    let (m, ec) = layer(mock, cfg(8, 0, 0));
    let ec = Arc::new(ec);
    let w = {
        let ec = ec.clone();
        tokio::spawn(async move { ec.write_block(6, BlockData::new(block(9))).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = ec.read_block(6, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(r.into_data(BS), block(9));
    assert!(m.conds.lock().is_empty(), "answered from the write in flight");
    assert_eq!(stat(&ec, "md5_cache_data_hits"), 1.0);
    m.gate.as_ref().unwrap().add_permits(1);
    w.await.unwrap().unwrap();
}

#[tokio::test]
async fn deleted_blocks_read_as_zeros_without_the_store() {
    let (m, ec) = layer(Mock::default(), cfg(8, 0, 0));
    ec.write_block(2, BlockData::new(block(5))).await.unwrap();
    ec.write_block(2, BlockData::new(block(0))).await.unwrap();
    assert_eq!(ec.read_block(2, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
    ec.bulk_zero(&[10, 11]).await.unwrap();
    assert_eq!(ec.read_block(11, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
    assert!(m.conds.lock().is_empty());
}

#[tokio::test]
async fn after_a_failed_write_reads_wait_for_it_to_settle() {
    let (m, ec) = layer(Mock::default(), cfg(8, 1000, 100));
    m.fail_writes.store(true, SeqCst);
    assert!(ec.write_block(3, BlockData::new(block(3))).await.is_err());
    let t = Instant::now();
    ec.read_block(3, ReadRequest::PLAIN).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(90), "read after {:?}", t.elapsed());
    assert_eq!(m.conds.lock().last(), Some(&ReadCondition::None));
}

#[test]
fn flag_validation_as_upstream() {
    let f = EcConfig::from_flags;
    assert_eq!(f(0, 0, 0, Some(100)), Ok(None));
    assert!(f(0, 5, 0, Some(100)).unwrap_err().to_string().contains("--md5CacheTime must be 0"));
    assert!(f(0, 0, 5, None).unwrap_err().to_string().contains("--minWriteDelay must be 0"));
    assert!(f(10, 100, 500, None).unwrap_err().to_string().contains("must be at least --minWriteDelay"));
    assert!(f(10, 0, 0, Some(100)).unwrap_err().to_string().contains("writes would deadlock"));
    assert!(f(10, 0, 0, None).is_ok(), "the geometry is not known yet");
    let c = f(1000, 0, 500, Some(100)).unwrap().unwrap();
    assert_eq!((c.cache_size, c.cache_time, c.min_write_delay), (100, None, Duration::from_millis(500)));
    let c = f(10, 10_000, 500, Some(100)).unwrap().unwrap();
    assert_eq!(c.cache_time, Some(Duration::from_secs(10)));
}
