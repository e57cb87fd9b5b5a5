//! Requests a sequential write at an unaligned offset sends to a real S3 server (Garage on
//! 127.0.0.1, requests counted by a proxy in front of it), through the stack the binary builds.
//!
//! The writer splits each 1 MiB request into per-block pieces as the byte-range engine does:
//! whole blocks go to `write_block`, the partial head and tail to `write_block_part`, which
//! the block cache accepts without reading the block. Only the first and last blocks of the
//! whole run stay partial and need one GET each at write-back, whatever the length of the run.
//! As a control, the same run with the read-modify-write a store without `write_block_part`
//! support does (`read_for_update`, merge, `write_block`) sends about one GET per request: the
//! counter sees the difference. Both runs check what was stored, including the bytes before the
//! start and after the end of the run (written earlier, never replaced by zeros).

mod common;
use bytes::Bytes;
use common::random_bytes;
use s3b_store::{BlockData, BlockStore, ReadRequest};
use s3b_testkit::fault_proxy::FaultProxy;
use s3b_testkit::garage::{ACCESS_KEY_ID, BUCKET, Garage, SECRET_KEY};
use std::sync::Arc;

const BS: u64 = 256 << 10;
/// Length of the sequential run: 256 MiB, 1024 blocks.
const RUN: u64 = 256 << 20;
/// Where it starts: inside block 2, not on a block boundary.
const START: u64 = 2 * BS + 12_345;
const REQUEST: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Partial {
    /// `write_block_part` (what the block cache implements natively).
    Combine,
    /// Read-modify-write, as without it.
    ReadModifyWrite,
}

fn stack(proxy: &FaultProxy, prefix: &str, rt: &tokio::runtime::Runtime) -> Arc<dyn BlockStore> {
    let args: Vec<String> = [
        format!("--baseURL={}", proxy.base_url()),
        format!("--accessId={ACCESS_KEY_ID}"),
        format!("--accessKey={SECRET_KEY}"),
        format!("--prefix={prefix}"),
        "--size=512m".into(),
        format!("--blockSize={BS}"),
        "--blockCacheSize=256".into(),
        BUCKET.into(),
        "/unused-mountpoint".into(),
    ]
    .into();
    let cfg = s3b_cli::config::validate(s3b_cli::args::parse(&args).unwrap()).unwrap();
    rt.block_on(s3b_cli::stack::build(&cfg, s3b_cli::encoding::codec_config(&cfg).unwrap())).unwrap().top
}

/// Writes `data` at byte `offset` of the volume the way the byte-range engine does: the pieces
/// of one request concurrently, requests one after the other.
async fn write_range(store: &Arc<dyn BlockStore>, offset: u64, data: &Bytes, how: Partial) {
    let mut tasks = Vec::new();
    let mut pos = offset;
    let end = offset + data.len() as u64;
    while pos < end {
        let n = (pos / BS) as u32;
        let start = pos % BS;
        let len = (BS - start).min(end - pos);
        let piece = data.slice((pos - offset) as usize..(pos - offset + len) as usize);
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if len == BS {
                store.write_block(n, BlockData::new(piece)).await.map(|_| ())
            } else if how == Partial::Combine {
                store.write_block_part(n, start as u32, piece).await
            } else {
                let old = store.read_block(n, ReadRequest::FOR_UPDATE).await?.into_data(BS as u32);
                let mut buf = old.to_vec();
                buf[start as usize..(start + len) as usize].copy_from_slice(&piece);
                store.write_block(n, BlockData::new(Bytes::from(buf))).await.map(|_| ())
            }
        }));
        pos += len;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// One run: returns the GETs the server saw during the write and its flush.
fn run(g: &Garage, proxy: &FaultProxy, prefix: &str, how: Partial) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    // Blocks around the run hold data first, so a partial block merged with zeros would show.
    let first = START / BS;
    let last = (START + RUN - 1) / BS;
    let before = Bytes::from(random_bytes(1, BS as usize));
    let after = Bytes::from(random_bytes(2, BS as usize));
    let s = stack(proxy, prefix, &rt);
    rt.block_on(async {
        s.write_block(first as u32, BlockData::new(before.clone())).await.unwrap();
        s.write_block(last as u32, BlockData::new(after.clone())).await.unwrap();
        s.shutdown().await.unwrap();
    });
    drop(s);

    let data = Bytes::from(random_bytes(3, RUN as usize));
    let s = stack(proxy, prefix, &rt);
    let gets_before = proxy.method_counts().get("GET").copied().unwrap_or(0);
    rt.block_on(async {
        let mut off = 0;
        while off < RUN {
            let len = REQUEST.min(RUN - off);
            write_range(&s, START + off, &data.slice(off as usize..(off + len) as usize), how).await;
            off += len;
        }
        s.flush(None).await.unwrap();
    });
    let gets = proxy.method_counts().get("GET").copied().unwrap_or(0) - gets_before;
    rt.block_on(s.shutdown()).unwrap();
    drop(s);

    // Read back through a fresh stack: the run, and the bytes around it.
    let s = stack(proxy, prefix, &rt);
    rt.block_on(async {
        for n in first..=last {
            let got = s.read_block(n as u32, ReadRequest::PLAIN).await.unwrap().into_data(BS as u32);
            let lo = n * BS;
            for (i, &b) in got.iter().enumerate() {
                let pos = lo + i as u64;
                let want = if pos < START {
                    before[i]
                } else if pos >= START + RUN {
                    after[i]
                } else {
                    data[(pos - START) as usize]
                };
                assert_eq!(b, want, "{how:?}: byte {pos} of the volume");
            }
        }
        s.shutdown().await.unwrap();
    });
    assert!(g.list_keys(BUCKET).iter().any(|k| k.starts_with(prefix)));
    gets
}

#[test]
fn unaligned_sequential_write_sends_almost_no_gets() {
    let g = Garage::start();
    let proxy = FaultProxy::counting(g.port);
    let blocks = RUN / BS;
    let combined = run(&g, &proxy, "c/", Partial::Combine);
    let rmw = run(&g, &proxy, "r/", Partial::ReadModifyWrite);
    eprintln!(
        "unaligned sequential write of {} MiB ({blocks} blocks of {} KiB, 1 MiB requests): \
         {combined} GETs with write_block_part, {rmw} with read-modify-write",
        RUN >> 20,
        BS >> 10
    );
    assert!(combined * 100 <= blocks, "{combined} GETs for {blocks} blocks written");
    // The control: the counter does see the read-modify-write's GETs (about one per request).
    assert!(rmw * 100 > blocks, "read-modify-write sent only {rmw} GETs");
}
