//! Property test of the whole block store stack against a model: the layers the binary builds
//! (zero cache, block cache, MD5/ETag consistency layer, codec, `--test` store with random
//! delays and injected failures), driven by random reads, writes (half of them all-zero),
//! partial-block writes and reads at random offsets, flushes, restarts and crashes, must always
//! read what a plain array of bytes says.
//!
//! An injected failure happens before the store is touched, so a failed write leaves the old
//! content; a failed read changes nothing. A partial write goes through the top layer's
//! `write_block_part`: the block cache accepts it without reading the block (the model checks
//! the missing bytes are later merged from the store, not taken as zeros); without a cache it
//! is a read-modify-write that an injected read error may fail. A restart shuts the stack down
//! (flushing it) and builds a new one over the same directory. A crash (only with a cache file
//! and dirty-block recovery, where every accepted write must survive) stops the old stack's
//! runtime without flushing. `PROPTEST_CASES` raises the number of cases.

mod common;
use bytes::Bytes;
use proptest::prelude::*;
use s3b_store::{BlockStore, ReadRequest, StoreError};
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 4096;
const BLOCKS: u32 = 24;

#[derive(Clone, Debug)]
enum Op {
    Read(u32),
    /// Write block with content from a seed, or zeros.
    Write(u32, Option<u8>),
    /// Write `len` bytes (content from the seed, or zeros) at byte `off` of a block.
    WritePart(u32, u32, u32, Option<u8>),
    /// Read `len` bytes at byte `off` of a block.
    ReadPart(u32, u32, u32),
    Flush,
    Restart,
    Crash,
}

fn op(crash: bool) -> impl Strategy<Value = Op> {
    let off = 0..BS as u32;
    let len = prop_oneof![1..64u32, 1..BS as u32];
    prop_oneof![
        6 => (0..BLOCKS).prop_map(Op::Read),
        6 => (0..BLOCKS, proptest::option::weighted(0.5, any::<u8>())).prop_map(|(n, s)| Op::Write(n, s)),
        8 => (0..BLOCKS, off.clone(), len.clone(), proptest::option::weighted(0.8, any::<u8>()))
            .prop_map(|(n, o, l, s)| Op::WritePart(n, o, l, s)),
        3 => (0..BLOCKS, off, len).prop_map(|(n, o, l)| Op::ReadPart(n, o, l)),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
        if crash { 1 } else { 0 } => Just(Op::Crash),
    ]
}

fn content(seed: u8) -> Bytes {
    Bytes::from((0..BS).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed)).collect::<Vec<u8>>())
}

/// A stack and the runtime it runs on (a crash stops the runtime).
struct Session {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn BlockStore>,
}

/// Builds the stack the binary would for `args`, on a runtime of its own. Uploads of recovered
/// dirty blocks are allowed at once (the binary does that after checking the mount token).
fn start(args: &[String]) -> Session {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg = s3b_cli::config::validate(s3b_cli::args::parse(args).unwrap()).unwrap();
    let stack = rt.block_on(s3b_cli::stack::build(&cfg, s3b_cli::encoding::codec_config(&cfg).unwrap())).unwrap();
    if let Some(f) = &stack.cache_file {
        f.allow_uploads();
    }
    Session { rt, store: stack.top }
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
    let mut model: Vec<Vec<u8>> = vec![vec![0u8; BS]; BLOCKS as usize];
    let mut s = start(&args);
    for op in ops {
        match *op {
            Op::Read(n) => match s.rt.block_on(s.store.read_block(n, ReadRequest::PLAIN)) {
                Ok(r) => {
                    let got = r.into_data(BS as u32);
                    prop_assert!(got[..] == model[n as usize][..], "block {} differs from the model", n);
                }
                Err(StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "read of block {}: {}", n, e),
            },
            Op::ReadPart(n, off, len) => {
                let len = len.min(BS as u32 - off);
                match s.rt.block_on(s.store.read_block_part(n, off, len)) {
                    Ok(got) => prop_assert!(
                        got[..] == model[n as usize][off as usize..(off + len) as usize],
                        "bytes {}+{} of block {} differ from the model",
                        off,
                        len,
                        n
                    ),
                    Err(StoreError::Injected) => {}
                    Err(e) => prop_assert!(false, "partial read of block {}: {}", n, e),
                }
            }
            Op::Write(n, seed) => {
                match s.rt.block_on(s.store.write_block(n, seed.map(content).and_then(s3b_store::BlockData::new))) {
                    Ok(_) => model[n as usize] = seed.map_or_else(|| vec![0u8; BS], |x| content(x).to_vec()),
                    Err(StoreError::Injected) => {}
                    Err(e) => prop_assert!(false, "write of block {}: {}", n, e),
                }
            }
            Op::WritePart(n, off, len, seed) => {
                let (off, len) = (off as usize, (len as usize).min(BS - off as usize));
                let part = seed.map_or_else(|| vec![0u8; len], |x| content(x)[..len].to_vec());
                match s.rt.block_on(s.store.write_block_part(n, off as u32, Bytes::from(part.clone()))) {
                    Ok(()) => model[n as usize][off..off + len].copy_from_slice(&part),
                    Err(StoreError::Injected) => {}
                    Err(e) => prop_assert!(false, "partial write of block {}: {}", n, e),
                }
            }
            // A failed flush (an upload it waited for met an injected error) promises nothing.
            Op::Flush => match s.rt.block_on(s.store.flush(None)) {
                Ok(()) | Err(StoreError::Injected) => {}
                Err(StoreError::UploadFailed { source, .. }) if matches!(*source, StoreError::Injected) => {}
                Err(e) => prop_assert!(false, "flush: {}", e),
            },
            Op::Restart => {
                s.rt.block_on(s.store.shutdown()).map_err(|e| TestCaseError::fail(format!("shutdown: {e}")))?;
                drop(s);
                s = start(&args);
            }
            Op::Crash => {
                let Session { rt, store } = s;
                drop(store);
                // A killed process does nothing more: wait for its threads to be gone.
                rt.shutdown_timeout(Duration::from_secs(10));
                s = start(&args);
            }
        }
    }
    // Finally everything, after one more restart, equals the model.
    s.rt.block_on(s.store.shutdown()).map_err(|e| TestCaseError::fail(format!("shutdown: {e}")))?;
    drop(s);
    let clean: Vec<String> = args.iter().filter(|a| *a != "--test-errors").cloned().collect();
    let s = start(&clean);
    for n in 0..BLOCKS {
        let got = s.rt.block_on(s.store.read_block(n, ReadRequest::PLAIN)).unwrap().into_data(BS as u32);
        prop_assert!(got[..] == model[n as usize][..], "block {} differs after the last restart", n);
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
    fn cache_and_consistency_layer_match_the_model(ops in proptest::collection::vec(op(false), 1..50)) {
        run(&["--blockCacheSize=6", "--blockCacheWriteDelay=3", "--md5CacheSize=24", "--minWriteDelay=2"], &ops)?;
    }

    /// The consistency layer with expiry and a table smaller than the volume, no block cache
    /// (every write waits its turn: fewer, shorter cases).
    #[test]
    fn consistency_layer_alone_matches_the_model(ops in proptest::collection::vec(op(false), 1..25)) {
        run(&["--blockCacheSize=0", "--md5CacheSize=4", "--md5CacheTime=8", "--minWriteDelay=2"], &ops)?;
    }

    /// Write-back cache with a cache file and dirty-block recovery, no consistency layer:
    /// crashes lose nothing that was accepted, partial blocks included.
    #[test]
    fn cache_file_matches_the_model(ops in proptest::collection::vec(op(true), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("--blockCacheFile={}", dir.path().join("cache").display());
        run(&["--blockCacheSize=8", "--blockCacheWriteDelay=2", &file, "--blockCacheRecoverDirtyBlocks"], &ops)?;
    }

    /// Cache over each codec: partial blocks are completed in plaintext, whatever the encoding.
    #[test]
    fn cache_over_codecs_matches_the_model(
        ops in proptest::collection::vec(op(false), 1..30),
        codec in prop_oneof![Just("--compress"), Just("--compress=zstd"), Just("--encrypt")],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let pw = format!("--passwordFile={}", pw.display());
        let mut flags = vec!["--blockCacheSize=6", "--blockCacheWriteDelay=3", codec];
        if codec == "--encrypt" {
            flags.push(&pw);
        }
        run(&flags, &ops)?;
    }
}
