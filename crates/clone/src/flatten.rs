//! Flatten: copies every base block a clone still uses into it, then removes the zero markers
//! and the clone record, leaving a plain volume (the crash-safety argument is the crate's).
//!
//! The blocks to copy are those the base may hold (its LIST; every block of the volume when
//! the base refuses listings, as a plain web server does) that the clone has no object for
//! (the clone's LIST). A copy is made on the server when the caller can ([`ServerCopy`]: base
//! and clone on one endpoint with one set of credentials), else by a GET from the base and a
//! PUT into the clone. Block 0 is always copied by GET and PUT, so that it carries the
//! volume's size metadata as upstream writes it.

use crate::{CONCURRENCY, CloneError, RECORD_NAME, Record, State, write_record};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use s3b_store::keys::BlockKeys;
use s3b_store::named::NamedObjects;
use s3b_store::{BlockNum, GetOutcome, ObjectStore, ReadCondition, Result, StoreError, VolumeMeta};
use std::collections::{BTreeMap, BTreeSet};

/// Lists a clone's block objects with their sizes (a marker is empty).
#[async_trait]
pub trait ListBlocks: Send + Sync {
    /// Calls `sink` with every block object's number and size in bytes.
    async fn list_blocks(&self, sink: &(dyn Fn(BlockNum, u64) + Send + Sync)) -> Result<()>;
}

/// [`ListBlocks`] by a LIST of the volume's named objects, parsed as block keys.
pub struct NamedListing<'a> {
    /// The clone's objects.
    pub named: &'a dyn NamedObjects,
    /// Whether the clone's keys use `--blockHashPrefix`.
    pub hash_prefix: bool,
}

#[async_trait]
impl ListBlocks for NamedListing<'_> {
    async fn list_blocks(&self, sink: &(dyn Fn(BlockNum, u64) + Send + Sync)) -> Result<()> {
        let keys = BlockKeys::new("", self.hash_prefix);
        self.named
            .list_named("", &|name, size| {
                if let Some(n) = keys.parse_key(name) {
                    sink(n, size)
                }
            })
            .await
    }
}

/// A server-side copy of a base block into the clone's block of the same number.
#[async_trait]
pub trait ServerCopy: Send + Sync {
    /// Copies the base's block `n` to the clone's block `n`, with its encoding headers, on the
    /// server: `Some(true)` when copied, `Some(false)` when the base's block is zeros (nothing
    /// created), `None` when this block cannot be copied on the server (it is then read from
    /// the base and written to the clone).
    async fn copy_block(&self, n: BlockNum) -> Result<Option<bool>>;
}

/// How far a flatten got, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This many blocks are to be examined and copied.
    Total(u64),
    /// One more block done.
    Done,
}

/// What a flatten did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Base blocks copied into the clone.
    pub copied: u64,
    /// Blocks looked at that the base had no object for (zeros, nothing to copy).
    pub absent: u64,
    /// Zero markers removed.
    pub markers: u64,
}

/// Flattens the clone of `record` whose block objects are in `clone` (listed by `listing`),
/// reading its base from `base`; `server_copy` copies on the server where it can. The caller
/// holds the volume (its mount token) and checked the base; a clone already `flat` needs no
/// base (`None`). Run again after any crash, it finishes the work.
pub async fn flatten(
    clone: &dyn ObjectStore,
    listing: &dyn ListBlocks,
    base: Option<&dyn ObjectStore>,
    server_copy: Option<&dyn ServerCopy>,
    mut record: Record,
    progress: &(dyn Fn(Step) + Send + Sync),
) -> std::result::Result<Report, CloneError> {
    let named = clone.named().ok_or(CloneError::Unsupported)?;
    let meta = VolumeMeta { block_size: record.block_size, file_size: record.file_size };
    let num_blocks = record.file_size / u64::from(record.block_size.max(1));
    let mut report = Report::default();
    if record.state == State::Cloned {
        let base = base.ok_or_else(|| CloneError::BaseMissing(record.describe_base()))?;
        let have = list(listing).await?;
        let wanted = base_blocks(base, num_blocks).await?;
        let todo: Vec<BlockNum> = wanted.into_iter().filter(|n| !have.contains_key(n)).collect();
        progress(Step::Total(todo.len() as u64));
        let copied: Vec<bool> = futures::stream::iter(todo.iter().map(|&n| async move {
            let found = copy_one(clone, base, server_copy, n, meta).await?;
            progress(Step::Done);
            Ok::<_, StoreError>(found)
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
        report.copied = copied.iter().filter(|&&c| c).count() as u64;
        report.absent = copied.len() as u64 - report.copied;
        // The one write after which nothing falls through.
        record.state = State::Flat;
        write_record(named, &record).await?;
    }
    let markers: Vec<BlockNum> =
        list(listing).await?.into_iter().filter(|&(_, size)| size == 0).map(|(n, _)| n).collect();
    for chunk in markers.chunks(crate::flatten::DELETE_BATCH) {
        clone.delete_objects(chunk).await?;
    }
    report.markers = markers.len() as u64;
    named.delete_named(RECORD_NAME).await?;
    Ok(report)
}

/// Blocks deleted per request batch (S3's multi-object delete takes up to 1000 keys).
pub const DELETE_BATCH: usize = 1000;

/// The clone's block objects and their sizes.
async fn list(listing: &dyn ListBlocks) -> Result<BTreeMap<BlockNum, u64>> {
    let found = parking_lot::Mutex::new(BTreeMap::new());
    listing
        .list_blocks(&|n, size| {
            found.lock().insert(n, size);
        })
        .await?;
    Ok(found.into_inner())
}

/// The blocks the base may hold: its LIST, or every block when it refuses listings.
async fn base_blocks(base: &dyn ObjectStore, num_blocks: u64) -> Result<BTreeSet<BlockNum>> {
    let found = parking_lot::Mutex::new(BTreeSet::new());
    match base
        .list_objects(&|n| {
            if u64::from(n) < num_blocks {
                found.lock().insert(n);
            }
        })
        .await
    {
        Ok(()) => Ok(found.into_inner()),
        Err(StoreError::Forbidden(why)) => {
            log::info!("the base refuses listings ({why}): looking at each of its {num_blocks} blocks");
            Ok((0..num_blocks).filter_map(|n| BlockNum::try_from(n).ok()).collect())
        }
        Err(e) => Err(e),
    }
}

/// Copies base block `n` into the clone; false when the base has none (zeros).
async fn copy_one(
    clone: &dyn ObjectStore,
    base: &dyn ObjectStore,
    server_copy: Option<&dyn ServerCopy>,
    n: BlockNum,
    meta: VolumeMeta,
) -> Result<bool> {
    if let Some(copier) = server_copy.filter(|_| n != 0)
        && let Some(done) = copier.copy_block(n).await?
    {
        return Ok(done);
    }
    match base.get_object(n, ReadCondition::None).await? {
        GetOutcome::Found { body, .. } if !body.data.is_empty() => {
            clone.put_object(n, body, (n == 0).then_some(meta)).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
