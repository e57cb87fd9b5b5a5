//! A snapshot as a read-only volume: block `n` of snapshot S is the first preserved copy of
//! `n` among S and the snapshots taken after it, else the live block.

use crate::SnapError;
use crate::book::{read_index, read_map};
use crate::format::{Index, Map, copy_name};
use async_trait::async_trait;
use s3b_store::named::{NamedObject, NamedObjects};
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, TokenSwap,
    VolumeMeta,
};
use std::sync::Arc;

/// How many times a read starts over because the snapshots changed under it.
const ATTEMPTS: usize = 8;

/// What a view knows of the bookkeeping.
struct Known {
    /// The index's generation when read.
    generation: u64,
    /// Snapshot ids and states, to tell whether the maps need reading again.
    shape: Vec<(u32, bool)>,
    /// The chain: the snapshot viewed, then every newer one, each with its map.
    chain: Vec<(u32, Arc<Map>)>,
}

/// A read-only [`ObjectStore`] showing snapshot `name` (see the crate documentation for why
/// its reads are correct while the live volume is written).
pub struct SnapshotView {
    blocks: Arc<dyn ObjectStore>,
    transport: Arc<dyn ObjectStore>,
    id: u32,
    name: String,
    meta: VolumeMeta,
    known: parking_lot::Mutex<Arc<Known>>,
}

impl SnapshotView {
    /// Opens snapshot `name` of the volume below `transport` (`blocks`: where block objects
    /// are read, the transport or a wrapper of it).
    pub async fn open(
        blocks: Arc<dyn ObjectStore>,
        transport: Arc<dyn ObjectStore>,
        name: &str,
    ) -> std::result::Result<SnapshotView, SnapError> {
        let named = transport.named().ok_or(SnapError::Unsupported)?;
        let idx = read_index(named).await?.ok_or_else(|| SnapError::Unknown(name.to_string()))?;
        let snap = idx.find(name).filter(|p| !p.deleting).ok_or_else(|| SnapError::Unknown(name.to_string()))?;
        let (id, meta) = (snap.id, VolumeMeta { block_size: snap.block_size, file_size: snap.file_size });
        let known = load(named, id, name, &idx).await?;
        Ok(SnapshotView {
            blocks,
            transport,
            id,
            name: name.to_string(),
            meta,
            known: parking_lot::Mutex::new(Arc::new(known)),
        })
    }

    /// The geometry the volume had when the snapshot was taken.
    pub fn meta(&self) -> VolumeMeta {
        self.meta
    }

    fn named(&self) -> std::result::Result<&dyn NamedObjects, SnapError> {
        self.transport.named().ok_or(SnapError::Unsupported)
    }

    /// Takes in a newer index. When the snapshots changed (or with `force`, after a copy the
    /// maps promised was missing) every map is read again; otherwise only the newest
    /// snapshot's, the one map a writer adds to. Maps are read after the index, so they are at
    /// least as new as it.
    async fn refresh(&self, idx: &Index, force: bool) -> std::result::Result<(), SnapError> {
        let old = self.known.lock().clone();
        let named = self.named()?;
        let known = if force || shape(idx) != old.shape {
            load(named, self.id, &self.name, idx).await?
        } else {
            let mut chain = old.chain.clone();
            if let Some((id, map)) = chain.last_mut() {
                *map = Arc::new(read_map(named, *id).await?);
            }
            Known { generation: idx.generation, shape: old.shape.clone(), chain }
        };
        *self.known.lock() = Arc::new(known);
        Ok(())
    }

    async fn read(&self, n: BlockNum) -> std::result::Result<GetOutcome, SnapError> {
        let named = self.named()?;
        for _ in 0..ATTEMPTS {
            let known = self.known.lock().clone();
            // 1. A snapshot of the chain says it holds the block: its copy is the answer.
            if let Some((id, _)) = known.chain.iter().find(|(_, m)| m.contains_key(&n)) {
                match named.get_named(&copy_name(*id, n)).await? {
                    Some(o) => return Ok(copy_outcome(o)),
                    // Handed on to an older snapshot by a deletion: its map says where.
                    None => {
                        let idx = self.index().await?;
                        self.refresh(&idx, true).await?;
                        continue;
                    }
                }
            }
            // 2. Not preserved when the maps were read: the live block, unless it was
            // preserved (and then changed) meanwhile. A writer marks the index before its
            // first copy, and copies before it writes; so reading the live block, then the
            // index, then (if a writer is marked) the newest snapshot's copy, tells which.
            let live = self.blocks.get_object(n, ReadCondition::None).await?;
            let idx = self.index().await?;
            if idx.generation != known.generation {
                self.refresh(&idx, false).await?;
                continue;
            }
            if idx.writer != 0
                && let Some((newest, _)) = known.chain.last()
                && let Some(o) = named.get_named(&copy_name(*newest, n)).await?
            {
                return Ok(copy_outcome(o));
            }
            return Ok(live);
        }
        Err(SnapError::Unsettled(n))
    }

    async fn index(&self) -> std::result::Result<Index, SnapError> {
        read_index(self.named()?).await?.ok_or_else(|| SnapError::Unknown(self.name.clone()))
    }
}

/// The ids and states of the snapshots of `idx`.
fn shape(idx: &Index) -> Vec<(u32, bool)> {
    idx.snaps.iter().map(|p| (p.id, p.deleting)).collect()
}

/// Reads the chain of snapshot `id` from `idx`.
async fn load(named: &dyn NamedObjects, id: u32, name: &str, idx: &Index) -> std::result::Result<Known, SnapError> {
    let pos = idx.snaps.iter().position(|p| p.id == id).ok_or_else(|| SnapError::Unknown(name.to_string()))?;
    let mut chain = Vec::new();
    for p in &idx.snaps[pos..] {
        chain.push((p.id, Arc::new(read_map(named, p.id).await?)));
    }
    Ok(Known { generation: idx.generation, shape: shape(idx), chain })
}

/// A copy as a block read: an empty copy stands for zeros.
fn copy_outcome(o: NamedObject) -> GetOutcome {
    if o.body.data.is_empty() { GetOutcome::NotFound } else { GetOutcome::Found { body: o.body, etag: o.etag } }
}

#[async_trait]
impl ObjectStore for SnapshotView {
    /// Conditions are not needed: a snapshot never changes, so the answer is always the data.
    async fn get_object(&self, n: BlockNum, _cond: ReadCondition) -> Result<GetOutcome> {
        Ok(self.read(n).await?)
    }

    async fn put_object(&self, _n: BlockNum, _body: ObjectBody, _volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        Err(StoreError::ReadOnly)
    }

    async fn delete_object(&self, _n: BlockNum) -> Result<()> {
        Err(StoreError::ReadOnly)
    }

    /// Every block that may be non-zero: the live volume's and every copy of the chain's.
    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.blocks.list_objects(sink).await?;
        let known = self.known.lock().clone();
        for (_, map) in &known.chain {
            map.keys().for_each(|&n| sink(n));
        }
        Ok(())
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        Ok(Some(self.meta))
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        match op {
            TokenOp::Read => self.blocks.mount_token(op).await,
            _ => Err(StoreError::ReadOnly),
        }
    }

    async fn swap_mount_token(&self, _expected: u32, _new: u32) -> Result<TokenSwap> {
        Err(StoreError::ReadOnly)
    }

    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }

    fn set_block_size(&self, block_size: u32) {
        self.blocks.set_block_size(block_size)
    }
}
