//! Compression and encryption flags, with upstream's names. Owned by crates/codec; how they
//! combine is checked in `config::codec`, and the password itself is read (file or prompt) only
//! after every check passed.

use super::values::{self, Flag};
use clap::Args;
use s3b_codec::{Cipher, Compression};

/// Flags of the codec layer.
#[derive(Args, Debug, Clone, Default)]
pub struct CodecArgs {
    /// Compress blocks: deflate, zstd, or a deflate level.
    #[arg(long = "compress", value_name = "ALG", num_args = 0..=1, require_equals = true,
          default_missing_value = "deflate", help_heading = "Codec", value_parser = Flag(values::compression))]
    pub compress: Option<Compression>,
    /// Compression level for --compress.
    #[arg(long = "compress-level", value_name = "LEVEL", help_heading = "Codec", value_parser = Flag(values::level))]
    pub compress_level: Option<i32>,
    /// Encrypt blocks with this cipher [default: AES-128-CBC].
    #[arg(long = "encrypt", value_name = "CIPHER", num_args = 0..=1, require_equals = true,
          default_missing_value = "AES-128-CBC", help_heading = "Codec", value_parser = Flag(values::cipher))]
    pub encrypt: Option<Cipher>,
    /// Encryption password.
    #[arg(long = "password", value_name = "PASSWORD", help_heading = "Codec")]
    pub password: Option<String>,
    /// Read the encryption password from the first line of this file.
    #[arg(long = "passwordFile", value_name = "FILE", help_heading = "Codec")]
    pub password_file: Option<String>,
    /// Key length in bytes, for volumes made by s3backer before 1.3.6.
    #[arg(long = "keyLength", value_name = "BYTES", help_heading = "Codec", value_parser = Flag(values::num::<usize>))]
    pub key_length: Option<usize>,
    /// Content-Encoding assumed for objects stored without one.
    #[arg(long = "defaultContentEncoding", value_name = "ENCODING", help_heading = "Codec")]
    pub default_content_encoding: Option<String>,
}
