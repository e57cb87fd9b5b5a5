//! The bookkeeping commands: take, list and delete snapshots, and recover after a crash.
//!
//! Each of these runs while the caller holds the volume (its mount token), so no writer
//! copies blocks at the same time; snapshot views may read concurrently and cope with the
//! changes they see (see [`crate::SnapshotView`]).

use crate::format::{self, INDEX_NAME, Index, Kind, Map, Snap, copy_name, copy_prefix, map_name};
use crate::{CONCURRENCY, SnapError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3b_store::ObjectBody;
use s3b_store::named::NamedObjects;
use std::collections::BTreeSet;

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, SnapError>;

/// Reads the index with its generation; `None` when the volume never had snapshots.
pub async fn read_index(s: &dyn NamedObjects) -> Result<Option<Index>> {
    match s.get_named(INDEX_NAME).await? {
        None => Ok(None),
        Some(o) => Ok(Some(Index::parse(&String::from_utf8_lossy(&o.body.data))?)),
    }
}

/// Writes the index, one generation up.
pub async fn write_index(s: &dyn NamedObjects, idx: &mut Index) -> Result<()> {
    idx.generation += 1;
    s.put_named(INDEX_NAME, text(idx.render())).await?;
    Ok(())
}

fn text(s: String) -> ObjectBody {
    ObjectBody { data: Bytes::from(s), ..Default::default() }
}

/// Reads snapshot `id`'s saved map (none saved: empty).
pub async fn read_map(s: &dyn NamedObjects, id: u32) -> Result<Map> {
    match s.get_named(&map_name(id)).await? {
        None => Ok(Map::new()),
        Some(o) => format::parse_map(id, &String::from_utf8_lossy(&o.body.data)),
    }
}

/// Saves snapshot `id`'s map.
pub async fn write_map(s: &dyn NamedObjects, id: u32, map: &Map) -> Result<()> {
    s.put_named(&map_name(id), text(format::render_map(map))).await?;
    Ok(())
}

/// Snapshot `id`'s map as its copies on the server say (a LIST): the truth a saved map may lag.
pub async fn list_map(s: &dyn NamedObjects, id: u32) -> Result<Map> {
    let found = parking_lot::Mutex::new(Map::new());
    s.list_named(&copy_prefix(id), &|name, size| {
        if let Some(n) = format::parse_copy_name(id, name) {
            found.lock().insert(n, if size == 0 { Kind::Zero } else { Kind::Data });
        }
    })
    .await?;
    Ok(found.into_inner())
}

/// Brings the bookkeeping to a consistent state after any crash: rebuilds the newest map if
/// a writer may have left copies it does not list, and finishes deletions. Returns the index
/// (`None`: no snapshots were ever taken).
pub async fn recover(s: &dyn NamedObjects) -> Result<Option<Index>> {
    let Some(mut idx) = read_index(s).await? else { return Ok(None) };
    if idx.writer != 0 {
        if let Some(newest) = idx.snaps.last() {
            let id = newest.id;
            log::info!("snapshots: a mount did not finish cleanly; rebuilding the map of the newest snapshot");
            let map = list_map(s, id).await?;
            write_map(s, id, &map).await?;
        }
        idx.writer = 0;
        write_index(s, &mut idx).await?;
    }
    while let Some(id) = idx.snaps.iter().find(|p| p.deleting).map(|p| p.id) {
        finish_delete(s, &mut idx, id).await?;
    }
    Ok(Some(idx))
}

/// Checks once that the server's copies keep the encoding headers a block needs to be read
/// back (`Content-Encoding` and the HMAC metadata header) and the bytes.
pub async fn probe_copy(s: &dyn NamedObjects) -> Result<()> {
    const FROM: &str = "s3backer-snap-probe";
    const TO: &str = "s3backer-snap-probe-copy";
    let body = ObjectBody {
        data: Bytes::from_static(b"s3backer copy probe"),
        content_encoding: Some("deflate".into()),
        hmac: Some("\"0000000000000000000000000000000000000000\"".into()),
    };
    s.put_named(FROM, body.clone()).await?;
    let copied = s.copy_named(FROM, TO).await?;
    let got = s.get_named(TO).await?;
    s.delete_named(TO).await?;
    s.delete_named(FROM).await?;
    let got = match (copied, got) {
        (true, Some(o)) => o.body,
        _ => return Err(SnapError::MissingCopy(TO.into())),
    };
    if got.data != body.data {
        return Err(SnapError::CopyDropsHeaders("body"));
    }
    if got.content_encoding != body.content_encoding {
        return Err(SnapError::CopyDropsHeaders("Content-Encoding"));
    }
    if got.hmac != body.hmac {
        return Err(SnapError::CopyDropsHeaders("x-amz-meta-s3backer-hmac"));
    }
    Ok(())
}

/// Takes snapshot `name` of a volume with the given geometry at `time`. The caller holds
/// the volume and has flushed it. Costs a LIST only when recovering from a crash.
pub async fn create(s: &dyn NamedObjects, name: &str, block_size: u32, file_size: u64, time: u64) -> Result<Snap> {
    format::check_name(name)?;
    let mut idx = recover(s).await?.unwrap_or(Index { next_id: 1, ..Default::default() });
    if idx.find(name).is_some() {
        return Err(SnapError::Exists(name.to_string()));
    }
    probe_copy(s).await?;
    let snap = add(&mut idx, name, block_size, file_size, time)?;
    // The one write that takes the snapshot: from here on, first writes preserve into it.
    write_index(s, &mut idx).await?;
    Ok(snap)
}

/// Adds snapshot `name` as the newest to `idx` (not written yet).
pub(crate) fn add(idx: &mut Index, name: &str, block_size: u32, file_size: u64, time: u64) -> Result<Snap> {
    format::check_name(name)?;
    if idx.find(name).is_some() {
        return Err(SnapError::Exists(name.to_string()));
    }
    let snap = Snap { id: idx.next_id.max(1), name: name.to_string(), time, deleting: false, block_size, file_size };
    idx.next_id = snap.id + 1;
    idx.snaps.push(snap.clone());
    Ok(snap)
}

/// Deletes snapshot `name`: what the next older snapshot still needs is handed on to it, the
/// rest freed. The caller holds the volume.
pub async fn delete(s: &dyn NamedObjects, name: &str) -> Result<()> {
    let mut idx = recover(s).await?.unwrap_or_default();
    let Some(p) = idx.snaps.iter_mut().find(|p| p.name == name) else {
        return Err(SnapError::Unknown(name.to_string()));
    };
    p.deleting = true;
    let id = p.id;
    // Marked first: a crash from here on is finished by the next command's recovery.
    write_index(s, &mut idx).await?;
    finish_delete(s, &mut idx, id).await
}

/// The deletion of snapshot `id` (marked deleting in `idx`), from wherever a crash left it.
///
/// The next older snapshot `h` reads block `n` from `id`'s copy when it has none of its own,
/// so those copies are copied to `h` first (idempotent: the sources stay until every copy and
/// `h`'s map are saved); then `id`'s copies, its map and its index entry are deleted. Both
/// sides are LISTed, because after a crash the saved maps may not show what was done.
async fn finish_delete(s: &dyn NamedObjects, idx: &mut Index, id: u32) -> Result<()> {
    let pos = idx.snaps.iter().position(|p| p.id == id).ok_or_else(|| SnapError::Unknown(format!("#{id}")))?;
    let mine = list_map(s, id).await?;
    if let Some(older) = idx.snaps[..pos].iter().rev().find(|p| !p.deleting) {
        let h = older.id;
        let mut theirs = list_map(s, h).await?;
        let hand_on: Vec<(u32, Kind)> =
            mine.iter().filter(|(n, _)| !theirs.contains_key(n)).map(|(&n, &k)| (n, k)).collect();
        let blocks: Vec<u32> = hand_on.iter().map(|&(n, _)| n).collect();
        futures::stream::iter(blocks.into_iter().map(|n| async move {
            if s.copy_named(&copy_name(id, n), &copy_name(h, n)).await? {
                Ok(())
            } else {
                Err(SnapError::MissingCopy(copy_name(id, n)))
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
        theirs.extend(hand_on);
        write_map(s, h, &theirs).await?;
    }
    let blocks: Vec<u32> = mine.keys().copied().collect();
    futures::stream::iter(blocks.into_iter().map(|n| async move { s.delete_named(&copy_name(id, n)).await }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    s.delete_named(&map_name(id)).await?;
    idx.snaps.retain(|p| p.id != id);
    write_index(s, idx).await
}

/// One line of `--listSnapshots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// The snapshot.
    pub snap: Snap,
    /// Copies of data it holds (blocks written since, that were not zeros before).
    pub held: u64,
    /// Blocks written (or zeroed) since it was taken.
    pub changed: u64,
}

/// Every snapshot (deleting ones left out) with its counts. Reads only; LISTs the newest
/// snapshot's copies when a mount is writing (or crashed), since its saved map may lag.
pub async fn list(s: &dyn NamedObjects) -> Result<Vec<SnapInfo>> {
    let Some(idx) = read_index(s).await? else { return Ok(Vec::new()) };
    let mut maps = Vec::with_capacity(idx.snaps.len());
    for (i, p) in idx.snaps.iter().enumerate() {
        let newest = i + 1 == idx.snaps.len();
        maps.push(if p.deleting || (newest && idx.writer != 0) {
            list_map(s, p.id).await?
        } else {
            read_map(s, p.id).await?
        });
    }
    let mut out = Vec::new();
    let mut since = BTreeSet::new();
    for (p, m) in idx.snaps.iter().zip(&maps).rev() {
        since.extend(m.keys().copied());
        if !p.deleting {
            let held = m.values().filter(|&&k| k == Kind::Data).count() as u64;
            out.push(SnapInfo { snap: p.clone(), held, changed: since.len() as u64 });
        }
    }
    out.reverse();
    Ok(out)
}
