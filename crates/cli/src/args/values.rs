//! Value parsers: every number, size, duration and choice on the command line becomes its type
//! while clap parses, so the layers get typed settings and a bad value stops the program before
//! anything else happens.
//!
//! Each parser is a function `(flag, value) -> Result<T, BadValue>` wrapped in [`Flag`], which
//! hands it the flag's name (`--blockSize`), so every message names the flag it is about. The
//! message reaches the user as is, as one line: [`BadValue`] is what [`super::parse`] returns.
//! `-o name=value` options become `--name=value` words first, so they meet the same parsers.

use crate::bad_value::BadValue;
use crate::size::{parse_size, unparse_size};
use clap::builder::TypedValueParser;
use clap::{Arg, Command};
use s3b_codec::{Cipher, Compression};
use std::ffi::OsStr;
use std::time::Duration;

/// A flag's value parser: the function gets the flag's name (`--size`) and the value.
#[derive(Clone, Copy)]
pub struct Flag<T>(pub fn(&str, &str) -> Result<T, BadValue>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Flag<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let flag = arg.and_then(Arg::get_long).map_or_else(|| "the value".to_string(), |l| format!("--{l}"));
        let parse = self.0;
        // clap's own wrapper for closures keeps our error as the source of its own.
        let inner = move |v: &str| parse(&flag, v);
        inner.parse_ref(cmd, arg, value)
    }
}

/// A non-negative integer.
pub fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, BadValue> {
    crate::size::parse_num(v, flag)
}

/// A duration in milliseconds.
pub fn millis(flag: &str, v: &str) -> Result<Duration, BadValue> {
    num::<u64>(flag, v).map(Duration::from_millis)
}

/// A duration in milliseconds, at least 1.
pub fn positive_millis(flag: &str, v: &str) -> Result<Duration, BadValue> {
    match v.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(BadValue::breaks(flag, v, "expected milliseconds, at least 1")),
    }
}

/// A duration in whole seconds, at least 1.
pub fn seconds(flag: &str, v: &str) -> Result<Duration, BadValue> {
    match num::<u64>(flag, v)? {
        0 => Err(BadValue::breaks(flag, v, "must be at least 1 second")),
        s => Ok(Duration::from_secs(s)),
    }
}

/// A number from 1 to 16 (parallel listing streams).
pub fn list_threads(flag: &str, v: &str) -> Result<usize, BadValue> {
    match num::<usize>(flag, v)? {
        n @ 1..=16 => Ok(n),
        _ => Err(BadValue::breaks(flag, v, "must be between 1 and 16")),
    }
}

/// The volume size: a size with an optional suffix (`1g`).
pub fn file_size(flag: &str, v: &str) -> Result<u64, BadValue> {
    parse_size(v, "file size").map_err(|e| e.of_flag(flag))
}

/// The block size: a power of two that fits in 32 bits, with an optional suffix (`64k`).
pub fn block_size(flag: &str, v: &str) -> Result<u32, BadValue> {
    let n = parse_size(v, "block size").map_err(|e| e.of_flag(flag))?;
    check_block_size(n).map_err(|e| e.of_flag(flag))
}

/// Checks a block size: a power of two that fits in 32 bits.
pub fn check_block_size(v: u64) -> Result<u32, BadValue> {
    if v == 0 || !v.is_power_of_two() {
        return Err(BadValue::NotPowerOfTwo);
    }
    u32::try_from(v).map_err(|_| BadValue::BlockSizeTooBig(unparse_size(v)))
}

/// A speed limit in bits per second, with an optional suffix (`10m`); at least one byte a second.
pub fn bits_per_second(flag: &str, v: &str) -> Result<u64, BadValue> {
    let bits = parse_size(v, flag)?;
    if bits < 8 {
        return Err(BadValue::breaks(flag, v, "must be at least 8 bits per second"));
    }
    Ok(bits)
}

/// Permissions in octal (`0644`).
pub fn file_mode(flag: &str, v: &str) -> Result<u16, BadValue> {
    match u16::from_str_radix(v.trim(), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(BadValue::breaks(flag, v, "expected octal permissions such as 0644")),
    }
}

/// One of a fixed list of words.
fn one_of(flag: &str, v: &str, choices: &'static [&'static str]) -> Result<String, BadValue> {
    if choices.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(BadValue::NotOneOf { flag: flag.into(), value: v.into(), choices })
    }
}

/// Canned ACLs accepted by `--accessType`.
pub const ACCESS_TYPES: &[&str] = &["private", "public-read", "public-read-write", "authenticated-read"];
/// Storage classes accepted by `--storageClass`.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "REDUCED_REDUNDANCY",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "EXPRESS_ONEZONE",
];

/// A canned ACL.
pub fn access_type(flag: &str, v: &str) -> Result<String, BadValue> {
    one_of(flag, v, ACCESS_TYPES)
}

/// A storage class.
pub fn storage_class(flag: &str, v: &str) -> Result<String, BadValue> {
    one_of(flag, v, STORAGE_CLASSES)
}

/// Server-side encryption: `AES256` or `aws:kms`.
pub fn sse(flag: &str, v: &str) -> Result<String, BadValue> {
    match v {
        "AES256" | "aws:kms" => Ok(v.to_string()),
        _ => Err(BadValue::breaks(flag, v, "must be AES256 or aws:kms")),
    }
}

/// The request signing version: only `aws4`.
pub fn auth_version(flag: &str, v: &str) -> Result<String, BadValue> {
    match v.trim() {
        "aws4" => Ok("aws4".into()),
        "aws2" => Err(BadValue::Aws2 { flag: flag.into() }),
        v => Err(BadValue::breaks(flag, v, "must be aws4")),
    }
}

/// An S3 region name (letters, digits and dashes).
pub fn region(flag: &str, v: &str) -> Result<String, BadValue> {
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(BadValue::Invalid { what: flag.into(), value: v.into() });
    }
    Ok(v.to_string())
}

/// An endpoint URL: `http://` or `https://`, a host, and a trailing `/`.
pub fn base_url(flag: &str, u: &str) -> Result<String, BadValue> {
    let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
    if !scheme_ok || u.len() <= u.find("://").unwrap_or(0) + 3 {
        return Err(BadValue::breaks(flag, u, "must start with http:// or https://"));
    }
    if !u.ends_with('/') {
        return Err(BadValue::breaks(flag, u, "must end with '/'"));
    }
    Ok(u.to_string())
}

/// `--ipTOS` as upstream: a name (`lowdelay`, `throughput`, `reliability`, `lowcost`,
/// `mincost`) or a number 0..=255 in C notation (decimal, `0x` hex, leading-`0` octal).
pub fn ip_tos(flag: &str, v: &str) -> Result<u8, BadValue> {
    let named = match v {
        "lowdelay" => Some(0x10),
        "throughput" => Some(0x08),
        "reliability" => Some(0x04),
        "lowcost" | "mincost" => Some(0x02),
        _ => None,
    };
    let num = || {
        let (digits, radix) = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            (h, 16)
        } else if v.len() > 1 && v.starts_with('0') {
            (&v[1..], 8)
        } else {
            (v, 10)
        };
        u8::from_str_radix(digits, radix).ok().filter(|_| !digits.starts_with(['+', '-']))
    };
    named.or_else(num).ok_or_else(|| BadValue::IpTos { flag: flag.into(), value: v.into() })
}

/// A cipher name.
pub fn cipher(_flag: &str, v: &str) -> Result<Cipher, BadValue> {
    Cipher::parse(v).ok_or_else(|| BadValue::Cipher(v.into()))
}

/// `--compress`: `deflate`, `zstd` (any case), or a deflate level (-1 for the default, 0-9).
pub fn compression(flag: &str, v: &str) -> Result<Compression, BadValue> {
    let a = v.trim();
    if a.eq_ignore_ascii_case("deflate") {
        Ok(Compression::Deflate(None))
    } else if a.eq_ignore_ascii_case("zstd") {
        Ok(Compression::Zstd(None))
    } else {
        match a.parse::<i32>() {
            Ok(l) => deflate_level(l).map(|l| Compression::Deflate(Some(l))),
            Err(_) => Err(BadValue::breaks(flag, a, "use deflate, zstd, or a deflate level")),
        }
    }
}

/// A deflate level: 0-9, or -1 for zlib's default.
pub fn deflate_level(l: i32) -> Result<u32, BadValue> {
    match l {
        -1 => Ok(s3b_codec::compress::DEFLATE_DEFAULT_LEVEL),
        0..=9 => Ok(l as u32),
        _ => Err(BadValue::DeflateLevel(l)),
    }
}

/// A signed number (a compression level).
pub fn level(flag: &str, v: &str) -> Result<i32, BadValue> {
    v.trim().parse::<i32>().map_err(|_| BadValue::breaks(flag, v, "expected a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse;

    fn err(args: &[&str]) -> String {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let e = parse(&a).unwrap_err();
        assert!(e.downcast_ref::<BadValue>().is_some(), "not a value error: {e:#}");
        let msg = format!("{e:#}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
        msg
    }

    #[test]
    fn bad_numbers_name_the_flag() {
        assert_eq!(err(&["--blockCacheSize=lots"]), "invalid --blockCacheSize \"lots\"");
        assert_eq!(err(&["--readAhead=-1"]), "invalid --readAhead \"-1\"");
        assert_eq!(err(&["--md5CacheTime=1.5"]), "invalid --md5CacheTime \"1.5\"");
        assert_eq!(err(&["--keyLength=x"]), "invalid --keyLength \"x\"");
        assert_eq!(err(&["--compress-level=high"]), "invalid --compress-level \"high\": expected a number");
        // The same parser through the fstab spelling.
        assert_eq!(err(&["-o", "blockCacheThreads=many"]), "invalid --blockCacheThreads \"many\"");
    }

    #[test]
    fn bad_sizes_name_the_flag() {
        assert_eq!(err(&["--size=lots"]), "--size: invalid file size \"lots\"");
        assert_eq!(err(&["--blockSize=4q"]), "--blockSize: invalid block size \"4q\"");
        assert_eq!(err(&["-o", "blockSize=3k"]), "--blockSize: block size must be a power of 2");
        assert_eq!(err(&["--size=99999999999999999999"]), "--size: file size \"99999999999999999999\" is too big");
        assert_eq!(err(&["--maxUploadSpeed=fast"]), "invalid --maxUploadSpeed \"fast\"");
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        assert_eq!(err(&["--blockSize=8g"]), "--blockSize: block size 8g is too big (at most 2g)");
        assert_eq!(err(&["--timeout=0"]), "invalid --timeout \"0\": must be at least 1 second");
        assert_eq!(err(&["--listBlocksThreads=17"]), "invalid --listBlocksThreads \"17\": must be between 1 and 16");
        assert_eq!(
            err(&["--maxDownloadSpeed=7"]),
            "invalid --maxDownloadSpeed \"7\": must be at least 8 bits per second"
        );
        assert_eq!(err(&["--fileMode=10000"]), "invalid --fileMode \"10000\": expected octal permissions such as 0644");
        assert!(err(&["--ipTOS=256"]).starts_with("invalid --ipTOS value \"256\""));
        assert_eq!(
            err(&["--compress=10"]),
            "invalid deflate level 10: must be between 0 and 9 (or -1 for the default)"
        );
        assert_eq!(
            err(&["--statsFileMirrorInterval=0"]),
            "invalid --statsFileMirrorInterval \"0\": expected milliseconds, at least 1"
        );
        assert!(err(&["--statsFileMirrorInterval=1s"]).starts_with("invalid --statsFileMirrorInterval \"1s\""));
    }

    #[test]
    fn bad_choices_name_the_flag() {
        assert!(err(&["--accessType=bogus"]).starts_with("invalid --accessType \"bogus\": must be one of private"));
        assert!(err(&["--storageClass=CHEAP"]).starts_with("invalid --storageClass \"CHEAP\""));
        assert_eq!(err(&["--sse=XYZ"]), "invalid --sse \"XYZ\": must be AES256 or aws:kms");
        assert!(err(&["--authVersion=aws2"]).starts_with("--authVersion=aws2 is not supported"));
        assert_eq!(err(&["--region=a b"]), "invalid --region \"a b\"");
        assert_eq!(err(&["--baseURL=http://x"]), "invalid --baseURL \"http://x\": must end with '/'");
        assert!(err(&["--encrypt=DES"]).starts_with("unsupported cipher \"DES\""));
        assert_eq!(err(&["--compress=lzma"]), "invalid --compress \"lzma\": use deflate, zstd, or a deflate level");
    }

    #[test]
    fn good_values_are_typed() {
        assert_eq!(file_size("--size", "1g"), Ok(1 << 30));
        assert_eq!(block_size("--blockSize", "256k"), Ok(256 << 10));
        assert_eq!(millis("--x", "250"), Ok(Duration::from_millis(250)));
        assert_eq!(seconds("--timeout", "30"), Ok(Duration::from_secs(30)));
        assert_eq!(bits_per_second("--maxUploadSpeed", "1m"), Ok(1 << 20));
        assert_eq!(file_mode("--fileMode", "0644"), Ok(0o644));
        assert_eq!(compression("--compress", "ZSTD"), Ok(Compression::Zstd(None)));
        assert_eq!(compression("--compress", "-1"), Ok(Compression::Deflate(Some(6))));
        assert_eq!(cipher("--encrypt", "aes-256-cbc"), Ok(Cipher::Aes256Cbc));
        for (v, want) in [
            ("lowdelay", 0x10),
            ("throughput", 8),
            ("reliability", 4),
            ("lowcost", 2),
            ("mincost", 2),
            ("0", 0),
            ("184", 184),
            ("0xb8", 0xb8),
            ("0XFF", 255),
            ("070", 0o70),
        ] {
            assert_eq!(ip_tos("--ipTOS", v), Ok(want), "{v}");
        }
        for v in ["256", "-1", "+5", "", "0x", "09", "low", "1.5", "0x100"] {
            let e = ip_tos("--ipTOS", v).unwrap_err().to_string();
            assert!(e.starts_with("invalid --ipTOS value"), "{v}: {e}");
        }
    }
}
