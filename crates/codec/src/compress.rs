//! Compression as upstream stores it: `deflate` is a zlib-wrapped stream (RFC 1950, what zlib's
//! `compress2()` writes), `zstd` one zstd frame. Decompression is bounded by the block size, so
//! a hostile object cannot make us allocate more than one block (a "zip bomb" is just corrupt).

use crate::error::DecodeError;
use std::io::Read;

/// The deflate level used when none is given: zlib's own default (`Z_DEFAULT_COMPRESSION`),
/// which is what C s3backer's `--compress` gets, so both write the same objects.
pub const DEFLATE_DEFAULT_LEVEL: u32 = 6;

/// A compression algorithm with its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// zlib-wrapped deflate; level 0-9, or `None` for zlib's default (6).
    Deflate(Option<u32>),
    /// zstd; `None` for zstd's default level (3).
    Zstd(Option<i32>),
}

impl Compression {
    /// The `Content-Encoding` token.
    pub fn token(&self) -> &'static str {
        match self {
            Compression::Deflate(_) => "deflate",
            Compression::Zstd(_) => "zstd",
        }
    }

    /// Compresses `data`.
    pub fn compress(&self, data: &[u8]) -> Vec<u8> {
        match *self {
            Compression::Deflate(level) => {
                let mut e = flate2::read::ZlibEncoder::new(
                    data,
                    flate2::Compression::new(level.unwrap_or(DEFLATE_DEFAULT_LEVEL)),
                );
                let mut out = Vec::with_capacity(data.len() / 2 + 64);
                e.read_to_end(&mut out).expect("compressing from memory cannot fail");
                out
            }
            Compression::Zstd(level) => zstd::bulk::compress(data, level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL))
                .expect("compressing from memory cannot fail"),
        }
    }
}

/// Undoes one compression layer named by `token`, producing at most `limit` bytes.
pub fn decompress(token: &str, data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(limit);
    match token {
        "deflate" => {
            let d = flate2::read::ZlibDecoder::new(data);
            d.take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|source| DecodeError::BadCompressedData { codec: "deflate", source })?;
        }
        "zstd" => {
            let bad = |source| DecodeError::BadCompressedData { codec: "zstd", source };
            let mut d = zstd::stream::read::Decoder::new(data).map_err(bad)?;
            (&mut d).take(limit as u64 + 1).read_to_end(&mut out).map_err(bad)?;
        }
        other => return Err(DecodeError::UnknownEncoding(other.to_string())),
    }
    if out.len() > limit {
        return Err(DecodeError::TooLong(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_is_zlib_wrapped() {
        let c = Compression::Deflate(None).compress(&[0u8; 4096]);
        // RFC 1950 header: CMF 0x78, and (CMF*256 + FLG) % 31 == 0.
        assert_eq!(c[0], 0x78);
        assert_eq!((u16::from(c[0]) * 256 + u16::from(c[1])) % 31, 0);
        assert_eq!(decompress("deflate", &c, 4096).unwrap(), vec![0u8; 4096]);
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let c = Compression::Zstd(None).compress(&vec![7u8; 1 << 20]);
        assert!(decompress("zstd", &c, 4096).unwrap_err().to_string().contains("more than the block size"));
        assert!(decompress("deflate", b"not deflate", 4096).is_err());
        assert!(decompress("zstd", b"not zstd", 4096).is_err());
        assert!(decompress("lz4", b"", 4096).is_err());
    }
}
