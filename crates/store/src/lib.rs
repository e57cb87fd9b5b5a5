//! Core of s3backer-rs: the two traits every layer is built on, and the types they exchange.
//!
//! A read or a write travels down a stack of layers (front end → zero cache → block cache →
//! consistency cache → codec → transport). Everything above the codec speaks [`BlockStore`]:
//! fixed-size *plaintext* blocks addressed by number. The codec turns a plaintext block into an
//! object body with headers and hands it to an [`ObjectStore`]: the S3 transport or the local
//! directory used by `--test`. Keeping the two traits apart means caches never see encoded bytes
//! and transports never see plaintext.
//!
//! This crate also holds what more than one layer needs: S3 key naming ([`keys`]), the error type
//! ([`StoreError`]), and the stats registry ([`stats`]) that
//! renders the `stats` file in upstream's field order.
//!
//! With the cargo feature `mock`, `mock` offers in-memory test doubles of both traits (with
//! delays, gates and injected failures) to the tests of the other crates.

pub mod error;
pub mod faults;
pub mod fence;
pub mod keys;
#[cfg(feature = "mock")]
pub mod mock;
pub mod named;
pub mod stats;
mod types;

pub use error::{BoxError, Chain, ContractError, StoreError};
pub use fence::{TokenCondition, TokenObject, TokenState};
pub use stats::{StatsRegistry, StatsSection, StatsSource, StatsValue, StatsWriter};
pub use types::*;

use async_trait::async_trait;
use bytes::Bytes;

/// Result type used by every store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A store of fixed-size plaintext blocks: what every layer above the codec implements.
///
/// Blocks that were never written, or were written as all zeros, read back as zeros
/// ([`ReadOutcome::Zero`]). Writing `None` (zeros, see [`BlockData`]) deletes the block.
///
/// **Cancellation.** A caller may drop any of these futures before it finishes (a front end
/// abandons a request whose client went away). Every layer must then stay consistent: the
/// block cache runs the loads and fills that other readers wait on in their own tasks, and
/// counts waiting writers and flushes with guards that undo themselves on drop; the
/// consistency layer settles a write it tracks as "outcome unknown" when the write is dropped.
/// What a dropped operation did is unknown to its caller: a dropped write may or may not have
/// happened, and a dropped flush promises nothing.
#[async_trait]
pub trait BlockStore: Send + Sync + 'static {
    /// The volume's geometry (a layer passes its inner store's on).
    fn geometry(&self) -> Geometry;

    /// Size of every block in bytes (a power of two).
    fn block_size(&self) -> u32 {
        self.geometry().block_size
    }

    /// Number of blocks in the volume.
    fn num_blocks(&self) -> u64 {
        self.geometry().num_blocks
    }

    /// Reads block `n`. With [`ReadRequest::if_match`] the data must be the version with that
    /// ETag ([`StoreError::Stale`] otherwise). The request's [`ReadIntent`] tells caches whether
    /// a reader wants the data or a writer is about to change part of it.
    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome>;

    /// Reads block `n` again unless the stored version still has `etag` (an `If-None-Match`
    /// read: the block cache checks blocks it recovered from its file this way). The default
    /// always reads, which is correct, only slower.
    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        let _ = etag;
        self.read_block(n, ReadRequest::PLAIN).await.map(Revalidation::Changed)
    }

    /// Writes block `n`: `None` (zeros) deletes it. The data must be exactly one block long.
    /// Returns the ETag of the stored object when the store knows it.
    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>>;

    /// Writes `data` into block `n` at byte `offset`, leaving its other bytes as they are (a
    /// partial-block write; `offset + data.len()` must not pass the block's end). Zeros in
    /// `data` are written as zeros. Callers serialise writes of one block (the byte-range
    /// engine holds the block's lock).
    ///
    /// The default is a read-modify-write: a [`ReadRequest::FOR_UPDATE`] read, merge,
    /// [`write_block`](Self::write_block) (nothing is written when the bytes are already
    /// there). The block cache overrides it: it accepts the bytes without reading the block,
    /// and fetches the rest only when it is needed (a read of it, or the upload).
    async fn write_block_part(&self, n: BlockNum, offset: u32, data: Bytes) -> Result<()> {
        let bs = self.block_size();
        let (off, end) = part_bounds(n, offset, data.len(), bs)?;
        if off == 0 && end == bs as usize {
            return self.write_block(n, BlockData::new(data)).await.map(|_| ());
        }
        let old = self.read_block(n, ReadRequest::FOR_UPDATE).await?.into_data(bs);
        if old[off..end] == data[..] {
            return Ok(());
        }
        let mut buf = bytes::BytesMut::from(&old[..]);
        buf[off..end].copy_from_slice(&data);
        self.write_block(n, BlockData::new(buf.freeze())).await.map(|_| ())
    }

    /// Reads `len` bytes of block `n` from byte `offset`. The default reads the whole block;
    /// the block cache answers from a partially written block without reading the store when
    /// the bytes asked for are all there.
    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        let bs = self.block_size();
        let (off, end) = part_bounds(n, offset, len as usize, bs)?;
        let data = self.read_block(n, ReadRequest::PLAIN).await?.into_data(bs);
        Ok(data.slice(off..end))
    }

    /// Zeroes many blocks at once (missing ones are fine). The default writes each as zeros.
    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        for &n in blocks {
            self.write_block(n, None).await?;
        }
        Ok(())
    }

    /// True only when block `n` is certainly all zeros right now, known without asking the
    /// store (a front end reports such blocks as holes). The default knows nothing.
    fn known_zero(&self, n: BlockNum) -> bool {
        let _ = n;
        false
    }

    /// The block store this layer is built over, if it is one (the bottom store, over an
    /// [`ObjectStore`], answers `None`). [`flush`](Self::flush),
    /// [`survey_non_zero`](Self::survey_non_zero) and [`shutdown`](Self::shutdown) pass down to
    /// it unless the layer overrides them, so a layer writes out only what it changes.
    fn below(&self) -> Option<&dyn BlockStore> {
        None
    }

    /// Returns once the given blocks (all dirty blocks for `None`) are durable in the backing
    /// store. Layers that hold dirty data must write it down first, then call the inner flush.
    /// The default passes the flush [`below`](Self::below); with nothing below, nothing is held.
    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        match self.below() {
            Some(s) => s.flush(blocks).await,
            None => Ok(()),
        }
    }

    /// Reports every block that might be non-zero (duplicates allowed) to `sink`. The default
    /// asks the store [`below`](Self::below); with nothing below, it reports every block.
    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        match self.below() {
            Some(s) => s.survey_non_zero(sink).await,
            None => {
                // Block numbers below num_blocks fit a BlockNum (at most 2^32 blocks).
                (0..self.num_blocks()).filter_map(|n| BlockNum::try_from(n).ok()).for_each(sink);
                Ok(())
            }
        }
    }

    /// Flushes everything and stops background work. After this only dropping is allowed.
    /// The default shuts the store [`below`](Self::below) down.
    async fn shutdown(&self) -> Result<()> {
        match self.below() {
            Some(s) => s.shutdown().await,
            None => Ok(()),
        }
    }
}

/// A store of keyed objects with their headers: what the transports implement.
///
/// Objects are addressed by block number; the transport turns the number into its key (see
/// [`keys::BlockKeys`]). Bodies are opaque (possibly compressed and encrypted) bytes.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Fetches the object of block `n`.
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome>;

    /// Stores the object of block `n`. `volume` is given for block 0 only, so that the size
    /// metadata travels with it (upstream's `x-amz-meta-s3backer-*` headers). Returns the ETag
    /// of the stored object.
    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>>;

    /// Deletes the object of block `n`; a missing object is not an error.
    async fn delete_object(&self, n: BlockNum) -> Result<()>;

    /// Deletes many objects; missing ones are fine. The default deletes them one at a time.
    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        for &n in blocks {
            self.delete_object(n).await?;
        }
        Ok(())
    }

    /// Lists every stored block object, calling `sink` with each block number found.
    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()>;

    /// Reads the volume size metadata (kept with block 0), if any.
    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>>;

    /// What block 0 tells about the geometry: its size metadata, or the length of a block 0
    /// without it. The default knows only the metadata.
    async fn probe_volume(&self) -> Result<VolumeProbe> {
        Ok(match self.read_volume_meta().await? {
            Some(meta) => VolumeProbe::Meta(meta),
            None => VolumeProbe::Nothing,
        })
    }

    /// Reads and optionally changes the mount token; returns the previous value (0 = none).
    async fn mount_token(&self, op: TokenOp) -> Result<u32>;

    /// Changes the mount token from `expected` to `new` (0 clears it), but only if it is still
    /// `expected`: of several mounts that start at once, at most one may succeed. Returns
    /// [`TokenSwap::Done`] with the token now set (`new`, or another value of this mount's for a
    /// transport that writes a fresh value per attempt), or [`TokenSwap::Changed`] with the
    /// token found when another mount got there first.
    ///
    /// The default reads, compares and writes, which is only atomic for a store no other
    /// process uses at the same time; transports shared between hosts override it.
    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        let current = self.mount_token(TokenOp::Read).await?;
        if current != expected {
            return Ok(TokenSwap::Changed(current));
        }
        self.mount_token(if new == 0 { TokenOp::Clear } else { TokenOp::Set(new) }).await?;
        Ok(TokenSwap::Done(new))
    }

    /// Makes the given objects (all for `None`) durable. Stateless transports return at once.
    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()>;

    /// Tells the transport the volume's block size once it is settled, so that it can refuse an
    /// answer longer than any object of the volume can be. The default ignores it.
    fn set_block_size(&self, _block_size: u32) {}

    /// The transport's objects besides the blocks ([`named::NamedObjects`]), if it can store
    /// them. The default cannot.
    fn named(&self) -> Option<&dyn named::NamedObjects> {
        None
    }
}

/// Checks that `len` bytes from `offset` lie inside one block of `block_size` bytes; returns
/// the range as indexes.
pub fn part_bounds(n: BlockNum, offset: u32, len: usize, block_size: u32) -> Result<(usize, usize)> {
    let off = offset as usize;
    match off.checked_add(len) {
        Some(end) if end <= block_size as usize => Ok((off, end)),
        _ => Err(ContractError::PastBlockEnd { block: n, offset, len, block_size }.into()),
    }
}

/// Length of the static zero buffer [`zero_block`] slices: blocks up to 1 MiB (nearly all
/// volumes) cost neither an allocation nor a reference count.
const STATIC_ZEROS: usize = 1 << 20;
/// In the zero-initialised data segment: pages nobody writes are the kernel's shared zero page.
static ZEROS: [u8; STATIC_ZEROS] = [0; STATIC_ZEROS];

/// A byte buffer of `len` zeros, shared: every call returns a view of one buffer, so a zero
/// block read (a hole) costs no allocation and no zeroing. Blocks up to 1 MiB slice a static
/// buffer; larger ones share one heap buffer, grown (once per larger size) when needed.
pub fn zero_block(len: u32) -> Bytes {
    let len = len as usize;
    if len <= STATIC_ZEROS {
        return Bytes::from_static(&ZEROS[..len]);
    }
    static LARGE: std::sync::Mutex<Option<Bytes>> = std::sync::Mutex::new(None);
    let mut large = LARGE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*large {
        Some(b) if b.len() >= len => b.slice(..len),
        _ => large.insert(Bytes::from(vec![0u8; len])).clone(),
    }
}

/// True when every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // Compare in word-sized chunks; the compiler vectorises this well.
    // SAFETY: every bit pattern is a valid u128, and align_to only reinterprets aligned middles.
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero blocks of every size are zeros of that length, and share one buffer per size
    /// class instead of allocating one each.
    #[test]
    fn zero_blocks_share_one_buffer() {
        for len in [0u32, 1, 4096, 65536, 1 << 20, (1 << 20) + 1, 3 << 20, 2 << 20] {
            let (a, b) = (zero_block(len), zero_block(len));
            assert_eq!(a.len(), len as usize);
            assert!(is_zero(&a));
            assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for blocks of {len} bytes");
        }
        assert_eq!(zero_block(4096).as_ptr(), zero_block(65536).as_ptr());
    }

    /// A store that implements only what the trait requires: the bottom one has nothing
    /// below, a layer over it passes flush, survey and shutdown down.
    struct Plain(Option<Box<dyn BlockStore>>, std::sync::Mutex<Vec<&'static str>>);

    #[async_trait]
    impl BlockStore for Plain {
        fn geometry(&self) -> Geometry {
            Geometry { block_size: 4096, num_blocks: 3 }
        }
        async fn read_block(&self, _: BlockNum, _: ReadRequest) -> Result<ReadOutcome> {
            Ok(ReadOutcome::Zero)
        }
        async fn write_block(&self, _: BlockNum, _: Option<BlockData>) -> Result<Option<Etag>> {
            Ok(None)
        }
        fn below(&self) -> Option<&dyn BlockStore> {
            self.1.lock().unwrap().push("below");
            self.0.as_deref()
        }
    }

    #[tokio::test]
    async fn what_a_layer_leaves_out_passes_below() {
        async fn survey(s: &Plain) -> Vec<BlockNum> {
            let seen = std::sync::Mutex::new(Vec::new());
            s.survey_non_zero(&|n| seen.lock().unwrap().push(n)).await.unwrap();
            seen.into_inner().unwrap()
        }
        let bottom = Plain(None, Default::default());
        assert_eq!(survey(&bottom).await, vec![0, 1, 2], "with nothing below, every block might be data");
        let layer = Plain(Some(Box::new(bottom)), Default::default());
        layer.flush(None).await.unwrap();
        layer.shutdown().await.unwrap();
        assert_eq!(survey(&layer).await, vec![0, 1, 2]);
        assert_eq!(*layer.1.lock().unwrap(), ["below"; 3], "each passed down");
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        for i in [0usize, 1, 15, 16, 17, 4000, 4098] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            assert!(!is_zero(&v[1..]) || i == 0);
            v[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
