//! The bookkeeping objects' names and their text formats: the index (which snapshots exist)
//! and a snapshot's map (which blocks it preserved).
//!
//! Both are small line-oriented text documents, so a person can read them with any S3 client:
//!
//! ```text
//! s3backer-snapshots 1            s3backer-snapmap 1
//! gen 7                           00000000 10 d      (blocks 0x0-0xf: copies of data)
//! writer 00000000                 00000020 1 z       (block 0x20: was all zeros)
//! next 00000003
//! snap 00000001 ok 1765108800 4096 1073741824 monday
//! snap 00000002 deleting 1765195200 4096 1073741824 tuesday
//! ```
//!
//! Every change of the index increases `gen`, so two versions never have the same bytes (a
//! reader compares `gen` to learn whether anything changed). Map lines are runs: start block,
//! count (both hex), and `d` (a copy of the block's object is held) or `z` (the block was all
//! zeros, the copy is an empty object).

use crate::SnapError;
use s3b_store::BlockNum;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Name (after the volume's prefix) of the index object.
pub const INDEX_NAME: &str = "s3backer-snapshots";
/// First line of an index.
const INDEX_MAGIC: &str = "s3backer-snapshots 1";
/// First line of a map.
const MAP_MAGIC: &str = "s3backer-snapmap 1";
/// Longest snapshot name.
pub const MAX_NAME_LEN: usize = 64;

/// The name prefix of snapshot `id`'s preserved copies.
pub fn copy_prefix(id: u32) -> String {
    format!("s3backer-snap/{id:08x}/")
}

/// The name of snapshot `id`'s preserved copy of block `n`.
pub fn copy_name(id: u32, n: BlockNum) -> String {
    format!("s3backer-snap/{id:08x}/{n:08x}")
}

/// Parses the block number back out of a copy's name under [`copy_prefix`]`(id)`.
pub fn parse_copy_name(id: u32, name: &str) -> Option<BlockNum> {
    let rest = name.strip_prefix(&copy_prefix(id))?;
    (rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| u32::from_str_radix(rest, 16).ok())
        .flatten()
}

/// The name of snapshot `id`'s map.
pub fn map_name(id: u32) -> String {
    format!("s3backer-snapmap/{id:08x}")
}

/// Checks a snapshot name: 1 to 64 letters, digits, `.`, `_`, `-`, `:` or `+`, not starting
/// with `-` (so that it cannot be taken for a flag).
pub fn check_name(name: &str) -> Result<(), SnapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:+".contains(&b));
    if ok { Ok(()) } else { Err(SnapError::BadName(name.to_string())) }
}

/// One snapshot as the index records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    /// Its number, never reused; it names its objects.
    pub id: u32,
    /// What the user called it.
    pub name: String,
    /// When it was taken (seconds since 1970).
    pub time: u64,
    /// Being deleted: its copies are being handed on or freed (finished by the next command).
    pub deleting: bool,
    /// The volume's block size then.
    pub block_size: u32,
    /// The volume's size in bytes then.
    pub file_size: u64,
}

/// The index: every snapshot, oldest first, and whether a writer may have preserved blocks
/// into the newest without recording them in its map yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Increased by every write of the index.
    pub generation: u64,
    /// Non-zero while a mount may have copies in the newest snapshot its map does not list:
    /// set before its first copy, cleared after the map is saved. Found set by a command that
    /// holds the volume, it means the mount crashed: the newest map is rebuilt by a LIST.
    pub writer: u32,
    /// The id the next snapshot gets.
    pub next_id: u32,
    /// The snapshots, oldest first.
    pub snaps: Vec<Snap>,
}

impl Index {
    /// The snapshot called `name` (deleting ones included).
    pub fn find(&self, name: &str) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.name == name)
    }

    /// The text of the index.
    pub fn render(&self) -> String {
        let mut s =
            format!("{INDEX_MAGIC}\ngen {}\nwriter {:08x}\nnext {:08x}\n", self.generation, self.writer, self.next_id);
        for p in &self.snaps {
            let state = if p.deleting { "deleting" } else { "ok" };
            let _ = writeln!(s, "snap {:08x} {state} {} {} {} {}", p.id, p.time, p.block_size, p.file_size, p.name);
        }
        s
    }

    /// Parses an index.
    pub fn parse(text: &str) -> Result<Index, SnapError> {
        let bad = |line: &str| SnapError::Format { object: INDEX_NAME.to_string(), line: line.to_string() };
        let mut lines = text.lines();
        if lines.next() != Some(INDEX_MAGIC) {
            return Err(bad(text.lines().next().unwrap_or("")));
        }
        let mut idx = Index::default();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad(line));
            let dec = |s: &str| s.parse::<u64>().map_err(|_| bad(line));
            match f.as_slice() {
                ["gen", g] => idx.generation = dec(g)?,
                ["writer", w] => idx.writer = hex(w)?,
                ["next", n] => idx.next_id = hex(n)?,
                ["snap", id, state, time, bs, fs, name] => {
                    let deleting = match *state {
                        "ok" => false,
                        "deleting" => true,
                        _ => return Err(bad(line)),
                    };
                    let block_size = u32::try_from(dec(bs)?).map_err(|_| bad(line))?;
                    check_name(name).map_err(|_| bad(line))?;
                    idx.snaps.push(Snap {
                        id: hex(id)?,
                        name: name.to_string(),
                        time: dec(time)?,
                        deleting,
                        block_size,
                        file_size: dec(fs)?,
                    });
                }
                [""] => {}
                _ => return Err(bad(line)),
            }
        }
        Ok(idx)
    }
}

/// What a snapshot holds for a block it preserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A copy of the block's object.
    Data,
    /// The block was all zeros (its copy is an empty object).
    Zero,
}

/// The blocks one snapshot preserved.
pub type Map = BTreeMap<BlockNum, Kind>;

/// The text of a map.
pub fn render_map(map: &Map) -> String {
    let mut s = format!("{MAP_MAGIC}\n");
    let mut run: Option<(BlockNum, u64, Kind)> = None;
    let flush = |s: &mut String, (start, count, kind): (BlockNum, u64, Kind)| {
        let k = if kind == Kind::Data { 'd' } else { 'z' };
        let _ = writeln!(s, "{start:08x} {count:x} {k}");
    };
    for (&n, &kind) in map {
        run = match run {
            Some((start, count, k)) if k == kind && u64::from(start) + count == u64::from(n) => {
                Some((start, count + 1, k))
            }
            Some(r) => {
                flush(&mut s, r);
                Some((n, 1, kind))
            }
            None => Some((n, 1, kind)),
        };
    }
    if let Some(r) = run {
        flush(&mut s, r);
    }
    s
}

/// Parses the map of snapshot `id`.
pub fn parse_map(id: u32, text: &str) -> Result<Map, SnapError> {
    let bad = |line: &str| SnapError::Format { object: map_name(id), line: line.to_string() };
    let mut lines = text.lines();
    if lines.next() != Some(MAP_MAGIC) {
        return Err(bad(text.lines().next().unwrap_or("")));
    }
    let mut map = Map::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let [start, count, kind] = f.as_slice() else { return Err(bad(line)) };
        let start = u32::from_str_radix(start, 16).map_err(|_| bad(line))?;
        let count = u64::from_str_radix(count, 16).map_err(|_| bad(line))?;
        let kind = match *kind {
            "d" => Kind::Data,
            "z" => Kind::Zero,
            _ => return Err(bad(line)),
        };
        let end = u64::from(start).checked_add(count).filter(|&e| e <= 1 << 32).ok_or_else(|| bad(line))?;
        for n in u64::from(start)..end {
            map.insert(BlockNum::try_from(n).map_err(|_| bad(line))?, kind);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip() {
        let idx = Index {
            generation: 7,
            writer: 0x1234,
            next_id: 3,
            snaps: vec![
                Snap { id: 1, name: "monday".into(), time: 5, deleting: false, block_size: 4096, file_size: 1 << 30 },
                Snap { id: 2, name: "t:2+x".into(), time: 6, deleting: true, block_size: 4096, file_size: 1 << 30 },
            ],
        };
        assert_eq!(Index::parse(&idx.render()).unwrap(), idx);
        assert!(Index::parse("s3backer-snapshots 2\n").is_err());
        assert!(Index::parse("s3backer-snapshots 1\nsnap 1 maybe 1 1 1 x\n").is_err());
        assert!(Index::parse("s3backer-snapshots 1\nsnap 1 ok 1 1 1 bad/name\n").is_err());
    }

    #[test]
    fn map_runs_round_trip() {
        let mut m = Map::new();
        for n in [0, 1, 2, 3, 7, 8, 0xffff_ffff] {
            m.insert(n, Kind::Data);
        }
        m.insert(4, Kind::Zero);
        m.insert(5, Kind::Zero);
        let text = render_map(&m);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert_eq!(parse_map(1, &text).unwrap(), m);
        assert!(parse_map(1, "s3backer-snapmap 1\nffffffff 2 d\n").is_err());
        assert!(parse_map(1, "s3backer-snapmap 1\n0 1 q\n").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(copy_name(2, 0x10), "s3backer-snap/00000002/00000010");
        assert_eq!(parse_copy_name(2, "s3backer-snap/00000002/00000010"), Some(0x10));
        assert_eq!(parse_copy_name(2, "s3backer-snap/00000003/00000010"), None);
        assert_eq!(parse_copy_name(2, "s3backer-snap/00000002/0000001G"), None);
        for ok in ["a", "2026-12-07T12:00", "v1.2_rc+3"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
