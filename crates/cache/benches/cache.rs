//! Criterion micro-benchmarks of the block cache: a cache-hit read of a 64 KiB block, and a
//! write into the cache (absorbed, uploaded later by the write-back scheduler), over the
//! in-memory store of `s3b_store::mock`.
// Benchmarks, like unit tests, stop at the first failure; criterion_group! makes undocumented functions.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use s3b_cache::{BlockCache, CacheConfig};
use s3b_store::mock::MemBlocks;
use s3b_store::{BlockData, BlockStore, ReadRequest};
use std::sync::Arc;
use std::time::Duration;

const BS: u32 = 64 << 10;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cache = rt.block_on(async {
        BlockCache::new(
            Arc::new(MemBlocks::new(BS, 1 << 20)),
            CacheConfig {
                size: 1000,
                write_delay: Duration::from_millis(250),
                read_ahead: 0,
                ..CacheConfig::default()
            },
        )
    });
    let data = Bytes::from(vec![7u8; BS as usize]);
    rt.block_on(cache.write_block(1, BlockData::new(data.clone()))).unwrap();
    c.bench_function("cache hit read 64k", |b| {
        b.to_async(&rt).iter(|| async { cache.read_block(1, ReadRequest::PLAIN).await.unwrap() })
    });
    let mut n = 0u32;
    c.bench_function("write 64k into cache", |b| {
        b.to_async(&rt).iter(|| {
            n = (n + 1) % 500;
            let d = data.clone();
            let cache = &cache;
            let blk = n + 2;
            async move { cache.write_block(blk, BlockData::new(d)).await.unwrap() }
        })
    });
    // A sequential writer's unaligned 4 KiB pieces: each lands in a block not cached yet (or
    // partial), accepted without a read of the (here free) store.
    let piece = Bytes::from(vec![9u8; 4096]);
    let mut pos = 512u64;
    c.bench_function("partial write 4k at unaligned offsets", |b| {
        b.to_async(&rt).iter(|| {
            let blk = 600 + ((pos / BS as u64) % 300) as u32;
            let off = u32::try_from(pos % u64::from(BS)).unwrap();
            let len = 4096.min(BS - off) as usize;
            pos += 4096;
            let d = piece.slice(..len);
            let cache = &cache;
            async move { cache.write_block_part(blk, off, d).await.unwrap() }
        })
    });
    rt.block_on(cache.shutdown()).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
