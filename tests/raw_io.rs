//! Unaligned reads and writes on the raw exported file, checked against an in-memory model,
//! across a restart of the daemon.

mod common;
use common::*;
use rand::{Rng, RngCore, SeedableRng};
use std::os::unix::fs::FileExt;

fn random_ops(seed: u64, direct: bool) {
    const SIZE: usize = 1 << 20;
    let s = Scratch::new();
    let store = s.store();
    let mut args = vec!["--test", "--size=1m", "--blockSize=4k", store.to_str().unwrap()];
    if direct {
        args.push("--directIO");
    }
    let m = Mount::start(&args, &s.mnt());
    let mut model = vec![0u8; SIZE];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.file()).unwrap();
    for i in 0..400 {
        let off = rng.gen_range(0..SIZE);
        let len = rng.gen_range(1..=(SIZE - off).min(3 * 4096 + 17));
        if rng.gen_bool(0.5) {
            let mut data = vec![0u8; len];
            if rng.gen_bool(0.8) {
                rng.fill_bytes(&mut data);
            }
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        } else {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert!(buf == model[off..off + len], "op {i}: read of {len} at {off} differs from the model");
        }
    }
    // Reads at and past the end.
    let mut buf = [0u8; 100];
    assert_eq!(f.read_at(&mut buf, SIZE as u64).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, SIZE as u64 - 10).unwrap(), 10);
    assert_eq!(&buf[..10], &model[SIZE - 10..]);
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(m.unmount(), 0);

    let m = Mount::start(&args, &s.mnt());
    drop_caches();
    let all = std::fs::read(m.file()).unwrap();
    assert!(all == model, "volume differs from the model after restart");
    // Zero blocks are never stored.
    let stored = std::fs::read_dir(&store).unwrap().count();
    let nonzero = model.chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).count();
    assert_eq!(stored, nonzero);
    assert_eq!(m.unmount(), 0);
}

#[test]
fn unaligned_io_matches_model() {
    random_ops(7, false);
}

#[test]
fn unaligned_direct_io_matches_model() {
    random_ops(8, true);
}
