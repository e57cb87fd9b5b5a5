//! The cache's bookkeeping: one [`Entry`] per cached block, the LRU order of clean blocks
//! (two lists, so that protected blocks go last) and the queue of dirty blocks.

use crate::ranges::ByteRanges;
use bytes::Bytes;
use s3b_store::{BlockNum, Etag, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use tokio::time::Instant;

/// Where a cached block is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// One inner read is in flight; other readers wait for it.
    Loading,
    /// Same as the stored version.
    Clean,
    /// Newer than the stored version.
    Dirty,
}

/// One cached block.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) phase: Phase,
    /// The data; `None` means all zeros.
    pub(crate) data: Option<Bytes>,
    /// ETag of the stored version, when clean and known.
    pub(crate) etag: Option<Etag>,
    /// Clean but reloaded from the cache file: to be checked against the store on first read.
    pub(crate) verify: bool,
    /// Bumped by every write.
    pub(crate) ver: u64,
    /// Generation of the last successful upload.
    pub(crate) uploaded_gen: u64,
    /// Generation being uploaded now, if any.
    pub(crate) uploading: Option<u64>,
    /// When the block last went from clean to dirty.
    pub(crate) dirty_at: Instant,
    /// Failed upload attempts in a row.
    pub(crate) retries: u32,
    /// Failed upload attempts ever (never reset): a flush fails when this grows while it waits
    /// for the block.
    pub(crate) failures: u64,
    /// Why the last upload attempt failed.
    pub(crate) upload_error: Option<std::sync::Arc<StoreError>>,
    /// No new upload attempt before this.
    pub(crate) retry_at: Option<Instant>,
    /// Last read or write.
    pub(crate) last_access: Instant,
    /// Slot in the cache file, if any.
    pub(crate) slot: Option<u32>,
    /// A block written only in part (always dirty): the byte ranges `data` holds; the other
    /// bytes are placeholders until the store's version is merged in. `None` = all of it.
    pub(crate) valid: Option<ByteRanges>,
    /// A read of the store's version to complete this partial block is in flight.
    pub(crate) filling: bool,
    /// Completing this partial block ahead of its upload failed: its upload completes it
    /// instead (with the upload's retries).
    pub(crate) fill_failed: bool,
    /// Key in the LRU map while the entry is evictable.
    pub(crate) lru_key: Option<u64>,
}

impl Entry {
    /// A fresh entry (the caller sets its phase and data).
    pub(crate) fn new(now: Instant) -> Entry {
        Entry {
            phase: Phase::Clean,
            data: None,
            etag: None,
            verify: false,
            ver: 0,
            uploaded_gen: 0,
            uploading: None,
            dirty_at: now,
            retries: 0,
            failures: 0,
            upload_error: None,
            retry_at: None,
            last_access: now,
            slot: None,
            valid: None,
            filling: false,
            fill_failed: false,
            lru_key: None,
        }
    }

    /// An entry whose first read is in flight.
    pub(crate) fn loading(now: Instant) -> Entry {
        Entry { phase: Phase::Loading, ..Entry::new(now) }
    }
}

/// The dirty blocks waiting for an upload, in order, each at most once: a queue with a set
/// beside it, so that "is it queued?" costs the same however long the queue is.
#[derive(Debug, Default)]
pub(crate) struct DirtyQueue {
    order: VecDeque<BlockNum>,
    members: HashSet<BlockNum>,
}

impl DirtyQueue {
    /// Whether block `n` is queued.
    pub(crate) fn contains(&self, n: &BlockNum) -> bool {
        self.members.contains(n)
    }

    /// Queues `n` last, unless it is queued already.
    pub(crate) fn push_back(&mut self, n: BlockNum) {
        if self.members.insert(n) {
            self.order.push_back(n);
        }
    }

    /// Queues `n` first, unless it is queued already.
    pub(crate) fn push_front(&mut self, n: BlockNum) {
        if self.members.insert(n) {
            self.order.push_front(n);
        }
    }

    /// Takes the block at position `i` out of the queue.
    pub(crate) fn remove(&mut self, i: usize) -> Option<BlockNum> {
        let n = self.order.remove(i)?;
        self.members.remove(&n);
        Some(n)
    }

    /// Blocks queued.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

impl std::ops::Index<usize> for DirtyQueue {
    type Output = BlockNum;
    fn index(&self, i: usize) -> &BlockNum {
        &self.order[i]
    }
}

/// All bookkeeping, under one mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) entries: HashMap<BlockNum, Entry>,
    /// Evictable (clean, idle) unprotected blocks by last use.
    lru_lo: BTreeMap<u64, BlockNum>,
    /// Evictable protected blocks (numbers below `num_protected`) by last use.
    lru_hi: BTreeMap<u64, BlockNum>,
    tick: u64,
    num_protected: u32,
    /// Dirty blocks waiting for an upload, oldest first.
    pub(crate) dirty_queue: DirtyQueue,
    /// Dirty blocks someone waits for (flush, sync write): uploaded without delay.
    pub(crate) urgent: HashSet<BlockNum>,
    pub(crate) dirty_count: usize,
    /// Uploads in flight.
    pub(crate) uploading: usize,
    /// Partial blocks being completed ahead of their upload (at most `threads`).
    pub(crate) fills_ahead: usize,
    /// Writers waiting for room.
    pub(crate) space_waiters: usize,
    /// `flush(None)` calls in progress.
    pub(crate) flush_all: usize,
    /// Set by shutdown: the scheduler exits.
    pub(crate) stopped: bool,
}

impl State {
    pub(crate) fn new(num_protected: u32) -> State {
        State {
            entries: HashMap::new(),
            lru_lo: BTreeMap::new(),
            lru_hi: BTreeMap::new(),
            tick: 0,
            num_protected,
            dirty_queue: DirtyQueue::default(),
            urgent: HashSet::new(),
            dirty_count: 0,
            uploading: 0,
            fills_ahead: 0,
            space_waiters: 0,
            flush_all: 0,
            stopped: false,
        }
    }

    /// Makes block `n` (a clean entry) evictable, as the most recently used.
    pub(crate) fn lru_insert(&mut self, n: BlockNum) {
        self.lru_remove(n);
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(&n) {
            e.lru_key = Some(tick);
            if n < self.num_protected { &mut self.lru_hi } else { &mut self.lru_lo }.insert(tick, n);
        }
    }

    /// Marks an evictable block as just used.
    pub(crate) fn lru_touch(&mut self, n: BlockNum) {
        if self.entries.get(&n).is_some_and(|e| e.lru_key.is_some()) {
            self.lru_insert(n);
        }
    }

    /// Makes block `n` not evictable.
    pub(crate) fn lru_remove(&mut self, n: BlockNum) {
        if let Some(key) = self.entries.get_mut(&n).and_then(|e| e.lru_key.take()) {
            self.lru_lo.remove(&key);
            self.lru_hi.remove(&key);
        }
    }

    /// The block to evict next: the least recently used unprotected one, else protected one.
    pub(crate) fn lru_oldest(&self) -> Option<BlockNum> {
        self.lru_lo.values().next().or_else(|| self.lru_hi.values().next()).copied()
    }

    /// Number of evictable blocks.
    #[cfg(test)]
    pub(crate) fn lru_len(&self) -> usize {
        self.lru_lo.len() + self.lru_hi.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(st: &mut State, n: BlockNum) {
        st.entries.insert(n, Entry::new(Instant::now()));
        st.lru_insert(n);
    }

    #[test]
    fn dirty_queue_keeps_order_and_each_block_once() {
        let mut q = DirtyQueue::default();
        q.push_back(3);
        q.push_back(5);
        q.push_front(7);
        q.push_back(3);
        q.push_front(5);
        assert_eq!((q.len(), q[0], q[1], q[2]), (3, 7, 3, 5));
        assert!(q.contains(&3) && !q.contains(&4));
        assert_eq!(q.remove(1), Some(3));
        assert!(!q.contains(&3));
        q.push_back(3);
        assert_eq!((q.len(), q[2]), (3, 3));
    }

    #[test]
    fn lru_order_touch_and_protection() {
        let mut st = State::new(2);
        for n in [5, 1, 6, 0, 7] {
            clean(&mut st, n);
        }
        assert_eq!(st.lru_oldest(), Some(5));
        st.lru_touch(5);
        assert_eq!(st.lru_oldest(), Some(6));
        st.lru_remove(6);
        st.lru_remove(7);
        assert_eq!(st.lru_oldest(), Some(5));
        st.lru_remove(5);
        // Only protected blocks left: oldest of them.
        assert_eq!(st.lru_oldest(), Some(1));
        assert_eq!(st.lru_len(), 2);
        st.lru_remove(1);
        st.lru_remove(0);
        assert_eq!(st.lru_oldest(), None);
        // Touching a non-evictable entry does not make it evictable.
        st.lru_touch(5);
        assert_eq!(st.lru_oldest(), None);
    }
}
