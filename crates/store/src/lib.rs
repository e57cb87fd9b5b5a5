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
//! ([`StoreError`]) with its single mapping to errno, and the stats registry ([`stats`]) that
//! renders the `stats` file in upstream's field order.
//!
//! With the cargo feature `mock`, [`mock`] offers in-memory test doubles of both traits (with
//! delays, gates and injected failures) to the tests of the other crates.
#![deny(missing_docs)]

pub mod error;
pub mod faults;
pub mod keys;
#[cfg(feature = "mock")]
pub mod mock;
pub mod stats;
mod types;

pub use error::StoreError;
pub use stats::{StatsRegistry, StatsSection, StatsSource, StatsWriter};
pub use types::*;

use async_trait::async_trait;
use bytes::Bytes;

/// Result type used by every store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A store of fixed-size plaintext blocks: what every layer above the codec implements.
///
/// Blocks that were never written, or were written as all zeros, read back as zeros
/// ([`ReadOutcome::Zero`]). Writing all zeros (or `None`) deletes the block.
#[async_trait]
pub trait BlockStore: Send + Sync + 'static {
    /// Size of every block in bytes (a power of two).
    fn block_size(&self) -> u32;

    /// Number of blocks in the volume.
    fn num_blocks(&self) -> u64;

    /// Reads block `n`. With [`ReadCondition::IfMatch`] the data must be the version with that
    /// ETag ([`StoreError::Stale`] otherwise); with [`ReadCondition::IfNoneMatch`] the store may
    /// answer [`ReadOutcome::NotModified`] when the stored version still has that ETag.
    async fn read_block(&self, n: BlockNum, cond: ReadCondition) -> Result<ReadOutcome>;

    /// Reads block `n` to change part of it (a read-modify-write). The same as a plain
    /// [`read_block`](Self::read_block), except that caches do not take it as a reader's
    /// interest: a sequential writer's partial blocks must not start read-ahead of blocks it is
    /// about to overwrite (each such fetch a wasted request).
    async fn read_for_update(&self, n: BlockNum) -> Result<ReadOutcome> {
        self.read_block(n, ReadCondition::None).await
    }

    /// Writes block `n`. `None`, or data that is all zeros, deletes it. The data must be exactly
    /// one block long. Returns the ETag of the stored object when the store knows it.
    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>>;

    /// Writes `data` into block `n` at byte `offset`, leaving its other bytes as they are (a
    /// partial-block write; `offset + data.len()` must not pass the block's end). Zeros in
    /// `data` are written as zeros. Callers serialise writes of one block (the byte-range
    /// engine holds the block's lock).
    ///
    /// The default is a read-modify-write: [`read_for_update`](Self::read_for_update), merge,
    /// [`write_block`](Self::write_block) (nothing is written when the bytes are already
    /// there). The block cache overrides it: it accepts the bytes without reading the block,
    /// and fetches the rest only when it is needed (a read of it, or the upload).
    async fn write_block_part(&self, n: BlockNum, offset: u32, data: Bytes) -> Result<()> {
        let bs = self.block_size();
        let (off, end) = part_bounds(n, offset, data.len(), bs)?;
        if off == 0 && end == bs as usize {
            let whole = (!is_zero(&data)).then_some(data);
            return self.write_block(n, whole).await.map(|_| ());
        }
        let old = self
            .read_for_update(n)
            .await?
            .into_data(bs)
            .ok_or_else(|| StoreError::Other(format!("block {n:#010x}: unexpected \"not modified\" answer")))?;
        if old[off..end] == data[..] {
            return Ok(());
        }
        let mut buf = bytes::BytesMut::from(&old[..]);
        buf[off..end].copy_from_slice(&data);
        let whole = (!is_zero(&buf)).then(|| buf.freeze());
        self.write_block(n, whole).await.map(|_| ())
    }

    /// Reads `len` bytes of block `n` from byte `offset`. The default reads the whole block;
    /// the block cache answers from a partially written block without reading the store when
    /// the bytes asked for are all there.
    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        let bs = self.block_size();
        let (off, end) = part_bounds(n, offset, len as usize, bs)?;
        let data = self
            .read_block(n, ReadCondition::None)
            .await?
            .into_data(bs)
            .ok_or_else(|| StoreError::Other(format!("block {n:#010x}: unexpected \"not modified\" answer")))?;
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

    /// Returns once the given blocks (all dirty blocks for `None`) are durable in the backing
    /// store. Layers that hold dirty data must write it down first, then call the inner flush.
    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()>;

    /// Reports every block that might be non-zero (duplicates allowed) to `sink`.
    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()>;

    /// Flushes everything and stops background work. After this only dropping is allowed.
    async fn shutdown(&self) -> Result<()>;
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

    /// Reads and optionally changes the mount token; returns the previous value (0 = none).
    async fn mount_token(&self, op: TokenOp) -> Result<u32>;

    /// Changes the mount token from `expected` to `new` (0 clears it), but only if it is still
    /// `expected`: of several mounts that start at once, at most one may succeed. Returns
    /// [`TokenSwap::Changed`] with the token found when another mount got there first.
    ///
    /// The default reads, compares and writes, which is only atomic for a store no other
    /// process uses at the same time; transports shared between hosts override it.
    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        let current = self.mount_token(TokenOp::Read).await?;
        if current != expected {
            return Ok(TokenSwap::Changed(current));
        }
        self.mount_token(if new == 0 { TokenOp::Clear } else { TokenOp::Set(new) }).await?;
        Ok(TokenSwap::Done)
    }

    /// Makes the given objects (all for `None`) durable. Stateless transports return at once.
    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()>;

    /// Tells the transport the volume's block size once it is settled, so that it can refuse an
    /// answer longer than any object of the volume can be. The default ignores it.
    fn set_block_size(&self, _block_size: u32) {}
}

/// Checks that `len` bytes from `offset` lie inside one block of `block_size` bytes; returns
/// the range as indexes.
pub fn part_bounds(n: BlockNum, offset: u32, len: usize, block_size: u32) -> Result<(usize, usize)> {
    let off = offset as usize;
    match off.checked_add(len) {
        Some(end) if end <= block_size as usize => Ok((off, end)),
        _ => Err(StoreError::Other(format!(
            "{len} bytes at offset {offset} of block {n:#010x} pass the end of the block ({block_size} bytes)"
        ))),
    }
}

/// A byte buffer of `len` zeros, shared so that zero blocks cost no allocation per read.
pub fn zero_block(len: u32) -> Bytes {
    Bytes::from(vec![0u8; len as usize])
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
