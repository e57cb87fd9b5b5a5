//! Read-ahead seen from the stats file: a sequential read of a cold volume misses the block
//! cache far less often with read-ahead than without.

mod common;
use common::*;
use std::os::unix::fs::FileExt;

fn misses(extra: &[&str]) -> (u64, u64) {
    let s = Scratch::new();
    let store = s.store();
    let st = store.to_str().unwrap();
    let mut a = vec!["--test", "--size=8m", "--blockSize=16k", "--directIO"];
    a.extend_from_slice(extra);
    a.push(st);
    let m = Mount::start(&a, &s.mnt());
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8 + 1).collect();
    write_synced(&m.file(), 0, &data);
    assert_eq!(m.unmount(), 0);
    let m = Mount::start(&a, &s.mnt());
    let f = std::fs::File::open(m.file()).unwrap();
    let mut buf = vec![0u8; 16384];
    for i in 0..512u64 {
        f.read_exact_at(&mut buf, i * 16384).unwrap();
        assert!(buf[..] == data[i as usize * 16384..(i as usize + 1) * 16384], "block {i}");
    }
    drop(f);
    let stats = m.stats();
    let r = (stat_value(&stats, "block_cache_read_misses"), stat_value(&stats, "block_cache_read_hits"));
    assert_eq!(m.unmount(), 0);
    r
}

#[test]
fn sequential_reads_miss_less_with_read_ahead() {
    let (without, _) = misses(&["--readAhead=0"]);
    let (with, hits) = misses(&[]);
    eprintln!("block cache misses reading 512 blocks: {without} without read-ahead, {with} with ({hits} hits)");
    assert!(without >= 500, "without read-ahead every block should miss: {without}");
    assert!(with * 4 < without, "read-ahead did not cut misses: {with} vs {without}");
}
