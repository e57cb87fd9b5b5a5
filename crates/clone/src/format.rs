//! The clone record: the one bookkeeping object of a clone, `<prefix>s3backer-clone`, a small
//! line-oriented text a person can read with any S3 client:
//!
//! ```text
//! s3backer-clone 1
//! state cloned
//! source images os/
//! url -
//! hashprefix 0
//! encrypted 0
//! geometry 65536 1073741824
//! snapshot 00000002 1765108800 monday
//! ```
//!
//! `state` is `cloned` (reads of blocks the clone has no object for fall through to the
//! base) or `flat` (a flatten copied every base block the clone used: nothing falls through
//! any more; only the zero markers and the record itself are left to remove). `source` is the
//! base's bucket and prefix (`-`: no prefix); `url` the base's server when it is not the
//! clone's own (`-`: the same endpoint and credentials); `hashprefix` whether the base's keys
//! use `--blockHashPrefix`; `encrypted` whether the volume is encrypted (then every mount and
//! flatten needs the password, since base blocks are re-encrypted for the clone's location);
//! `geometry` the block size and size in bytes, the clone's and the
//! base's. The last line tells what the clone was made from, so that every mount can check
//! the base is still that: `snapshot <id> <time> <name>` for a snapshot (its id, never reused,
//! and the time it was taken), or `volume <md5 of block 0's stored bytes | none>` for a
//! read-only volume.

use crate::CloneError;
use std::fmt::Write as _;

/// Name (after the volume's prefix) of the clone record.
pub const RECORD_NAME: &str = "s3backer-clone";
/// First line of a record.
const MAGIC: &str = "s3backer-clone 1";

/// Whether reads still fall through to the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Blocks the clone has no object for are read from the base.
    Cloned,
    /// Every base block the clone used was copied into it: nothing falls through.
    Flat,
}

/// What the clone was made from, as checked at every mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseId {
    /// Snapshot `name` of the source, which had this id and was taken at `time`.
    Snapshot {
        /// The snapshot's id (never reused by its volume).
        id: u32,
        /// When it was taken (seconds since 1970).
        time: u64,
        /// Its name.
        name: String,
    },
    /// The source's live volume, read-only, whose block 0 had these stored bytes (MD5, hex;
    /// `None`: no block 0).
    Volume {
        /// MD5 of block 0's stored object.
        block0: Option<String>,
    },
}

/// The clone record (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Whether reads still fall through.
    pub state: State,
    /// The base's bucket.
    pub bucket: String,
    /// The base's key prefix (empty or ending in `/`).
    pub prefix: String,
    /// The base's server, when not the clone's own endpoint and credentials.
    pub url: Option<String>,
    /// The base's keys use `--blockHashPrefix`.
    pub hash_prefix: bool,
    /// The volume is encrypted.
    pub encrypted: bool,
    /// Block size in bytes.
    pub block_size: u32,
    /// Size in bytes.
    pub file_size: u64,
    /// What the clone was made from.
    pub base: BaseId,
}

impl Record {
    /// `bucket[/subdir][@snapshot]`, as the user wrote it.
    pub fn describe_base(&self) -> String {
        let mut s = self.bucket.clone();
        if let Some(p) = self.prefix.strip_suffix('/') {
            s.push('/');
            s.push_str(p);
        }
        if let BaseId::Snapshot { name, .. } = &self.base {
            s.push('@');
            s.push_str(name);
        }
        if let Some(u) = &self.url {
            s.push_str(" at ");
            s.push_str(u);
        }
        s
    }

    /// The text of the record.
    pub fn render(&self) -> String {
        let state = match self.state {
            State::Cloned => "cloned",
            State::Flat => "flat",
        };
        let prefix = if self.prefix.is_empty() { "-" } else { &self.prefix };
        let mut s = format!("{MAGIC}\nstate {state}\nsource {} {prefix}\n", self.bucket);
        let _ = writeln!(s, "url {}", self.url.as_deref().unwrap_or("-"));
        let _ = writeln!(s, "hashprefix {}", u8::from(self.hash_prefix));
        let _ = writeln!(s, "encrypted {}", u8::from(self.encrypted));
        let _ = writeln!(s, "geometry {} {}", self.block_size, self.file_size);
        match &self.base {
            BaseId::Snapshot { id, time, name } => {
                let _ = writeln!(s, "snapshot {id:08x} {time} {name}");
            }
            BaseId::Volume { block0 } => {
                let _ = writeln!(s, "volume {}", block0.as_deref().unwrap_or("none"));
            }
        }
        s
    }

    /// Parses a record.
    pub fn parse(text: &str) -> Result<Record, CloneError> {
        let bad = |line: &str| CloneError::Format { line: line.to_string() };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(text.lines().next().unwrap_or("")));
        }
        let (mut state, mut source, mut url, mut hash, mut enc, mut geometry, mut base) =
            (None, None, None, None, None, None, None);
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(' ').collect();
            let dec = |s: &str| s.parse::<u64>().map_err(|_| bad(line));
            match f.as_slice() {
                ["state", "cloned"] => state = Some(State::Cloned),
                ["state", "flat"] => state = Some(State::Flat),
                ["source", b, p] if !b.is_empty() => {
                    let p = if *p == "-" { String::new() } else { p.to_string() };
                    if !(p.is_empty() || p.ends_with('/')) {
                        return Err(bad(line));
                    }
                    source = Some((b.to_string(), p));
                }
                ["url", u] => url = Some((*u != "-").then(|| u.to_string())),
                ["hashprefix", h @ ("0" | "1")] => hash = Some(*h == "1"),
                ["encrypted", e @ ("0" | "1")] => enc = Some(*e == "1"),
                ["geometry", bs, fs] => {
                    let bs = u32::try_from(dec(bs)?).map_err(|_| bad(line))?;
                    geometry = Some((bs, dec(fs)?));
                }
                ["snapshot", id, time, name] if !name.is_empty() => {
                    let id = u32::from_str_radix(id, 16).map_err(|_| bad(line))?;
                    base = Some(BaseId::Snapshot { id, time: dec(time)?, name: name.to_string() });
                }
                ["volume", md5] => {
                    let ok = *md5 == "none" || (md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()));
                    if !ok {
                        return Err(bad(line));
                    }
                    base = Some(BaseId::Volume { block0: (*md5 != "none").then(|| md5.to_string()) });
                }
                _ => return Err(bad(line)),
            }
        }
        match (state, source, url, hash, enc, geometry, base) {
            (
                Some(state),
                Some((bucket, prefix)),
                Some(url),
                Some(hash_prefix),
                Some(encrypted),
                Some((block_size, file_size)),
                Some(base),
            ) => Ok(Record { state, bucket, prefix, url, hash_prefix, encrypted, block_size, file_size, base }),
            _ => Err(bad("(a line is missing)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        for base in [
            BaseId::Snapshot { id: 2, time: 1_765_108_800, name: "monday".into() },
            BaseId::Volume { block0: Some("0123456789abcdef0123456789abcdef".into()) },
            BaseId::Volume { block0: None },
        ] {
            for (prefix, url) in [("", None), ("os/img/", Some("http://127.0.0.1:9/".to_string()))] {
                let r = Record {
                    state: State::Cloned,
                    bucket: "images".into(),
                    prefix: prefix.into(),
                    url,
                    hash_prefix: true,
                    encrypted: true,
                    block_size: 65536,
                    file_size: 1 << 30,
                    base: base.clone(),
                };
                assert_eq!(Record::parse(&r.render()).unwrap(), r, "{}", r.render());
                let flat = Record { state: State::Flat, ..r };
                assert_eq!(Record::parse(&flat.render()).unwrap(), flat);
            }
        }
        for bad in ["", "s3backer-clone 2\n", "s3backer-clone 1\nstate cloned\n", "s3backer-clone 1\nstate odd\n"] {
            assert!(matches!(Record::parse(bad), Err(CloneError::Format { .. })), "{bad:?}");
        }
    }

    #[test]
    fn the_base_is_described_as_written() {
        let mut r = Record {
            state: State::Cloned,
            bucket: "b".into(),
            prefix: "x/y/".into(),
            url: None,
            hash_prefix: false,
            encrypted: false,
            block_size: 4096,
            file_size: 1 << 20,
            base: BaseId::Snapshot { id: 1, time: 0, name: "s".into() },
        };
        assert_eq!(r.describe_base(), "b/x/y@s");
        r.prefix.clear();
        r.base = BaseId::Volume { block0: None };
        r.url = Some("http://h/".into());
        assert_eq!(r.describe_base(), "b at http://h/");
    }
}
