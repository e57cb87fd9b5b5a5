//! The persistent cache file (`--blockCacheFile`): cached blocks kept in a local file so clean
//! data survives a restart and dirty data survives a crash.
//!
//! The format is our own (not upstream's `dcache` format); all integers are little-endian.
//!
//! ```text
//! offset 0      header, 64 bytes:
//!               magic "S3BRSCF1" (8) | version u32 = 2 | block size u32 | slots u32 |
//!               mount token u32 | checksum u64 (FNV-1a of bytes 0..24) | zero padding
//! offset 64     directory: `slots` entries of 128 bytes:
//!               0   block u32
//!               4   flags u32 (1 = used, 2 = dirty, 4 = zero data, 8 = ETag known,
//!                   16 = partial: only the ranges below hold written data; dirty only)
//!               8   ETag [16] (of the stored object)
//!               24  number of ranges u32 (partial entries: 1 to 8) | zero u32
//!               32  data checksum u64 (FNV-1a of the whole slot)
//!               40  ranges: 8 × (start u32, end u32), half-open byte ranges of the block, in
//!                   order, disjoint; unused ones zero
//!               104 zero padding (16)
//!               120 entry checksum u64 (FNV-1a of bytes 0..120 of the entry)
//!               An all-zero entry is a free slot.
//! data offset   round_up(64 + 128 × slots, 4096); slot i at data offset + i × block size.
//! ```
//!
//! A partial entry's slot holds the whole block buffer: the written ranges, and zeros (never
//! served) elsewhere. It is loaded as partial again, so the missing bytes are fetched from the
//! store when needed, never taken as zeros.
//!
//! Version 1 files (48-byte entries: block, flags, ETag, zero u64, data checksum, entry
//! checksum over bytes 0..40; no partial entries) are still read: the open converts them to
//! version 2 the same crash-safe way it resizes (below). Later versions are refused.
//!
//! Crash safety comes from ordering: a slot's data is written and `fdatasync`ed before the
//! entry that points to it is written, and an entry is erased and `fdatasync`ed before its slot
//! gets new data (erased slots wait in a pending list until the next `fdatasync`, which the
//! next data write does anyway, so a cached write costs one `fdatasync`). So after a crash every used entry points at the complete data it describes,
//! which the data checksum double-checks (a mismatch drops the entry, never returns it).
//!
//! On open: a missing file is created; a file with a bad magic, version or header checksum, or a
//! different block size is refused with a one-line error (a cache file is only a cache, but it
//! may hold the only copy of dirty blocks, so it is never rebuilt silently). A file with a
//! different slot count is resized (see below). Entries whose checksums fail are dropped. Clean entries are loaded as "to verify" (checked against the store with
//! `If-None-Match` on first read; entries without a known ETag are dropped) unless
//! `no_verify`. Dirty entries are dropped, or with `recover_dirty` loaded as dirty and uploaded.
//!
//! Block data lives in the file only: the cache keeps a couple of hundred bytes of bookkeeping
//! per block in memory and reads a block's data from its slot when it is needed (a hit, an
//! upload, a partial write), so the page cache, not the process, holds the hot blocks. The open
//! reads the directory, not the clean blocks' data: a clean block's data checksum is checked
//! when it is first read (a mismatch drops the entry then, as the open used to). Dirty blocks
//! (to recover) are read and checked at open. A slot being read is pinned: it is not reused
//! until the read is done, so a read never sees another block's data (a slot allocation that
//! needs it waits for that read).
//!
//! # Resizing
//!
//! A file made for another number of slots (`--blockCacheSize` changed) is resized at open:
//! every entry the open would load is kept (each dirty block when dirty blocks are recovered;
//! clean blocks, in slot order, while slots are left), the rest is dropped exactly as the open
//! would drop it. When the dirty blocks alone need more slots than the new size, the open is
//! refused with one line and the file is left untouched. The mount token in the header is kept.
//!
//! The resize never changes the old file. Its steps, each safe to be interrupted by a crash:
//! 1. a stale `<file>.resize` (left by an interrupted resize) is deleted;
//! 2. `<file>.resize` is created with its full length reserved, and receives the header, the
//!    kept blocks' data and then their entries (the old file is still the cache file);
//! 3. `<file>.resize` is `fsync`ed, so its whole content is durable;
//! 4. it is renamed over `<file>` (atomic: the name points at the old or the new file, both
//!    complete), and the directory is `fsync`ed;
//! 5. the new file is opened as usual.
//!
//! A crash before step 4 leaves the old file, and the next open deletes the half-made
//! `<file>.resize` and resizes again; a crash after it leaves the new file. Either way no dirty
//! block is lost, and every entry still points at data its checksum vouches for. The resize
//! needs room for both files while it runs.

use crate::ranges::{ByteRanges, MAX_RANGES};
use bytes::Bytes;
use parking_lot::Mutex;
use s3b_store::{BlockNum, Etag, Result, StoreError, is_zero};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const MAGIC: &[u8; 8] = b"S3BRSCF1";
const VERSION: u32 = 2;
/// Header length in bytes, as a buffer length ...
const HEADER_BYTES: usize = 64;
/// ... and as a file offset.
const HEADER_LEN: u64 = HEADER_BYTES as u64;
/// Entry length of the current version.
const ENTRY_BYTES: usize = 128;
/// [`ENTRY_BYTES`] as a file offset.
const ENTRY_LEN: u64 = ENTRY_BYTES as u64;
/// Entry length of version 1 files.
const V1_ENTRY_BYTES: usize = 48;
const ALIGN: u64 = 4096;

const F_USED: u32 = 1;
const F_DIRTY: u32 = 2;
const F_ZERO: u32 = 4;
const F_ETAG: u32 = 8;
const F_PARTIAL: u32 = 16;

/// Entry length of format `version`.
fn entry_bytes(version: u32) -> usize {
    if version == 1 { V1_ENTRY_BYTES } else { ENTRY_BYTES }
}

/// The bytes of entry `slot` (entries of `elen` bytes) in a directory read whole.
fn entry_at(dir: &[u8], slot: u32, elen: usize) -> &[u8] {
    let start = slot as usize * elen;
    &dir[start..start + elen]
}

/// Offset of the first data slot.
fn data_offset(version: u32, slots: u32) -> u64 {
    (HEADER_LEN + entry_bytes(version) as u64 * slots as u64).div_ceil(ALIGN) * ALIGN
}

/// How to open the cache file.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOptions {
    /// Trust reloaded clean blocks without checking them against the store.
    pub no_verify: bool,
    /// Load dirty blocks (to upload them) instead of discarding them.
    pub recover_dirty: bool,
    /// `posix_fadvise(DONTNEED)` after file I/O.
    pub advise: bool,
}

/// Where a cached block's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// In memory (`None`: all zeros).
    Mem(Option<Bytes>),
    /// Only in the cache file, in the slot of the block's entry. `sum` is the data's checksum;
    /// `checked` says whether the data is known to match it (written by this process, or read
    /// and checked since the open).
    File {
        /// FNV-1a of the slot's data.
        sum: u64,
        /// Known to match `sum`.
        checked: bool,
    },
}

/// A block found in the file at open.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The block it holds.
    pub(crate) block: BlockNum,
    /// Where in the file.
    pub(crate) slot: u32,
    /// Its data: zeros or a partial block's buffer in memory, anything else in the slot.
    pub(crate) data: Held,
    /// Clean or dirty (all of it or a part), as the slot's record says.
    pub(crate) state: LoadedState,
}

/// What a block found in the file comes back as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LoadedState {
    /// The stored version (ETag `etag`), to check against the store on first read when
    /// `verify`.
    Clean { etag: Option<Etag>, verify: bool },
    /// Newer than the stored version (to upload): all of the block, or only the byte ranges
    /// `valid` of a partially written one.
    Dirty { valid: Option<ByteRanges> },
}

impl Loaded {
    /// Whether the block is dirty (to upload).
    pub(crate) fn is_dirty(&self) -> bool {
        matches!(self.state, LoadedState::Dirty { .. })
    }
}

/// An open cache file.
pub struct CacheFile {
    path: PathBuf,
    file: File,
    block_size: u32,
    slots: u32,
    data_off: u64,
    opts: FileOptions,
    free: Mutex<Vec<u32>>,
    /// Slots released but whose entry is not erased yet: erased before the next `fdatasync`
    /// (so releasing a slot costs no I/O, and can be done under the cache's lock).
    unerased: Mutex<Vec<u32>>,
    /// Slots whose entry was erased but not yet synced: free after the next `fdatasync`.
    pending: Mutex<Vec<u32>>,
    loaded: Mutex<Vec<Loaded>>,
    /// Slots being read, with the number of reads: not reused until they end.
    pins: Mutex<std::collections::HashMap<u32, u32>>,
    /// Signalled when a slot's last read ends.
    unpinned: parking_lot::Condvar,
    token: Mutex<u32>,
    dirty_found: usize,
    /// Blocks found at open and kept.
    blocks_found: usize,
    uploads_allowed: AtomicBool,
    /// Signalled when uploads become allowed.
    allowed: tokio::sync::Notify,
}

/// Directory entries read at once by the open: 1 MiB, large enough to read at the disk's
/// sequential rate, small enough to report progress often.
const DIR_CHUNK: u32 = 8192;

/// A slot pinned for a read ([`CacheFile::pin`]).
pub(crate) struct Pinned {
    file: Arc<CacheFile>,
    slot: u32,
}

impl Pinned {
    /// Reads the slot's data; with `check`, `None` when it does not match that checksum.
    pub(crate) fn read(&self, check: Option<u64>) -> std::io::Result<Option<Bytes>> {
        self.file.read_slot(self.slot, check)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut pins = self.file.pins.lock();
        if let Some(c) = pins.get_mut(&self.slot) {
            *c -= 1;
            if *c == 0 {
                pins.remove(&self.slot);
                self.file.unpinned.notify_all();
            }
        }
    }
}

/// Gives a new cache file its full length with the space reserved (`fallocate`), so that a file
/// system too small for it is an error at startup, not failed writes later. Where the file
/// system cannot reserve space, the file is made sparse after checking there is room for it.
fn reserve(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let off = libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate on a file descriptor we own, no pointers involved.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // SAFETY: an all-zero statvfs is a valid value for fstatvfs to fill in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs writes only into `st`, which lives for the call.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0
        && (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) < len
    {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    file.set_len(len)
}

/// What an entry whose slot holds data of checksum `sum` (`None`: zeros) keeps in memory.
fn held(sum: Option<u64>) -> Held {
    match sum {
        Some(sum) => Held::File { sum, checked: true },
        None => Held::Mem(None),
    }
}

/// 64-bit FNV-1a.
fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("slice of constant length"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("slice of constant length"))
}

/// A used directory entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EntryMeta {
    block: BlockNum,
    dirty: bool,
    /// No data in the slot: the block is all zeros (or, partial, its ranges are).
    zero: bool,
    etag: Option<Etag>,
    /// Checksum of the slot's data (0 when `zero`).
    data_sum: u64,
    /// Partial block: the ranges it holds.
    valid: Option<ByteRanges>,
}

/// Decodes a used entry of format `version` for blocks of `block_size` bytes; `None` when it is
/// damaged (the open drops it).
fn decode_entry(raw: &[u8], version: u32, block_size: u32) -> Option<EntryMeta> {
    let flags = u32_at(raw, 4);
    let sum_ok = if version == 1 {
        fnv(&raw[0..40]) == u64_at(raw, 40) && flags & F_PARTIAL == 0
    } else {
        fnv(&raw[0..120]) == u64_at(raw, 120)
    };
    if !sum_ok || flags & F_USED == 0 {
        return None;
    }
    let dirty = flags & F_DIRTY != 0;
    let valid = if flags & F_PARTIAL != 0 {
        let count = u32_at(raw, 24) as usize;
        if !dirty || count == 0 || count > MAX_RANGES {
            return None;
        }
        let list: Vec<(u32, u32)> = (0..count).map(|i| (u32_at(raw, 40 + 8 * i), u32_at(raw, 44 + 8 * i))).collect();
        let r = ByteRanges::from_stored(&list, block_size)?;
        (!r.is_full(block_size)).then_some(r)
    } else {
        None
    };
    Some(EntryMeta {
        block: u32_at(raw, 0),
        dirty,
        zero: flags & F_ZERO != 0,
        etag: (flags & F_ETAG != 0).then(|| Etag(raw[8..24].try_into().expect("slice of constant length"))),
        data_sum: u64_at(raw, 32),
        valid,
    })
}

/// Encodes an entry in the current format.
fn encode_entry(m: &EntryMeta) -> [u8; ENTRY_BYTES] {
    let mut e = [0u8; ENTRY_BYTES];
    let mut flags = F_USED;
    if m.dirty {
        flags |= F_DIRTY;
    }
    if m.zero {
        flags |= F_ZERO;
    }
    if let Some(t) = m.etag {
        flags |= F_ETAG;
        e[8..24].copy_from_slice(&t.0);
    }
    if let Some(r) = &m.valid {
        flags |= F_PARTIAL;
        let mut count = 0u32;
        for (i, &(a, b)) in r.ranges().iter().take(MAX_RANGES).enumerate() {
            e[40 + 8 * i..44 + 8 * i].copy_from_slice(&a.to_le_bytes());
            e[44 + 8 * i..48 + 8 * i].copy_from_slice(&b.to_le_bytes());
            count += 1;
        }
        e[24..28].copy_from_slice(&count.to_le_bytes());
    }
    e[0..4].copy_from_slice(&m.block.to_le_bytes());
    e[4..8].copy_from_slice(&flags.to_le_bytes());
    e[32..40].copy_from_slice(&m.data_sum.to_le_bytes());
    let sum = fnv(&e[0..120]);
    e[120..128].copy_from_slice(&sum.to_le_bytes());
    e
}

/// Whether an open with `opts` keeps an undamaged entry (before its data is checked).
fn wanted(meta: &EntryMeta, opts: &FileOptions) -> bool {
    if meta.dirty {
        return opts.recover_dirty;
    }
    opts.no_verify || meta.etag.is_some()
}

/// The temporary file a resize writes before renaming it over the cache file.
fn resize_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".resize");
    PathBuf::from(p)
}

/// Why a resize failed.
#[derive(Debug, thiserror::Error)]
enum ResizeError {
    /// The dirty blocks to keep need more slots than the new size.
    #[error("holds {0} dirty blocks not yet uploaded")]
    TooManyDirty(usize),
    /// An I/O step failed (or, in tests, a crash was injected before it).
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// The cache file cannot be used: a [`StoreError::Setup`] (someone must fix or remove the
/// file), with the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("cache file {}", path.display())]
pub struct CacheFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub source: FileError,
}

/// Why the cache file cannot be used (the source of [`CacheFileError`]).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An I/O step failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// Space for a new file could not be reserved.
    #[error("can't reserve {mib} MiB for {slots} blocks of {block_size} bytes")]
    Reserve {
        /// MiB asked for.
        mib: u64,
        /// Blocks.
        slots: u32,
        /// Block size.
        block_size: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The header could not be read in full.
    #[error("is corrupt (short header); delete it")]
    ShortHeader,
    /// The header is not ours, or damaged.
    #[error("is not an s3backer-rs cache file or is corrupt (bad header); delete it")]
    BadHeader,
    /// A format version we do not know.
    #[error("has format version {0}, which this version of s3backer does not know; delete it or use a newer s3backer")]
    UnknownVersion(u32),
    /// Made for another block size.
    #[error("was made for block size {file}, not {ours}; delete it or use another file")]
    BlockSize {
        /// The file's.
        file: u32,
        /// Ours.
        ours: u32,
    },
    /// Shorter than its header says.
    #[error("is truncated ({len} bytes, expected {expected}); delete it")]
    Truncated {
        /// Its length.
        len: u64,
        /// The length it should have.
        expected: u64,
    },
    /// Too many dirty blocks for the new size.
    #[error(
        "holds {dirty} dirty blocks not yet uploaded, more than the new cache size of {slots} blocks; \
         use --blockCacheSize={dirty} or more until they are uploaded"
    )]
    TooManyDirty {
        /// Dirty blocks in the file.
        dirty: usize,
        /// The new size.
        slots: u32,
    },
    /// Rewriting it for a new size failed.
    #[error("can't rewrite it for {slots} blocks")]
    Resize {
        /// The new size.
        slots: u32,
        /// The step that failed.
        #[source]
        source: ResizeFailure,
    },
}

/// A failed step of a cache-file resize.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ResizeFailure(ResizeError);

/// Counts the steps of a resize that change a file, and (in tests) stops before step
/// `crash_at` as a kill -9 would: files are left exactly as they are.
struct Steps {
    done: usize,
    crash_at: Option<usize>,
}

impl Steps {
    fn step<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce() -> std::io::Result<T>,
    ) -> std::result::Result<T, ResizeError> {
        if self.crash_at == Some(self.done) {
            return Err(ResizeError::Io(what, std::io::Error::other("crash injected")));
        }
        self.done += 1;
        f().map_err(|e| ResizeError::Io(what, e))
    }
}

/// Rewrites the cache file at `path` (format `old_version`, made for `old_slots` slots) in the
/// current format for `new_slots` slots, as the module docs describe. Returns the number of
/// steps that changed a file (for the crash test).
#[allow(clippy::too_many_arguments)]
fn resize(
    path: &Path,
    block_size: u32,
    old_version: u32,
    old_slots: u32,
    new_slots: u32,
    token: u32,
    opts: FileOptions,
    crash_at: Option<usize>,
) -> std::result::Result<usize, ResizeError> {
    let io = |what: &'static str| move |e: std::io::Error| ResizeError::Io(what, e);
    let old = File::open(path).map_err(io("can't open"))?;
    let old_off = data_offset(old_version, old_slots);
    let old_elen = entry_bytes(old_version);
    let mut dir = vec![0u8; old_elen * old_slots as usize];
    old.read_exact_at(&mut dir, HEADER_LEN).map_err(io("can't read directory"))?;
    // What the open would keep: dirty entries first (all must fit), then clean ones.
    let mut seen = std::collections::HashSet::new();
    let (mut dirty, mut clean) = (Vec::new(), Vec::new());
    // From the last slot down, as the open goes (which matters only for duplicates).
    for slot in (0..old_slots).rev() {
        let raw = entry_at(&dir, slot, old_elen);
        if raw.iter().all(|&b| b == 0) {
            continue;
        }
        let Some(meta) = decode_entry(raw, old_version, block_size) else { continue };
        if !seen.insert(meta.block) || !wanted(&meta, &opts) {
            continue;
        }
        if meta.dirty { &mut dirty } else { &mut clean }.push((slot, meta));
    }
    dirty.reverse();
    clean.reverse();
    if dirty.len() > new_slots as usize {
        return Err(ResizeError::TooManyDirty(dirty.len()));
    }
    let tmp_path = resize_path(path);
    let mut steps = Steps { done: 0, crash_at };
    let tmp = steps.step("can't create the new file", || {
        OpenOptions::new().read(true).write(true).create_new(true).open(&tmp_path)
    })?;
    let new_off = data_offset(VERSION, new_slots);
    let new_len = new_off + new_slots as u64 * block_size as u64;
    steps.step("can't reserve space for the new file", || reserve(&tmp, new_len))?;
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&block_size.to_le_bytes());
    h[16..20].copy_from_slice(&new_slots.to_le_bytes());
    h[20..24].copy_from_slice(&token.to_le_bytes());
    let sum = fnv(&h[0..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    steps.step("can't write the header", || tmp.write_all_at(&h, 0))?;
    let mut new_dir = vec![0u8; ENTRY_BYTES * new_slots as usize];
    let mut next = 0u32;
    let (mut kept_dirty, mut kept_clean) = (0usize, 0usize);
    let mut buf = vec![0u8; block_size as usize];
    for (slot, meta) in dirty.iter().chain(clean.iter()) {
        if next == new_slots {
            break;
        }
        if !meta.zero {
            old.read_exact_at(&mut buf, old_off + *slot as u64 * block_size as u64)
                .map_err(io("can't read a block"))?;
            if fnv(&buf) != meta.data_sum {
                // The open would drop it too.
                continue;
            }
            let at = new_off + next as u64 * block_size as u64;
            steps.step("can't write a block", || tmp.write_all_at(&buf, at))?;
        }
        new_dir[next as usize * ENTRY_BYTES..(next as usize + 1) * ENTRY_BYTES].copy_from_slice(&encode_entry(meta));
        next += 1;
        if meta.dirty {
            kept_dirty += 1;
        } else {
            kept_clean += 1;
        }
    }
    steps.step("can't write the directory", || tmp.write_all_at(&new_dir, HEADER_LEN))?;
    steps.step("can't sync the new file", || tmp.sync_all())?;
    steps.step("can't rename the new file", || std::fs::rename(&tmp_path, path))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    steps.step("can't sync the directory", || File::open(&parent)?.sync_all())?;
    let from =
        if old_version == VERSION { String::new() } else { format!(" (converted from format version {old_version})") };
    log::info!(
        "cache file {}: rewritten from {old_slots} to {new_slots} blocks{from}, keeping {kept_dirty} dirty and {kept_clean} clean blocks",
        path.display()
    );
    Ok(steps.done)
}

impl CacheFile {
    /// Opens or creates the cache file for `slots` blocks of `block_size` bytes and reads its
    /// directory. Errors are one line naming the file and the problem.
    pub fn open(path: &Path, block_size: u32, slots: u32, opts: FileOptions) -> Result<CacheFile> {
        Self::open_with_progress(path, block_size, slots, opts, &|_| {})
    }

    /// [`CacheFile::open`], calling `progress(n)` as each further `n` of the `slots` entries of
    /// the directory are scanned (a resize reports nothing until the new file is scanned).
    pub fn open_with_progress(
        path: &Path,
        block_size: u32,
        slots: u32,
        opts: FileOptions,
        progress: &dyn Fn(u64),
    ) -> Result<CacheFile> {
        let err = |e: FileError| StoreError::Setup(CacheFileError { path: path.to_path_buf(), source: e }.into());
        let io = |what: &str, e: std::io::Error| err(FileError::Io(what.to_string(), e));
        let tmp = resize_path(path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {
                log::info!("cache file {}: removed {} left by an interrupted resize", path.display(), tmp.display())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&format!("can't remove {}", tmp.display()), e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("can't open", e))?;
        let len = file.metadata().map_err(|e| io("can't stat", e))?.len();
        let data_off = data_offset(VERSION, slots);
        let full_len = data_off + slots as u64 * block_size as u64;
        let mut cf = CacheFile {
            path: path.to_owned(),
            file,
            block_size,
            slots,
            data_off,
            opts,
            free: Mutex::new(Vec::new()),
            unerased: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            loaded: Mutex::new(Vec::new()),
            pins: Mutex::new(std::collections::HashMap::new()),
            unpinned: parking_lot::Condvar::new(),
            token: Mutex::new(0),
            dirty_found: 0,
            blocks_found: 0,
            uploads_allowed: AtomicBool::new(true),
            allowed: tokio::sync::Notify::new(),
        };
        if len == 0 {
            if let Err(source) = reserve(&cf.file, full_len) {
                // Leave nothing half-made behind: the next start creates it afresh.
                let _ = std::fs::remove_file(path);
                return Err(err(FileError::Reserve { mib: full_len.div_ceil(1 << 20), slots, block_size, source }));
            }
            cf.write_header(0).map_err(|e| io("can't write header", e))?;
            cf.file.sync_all().map_err(|e| io("can't sync", e))?;
            *cf.free.lock() = (0..slots).rev().collect();
            return Ok(cf);
        }
        let mut h = [0u8; HEADER_BYTES];
        cf.file.read_exact_at(&mut h, 0).map_err(|_| err(FileError::ShortHeader))?;
        if &h[0..8] != MAGIC || fnv(&h[0..24]) != u64_at(&h, 24) {
            return Err(err(FileError::BadHeader));
        }
        let fversion = u32_at(&h, 8);
        if fversion != VERSION && fversion != 1 {
            return Err(err(FileError::UnknownVersion(fversion)));
        }
        let (fbs, fslots) = (u32_at(&h, 12), u32_at(&h, 16));
        if fbs != block_size {
            return Err(err(FileError::BlockSize { file: fbs, ours: block_size }));
        }
        if fslots != slots || fversion != VERSION {
            let old_full = data_offset(fversion, fslots) + fslots as u64 * block_size as u64;
            if len < old_full {
                return Err(err(FileError::Truncated { len, expected: old_full }));
            }
            drop(cf);
            resize(path, block_size, fversion, fslots, slots, u32_at(&h, 20), opts, None).map_err(|e| match e {
                ResizeError::TooManyDirty(dirty) => err(FileError::TooManyDirty { dirty, slots }),
                e => err(FileError::Resize { slots, source: ResizeFailure(e) }),
            })?;
            return CacheFile::open_with_progress(path, block_size, slots, opts, progress);
        }
        if len < full_len {
            return Err(err(FileError::Truncated { len, expected: full_len }));
        }
        *cf.token.lock() = u32_at(&h, 20);
        // The directory is read in large sequential pieces, from the end (the scan goes from
        // the last slot down, which decides only between duplicates).
        let mut dir = vec![0u8; ENTRY_BYTES * DIR_CHUNK as usize];
        let mut free = Vec::new();
        let mut loaded = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut dropped = 0usize;
        let mut end = slots;
        while end > 0 {
            let start = end.saturating_sub(DIR_CHUNK);
            let piece = &mut dir[..ENTRY_BYTES * (end - start) as usize];
            cf.file
                .read_exact_at(piece, HEADER_LEN + start as u64 * ENTRY_LEN)
                .map_err(|e| io("can't read directory", e))?;
            for slot in (start..end).rev() {
                let raw = entry_at(piece, slot - start, ENTRY_BYTES);
                if raw.iter().all(|&b| b == 0) {
                    free.push(slot);
                    continue;
                }
                let keep = cf.load_entry(slot, raw, &mut seen).map_err(|e| io("can't read", e))?;
                match keep {
                    Some(l) => {
                        if l.is_dirty() {
                            cf.dirty_found += 1;
                        }
                        loaded.push(l)
                    }
                    None => {
                        dropped += 1;
                        cf.erase(slot).map_err(|e| io("can't erase entry", e))?;
                        free.push(slot);
                    }
                }
            }
            progress(u64::from(end - start));
            end = start;
        }
        if dropped > 0 {
            cf.file.sync_data().map_err(|e| io("can't sync", e))?;
            log::info!("cache file {}: dropped {dropped} entries (dirty, unverifiable or damaged)", path.display());
        }
        cf.blocks_found = loaded.len();
        *cf.free.lock() = free;
        *cf.loaded.lock() = loaded;
        // Recovered dirty blocks wait until the caller has checked the mount token.
        cf.uploads_allowed.store(cf.dirty_found == 0, Ordering::SeqCst);
        Ok(cf)
    }

    /// Decodes and checks one used entry; `None` means drop it.
    fn load_entry(
        &self,
        slot: u32,
        raw: &[u8],
        seen: &mut std::collections::HashSet<BlockNum>,
    ) -> std::io::Result<Option<Loaded>> {
        let meta = decode_entry(raw, VERSION, self.block_size);
        let Some(meta) = meta.filter(|m| seen.insert(m.block)) else {
            log::warn!("cache file {}: damaged entry in slot {slot} dropped", self.path.display());
            return Ok(None);
        };
        if !wanted(&meta, &self.opts) {
            return Ok(None);
        }
        let EntryMeta { block, dirty, zero, etag, data_sum, valid } = meta;
        let state = if dirty {
            LoadedState::Dirty { valid }
        } else {
            LoadedState::Clean { etag, verify: !self.opts.no_verify }
        };
        let data = if zero {
            Held::Mem(None)
        } else if !dirty {
            // Checked when first read.
            Held::File { sum: data_sum, checked: false }
        } else {
            // Dirty: read and checked now (it is to be uploaded); a partial block's buffer stays
            // in memory, as the completion merges into it.
            let Some(buf) = self.read_slot(slot, Some(data_sum))? else {
                log::warn!(
                    "cache file {}: data of block {block:#010x} fails its checksum; dropped",
                    self.path.display()
                );
                return Ok(None);
            };
            if matches!(state, LoadedState::Dirty { valid: Some(_) }) {
                Held::Mem(Some(buf))
            } else {
                Held::File { sum: data_sum, checked: true }
            }
        };
        Ok(Some(Loaded { block, slot, data, state }))
    }

    /// Reads the data of `slot`; with `check`, `None` when it does not match that checksum.
    pub(crate) fn read_slot(&self, slot: u32, check: Option<u64>) -> std::io::Result<Option<Bytes>> {
        let mut buf = vec![0u8; self.block_size as usize];
        self.file.read_exact_at(&mut buf, self.slot_off(slot))?;
        self.advise(slot);
        if check.is_some_and(|sum| fnv(&buf) != sum) {
            return Ok(None);
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Pins `slot` (owned by a cache entry now) for a read: it is not reused, whatever happens
    /// to the entry, until the returned value is dropped. Hold it only for the read, never
    /// across an `.await`: a slot allocation waits for pinned slots.
    pub(crate) fn pin(self: &Arc<Self>, slot: u32) -> Pinned {
        *self.pins.lock().entry(slot).or_insert(0) += 1;
        Pinned { file: self.clone(), slot }
    }

    fn slot_off(&self, slot: u32) -> u64 {
        self.data_off + slot as u64 * self.block_size as u64
    }

    fn advise(&self, slot: u32) {
        if self.opts.advise {
            // SAFETY: plain syscall on our own open descriptor.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    self.slot_off(slot) as libc::off_t,
                    self.block_size as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
    }

    fn write_header(&self, token: u32) -> std::io::Result<()> {
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        h[16..20].copy_from_slice(&self.slots.to_le_bytes());
        h[20..24].copy_from_slice(&token.to_le_bytes());
        let sum = fnv(&h[0..24]);
        h[24..32].copy_from_slice(&sum.to_le_bytes());
        self.file.write_all_at(&h, 0)
    }

    fn erase(&self, slot: u32) -> std::io::Result<()> {
        self.file.write_all_at(&[0u8; ENTRY_BYTES], HEADER_LEN + slot as u64 * ENTRY_LEN)
    }

    /// Writes the entry of `slot`: block `block`, its data's checksum `sum` (`None`: zeros).
    fn write_entry(
        &self,
        slot: u32,
        block: BlockNum,
        dirty: bool,
        sum: Option<u64>,
        etag: Option<Etag>,
        valid: Option<&ByteRanges>,
    ) -> std::io::Result<()> {
        let e = encode_entry(&EntryMeta {
            block,
            dirty,
            zero: sum.is_none(),
            etag,
            data_sum: sum.unwrap_or(0),
            valid: valid.cloned(),
        });
        self.file.write_all_at(&e, HEADER_LEN + slot as u64 * ENTRY_LEN)
    }

    /// Writes data for `slot` and syncs it (the entry pointing at it comes after). The same
    /// sync makes earlier erasures durable, so their slots become free.
    fn write_data(&self, slot: u32, data: Option<&Bytes>) -> std::io::Result<()> {
        if let Some(d) = data {
            self.file.write_all_at(d, self.slot_off(slot))?;
        }
        if data.is_some() || self.releases_pending() {
            self.synced()?;
        }
        if data.is_some() {
            self.advise(slot);
        }
        Ok(())
    }

    /// Whether released slots wait for their erasure or its sync.
    fn releases_pending(&self) -> bool {
        !self.unerased.lock().is_empty() || !self.pending.lock().is_empty()
    }

    /// Erases the entries of released slots, `fdatasync`s, then the slots erased before it are
    /// free for reuse.
    fn synced(&self) -> std::io::Result<()> {
        let mut unerased = std::mem::take(&mut *self.unerased.lock());
        {
            // A slot being read stays unerased (so not reused) until its read ends.
            let pins = self.pins.lock();
            if !pins.is_empty() {
                let (pinned, go) = unerased.into_iter().partition(|s| pins.contains_key(s));
                unerased = go;
                self.unerased.lock().extend::<Vec<u32>>(pinned);
            }
        }
        for slot in unerased {
            match self.erase(slot) {
                Ok(()) => self.pending.lock().push(slot),
                // Leave the slot unused: its entry may still point at it.
                Err(e) => log::error!("cache file {}: can't erase slot {slot}: {e}", self.path.display()),
            }
        }
        // Taken, not copied: of two syncs running at once (a flush's beside a write's), only
        // the one that took a slot frees it, so no slot is ever free twice.
        let erased = std::mem::take(&mut *self.pending.lock());
        if let Err(e) = self.file.sync_data() {
            self.pending.lock().extend(erased);
            return Err(e);
        }
        self.free.lock().extend(erased);
        Ok(())
    }

    /// A free slot (its entry erased durably), syncing pending erasures if that is needed.
    /// When the only released slots are being read, waits for those reads (each one `pread`,
    /// never held across a wait), so that the file has a slot for every cached block.
    fn alloc(&self) -> std::io::Result<Option<u32>> {
        loop {
            if let Some(s) = self.free.lock().pop() {
                return Ok(Some(s));
            }
            if !self.releases_pending() {
                return Ok(None);
            }
            self.synced()?;
            if let Some(s) = self.free.lock().pop() {
                return Ok(Some(s));
            }
            let mut pins = self.pins.lock();
            if !pins.is_empty() {
                self.unpinned.wait(&mut pins);
            }
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Number of blocks found at open and kept (dirty and clean).
    pub fn blocks_found(&self) -> usize {
        self.blocks_found
    }

    /// Number of dirty blocks found at open and kept for recovery.
    pub fn dirty_found(&self) -> usize {
        self.dirty_found
    }

    /// Lets the cache upload. When the file held dirty blocks to recover, uploads wait for
    /// this call, so that nothing is written to a volume before its mount token is checked.
    pub fn allow_uploads(&self) {
        self.uploads_allowed.store(true, Ordering::SeqCst);
        self.allowed.notify_waiters();
    }

    /// Completes once [`CacheFile::allow_uploads`] is called after this call (take it before
    /// looking at [`CacheFile::uploads_allowed`], so the call between is not missed).
    pub(crate) fn allowed(&self) -> tokio::sync::futures::Notified<'_> {
        self.allowed.notified()
    }

    /// Whether uploads may start (see [`CacheFile::allow_uploads`]).
    pub fn uploads_allowed(&self) -> bool {
        self.uploads_allowed.load(Ordering::SeqCst)
    }

    /// The mount token stored in the header: that of the mount that last used the file
    /// (0 = it was unmounted cleanly).
    pub fn stored_token(&self) -> u32 {
        *self.token.lock()
    }

    /// Stores a mount token in the header (0 on clean unmount) and syncs it.
    pub fn set_token(&self, token: u32) -> Result<()> {
        let mut t = self.token.lock();
        self.write_header(token)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| StoreError::io(format!("cache file {}: can't write header", self.path.display()), e))?;
        *t = token;
        Ok(())
    }

    /// The blocks found at open (handed over once).
    pub(crate) fn take_loaded(&self) -> Vec<Loaded> {
        std::mem::take(&mut *self.loaded.lock())
    }

    /// Makes sure everything written so far is on disk.
    pub fn sync(&self) -> Result<()> {
        self.synced().map_err(|e| StoreError::io(format!("cache file {}: sync failed", self.path.display()), e))
    }

    /// Frees a slot, without I/O: its entry is erased before the next `fdatasync` (which every
    /// new entry's data write and every sync does first), and the slot is reused only after that
    /// `fdatasync` has made the erasure durable. Until then the entry still names the block
    /// with data its checksum vouches for, and no other entry of that block is written before
    /// the erasure (a new entry is always written after a sync).
    pub(crate) fn release(&self, slot: u32) {
        self.unerased.lock().push(slot);
    }

    /// Records block `n` as dirty with `data` (before the cache entry changes); `valid` names
    /// the bytes a partially written block holds. `old` is the slot the block had, erased
    /// first; data goes into a new slot, is synced, and only then is the entry written. Returns
    /// the new slot for the caller to keep in its entry, with what the entry may hold instead of
    /// the data (`None`: no slot free, the block lives in memory only). The file never touches
    /// the cache's state: slots go in and out by value.
    pub(crate) fn write_dirty(
        &self,
        n: BlockNum,
        old: Option<u32>,
        data: Option<&Bytes>,
        valid: Option<&ByteRanges>,
    ) -> Result<Option<(u32, Held)>> {
        let e = |x: std::io::Error| {
            StoreError::io(format!("cache file {}: write of block {n:#010x}", self.path.display()), x)
        };
        if let Some(slot) = old {
            self.release(slot);
        }
        let Some(slot) = self.alloc().map_err(e)? else {
            // No slot (damaged slots leaked): keep the block in memory only.
            return Ok(None);
        };
        // The cache decided zero-ness when the data was made: `Some` is never all zeros.
        debug_assert!(data.is_none_or(|d| !is_zero(d)), "dirty data of block {n:#010x} is zeros");
        let sum = data.map(|d| fnv(d));
        let res = self.write_data(slot, data).and_then(|_| self.write_entry(slot, n, true, sum, None, valid));
        if let Err(x) = res {
            if self.erase(slot).is_ok() {
                self.pending.lock().push(slot);
            }
            return Err(e(x));
        }
        Ok(Some((slot, held(sum))))
    }

    /// Records block `n`, now clean in the cache with `data` and `etag`, in the file: its slot
    /// (`slot`, holding this data) is re-labelled clean, or a new slot gets the data (which is
    /// then in memory). Returns the slot the entry should keep, with what the entry may hold
    /// instead of the data. Failures only cost the file copy.
    pub(crate) fn note_clean(
        &self,
        n: BlockNum,
        slot: Option<u32>,
        data: &Held,
        etag: Option<Etag>,
    ) -> Option<(u32, Held)> {
        let sum = match data {
            Held::Mem(d) => d.as_ref().map(|d| fnv(d)),
            Held::File { sum, .. } => Some(*sum),
        };
        if let Some(slot) = slot {
            if let Err(x) = self.write_entry(slot, n, false, sum, etag, None) {
                log::error!("cache file {}: can't update block {n:#010x}: {x}", self.path.display());
            }
            let checked = !matches!(data, Held::File { checked: false, .. });
            return Some((slot, if checked { held(sum) } else { data.clone() }));
        }
        let Held::Mem(data) = data else {
            // Data only in a slot always comes with that slot.
            return None;
        };
        if etag.is_none() && !self.opts.no_verify {
            // Could not be verified after a restart: not worth a slot.
            return None;
        }
        let Ok(Some(slot)) = self.alloc() else {
            return None;
        };
        match self.write_data(slot, data.as_ref()).and_then(|_| self.write_entry(slot, n, false, sum, etag, None)) {
            Ok(()) => Some((slot, held(sum))),
            Err(x) => {
                log::error!("cache file {}: can't store block {n:#010x}: {x}", self.path.display());
                if self.erase(slot).is_ok() {
                    self.pending.lock().push(slot);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The slot of each block, as the cache keeps them in its entries (the file hands slots
    /// out and takes them back by value).
    type Slots = HashMap<BlockNum, u32>;

    /// What the cache does to record block `n` dirty: the old slot goes in, the new one is kept.
    fn record_dirty(
        f: &CacheFile,
        st: &mut Slots,
        n: BlockNum,
        data: Option<&Bytes>,
        valid: Option<&ByteRanges>,
    ) -> Result<()> {
        let old = st.remove(&n);
        st.extend(f.write_dirty(n, old, data, valid)?.map(|(slot, _)| (n, slot)));
        Ok(())
    }

    /// What the cache does to record block `n` clean with `data` and `etag`.
    fn record_clean(f: &CacheFile, st: &mut Slots, n: BlockNum, data: Option<&Bytes>, etag: Option<Etag>) {
        let old = st.remove(&n);
        st.extend(f.note_clean(n, old, &Held::Mem(data.cloned()), etag).map(|(slot, _)| (n, slot)));
    }

    /// The cache file at `p` with `slots` slots, opened with `opts`, and no slot recorded yet.
    fn new_file(p: &Path, slots: u32, opts: FileOptions) -> (CacheFile, Slots) {
        (CacheFile::open(p, BS, slots, opts).unwrap(), Slots::new())
    }

    /// The data of a block found at open, read from its slot when it is there (and checked
    /// then, as the cache does on first read): `None` when it fails its checksum.
    fn data_of(f: &CacheFile, l: &Loaded) -> Option<Option<Bytes>> {
        match &l.data {
            Held::Mem(d) => Some(d.clone()),
            Held::File { sum, .. } => f.read_slot(l.slot, Some(*sum)).unwrap().map(Some),
        }
    }

    /// [`data_of`] for a block that must not be damaged.
    fn got(f: &CacheFile, l: &Loaded) -> Option<Bytes> {
        data_of(f, l).unwrap_or_else(|| panic!("block {} fails its checksum", l.block))
    }

    /// ETag of a block found clean.
    fn etag_of(l: &Loaded) -> Option<Etag> {
        match l.state {
            LoadedState::Clean { etag, .. } => etag,
            LoadedState::Dirty { .. } => None,
        }
    }

    const BS: u32 = 32;

    fn data(b: u8) -> Bytes {
        Bytes::from(vec![b; BS as usize])
    }

    /// Writes block `n` dirty into the file the way the cache does.
    fn dirty(f: &CacheFile, st: &mut Slots, n: BlockNum, b: u8) {
        record_dirty(f, st, n, Some(&data(b)), None).unwrap();
    }

    fn clean(f: &CacheFile, st: &mut Slots, n: BlockNum, b: u8, etag: u8) {
        record_clean(f, st, n, Some(&data(b)), Some(Etag([etag; 16])));
    }

    #[test]
    fn round_trip_dirty_clean_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        {
            let (f, mut st) = new_file(&p, 4, FileOptions::default());
            dirty(&f, &mut st, 7, 1);
            dirty(&f, &mut st, 7, 2); // rewrite: old slot erased first
            clean(&f, &mut st, 9, 3, 0xab);
            f.set_token(0x1234).unwrap();
        }
        let opts = FileOptions { recover_dirty: true, ..Default::default() };
        let f = CacheFile::open(&p, BS, 4, opts).unwrap();
        assert_eq!(f.stored_token(), 0x1234);
        assert_eq!(f.dirty_found(), 1);
        assert!(!f.uploads_allowed(), "recovered dirty blocks wait for the token check");
        let mut l = f.take_loaded();
        l.sort_by_key(|l| l.block);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].block, l[0].is_dirty(), got(&f, &l[0])), (7, true, Some(data(2))));
        let clean = LoadedState::Clean { etag: Some(Etag([0xab; 16])), verify: true };
        assert_eq!((l[1].block, &l[1].state), (9, &clean));
        drop(f);
        // Without recovery the dirty block is discarded (and erased from the file).
        let f = CacheFile::open(&p, BS, 4, FileOptions::default()).unwrap();
        assert_eq!(f.take_loaded().len(), 1);
        drop(f);
        let f = CacheFile::open(&p, BS, 4, opts).unwrap();
        assert_eq!(f.dirty_found(), 0);
    }

    #[test]
    fn damaged_data_or_entry_is_dropped_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let data_off;
        {
            let (f, mut st) = new_file(&p, 4, FileOptions::default());
            clean(&f, &mut st, 1, 5, 1);
            clean(&f, &mut st, 2, 6, 2);
            data_off = f.data_off;
        }
        let raw = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        // Flip a data byte of one slot and an entry byte of the other.
        raw.write_all_at(&[0xee], data_off + 3).unwrap();
        raw.write_all_at(&[0xee], HEADER_LEN + ENTRY_LEN + 10).unwrap();
        let f = CacheFile::open(&p, BS, 4, FileOptions { no_verify: true, ..Default::default() }).unwrap();
        // The damaged entry is dropped at open, its slot freed; the damaged data is found when
        // the block is first read (the open reads no clean data).
        let l = f.take_loaded();
        assert_eq!(l.len(), 1);
        assert_eq!(f.free.lock().len(), 3);
        assert_eq!((l[0].block, data_of(&f, &l[0])), (1, None));
    }

    /// A pinned slot (being read) is not reused however often it is released and synced: it
    /// still holds its block's data until the read ends; a write that needs it waits for that.
    #[test]
    fn a_pinned_slot_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let (f, mut st) = new_file(&p, 2, FileOptions::default());
        let f = Arc::new(f);
        dirty(&f, &mut st, 1, 1);
        let slot = st[&1];
        let pin = f.pin(slot);
        // Block 1 rewritten: its old slot is released; block 2 takes the other slot.
        dirty(&f, &mut st, 1, 2);
        f.sync().unwrap();
        assert!(f.free.lock().is_empty() && f.unerased.lock().contains(&slot), "the pinned slot was freed");
        // A third write needs the pinned slot: it waits for the read to end.
        let writer = std::thread::spawn({
            let f = f.clone();
            move || {
                let mut st = Slots::new();
                record_dirty(&f, &mut st, 2, Some(&data(3)), None).unwrap();
                st[&2]
            }
        });
        assert_eq!(pin.read(None).unwrap(), Some(data(1)), "reused while pinned");
        drop(pin);
        assert_eq!(writer.join().unwrap(), slot, "reused once unpinned");
    }

    #[test]
    fn bad_files_are_refused_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        drop(CacheFile::open(&p, BS, 4, FileOptions::default()).unwrap());
        let msg = |bs, slots| {
            CacheFile::open(&p, bs, slots, FileOptions::default())
                .err()
                .map(|e| s3b_store::Chain(&e).to_string())
                .unwrap()
        };
        assert!(msg(64, 4).contains("was made for block size 32, not 64"), "{}", msg(64, 4));
        // Another slot count is a resize, not an error.
        assert_eq!(CacheFile::open(&p, BS, 8, FileOptions::default()).unwrap().slots(), 8);
        assert!(msg(64, 8).contains("was made for block size 32, not 64"));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(msg(BS, 4).contains("is corrupt (short header)"));
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        assert!(msg(BS, 4).contains("is not an s3backer-rs cache file or is corrupt"));
        assert!(!msg(BS, 4).contains('\n'));
    }

    const RECOVER: FileOptions = FileOptions { recover_dirty: true, no_verify: false, advise: false };

    /// A 6-slot file holding dirty blocks 10 (data) and 11 (zeros), clean blocks 20, 21, 22,
    /// and the mount token 0x77.
    fn six_slot_file(p: &Path) {
        let (f, mut st) = new_file(p, 6, FileOptions::default());
        dirty(&f, &mut st, 10, 1);
        record_dirty(&f, &mut st, 11, None, None).unwrap();
        for (n, b) in [(20, 2), (21, 3), (22, 4)] {
            clean(&f, &mut st, n, b, b);
        }
        f.set_token(0x77).unwrap();
    }

    /// What [`six_slot_file`] put in block `n`.
    fn six_slot_data(n: BlockNum) -> Option<Bytes> {
        match n {
            10 => Some(data(1)),
            11 => None,
            20 => Some(data(2)),
            21 => Some(data(3)),
            22 => Some(data(4)),
            other => panic!("block {other} appeared"),
        }
    }

    /// Opens `p` with `slots` (recovering dirty blocks) and checks what it loads: both dirty
    /// blocks, `clean` clean ones (all when `None`), each with its own data, and the token.
    fn check_six(p: &Path, slots: u32, clean: Option<usize>) -> CacheFile {
        let f = CacheFile::open(p, BS, slots, RECOVER).unwrap();
        assert_eq!(f.stored_token(), 0x77);
        assert_eq!(f.dirty_found(), 2);
        assert!(!resize_path(p).exists(), "temporary file left behind");
        let l = f.take_loaded();
        for x in &l {
            assert_eq!(got(&f, x), six_slot_data(x.block), "block {}", x.block);
            assert_eq!(x.is_dirty(), x.block < 20, "block {}", x.block);
            assert!((x.slot as usize) < slots as usize);
        }
        let n_clean = l.iter().filter(|x| !x.is_dirty()).count();
        assert_eq!(n_clean, clean.unwrap_or(3), "{l:?}");
        *f.loaded.lock() = l;
        f
    }

    #[test]
    fn resize_grows_and_shrinks_keeping_every_dirty_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        six_slot_file(&p);
        // Grow: everything kept, the file has its new length, free slots are usable.
        let f = check_six(&p, 10, None);
        assert_eq!(f.slots(), 10);
        assert_eq!(f.free.lock().len(), 5);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096 + 10 * BS as u64);
        let mut st = Slots::new();
        dirty(&f, &mut st, 30, 9);
        drop(f);
        let f = CacheFile::open(&p, BS, 10, RECOVER).unwrap();
        assert_eq!(f.take_loaded().len(), 6);
        drop(f);
        // Shrink to 4: block 30 (dirty) and the other two dirty blocks stay, one clean one.
        let f = CacheFile::open(&p, BS, 4, RECOVER).unwrap();
        let l = f.take_loaded();
        assert_eq!(l.iter().filter(|x| x.is_dirty()).count(), 3);
        assert_eq!(l.len(), 4);
        assert_eq!(got(&f, l.iter().find(|x| x.block == 30).unwrap()), Some(data(9)));
        drop(f);
        // Shrinking below the dirty blocks is refused with one line; the file is untouched.
        let before = std::fs::read(&p).unwrap();
        let e = CacheFile::open(&p, BS, 2, RECOVER).err().map(|e| s3b_store::Chain(&e).to_string()).unwrap();
        assert!(e.contains("holds 3 dirty blocks not yet uploaded, more than the new cache size of 2 blocks"), "{e}");
        assert!(e.contains("--blockCacheSize=3"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert!(!resize_path(&p).exists());
        // Without recovery the dirty blocks are dropped (as an open of the same size would):
        // they do not count, and the clean block fits.
        let f = CacheFile::open(&p, BS, 1, FileOptions::default()).unwrap();
        let l = f.take_loaded();
        assert_eq!(l.len(), 1);
        assert!(!l[0].is_dirty());
        assert_eq!(got(&f, &l[0]), six_slot_data(l[0].block));
        assert_eq!(f.stored_token(), 0x77);
    }

    #[test]
    fn resize_keeps_clean_blocks_without_etag_only_with_no_verify() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        {
            let (nv, mut st) = new_file(&p, 4, FileOptions { no_verify: true, ..Default::default() });
            record_clean(&nv, &mut st, 3, Some(&data(5)), None);
        }
        let no_verify = FileOptions { no_verify: true, ..Default::default() };
        let f = CacheFile::open(&p, BS, 8, no_verify).unwrap();
        assert_eq!(got(&f, &f.take_loaded()[0]), Some(data(5)));
        drop(f);
        let f = CacheFile::open(&p, BS, 2, FileOptions::default()).unwrap();
        assert!(f.take_loaded().is_empty());
    }

    /// A crash (the resize stopped before each of its steps, files left as they are) never
    /// loses a dirty block or serves wrong data, whichever size the next open asks for.
    #[test]
    fn crash_at_every_step_of_a_resize() {
        for (new, clean_kept) in [(10u32, None), (4, Some(2))] {
            let mut k = 0;
            loop {
                let mut completed = false;
                for reopen_with in [new, 6] {
                    let dir = tempfile::tempdir().unwrap();
                    let p = dir.path().join("c");
                    six_slot_file(&p);
                    match resize(&p, BS, VERSION, 6, new, 0x77, RECOVER, Some(k)) {
                        Ok(_) => completed = true,
                        Err(ResizeError::Io(_, e)) => assert_eq!(e.to_string(), "crash injected"),
                        Err(e) => panic!("{e:?}"),
                    }
                    // Reopening with the old size after a completed resize shrinks again.
                    let clean = if reopen_with == 6 && new == 4 && completed_or_renamed(&p, new) {
                        clean_kept
                    } else if reopen_with == 6 {
                        None
                    } else {
                        clean_kept
                    };
                    drop(check_six(&p, reopen_with, clean));
                }
                if completed {
                    break;
                }
                k += 1;
            }
            // create, reserve, header, 4 or 3 data blocks, directory, sync, rename, dir sync.
            assert!(k >= 10, "only {k} steps");
        }
    }

    /// Whether the file at `p` already has `slots` slots (the resize got past its rename).
    fn completed_or_renamed(p: &Path, slots: u32) -> bool {
        let mut h = [0u8; 24];
        File::open(p).unwrap().read_exact_at(&mut h, 0).unwrap();
        u32_at(&h, 16) == slots
    }

    #[test]
    fn stale_resize_file_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        six_slot_file(&p);
        std::fs::write(resize_path(&p), b"half made").unwrap();
        drop(check_six(&p, 6, None));
    }

    /// Writes a version 1 file (4 slots) holding dirty block 7 (data 1) in slot 2 and clean
    /// block 9 (data 3, ETag 0xab) in slot 0, token 0x99.
    fn v1_file(p: &Path) {
        let mut f = vec![0u8; 4096 + 4 * BS as usize];
        f[0..8].copy_from_slice(MAGIC);
        f[8..12].copy_from_slice(&1u32.to_le_bytes());
        f[12..16].copy_from_slice(&BS.to_le_bytes());
        f[16..20].copy_from_slice(&4u32.to_le_bytes());
        f[20..24].copy_from_slice(&0x99u32.to_le_bytes());
        let sum = fnv(&f[0..24]);
        f[24..32].copy_from_slice(&sum.to_le_bytes());
        for (slot, block, flags, b) in [(2usize, 7u32, F_USED | F_DIRTY, 1u8), (0, 9, F_USED | F_ETAG, 3)] {
            let e = &mut f[64 + 48 * slot..64 + 48 * (slot + 1)];
            e[0..4].copy_from_slice(&block.to_le_bytes());
            e[4..8].copy_from_slice(&flags.to_le_bytes());
            if flags & F_ETAG != 0 {
                e[8..24].copy_from_slice(&[0xab; 16]);
            }
            e[32..40].copy_from_slice(&fnv(&data(b)).to_le_bytes());
            let sum = fnv(&e[0..40]);
            e[40..48].copy_from_slice(&sum.to_le_bytes());
            f[4096 + slot * BS as usize..4096 + (slot + 1) * BS as usize].copy_from_slice(&data(b));
        }
        std::fs::write(p, f).unwrap();
    }

    #[test]
    fn version_1_files_are_converted_and_later_versions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        v1_file(&p);
        let f = CacheFile::open(&p, BS, 4, RECOVER).unwrap();
        assert_eq!(f.stored_token(), 0x99);
        assert_eq!(f.dirty_found(), 1);
        let mut l = f.take_loaded();
        l.sort_by_key(|x| x.block);
        assert_eq!((l[0].block, l[0].is_dirty(), got(&f, &l[0])), (7, true, Some(data(1))));
        assert_eq!((l[1].block, etag_of(&l[1]), got(&f, &l[1])), (9, Some(Etag([0xab; 16])), Some(data(3))));
        drop(f);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(u32_at(&raw, 8), VERSION);
        assert_eq!(raw.len() as u64, data_offset(VERSION, 4) + 4 * BS as u64);
        // Converted and resized in one go; without recovery the dirty block is left out.
        v1_file(&p);
        let f = CacheFile::open(&p, BS, 2, FileOptions::default()).unwrap();
        let l = f.take_loaded();
        assert_eq!((l.len(), l[0].block), (1, 9));
        drop(f);
        // A version from the future is refused, the file left alone.
        let mut raw = std::fs::read(&p).unwrap();
        raw[8..12].copy_from_slice(&3u32.to_le_bytes());
        let sum = fnv(&raw[0..24]);
        raw[24..32].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&p, &raw).unwrap();
        let e =
            CacheFile::open(&p, BS, 2, FileOptions::default()).err().map(|e| s3b_store::Chain(&e).to_string()).unwrap();
        assert!(e.contains("has format version 3, which this version of s3backer does not know"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), raw);
    }

    #[test]
    fn partial_blocks_are_recovered_as_partial_and_survive_a_resize() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let mut want = vec![0u8; BS as usize];
        want[3..9].fill(5);
        want[20..22].fill(6);
        let mut valid = ByteRanges::new(3, 9);
        valid.insert(20, 22);
        {
            let (f, mut st) = new_file(&p, 4, FileOptions::default());
            record_dirty(&f, &mut st, 7, Some(&Bytes::from(want.clone())), Some(&valid)).unwrap();
            record_dirty(&f, &mut st, 8, None, Some(&ByteRanges::new(0, 4))).unwrap();
        }
        for slots in [4, 6, 2] {
            let f = CacheFile::open(&p, BS, slots, RECOVER).unwrap();
            let mut l = f.take_loaded();
            l.sort_by_key(|x| x.block);
            assert_eq!(l.len(), 2);
            assert_eq!((l[0].block, &l[0].state), (7, &LoadedState::Dirty { valid: Some(valid.clone()) }));
            assert_eq!(got(&f, &l[0]), Some(Bytes::from(want.clone())));
            let zeros = LoadedState::Dirty { valid: Some(ByteRanges::new(0, 4)) };
            assert_eq!((l[1].block, got(&f, &l[1]), &l[1].state), (8, None, &zeros));
        }
    }

    #[test]
    fn entries_round_trip_and_bad_partial_entries_are_damaged() {
        let mut m = EntryMeta {
            block: 3,
            dirty: true,
            zero: false,
            etag: None,
            data_sum: 77,
            valid: Some(ByteRanges::new(1, 5)),
        };
        assert_eq!(decode_entry(&encode_entry(&m), VERSION, BS), Some(m.clone()));
        // A partial entry must be dirty; its ranges must be inside the block.
        m.dirty = false;
        assert_eq!(decode_entry(&encode_entry(&m), VERSION, BS), None);
        m.dirty = true;
        m.valid = Some(ByteRanges::new(1, BS + 1));
        assert_eq!(decode_entry(&encode_entry(&m), VERSION, BS), None);
        m.valid = None;
        m.etag = Some(Etag([7; 16]));
        assert_eq!(decode_entry(&encode_entry(&m), VERSION, BS), Some(m.clone()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// Hostile cache files: a valid file with random bytes overwritten, truncated or extended,
        /// or plain random bytes. Opening never panics; it is refused with one line, or loads
        /// only blocks holding exactly what was written to them (never other data).
        #[test]
        fn hostile_cache_files_never_yield_wrong_data(
            edits in proptest::collection::vec((0u64..4300, proptest::prelude::any::<u8>()), 0..12),
            cut in proptest::option::of(0u64..4300),
            random in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)),
            recover in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c");
            {
                let (f, mut st) = new_file(&p, 4, FileOptions::default());
                dirty(&f, &mut st, 7, 1);
                clean(&f, &mut st, 9, 3, 0xab);
                dirty(&f, &mut st, 11, 4);
                f.set_token(0x55).unwrap();
            }
            match random {
                Some(bytes) => std::fs::write(&p, bytes).unwrap(),
                None => {
                    let raw = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                    for (off, b) in &edits {
                        raw.write_all_at(&[*b], *off).unwrap();
                    }
                    if let Some(len) = cut {
                        raw.set_len(len).unwrap();
                    }
                }
            }
            let opts = FileOptions { recover_dirty: recover, no_verify: true, ..Default::default() };
            match CacheFile::open(&p, BS, 4, opts) {
                Err(e) => proptest::prop_assert!(!e.to_string().contains('\n'), "{}", e),
                Ok(f) => {
                    for l in f.take_loaded() {
                        // A damaged slot is found (and the block dropped) when first read.
                        let Some(d) = data_of(&f, &l) else { continue };
                        let want = match l.block {
                            7 => data(1),
                            9 => data(3),
                            11 => data(4),
                            other => return Err(proptest::test_runner::TestCaseError::fail(format!("block {other} appeared"))),
                        };
                        proptest::prop_assert_eq!(d.unwrap_or_else(|| Bytes::from(vec![0u8; BS as usize])), want, "block {}", l.block);
                    }
                }
            }
        }
    }
}
