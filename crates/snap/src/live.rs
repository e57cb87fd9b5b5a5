//! The live volume's layer: copy-on-first-write of block objects into the newest snapshot.

use crate::book::{self, list_map, read_index, read_map, write_index, write_map};
use crate::format::{Index, Kind, Map, Snap, copy_name};
use crate::{CONCURRENCY, SnapError};
use async_trait::async_trait;
use s3b_store::named::NamedObjects;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, TokenOp, TokenSwap, VolumeMeta,
};
use s3b_store::{StatsRegistry, StatsSource, StatsWriter};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Stripes of per-block locks: two first writes of one block never preserve it twice.
const STRIPES: usize = 64;

/// Puts the snapshot layer over `blocks`, or `None` when the transport cannot hold snapshots
/// (then `blocks` is used as it is). `transport` is the store below (it holds the bookkeeping);
/// `blocks` the store block operations go to (the transport, or a fault-injecting wrapper).
/// The layer's own type serves the daemon's snapshot requests ([`LiveStore::snapshot`] and the
/// others).
///
/// Nothing is read here: the mount does not hold the volume yet (its mount token is taken
/// after the stack is built), so a snapshot could still be taken before it does. The index is
/// read at the first write instead, when the token is held and no other process can take or
/// delete a snapshot until the mount ends: a volume without snapshots costs that one GET per
/// mount.
pub fn layer(
    blocks: Arc<dyn ObjectStore>,
    transport: Arc<dyn ObjectStore>,
    stats: &StatsRegistry,
) -> Option<Arc<LiveStore>> {
    transport.named()?;
    let counters = Arc::new(Counters::default());
    stats.register(counters.clone());
    let session = loop {
        let s = rand::random::<u32>();
        if s != 0 {
            break s;
        }
    };
    let state = State { loaded: false, newest: None, preserved: Map::new(), unsaved: false };
    Some(Arc::new(LiveStore {
        blocks,
        transport,
        session,
        state: parking_lot::Mutex::new(state),
        gate: tokio::sync::RwLock::new(()),
        writer: tokio::sync::Mutex::new(None),
        stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        older: parking_lot::Mutex::new(None),
        probed: AtomicBool::new(false),
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
    /// Shared by every block write and deletion in progress (its preservation included), taken
    /// alone to save the map, take or delete a snapshot: so those see no write half done, and
    /// writes after them go by what they changed.
    gate: tokio::sync::RwLock<()>,
    /// Our copy of the index while its writer field is ours (`None`: not set).
    writer: tokio::sync::Mutex<Option<Index>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// The blocks the saved maps of the snapshots before the newest hold, by snapshot name
    /// (see [`LiveStore::changed_since`]): they do not change while we hold the volume, except
    /// by our own snapshot requests, which forget this.
    older: parking_lot::Mutex<Option<(String, Arc<BTreeSet<BlockNum>>)>>,
    /// The server's CopyObject was found to keep what a block needs (checked once).
    probed: AtomicBool,
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

    /// True when block `n` is known to need no preserving (see [`crate::PreserveAhead`]).
    pub(crate) fn settled_now(&self, n: BlockNum) -> bool {
        self.settled(n)
    }

    /// Preserves block `n` now, ahead of its write (see [`crate::PreserveAhead`]).
    pub(crate) async fn preserve_ahead(&self, n: BlockNum) -> Result<()> {
        let _shared = self.gate.read().await;
        self.preserve(n).await
    }

    /// Makes sure the newest snapshot holds block `n` as it is now, before it changes: a
    /// server-side copy of its object, or an empty object if it has none (zeros).
    /// The caller holds the gate (shared).
    async fn preserve(&self, n: BlockNum) -> Result<()> {
        if self.settled(n) {
            return Ok(());
        }
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

    /// Saves the newest map and clears our writer mark, once no write is in progress.
    async fn save(&self) -> Result<()> {
        let _alone = self.gate.write().await;
        let mut writer = self.writer.lock().await;
        Ok(self.save_held(&mut writer).await?)
    }

    /// [`save`](Self::save) for a caller that holds the gate alone and `writer`.
    async fn save_held(&self, writer: &mut Option<Index>) -> std::result::Result<(), SnapError> {
        self.save_map().await?;
        let named = self.named()?;
        if let Some(mut idx) = writer.take() {
            idx.writer = 0;
            if let Err(e) = write_index(named, &mut idx).await {
                idx.writer = self.session;
                *writer = Some(idx);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Saves the newest map if it has entries its saved copy lacks (the gate held alone).
    async fn save_map(&self) -> std::result::Result<(), SnapError> {
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
        Ok(())
    }

    /// Takes snapshot `name` of the volume this mount holds, with the given geometry, at
    /// `time`: every write in progress finishes first and the next ones wait (the gate), the
    /// newest map is saved, and one index PUT adds the snapshot, after which first writes
    /// preserve into it. The caller has flushed what caches above hold (so that everything
    /// written before the request is in it). The snapshot is the volume exactly as it was on
    /// the server at that PUT.
    pub async fn snapshot(
        &self,
        name: &str,
        block_size: u32,
        file_size: u64,
        time: u64,
    ) -> std::result::Result<Snap, SnapError> {
        crate::format::check_name(name)?;
        let named = self.named()?;
        // Outside the gate: writes go on meanwhile. The server does not change under a mount.
        if !self.probed.load(Relaxed) {
            book::probe_copy(named).await?;
            self.probed.store(true, Relaxed);
        }
        let _alone = self.gate.write().await;
        let mut writer = self.writer.lock().await;
        let mut idx = match writer.take() {
            // Our mark is set: our copy is the server's index (we hold the volume).
            Some(idx) => {
                if let Err(e) = self.save_map().await {
                    *writer = Some(idx);
                    return Err(e);
                }
                idx
            }
            // We wrote nothing yet: what a crashed mount or deletion left is finished first.
            None => book::recover(named).await?.unwrap_or(Index { next_id: 1, ..Default::default() }),
        };
        let prior = (idx.writer == self.session).then(|| idx.clone());
        let snap = match book::add(&mut idx, name, block_size, file_size, time) {
            Ok(s) => s,
            Err(e) => {
                *writer = prior;
                return Err(e);
            }
        };
        // Marked as ours at once: a crash from here on is recovered by a LIST of its copies.
        idx.writer = self.session;
        self.older.lock().take();
        match write_index(named, &mut idx).await {
            Ok(()) => {
                *writer = Some(idx);
                *self.state.lock() =
                    State { loaded: true, newest: Some(snap.id), preserved: Map::new(), unsaved: false };
                Ok(snap)
            }
            Err(e) => {
                // Whether the PUT took effect is not known: the next first write reads the
                // index again and goes by what it says.
                self.state.lock().loaded = false;
                Err(e)
            }
        }
    }

    /// Deletes snapshot `name` of the volume this mount holds (see [`book::delete`]); writes
    /// wait meanwhile, and the next first write reads the snapshots again.
    pub async fn delete_snapshot(&self, name: &str) -> std::result::Result<(), SnapError> {
        let named = self.named()?;
        let _alone = self.gate.write().await;
        let mut writer = self.writer.lock().await;
        self.save_held(&mut writer).await?;
        self.older.lock().take();
        let done = book::delete(named, name).await;
        self.state.lock().loaded = false;
        done
    }

    /// The names of the volume's snapshots, oldest first (those being deleted left out).
    pub async fn snapshot_names(&self) -> std::result::Result<Vec<String>, SnapError> {
        let idx = match self.writer.lock().await.clone() {
            Some(idx) => idx,
            None => read_index(self.named()?).await?.unwrap_or_default(),
        };
        Ok(idx.snaps.into_iter().filter(|p| !p.deleting).map(|p| p.name).collect())
    }

    /// The blocks written since snapshot `name` was taken: the union of the maps of it and
    /// every newer snapshot, the newest's as this mount knows it (with what it preserved and
    /// did not save yet). Blocks still dirty in a cache above are not in it: the caller
    /// flushes them first.
    pub async fn changed_since(&self, name: &str) -> std::result::Result<BTreeSet<BlockNum>, SnapError> {
        let named = self.named()?;
        // Shared: no snapshot is taken or deleted meanwhile; writes go on.
        let _shared = self.gate.read().await;
        let idx = match self.writer.lock().await.clone() {
            Some(idx) => idx,
            None => read_index(named).await?.unwrap_or_default(),
        };
        let pos = idx
            .snaps
            .iter()
            .position(|p| p.name == name && !p.deleting)
            .ok_or_else(|| SnapError::Unknown(name.to_string()))?;
        let Some(newest) = idx.snaps.last() else { return Err(SnapError::Unknown(name.to_string())) };
        let cached = self.older.lock().as_ref().filter(|(n, _)| n == name).map(|(_, s)| s.clone());
        let older = match cached {
            Some(s) => s,
            None => {
                let mut set = BTreeSet::new();
                for p in &idx.snaps[pos..idx.snaps.len() - 1] {
                    let map = if p.deleting { list_map(named, p.id).await? } else { read_map(named, p.id).await? };
                    set.extend(map.keys().copied());
                }
                let set = Arc::new(set);
                *self.older.lock() = Some((name.to_string(), set.clone()));
                set
            }
        };
        let mut out = (*older).clone();
        let known = {
            let st = self.state.lock();
            (st.loaded && st.newest == Some(newest.id)).then(|| st.preserved.keys().copied().collect::<Vec<_>>())
        };
        match known {
            Some(keys) => out.extend(keys),
            None if idx.writer != 0 && idx.writer != self.session => {
                out.extend(list_map(named, newest.id).await?.keys().copied())
            }
            None => out.extend(read_map(named, newest.id).await?.keys().copied()),
        }
        Ok(out)
    }
}

#[async_trait]
impl ObjectStore for LiveStore {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.blocks.get_object(n, cond).await
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        let _shared = self.gate.read().await;
        self.preserve(n).await?;
        self.blocks.put_object(n, body, volume).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        let _shared = self.gate.read().await;
        self.preserve(n).await?;
        self.blocks.delete_object(n).await
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        let _shared = self.gate.read().await;
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
