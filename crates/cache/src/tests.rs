//! Unit tests of the cache's state machine over an in-memory store with controllable uploads.

use super::*;
use s3b_store::StatsSource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

const BS: u32 = 16;

/// An in-memory block store that counts operations, can hold uploads and fail them.
#[derive(Default)]
pub(crate) struct Mem {
    pub blocks: Mutex<HashMap<BlockNum, Bytes>>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub zero_writes: AtomicU64,
    pub fail_writes: AtomicUsize,
    pub hold_writes: AtomicBool,
    pub read_delay_ms: AtomicU64,
    pub released: Notify,
    /// Reads wait at the store while set (released by `reads_released`).
    pub hold_reads: AtomicBool,
    pub reads_released: Notify,
    /// Uploads inside `write_block` now, the most at once, and a signal for each change.
    pub writes_in_flight: AtomicUsize,
    pub max_writes_in_flight: AtomicUsize,
    pub in_flight_changed: Notify,
}

#[async_trait]
impl BlockStore for Mem {
    fn block_size(&self) -> u32 {
        BS
    }
    fn num_blocks(&self) -> u64 {
        100
    }
    async fn read_block(&self, n: BlockNum, _cond: ReadCondition) -> Result<ReadOutcome> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        while self.hold_reads.load(Ordering::SeqCst) {
            let w = self.reads_released.notified();
            if !self.hold_reads.load(Ordering::SeqCst) {
                break;
            }
            w.await;
        }
        let d = self.read_delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        Ok(match self.blocks.lock().get(&n) {
            Some(d) => ReadOutcome::Data { data: d.clone(), etag: None },
            None => ReadOutcome::Zero,
        })
    }
    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        let now = self.writes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_writes_in_flight.fetch_max(now, Ordering::SeqCst);
        self.in_flight_changed.notify_waiters();
        let r = self.write_block_inner(n, data).await;
        self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.in_flight_changed.notify_waiters();
        r
    }
    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }
    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        for n in self.blocks.lock().keys() {
            sink(*n);
        }
        Ok(())
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

impl Mem {
    async fn write_block_inner(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        while self.hold_writes.load(Ordering::SeqCst) {
            let w = self.released.notified();
            if !self.hold_writes.load(Ordering::SeqCst) {
                break;
            }
            w.await;
        }
        if self.fail_writes.load(Ordering::SeqCst) > 0 {
            self.fail_writes.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Injected);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        match data {
            Some(d) => {
                self.blocks.lock().insert(n, d);
            }
            None => {
                self.zero_writes.fetch_add(1, Ordering::SeqCst);
                self.blocks.lock().remove(&n);
            }
        }
        Ok(None)
    }

    /// Waits until exactly `n` uploads are inside the store (a guard turns a hang into a
    /// failure).
    async fn until_in_flight(&self, n: usize) {
        let wait = async {
            loop {
                let changed = self.in_flight_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.writes_in_flight.load(Ordering::SeqCst) == n {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), wait).await.is_err() {
            panic!("never {n} uploads in flight (now {})", self.writes_in_flight.load(Ordering::SeqCst));
        }
    }
}

fn block(b: u8) -> Bytes {
    Bytes::from(vec![b; BS as usize])
}

fn cfg(size: usize) -> CacheConfig {
    CacheConfig { size, write_delay: Duration::from_millis(20), read_ahead: 0, ..CacheConfig::default() }
}

async fn read(c: &BlockCache, n: BlockNum) -> Bytes {
    c.read_block(n, ReadCondition::None).await.unwrap().into_data(BS).unwrap()
}

#[tokio::test]
async fn miss_then_hit_and_one_inner_read_for_concurrent_misses() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(3, block(3));
    mem.read_delay_ms.store(50, Ordering::SeqCst);
    let c = Arc::new(BlockCache::new(mem.clone(), cfg(10)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { read(&c, 3).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), block(3));
    }
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1, "concurrent misses share one inner read");
    assert_eq!(read(&c, 3).await, block(3));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1);
    let (hits, misses) = c.stats().reads();
    assert_eq!((hits, misses), (8, 1));
}

#[tokio::test]
async fn write_back_after_delay_and_flush() {
    let mem = Arc::new(Mem::default());
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(10) });
    c.write_block(1, Some(block(1))).await.unwrap();
    c.write_block(1, Some(block(2))).await.unwrap();
    assert_eq!(read(&c, 1).await, block(2), "reads see the cached write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mem.writes.load(Ordering::SeqCst), 0, "not uploaded before the delay");
    c.flush(Some(&[1])).await.unwrap();
    assert_eq!(mem.blocks.lock().get(&1), Some(&block(2)));
    assert_eq!(mem.writes.load(Ordering::SeqCst), 1, "two writes, one upload");
    assert_eq!(c.dirty_count(), 0);

    let c2 = BlockCache::new(mem.clone(), cfg(10));
    c2.write_block(5, Some(block(5))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mem.blocks.lock().get(&5), Some(&block(5)), "uploaded after the write delay by itself");
}

#[tokio::test]
async fn redirty_during_upload_keeps_newer_data() {
    let mem = Arc::new(Mem::default());
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::ZERO, ..cfg(10) });
    mem.hold_writes.store(true, Ordering::SeqCst);
    c.write_block(7, Some(block(1))).await.unwrap();
    // Wait for the upload of version 1 to be in flight.
    for _ in 0..100 {
        if c.shared.state.lock().uploading == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.shared.state.lock().uploading, 1);
    c.write_block(7, Some(block(2))).await.unwrap();
    mem.hold_writes.store(false, Ordering::SeqCst);
    mem.released.notify_waiters();
    c.flush(None).await.unwrap();
    assert_eq!(mem.blocks.lock().get(&7), Some(&block(2)), "the newer version is what is stored");
    assert_eq!(read(&c, 7).await, block(2));
    assert_eq!(mem.writes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failed_uploads_are_retried() {
    let mem = Arc::new(Mem::default());
    mem.fail_writes.store(3, Ordering::SeqCst);
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::ZERO, ..cfg(10) });
    c.write_block(2, Some(block(9))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.flush(None)).await.expect("flush finishes").unwrap();
    assert_eq!(mem.blocks.lock().get(&2), Some(&block(9)));
    assert_eq!(mem.fail_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn writers_wait_when_full_of_dirty_and_at_dirty_limit() {
    for (size, max_dirty) in [(2, 0), (10, 2)] {
        let mem = Arc::new(Mem::default());
        let c = Arc::new(BlockCache::new(
            mem.clone(),
            CacheConfig { write_delay: Duration::from_secs(3600), max_dirty, ..cfg(size) },
        ));
        mem.hold_writes.store(true, Ordering::SeqCst);
        c.write_block(0, Some(block(1))).await.unwrap();
        c.write_block(1, Some(block(2))).await.unwrap();
        let c2 = c.clone();
        let third = tokio::spawn(async move { c2.write_block(2, Some(block(3))).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "size {size} max_dirty {max_dirty}: the third writer waits");
        mem.hold_writes.store(false, Ordering::SeqCst);
        mem.released.notify_waiters();
        third.await.unwrap().unwrap();
        c.flush(None).await.unwrap();
        for (n, b) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(mem.blocks.lock().get(&n), Some(&block(b)));
        }
        assert!(c.shared.state.lock().entries.len() <= size);
    }
}

#[tokio::test]
async fn only_clean_blocks_are_evicted_lru_first() {
    let mem = Arc::new(Mem::default());
    for n in 0..5 {
        mem.blocks.lock().insert(n, block(n as u8 + 1));
    }
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(3) });
    c.write_block(0, Some(block(0xaa))).await.unwrap();
    read(&c, 1).await;
    read(&c, 2).await;
    read(&c, 1).await; // 2 is now least recently used
    read(&c, 3).await; // evicts 2
    let reads = mem.reads.load(Ordering::SeqCst);
    read(&c, 1).await;
    assert_eq!(mem.reads.load(Ordering::SeqCst), reads, "1 still cached");
    read(&c, 2).await;
    assert_eq!(mem.reads.load(Ordering::SeqCst), reads + 1, "2 was evicted");
    assert_eq!(read(&c, 0).await, block(0xaa), "the dirty block was never evicted");
    assert!(mem.blocks.lock().get(&0) == Some(&block(1)));
    c.shutdown().await.unwrap();
    assert_eq!(mem.blocks.lock().get(&0), Some(&block(0xaa)), "shutdown uploads");
}

#[tokio::test]
async fn protected_blocks_go_last() {
    let mem = Arc::new(Mem::default());
    let c = BlockCache::new(mem.clone(), CacheConfig { num_protected: 1, ..cfg(2) });
    read(&c, 0).await;
    read(&c, 5).await;
    read(&c, 6).await; // must evict 5, not the older but protected 0
    let reads = mem.reads.load(Ordering::SeqCst);
    read(&c, 0).await;
    assert_eq!(mem.reads.load(Ordering::SeqCst), reads);
}

#[tokio::test]
async fn zero_writes_delete_and_sync_mode_waits() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(4, block(4));
    let c = BlockCache::new(mem.clone(), CacheConfig { sync: true, write_delay: Duration::ZERO, ..cfg(10) });
    c.write_block(4, Some(Bytes::from(vec![0u8; BS as usize]))).await.unwrap();
    // Sync: the upload is done when the write returns.
    assert_eq!(mem.zero_writes.load(Ordering::SeqCst), 1);
    assert!(!mem.blocks.lock().contains_key(&4));
    assert_eq!(c.read_block(4, ReadCondition::None).await.unwrap(), ReadOutcome::Zero);
    c.write_block(8, Some(block(8))).await.unwrap();
    assert_eq!(mem.blocks.lock().get(&8), Some(&block(8)));
    assert!(c.write_block(9, Some(Bytes::from_static(b"short"))).await.is_err(), "partial block refused");
}

#[tokio::test]
async fn idle_clean_blocks_time_out() {
    let mem = Arc::new(Mem::default());
    let c = BlockCache::new(mem.clone(), CacheConfig { timeout: Some(Duration::from_millis(50)), ..cfg(10) });
    read(&c, 1).await;
    assert_eq!(c.shared.state.lock().entries.len(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.shared.state.lock().entries.len(), 0);
}

#[tokio::test]
async fn read_ahead_fetches_in_parallel_and_counts_as_hits() {
    let mem = Arc::new(Mem::default());
    mem.read_delay_ms.store(20, Ordering::SeqCst);
    let c = BlockCache::new(mem.clone(), CacheConfig { read_ahead: 4, read_ahead_trigger: 2, ..cfg(64) });
    for n in 0..40 {
        read(&c, n).await;
    }
    let (hits, misses) = c.stats().reads();
    assert!(misses <= 6, "read-ahead kept ahead of the reader: {hits} hits, {misses} misses");
    let mut w = s3b_store::StatsWriter::default();
    c.stats().write_stats(&mut w);
    let text = w.into_string();
    let names: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "block_cache_current_size",
            "block_cache_initial_size",
            "block_cache_dirty_ratio",
            "block_cache_read_hits",
            "block_cache_read_misses",
            "block_cache_read_hit_ratio",
            "block_cache_write_hits",
            "block_cache_write_misses",
            "block_cache_write_hit_ratio",
            "block_cache_verified",
            "block_cache_mismatch"
        ]
    );
}

/// Reads for a read-modify-write are cached but start no read-ahead: a writer filling blocks in
/// order would otherwise fetch every block it is about to overwrite. The same reads as plain
/// reads do start it.
#[tokio::test]
async fn reads_for_update_start_no_read_ahead() {
    let mem = Arc::new(Mem::default());
    let c = BlockCache::new(mem.clone(), CacheConfig { read_ahead: 4, read_ahead_trigger: 2, ..cfg(64) });
    for n in 0..20 {
        c.read_for_update(n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mem.reads.load(Ordering::SeqCst), 20, "read-ahead ran for reads for update");
    // Cached: reading them again costs nothing.
    for n in 0..20 {
        read(&c, n).await;
    }
    assert_eq!(mem.reads.load(Ordering::SeqCst), 20);
    // Plain sequential reads of new blocks do fetch ahead (in the background: wait for it).
    for n in 30..40 {
        read(&c, n).await;
    }
    let end = Instant::now() + Duration::from_secs(5);
    while mem.reads.load(Ordering::SeqCst) <= 30 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(mem.reads.load(Ordering::SeqCst) > 30, "no read-ahead for plain reads either");
}

fn bytes(b: u8, len: usize) -> Bytes {
    Bytes::from(vec![b; len])
}

/// Block `base` with `part` written at `off`.
fn merged(base: u8, parts: &[(usize, u8, usize)]) -> Bytes {
    let mut v = vec![base; BS as usize];
    for &(off, b, len) in parts {
        v[off..off + len].fill(b);
    }
    Bytes::from(v)
}

#[tokio::test]
async fn partial_writes_covering_a_block_need_no_read() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    let c = BlockCache::new(mem.clone(), cfg(10));
    c.write_block_part(5, 0, bytes(1, 4)).await.unwrap();
    c.write_block_part(5, 4, bytes(2, 12)).await.unwrap();
    assert_eq!(read(&c, 5).await, merged(0, &[(0, 1, 4), (4, 2, 12)]));
    c.flush(None).await.unwrap();
    assert_eq!(mem.blocks.lock()[&5], merged(0, &[(0, 1, 4), (4, 2, 12)]));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 0, "nothing was read");
    assert_eq!(c.stats().partial_fills(), 0);
}

#[tokio::test]
async fn a_partial_block_is_completed_by_one_read_when_read_or_uploaded() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    mem.blocks.lock().insert(6, block(8));
    let c = BlockCache::new(mem.clone(), cfg(10));
    c.write_block_part(5, 2, bytes(1, 3)).await.unwrap();
    // The written bytes are served without a read.
    assert_eq!(c.read_block_part(5, 2, 3).await.unwrap(), bytes(1, 3));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 0);
    // Others need the stored version: one read, merged under the written bytes.
    assert_eq!(c.read_block_part(5, 0, 4).await.unwrap(), Bytes::from(vec![9, 9, 1, 1]));
    assert_eq!(read(&c, 5).await, merged(9, &[(2, 1, 3)]));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1);
    // Write-back of a block still partial: one read, then the whole block goes up.
    c.write_block_part(6, 10, Bytes::from(vec![0u8; 6])).await.unwrap();
    c.flush(None).await.unwrap();
    assert_eq!(mem.reads.load(Ordering::SeqCst), 2);
    assert_eq!(mem.blocks.lock()[&5], merged(9, &[(2, 1, 3)]));
    assert_eq!(mem.blocks.lock()[&6], merged(8, &[(10, 0, 6)]));
    assert_eq!(c.stats().partial_fills(), 2);
    // A partial write of a block never written before: the rest is zeros.
    c.write_block_part(40, 3, bytes(7, 2)).await.unwrap();
    assert_eq!(read(&c, 40).await, merged(0, &[(3, 7, 2)]));
}

#[tokio::test]
async fn bytes_written_while_the_block_is_being_completed_are_kept() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    mem.read_delay_ms.store(100, Ordering::SeqCst);
    let c = Arc::new(BlockCache::new(mem.clone(), cfg(10)));
    c.write_block_part(5, 0, bytes(1, 4)).await.unwrap();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 5).await })
    };
    // Wait until the completing read is in flight, then write more of the block.
    while mem.reads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    c.write_block_part(5, 8, bytes(2, 4)).await.unwrap();
    let first = reader.await.unwrap();
    assert!(first == merged(9, &[(0, 1, 4)]) || first == merged(9, &[(0, 1, 4), (8, 2, 4)]), "{first:?}");
    assert_eq!(read(&c, 5).await, merged(9, &[(0, 1, 4), (8, 2, 4)]));
    c.flush(None).await.unwrap();
    assert_eq!(mem.blocks.lock()[&5], merged(9, &[(0, 1, 4), (8, 2, 4)]));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scattered_partial_writes_that_end_up_covering_the_block_need_no_read() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    let c = BlockCache::new(mem.clone(), cfg(10));
    // Bytes 0, 2, ..., 14 (8 ranges, the most a block holds), then the gaps.
    for i in 0..8u32 {
        c.write_block_part(5, 2 * i, bytes(1, 1)).await.unwrap();
    }
    for i in 0..8u32 {
        c.write_block_part(5, 2 * i + 1, bytes(2, 1)).await.unwrap();
    }
    let want: Vec<u8> = (0..BS).map(|i| if i % 2 == 0 { 1 } else { 2 }).collect();
    assert_eq!(read(&c, 5).await, Bytes::from(want));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_partial_write_over_an_unverified_reloaded_block_does_not_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = Arc::new(Mem::default());
    {
        let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions { no_verify: true, ..Default::default() }).unwrap());
        let c = BlockCache::with_file(mem.clone(), cfg(8), f);
        c.write_block(5, Some(block(4))).await.unwrap();
        c.shutdown().await.unwrap();
    }
    // The block changed in the store behind the cache's back.
    mem.blocks.lock().insert(5, block(6));
    let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap());
    let c = BlockCache::with_file(mem.clone(), cfg(8), f);
    c.write_block_part(5, 0, bytes(1, 2)).await.unwrap();
    assert_eq!(read(&c, 5).await, merged(6, &[(0, 1, 2)]), "stale cached bytes were used");
}

/// A partial block in the cache file survives a crash as partial: after recovery, its missing
/// bytes come from the store, never zeros.
#[tokio::test]
async fn a_partial_block_is_recovered_as_partial_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    let slow = CacheConfig { write_delay: Duration::from_secs(600), ..cfg(8) };
    {
        let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap());
        let c = BlockCache::with_file(mem.clone(), slow.clone(), f);
        c.write_block_part(5, 4, bytes(1, 4)).await.unwrap();
        c.write_block_part(6, 0, Bytes::from(vec![0u8; 3])).await.unwrap();
        // Crash: dropped without flushing.
    }
    let opts = FileOptions { recover_dirty: true, ..Default::default() };
    let f = Arc::new(CacheFile::open(&p, BS, 8, opts).unwrap());
    assert_eq!(f.dirty_found(), 2);
    f.allow_uploads();
    let c = BlockCache::with_file(mem.clone(), slow, f);
    assert_eq!(c.read_block_part(5, 4, 4).await.unwrap(), bytes(1, 4));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 0);
    assert_eq!(read(&c, 5).await, merged(9, &[(4, 1, 4)]));
    c.shutdown().await.unwrap();
    assert_eq!(mem.blocks.lock()[&5], merged(9, &[(4, 1, 4)]));
    assert!(!mem.blocks.lock().contains_key(&6), "block 6 is zeros (deleted)");
}

/// The default `write_block_part` of a store without a cache is a read-modify-write.
#[tokio::test]
async fn default_write_block_part_is_read_modify_write() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(9));
    mem.write_block_part(5, 3, bytes(1, 2)).await.unwrap();
    assert_eq!(mem.blocks.lock()[&5], merged(9, &[(3, 1, 2)]));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1);
    // Unchanged bytes: nothing written.
    let writes = mem.writes.load(Ordering::SeqCst);
    mem.write_block_part(5, 3, bytes(1, 2)).await.unwrap();
    assert_eq!(mem.writes.load(Ordering::SeqCst), writes);
    let e = mem.write_block_part(5, 15, bytes(1, 2)).await.err().unwrap().to_string();
    assert!(e.contains("pass the end of the block"), "{e}");
    assert_eq!(mem.read_block_part(5, 2, 3).await.unwrap(), Bytes::from(vec![9, 1, 1]));
}

/// The cache full of dirty blocks, every upload slot taken by an upload that does not finish
/// and a writer waiting for room: a read of a block that is not cached still goes to the store
/// at once and comes back, while not one upload has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_miss_is_not_queued_behind_a_full_upload_backlog() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(50, block(50));
    mem.hold_writes.store(true, Ordering::SeqCst);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 4, write_delay: Duration::ZERO, ..cfg(8) }));
    for n in 0..8 {
        c.write_block(n, Some(block(n as u8 + 1))).await.unwrap();
    }
    mem.until_in_flight(4).await;
    // A ninth block: its writer waits for room.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { c.write_block(9, Some(block(9))).await })
    };
    let waiting = async {
        while c.shared.state.lock().space_waiters == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("the ninth writer waits for room");
    assert_eq!(c.dirty_count(), 8);

    let got = tokio::time::timeout(Duration::from_secs(20), read(&c, 50))
        .await
        .expect("a read miss waited for the upload backlog");
    assert_eq!(got, block(50));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1, "one read of the store");
    assert_eq!(mem.writes.load(Ordering::SeqCst), 0, "no upload had finished");
    assert!(!writer.is_finished(), "the writer still waits for room");

    mem.hold_writes.store(false, Ordering::SeqCst);
    mem.released.notify_waiters();
    writer.await.unwrap().unwrap();
    c.flush(None).await.unwrap();
    for n in 0..8u32 {
        assert_eq!(mem.blocks.lock().get(&n), Some(&block(n as u8 + 1)));
    }
    assert_eq!(mem.blocks.lock().get(&9), Some(&block(9)));
}

/// With no reads, uploads fill every one of `threads` slots; a read waiting at the store takes
/// none of them, and uploads go on (and finish) while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_use_every_thread_and_waiting_reads_take_none() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(60, block(60));
    mem.hold_writes.store(true, Ordering::SeqCst);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 8, write_delay: Duration::ZERO, ..cfg(40) }));
    for n in 0..12 {
        c.write_block(n, Some(block(1))).await.unwrap();
    }
    mem.until_in_flight(8).await;
    assert_eq!(c.shared.state.lock().uploading, 8);

    // A read held at the store: the uploads keep their eight slots and stay in flight.
    mem.hold_reads.store(true, Ordering::SeqCst);
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 60).await })
    };
    let at_store = async {
        while mem.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), at_store).await.expect("the read reaches the store");
    assert_eq!(c.shared.state.lock().uploading, 8);
    assert_eq!(mem.writes_in_flight.load(Ordering::SeqCst), 8);

    // Uploads finish while the read is still held, and the next ones start at full width.
    mem.hold_writes.store(false, Ordering::SeqCst);
    mem.released.notify_waiters();
    c.flush(None).await.unwrap();
    assert_eq!(mem.writes.load(Ordering::SeqCst), 12);
    assert_eq!(mem.max_writes_in_flight.load(Ordering::SeqCst), 8);
    assert!(!reader.is_finished());
    mem.hold_reads.store(false, Ordering::SeqCst);
    mem.reads_released.notify_waiters();
    assert_eq!(reader.await.unwrap(), block(60));
}

/// Every upload slot taken by an upload that does not finish: a partial block that comes due is
/// still completed at once (its read does not wait for an upload slot), and uploaded with the
/// stored bytes merged once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_partial_block_is_completed_while_every_upload_slot_is_busy() {
    let mem = Arc::new(Mem::default());
    mem.blocks.lock().insert(5, block(5));
    mem.hold_writes.store(true, Ordering::SeqCst);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 2, write_delay: Duration::ZERO, ..cfg(8) }));
    for n in 0..2 {
        c.write_block(n, Some(block(1))).await.unwrap();
    }
    mem.until_in_flight(2).await;
    c.write_block_part(5, 2, bytes(9, 3)).await.unwrap();
    let completed = async {
        loop {
            let changed = c.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if c.shared.state.lock().entries.get(&5).is_some_and(|e| e.valid.is_none()) {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), completed).await.expect("the partial block was never completed");
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1, "one read completed it");
    assert_eq!(mem.writes_in_flight.load(Ordering::SeqCst), 2, "both upload slots still held");
    assert_eq!(mem.writes.load(Ordering::SeqCst), 0, "no upload had finished");

    mem.hold_writes.store(false, Ordering::SeqCst);
    mem.released.notify_waiters();
    c.flush(None).await.unwrap();
    assert_eq!(mem.blocks.lock().get(&5), Some(&merged(5, &[(2, 9, 3)])));
    assert_eq!(mem.reads.load(Ordering::SeqCst), 1, "the upload did not read it again");
    assert_eq!(c.shared.state.lock().fills_ahead, 0);
}
