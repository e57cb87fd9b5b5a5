//! Property test of the whole block store stack against a model: the layers the binary builds
//! (zero cache, block cache, MD5/ETag consistency layer, codec, `--test` store with random
//! delays and injected failures), driven by random reads, writes (half of them all-zero),
//! flushes and restarts, must always read what a plain `Vec` of blocks says.
//!
//! An injected failure happens before the store is touched, so a failed write leaves the old
//! content; a failed read changes nothing. A restart shuts the stack down (flushing it) and
//! builds a new one over the same directory. `PROPTEST_CASES` raises the number of cases.

mod common;
use bytes::Bytes;
use common::build_stack;
use proptest::prelude::*;
use s3b_store::{BlockStore, ReadCondition, ReadOutcome, StoreError};
use std::sync::Arc;

const BS: usize = 4096;
const BLOCKS: u32 = 24;

#[derive(Clone, Debug)]
enum Op {
    Read(u32),
    /// Write block with content from a seed, or zeros.
    Write(u32, Option<u8>),
    Flush,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..BLOCKS).prop_map(Op::Read),
        8 => (0..BLOCKS, proptest::option::weighted(0.5, any::<u8>())).prop_map(|(n, s)| Op::Write(n, s)),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
    ]
}

fn content(seed: u8) -> Bytes {
    Bytes::from((0..BS).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed)).collect::<Vec<u8>>())
}

fn run(flags: &[&str], ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["--test", "--blockSize=4k", "--size=96k", "--test-delays", "--test-errors"]
        .iter()
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
    args.push(dir.path().to_string_lossy().into_owned());
    args.push("/unused-mountpoint".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut model: Vec<Option<u8>> = vec![None; BLOCKS as usize];
    let mut store: Arc<dyn BlockStore> = build_stack(&args, &rt);
    for op in ops {
        match *op {
            Op::Read(n) => match rt.block_on(store.read_block(n, ReadCondition::None)) {
                Ok(ReadOutcome::NotModified) => prop_assert!(false, "not-modified without a condition"),
                Ok(r) => {
                    let got = r.into_data(BS as u32).unwrap();
                    let want = model[n as usize].map(content).unwrap_or_else(|| Bytes::from(vec![0u8; BS]));
                    prop_assert!(got == want, "block {} differs from the model ({:?})", n, model[n as usize]);
                }
                Err(StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "read of block {}: {}", n, e),
            },
            Op::Write(n, seed) => match rt.block_on(store.write_block(n, seed.map(content))) {
                Ok(_) => model[n as usize] = seed,
                Err(StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "write of block {}: {}", n, e),
            },
            Op::Flush => match rt.block_on(store.flush(None)) {
                Ok(()) | Err(StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "flush: {}", e),
            },
            Op::Restart => {
                rt.block_on(store.shutdown()).map_err(|e| TestCaseError::fail(format!("shutdown: {e}")))?;
                drop(store);
                store = build_stack(&args, &rt);
            }
        }
    }
    // Finally everything, after one more restart, equals the model.
    rt.block_on(store.shutdown()).map_err(|e| TestCaseError::fail(format!("shutdown: {e}")))?;
    drop(store);
    let clean: Vec<String> = args.iter().filter(|a| *a != "--test-errors").cloned().collect();
    let store = build_stack(&clean, &rt);
    for n in 0..BLOCKS {
        let got = rt.block_on(store.read_block(n, ReadCondition::None)).unwrap().into_data(BS as u32).unwrap();
        let want = model[n as usize].map(content).unwrap_or_else(|| Bytes::from(vec![0u8; BS]));
        prop_assert!(got == want, "block {} differs after the last restart", n);
    }
    Ok(())
}

/// Cases per property: `PROPTEST_CASES`, else a number that keeps the CI run short (the
/// `--test-delays` store takes up to 200 ms per request).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Small write-back cache over the consistency layer.
    #[test]
    fn cache_and_consistency_layer_match_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        run(&["--blockCacheSize=6", "--blockCacheWriteDelay=3", "--md5CacheSize=24", "--minWriteDelay=2"], &ops)?;
    }

    /// The consistency layer with expiry and a table smaller than the volume, no block cache
    /// (every write waits its turn: fewer, shorter cases).
    #[test]
    fn consistency_layer_alone_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        run(&["--blockCacheSize=0", "--md5CacheSize=4", "--md5CacheTime=8", "--minWriteDelay=2"], &ops)?;
    }

    /// Write-back cache with a cache file and dirty-block recovery, no consistency layer.
    #[test]
    fn cache_file_matches_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("--blockCacheFile={}", dir.path().join("cache").display());
        run(&["--blockCacheSize=8", "--blockCacheWriteDelay=2", &file, "--blockCacheRecoverDirtyBlocks"], &ops)?;
    }
}
