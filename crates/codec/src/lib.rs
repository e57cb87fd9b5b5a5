//! The codec layer: the bridge from plaintext blocks ([`BlockStore`]) to stored objects
//! ([`ObjectStore`]).
//!
//! It is always present at the bottom of the block stack, because something has to turn a block
//! into an object: with no codec flags it is the identity, and the stored bytes are exactly the
//! block, as upstream. On the way up it enforces what upstream enforces: a decoded block must be
//! exactly one block long, and an object with an encoding we were not told about is an error
//! (EIO with a logged reason), never garbage data. All-zero blocks are never stored: writing one
//! deletes the object, and a missing object reads as zeros.

#![deny(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
use s3b_store::{
    BlockNum, BlockStore, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, ReadOutcome, Result, StoreError,
    VolumeMeta, is_zero,
};
use std::sync::Arc;

/// Codec settings.
#[derive(Clone, Debug, Default)]
pub struct CodecConfig {
    /// `--defaultContentEncoding`: assumed when an object carries no `Content-Encoding`.
    pub default_content_encoding: Option<String>,
}

/// Encodes and decodes single blocks. Pure functions of the block number and the bytes.
#[derive(Clone, Debug)]
pub struct Codec {
    block_size: u32,
    config: CodecConfig,
}

impl Codec {
    /// A codec for blocks of `block_size` bytes.
    pub fn new(block_size: u32, config: CodecConfig) -> Self {
        Codec { block_size, config }
    }

    /// Turns plaintext block `n` into the object to store.
    pub fn encode(&self, _n: BlockNum, data: Bytes) -> Result<ObjectBody> {
        Ok(ObjectBody { data, content_encoding: None, hmac: None })
    }

    /// Turns the stored object of block `n` back into plaintext, checking everything upstream checks.
    pub fn decode(&self, n: BlockNum, body: ObjectBody) -> Result<Bytes> {
        let encoding = body.content_encoding.as_deref().or(self.config.default_content_encoding.as_deref());
        if let Some(enc) = encoding {
            if !enc.trim().is_empty() && !enc.eq_ignore_ascii_case("identity") {
                return Err(StoreError::Corrupt {
                    block: n,
                    reason: format!("unsupported Content-Encoding \"{enc}\""),
                });
            }
        }
        if body.data.len() != self.block_size as usize {
            return Err(StoreError::Corrupt {
                block: n,
                reason: format!("object is {} bytes, block size is {}", body.data.len(), self.block_size),
            });
        }
        Ok(body.data)
    }
}

/// A [`BlockStore`] over an [`ObjectStore`], through a [`Codec`].
pub struct CodecStore {
    inner: Arc<dyn ObjectStore>,
    codec: Codec,
    num_blocks: u64,
}

impl CodecStore {
    /// Wraps `inner` for a volume of `num_blocks` blocks of `codec`'s block size.
    pub fn new(inner: Arc<dyn ObjectStore>, codec: Codec, num_blocks: u64) -> Self {
        CodecStore { inner, codec, num_blocks }
    }

    /// The transport below.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

#[async_trait]
impl BlockStore for CodecStore {
    fn block_size(&self) -> u32 {
        self.codec.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    async fn read_block(&self, n: BlockNum, cond: ReadCondition) -> Result<ReadOutcome> {
        match self.inner.get_object(n, cond).await? {
            GetOutcome::NotFound => Ok(ReadOutcome::Zero),
            GetOutcome::NotModified => Ok(ReadOutcome::NotModified),
            GetOutcome::Found { body, etag } => Ok(ReadOutcome::Data { data: self.codec.decode(n, body)?, etag }),
        }
    }

    async fn write_block(&self, n: BlockNum, data: Option<Bytes>) -> Result<Option<Etag>> {
        match data {
            Some(d) if !is_zero(&d) => {
                if d.len() != self.codec.block_size as usize {
                    return Err(StoreError::Other(format!("write of {} bytes to block {n:#x}", d.len())));
                }
                let body = self.codec.encode(n, d)?;
                let volume = (n == 0).then(|| VolumeMeta {
                    block_size: self.codec.block_size,
                    file_size: self.num_blocks * self.codec.block_size as u64,
                });
                self.inner.put_object(n, body, volume).await
            }
            _ => self.inner.delete_object(n).await.map(|()| None),
        }
    }

    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        self.inner.delete_objects(blocks).await
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.inner.flush(blocks).await
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let limit = self.num_blocks;
        self.inner.list_objects(&|n| if (n as u64) < limit { sink(n) }).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.flush(None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_dir::DirStore;
    use s3b_store::keys::BlockKeys;

    #[tokio::test(flavor = "multi_thread")]
    async fn plain_round_trip_and_checks() {
        let d = tempfile::tempdir().unwrap();
        let dir: Arc<dyn ObjectStore> = Arc::new(DirStore::open(d.path(), BlockKeys::default()).unwrap());
        let s = CodecStore::new(dir, Codec::new(16, CodecConfig::default()), 4);
        assert_eq!(s.read_block(1, ReadCondition::None).await.unwrap(), ReadOutcome::Zero);
        let data = Bytes::from_static(b"0123456789abcdef");
        s.write_block(1, Some(data.clone())).await.unwrap();
        assert_eq!(std::fs::read(d.path().join("00000001")).unwrap(), &data[..]);
        match s.read_block(1, ReadCondition::None).await.unwrap() {
            ReadOutcome::Data { data: got, .. } => assert_eq!(got, data),
            o => panic!("{o:?}"),
        }
        // All zeros deletes the file.
        s.write_block(1, Some(Bytes::from(vec![0u8; 16]))).await.unwrap();
        assert!(!d.path().join("00000001").exists());
        // A file of the wrong size is corrupt, not data.
        std::fs::write(d.path().join("00000002"), b"short").unwrap();
        let e = s.read_block(2, ReadCondition::None).await.unwrap_err();
        assert!(e.to_string().contains("5 bytes, block size is 16"), "{e}");
        assert_eq!(e.errno(), 5);
        // Blocks beyond the volume are not reported by the survey.
        std::fs::write(d.path().join("00000009"), b"0123456789abcdef").unwrap();
        let seen = std::sync::Mutex::new(vec![]);
        s.survey_non_zero(&|n| seen.lock().unwrap().push(n)).await.unwrap();
        assert_eq!(seen.into_inner().unwrap(), vec![2]);
    }

    #[test]
    fn unknown_encoding_is_corrupt() {
        let c = Codec::new(4, CodecConfig::default());
        let body = ObjectBody { data: Bytes::from_static(b"abcd"), content_encoding: Some("gzip".into()), hmac: None };
        assert!(matches!(c.decode(0, body), Err(StoreError::Corrupt { .. })));
        let c = Codec::new(4, CodecConfig { default_content_encoding: Some("deflate".into()) });
        let body = ObjectBody { data: Bytes::from_static(b"abcd"), ..Default::default() };
        assert!(c.decode(0, body).is_err());
    }
}
