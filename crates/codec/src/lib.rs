//! The codec layer: the bridge from plaintext blocks ([`BlockStore`]) to stored objects
//! ([`ObjectStore`]).
//!
//! It is always present at the bottom of the block stack, because something has to turn a block
//! into an object: with no codec flags it is the identity, and the stored bytes are exactly the
//! block, as upstream. On the way up it enforces what upstream enforces: a decoded block must be
//! exactly one block long, and an object with an encoding we were not told about is an error
//! (EIO with a logged reason), never garbage data. All-zero blocks are never stored: writing one
//! deletes the object, and a missing object reads as zeros.

#![forbid(unsafe_code)]

pub mod compress;
pub mod crypt;
pub mod error;

pub use compress::Compression;
pub use crypt::Cipher;
pub use error::DecodeError;

use async_trait::async_trait;
use bytes::Bytes;
use s3b_store::{
    BlockData, BlockNum, BlockStore, ContractError, Etag, Geometry, GetOutcome, ObjectBody, ObjectStore, ReadCondition,
    ReadOutcome, ReadRequest, Result, Revalidation, StoreError, VolumeMeta,
};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Encryption settings.
#[derive(Clone)]
pub struct Encryption {
    /// The cipher.
    pub cipher: Cipher,
    /// The password.
    pub password: Zeroizing<String>,
    /// `--keyLength` (`None` = the cipher's).
    pub key_length: Option<usize>,
    /// `"<bucket>/<prefix>"`: the key-derivation salt, which binds the data to its location.
    pub salt: String,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("cipher", &self.cipher)
            .field("password", &"<hidden>")
            .field("key_length", &self.key_length)
            .field("salt", &self.salt)
            .finish()
    }
}

/// Codec settings.
#[derive(Clone, Debug, Default)]
pub struct CodecConfig {
    /// Compression of new writes (`--encrypt` implies deflate when not given, as upstream).
    pub compress: Option<Compression>,
    /// Encryption.
    pub encrypt: Option<Encryption>,
    /// `--defaultContentEncoding`: assumed when an object carries no `Content-Encoding`.
    pub default_content_encoding: Option<String>,
}

/// Encodes and decodes single blocks. Pure functions of the block number and the bytes.
pub struct Codec {
    block_size: u32,
    compress: Option<Compression>,
    keys: Option<crypt::Keys>,
    default_content_encoding: Option<String>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("block_size", &self.block_size)
            .field("compress", &self.compress)
            .field("keys", &self.keys)
            .finish()
    }
}

fn corrupt(block: BlockNum, reason: DecodeError) -> StoreError {
    StoreError::corrupt(block, reason)
}

impl Codec {
    /// A codec for blocks of `block_size` bytes (keys are derived here, once).
    pub fn new(block_size: u32, config: CodecConfig) -> Self {
        let keys = config
            .encrypt
            .as_ref()
            .map(|e| crypt::Keys::derive(e.cipher, e.password.as_bytes(), &e.salt, e.key_length));
        let compress = config.compress.or(keys.as_ref().map(|_| Compression::Deflate(None)));
        Codec { block_size, compress, keys, default_content_encoding: config.default_content_encoding }
    }

    /// True when blocks are encrypted.
    pub fn encrypts(&self) -> bool {
        self.keys.is_some()
    }

    /// Turns plaintext block `n` into the object to store.
    pub fn encode(&self, n: BlockNum, data: Bytes) -> Result<ObjectBody> {
        let mut tokens: Vec<String> = Vec::new();
        let mut bytes = data;
        if let Some(c) = &self.compress {
            bytes = Bytes::from(c.compress(&bytes));
            tokens.push(c.token().into());
        }
        let mut hmac = None;
        if let Some(k) = &self.keys {
            let (c, mac) = k.encrypt(n, &bytes);
            bytes = Bytes::from(c);
            hmac = mac;
            tokens.push(format!("encrypt-{}", k.cipher().name()));
        }
        let content_encoding = (!tokens.is_empty()).then(|| tokens.join(", "));
        Ok(ObjectBody { data: bytes, content_encoding, hmac })
    }

    /// Turns the stored object of block `n` back into plaintext, checking everything upstream
    /// checks: known encodings only, undone right to left; encrypted if and only if we encrypt;
    /// the HMAC before decrypting; exactly one block at the end.
    pub fn decode(&self, n: BlockNum, body: ObjectBody) -> Result<Bytes> {
        let encoding = body.content_encoding.as_deref().or(self.default_content_encoding.as_deref()).unwrap_or("");
        let tokens: Vec<String> = encoding
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "identity")
            .collect();
        let mut data = body.data;
        let limit = self.block_size as usize;
        let mut encrypted = false;
        for (i, token) in tokens.iter().enumerate().rev() {
            if let Some(name) = token.strip_prefix("encrypt-") {
                let Some(k) = &self.keys else {
                    return Err(corrupt(n, DecodeError::UnexpectedlyEncrypted));
                };
                if Cipher::parse(name) != Some(k.cipher()) {
                    let found = name.to_ascii_uppercase();
                    return Err(corrupt(n, DecodeError::WrongCipher { found, expected: k.cipher().name() }));
                }
                if i != tokens.len() - 1 || encrypted {
                    return Err(corrupt(n, DecodeError::EncryptionNotLast(encoding.to_string())));
                }
                encrypted = true;
                data = Bytes::from(k.decrypt(n, &data, body.hmac.as_deref()).map_err(|r| corrupt(n, r))?);
            } else if token == "deflate" || token == "zstd" {
                if self.keys.is_some() && !encrypted {
                    break;
                }
                data = Bytes::from(compress::decompress(token, &data, limit).map_err(|r| corrupt(n, r))?);
            } else {
                return Err(corrupt(n, DecodeError::UnknownEncoding(encoding.to_string())));
            }
        }
        if self.keys.is_some() && !encrypted {
            return Err(corrupt(n, DecodeError::NotEncrypted));
        }
        if data.len() != limit {
            return Err(corrupt(n, DecodeError::WrongSize { len: data.len(), block_size: self.block_size }));
        }
        Ok(data)
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

    /// With encryption on, checks the password against block 0 (ext4 and most other volumes
    /// have data there): a block 0 that fails authentication means the wrong password, and the
    /// mount should stop here rather than fail every read later. Without encryption, or when
    /// block 0 was never written, there is nothing to check.
    pub async fn check_password(&self) -> Result<()> {
        if !self.codec.encrypts() {
            return Ok(());
        }
        match self.inner.get_object(0, ReadCondition::None).await? {
            GetOutcome::Found { body, .. } => match self.codec.decode(0, body) {
                Ok(_) => Ok(()),
                Err(StoreError::Corrupt { source, .. })
                    if source.downcast_ref::<DecodeError>().is_some_and(DecodeError::is_authentication_failure) =>
                {
                    Err(StoreError::WrongPassword { source })
                }
                Err(e) => Err(e),
            },
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl BlockStore for CodecStore {
    fn geometry(&self) -> Geometry {
        Geometry { block_size: self.codec.block_size, num_blocks: self.num_blocks }
    }

    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        match self.inner.get_object(n, req.condition()).await? {
            GetOutcome::NotFound => Ok(ReadOutcome::Zero),
            GetOutcome::NotModified => Err(ContractError::UnexpectedNotModified(n).into()),
            GetOutcome::Found { body, etag } => Ok(ReadOutcome::Data { data: self.codec.decode(n, body)?, etag }),
        }
    }

    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        Ok(match self.inner.get_object(n, ReadCondition::IfNoneMatch(etag)).await? {
            GetOutcome::NotModified => Revalidation::Unchanged,
            GetOutcome::NotFound => Revalidation::Changed(ReadOutcome::Zero),
            GetOutcome::Found { body, etag } => {
                Revalidation::Changed(ReadOutcome::Data { data: self.codec.decode(n, body)?, etag })
            }
        })
    }

    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        match data {
            Some(d) => {
                if d.len() != self.codec.block_size as usize {
                    let block_size = self.codec.block_size;
                    return Err(ContractError::WrongLength { block: n, len: d.len(), block_size }.into());
                }
                let body = self.codec.encode(n, d.into_bytes())?;
                let volume = (n == 0).then(|| VolumeMeta {
                    block_size: self.codec.block_size,
                    file_size: self.num_blocks * self.codec.block_size as u64,
                });
                self.inner.put_object(n, body, volume).await
            }
            None => self.inner.delete_object(n).await.map(|()| None),
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
        self.inner
            .list_objects(&|n| {
                if (n as u64) < limit {
                    sink(n)
                }
            })
            .await
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
        assert_eq!(s.read_block(1, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
        let data = Bytes::from_static(b"0123456789abcdef");
        s.write_block(1, BlockData::new(data.clone())).await.unwrap();
        assert_eq!(std::fs::read(d.path().join("00000001")).unwrap(), &data[..]);
        match s.read_block(1, ReadRequest::PLAIN).await.unwrap() {
            ReadOutcome::Data { data: got, .. } => assert_eq!(got, data),
            o => panic!("{o:?}"),
        }
        // All zeros deletes the file.
        s.write_block(1, BlockData::new(Bytes::from(vec![0u8; 16]))).await.unwrap();
        assert!(!d.path().join("00000001").exists());
        // A file of the wrong size is corrupt, not data.
        std::fs::write(d.path().join("00000002"), b"short").unwrap();
        let e = s.read_block(2, ReadRequest::PLAIN).await.unwrap_err();
        assert!(s3b_store::Chain(&e).to_string().contains("5 bytes, block size is 16"), "{e}");
        // Corrupt (EIO at the front end), with the typed reason.
        let StoreError::Corrupt { block: 2, source } = &e else { panic!("{e:?}") };
        assert!(matches!(
            source.downcast_ref::<DecodeError>(),
            Some(DecodeError::WrongSize { len: 5, block_size: 16 })
        ));
        // Blocks beyond the volume are not reported by the survey.
        std::fs::write(d.path().join("00000009"), b"0123456789abcdef").unwrap();
        let seen = std::sync::Mutex::new(vec![]);
        s.survey_non_zero(&|n| seen.lock().unwrap().push(n)).await.unwrap();
        assert_eq!(seen.into_inner().unwrap(), vec![2]);
    }

    fn enc(cipher: Cipher, pw: &str) -> CodecConfig {
        CodecConfig {
            encrypt: Some(Encryption {
                cipher,
                password: Zeroizing::new(pw.into()),
                key_length: None,
                salt: "bkt/".into(),
            }),
            ..Default::default()
        }
    }

    fn block(n: u8) -> Bytes {
        Bytes::from(
            (0..4096u32).map(|i| i.to_le_bytes()[0].wrapping_mul(n) ^ (i >> 7).to_le_bytes()[0]).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn headers_as_upstream() {
        let c = Codec::new(4096, enc(Cipher::Aes128Cbc, "pw"));
        let o = c.encode(3, block(3)).unwrap();
        assert_eq!(o.content_encoding.as_deref(), Some("deflate, encrypt-AES-128-CBC"));
        let h = o.hmac.clone().unwrap();
        assert!(h.len() == 42 && h.starts_with('"') && h.ends_with('"'), "{h}");
        assert_eq!(c.decode(3, o).unwrap(), block(3));
        let z = Codec::new(4096, CodecConfig { compress: Some(Compression::Zstd(None)), ..Default::default() });
        let o = z.encode(1, block(1)).unwrap();
        assert_eq!((o.content_encoding.as_deref(), o.hmac.as_deref()), (Some("zstd"), None));
        assert_eq!(z.decode(1, o).unwrap(), block(1));
    }

    #[test]
    fn every_bad_object_is_corrupt() {
        let e = Codec::new(4096, enc(Cipher::Aes256Cbc, "pw"));
        let plain = Codec::new(4096, CodecConfig::default());
        let good = e.encode(7, block(7)).unwrap();
        let mut cases: Vec<(&str, &Codec, ObjectBody, BlockNum)> = vec![];
        let mut tampered = good.clone();
        let mut d = tampered.data.to_vec();
        d[5] ^= 0x40;
        tampered.data = Bytes::from(d);
        cases.push(("tampered", &e, tampered, 7));
        let mut truncated = good.clone();
        truncated.data = good.data.slice(..good.data.len() - 16);
        cases.push(("truncated", &e, truncated, 7));
        cases.push(("swapped", &e, good.clone(), 8));
        let mut no_hmac = good.clone();
        no_hmac.hmac = None;
        cases.push(("no hmac", &e, no_hmac, 7));
        cases.push(("encrypted, --encrypt off", &plain, good.clone(), 7));
        cases.push(("plain, --encrypt on", &e, plain.encode(7, block(7)).unwrap(), 7));
        let mut unknown = good.clone();
        unknown.content_encoding = Some("deflate, encrypt-BLOWFISH-CBC".into());
        cases.push(("other cipher", &e, unknown, 7));
        let wrong_pw = Codec::new(4096, enc(Cipher::Aes256Cbc, "other"));
        cases.push(("wrong password", &wrong_pw, good.clone(), 7));
        let short = Codec::new(2048, CodecConfig { compress: Some(Compression::Deflate(None)), ..Default::default() });
        let deflated = short.encode(1, Bytes::from(vec![1u8; 2048])).unwrap();
        cases.push(("decodes to the wrong size", &plain, deflated, 1));
        for (what, codec, body, n) in cases {
            match codec.decode(n, body) {
                Err(StoreError::Corrupt { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// Codecs built once (key derivation is deliberately slow).
    static SMALL: std::sync::LazyLock<[Codec; 3]> = std::sync::LazyLock::new(|| {
        [
            Codec::new(256, CodecConfig::default()),
            Codec::new(256, enc(Cipher::Aes128Cbc, "p")),
            Codec::new(256, enc(Cipher::Aes256Gcm, "p")),
        ]
    });
    static ALL: std::sync::LazyLock<Vec<Codec>> = std::sync::LazyLock::new(|| {
        vec![
            Codec::new(4096, CodecConfig::default()),
            Codec::new(4096, CodecConfig { compress: Some(Compression::Deflate(Some(1))), ..Default::default() }),
            Codec::new(4096, CodecConfig { compress: Some(Compression::Zstd(Some(3))), ..Default::default() }),
            Codec::new(4096, enc(Cipher::Aes128Cbc, "a")),
            Codec::new(4096, enc(Cipher::Aes192Cbc, "b")),
            Codec::new(4096, enc(Cipher::Aes256Gcm, "c")),
        ]
    });

    proptest::proptest! {
        #[test]
        fn arbitrary_objects_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                                         enc_idx in 0usize..6, hmac in proptest::option::of("[0-9a-f\"]{0,44}")) {
            let encs = ["", "deflate", "zstd", "deflate, encrypt-AES-128-CBC", "encrypt-AES-256-GCM", "x, y"];
            for codec in SMALL.iter() {
                let body = ObjectBody { data: Bytes::from(data.clone()), content_encoding: Some(encs[enc_idx].into()), hmac: hmac.clone() };
                if let Ok(out) = codec.decode(1, body) {
                    proptest::prop_assert_eq!(out.len(), 256);
                }
            }
        }

        #[test]
        fn round_trip_every_codec(seed in proptest::num::u8::ANY, n in proptest::num::u32::ANY, which in 0usize..6) {
            let codec = &ALL[which];
            let b = block(seed);
            proptest::prop_assert_eq!(codec.decode(n, codec.encode(n, b.clone()).unwrap()).unwrap(), b);
        }
    }

    #[test]
    fn unknown_encoding_is_corrupt() {
        let c = Codec::new(4, CodecConfig::default());
        let body = ObjectBody { data: Bytes::from_static(b"abcd"), content_encoding: Some("gzip".into()), hmac: None };
        assert!(matches!(c.decode(0, body), Err(StoreError::Corrupt { .. })));
        let c = Codec::new(4, CodecConfig { default_content_encoding: Some("deflate".into()), ..Default::default() });
        let body = ObjectBody { data: Bytes::from_static(b"abcd"), ..Default::default() };
        assert!(c.decode(0, body).is_err());
    }
}
