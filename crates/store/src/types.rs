//! Plain data types exchanged between layers: geometry, block data, read requests and their
//! outcomes, entity tags, object bodies and the mount-token operations. They carry their own
//! invariants where there are any (block data is never all zeros), so a layer that receives one
//! need not check it again.

use bytes::Bytes;
use std::fmt;

/// A block number: the one width every layer uses for a block. Upstream limits volumes to
/// 2^32 blocks, so 32 bits suffice. Counts of blocks and exclusive ends of block ranges are
/// `u64` (a volume of 2^32 blocks has one more than the largest number); a byte offset divided
/// by the block size is converted to a `BlockNum` once, where the front end computes it.
pub type BlockNum = u32;

/// A volume's shape: how big each block is and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size of every block in bytes (a power of two).
    pub block_size: u32,
    /// Number of blocks in the volume.
    pub num_blocks: u64,
}

/// An S3-style ETag: the 16 bytes of an MD5 digest (of the stored, encoded object).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Etag(pub [u8; 16]);

impl Etag {
    /// The ETag upstream uses for "unknown" (all 0xff), e.g. after a failed write.
    pub const UNKNOWN: Etag = Etag([0xff; 16]);

    /// Parses an ETag header value: 32 hex digits, optionally in double quotes.
    /// Returns `None` for anything else (multipart ETags such as `"…-2"` included).
    pub fn parse(s: &str) -> Option<Etag> {
        let s = s.trim();
        let s = s.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(s);
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Etag(out))
    }

    /// The ETag as 32 lowercase hex digits (no quotes).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The ETag as an HTTP header value: 32 hex digits in double quotes.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.to_hex())
    }
}

impl fmt::Debug for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Etag({})", self.to_hex())
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A precondition on an object GET (the transport's side of a block read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadCondition {
    /// Plain read.
    #[default]
    None,
    /// The stored object must have this ETag (`If-Match`); otherwise the read fails as stale.
    IfMatch(Etag),
    /// The store may answer "not modified" when the object still has this ETag (`If-None-Match`).
    IfNoneMatch(Etag),
}

/// Why a block is read: layers that guess what comes next (read-ahead) only count reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadIntent {
    /// Someone wants the data.
    #[default]
    Read,
    /// A read-modify-write: the block is about to be overwritten in part. Caches do not take it
    /// as a reader's interest (a sequential writer's partial blocks must not start read-ahead
    /// of blocks it is about to overwrite, each such fetch a wasted request).
    Update,
}

/// How a block read is to be answered. Every layer passes the request on whole (a layer that
/// adds an ETag to check keeps the intent), so the intent reaches the layer that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReadRequest {
    /// Why the block is read.
    pub intent: ReadIntent,
    /// The stored version must have this ETag (`If-Match`); otherwise [`crate::StoreError::Stale`].
    pub if_match: Option<Etag>,
}

impl ReadRequest {
    /// A plain read.
    pub const PLAIN: ReadRequest = ReadRequest { intent: ReadIntent::Read, if_match: None };
    /// A read for a read-modify-write.
    pub const FOR_UPDATE: ReadRequest = ReadRequest { intent: ReadIntent::Update, if_match: None };

    /// This request, also requiring the stored version to have `etag`.
    pub fn with_if_match(self, etag: Etag) -> Self {
        ReadRequest { if_match: Some(etag), ..self }
    }

    /// The transport condition of this request.
    pub fn condition(&self) -> ReadCondition {
        self.if_match.map_or(ReadCondition::None, ReadCondition::IfMatch)
    }
}

/// What a block read returns: data or zeros — never "not modified", which only
/// [`crate::BlockStore::revalidate`] can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The block's data (exactly one block long) and, when known, the stored object's ETag.
    Data {
        /// The plaintext block.
        data: Bytes,
        /// ETag of the stored object, when the store knows it.
        etag: Option<Etag>,
    },
    /// The block is all zeros (never written, or deleted).
    Zero,
}

impl ReadOutcome {
    /// The block's bytes, materialising zeros.
    pub fn into_data(self, block_size: u32) -> Bytes {
        match self {
            ReadOutcome::Data { data, .. } => data,
            ReadOutcome::Zero => crate::zero_block(block_size),
        }
    }
}

/// One block of data that is not all zeros. Whether a block is zeros is decided once, where
/// its bytes are made (the front end, or a layer merging a partial write), by [`BlockData::new`];
/// below that, a block is either `Some(BlockData)` or `None` (zeros) and no layer scans the
/// bytes again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockData(Bytes);

impl BlockData {
    /// The data, or `None` when it is all zeros.
    pub fn new(data: Bytes) -> Option<BlockData> {
        (!crate::is_zero(&data)).then_some(BlockData(data))
    }

    /// Wraps bytes a layer took from a `BlockData` earlier and kept as plain bytes (a cache
    /// entry), so they are known not to be all zeros. Checked in debug builds.
    pub fn already_checked(data: Bytes) -> BlockData {
        debug_assert!(!crate::is_zero(&data), "already_checked given zeros");
        BlockData(data)
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (a block of no bytes is all zeros); here because clippy asks for it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for BlockData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// What [`crate::BlockStore::revalidate`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revalidation {
    /// The stored block still has the ETag given: the caller's copy is current.
    Unchanged,
    /// The stored block changed; here it is.
    Changed(ReadOutcome),
}

/// An object body with the headers that describe how it is encoded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ObjectBody {
    /// The stored bytes.
    pub data: Bytes,
    /// The `Content-Encoding` value (e.g. `deflate, encrypt-AES-128-CBC`), if encoded.
    pub content_encoding: Option<String>,
    /// The `x-amz-meta-s3backer-hmac` value, with its double quotes, if encrypted.
    pub hmac: Option<String>,
}

/// What a transport returns for a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetOutcome {
    /// The object exists.
    Found {
        /// Body and encoding headers.
        body: ObjectBody,
        /// The object's ETag, when the transport reports one.
        etag: Option<Etag>,
    },
    /// No such object: the block is all zeros.
    NotFound,
    /// Answer to [`ReadCondition::IfNoneMatch`] when the ETag still matches (HTTP 304).
    NotModified,
}

/// Volume geometry as stored with block 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Block size in bytes.
    pub block_size: u32,
    /// Total size of the exported file in bytes.
    pub file_size: u64,
}

/// What block 0 tells about the volume's geometry ([`crate::ObjectStore::probe_volume`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeProbe {
    /// Block 0 carries the size metadata.
    Meta(VolumeMeta),
    /// Block 0 exists without size metadata (a disk image published by a plain web server);
    /// its object is this many bytes (`None`: the server did not say).
    Bare(Option<u64>),
    /// No block 0, or a store that cannot tell.
    Nothing,
}

/// An operation on the mount token (upstream `set_mount_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOp {
    /// Only read the current token.
    Read,
    /// Clear the token (clean unmount).
    Clear,
    /// Set the token to this non-zero value.
    Set(u32),
}

/// Outcome of [`crate::ObjectStore::swap_mount_token`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSwap {
    /// The token was `expected` and is now this value: the one asked for, or another this
    /// mount wrote (the S3 transport writes a fresh value per attempt); 0 once cleared.
    Done(u32),
    /// The token was not (or no longer) `expected`: it is this value now, left as it is.
    Changed(u32),
}

/// The mount token value upstream uses for `--sharedDiskMode`.
pub const SHARED_DISK_TOKEN: u32 = 0x7fff_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_parse() {
        let e = Etag::parse("\"0123456789abcdef0123456789ABCDEF\"").unwrap();
        assert_eq!(e.to_hex(), "0123456789abcdef0123456789abcdef");
        assert_eq!(e.quoted(), "\"0123456789abcdef0123456789abcdef\"");
        assert_eq!(Etag::parse("0123456789abcdef0123456789abcdef"), Some(e));
        assert_eq!(Etag::parse("\"0123456789abcdef0123456789abcdef-2\""), None);
        assert_eq!(Etag::parse("xyz"), None);
        assert_eq!(Etag::parse("\"0123456789abcdef0123456789abcdeg\""), None);
    }
}
