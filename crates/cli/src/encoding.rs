//! The codec's configuration (compression, encryption) from the command line.
//!
//! Only the identity codec exists yet; its flags are refused in [`unsupported_flags`].

use crate::args::Cli;
use crate::config::Config;
use anyhow::Result;
use s3b_codec::CodecConfig;

/// The codec configuration the command line asks for.
pub fn codec_config(_cfg: &Config) -> Result<CodecConfig> {
    Ok(CodecConfig::default())
}

/// Flags of the codec that are not handled yet (see [`crate::unsupported`]).
pub(crate) fn unsupported_flags(cli: &Cli) -> Vec<(&'static str, bool)> {
    let d = &cli.codec;
    vec![
        ("--compress", d.compress.is_some()),
        ("--compress-level", d.compress_level.is_some()),
        ("--encrypt", d.encrypt.is_some()),
        ("--password", d.password.is_some()),
        ("--passwordFile", d.password_file.is_some()),
        ("--keyLength", d.key_length.is_some()),
        ("--defaultContentEncoding", d.default_content_encoding.is_some()),
    ]
}
