//! Criterion micro-benchmarks of the per-request work of the S3 transport besides the network:
//! naming a block's key (plain and with `--blockHashPrefix`) and signing a request with SigV4
//! (an empty GET, and a PUT whose 64 KiB body must be hashed).
// Benchmarks, like unit tests, stop at the first failure; criterion_group! makes undocumented functions.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use s3b_http::creds::Keys;
use s3b_http::sign::sigv4_headers;
use s3b_store::keys::BlockKeys;
use std::time::SystemTime;

fn bench(c: &mut Criterion) {
    let plain = BlockKeys::new("vol1/", false);
    let hashed = BlockKeys::new("vol1/", true);
    c.bench_function("block_key plain", |b| b.iter(|| plain.block_key(black_box(0x0012_3456))));
    c.bench_function("block_key hash prefix", |b| b.iter(|| hashed.block_key(black_box(0x0012_3456))));

    let keys =
        Keys { id: "AKIDEXAMPLE".into(), secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(), token: None };
    let url = "https://bucket.s3.us-east-1.amazonaws.com/vol1/00123456";
    let headers = vec![("content-type".to_string(), "application/x-s3backer-block".to_string())];
    let body = vec![0x5au8; 64 << 10];
    c.bench_function("sigv4 GET", |b| {
        b.iter(|| sigv4_headers(&keys, "us-east-1", "GET", url, &[], b"", SystemTime::now()).unwrap())
    });
    c.bench_function("sigv4 PUT 64 KiB", |b| {
        b.iter(|| sigv4_headers(&keys, "us-east-1", "PUT", url, &headers, black_box(&body), SystemTime::now()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
