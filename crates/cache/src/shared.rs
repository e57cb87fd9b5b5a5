//! The state the cache and its background tasks share ([`Shared`]), and the operations on it
//! that the front end, read-ahead and the write-back engine ([`crate::writeback`]) all use:
//! looking a block up or loading it, accepting writes, completing partial blocks, waiting for
//! uploads, and keeping the cache file's copy of a block current.
//!
//! The bookkeeping ([`State`]) is under one mutex, held only for in-memory work: never across
//! a read or write of the store, nor of the cache file. A change to a block's cache-file record
//! is decided under the lock (the entry changes, its slot is taken out), written outside it by
//! [`Shared::persist`], and committed back under the lock; the record's generation
//! ([`crate::state::Image`]) tells whether it is current, so a rewrite a newer one made
//! pointless is skipped. Cache-file writes run one at a time, in the order they are asked
//! for, so the file's ordering rules (data synced before the entry naming it) hold as before,
//! while cache hits and other blocks' operations never wait for the disk.

use crate::CacheConfig;
use crate::file::{CacheFile, Held, Pinned};
use crate::ranges::{ByteRanges, MAX_RANGES};
use crate::readahead::ReadAhead;
use crate::state::{self, BlockState, Entry, State};
use crate::stats::{CacheStats, Fill, Occupancy};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use s3b_store::{
    BlockData, BlockNum, BlockStore, Etag, ReadOutcome, ReadRequest, Result, Revalidation, StoreError, is_zero,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// What the cache and its background tasks share.
pub(crate) struct Shared {
    pub(crate) inner: Arc<dyn BlockStore>,
    pub(crate) cfg: CacheConfig,
    pub(crate) block_size: u32,
    pub(crate) state: Mutex<State>,
    /// Signalled (notify_waiters) whenever an entry changes phase or leaves the cache.
    pub(crate) changed: Notify,
    /// Wakes the write-back scheduler.
    pub(crate) wake: Notify,
    /// Bounds read-ahead fetches.
    pub(crate) ra_pool: Arc<Semaphore>,
    pub(crate) ra: Mutex<ReadAhead>,
    pub(crate) stats: Arc<CacheStats>,
    pub(crate) file: Option<Arc<CacheFile>>,
    /// Taken by each cache-file write ([`Shared::persist`]): one at a time, first come first
    /// served (tokio's mutex is fair).
    pub(crate) file_turn: tokio::sync::Mutex<()>,
}

/// Write-back hurries (starts waiting blocks before their delay) once this many tenths of the
/// dirty limit are dirty: early enough that uploads run before writers must wait for room,
/// late enough that a burst of writes below it is still absorbed by the write delay.
const PRESSURE_TENTHS: usize = 9;

impl Occupancy for Shared {
    fn occupancy(&self) -> Fill {
        let st = self.state.lock();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let (cached, dirty, size) = (count(st.entries.len()), count(st.dirty_count()), count(self.cfg.size));
        Fill { cached, dirty, uploading: count(st.in_flight.uploads), size }
    }
}

impl Shared {
    /// Whether write-back hurries (starts waiting blocks before their delay): writers wait for
    /// room, a flush of everything is in progress, or the dirty blocks near the limit
    /// (`max_dirty`, else the cache size).
    pub(crate) fn hurried(&self, st: &State) -> bool {
        let limit = if self.cfg.max_dirty > 0 { self.cfg.max_dirty.min(self.cfg.size) } else { self.cfg.size };
        st.waiters.room > 0 || st.waiters.flush_all > 0 || st.dirty_count() * 10 >= limit * PRESSURE_TENTHS
    }

    /// The one way to wait for the state to change: a wait armed now, so that a change made
    /// after this call (while the caller looks at the state under the lock) still wakes it.
    /// Every state change is followed by `changed.notify_waiters()`.
    pub(crate) fn next_change(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.changed.notified());
        notified.as_mut().enable();
        notified
    }

    /// Returns the data of block `n` from the cache, loading it on a miss. `count` says whether
    /// this is a foreground read (counted in the hit/miss stats).
    pub(crate) async fn get(self: &Arc<Self>, n: BlockNum, count: bool) -> Result<ReadOutcome> {
        let mut counted = !count;
        loop {
            let notified = self.next_change();
            enum Step {
                Wait,
                Done(ReadOutcome),
                Through,
                Load(Option<Etag>),
                Fill,
                FromFile(Source, Option<Etag>),
            }
            let step = {
                let mut st = self.state.lock();
                let now = Instant::now();
                match st.entries.get(&n) {
                    Some(e) if matches!(e.state(), BlockState::Loading) => {
                        if !counted {
                            // Somebody (read-ahead or another reader) is already fetching it.
                            self.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                        Step::Wait
                    }
                    Some(e) if e.partial().is_some() => {
                        // Written only in part: the rest comes from the store first.
                        if !counted {
                            self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                        Step::Fill
                    }
                    Some(e) if matches!(e.state(), BlockState::Clean(c) if c.verify) => {
                        // Reloaded from the cache file: check it against the store first.
                        let etag = e.etag();
                        st.start_verify(n);
                        Step::Load(etag)
                    }
                    Some(e) => {
                        if !counted {
                            self.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                        let etag = e.etag();
                        let step = match self.source(e) {
                            Some(Source::Mem(d)) => Step::Done(outcome(&d, etag)),
                            Some(src) => Step::FromFile(src, etag),
                            // Its slot is being relabelled: back in a moment.
                            None => Step::Wait,
                        };
                        st.touch(n, now);
                        step
                    }
                    None => {
                        if !counted {
                            self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                        }
                        if self.make_room(&mut st) {
                            st.insert_loading(n, now);
                            Step::Load(None)
                        } else {
                            // Full of dirty or busy blocks: read through without caching.
                            Step::Through
                        }
                    }
                }
            };
            match step {
                Step::Wait => notified.await,
                Step::Done(out) => return Ok(out),
                Step::Through => {
                    let _reading = count.then(|| Raised::new(self, |st| &mut st.in_flight.reads));
                    return self.inner.read_block(n, ReadRequest::PLAIN).await;
                }
                Step::Load(etag) => {
                    let reading = count.then(|| Raised::new(self, |st| &mut st.in_flight.reads));
                    let loaded = detached(self, move |sh| async move { sh.load(n, etag).await }).await?;
                    drop(reading);
                    if let Some(r) = loaded {
                        return r;
                    }
                }
                Step::Fill => detached(self, move |sh| async move { sh.fill(n).await }).await??,
                Step::FromFile(src, etag) => {
                    if let Some(d) = self.fetch(n, &src)? {
                        return Ok(outcome(&d, etag));
                    }
                    // Damaged in the file, and dropped: read from the store.
                }
            }
        }
    }

    /// Where block `n`'s data (entry `e`) is to be read from, its slot pinned when that is the
    /// cache file; `None` while the slot is out of the entry (being relabelled).
    pub(crate) fn source(&self, e: &Entry) -> Option<Source> {
        match &e.data {
            Held::Mem(d) => Some(Source::Mem(d.clone())),
            Held::File { sum, checked } => {
                let (f, slot) = (self.file.as_ref()?, e.slot?);
                Some(Source::File { pin: f.pin(slot), sum: *sum, checked: *checked, ver: e.ver })
            }
        }
    }

    /// Reads block `n`'s data from `src` (outside the lock). Data read from the file that was not
    /// checked since the open is checked now: `None` when it fails (the entry, clean, is dropped
    /// then, and the caller reads the store instead).
    pub(crate) fn fetch(&self, n: BlockNum, src: &Source) -> Result<Option<Option<Bytes>>> {
        let (pin, sum, checked, ver) = match src {
            Source::Mem(d) => return Ok(Some(d.clone())),
            Source::File { pin, sum, checked, ver } => (pin, sum, *checked, ver),
        };
        let read = pin
            .read((!checked).then_some(*sum))
            .map_err(|e| StoreError::io(format!("block cache: can't read block {n:#010x} from the cache file"), e))?;
        let mut st = self.state.lock();
        let same = |e: &Entry| e.ver == *ver && matches!(e.data, Held::File { sum: s, .. } if s == *sum);
        match read {
            Some(d) => {
                if !checked && let Some(e) = st.entries.get_mut(&n).filter(|e| same(e)) {
                    e.data = Held::File { sum: *sum, checked: true };
                }
                Ok(Some(Some(d)))
            }
            None => {
                log::warn!("block cache: the cache file's copy of block {n:#010x} fails its checksum; dropped");
                // A block being checked against the store (loading) is read from it instead by
                // its loader; a clean one goes.
                if st.entries.get(&n).is_some_and(|e| same(e) && matches!(e.state(), BlockState::Clean(_))) {
                    self.drop_entry(&mut st, n);
                    drop(st);
                    self.changed.notify_waiters();
                }
                Ok(None)
            }
        }
    }

    /// Performs the inner read for an entry this task put in the loading phase. `None` when
    /// the entry became a partially written block meanwhile: ask again with [`Shared::get`].
    pub(crate) async fn load(self: &Arc<Self>, n: BlockNum, verify: Option<Etag>) -> Option<Result<ReadOutcome>> {
        // A reloaded block is checked against the store only once its copy here is read: one
        // that fails its checksum (or can't be read) is read from the store instead.
        let local = match verify {
            Some(_) => {
                let src = self.state.lock().entries.get(&n).and_then(|e| self.source(e));
                src.and_then(|src| match self.fetch(n, &src) {
                    Ok(d) => d,
                    Err(e) => {
                        log::warn!("{}", s3b_store::Chain(&e));
                        None
                    }
                })
            }
            None => None,
        };
        let verify = verify.filter(|_| local.is_some());
        let res = match verify {
            Some(etag) => self.inner.revalidate(n, etag).await,
            None => self.inner.read_block(n, ReadRequest::PLAIN).await.map(Revalidation::Changed),
        };
        let mut st = self.state.lock();
        let Some(e) = st.entries.get_mut(&n) else {
            unreachable_entry(n);
            // Without the entry an unchanged answer has no data to give: ask again.
            return match res {
                Ok(Revalidation::Unchanged) => None,
                Ok(Revalidation::Changed(out)) => Some(Ok(out)),
                Err(e) => Some(Err(e)),
            };
        };
        let loading = matches!(e.state(), BlockState::Loading);
        if !loading && e.partial().is_some() {
            // Replaced (and since evicted and written in part) while we read: what we read may
            // predate the block's last upload, so it must not complete the partial block.
            drop(st);
            self.changed.notify_waiters();
            return None;
        }
        let result = if !loading {
            // A write replaced the block while we were reading: its data wins (asked again when
            // it is in the cache file only).
            let Held::Mem(d) = &e.data else {
                drop(st);
                return None;
            };
            Ok(outcome(d, e.etag()))
        } else {
            match res {
                Ok(Revalidation::Unchanged) => {
                    // Only a check of a reloaded block (`verify` is its ETag) answers this.
                    self.stats.verified.fetch_add(1, Ordering::Relaxed);
                    e.last_access = Instant::now();
                    let out = outcome(&local.unwrap_or_default(), verify);
                    st.set_clean(n, verify, false);
                    Ok(out)
                }
                Ok(Revalidation::Changed(out)) => {
                    if verify.is_some() {
                        self.stats.mismatch.fetch_add(1, Ordering::Relaxed);
                    }
                    let (data, etag) = match &out {
                        ReadOutcome::Data { data, etag } => (Some(data.clone()), *etag),
                        _ => (None, None),
                    };
                    e.data = Held::Mem(data);
                    e.last_access = Instant::now();
                    // A reloaded block that changed in the store: its slot holds the old data.
                    e.slot_image = None;
                    st.set_clean(n, etag, false);
                    if self.file.is_some() {
                        // Recorded in the background: a reader does not wait for the disk.
                        let sh = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = sh.persist(n).await {
                                log::error!("block cache: can't record block {n:#010x} in the cache file: {e}");
                            }
                        });
                    }
                    Ok(out)
                }
                Err(err) => {
                    self.drop_entry(&mut st, n);
                    Err(err)
                }
            }
        };
        drop(st);
        self.changed.notify_waiters();
        Some(result)
    }

    /// Removes a clean or loading entry and frees its file slot.
    pub(crate) fn drop_entry(&self, st: &mut State, n: BlockNum) {
        if let Some(e) = st.remove(n)
            && let (Some(slot), Some(f)) = (e.slot, &self.file)
        {
            f.release(slot);
        }
    }

    /// Makes room for one more entry by evicting a clean block if needed. False when the cache
    /// is full and nothing can be evicted.
    pub(crate) fn make_room(&self, st: &mut State) -> bool {
        while st.entries.len() >= self.cfg.size {
            let Some(victim) = st.lru_oldest() else {
                return false;
            };
            self.drop_entry(st, victim);
        }
        true
    }

    /// Accepts a write of a whole block into the cache, waiting for room when needed.
    pub(crate) async fn write(self: &Arc<Self>, n: BlockNum, data: Option<BlockData>) -> Result<()> {
        let data = data.map(BlockData::into_bytes);
        self.write_with(n, |_, _| Prepared::Data(data.clone(), None)).await
    }

    /// Accepts `part` at byte `off` of block `n` (not the whole block) without reading the
    /// block when it is not cached.
    pub(crate) async fn write_part(self: &Arc<Self>, n: BlockNum, off: u32, end: u32, part: Bytes) -> Result<()> {
        let bs = self.block_size;
        self.write_with(n, |e, fetched| {
            // What is known of the block: all of it, some ranges, or nothing (not cached, or
            // reloaded from the cache file and not verified yet: its data may be stale).
            let known = match e.map(|e| (e, e.state())) {
                Some((_, BlockState::Loading)) => return Prepared::Wait,
                Some((_, BlockState::Clean(c))) if c.verify => None,
                other => other,
            };
            let (base, valid) = match known {
                Some((e, _)) => {
                    let base = match &e.data {
                        Held::Mem(d) => d.clone(),
                        // In the cache file only: read first (outside the lock).
                        Held::File { sum, .. } => match fetched {
                            Some(f) if f.ver == e.ver && f.sum == *sum => f.data.clone(),
                            _ => return Prepared::Read,
                        },
                    };
                    (base, e.partial().cloned())
                }
                None => (None, Some(ByteRanges::default())),
            };
            if let Some(v) = &valid
                && v.len_after(off, end) > MAX_RANGES
            {
                return Prepared::Fill;
            }
            if let Some((_, BlockState::Clean(_))) = known {
                let same =
                    base.as_deref().map_or_else(|| is_zero(&part), |d| d[off as usize..end as usize] == part[..]);
                if same {
                    return Prepared::Unchanged;
                }
            }
            let mut buf = match &base {
                Some(d) => BytesMut::from(&d[..]),
                None => BytesMut::zeroed(bs as usize),
            };
            buf[off as usize..end as usize].copy_from_slice(&part);
            let valid = valid
                .map(|mut v| {
                    v.insert(off, end);
                    v
                })
                .filter(|v| !v.is_full(bs));
            let data = (!is_zero(&buf)).then(|| buf.freeze());
            Prepared::Data(data, valid)
        })
        .await
    }

    /// Accepts a write into the cache, waiting for room when needed. `prepare` sees the
    /// block's entry (under the lock), and its data read from the cache file when it asked for
    /// it ([`Prepared::Read`]), and says what the block becomes.
    async fn write_with(
        self: &Arc<Self>,
        n: BlockNum,
        prepare: impl Fn(Option<&Entry>, Option<&Fetched>) -> Prepared,
    ) -> Result<()> {
        let mut counted = false;
        let mut fetched = None;
        let ver = loop {
            let notified = self.next_change();
            enum Next {
                Changed,
                Room,
                Fill,
                Read(Option<Source>),
                Done(u64),
            }
            let next = {
                let mut st = self.state.lock();
                let now = Instant::now();
                let present = st.entries.contains_key(&n);
                if !counted {
                    let c = if present { &self.stats.write_hits } else { &self.stats.write_misses };
                    c.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                match prepare(st.entries.get(&n), fetched.as_ref()) {
                    Prepared::Unchanged => return Ok(()),
                    Prepared::Wait => Next::Changed,
                    Prepared::Fill => Next::Fill,
                    Prepared::Read => Next::Read(st.entries.get(&n).and_then(|e| self.source(e))),
                    Prepared::Data(data, valid) => {
                        let already_dirty = st.entries.get(&n).is_some_and(Entry::is_dirty);
                        let over_dirty_limit = self.cfg.max_dirty > 0 && st.dirty_count() >= self.cfg.max_dirty;
                        if (!already_dirty && over_dirty_limit) || (!present && !self.make_room(&mut st)) {
                            Next::Room
                        } else {
                            let ver = self.apply_write(&mut st, n, data, valid, now);
                            if st.take_kick() || self.hurried(&st) {
                                self.wake.notify_one();
                            }
                            Next::Done(ver)
                        }
                    }
                }
            };
            match next {
                Next::Done(ver) => {
                    self.changed.notify_waiters();
                    // Recorded in the cache file before the write returns, outside the lock (in
                    // a task of its own, so a caller that stops waiting does not skip it).
                    if self.file.is_some() {
                        detached(self, move |sh| async move { sh.persist(n).await }).await??;
                    }
                    break ver;
                }
                Next::Changed => notified.await,
                Next::Read(Some(src)) => {
                    if let Source::File { ver, sum, .. } = &src {
                        let (ver, sum) = (*ver, *sum);
                        // Damaged in the file (`None`): the entry is gone, the write goes ahead
                        // without it.
                        fetched = self.fetch(n, &src)?.map(|data| Fetched { ver, sum, data });
                    }
                }
                // Its slot is being relabelled.
                Next::Read(None) => notified.await,
                Next::Fill => detached(self, move |sh| async move { sh.fill(n).await }).await??,
                Next::Room => {
                    // Counted while waiting (uploads hurry meanwhile), uncounted however the
                    // wait ends, a cancelled caller included.
                    let _waiting = Raised::new(self, |st| &mut st.waiters.room);
                    self.wake.notify_one();
                    notified.await;
                }
            }
        };
        if self.cfg.sync {
            self.wait_uploaded(&[(n, ver)]).await;
        }
        Ok(())
    }

    /// Makes block `n` dirty with `data` (partial when `valid` is given) in its entry (the
    /// caller then records it in the cache file with [`Shared::persist`]). Returns the block's
    /// new generation.
    fn apply_write(
        &self,
        st: &mut State,
        n: BlockNum,
        data: Option<Bytes>,
        valid: Option<ByteRanges>,
        now: Instant,
    ) -> u64 {
        let e = st.write(n, data, valid, now);
        let ver = e.ver;
        if self.cfg.sync
            && let Some(d) = e.dirty_mut()
        {
            d.upload.urgent = true;
            if st.sched.hurry(n) {
                st.kick();
            }
        }
        ver
    }

    /// Makes the cache file's record of block `n` what its entry is now (nothing without a
    /// cache file, or when the record is current already). The change is decided under the
    /// lock, the slot taken out of the entry; the writes and the `fdatasync` run outside it,
    /// one `persist` at a time in the order called; then the slot goes back into the entry,
    /// labelled with the generation written. A write after the decision leaves the entry
    /// newer than the record: its own `persist` follows this one and rewrites it.
    ///
    /// An entry gone meanwhile (evicted) gets its slot freed. Errors are about the file only:
    /// the cached block is unaffected, but the file no longer holds it.
    pub(crate) async fn persist(&self, n: BlockNum) -> Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        let _turn = self.file_turn.lock().await;
        let (image, old, old_image, data, valid, etag) = {
            let mut st = self.state.lock();
            let Some(e) = st.entries.get_mut(&n) else { return Ok(()) };
            let Some(image) = e.image() else { return Ok(()) };
            if e.slot.is_some() && e.slot_image == Some(image) {
                return Ok(());
            }
            if image.dirty && matches!(e.data, Held::File { .. }) {
                // Data only in the file is always that of the record there: nothing to write.
                return Ok(());
            }
            (image, e.slot.take(), e.slot_image.take(), e.data.clone(), e.partial().cloned(), e.etag())
        };
        let written = match (&data, image.dirty) {
            (Held::Mem(d), true) => f.write_dirty(n, old, d.as_ref(), valid.as_ref()),
            _ => {
                // Clean: a slot holding this generation is relabelled, any other one replaced.
                let current = old.filter(|_| old_image.is_some_and(|i| i.ver == image.ver));
                if let (Some(stale), None) = (old, current) {
                    f.release(stale);
                }
                Ok(f.note_clean(n, current, &data, etag))
            }
        };
        let relabelled = matches!(data, Held::File { .. });
        let mut st = self.state.lock();
        let slot = written?;
        match st.entries.get_mut(&n) {
            Some(e) if e.slot.is_none() => match slot {
                Some((s, held)) => {
                    (e.slot, e.slot_image) = (Some(s), Some(image));
                    // The record holds what the entry does (same generation, same data): the
                    // data need not stay in memory.
                    if e.image() == Some(image) && e.partial().is_none() && same_data(&e.data, &data) {
                        e.data = held;
                    }
                }
                None if matches!(e.data, Held::File { .. }) => {
                    // Clean (dirty data only in the file is never rewritten) and no longer in
                    // the file: not cached any more.
                    self.drop_entry(&mut st, n);
                }
                None => {}
            },
            _ => {
                if let Some((s, _)) = slot {
                    f.release(s);
                }
            }
        }
        drop(st);
        if relabelled {
            // Readers of the block wait while its slot is out.
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// Completes a partially written block: reads the stored version once and merges it under
    /// the lock, taking only the bytes outside the block's ranges as they are at merge time, so
    /// a byte written during the read is never overwritten. Several callers share one read.
    /// Returns once the block is whole (at once when it already is).
    pub(crate) async fn fill(self: &Arc<Self>, n: BlockNum) -> Result<()> {
        loop {
            let Some(born) = self.start_fill(n).await else { return Ok(()) };
            let res = self.inner.read_block(n, ReadRequest::PLAIN).await;
            let merged = self.merge_fill(n, born, res);
            self.changed.notify_waiters();
            if self.state.lock().sched.unpark(n) {
                // The scheduler set the block aside while we completed it: it is due.
                self.wake.notify_one();
            }
            if merged? {
                if let Err(x) = self.persist(n).await {
                    log::error!("block cache: can't record completed block {n:#010x}: {x}");
                }
                return Ok(());
            }
            // A newer partial block than the one the read was for: it needs a read of its own.
        }
    }

    /// Waits until no other completion of block `n` is in flight, then marks one as ours and
    /// returns the generation ([`state::Partial::born`]) of the partial block it is for; `None`
    /// when the block is whole (or not cached).
    async fn start_fill(&self, n: BlockNum) -> Option<u64> {
        loop {
            let notified = self.next_change();
            {
                let mut st = self.state.lock();
                let p = st.entries.get_mut(&n).and_then(Entry::partial_mut)?;
                if !p.filling {
                    p.filling = true;
                    return Some(p.born());
                }
            }
            notified.await;
        }
    }

    /// Merges the stored version of block `n` (`res`, read for the partial block born at
    /// generation `born`) into it. True when the block is whole now (or was already), false
    /// when the read was for an older partial block than the one cached now: it may predate
    /// the stored version, so nothing of it is used.
    fn merge_fill(&self, n: BlockNum, born: u64, res: Result<ReadOutcome>) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(e) = st.entries.get_mut(&n) else {
            unreachable_entry(n);
            return Ok(true);
        };
        match e.partial_mut() {
            // Completed meanwhile by a whole-block write.
            None => return res.map(|_| true),
            // Whatever the read brought (an error included) was about an older block.
            Some(p) if p.born() != born => return Ok(false),
            Some(p) => p.filling = false,
        }
        let stored = res?.into_data(self.block_size);
        if !matches!(e.data, Held::Mem(_)) {
            // A partial block's buffer is always in memory (never left to the file alone).
            return Err(StoreError::io(
                format!("block cache: partial block {n:#010x} has no buffer"),
                std::io::Error::other("data not in memory"),
            ));
        }
        let Some(state::Partial { valid, .. }) = e.dirty_mut().and_then(|d| d.partial.take()) else {
            return Ok(true);
        };
        let mut buf = BytesMut::from(&stored[..]);
        for &(a, b) in valid.ranges() {
            let (a, b) = (a as usize, b as usize);
            match &e.data {
                Held::Mem(Some(d)) => buf[a..b].copy_from_slice(&d[a..b]),
                Held::Mem(None) | Held::File { .. } => buf[a..b].fill(0),
            }
        }
        e.data = Held::Mem((!is_zero(&buf)).then(|| buf.freeze()));
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Waits until each block's upload has reached the given generation (or the block left the
    /// cache, which only clean blocks do).
    pub(crate) async fn wait_uploaded(&self, targets: &[(BlockNum, u64)]) {
        let _ = self.wait_stored(targets, false).await;
    }

    /// [`Shared::wait_uploaded`]; with `fail`, an upload attempt of a block still waited for
    /// that fails meanwhile ends the wait with that attempt's error.
    ///
    /// The blocks are marked urgent (due now) once; then each change looks only at the blocks
    /// not yet known stored, from the first one on, stopping at one still pending, and at all
    /// of them only when an upload failed since the last look: waiting for n blocks costs O(n)
    /// in all, not O(n) per upload.
    pub(crate) async fn wait_stored(&self, targets: &[(BlockNum, u64)], fail: bool) -> Result<()> {
        let (failures_before, mut failures_seen) = {
            let mut st = self.state.lock();
            let before: Vec<u64> = targets.iter().map(|(n, _)| st.entries.get(n).map_or(0, Entry::failures)).collect();
            let mut moved = false;
            for (n, _) in targets {
                if let Some(d) = st.entries.get_mut(n).and_then(Entry::dirty_mut) {
                    d.upload.urgent = true;
                    moved |= st.sched.hurry(*n);
                }
            }
            drop(st);
            if moved {
                self.wake.notify_one();
            }
            (before, None)
        };
        let mut done = 0;
        loop {
            let notified = self.next_change();
            {
                let st = self.state.lock();
                let pending = |(n, g): &(BlockNum, u64)| st.entries.get(n).filter(|e| e.stored_ver() < *g);
                if fail && failures_seen != Some(st.upload_failures) {
                    failures_seen = Some(st.upload_failures);
                    for (t, before) in targets[done..].iter().zip(&failures_before[done..]) {
                        let Some(e) = pending(t) else { continue };
                        if e.failures() > *before {
                            return Err(match e.dirty().and_then(|d| d.upload.failing.as_ref()) {
                                Some(f) => StoreError::UploadFailed { block: t.0, source: f.error.clone() },
                                None => StoreError::NotRunning,
                            });
                        }
                    }
                }
                while done < targets.len() && pending(&targets[done]).is_none() {
                    done += 1;
                }
                if done == targets.len() {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    pub(crate) fn dirty_targets(&self, blocks: Option<&[BlockNum]>) -> Vec<(BlockNum, u64)> {
        let st = self.state.lock();
        match blocks {
            Some(list) => {
                list.iter().filter_map(|n| st.entries.get(n).filter(|e| e.is_dirty()).map(|e| (*n, e.ver))).collect()
            }
            None => st.dirty_blocks().filter_map(|n| Some((n, st.entries.get(&n)?.ver))).collect(),
        }
    }
}

/// Runs `f(sh)` as its own task and waits for it. Work that puts an entry in a transient
/// state (loading, filling) and settles it after a read below must finish even when the caller
/// stops waiting (a dropped future): in its own task it does, so no entry is left loading.
pub(crate) async fn detached<T, F, Fut>(sh: &Arc<Shared>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    tokio::spawn(f(sh.clone())).await.map_err(|e| s3b_store::StoreError::Task(e.into()))
}

/// A counter of the state raised for as long as this value lives: lowered on drop, so a caller
/// cancelled while it waits does not leave it raised.
pub(crate) struct Raised<'a> {
    sh: &'a Shared,
    field: fn(&mut State) -> &mut usize,
}

impl<'a> Raised<'a> {
    pub(crate) fn new(sh: &'a Shared, field: fn(&mut State) -> &mut usize) -> Self {
        *field(&mut sh.state.lock()) += 1;
        Raised { sh, field }
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        let mut st = self.sh.state.lock();
        let n = (self.field)(&mut st);
        *n -= 1;
        let last = *n == 0;
        drop(st);
        if last {
            // The scheduler may have held uploads back for it (a read in flight).
            self.sh.wake.notify_one();
        }
    }
}

fn unreachable_entry(n: BlockNum) {
    log::error!("block cache: loading entry for block {n:#010x} vanished");
}

/// A block's data as found under the lock, to read outside it ([`Shared::fetch`]).
pub(crate) enum Source {
    /// In memory (`None`: zeros).
    Mem(Option<Bytes>),
    /// In the cache file: the slot pinned, the data's checksum, whether it is checked already,
    /// and the entry's generation when it was found.
    File { pin: Pinned, sum: u64, checked: bool, ver: u64 },
}

/// A block's data read from the cache file for a write: of the entry at generation `ver`
/// holding data of checksum `sum`.
struct Fetched {
    ver: u64,
    sum: u64,
    data: Option<Bytes>,
}

/// What a write makes of a block, decided under the lock from its current entry.
enum Prepared {
    /// The block's data is in the cache file only: read it first.
    Read,
    /// The block is loading: wait for it.
    Wait,
    /// The block must be completed from the store first (too many ranges).
    Fill,
    /// The write changes nothing (clean block already holding these bytes).
    Unchanged,
    /// New content, and for a partial block the ranges it holds.
    Data(Option<Bytes>, Option<ByteRanges>),
}

/// Whether two values of an entry's data are the same value (not only equal bytes): a clone of
/// the same buffer, or the same file copy.
fn same_data(a: &Held, b: &Held) -> bool {
    match (a, b) {
        (Held::Mem(Some(x)), Held::Mem(Some(y))) => x.as_ptr() == y.as_ptr() && x.len() == y.len(),
        (Held::Mem(None), Held::Mem(None)) => true,
        (Held::File { sum: x, .. }, Held::File { sum: y, .. }) => x == y,
        _ => false,
    }
}

/// A cached block as a read result.
pub(crate) fn outcome(data: &Option<Bytes>, etag: Option<Etag>) -> ReadOutcome {
    match data {
        Some(d) => ReadOutcome::Data { data: d.clone(), etag },
        None => ReadOutcome::Zero,
    }
}
