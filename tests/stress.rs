//! Concurrency stress test: upstream's `tester`, done properly.
//!
//! Many tasks hammer the full stack — assembled by the same `stack::build` the binary uses, from
//! a real command line — with random block reads and writes (two thirds of the writes all-zero
//! blocks), over a store with random delays and injected failures. Every read is checked
//! against a model, and after a clean shutdown and rebuild every block must equal the model.
//!
//! The CI run is bounded (`S3B_STRESS_SECS`, default 20 s per configuration). A long run:
//! `S3B_STRESS_SECS=600 cargo test --release --test stress -- --nocapture`.

mod common;
use bytes::Bytes;
use common::{build_stack as build, random_bytes};
use rand::{Rng, SeedableRng};
use s3b_store::{BlockStore, ReadOutcome, ReadRequest, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

const BLOCK_SIZE: usize = 4096;
const BLOCKS: usize = 256;
const TASKS: usize = 16;

/// What a block should hold: `None` = zeros, else the seed its content was generated from.
type Model = Vec<RwLock<Option<u64>>>;

fn content(seed: u64) -> Bytes {
    Bytes::from(random_bytes(seed, BLOCK_SIZE))
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    zero_writes: AtomicU64,
    failures: AtomicU64,
}

async fn worker(store: Arc<dyn BlockStore>, model: Arc<Model>, seed: u64, until: Instant, counts: Arc<Counts>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let n = rng.gen_range(0..BLOCKS);
        if rng.gen_bool(0.5) {
            let expect = model[n].read().await;
            let got = store.read_block(n as u32, ReadRequest::PLAIN).await;
            match got {
                Ok(ReadOutcome::Zero) => assert!(expect.is_none(), "block {n}: read zeros, expected data"),
                Ok(ReadOutcome::Data { data, .. }) => match *expect {
                    None => assert!(data.iter().all(|&b| b == 0), "block {n}: expected zeros"),
                    Some(s) => assert!(data == content(s), "block {n}: wrong data"),
                },
                Err(StoreError::Injected) => {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("block {n}: unexpected read error {e}"),
            }
            counts.reads.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut slot = model[n].write().await;
            let new = if rng.gen_range(0..3) < 2 { None } else { Some(rng.r#gen::<u64>()) };
            let data = new.map(content);
            match store.write_block(n as u32, data.and_then(s3b_store::BlockData::new)).await {
                Ok(_) => *slot = new,
                // An injected failure happens before the store is touched: the old content stays.
                Err(StoreError::Injected) => {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("block {n}: unexpected write error {e}"),
            }
            counts.writes.fetch_add(1, Ordering::Relaxed);
            if new.is_none() {
                counts.zero_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn stress(extra: &[&str]) {
    let secs: u64 = std::env::var("S3B_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["--test", "--blockSize=4k", "--size=1m"].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(dir.path().to_string_lossy().into_owned());
    args.push("/unused-mountpoint".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let store = build(&args, &rt);
    let model: Arc<Model> = Arc::new((0..BLOCKS).map(|_| RwLock::new(None)).collect());
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs(secs);
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(worker(store.clone(), model.clone(), 1000 + t as u64, until, counts.clone())))
            .collect();
        for t in tasks {
            t.await.expect("worker panicked");
        }
        store.shutdown().await.unwrap();
    });
    drop(store);

    // Restart on the same directory: every block equals the model.
    let clean: Vec<String> = args.iter().filter(|a| !a.starts_with("--test-")).cloned().collect();
    let store = build(&clean, &rt);
    rt.block_on(async {
        for n in 0..BLOCKS {
            let got = store.read_block(n as u32, ReadRequest::PLAIN).await.unwrap().into_data(BLOCK_SIZE as u32);
            let want = model[n].read().await.map(content).unwrap_or_else(|| Bytes::from(vec![0u8; BLOCK_SIZE]));
            assert!(got == want, "block {n} differs after restart");
        }
    });
    let (r, w, z, f) = (
        counts.reads.load(Ordering::Relaxed),
        counts.writes.load(Ordering::Relaxed),
        counts.zero_writes.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
    );
    eprintln!("stress {extra:?}: {r} reads, {w} writes ({z} all-zero), {f} injected failures, {secs} s");
    assert!(r > 100 && w > 100, "too little work done: {r} reads, {w} writes");
    if extra.contains(&"--test-errors") {
        assert!(f > 0, "no failures were injected");
    }
}

#[test]
fn stress_with_delays_and_errors() {
    // Without the block cache, so that the injected errors reach the callers.
    stress(&["--test-delays", "--test-errors", "--blockCacheSize=0"]);
}

#[test]
fn stress_block_cache_with_delays_and_errors() {
    // A cache smaller than the volume: evictions, read misses that fail, retried uploads.
    stress(&[
        "--test-delays",
        "--test-errors",
        "--blockCacheSize=64",
        "--blockCacheWriteDelay=10",
        "--blockCacheMaxDirty=32",
    ]);
}

#[test]
fn stress_plain() {
    stress(&[]);
}
