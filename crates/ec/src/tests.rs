//! Unit tests of the consistency layer's state machine over the in-memory store of
//! `s3b_store::mock` (stale answers, failing and held writes). Timing runs on tokio's paused
//! clock.

use super::*;
use s3b_store::ReadCondition;
use s3b_store::mock::{Fail, MemBlocks, Op, elapse};

const BS: u32 = 16;

fn block(b: u8) -> Bytes {
    Bytes::from(vec![b; BS as usize])
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

fn layer(c: EcConfig) -> (Arc<MemBlocks>, EcProtect) {
    let m = Arc::new(MemBlocks::new(BS, 64));
    (m.clone(), EcProtect::new(m, c))
}

/// Writes a block of bytes `b` into block `n`; returns how long that took.
async fn timed_write(ec: &EcProtect, n: BlockNum, b: u8) -> Duration {
    let t = Instant::now();
    ec.write_block(n, BlockData::new(block(b))).await.unwrap();
    t.elapsed()
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
    let (m, ec) = layer(cfg(8, 0, 0));
    let e = ec.write_block(3, BlockData::new(block(7))).await.unwrap().unwrap();
    let r = ec.read_block(3, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(r, ReadOutcome::Data { data: block(7), etag: Some(e) });
    assert_eq!(m.read_conditions().last(), Some(&ReadCondition::IfMatch(e)));
    // The cache above asks whether its copy (ETag e) is current: we know it is.
    let n = m.read_conditions().len();
    assert_eq!(ec.revalidate(3, e).await.unwrap(), Revalidation::Unchanged);
    assert_eq!(m.read_conditions().len(), n, "answered without the store");
    // A block never written here is read as asked.
    ec.read_block(9, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(m.read_conditions().last(), Some(&ReadCondition::None));
}

#[tokio::test(start_paused = true)]
async fn stale_answers_are_retried_then_given_up() {
    let (m, ec) = layer(cfg(8, 0, 0));
    ec.write_block(1, BlockData::new(block(1))).await.unwrap();
    m.fail_with(Op::Read, Fail::Next(2), StoreError::Stale);
    assert_eq!(ec.read_block(1, ReadRequest::PLAIN).await.unwrap().into_data(BS), block(1));
    assert_eq!(m.read_conditions().len(), 3, "two stale answers, then the data");
    m.fail_with(Op::Read, Fail::Next(100), StoreError::Stale);
    assert!(matches!(ec.read_block(1, ReadRequest::PLAIN).await, Err(StoreError::Stale(1))));
    assert_eq!(m.read_conditions().len(), 3 + 4, "the first try and 3 retries");
}

#[tokio::test(start_paused = true)]
async fn writes_of_one_block_are_spaced_by_min_write_delay() {
    let (_, ec) = layer(cfg(8, 1000, 120));
    timed_write(&ec, 2, 1).await;
    let other = timed_write(&ec, 5, 1).await;
    assert!(other < Duration::from_millis(120), "another block is not held back");
    let since = other + timed_write(&ec, 2, 2).await;
    assert!(since >= Duration::from_millis(120), "second write of block 2 after {since:?}");
    assert!(stat(&ec, "md5_cache_write_delays") > 0.05);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_cache_time() {
    let (m, ec) = layer(cfg(8, 40, 0));
    ec.write_block(4, BlockData::new(block(4))).await.unwrap();
    assert_eq!(stat(&ec, "md5_cache_current_size"), 1.0);
    elapse(Duration::from_millis(60)).await;
    ec.read_block(4, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(m.read_conditions().last(), Some(&ReadCondition::None), "expired: no condition");
    assert_eq!(stat(&ec, "md5_cache_current_size"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_makes_writers_wait_for_expiry() {
    let (_, ec) = layer(cfg(1, 100, 0));
    timed_write(&ec, 1, 1).await;
    let waited = timed_write(&ec, 2, 2).await;
    assert!(waited >= Duration::from_millis(100), "waited only {waited:?}");
    assert!(stat(&ec, "md5_cache_full_delays") > 0.05);
    assert_eq!(stat(&ec, "md5_cache_current_size"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn reads_during_a_write_get_the_data_being_written() {
    let (m, ec) = layer(cfg(8, 0, 0));
    let gate = m.hold(Op::Write);
    let ec = Arc::new(ec);
    let w = {
        let ec = ec.clone();
        tokio::spawn(async move { ec.write_block(6, BlockData::new(block(9))).await })
    };
    gate.arrived(1).await;
    let r = ec.read_block(6, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(r.into_data(BS), block(9));
    assert!(m.read_conditions().is_empty(), "answered from the write in flight");
    assert_eq!(stat(&ec, "md5_cache_data_hits"), 1.0);
    gate.allow(1);
    w.await.unwrap().unwrap();
}

#[tokio::test]
async fn deleted_blocks_read_as_zeros_without_the_store() {
    let (m, ec) = layer(cfg(8, 0, 0));
    ec.write_block(2, BlockData::new(block(5))).await.unwrap();
    ec.write_block(2, BlockData::new(block(0))).await.unwrap();
    assert_eq!(ec.read_block(2, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
    ec.bulk_zero(&[10, 11]).await.unwrap();
    assert_eq!(ec.read_block(11, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
    assert!(m.read_conditions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_write_reads_wait_for_it_to_settle() {
    let (m, ec) = layer(cfg(8, 1000, 100));
    m.fail(Op::Write, Fail::Always);
    assert!(ec.write_block(3, BlockData::new(block(3))).await.is_err());
    let t = Instant::now();
    ec.read_block(3, ReadRequest::PLAIN).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(90), "read after {:?}", t.elapsed());
    assert_eq!(m.read_conditions().last(), Some(&ReadCondition::None));
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
