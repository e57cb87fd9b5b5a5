//! Why a stored object could not be turned back into a block: the codec's typed reasons,
//! carried as the source of [`s3b_store::StoreError::Corrupt`].

use thiserror::Error;

/// A reason to reject a stored object.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The object is encrypted and we were not given a password.
    #[error("block is encrypted but --encrypt was not given")]
    UnexpectedlyEncrypted,
    /// The object is encrypted with another cipher.
    #[error("block is encrypted with {found}, not {expected}")]
    WrongCipher {
        /// The cipher named by the object.
        found: String,
        /// Ours.
        expected: &'static str,
    },
    /// Encryption is not the last encoding applied.
    #[error("encryption must be the last encoding (\"{0}\")")]
    EncryptionNotLast(String),
    /// An encoding we do not know.
    #[error("unsupported Content-Encoding \"{0}\"")]
    UnknownEncoding(String),
    /// We encrypt, and the object is not encrypted.
    #[error("block is not encrypted but --encrypt was given")]
    NotEncrypted,
    /// The decoded object is not one block long.
    #[error("object is {len} bytes, block size is {block_size}")]
    WrongSize {
        /// Decoded length.
        len: usize,
        /// The block size.
        block_size: u32,
    },
    /// An AES-GCM object shorter than its nonce and tag.
    #[error("encrypted object is too short ({0} bytes)")]
    TooShort(usize),
    /// A CBC object without its HMAC header.
    #[error("encrypted object has no HMAC header")]
    MissingHmac,
    /// An HMAC header that is not 20 bytes of hex.
    #[error("malformed HMAC header \"{0}\"")]
    MalformedHmac(String),
    /// The HMAC does not match.
    #[error("HMAC mismatch (wrong password, tampered object, or an object of another block)")]
    HmacMismatch,
    /// AES-GCM authentication failed.
    #[error("authentication failed (wrong password, tampered object, or an object of another block)")]
    AuthenticationFailed,
    /// A CBC object whose length is not a whole number of AES blocks.
    #[error("encrypted length {0} is not a multiple of 16")]
    BadLength(usize),
    /// PKCS#7 padding is wrong after decryption.
    #[error("bad padding after decryption")]
    BadPadding,
    /// Compressed data that does not decompress.
    #[error("bad {codec} data")]
    BadCompressedData {
        /// `deflate` or `zstd`.
        codec: &'static str,
        /// The decompressor's error.
        #[source]
        source: std::io::Error,
    },
    /// Compressed data that decompresses to more than a block.
    #[error("decompresses to more than the block size ({0} bytes)")]
    TooLong(usize),
}

impl DecodeError {
    /// True when the object failed authentication: with the right password that only happens
    /// to a tampered object, so on block 0 at mount time it means the password is wrong.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(self, DecodeError::HmacMismatch | DecodeError::AuthenticationFailed)
    }
}
