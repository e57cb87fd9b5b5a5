//! Property test: the block cache over a slow, failing store behaves like a flat array of
//! blocks, across flushes, clean restarts and crashes, with and without a cache file.
//!
//! Random operations run against a [`BlockCache`] and a model (`Vec` of block contents): whole
//! block writes, partial writes (accepted without reading the block; completed by one read
//! when read or uploaded), whole and partial reads. Reads must return the model's bytes (or fail: the store injects read errors, which are reported,
//! not retried). After a clean restart everything must be there; after a crash with
//! `recover_dirty` too (every accepted write is in the cache file); after a crash without it,
//! every block must hold a value written since its last successful flush or the value it had
//! then — flushed data is never lost, and no block ever holds data nobody wrote. A flush that
//! fails (an upload it waited for failed in the store) promises nothing.
#![allow(clippy::unwrap_used)] // Tests, like unit tests, stop at the first failure.

use bytes::Bytes;
use proptest::prelude::*;
use s3b_cache::{BlockCache, CacheConfig, CacheFile, FileOptions};
use s3b_store::mock::{Fail, MemBlocks, Op as StoreOp};
use s3b_store::{BlockData, BlockNum, BlockStore, ReadRequest, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const BS: u32 = 64;
const BLOCKS: u32 = 12;

/// The slow, failing store: every read and write takes up to 3 ms and 15 % of them fail.
fn flaky() -> Arc<MemBlocks> {
    let m = MemBlocks::new(BS, BLOCKS as u64);
    for op in [StoreOp::Read, StoreOp::Write] {
        m.delay_up_to(op, Duration::from_millis(3));
        m.fail(op, Fail::Percent(15));
    }
    Arc::new(m)
}

#[derive(Clone, Debug)]
enum Op {
    Write(BlockNum, u8),
    /// Write `len` bytes of value `v` at `off` (clipped to the block).
    WritePart(BlockNum, u32, u32, u8),
    Read(BlockNum),
    ReadPart(BlockNum, u32, u32),
    Flush,
    FlushOne(BlockNum),
    Restart,
    Crash {
        recover: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..BLOCKS, 0..4u8).prop_map(|(n, v)| Op::Write(n, v)),
        6 => (0..BLOCKS, 0..BS, 1..BS, 0..4u8).prop_map(|(n, o, l, v)| Op::WritePart(n, o, l, v)),
        4 => (0..BLOCKS).prop_map(Op::Read),
        2 => (0..BLOCKS, 0..BS, 1..BS).prop_map(|(n, o, l)| Op::ReadPart(n, o, l)),
        1 => Just(Op::Flush),
        1 => (0..BLOCKS).prop_map(Op::FlushOne),
        1 => Just(Op::Restart),
        1 => any::<bool>().prop_map(|recover| Op::Crash { recover }),
    ]
}

struct Session {
    rt: tokio::runtime::Runtime,
    cache: Arc<BlockCache>,
}

fn open(store: &Arc<MemBlocks>, path: Option<&std::path::Path>, recover: bool, delay_ms: u64) -> Session {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg = CacheConfig {
        size: 4,
        threads: 2,
        write_delay: Duration::from_millis(delay_ms),
        read_ahead: 2,
        read_ahead_trigger: 1,
        max_dirty: 3,
        ..CacheConfig::default()
    };
    let inner: Arc<dyn BlockStore> = store.clone();
    let cache = rt.block_on(async {
        match path {
            Some(p) => {
                let f = Arc::new(
                    CacheFile::open(p, BS, 4, FileOptions { recover_dirty: recover, ..Default::default() }).unwrap(),
                );
                f.allow_uploads();
                BlockCache::with_file(inner, cfg, f)
            }
            None => BlockCache::new(inner, cfg),
        }
    });
    Session { rt, cache: Arc::new(cache) }
}

fn run(ops: Vec<Op>, with_file: bool, delay_ms: u64) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = with_file.then(|| dir.path().join("cache"));
    let store = flaky();
    let zeros = vec![0u8; BS as usize];
    let stored = |n: BlockNum| store.get_or_zeros(n).to_vec();
    // For each block: contents it may hold after a crash that loses unflushed writes.
    let mut possible: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::from([zeros.clone()]); BLOCKS as usize];
    let mut model = vec![zeros.clone(); BLOCKS as usize];
    let mut s = open(&store, path.as_deref(), false, delay_ms);
    for op in ops {
        match op {
            Op::Write(n, v) => {
                let data = Bytes::from(vec![v; BS as usize]);
                s.rt.block_on(s.cache.write_block(n, BlockData::new(data))).unwrap();
                model[n as usize] = vec![v; BS as usize];
                possible[n as usize].insert(model[n as usize].clone());
            }
            Op::WritePart(n, off, len, v) => {
                let len = len.min(BS - off);
                let part = Bytes::from(vec![v; len as usize]);
                // Accepted without a read, unless the block holds too many ranges already and
                // must be completed first: then the store's injected read errors may fail it.
                match s.rt.block_on(s.cache.write_block_part(n, off, part)) {
                    Ok(()) => {
                        model[n as usize][off as usize..(off + len) as usize].fill(v);
                        possible[n as usize].insert(model[n as usize].clone());
                    }
                    Err(StoreError::Injected) => {}
                    Err(e) => prop_assert!(false, "partial write of block {}: {}", n, e),
                }
            }
            Op::Read(n) => {
                if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadRequest::PLAIN)) {
                    let got = out.into_data(BS);
                    prop_assert!(
                        got[..] == model[n as usize][..],
                        "block {} read {:?} want {:?}",
                        n,
                        got,
                        model[n as usize]
                    );
                }
            }
            Op::ReadPart(n, off, len) => {
                let len = len.min(BS - off);
                if let Ok(got) = s.rt.block_on(s.cache.read_block_part(n, off, len)) {
                    let want = &model[n as usize][off as usize..(off + len) as usize];
                    prop_assert!(&got[..] == want, "block {} bytes {}+{} read {:?} want {:?}", n, off, len, got, want);
                }
            }
            // A flush that succeeds promises everything it covers is in the store. One that
            // fails promises nothing (what a crash may lose stays possible): it returns the
            // store's error (the only one this store makes) of an upload that failed while it
            // waited, and leaves the blocks dirty, so later reads, flushes, recovery after a
            // crash and the final shutdown still find every byte.
            Op::Flush => match s.rt.block_on(s.cache.flush(None)) {
                Ok(()) => {
                    for (p, m) in possible.iter_mut().zip(&model) {
                        *p = BTreeSet::from([m.clone()]);
                    }
                    for n in 0..BLOCKS {
                        prop_assert!(stored(n) == model[n as usize], "flushed block {} is in the store", n);
                    }
                }
                Err(StoreError::UploadFailed { source, .. }) if matches!(*source, StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "flush: {}", e),
            },
            Op::FlushOne(n) => match s.rt.block_on(s.cache.flush(Some(&[n]))) {
                Ok(()) => {
                    possible[n as usize] = BTreeSet::from([model[n as usize].clone()]);
                    prop_assert!(stored(n) == model[n as usize], "flushed block {} is in the store", n);
                }
                Err(StoreError::UploadFailed { source, .. }) if matches!(*source, StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "flush of block {}: {}", n, e),
            },
            Op::Restart => {
                s.rt.block_on(s.cache.shutdown()).unwrap();
                drop(s);
                s = open(&store, path.as_deref(), false, delay_ms);
                for (p, m) in possible.iter_mut().zip(&model) {
                    *p = BTreeSet::from([m.clone()]);
                }
            }
            Op::Crash { recover } => {
                let Session { rt, cache } = s;
                drop(cache);
                // Wait until the old runtime's threads are gone: a killed process writes nothing more.
                rt.shutdown_timeout(Duration::from_secs(10));
                s = open(&store, path.as_deref(), recover, delay_ms);
                let keeps_all = recover && with_file;
                for n in 0..BLOCKS {
                    let got = loop {
                        if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadRequest::PLAIN)) {
                            break out.into_data(BS).to_vec();
                        }
                    };
                    if keeps_all {
                        // Recovered blocks are dirty again, not flushed: a later crash without
                        // recovery may still lose them, so what was possible stays possible.
                        prop_assert!(
                            got == model[n as usize],
                            "recovered block {}: {:?} want {:?}",
                            n,
                            got,
                            model[n as usize]
                        );
                    } else {
                        prop_assert!(
                            possible[n as usize].contains(&got),
                            "block {} holds {:?} after crash, allowed {:?}",
                            n,
                            got,
                            possible[n as usize]
                        );
                        model[n as usize] = got.clone();
                        possible[n as usize] = BTreeSet::from([got]);
                    }
                }
            }
        }
    }
    s.rt.block_on(s.cache.shutdown()).unwrap();
    for n in 0..BLOCKS {
        prop_assert!(stored(n) == model[n as usize], "block {} after final shutdown", n);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_cache_matches_model(ops in proptest::collection::vec(op(), 1..60), delay in 0..6u64) {
        run(ops, false, delay)?;
    }

    #[test]
    fn file_cache_matches_model(ops in proptest::collection::vec(op(), 1..60), delay in 0..6u64) {
        run(ops, true, delay)?;
    }
}

/// Concurrency: eight writers own eight bytes each of every block and write them with partial
/// writes, in random order, while readers read and flushes run, over a slow store that fails
/// 15 % of requests and a cache smaller than the volume. Completing reads race with writes,
/// uploads and each other; at the end every byte holds its owner's last value, in the cache
/// and in the store.
#[test]
fn concurrent_partial_writes_lose_no_byte() {
    for with_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = with_file.then(|| dir.path().join("cache"));
        let store = flaky();
        // Some stored content first, so a byte taken from zeros instead of the store shows.
        for n in 0..BLOCKS {
            store.put(n, Bytes::from(vec![0xee; BS as usize]));
        }
        let s = open(&store, path.as_deref(), false, 1);
        let writers: Vec<_> = (0..8u32)
            .map(|t| {
                let cache = s.cache.clone();
                s.rt.spawn(async move {
                    let mut last = vec![0xeeu8; BLOCKS as usize];
                    for round in 0..40u32 {
                        let n = (round * 7 + t * 3) % BLOCKS;
                        let v = u8::try_from(t * 16 + round % 16).unwrap();
                        // Without a fill nothing can fail; a fill (too many ranges) may.
                        if cache.write_block_part(n, t * 8, Bytes::from(vec![v; 8])).await.is_ok() {
                            last[n as usize] = v;
                        }
                        if round % 9 == 0 {
                            let _ = cache.read_block(n, ReadRequest::PLAIN).await;
                        }
                        if round % 13 == 0 {
                            // Fails when an upload of the block fails meanwhile; it stays dirty.
                            match cache.flush(Some(&[n])).await {
                                Ok(()) => {}
                                Err(StoreError::UploadFailed { source, .. })
                                    if matches!(*source, StoreError::Injected) => {}
                                Err(e) => panic!("flush of block {n}: {e}"),
                            }
                        }
                    }
                    last
                })
            })
            .collect();
        let reader = {
            let cache = s.cache.clone();
            s.rt.spawn(async move {
                for i in 0..100u32 {
                    let n = i % BLOCKS;
                    if let Ok(out) = cache.read_block(n, ReadRequest::PLAIN).await {
                        let d = out.into_data(BS);
                        // Each owner's 8 bytes are written together: never torn.
                        for t in 0..8 {
                            let r = &d[t * 8..t * 8 + 8];
                            assert!(r.iter().all(|&b| b == r[0]), "block {n} bytes of writer {t} torn: {r:?}");
                        }
                    }
                }
            })
        };
        let lasts: Vec<Vec<u8>> = writers.into_iter().map(|w| s.rt.block_on(w).unwrap()).collect();
        s.rt.block_on(reader).unwrap();
        for n in 0..BLOCKS {
            let got = loop {
                if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadRequest::PLAIN)) {
                    break out.into_data(BS);
                }
            };
            for (t, last) in lasts.iter().enumerate() {
                assert!(
                    got[t * 8..t * 8 + 8].iter().all(|&b| b == last[n as usize]),
                    "block {n} writer {t}: {:?}",
                    &got[t * 8..t * 8 + 8]
                );
            }
        }
        s.rt.block_on(s.cache.shutdown()).unwrap();
        for n in 0..BLOCKS {
            let stored = store.get_or_zeros(n);
            for (t, last) in lasts.iter().enumerate() {
                assert!(stored[t * 8..t * 8 + 8].iter().all(|&b| b == last[n as usize]), "stored block {n} writer {t}");
            }
        }
    }
}
