//! Codec settings: compression and encryption flags, checked as upstream does. The password
//! itself is only located here; [`crate::encoding`] reads it (file or prompt) just before the
//! process daemonizes.

use crate::args::codec::CodecArgs;
use crate::args::values::deflate_level;
use anyhow::{Result, anyhow, bail};
use s3b_codec::{Cipher, Compression};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Largest `--keyLength` (OpenSSL's EVP_MAX_KEY_LENGTH, as upstream).
const MAX_KEY_LENGTH: usize = 64;

/// Where the encryption password comes from.
#[derive(Clone)]
pub enum Password {
    /// `--password`.
    Given(Zeroizing<String>),
    /// The first line of `--passwordFile`.
    File(PathBuf),
    /// Asked on the terminal.
    Ask,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Given(_) => f.write_str("Given(<hidden>)"),
            Password::File(p) => f.debug_tuple("File").field(p).finish(),
            Password::Ask => f.write_str("Ask"),
        }
    }
}

/// The checked `--encrypt` flags.
#[derive(Clone, Debug)]
pub struct EncryptSettings {
    /// The cipher.
    pub cipher: Cipher,
    /// `--keyLength`, when not the cipher's own.
    pub key_length: Option<usize>,
    /// Where the password comes from.
    pub password: Password,
}

/// The checked codec flags.
#[derive(Clone, Debug, Default)]
pub struct CodecSettings {
    /// Compression.
    pub compress: Option<Compression>,
    /// Encryption.
    pub encrypt: Option<EncryptSettings>,
    /// `--defaultContentEncoding`.
    pub default_content_encoding: Option<String>,
}

/// `--compress` and `--compress-level` together (encryption alone with a level compresses).
fn compression(d: &CodecArgs) -> Result<Option<Compression>> {
    let compress = match d.compress {
        None => d.encrypt.map(|_| Compression::Deflate(None)).filter(|_| d.compress_level.is_some()),
        c => c,
    };
    Ok(match (compress, d.compress_level) {
        (c, None) => c,
        (None, Some(_)) => bail!("--compress-level requires --compress or --encrypt"),
        (Some(Compression::Deflate(_)), Some(l)) => Some(Compression::Deflate(Some(deflate_level(l)?))),
        (Some(Compression::Zstd(_)), Some(l)) => {
            if !(-7..=22).contains(&l) {
                bail!("invalid --compress-level {l} for zstd: must be between -7 and 22");
            }
            Some(Compression::Zstd(Some(l)))
        }
    })
}

/// `--keyLength` for `cipher` (0 means the cipher's own).
fn key_length(d: &CodecArgs) -> Result<Option<usize>> {
    let Some(n) = d.key_length else { return Ok(None) };
    let c = d.encrypt.ok_or_else(|| anyhow!("--keyLength requires --encrypt"))?;
    if n != 0 && (n < c.key_len() || n > MAX_KEY_LENGTH) {
        bail!("invalid --keyLength {n}: must be between {} and {MAX_KEY_LENGTH} for {}", c.key_len(), c.name());
    }
    Ok((n != 0).then_some(n))
}

/// Checks the codec flags.
pub(super) fn settings(d: &CodecArgs) -> Result<CodecSettings> {
    let compress = compression(d)?;
    let key_length = key_length(d)?;
    if d.password.is_some() && d.password_file.is_some() {
        bail!("--password and --passwordFile cannot be used together");
    }
    let encrypt = match d.encrypt {
        None => {
            if d.password.is_some() || d.password_file.is_some() {
                bail!("a password was given but --encrypt was not");
            }
            None
        }
        Some(cipher) => {
            let password = match (&d.password, &d.password_file) {
                (Some(p), _) => {
                    log::warn!("--password on the command line is visible to other users in ps; prefer --passwordFile");
                    Password::Given(Zeroizing::new(p.clone()))
                }
                (None, Some(f)) => Password::File(PathBuf::from(f)),
                (None, None) => Password::Ask,
            };
            Some(EncryptSettings { cipher, key_length, password })
        }
    };
    Ok(CodecSettings { compress, encrypt, default_content_encoding: d.default_content_encoding.clone() })
}
