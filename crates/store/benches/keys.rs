//! Micro-benchmark of the hot path shared by every request: naming a block's object key and
//! parsing a listed key back (plain and with `--blockHashPrefix`), and the all-zero check
//! every written block goes through.
// Benchmarks, like unit tests, stop at the first failure; criterion_group! makes undocumented functions.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use s3b_store::keys::BlockKeys;

fn keys(c: &mut Criterion) {
    for (name, keys) in [("plain", BlockKeys::new("vol/", false)), ("hash", BlockKeys::new("vol/", true))] {
        c.bench_function(&format!("block_key/{name}"), |b| {
            let mut n = 0u32;
            b.iter(|| {
                n = n.wrapping_add(7919);
                black_box(keys.block_key(black_box(n)))
            })
        });
        let listed: Vec<String> = (0..1024u32).map(|n| keys.block_key(n * 31)).collect();
        c.bench_function(&format!("parse_key/{name}"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(keys.parse_key(black_box(&listed[i])))
            })
        });
    }
    let block = vec![0u8; 65536];
    c.bench_function("is_zero/64k", |b| b.iter(|| black_box(s3b_store::is_zero(black_box(&block)))));
}

criterion_group!(benches, keys);
criterion_main!(benches);
