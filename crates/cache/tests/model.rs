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

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use rand::Rng;
use s3b_cache::{BlockCache, CacheConfig, CacheFile, FileOptions};
use s3b_store::{BlockNum, BlockStore, Etag, ReadCondition, ReadOutcome, Result, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BS: u32 = 64;
const BLOCKS: u32 = 12;

/// Blocks as (content, version); ETag derived from the version.
#[derive(Default)]
struct Flaky {
    blocks: Mutex<HashMap<BlockNum, (Bytes, u64)>>,
    version: AtomicU64,
    fail_percent: u32,
}

fn etag(v: u64) -> Etag {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&v.to_le_bytes());
    Etag(e)
}

impl Flaky {
    async fn chaos(&self) -> Result<()> {
        let (delay, fail) = {
            let mut r = rand::thread_rng();
            (r.gen_range(0..3u64), r.gen_range(0..100) < self.fail_percent)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if fail { Err(StoreError::Injected) } else { Ok(()) }
    }
}

#[async_trait]
impl BlockStore for Flaky {
    fn block_size(&self) -> u32 {
        BS
    }
    fn num_blocks(&self) -> u64 {
        BLOCKS as u64
    }
    async fn read_block(&self, n: BlockNum, cond: ReadCondition) -> Result<ReadOutcome> {
        self.chaos().await?;
        let b = self.blocks.lock().get(&n).cloned();
        Ok(match (b, cond) {
            (Some((_, v)), ReadCondition::IfNoneMatch(e)) if etag(v) == e => ReadOutcome::NotModified,
            (Some((x, v)), _) => ReadOutcome::Data { data: x, etag: Some(etag(v)) },
            (None, _) => ReadOutcome::Zero,
        })
    }
    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        self.chaos().await?;
        let v = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        match data {
            Some(d) => {
                assert_eq!(d.len(), BS as usize, "a block is uploaded whole");
                self.blocks.lock().insert(n, (d, v));
                Ok(Some(etag(v)))
            }
            None => {
                self.blocks.lock().remove(&n);
                Ok(None)
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

fn open(store: &Arc<Flaky>, path: Option<&std::path::Path>, recover: bool, delay_ms: u64) -> Session {
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
    let store = Arc::new(Flaky { fail_percent: 15, ..Default::default() });
    let zeros = vec![0u8; BS as usize];
    let stored = |n: BlockNum| store.blocks.lock().get(&n).map_or_else(|| zeros.clone(), |b| b.0.to_vec());
    // For each block: contents it may hold after a crash that loses unflushed writes.
    let mut possible: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::from([zeros.clone()]); BLOCKS as usize];
    let mut model = vec![zeros.clone(); BLOCKS as usize];
    let mut s = open(&store, path.as_deref(), false, delay_ms);
    for op in ops {
        match op {
            Op::Write(n, v) => {
                let data = Bytes::from(vec![v; BS as usize]);
                s.rt.block_on(s.cache.write_block(n, Some(data))).unwrap();
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
                if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadCondition::None)) {
                    let got = out.into_data(BS).unwrap();
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
                Err(StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "flush: {}", e),
            },
            Op::FlushOne(n) => match s.rt.block_on(s.cache.flush(Some(&[n]))) {
                Ok(()) => {
                    possible[n as usize] = BTreeSet::from([model[n as usize].clone()]);
                    prop_assert!(stored(n) == model[n as usize], "flushed block {} is in the store", n);
                }
                Err(StoreError::Injected) => {}
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
                        if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadCondition::None)) {
                            break out.into_data(BS).unwrap().to_vec();
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
        let store = Arc::new(Flaky { fail_percent: 15, ..Default::default() });
        // Some stored content first, so a byte taken from zeros instead of the store shows.
        for n in 0..BLOCKS {
            store.blocks.lock().insert(n, (Bytes::from(vec![0xee; BS as usize]), 0));
        }
        let s = open(&store, path.as_deref(), false, 1);
        let writers: Vec<_> = (0..8u32)
            .map(|t| {
                let cache = s.cache.clone();
                s.rt.spawn(async move {
                    let mut last = vec![0xeeu8; BLOCKS as usize];
                    for round in 0..40u32 {
                        let n = (round * 7 + t * 3) % BLOCKS;
                        let v = (t * 16 + round % 16) as u8;
                        // Without a fill nothing can fail; a fill (too many ranges) may.
                        if cache.write_block_part(n, t * 8, Bytes::from(vec![v; 8])).await.is_ok() {
                            last[n as usize] = v;
                        }
                        if round % 9 == 0 {
                            let _ = cache.read_block(n, ReadCondition::None).await;
                        }
                        if round % 13 == 0 {
                            // Fails when an upload of the block fails meanwhile; it stays dirty.
                            match cache.flush(Some(&[n])).await {
                                Ok(()) | Err(StoreError::Injected) => {}
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
                    if let Ok(out) = cache.read_block(n, ReadCondition::None).await {
                        let d = out.into_data(BS).unwrap();
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
                if let Ok(out) = s.rt.block_on(s.cache.read_block(n, ReadCondition::None)) {
                    break out.into_data(BS).unwrap();
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
            let stored = store.blocks.lock()[&n].0.clone();
            for (t, last) in lasts.iter().enumerate() {
                assert!(stored[t * 8..t * 8 + 8].iter().all(|&b| b == last[n as usize]), "stored block {n} writer {t}");
            }
        }
    }
}
