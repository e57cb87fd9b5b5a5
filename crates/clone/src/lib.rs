//! Writable clones on plain S3: a volume that starts as an instant copy of a read-only *base*
//! (a snapshot of another volume, or a read-only volume such as a public disk image on a
//! plain web server), reads the blocks it never wrote from that base, and keeps every write,
//! trim and zero write in its own objects. Nothing is copied when the clone is made; `flatten`
//! copies what the clone still uses of the base, after which it is a plain volume.
//!
//! # What is on the server
//!
//! The clone is a volume of its own (its bucket and prefix, its mount token), whose block
//! objects have upstream's format exactly: `<prefix>[hash-]NNNNNNNN`, encoded with the
//! *base's* codec settings (the same compression, the same encryption and password). A base
//! block is served to the codec as it is stored: the codec binds an object to its block
//! number, not to its key, so a base object decodes as the clone's block of that number.
//! Encryption is the one exception: its key is derived from the volume's location (bucket and
//! prefix, as upstream), so a base block of an encrypted volume is decrypted with the base's
//! key and encrypted again with the clone's ([`Recode`], [`RecodedBase`]) on its way up, and a
//! flatten does the same; the clone holds only blocks encrypted for its own location, which
//! is what C s3backer reads after the flatten. Beside them:
//!
//! - `<prefix>s3backer-clone` — the clone record: where the base is, the geometry, what the
//!   base was when the clone was made, and whether reads still fall through
//!   (see [`mod@format`]).
//! - **zero markers**: an empty object at a block's key means "this block is zeros here",
//!   whatever the base holds. Upstream's format deletes zero blocks, but in a clone a missing
//!   object means "read the base", so a trim or a zero write stores an empty object instead
//!   (a stored block is never empty, so the two cannot be confused).
//! - `<prefix>s3backer-clone-stage/<block>` — during a flatten only: a server-side copy of a
//!   snapshot base's block still in its live volume, moved into place once the snapshot index
//!   shows it is the snapshot's ([`ServerCopy`] implementations decide); never read as a block,
//!   and deleted by the next flatten if one is left after a crash.
//!
//! # What a clone promises
//!
//! Block `n` of the clone reads as: its object when it has one (an empty one: zeros), else
//! the base's block `n`. The base is never written (only GET and HEAD are sent to it, and no
//! LIST except by `flatten`, which copes with a refusal). Every mount checks that the base is
//! still what the clone was made from — a snapshot with the same id and time, or a read-only
//! volume with the same geometry and the same stored block 0 — and refuses it otherwise,
//! since the clone's data would be a mix of two bases.
//!
//! # Crash safety (kill -9 at any point)
//!
//! - **Making the clone** is one PUT of the record, after every check: before it the volume
//!   was empty and untouched, after it the clone exists and reads as its base.
//! - **A write, trim or zero write** is one PUT at the block's key (data, or an empty
//!   marker), which S3 applies whole or not at all; the layer acknowledges it only once the
//!   server did. So an acknowledged zero write can never fall through to the base after a
//!   crash, and an unacknowledged one leaves the old or the new content, as on any disk.
//! - **Flatten** ([`flatten()`]) runs in two phases, each redone from what is on the server
//!   when it is run again: (1) while the record says `cloned`, every base block the clone has
//!   no object for is copied into it (a copy of the base's block is the same content, so the
//!   clone reads the same before and after each copy); then the record is rewritten as `flat`
//!   (one PUT): from there nothing falls through; (2) the zero markers are deleted (a missing
//!   block and a marker both read as zeros once flat), then the record. A crash in phase 1
//!   leaves some copies, which the rerun skips; a crash in phase 2 leaves a flat clone that
//!   mounts and reads correctly, and the rerun finishes it. Only then is the volume plain
//!   upstream format, which C s3backer mounts.
//!
//! # Limits
//!
//! A clone's base must not itself be a clone (one level of layering), and a clone cannot
//! have snapshots until it is flattened (a snapshot's copy-on-first-write copies the clone's
//! own object, and a block still in the base has none).

#![forbid(unsafe_code)]

mod error;
pub mod flatten;
pub mod format;

pub use error::CloneError;
pub use flatten::{ListBlocks, NamedListing, ServerCopy, flatten};
pub use format::{BaseId, RECORD_NAME, Record, State};

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use s3b_store::named::NamedObjects;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, TokenSwap,
    VolumeMeta, VolumeProbe,
};
use s3b_store::{StatsSection, StatsSource, StatsWriter};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Requests a bulk operation (many zero markers, a flatten) keeps in flight at once.
pub const CONCURRENCY: usize = 32;

/// Reads the clone record; `None` when the volume is not a clone.
pub async fn read_record(named: &dyn NamedObjects) -> std::result::Result<Option<Record>, CloneError> {
    match named.get_named(RECORD_NAME).await? {
        None => Ok(None),
        Some(o) => Ok(Some(Record::parse(&String::from_utf8_lossy(&o.body.data))?)),
    }
}

/// Writes the clone record.
pub async fn write_record(named: &dyn NamedObjects, r: &Record) -> std::result::Result<(), CloneError> {
    named.put_named(RECORD_NAME, ObjectBody { data: Bytes::from(r.render()), ..Default::default() }).await?;
    Ok(())
}

/// The MD5 (hex) of a stored block 0 as the base's identity (`None`: the base has none). A
/// plain web server may send no ETag, so the bytes themselves are hashed.
pub async fn block0_id(base: &dyn ObjectStore) -> Result<Option<String>> {
    Ok(match base.get_object(0, ReadCondition::None).await? {
        GetOutcome::Found { body, .. } => Some(hex::encode(Md5::digest(&body.data))),
        _ => None,
    })
}

/// Checks that a read-only volume base is still what the record says it was made from.
pub async fn check_volume_base(base: &dyn ObjectStore, r: &Record) -> std::result::Result<(), CloneError> {
    let BaseId::Volume { block0 } = &r.base else { return Ok(()) };
    let now = block0_id(base).await?;
    if &now != block0 {
        let what = match now {
            None => return Err(CloneError::BaseMissing(r.describe_base())),
            Some(_) => "its block 0 is not the one it had".to_string(),
        };
        return Err(CloneError::BaseChanged { base: r.describe_base(), what });
    }
    Ok(())
}

/// Turns a base object into the clone's object of the same block (decrypt with the base's
/// key, encrypt with the clone's), for encrypted volumes.
pub trait Recode: Send + Sync {
    /// The clone's object for block `n`, given the base's.
    fn recode(&self, n: BlockNum, body: ObjectBody) -> Result<ObjectBody>;
}

/// A base read through a [`Recode`]: read-only, every object found re-encoded. The base's
/// ETag is not passed on (it is not the ETag of the bytes returned).
pub struct RecodedBase {
    base: Arc<dyn ObjectStore>,
    recode: Arc<dyn Recode>,
}

impl RecodedBase {
    /// `base`, with its objects passed through `recode`.
    pub fn new(base: Arc<dyn ObjectStore>, recode: Arc<dyn Recode>) -> RecodedBase {
        RecodedBase { base, recode }
    }
}

#[async_trait]
impl ObjectStore for RecodedBase {
    async fn get_object(&self, n: BlockNum, _cond: ReadCondition) -> Result<GetOutcome> {
        match self.base.get_object(n, ReadCondition::None).await? {
            GetOutcome::Found { body, .. } if !body.data.is_empty() => {
                Ok(GetOutcome::Found { body: self.recode.recode(n, body)?, etag: None })
            }
            GetOutcome::Found { .. } | GetOutcome::NotFound => Ok(GetOutcome::NotFound),
            GetOutcome::NotModified => Err(s3b_store::ContractError::UnexpectedNotModified(n).into()),
        }
    }

    async fn put_object(&self, _n: BlockNum, _body: ObjectBody, _volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        Err(StoreError::ReadOnly)
    }

    async fn delete_object(&self, _n: BlockNum) -> Result<()> {
        Err(StoreError::ReadOnly)
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.base.list_objects(sink).await
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        self.base.read_volume_meta().await
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        match op {
            TokenOp::Read => self.base.mount_token(op).await,
            _ => Err(StoreError::ReadOnly),
        }
    }

    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }

    fn set_block_size(&self, block_size: u32) {
        self.base.set_block_size(block_size)
    }
}

/// The layer's lines in the stats file.
#[derive(Default)]
struct Counters {
    /// Reads answered from the base.
    base_reads: AtomicU64,
    /// Zero markers written (trims and zero writes).
    zero_markers: AtomicU64,
}

impl StatsSource for Counters {
    fn section(&self) -> StatsSection {
        StatsSection::Extra
    }
    fn write_stats(&self, w: &mut StatsWriter) {
        w.count("clone_base_reads", self.base_reads.load(Relaxed));
        w.count("clone_zero_markers", self.zero_markers.load(Relaxed));
    }
    fn reset_stats(&self) {
        self.base_reads.store(0, Relaxed);
        self.zero_markers.store(0, Relaxed);
    }
}

/// The clone layer, at the object level below the codec (see the crate documentation).
pub struct CloneStore {
    /// The clone's own block objects.
    clone: Arc<dyn ObjectStore>,
    /// The base, read only.
    base: Arc<dyn ObjectStore>,
    /// Nothing falls through any more (a flatten got half-way).
    flat: bool,
    meta: VolumeMeta,
    counters: Arc<Counters>,
}

impl CloneStore {
    /// The clone whose record is `record`, with its block objects in `clone` and its base
    /// (already checked, see [`check_volume_base`]) in `base`.
    pub fn new(clone: Arc<dyn ObjectStore>, base: Arc<dyn ObjectStore>, record: &Record) -> CloneStore {
        CloneStore {
            clone,
            base,
            flat: record.state == State::Flat,
            meta: VolumeMeta { block_size: record.block_size, file_size: record.file_size },
            counters: Arc::new(Counters::default()),
        }
    }

    /// The layer's counters, for the stats file.
    pub fn stats(&self) -> Arc<dyn StatsSource> {
        self.counters.clone()
    }

    /// Marks block `n` as zeros in the clone (a real delete once flat).
    async fn zero(&self, n: BlockNum) -> Result<()> {
        if self.flat {
            return self.clone.delete_object(n).await;
        }
        self.clone.put_object(n, ObjectBody::default(), None).await?;
        self.counters.zero_markers.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for CloneStore {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        match self.clone.get_object(n, cond).await? {
            GetOutcome::Found { body, .. } if body.data.is_empty() => Ok(GetOutcome::NotFound),
            GetOutcome::NotFound if !self.flat => {
                self.counters.base_reads.fetch_add(1, Relaxed);
                self.base.get_object(n, cond).await
            }
            other => Ok(other),
        }
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.clone.put_object(n, body, volume).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.zero(n).await
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        if self.flat {
            return self.clone.delete_objects(blocks).await;
        }
        for chunk in blocks.chunks(CONCURRENCY) {
            futures::future::try_join_all(chunk.iter().map(|&n| self.zero(n))).await?;
        }
        Ok(())
    }

    /// The clone's objects (markers included: "might be non-zero" allows them), then the
    /// base's; a base that refuses listings fails the survey, which then marks nothing.
    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.clone.list_objects(sink).await?;
        if !self.flat {
            self.base.list_objects(sink).await?;
        }
        Ok(())
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        Ok(Some(self.meta))
    }

    async fn probe_volume(&self) -> Result<VolumeProbe> {
        Ok(VolumeProbe::Meta(self.meta))
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        self.clone.mount_token(op).await
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.clone.swap_mount_token(expected, new).await
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.clone.flush(blocks).await
    }

    fn set_block_size(&self, block_size: u32) {
        self.clone.set_block_size(block_size);
        self.base.set_block_size(block_size);
    }
}

#[cfg(test)]
mod tests;
