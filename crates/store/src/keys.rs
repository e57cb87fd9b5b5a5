//! Object key naming, identical to upstream so volumes move between the two implementations.
//!
//! A block's key is `<prefix>[<hash>-]<block>`: `<block>` is the block number as exactly eight
//! lowercase hex digits; with `--blockHashPrefix` an eight-digit hash of the number comes first,
//! which spreads keys over S3's partitions. The mount token lives at `<prefix>s3backer-mounted`.
//! Both transports (S3 and the `--test` directory) name objects with [`BlockKeys`].

use crate::BlockNum;

/// Name of the mount-token object, after the prefix.
pub const MOUNT_TOKEN_NAME: &str = "s3backer-mounted";

/// Upstream's block-number hash used by `--blockHashPrefix`.
pub fn block_hash(n: BlockNum) -> u32 {
    let mut h = n;
    for k in (1..=12u32).rev() {
        h = ((h >> 8) ^ h).wrapping_mul(0x6b).wrapping_add(k);
    }
    h
}

/// Turns block numbers into keys and keys back into block numbers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BlockKeys {
    /// Prepended verbatim to every key (normally empty or ending in `/`).
    pub prefix: String,
    /// Whether `--blockHashPrefix` is in effect.
    pub hash_prefix: bool,
}

impl BlockKeys {
    /// Key naming with the given prefix and hash-prefix setting.
    pub fn new(prefix: impl Into<String>, hash_prefix: bool) -> Self {
        BlockKeys { prefix: prefix.into(), hash_prefix }
    }

    /// The key of block `n`.
    pub fn block_key(&self, n: BlockNum) -> String {
        if self.hash_prefix {
            format!("{}{:08x}-{:08x}", self.prefix, block_hash(n), n)
        } else {
            format!("{}{:08x}", self.prefix, n)
        }
    }

    /// The key of the mount-token object.
    pub fn mount_token_key(&self) -> String {
        format!("{}{}", self.prefix, MOUNT_TOKEN_NAME)
    }

    /// Parses a listed key back into a block number. Keys of any other form (wrong prefix,
    /// uppercase hex, a hash that does not match, other objects) give `None`, as upstream.
    pub fn parse_key(&self, key: &str) -> Option<BlockNum> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let num = if self.hash_prefix {
            let (hash, num) = rest.split_once('-')?;
            let n = parse_hex8(num)?;
            if parse_hex8(hash)? != block_hash(n) {
                return None;
            }
            n
        } else {
            parse_hex8(rest)?
        };
        Some(num)
    }
}

/// Parses exactly eight lowercase hex digits.
fn parse_hex8(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of upstream C s3backer's hashed key names (`--blockHashPrefix`).
    #[test]
    fn hash_prefix_vectors() {
        let k = BlockKeys::new("", true);
        assert_eq!(k.block_key(0), "c448b72c-00000000");
        assert_eq!(k.block_key(1), "d211cad9-00000001");
        assert_eq!(k.block_key(2), "7183baa1-00000002");
        assert_eq!(k.block_key(0x10), "5150b901-00000010");
    }

    #[test]
    fn plain_keys_and_prefix() {
        let k = BlockKeys::new("sub/dir/", false);
        assert_eq!(k.block_key(0xabc), "sub/dir/00000abc");
        assert_eq!(k.block_key(u32::MAX), "sub/dir/ffffffff");
        assert_eq!(k.mount_token_key(), "sub/dir/s3backer-mounted");
        assert_eq!(BlockKeys::default().block_key(5), "00000005");
    }

    #[test]
    fn parse_round_trip() {
        for hash in [false, true] {
            let k = BlockKeys::new("p/", hash);
            for n in [0u32, 1, 0x10, 0xdead_beef, u32::MAX] {
                assert_eq!(k.parse_key(&k.block_key(n)), Some(n));
            }
        }
    }

    #[test]
    fn parse_rejects_foreign_keys() {
        let k = BlockKeys::new("p/", false);
        for bad in
            ["p/s3backer-mounted", "q/00000001", "p/0000001", "p/000000001", "p/0000000A", "p/0000000g", "00000001"]
        {
            assert_eq!(k.parse_key(bad), None, "{bad}");
        }
        let h = BlockKeys::new("", true);
        assert_eq!(h.parse_key("00000000-00000000"), None, "wrong hash");
        assert_eq!(h.parse_key("00000000"), None, "missing hash");
    }
}
