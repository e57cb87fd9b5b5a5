//! The live volume's layer: copy-on-first-write of block objects into the newest snapshot.

use crate::book::{list_map, read_index, read_map, write_index, write_map};
use crate::format::{Index, Kind, Map, copy_name};
use crate::{CONCURRENCY, SnapError};
use async_trait::async_trait;
use s3b_store::named::NamedObjects;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, TokenOp, TokenSwap, VolumeMeta,
};
use s3b_store::{StatsRegistry, StatsSource, StatsWriter};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Stripes of per-block locks: two first writes of one block never preserve it twice.
const STRIPES: usize = 64;

/// Puts the snapshot layer over `blocks` (when the transport can hold snapshots; otherwise
/// `blocks` is returned as it is). `transport` is the store below (it holds the bookkeeping);
/// `blocks` the store block operations go to (the transport, or a fault-injecting wrapper).
///
/// Nothing is read here: the mount does not hold the volume yet (its mount token is taken
/// after the stack is built), so a snapshot could still be taken before it does. The index is
/// read at the first write instead, when the token is held and no snapshot can be taken or
/// deleted until the mount ends: a volume without snapshots costs that one GET per mount.
pub async fn open(
    blocks: Arc<dyn ObjectStore>,
    transport: Arc<dyn ObjectStore>,
    stats: &StatsRegistry,
) -> Result<Arc<dyn ObjectStore>> {
    if transport.named().is_none() {
        return Ok(blocks);
    }
    let counters = Arc::new(Counters::default());
    stats.register(counters.clone());
    let session = loop {
        let s = rand::random::<u32>();
        if s != 0 {
            break s;
        }
    };
    let state = State { loaded: false, newest: None, preserved: Map::new(), unsaved: false };
    Ok(Arc::new(LiveStore {
        blocks,
        transport,
        session,
        state: parking_lot::Mutex::new(state),
        gate: tokio::sync::RwLock::new(()),
        writer: tokio::sync::Mutex::new(None),
        stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        counters,
    }))
}

/// The layer's lines in the stats file.
#[derive(Default)]
struct Counters {
    /// Blocks copied into the newest snapshot before their first write.
    copies: AtomicU64,
    /// Blocks that were zeros when first written (an empty copy).
    zero_copies: AtomicU64,
    /// Saves of the newest snapshot's map.
    map_saves: AtomicU64,
}

impl StatsSource for Counters {
    fn write_stats(&self, w: &mut StatsWriter) {
        w.count("snapshot_copies", self.copies.load(Relaxed));
        w.count("snapshot_zero_copies", self.zero_copies.load(Relaxed));
        w.count("snapshot_map_saves", self.map_saves.load(Relaxed));
    }
    fn reset_stats(&self) {
        for c in [&self.copies, &self.zero_copies, &self.map_saves] {
            c.store(0, Relaxed);
        }
    }
}

struct State {
    /// The index was read (by the first write): `newest` and `preserved` are known.
    loaded: bool,
    /// The snapshot first writes preserve into (`None`: the volume has none).
    newest: Option<u32>,
    /// What it holds.
    preserved: Map,
    /// `preserved` has entries its saved map lacks.
    unsaved: bool,
}

/// Copy-on-first-write over the live volume's block objects (see the crate documentation).
pub struct LiveStore {
    blocks: Arc<dyn ObjectStore>,
    transport: Arc<dyn ObjectStore>,
    /// Written into the index's writer field while we may hold unsaved copies.
    session: u32,
    state: parking_lot::Mutex<State>,
    /// Shared by preservations in progress, taken alone to save the map.
    gate: tokio::sync::RwLock<()>,
    /// Our copy of the index while its writer field is ours (`None`: not set).
    writer: tokio::sync::Mutex<Option<Index>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    counters: Arc<Counters>,
}

impl LiveStore {
    fn named(&self) -> Result<&dyn NamedObjects> {
        self.transport.named().ok_or_else(|| SnapError::Unsupported.into())
    }

    /// True when block `n` needs no preserving (held already, or no snapshot is left).
    fn settled(&self, n: BlockNum) -> bool {
        let st = self.state.lock();
        st.loaded && (st.newest.is_none() || st.preserved.contains_key(&n))
    }

    /// Makes sure the newest snapshot holds block `n` as it is now, before it changes: a
    /// server-side copy of its object, or an empty object if it has none (zeros).
    async fn preserve(&self, n: BlockNum) -> Result<()> {
        if self.settled(n) {
            return Ok(());
        }
        let _shared = self.gate.read().await;
        let _block = self.stripes[usize::try_from(n).unwrap_or(0) % STRIPES].lock().await;
        self.mark_writer().await?;
        if self.settled(n) {
            return Ok(());
        }
        let Some(id) = self.state.lock().newest else { return Ok(()) };
        let named = self.named()?;
        let name = copy_name(id, n);
        let kind = if named.copy_block(n, &name).await? {
            self.counters.copies.fetch_add(1, Relaxed);
            Kind::Data
        } else {
            named.put_named(&name, ObjectBody::default()).await?;
            self.counters.zero_copies.fetch_add(1, Relaxed);
            Kind::Zero
        };
        let mut st = self.state.lock();
        st.preserved.insert(n, kind);
        st.unsaved = true;
        Ok(())
    }

    /// Before our first copy: reads the index (the mount holds the volume by now), and records
    /// in it that we may hold copies our saved map does not list. If another mount's mark is
    /// found there, that mount crashed: the newest map is rebuilt from the copies on the server.
    async fn mark_writer(&self) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let none_left = {
            let st = self.state.lock();
            st.loaded && st.newest.is_none()
        };
        if writer.is_some() || none_left {
            return Ok(());
        }
        let named = self.named()?;
        let mut idx = read_index(named).await?.unwrap_or_default();
        let newest = idx.snaps.last().map(|p| p.id);
        let crashed = idx.writer != 0 && idx.writer != self.session;
        let (loaded, known) = {
            let st = self.state.lock();
            (st.loaded, st.newest)
        };
        if crashed || !loaded || newest != known {
            let preserved = match newest {
                Some(id) if crashed => list_map(named, id).await?,
                Some(id) => read_map(named, id).await?,
                None => Map::new(),
            };
            *self.state.lock() = State { loaded: true, newest, preserved, unsaved: crashed };
        }
        if newest.is_none() {
            return Ok(());
        }
        idx.writer = self.session;
        write_index(named, &mut idx).await?;
        *writer = Some(idx);
        Ok(())
    }

    /// Saves the newest map and clears our writer mark, once no preservation is in progress.
    async fn save(&self) -> Result<()> {
        let _alone = self.gate.write().await;
        let mut writer = self.writer.lock().await;
        let named = self.named()?;
        let (newest, map) = {
            let st = self.state.lock();
            (st.newest, st.unsaved.then(|| st.preserved.clone()))
        };
        if let (Some(id), Some(map)) = (newest, map) {
            write_map(named, id, &map).await?;
            self.counters.map_saves.fetch_add(1, Relaxed);
            self.state.lock().unsaved = false;
        }
        if let Some(mut idx) = writer.take() {
            idx.writer = 0;
            if let Err(e) = write_index(named, &mut idx).await {
                idx.writer = self.session;
                *writer = Some(idx);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for LiveStore {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.blocks.get_object(n, cond).await
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.preserve(n).await?;
        self.blocks.put_object(n, body, volume).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.preserve(n).await?;
        self.blocks.delete_object(n).await
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        for chunk in blocks.chunks(CONCURRENCY) {
            let mut each = Vec::with_capacity(chunk.len());
            for &n in chunk {
                each.push(self.preserve(n));
            }
            futures::future::try_join_all(each).await?;
        }
        self.blocks.delete_objects(blocks).await
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.blocks.list_objects(sink).await
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        self.blocks.read_volume_meta().await
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        self.blocks.mount_token(op).await
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.blocks.swap_mount_token(expected, new).await
    }

    /// A flush of everything (fsync, unmount) also saves the newest map and clears our writer
    /// mark, so that a clean unmount leaves nothing for recovery.
    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.blocks.flush(blocks).await?;
        if blocks.is_none() {
            self.save().await?;
        }
        Ok(())
    }

    fn set_block_size(&self, block_size: u32) {
        self.blocks.set_block_size(block_size)
    }
}
