//! Byte-range I/O over a [`BlockStore`]: what a front end (FUSE or NBD) needs.
//!
//! The kernel asks for arbitrary offsets and lengths; the store only knows whole blocks. A range
//! is split into a partial head block, whole middle blocks and a partial tail block. Whole blocks
//! go straight down; a partial block is read-modify-write, done under that block's lock so two
//! partial writes of one block cannot lose each other's bytes. Whole-block writes take the lock
//! too, so a full write can never be overwritten by a read-modify-write that read the older data.
//! The blocks of one request are processed concurrently, because each may be a network round
//! trip when no cache sits below.
//!
//! Out-of-range behaviour is upstream's: an offset past the end is `ESPIPE`, a range running
//! past the end is cut at the end.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use s3b_store::{BlockData, BlockNum, BlockStore, ReadRequest, Result, StoreError};
use std::sync::Arc;
use tokio::sync::Mutex;

pub mod observe;
pub use observe::{Op, VolumeObserver};

/// Number of lock shards; blocks `n` and `n + LOCK_SHARDS` share a lock, which only costs a
/// little concurrency when both are written at the same moment.
const LOCK_SHARDS: usize = 4096;

/// Most blocks zeroed by one bulk call (S3's multi-object delete takes up to 1000 keys).
const BULK_ZERO_CHUNK: u64 = 1000;

/// A front-end-independent view of the volume as one flat range of bytes.
pub struct Volume {
    store: Arc<dyn BlockStore>,
    block_size: u32,
    size: u64,
    read_only: bool,
    locks: Vec<Mutex<()>>,
    observer: observe::Slot,
}

/// One block's share of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    block: BlockNum,
    /// Offset inside the block.
    start: usize,
    /// Bytes of this block covered.
    len: usize,
    /// Offset of this piece inside the caller's buffer.
    buf_off: usize,
}

impl Piece {
    /// Offset inside the block, as the store takes it.
    fn start_in_block(&self) -> u32 {
        u32::try_from(self.start).unwrap_or(u32::MAX)
    }
}

/// Splits `[offset, offset + len)` into per-block pieces.
#[expect(
    clippy::cast_possible_truncation,
    reason = "callers clip the range to the volume and to a buffer they hold: a block number is \
              below num_blocks (at most 2^32), an offset or length inside a block below the block \
              size (a u32), an offset inside the range below the buffer's length (a usize)"
)]
fn pieces(block_size: u64, offset: u64, len: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let block = pos / block_size;
        let start = pos % block_size;
        let n = (block_size - start).min(end - pos);
        out.push(Piece {
            block: block as BlockNum,
            start: start as usize,
            len: n as usize,
            buf_off: (pos - offset) as usize,
        });
        pos += n;
    }
    out
}

/// The error for an I/O that starts past the end of the volume (upstream: ESPIPE).
fn out_of_range(offset: u64, size: u64) -> StoreError {
    StoreError::PastEnd { offset, size }
}

/// The errno a front end reports for `e`, from its kind: upstream's mapping where it has one
/// (refused keys `EACCES`, access denied `EPERM`, a redirect `ELOOP`, a timeout `ETIMEDOUT`, an
/// unreachable server `ENXIO`), the local error's own errno for local I/O, `EIO` for everything
/// else. Both front ends use this one function (NBD narrows the result to the few error values
/// its protocol has).
pub fn errno(e: &StoreError) -> i32 {
    match e {
        StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        StoreError::PastEnd { .. } => libc::ESPIPE,
        StoreError::Stale(_) => libc::ESTALE,
        StoreError::Unauthenticated(_) => libc::EACCES,
        StoreError::Forbidden(_) => libc::EPERM,
        StoreError::Misdirected(_) => libc::ELOOP,
        StoreError::TimedOut(_) => libc::ETIMEDOUT,
        StoreError::Unreachable(_) => libc::ENXIO,
        StoreError::ReadOnly => libc::EROFS,
        StoreError::NotRunning => libc::ENOTCONN,
        StoreError::UploadFailed { source, .. } => errno(source),
        StoreError::Corrupt { .. }
        | StoreError::WrongPassword { .. }
        | StoreError::NotFound(_)
        | StoreError::Unavailable(_)
        | StoreError::Unsupported(_)
        | StoreError::Refused(_)
        | StoreError::Setup(_)
        | StoreError::Conflict(_)
        | StoreError::Contract(_)
        | StoreError::Injected
        | StoreError::Task(_) => libc::EIO,
    }
}

impl Volume {
    /// A volume over `store`; writes fail with EROFS when `read_only`.
    pub fn new(store: Arc<dyn BlockStore>, read_only: bool) -> Self {
        let block_size = store.block_size();
        let size = u64::from(block_size) * store.num_blocks();
        Volume {
            store,
            block_size,
            size,
            read_only,
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            observer: observe::Slot::default(),
        }
    }

    /// Size of the volume in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Block size in bytes, for offset arithmetic.
    fn bs(&self) -> u64 {
        u64::from(self.block_size)
    }

    /// The store below.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Installs `observer` for every later request (the first one installed stays).
    pub fn observe(&self, observer: Arc<dyn VolumeObserver>) {
        let _ = self.observer.0.set(observer);
    }

    /// Runs a request, reporting its duration to the observer, if any.
    async fn timed<T>(&self, op: Op, request: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let Some(o) = self.observer.0.get() else { return request.await };
        let started = std::time::Instant::now();
        let result = request.await;
        o.request(op, started.elapsed(), result.is_ok());
        result
    }

    fn lock(&self, n: BlockNum) -> &Mutex<()> {
        &self.locks[n as usize % LOCK_SHARDS]
    }

    /// Clips a request to the volume; errors when it starts past the end.
    fn clip(&self, offset: u64, len: u64) -> Result<u64> {
        if offset > self.size {
            return Err(out_of_range(offset, self.size));
        }
        Ok(len.min(self.size - offset))
    }

    async fn read_whole(&self, n: BlockNum) -> Result<Bytes> {
        Ok(self.store.read_block(n, ReadRequest::PLAIN).await?.into_data(self.block_size))
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the volume).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.timed(Op::Read, self.read_untimed(offset, len)).await
    }

    async fn read_untimed(&self, offset: u64, len: u64) -> Result<Bytes> {
        let len = self.clip(offset, len)?;
        let ps = pieces(self.bs(), offset, len);
        if let [p] = ps[..] {
            // One block: hand out a slice of it without copying.
            if p.len as u64 != self.bs() {
                return self
                    .store
                    .read_block_part(p.block, p.start_in_block(), u32::try_from(p.len).unwrap_or(u32::MAX))
                    .await;
            }
            let data = self.read_whole(p.block).await?;
            return Ok(data.slice(p.start..p.start + p.len));
        }
        let parts = try_join_all(ps.iter().map(|p| async move {
            let data = self.read_whole(p.block).await?;
            Ok::<_, StoreError>((p, data))
        }))
        .await?;
        // On 64-bit targets always exact; elsewhere a read too large for memory fails to allocate.
        let mut out = BytesMut::zeroed(usize::try_from(len).unwrap_or(usize::MAX));
        for (p, data) in parts {
            out[p.buf_off..p.buf_off + p.len].copy_from_slice(&data[p.start..p.start + p.len]);
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset`; returns how many bytes were written (cut at the end). A write
    /// of exactly one block is handed down without copying; the blocks of a larger write are
    /// copied out, so a cached block never keeps a bigger request buffer alive.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<usize> {
        self.timed(Op::Write, self.write_untimed(offset, data)).await
    }

    async fn write_untimed(&self, offset: u64, data: Bytes) -> Result<usize> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let len = self.clip(offset, data.len() as u64)?;
        let ps = pieces(self.bs(), offset, len);
        let piece = |p: &Piece| {
            if p.buf_off == 0 && p.len == data.len() {
                data.clone()
            } else {
                Bytes::copy_from_slice(&data[p.buf_off..p.buf_off + p.len])
            }
        };
        try_join_all(ps.iter().map(|p| self.write_piece(*p, Some(piece(p))))).await?;
        // At most `data.len()`.
        Ok(usize::try_from(len).unwrap_or(data.len()))
    }

    /// Zeroes `[offset, offset + len)`: whole blocks are deleted with bulk calls of at most
    /// `BULK_ZERO_CHUNK` blocks, partial ones are read-modify-written. Upstream's
    /// fallocate(PUNCH_HOLE) semantics. Works in chunks, so discarding a huge volume needs no
    /// memory proportional to its size.
    pub async fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.timed(Op::Trim, self.punch_hole_untimed(offset, len)).await
    }

    async fn punch_hole_untimed(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let len = self.clip(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let bs = self.bs();
        // Whole blocks: [first_whole, end_whole).
        let first_whole = offset.div_ceil(bs);
        let end_whole = end / bs;
        if first_whole >= end_whole {
            // No whole block: one or two partial pieces.
            let ps = pieces(bs, offset, len);
            try_join_all(ps.iter().map(|p| self.write_piece(*p, None))).await?;
            return Ok(());
        }
        let head = first_whole * bs - offset;
        let tail = end - end_whole * bs;
        let mut partial = Vec::new();
        if head > 0 {
            partial.extend(pieces(bs, offset, head));
        }
        if tail > 0 {
            partial.extend(pieces(bs, end_whole * bs, tail));
        }
        try_join_all(partial.iter().map(|p| self.write_piece(*p, None))).await?;
        let mut start = first_whole;
        while start < end_whole {
            let stop = (start + BULK_ZERO_CHUNK).min(end_whole);
            let blocks: Vec<BlockNum> = (start..stop).map_while(|n| BlockNum::try_from(n).ok()).collect();
            // Hold the locks of the blocks being zeroed so no read-modify-write interleaves;
            // taken in shard order, so two punches cannot deadlock.
            let mut shards: Vec<usize> = blocks.iter().map(|&n| n as usize % LOCK_SHARDS).collect();
            shards.sort_unstable();
            shards.dedup();
            let mut guards = Vec::with_capacity(shards.len());
            for s in shards {
                guards.push(self.locks[s].lock().await);
            }
            self.store.bulk_zero(&blocks).await?;
            drop(guards);
            start = stop;
        }
        Ok(())
    }

    /// Writes one piece: `data = None` means zeros.
    async fn write_piece(&self, p: Piece, data: Option<Bytes>) -> Result<()> {
        let _guard = self.lock(p.block).lock().await;
        if p.len as u64 == self.bs() {
            // Zero-ness of a whole block is decided here, once, for every layer below.
            self.store.write_block(p.block, data.and_then(BlockData::new)).await?;
            return Ok(());
        }
        // A partial block: the store merges it (the block cache without reading the block).
        let part = data.unwrap_or_else(|| Bytes::from(vec![0u8; p.len]));
        self.store.write_block_part(p.block, p.start_in_block(), part).await
    }

    /// Returns once every byte written so far is durable in the store.
    pub async fn flush(&self) -> Result<()> {
        self.timed(Op::Flush, self.flush_untimed()).await
    }

    async fn flush_untimed(&self) -> Result<()> {
        self.store.flush(None).await
    }

    /// Returns once the blocks overlapping `[offset, offset + len)` (clipped to the volume) are
    /// durable in the store: what a forced-unit-access write needs.
    pub async fn flush_range(&self, offset: u64, len: u64) -> Result<()> {
        self.timed(Op::Flush, self.flush_range_untimed(offset, len)).await
    }

    async fn flush_range_untimed(&self, offset: u64, len: u64) -> Result<()> {
        let len = self.clip(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / self.bs();
        let last = (offset + len - 1) / self.bs();
        let blocks: Vec<BlockNum> = (first..=last).map_while(|n| BlockNum::try_from(n).ok()).collect();
        self.store.flush(Some(&blocks)).await
    }

    /// True when zeroing `[offset, offset + len)` needs no read-modify-write: the range starts
    /// and ends on block boundaries (or at the end of the volume), so [`Volume::punch_hole`]
    /// only deletes whole blocks.
    pub fn zeroing_is_whole_blocks(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len).min(self.size);
        offset.is_multiple_of(self.bs()) && (end.is_multiple_of(self.bs()) || end == self.size)
    }

    /// True when block `n` is known to be all zeros without asking the store (never written,
    /// deleted or read back as zeros, as far as the layers below know). `false` means "may
    /// hold data", never "holds data".
    pub fn known_zero(&self, n: BlockNum) -> bool {
        self.store.known_zero(n)
    }

    /// Splits `[offset, offset + len)` (clipped to the volume) into runs of the same
    /// [`Volume::known_zero`] answer: `(length, known_zero)` pairs in order, at most
    /// `max_runs` of them (the last run may then end before the range does).
    pub fn zero_runs(&self, offset: u64, len: u64, max_runs: usize) -> Result<Vec<(u64, bool)>> {
        let len = self.clip(offset, len)?;
        let mut out: Vec<(u64, bool)> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let block = pos / self.bs();
            let stop = ((block + 1) * self.bs()).min(end);
            // Below num_blocks, so a BlockNum (a volume has at most 2^32 blocks).
            let Ok(n) = BlockNum::try_from(block) else { break };
            if !push_run(&mut out, stop - pos, self.known_zero(n), max_runs) {
                break;
            }
            pos = stop;
        }
        Ok(out)
    }
}

/// Appends `len` bytes in `state` to the runs of a map (an NBD block-status reply, a list of
/// zero and data runs): merged into the last run when that has the same state, else a new run.
/// Returns false, changing nothing, when a new run would make more than `max` of them.
pub fn push_run<T: PartialEq>(runs: &mut Vec<(u64, T)>, len: u64, state: T, max: usize) -> bool {
    if let Some((l, s)) = runs.last_mut()
        && *s == state
    {
        *l += len;
        return true;
    }
    if runs.len() == max {
        return false;
    }
    runs.push((len, state));
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test values are small constants and offsets within them")]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_while_the_state_holds_and_stop_at_the_limit() {
        let mut runs = Vec::new();
        assert!(push_run(&mut runs, 4, true, 2));
        assert!(push_run(&mut runs, 6, true, 2));
        assert!(push_run(&mut runs, 1, false, 2));
        assert!(push_run(&mut runs, 3, false, 2), "merging needs no new run");
        assert!(!push_run(&mut runs, 5, true, 2), "a third run passes the limit");
        assert_eq!(runs, vec![(10, true), (4, false)]);
    }

    #[test]
    fn each_kind_has_its_errno() {
        let d = || s3b_store::BoxError::from("detail");
        let cases = [
            (StoreError::io("x", std::io::Error::from_raw_os_error(libc::ENOSPC)), libc::ENOSPC),
            (StoreError::io("x", std::io::Error::other("no errno")), libc::EIO),
            (StoreError::PastEnd { offset: 9, size: 8 }, libc::ESPIPE),
            (StoreError::Stale(1), libc::ESTALE),
            (StoreError::Unauthenticated(d()), libc::EACCES),
            (StoreError::Forbidden(d()), libc::EPERM),
            (StoreError::Misdirected(d()), libc::ELOOP),
            (StoreError::TimedOut(d()), libc::ETIMEDOUT),
            (StoreError::Unreachable(d()), libc::ENXIO),
            (StoreError::ReadOnly, libc::EROFS),
            (StoreError::NotRunning, libc::ENOTCONN),
            (StoreError::NotFound(d()), libc::EIO),
            (StoreError::Unavailable(d()), libc::EIO),
            (StoreError::Unsupported(d()), libc::EIO),
            (StoreError::Refused(d()), libc::EIO),
            (StoreError::Setup(d()), libc::EIO),
            (StoreError::Conflict(d()), libc::EIO),
            (StoreError::corrupt(1, "x"), libc::EIO),
            (StoreError::Injected, libc::EIO),
            (StoreError::Task(d()), libc::EIO),
        ];
        for (e, want) in cases {
            assert_eq!(errno(&e), want, "{e:?}");
        }
        // A failed upload reports what the upload met.
        let up = StoreError::UploadFailed { block: 1, source: Arc::new(StoreError::TimedOut(d())) };
        assert_eq!(errno(&up), libc::ETIMEDOUT);
    }

    #[test]
    fn splitting() {
        assert_eq!(pieces(4, 0, 0), vec![]);
        assert_eq!(
            pieces(4, 3, 6),
            vec![
                Piece { block: 0, start: 3, len: 1, buf_off: 0 },
                Piece { block: 1, start: 0, len: 4, buf_off: 1 },
                Piece { block: 2, start: 0, len: 1, buf_off: 5 },
            ]
        );
        assert_eq!(pieces(4, 8, 4), vec![Piece { block: 2, start: 0, len: 4, buf_off: 0 }]);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test values are small constants and offsets within them")]
mod model_tests {
    use super::*;
    use proptest::prelude::*;
    use s3b_codec::{Codec, CodecConfig, CodecStore};
    use s3b_dir::DirStore;
    use s3b_store::keys::BlockKeys;

    #[derive(Debug, Clone)]
    enum Op {
        Write { off: u64, len: usize, fill: u8 },
        Read { off: u64, len: u64 },
        Punch { off: u64, len: u64 },
        Flush,
    }

    const BS: u64 = 512;
    const BLOCKS: u64 = 16;
    const SIZE: u64 = BS * BLOCKS;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SIZE, 1usize..1600, any::<u8>()).prop_map(|(off, len, fill)| Op::Write { off, len, fill }),
            (0..=SIZE, 0u64..1600).prop_map(|(off, len)| Op::Read { off, len }),
            (0..SIZE, 1u64..1600).prop_map(|(off, len)| Op::Punch { off, len }),
            Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Any sequence of unaligned writes, reads, punches and flushes behaves like a flat
        /// byte array; batches of operations on disjoint ranges also run concurrently.
        #[test]
        fn volume_matches_model(ops in prop::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let d = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let dir = Arc::new(DirStore::open(d.path(), BlockKeys::default()).unwrap());
                let store = Arc::new(CodecStore::new(dir, Codec::new(BS as u32, CodecConfig::default()), BLOCKS));
                let v = Volume::new(store, false);
                let mut model = vec![0u8; SIZE as usize];
                for op in ops {
                    match op {
                        Op::Write { off, len, fill } => {
                            let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                            let n = v.write(off, Bytes::copy_from_slice(&data)).await.unwrap();
                            let end = (off as usize + len).min(SIZE as usize);
                            prop_assert_eq!(n, end - off as usize);
                            model[off as usize..end].copy_from_slice(&data[..n]);
                        }
                        Op::Read { off, len } => {
                            let got = v.read(off, len).await.unwrap();
                            let end = (off + len).min(SIZE) as usize;
                            prop_assert_eq!(&got[..], &model[off as usize..end]);
                        }
                        Op::Punch { off, len } => {
                            v.punch_hole(off, len).await.unwrap();
                            let end = (off + len).min(SIZE) as usize;
                            model[off as usize..end].fill(0);
                        }
                        Op::Flush => v.flush().await.unwrap(),
                    }
                }
                // Concurrent writes to disjoint halves of every block, then one full read.
                let halves: Vec<_> = (0..BLOCKS * 2).map(|h| {
                    let v = &v;
                    async move { v.write(h * BS / 2, Bytes::from(vec![h as u8 + 1; (BS / 2) as usize])).await }
                }).collect();
                futures::future::try_join_all(halves).await.unwrap();
                for h in 0..BLOCKS * 2 {
                    let s = (h * BS / 2) as usize;
                    model[s..s + (BS / 2) as usize].fill(h as u8 + 1);
                }
                prop_assert_eq!(&v.read(0, SIZE).await.unwrap()[..], &model[..]);
                // Beyond the end.
                prop_assert!(v.read(SIZE + 1, 1).await.is_err());
                prop_assert_eq!(v.write(SIZE, Bytes::from_static(b"x")).await.unwrap(), 0);
                Ok(())
            })?;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zero_knowledge_whole_block_ranges_and_ranged_flush() {
        // Blocks 2 and 3 are known zero.
        let store = Arc::new(s3b_store::mock::MemBlocks::new(BS as u32, BLOCKS));
        store.set_known_zero(&[2, 3]);
        let v = Volume::new(store.clone(), false);
        assert_eq!(v.zero_runs(0, SIZE, 100).unwrap(), vec![(2 * BS, false), (2 * BS, true), (12 * BS, false)]);
        assert_eq!(v.zero_runs(BS + 7, 2 * BS, 100).unwrap(), vec![(BS - 7, false), (BS + 7, true)]);
        assert_eq!(v.zero_runs(0, SIZE, 2).unwrap(), vec![(2 * BS, false), (2 * BS, true)]);
        assert_eq!(v.zero_runs(SIZE - 10, 100, 100).unwrap(), vec![(10, false)]);
        assert!(v.zero_runs(SIZE + 1, 1, 1).is_err());
        assert!(v.zeroing_is_whole_blocks(BS, 2 * BS));
        assert!(v.zeroing_is_whole_blocks(SIZE - BS, 10 * BS), "running past the end counts as whole");
        assert!(!v.zeroing_is_whole_blocks(1, BS));
        assert!(!v.zeroing_is_whole_blocks(0, BS + 1));
        v.write(BS + 5, Bytes::from(vec![1u8; BS as usize])).await.unwrap();
        v.flush_range(BS + 5, BS).await.unwrap();
        v.flush_range(0, 0).await.unwrap();
        // A ranged flush names only the blocks it touches.
        let flushes = store.flushes();
        assert!(flushes.iter().any(Option::is_some), "{flushes:?}");
        for b in flushes.iter().flatten() {
            assert!(b.iter().all(|&n| (1..=2).contains(&n)), "{b:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn read_only_refuses_writes() {
        let d = tempfile::tempdir().unwrap();
        let dir = Arc::new(DirStore::open(d.path(), BlockKeys::default()).unwrap());
        let store = Arc::new(CodecStore::new(dir, Codec::new(BS as u32, CodecConfig::default()), BLOCKS));
        let v = Volume::new(store, true);
        assert!(matches!(v.write(0, Bytes::from_static(b"x")).await, Err(StoreError::ReadOnly)));
        assert!(matches!(v.punch_hole(0, 1).await, Err(StoreError::ReadOnly)));
        assert_eq!(v.read(0, 4).await.unwrap(), Bytes::from_static(&[0, 0, 0, 0]));
    }
}
