//! Encode/decode throughput of one block per codec, next to a plain copy of the same bytes.
// Benchmarks, like unit tests, stop at the first failure; criterion_group! makes undocumented functions.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use s3b_codec::{Cipher, Codec, CodecConfig, Compression, Encryption};
use std::hint::black_box;

fn block(len: usize) -> Bytes {
    // Half-compressible data: text-like runs mixed with noise, like a typical file system block.
    let mut x: u32 = 12345;
    Bytes::from(
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if (i / 64) % 2 == 0 { b"the quick brown fox "[i % 20] } else { (x >> 16).to_le_bytes()[0] }
            })
            .collect::<Vec<u8>>(),
    )
}

fn bench(c: &mut Criterion) {
    let enc = |cipher| CodecConfig {
        encrypt: Some(Encryption { cipher, password: "pw".to_string().into(), key_length: None, salt: "b/".into() }),
        ..Default::default()
    };
    let configs: Vec<(&str, CodecConfig)> = vec![
        ("deflate", CodecConfig { compress: Some(Compression::Deflate(None)), ..Default::default() }),
        ("zstd", CodecConfig { compress: Some(Compression::Zstd(None)), ..Default::default() }),
        ("aes128cbc+hmac", enc(Cipher::Aes128Cbc)),
        ("aes256gcm", enc(Cipher::Aes256Gcm)),
    ];
    for len in [64 << 10, 1 << 20] {
        let data = block(len);
        let mut g = c.benchmark_group(format!("block_{}k", len >> 10));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("plain_copy", |b| b.iter(|| black_box(data.to_vec())));
        for (name, cfg) in &configs {
            let codec = Codec::new(u32::try_from(len).unwrap(), cfg.clone());
            let obj = codec.encode(1, data.clone()).unwrap();
            g.bench_function(format!("{name}_encode"), |b| {
                b.iter(|| black_box(codec.encode(1, data.clone()).unwrap()))
            });
            g.bench_function(format!("{name}_decode"), |b| b.iter(|| black_box(codec.decode(1, obj.clone()).unwrap())));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
