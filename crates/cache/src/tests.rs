//! Unit tests of the cache's state machine over the in-memory store of `s3b_store::mock`, with
//! held, delayed and failing operations. Timing runs on tokio's paused clock.

use super::*;
use s3b_store::mock::{Fail, Gate, MemBlocks, Op, elapse};
use s3b_store::{StatsSource, StoreError};

const BS: u32 = 16;

/// The store under the cache: 100 blocks, no ETags.
fn mem() -> Arc<MemBlocks> {
    Arc::new(MemBlocks::new(BS, 100).without_etags())
}

/// Waits until `done` holds, looking again every millisecond; panics after 20 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < end, "never {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn block(b: u8) -> Bytes {
    Bytes::from(vec![b; BS as usize])
}

fn cfg(size: usize) -> CacheConfig {
    CacheConfig { size, write_delay: Duration::from_millis(20), read_ahead: 0, ..CacheConfig::default() }
}

async fn read(c: &BlockCache, n: BlockNum) -> Bytes {
    c.read_block(n, ReadRequest::PLAIN).await.unwrap().into_data(BS)
}

/// A cache of 10 blocks over a store that holds block `n` (contents `block(b)`) and answers
/// every read after `ms` milliseconds.
fn with_slow_reads(n: BlockNum, b: u8, ms: u64) -> (Arc<MemBlocks>, Arc<BlockCache>) {
    let mem = mem();
    mem.put(n, block(b));
    mem.delay(Op::Read, Duration::from_millis(ms));
    let c = Arc::new(BlockCache::new(mem.clone(), cfg(10)));
    (mem, c)
}

#[tokio::test(start_paused = true)]
async fn miss_then_hit_and_one_inner_read_for_concurrent_misses() {
    let (mem, c) = with_slow_reads(3, 3, 50);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { read(&c, 3).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), block(3));
    }
    assert_eq!(mem.calls(Op::Read), 1, "concurrent misses share one inner read");
    assert_eq!(read(&c, 3).await, block(3));
    assert_eq!(mem.calls(Op::Read), 1);
    let (hits, misses) = c.stats().reads();
    assert_eq!((hits, misses), (8, 1));
}

#[tokio::test(start_paused = true)]
async fn write_back_after_delay_and_flush() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(10) });
    c.write_block(1, BlockData::new(block(1))).await.unwrap();
    c.write_block(1, BlockData::new(block(2))).await.unwrap();
    assert_eq!(read(&c, 1).await, block(2), "reads see the cached write");
    elapse(Duration::from_secs(3599)).await;
    assert_eq!(mem.ok(Op::Write), 0, "not uploaded before the delay");
    c.flush(Some(&[1])).await.unwrap();
    assert_eq!(mem.get(1), Some(block(2)));
    assert_eq!(mem.ok(Op::Write), 1, "two writes, one upload");
    assert_eq!(c.dirty_count(), 0);

    let c2 = BlockCache::new(mem.clone(), cfg(10));
    c2.write_block(5, BlockData::new(block(5))).await.unwrap();
    elapse(Duration::from_millis(10)).await;
    assert_eq!(mem.get(5), None, "not uploaded before the write delay");
    elapse(Duration::from_millis(290)).await;
    assert_eq!(mem.get(5), Some(block(5)), "uploaded after the write delay by itself");
}

#[tokio::test]
async fn redirty_during_upload_keeps_newer_data() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::ZERO, ..cfg(10) });
    let uploads = mem.hold(Op::Write);
    c.write_block(7, BlockData::new(block(1))).await.unwrap();
    // Wait for the upload of version 1 to be in flight.
    uploads.arrived(1).await;
    assert_eq!(c.shared.state.lock().in_flight.uploads, 1);
    c.write_block(7, BlockData::new(block(2))).await.unwrap();
    uploads.release();
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(7), Some(block(2)), "the newer version is what is stored");
    assert_eq!(read(&c, 7).await, block(2));
    assert_eq!(mem.ok(Op::Write), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_uploads_are_retried() {
    let mem = mem();
    mem.fail(Op::Write, Fail::Next(3));
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::ZERO, ..cfg(10) });
    c.write_block(2, BlockData::new(block(9))).await.unwrap();
    // A flush does not wait for the store to come back: each one returns the error of the
    // attempt that failed while it waited. The block stays dirty and readable, its upload is
    // retried after a pause, and the flush after the last failure succeeds.
    for attempt in 1..=3 {
        let r = tokio::time::timeout(Duration::from_secs(10), c.flush(None)).await.expect("flush finishes");
        assert!(injected_upload_failure(&r), "flush during failed attempt {attempt}: {r:?}");
        assert_eq!(c.dirty_count(), 1, "dirty after failed attempt {attempt}");
        assert_eq!(read(&c, 2).await, block(9));
        assert_eq!(mem.get(2), None);
    }
    tokio::time::timeout(Duration::from_secs(10), c.flush(None)).await.expect("flush finishes").unwrap();
    assert_eq!(mem.get(2), Some(block(9)));
    assert_eq!(mem.count(Op::Write).failed, 3, "every injected failure was met");
    assert_eq!(c.dirty_count(), 0);
}

/// A flush's error for an upload that met an injected failure.
fn injected_upload_failure(r: &Result<()>) -> bool {
    matches!(r, Err(StoreError::UploadFailed { source, .. }) if matches!(**source, StoreError::Injected))
}

#[tokio::test]
async fn shutdown_waits_out_failing_uploads() {
    let mem = mem();
    mem.fail(Op::Write, Fail::Next(3));
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::ZERO, ..cfg(10) });
    c.write_block(4, BlockData::new(block(5))).await.unwrap();
    // Unlike a flush, shutdown (unmount) never gives up on dirty data.
    tokio::time::timeout(Duration::from_secs(10), c.shutdown()).await.expect("shutdown finishes").unwrap();
    assert_eq!(mem.get(4), Some(block(5)));
    assert_eq!(mem.count(Op::Write).failed, 3);
}

#[tokio::test]
async fn a_flush_of_other_blocks_is_not_failed_by_a_failing_upload() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(10) });
    c.write_block(1, BlockData::new(block(1))).await.unwrap();
    c.flush(Some(&[1])).await.unwrap();
    c.write_block(2, BlockData::new(block(2))).await.unwrap();
    mem.fail(Op::Write, Fail::Next(1));
    assert!(injected_upload_failure(&c.flush(Some(&[2])).await));
    // Block 1 is clean: nothing to wait for, so block 2's failure is not its business.
    c.write_block(1, BlockData::new(block(3))).await.unwrap();
    c.flush(Some(&[1])).await.unwrap();
    assert_eq!(mem.get(1), Some(block(3)));
    c.flush(Some(&[2])).await.unwrap();
    assert_eq!(mem.get(2), Some(block(2)));
}

#[tokio::test(start_paused = true)]
async fn writers_wait_when_full_of_dirty_and_at_dirty_limit() {
    for (size, max_dirty) in [(2, 0), (10, 2)] {
        let mem = mem();
        let c = Arc::new(BlockCache::new(
            mem.clone(),
            CacheConfig { write_delay: Duration::from_secs(3600), max_dirty, ..cfg(size) },
        ));
        let uploads = mem.hold(Op::Write);
        c.write_block(0, BlockData::new(block(1))).await.unwrap();
        c.write_block(1, BlockData::new(block(2))).await.unwrap();
        let c2 = c.clone();
        let third = tokio::spawn(async move { c2.write_block(2, BlockData::new(block(3))).await });
        until("the third writer waits for room", || c.shared.state.lock().waiters.room == 1).await;
        elapse(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "size {size} max_dirty {max_dirty}: the third writer waits");
        uploads.release();
        third.await.unwrap().unwrap();
        c.flush(None).await.unwrap();
        for (n, b) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(mem.get(n), Some(block(b)));
        }
        assert!(c.shared.state.lock().entries.len() <= size);
    }
}

#[tokio::test]
async fn only_clean_blocks_are_evicted_lru_first() {
    let mem = mem();
    for n in 0..5 {
        mem.put(n, block(u8::try_from(n).unwrap() + 1));
    }
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(3) });
    c.write_block(0, BlockData::new(block(0xaa))).await.unwrap();
    read(&c, 1).await;
    read(&c, 2).await;
    read(&c, 1).await; // 2 is now least recently used
    read(&c, 3).await; // evicts 2
    let reads = mem.calls(Op::Read);
    read(&c, 1).await;
    assert_eq!(mem.calls(Op::Read), reads, "1 still cached");
    read(&c, 2).await;
    assert_eq!(mem.calls(Op::Read), reads + 1, "2 was evicted");
    assert_eq!(read(&c, 0).await, block(0xaa), "the dirty block was never evicted");
    assert!(mem.get(0) == Some(block(1)));
    c.shutdown().await.unwrap();
    assert_eq!(mem.get(0), Some(block(0xaa)), "shutdown uploads");
}

#[tokio::test]
async fn protected_blocks_go_last() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { num_protected: 1, ..cfg(2) });
    read(&c, 0).await;
    read(&c, 5).await;
    read(&c, 6).await; // must evict 5, not the older but protected 0
    let reads = mem.calls(Op::Read);
    read(&c, 0).await;
    assert_eq!(mem.calls(Op::Read), reads);
}

#[tokio::test]
async fn zero_writes_delete_and_sync_mode_waits() {
    let mem = mem();
    mem.put(4, block(4));
    let c = BlockCache::new(mem.clone(), CacheConfig { sync: true, write_delay: Duration::ZERO, ..cfg(10) });
    c.write_block(4, BlockData::new(Bytes::from(vec![0u8; BS as usize]))).await.unwrap();
    // Sync: the upload is done when the write returns.
    assert_eq!(mem.deletes(), 1);
    assert!(mem.get(4).is_none());
    assert_eq!(c.read_block(4, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
    c.write_block(8, BlockData::new(block(8))).await.unwrap();
    assert_eq!(mem.get(8), Some(block(8)));
    assert!(c.write_block(9, BlockData::new(Bytes::from_static(b"short"))).await.is_err(), "partial block refused");
}

#[tokio::test(start_paused = true)]
async fn idle_clean_blocks_time_out() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { timeout: Some(Duration::from_millis(50)), ..cfg(10) });
    read(&c, 1).await;
    assert_eq!(c.shared.state.lock().entries.len(), 1);
    elapse(Duration::from_millis(40)).await;
    assert_eq!(c.shared.state.lock().entries.len(), 1, "not idle long enough yet");
    elapse(Duration::from_millis(660)).await;
    assert_eq!(c.shared.state.lock().entries.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn read_ahead_fetches_in_parallel_and_counts_as_hits() {
    let mem = mem();
    mem.delay(Op::Read, Duration::from_millis(20));
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
#[tokio::test(start_paused = true)]
async fn reads_for_update_start_no_read_ahead() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { read_ahead: 4, read_ahead_trigger: 2, ..cfg(64) });
    for n in 0..20 {
        c.read_block(n, ReadRequest::FOR_UPDATE).await.unwrap();
    }
    elapse(Duration::from_millis(50)).await;
    assert_eq!(mem.calls(Op::Read), 20, "read-ahead ran for reads for update");
    // Cached: reading them again costs nothing.
    for n in 0..20 {
        read(&c, n).await;
    }
    assert_eq!(mem.calls(Op::Read), 20);
    // Plain sequential reads of new blocks do fetch ahead (in the background: wait for it).
    for n in 30..40 {
        read(&c, n).await;
    }
    mem.wait_until("read-ahead for plain reads either", |c| c[Op::Read].calls > 30).await;
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
    let mem = mem();
    mem.put(5, block(9));
    let c = BlockCache::new(mem.clone(), cfg(10));
    c.write_block_part(5, 0, bytes(1, 4)).await.unwrap();
    c.write_block_part(5, 4, bytes(2, 12)).await.unwrap();
    assert_eq!(read(&c, 5).await, merged(0, &[(0, 1, 4), (4, 2, 12)]));
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(5).unwrap(), merged(0, &[(0, 1, 4), (4, 2, 12)]));
    assert_eq!(mem.calls(Op::Read), 0, "nothing was read");
    assert_eq!(c.stats().partial_fills(), 0);
}

#[tokio::test]
async fn a_partial_block_is_completed_by_one_read_when_read_or_uploaded() {
    let mem = mem();
    mem.put(5, block(9));
    mem.put(6, block(8));
    let c = BlockCache::new(mem.clone(), cfg(10));
    c.write_block_part(5, 2, bytes(1, 3)).await.unwrap();
    // The written bytes are served without a read.
    assert_eq!(c.read_block_part(5, 2, 3).await.unwrap(), bytes(1, 3));
    assert_eq!(mem.calls(Op::Read), 0);
    // Others need the stored version: one read, merged under the written bytes.
    assert_eq!(c.read_block_part(5, 0, 4).await.unwrap(), Bytes::from(vec![9, 9, 1, 1]));
    assert_eq!(read(&c, 5).await, merged(9, &[(2, 1, 3)]));
    assert_eq!(mem.calls(Op::Read), 1);
    // Write-back of a block still partial: one read, then the whole block goes up.
    c.write_block_part(6, 10, Bytes::from(vec![0u8; 6])).await.unwrap();
    c.flush(None).await.unwrap();
    assert_eq!(mem.calls(Op::Read), 2);
    assert_eq!(mem.get(5).unwrap(), merged(9, &[(2, 1, 3)]));
    assert_eq!(mem.get(6).unwrap(), merged(8, &[(10, 0, 6)]));
    assert_eq!(c.stats().partial_fills(), 2);
    // A partial write of a block never written before: the rest is zeros.
    c.write_block_part(40, 3, bytes(7, 2)).await.unwrap();
    assert_eq!(read(&c, 40).await, merged(0, &[(3, 7, 2)]));
}

#[tokio::test(start_paused = true)]
async fn bytes_written_while_the_block_is_being_completed_are_kept() {
    let (mem, c) = with_slow_reads(5, 9, 100);
    c.write_block_part(5, 0, bytes(1, 4)).await.unwrap();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 5).await })
    };
    // Wait until the completing read is in flight, then write more of the block.
    mem.wait_until("the completing read in flight", |c| c[Op::Read].in_flight == 1).await;
    c.write_block_part(5, 8, bytes(2, 4)).await.unwrap();
    let first = reader.await.unwrap();
    assert!(first == merged(9, &[(0, 1, 4)]) || first == merged(9, &[(0, 1, 4), (8, 2, 4)]), "{first:?}");
    assert_eq!(read(&c, 5).await, merged(9, &[(0, 1, 4), (8, 2, 4)]));
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(5).unwrap(), merged(9, &[(0, 1, 4), (8, 2, 4)]));
    assert_eq!(mem.calls(Op::Read), 1);
}

#[tokio::test]
async fn a_completing_read_that_arrives_late_does_not_complete_a_newer_partial_block() {
    let mem = mem();
    mem.put(5, block(9));
    // Two blocks of room (one dirty block is no pressure to upload early): reading two others
    // evicts block 5 once it is clean.
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(2) }));
    c.write_block_part(5, 0, bytes(1, 4)).await.unwrap();
    // A reader completes the partial block: its read takes the stored version (9s) at once and
    // is held with it.
    let late = mem.hold_answers(Op::Read, 5);
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 5).await })
    };
    late.arrived(1).await;
    // Meanwhile the block is written whole, stored, evicted and written in part again.
    c.write_block(5, BlockData::new(block(2))).await.unwrap();
    c.flush(Some(&[5])).await.unwrap();
    assert_eq!(mem.get(5), Some(block(2)));
    assert_eq!(read(&c, 6).await, block(0));
    assert_eq!(read(&c, 7).await, block(0));
    assert!(!c.shared.state.lock().entries.contains_key(&5), "block 5 was evicted");
    c.write_block_part(5, 8, bytes(3, 4)).await.unwrap();
    // The old answer arrives: the new partial block is completed from the version stored now.
    late.release();
    assert_eq!(reader.await.unwrap(), merged(2, &[(8, 3, 4)]));
    assert_eq!(read(&c, 5).await, merged(2, &[(8, 3, 4)]));
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(5).unwrap(), merged(2, &[(8, 3, 4)]));
}

#[tokio::test(start_paused = true)]
async fn a_flush_that_saw_a_block_dirty_is_over_once_it_was_stored_evicted_and_cached_again() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(1) });
    c.write_block(5, BlockData::new(block(2))).await.unwrap();
    // What a flush starting now waits for: block 5 at its current generation.
    let targets = c.shared.dirty_targets(Some(&[5]));
    assert_eq!(targets.len(), 1);
    // Before that flush looks again, the block is stored, evicted and read back in.
    c.flush(Some(&[5])).await.unwrap();
    assert_eq!(read(&c, 6).await, block(0));
    assert_eq!(read(&c, 5).await, block(2));
    // The waiting flush is over: what it waited for is stored.
    tokio::time::timeout(Duration::from_secs(3600), c.shared.wait_uploaded(&targets))
        .await
        .expect("a flush waited for a generation the block already had in the store");
}

#[tokio::test]
async fn scattered_partial_writes_that_end_up_covering_the_block_need_no_read() {
    let mem = mem();
    mem.put(5, block(9));
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
    assert_eq!(mem.calls(Op::Read), 0);
}

#[tokio::test]
async fn a_partial_write_over_an_unverified_reloaded_block_does_not_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = mem();
    {
        let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions { no_verify: true, ..Default::default() }).unwrap());
        let c = BlockCache::with_file(mem.clone(), cfg(8), f);
        c.write_block(5, BlockData::new(block(4))).await.unwrap();
        c.shutdown().await.unwrap();
    }
    // The block changed in the store behind the cache's back.
    mem.put(5, block(6));
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
    let mem = mem();
    mem.put(5, block(9));
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
    assert_eq!(mem.calls(Op::Read), 0);
    assert_eq!(read(&c, 5).await, merged(9, &[(4, 1, 4)]));
    c.shutdown().await.unwrap();
    assert_eq!(mem.get(5).unwrap(), merged(9, &[(4, 1, 4)]));
    assert!(mem.get(6).is_none(), "block 6 is zeros (deleted)");
    assert_eq!(mem.deletes(), 1, "block 6 went down as a delete");
}

/// The default `write_block_part` of a store without a cache is a read-modify-write.
#[tokio::test]
async fn default_write_block_part_is_read_modify_write() {
    let mem = mem();
    mem.put(5, block(9));
    mem.write_block_part(5, 3, bytes(1, 2)).await.unwrap();
    assert_eq!(mem.get(5).unwrap(), merged(9, &[(3, 1, 2)]));
    assert_eq!(mem.calls(Op::Read), 1);
    // Unchanged bytes: nothing written.
    let writes = mem.ok(Op::Write);
    mem.write_block_part(5, 3, bytes(1, 2)).await.unwrap();
    assert_eq!(mem.ok(Op::Write), writes);
    let e = mem.write_block_part(5, 15, bytes(1, 2)).await.err().unwrap().to_string();
    assert!(e.contains("pass the end of the block"), "{e}");
    assert_eq!(mem.read_block_part(5, 2, 3).await.unwrap(), Bytes::from(vec![9, 1, 1]));
}

/// The cache full of dirty blocks, every upload slot taken by an upload that does not finish
/// and a writer waiting for room: a read of a block that is not cached still goes to the store
/// at once and comes back, while not one upload has finished.
/// A cache of `size` blocks with `threads` upload slots, over a store that holds block `n`
/// (contents `block(n)`) and keeps every upload waiting at the gate returned.
fn with_uploads_held(threads: usize, size: usize, n: BlockNum) -> (Arc<MemBlocks>, Arc<Gate>, Arc<BlockCache>) {
    let mem = mem();
    mem.put(n, block(u8::try_from(n).unwrap()));
    let uploads = mem.hold(Op::Write);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads, write_delay: Duration::ZERO, ..cfg(size) }));
    (mem, uploads, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_miss_is_not_queued_behind_a_full_upload_backlog() {
    let (mem, uploads, c) = with_uploads_held(4, 8, 50);
    for n in 0..8 {
        c.write_block(n, BlockData::new(block(u8::try_from(n).unwrap() + 1))).await.unwrap();
    }
    mem.wait_until("4 uploads in flight", |c| c[Op::Write].in_flight == 4).await;
    // A ninth block: its writer waits for room.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { c.write_block(9, BlockData::new(block(9))).await })
    };
    let waiting = async {
        while c.shared.state.lock().waiters.room == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("the ninth writer waits for room");
    assert_eq!(c.dirty_count(), 8);

    let got = tokio::time::timeout(Duration::from_secs(20), read(&c, 50))
        .await
        .expect("a read miss waited for the upload backlog");
    assert_eq!(got, block(50));
    assert_eq!(mem.calls(Op::Read), 1, "one read of the store");
    assert_eq!(mem.ok(Op::Write), 0, "no upload had finished");
    assert!(!writer.is_finished(), "the writer still waits for room");

    uploads.release();
    writer.await.unwrap().unwrap();
    c.flush(None).await.unwrap();
    for n in 0..8u32 {
        assert_eq!(mem.get(n), Some(block(u8::try_from(n).unwrap() + 1)));
    }
    assert_eq!(mem.get(9), Some(block(9)));
}

/// With no reads, uploads fill every one of `threads` slots; a read waiting at the store takes
/// none of them, and uploads go on (and finish) while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_use_every_thread_and_waiting_reads_take_none() {
    let (mem, uploads, c) = with_uploads_held(8, 40, 60);
    for n in 0..12 {
        c.write_block(n, BlockData::new(block(1))).await.unwrap();
    }
    mem.wait_until("8 uploads in flight", |c| c[Op::Write].in_flight == 8).await;
    assert_eq!(c.shared.state.lock().in_flight.uploads, 8);

    // A read held at the store: the uploads keep their eight slots and stay in flight.
    let reads = mem.hold(Op::Read);
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 60).await })
    };
    reads.arrived(1).await;
    assert_eq!(c.shared.state.lock().in_flight.uploads, 8);
    assert_eq!(mem.count(Op::Write).in_flight, 8);

    // Uploads finish while the read is still held, and the next ones start at full width.
    uploads.release();
    c.flush(None).await.unwrap();
    assert_eq!(mem.ok(Op::Write), 12);
    assert_eq!(mem.count(Op::Write).max_in_flight, 8);
    assert!(!reader.is_finished());
    reads.release();
    assert_eq!(reader.await.unwrap(), block(60));
}

/// A reader that stops waiting (its future dropped while the read is at the store) leaves no
/// entry loading: the load finishes in its own task, and the next read of the block is served.
#[tokio::test]
async fn a_dropped_read_leaves_no_entry_loading() {
    let mem = mem();
    mem.put(5, block(5));
    let c = Arc::new(BlockCache::new(mem.clone(), cfg(10)));
    let reads = mem.hold(Op::Read);
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { read(&c, 5).await })
    };
    reads.arrived(1).await;
    reader.abort();
    assert!(reader.await.unwrap_err().is_cancelled());
    reads.release();
    let again = tokio::time::timeout(Duration::from_secs(20), read(&c, 5)).await;
    assert_eq!(again.expect("a later read is not stuck behind the dropped one"), block(5));
    assert_eq!(mem.calls(Op::Read), 1, "the dropped read's load served the later read");
}

/// A writer cancelled while it waits for room does not leave the cache believing writers
/// still wait (which would hurry every later upload).
#[tokio::test]
async fn a_cancelled_writer_does_not_stay_counted() {
    let mem = mem();
    let uploads = mem.hold(Op::Write);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 1, ..cfg(2) }));
    c.write_block(0, BlockData::new(block(1))).await.unwrap();
    c.write_block(1, BlockData::new(block(1))).await.unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { c.write_block(2, BlockData::new(block(2))).await })
    };
    until("the writer waits for room", || c.shared.state.lock().waiters.room == 1).await;
    writer.abort();
    assert!(writer.await.unwrap_err().is_cancelled());
    assert_eq!(c.shared.state.lock().waiters.room, 0);
    uploads.release();
    c.flush(None).await.unwrap();
}

/// Every upload slot taken by an upload that does not finish: a partial block that comes due is
/// still completed at once (its read does not wait for an upload slot), and uploaded with the
/// stored bytes merged once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_partial_block_is_completed_while_every_upload_slot_is_busy() {
    let mem = mem();
    mem.put(5, block(5));
    let uploads = mem.hold(Op::Write);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 2, write_delay: Duration::ZERO, ..cfg(8) }));
    for n in 0..2 {
        c.write_block(n, BlockData::new(block(1))).await.unwrap();
    }
    mem.wait_until("2 uploads in flight", |c| c[Op::Write].in_flight == 2).await;
    c.write_block_part(5, 2, bytes(9, 3)).await.unwrap();
    let completed = async {
        loop {
            let changed = c.shared.next_change();
            if c.shared.state.lock().entries.get(&5).is_some_and(|e| e.partial().is_none()) {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), completed).await.expect("the partial block was never completed");
    assert_eq!(mem.calls(Op::Read), 1, "one read completed it");
    assert_eq!(mem.count(Op::Write).in_flight, 2, "both upload slots still held");
    assert_eq!(mem.ok(Op::Write), 0, "no upload had finished");

    uploads.release();
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(5), Some(merged(5, &[(2, 9, 3)])));
    assert_eq!(mem.calls(Op::Read), 1, "the upload did not read it again");
    assert_eq!(c.shared.state.lock().in_flight.fills, 0);
}

/// Waits until `done` holds without letting the paused clock move: only other tasks run
/// meanwhile (a bounded number of turns), so what `done` waits for happens "at once".
async fn at_once(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    for _ in 0..10_000 {
        if done() {
            assert_eq!(Instant::now(), t, "{what}: the clock moved");
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not at once");
}

/// The block whose upload is in flight now (at most one with one upload thread).
fn uploading(c: &BlockCache) -> Vec<BlockNum> {
    let st = c.shared.state.lock();
    let mut v: Vec<BlockNum> = st
        .dirty_blocks()
        .filter(|n| st.entries.get(n).and_then(|e| e.dirty()).is_some_and(|d| d.upload.in_flight))
        .collect();
    v.sort_unstable();
    v
}

/// Waits (on the paused clock, without letting time pass beyond `limit`) until the uploads in
/// flight are `want`.
async fn until_uploading(c: &BlockCache, want: &[BlockNum], limit: Duration) {
    let end = Instant::now() + limit;
    while uploading(c) != want {
        assert!(Instant::now() < end, "uploading {:?}, not {want:?}", uploading(c));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

/// With one upload thread, dirty blocks go up in the order they come due, each no sooner than
/// the write delay after it turned dirty, and a block somebody flushes goes first, before
/// blocks not due yet.
#[tokio::test(start_paused = true)]
async fn uploads_start_in_due_order_and_a_flushed_block_jumps_the_queue() {
    let mem = mem();
    let uploads = mem.hold(Op::Write);
    let c = Arc::new(BlockCache::new(
        mem.clone(),
        CacheConfig { threads: 1, write_delay: Duration::from_millis(100), ..cfg(20) },
    ));
    let t0 = Instant::now();
    for (i, n) in [5, 3, 8, 1].into_iter().enumerate() {
        tokio::time::sleep_until(t0 + Duration::from_millis(10 * i as u64)).await;
        c.write_block(n, BlockData::new(block(7))).await.unwrap();
    }
    tokio::time::sleep_until(t0 + Duration::from_millis(99)).await;
    assert_eq!(uploading(&c), Vec::<BlockNum>::new(), "nothing before its write delay");
    until_uploading(&c, &[5], Duration::from_millis(2)).await;
    // At 100 ms: 3 (due at 110), 8 (120) and 1 (130) are not due yet; a flush of 1 makes it
    // due now, so it goes up next.
    let flush = tokio::spawn({
        let c = c.clone();
        async move { c.flush(Some(&[1])).await }
    });
    tokio::task::yield_now().await;
    uploads.allow(1);
    until_uploading(&c, &[1], Duration::from_millis(1)).await;
    uploads.allow(1);
    flush.await.unwrap().unwrap();
    until_uploading(&c, &[], Duration::from_millis(1)).await;
    // Then the others, each at its time.
    until_uploading(&c, &[3], Duration::from_millis(15)).await;
    assert!(Instant::now() >= t0 + Duration::from_millis(110));
    uploads.allow(1);
    until_uploading(&c, &[8], Duration::from_millis(15)).await;
    assert!(Instant::now() >= t0 + Duration::from_millis(120));
    uploads.release();
    c.flush(None).await.unwrap();
    assert_eq!(mem.ok(Op::Write), 4);
}

/// Write-back is woken by the event that makes blocks due, not by a periodic look: the cache
/// filling up with dirty blocks starts uploads at once, though their write delay is an hour.
#[tokio::test(start_paused = true)]
async fn a_cache_filling_with_dirty_blocks_starts_uploads_at_once() {
    let mem = mem();
    let c = BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_secs(3600), ..cfg(10) });
    for n in 0..8 {
        c.write_block(n, BlockData::new(block(1))).await.unwrap();
    }
    elapse(Duration::from_millis(100)).await;
    assert_eq!(mem.ok(Op::Write), 0, "8 of 10 dirty: below the pressure threshold, nothing due");
    c.write_block(8, BlockData::new(block(1))).await.unwrap();
    // 9 of 10: uploads start now, with no time passing on the paused clock.
    at_once("uploads of 9 blocks", || mem.ok(Op::Write) == 9).await;
}

/// Recovered dirty blocks wait for the mount token check, then go up as soon as uploads are
/// allowed (no time passes in between on the paused clock).
#[tokio::test(start_paused = true)]
async fn recovered_dirty_blocks_go_up_when_uploads_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = mem();
    let slow = CacheConfig { write_delay: Duration::ZERO, ..cfg(8) };
    {
        let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap());
        let c = BlockCache::with_file(mem.clone(), CacheConfig { write_delay: Duration::from_secs(600), ..cfg(8) }, f);
        c.write_block(2, BlockData::new(block(4))).await.unwrap();
        // Crash: dropped without flushing.
    }
    let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions { recover_dirty: true, ..Default::default() }).unwrap());
    let c = BlockCache::with_file(mem.clone(), slow, f.clone());
    elapse(Duration::from_secs(5)).await;
    assert_eq!(mem.get(2), None, "not before the token check");
    f.allow_uploads();
    at_once("the recovered block uploaded once allowed", || mem.get(2).is_some()).await;
    assert_eq!(mem.get(2), Some(block(4)));
    c.shutdown().await.unwrap();
}

/// A due partial block a reader is completing is set aside, and uploaded as soon as that read
/// ends (the read answers after 30 ms; the upload follows within a millisecond).
#[tokio::test(start_paused = true)]
async fn a_due_partial_block_a_reader_completes_goes_up_when_the_read_ends() {
    let mem = mem();
    mem.put(5, block(5));
    let reads = mem.hold(Op::Read);
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { write_delay: Duration::from_millis(10), ..cfg(8) }));
    c.write_block_part(5, 2, bytes(9, 3)).await.unwrap();
    let reader = tokio::spawn({
        let c = c.clone();
        async move { read(&c, 5).await }
    });
    reads.arrived(1).await;
    elapse(Duration::from_millis(50)).await;
    assert_eq!(mem.calls(Op::Read), 1, "the scheduler does not read it again");
    assert_eq!(mem.ok(Op::Write), 0, "not uploaded while partial");
    reads.release();
    assert_eq!(reader.await.unwrap(), merged(5, &[(2, 9, 3)]));
    at_once("the completed block uploaded", || mem.ok(Op::Write) == 1).await;
    assert_eq!(mem.get(5), Some(merged(5, &[(2, 9, 3)])));
    assert_eq!(mem.calls(Op::Read), 1);
}

/// Concurrent writes of the same blocks with a cache file: the file's records are written
/// outside the state lock, yet after a crash each block's recovered version is the one the
/// cache held last, and each block has one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_recover_the_newest_version_from_the_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = mem();
    let slow = CacheConfig { write_delay: Duration::from_secs(600), ..cfg(8) };
    let last = {
        let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap());
        let c = Arc::new(BlockCache::with_file(mem.clone(), slow.clone(), f));
        for round in 0..20u8 {
            // Two writers per block, racing.
            let writers: Vec<_> = (0..4u8)
                .map(|t| {
                    let c = c.clone();
                    let data = block(round * 4 + t + 1);
                    tokio::spawn(async move { c.write_block(u32::from(t % 2), BlockData::new(data)).await })
                })
                .collect();
            for w in writers {
                w.await.unwrap().unwrap();
            }
        }
        [read(&c, 0).await, read(&c, 1).await]
        // Crash: dropped without flushing.
    };
    let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions { recover_dirty: true, ..Default::default() }).unwrap());
    assert_eq!(f.dirty_found(), 2, "one record per block");
    f.allow_uploads();
    let c = BlockCache::with_file(mem.clone(), slow, f);
    c.shutdown().await.unwrap();
    assert_eq!([mem.get(0), mem.get(1)], last.map(Some));
}

/// A miss while the link is idle fetches the next `--readAhead` blocks beside it (so a file
/// system's next dependent reads nearby hit); a miss while an upload is in flight fetches only
/// itself.
#[tokio::test(start_paused = true)]
async fn a_miss_on_an_idle_link_fetches_its_neighbours() {
    let mem = mem();
    for n in 0..40 {
        mem.put(n, block(u8::try_from(n).unwrap()));
    }
    let c = BlockCache::new(
        mem.clone(),
        CacheConfig { read_ahead: 3, read_ahead_trigger: 100, write_delay: Duration::ZERO, ..cfg(50) },
    );
    assert_eq!(read(&c, 5).await, block(5));
    until("the neighbours are fetched", || mem.ok(Op::Read) == 4).await;
    for n in [7, 6, 8] {
        assert_eq!(read(&c, n).await, block(u8::try_from(n).unwrap()));
    }
    assert_eq!(mem.calls(Op::Read), 4, "6, 7 and 8 were hits");
    let uploads = mem.hold(Op::Write);
    c.write_block(30, BlockData::new(block(1))).await.unwrap();
    uploads.arrived(1).await;
    assert_eq!(read(&c, 20).await, block(20));
    elapse(Duration::from_millis(100)).await;
    assert_eq!(mem.calls(Op::Read), 5, "with an upload in flight, only the miss itself");
    uploads.release();
    c.flush(None).await.unwrap();
}

/// With a cache file, a block's data lives in the file only once its record there is current:
/// hits (dirty and clean) and the upload read it from the slot, and give the right bytes.
#[tokio::test]
async fn with_a_cache_file_block_data_is_kept_in_the_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = mem();
    let f = Arc::new(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap());
    let c = BlockCache::with_file(mem.clone(), CacheConfig { write_delay: Duration::from_secs(600), ..cfg(8) }, f);
    let in_file = |c: &BlockCache, n| {
        matches!(c.shared.state.lock().entries.get(&n).map(|e| &e.data), Some(file::Held::File { .. }))
    };
    c.write_block(1, BlockData::new(block(1))).await.unwrap();
    c.write_block(2, None).await.unwrap();
    assert!(in_file(&c, 1), "dirty data in the file only");
    assert_eq!(read(&c, 1).await, block(1));
    assert_eq!(read(&c, 2).await, block(0));
    c.flush(None).await.unwrap();
    assert_eq!(mem.get(1), Some(block(1)), "uploaded from the file");
    assert!(in_file(&c, 1), "clean data in the file only");
    // A partial write over data in the file only reads it from there.
    c.write_block_part(1, 2, bytes(7, 3)).await.unwrap();
    assert_eq!(read(&c, 1).await, merged(1, &[(2, 7, 3)]));
    assert_eq!(mem.calls(Op::Read), 0);
    c.shutdown().await.unwrap();
    assert_eq!(mem.get(1), Some(merged(1, &[(2, 7, 3)])));
}

/// A clean block whose data in the cache file was damaged (found when first read, as the open
/// reads no clean data) is dropped and read from the store, never served.
#[tokio::test]
async fn a_damaged_slot_is_read_from_the_store_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache");
    let mem = mem();
    let no_verify = FileOptions { no_verify: true, ..Default::default() };
    {
        let f = Arc::new(CacheFile::open(&p, BS, 8, no_verify).unwrap());
        let c = BlockCache::with_file(mem.clone(), cfg(8), f);
        c.write_block(3, BlockData::new(block(3))).await.unwrap();
        c.shutdown().await.unwrap();
    }
    // Every slot's data overwritten (the data starts at 4096 for 8 slots).
    {
        use std::os::unix::fs::FileExt;
        let raw = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        raw.write_all_at(&[0xee; 8 * BS as usize], 4096).unwrap();
    }
    let f = Arc::new(CacheFile::open(&p, BS, 8, no_verify).unwrap());
    let c = BlockCache::with_file(mem.clone(), cfg(8), f);
    assert_eq!(read(&c, 3).await, block(3));
    assert_eq!(mem.calls(Op::Read), 1, "read from the store");
    assert_eq!(read(&c, 3).await, block(3));
    c.shutdown().await.unwrap();
}

/// While a foreground read (a miss) is in flight, write-back starts uploads on only half its
/// threads; when the read ends, the rest start at once.
#[tokio::test(start_paused = true)]
async fn uploads_leave_room_for_a_foreground_read() {
    let mem = mem();
    mem.put(50, block(5));
    let c = Arc::new(BlockCache::new(mem.clone(), CacheConfig { threads: 4, write_delay: Duration::ZERO, ..cfg(20) }));
    let reads = mem.hold(Op::Read);
    let uploads = mem.hold(Op::Write);
    let reader = tokio::spawn({
        let c = c.clone();
        async move { read(&c, 50).await }
    });
    reads.arrived(1).await;
    for n in 0..8 {
        c.write_block(n, BlockData::new(block(1))).await.unwrap();
    }
    elapse(Duration::from_millis(100)).await;
    assert_eq!(mem.calls(Op::Write), 2, "half the threads while the read is in flight");
    reads.release();
    assert_eq!(reader.await.unwrap(), block(5));
    uploads.arrived(4).await;
    assert_eq!(mem.calls(Op::Write), 4, "all the threads once it ended");
    uploads.release();
    c.flush(None).await.unwrap();
    assert_eq!(mem.ok(Op::Write), 8);
}
