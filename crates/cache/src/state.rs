//! The cache's bookkeeping: one [`Entry`] per cached block, the LRU order of clean blocks
//! (two lists, so that protected blocks go last), the set of dirty blocks and the write-back
//! [`Schedule`] of those waiting for an upload.
//!
//! An entry's [`BlockState`] carries what only one phase of a block's life has: a clean block
//! its ETag and LRU position, a dirty block its upload progress and, when written only in part,
//! the byte ranges it holds. A block enters and leaves a phase only through [`State`]'s
//! transitions ([`State::insert_loading`], [`State::start_verify`], [`State::set_clean`],
//! [`State::write`], [`State::remove`]), which keep the LRU and the dirty count in step with
//! it (a block turning dirty is scheduled for upload, one leaving that phase unscheduled); what
//! changes within a phase (an upload starting or failing, a partial block being
//! completed) is changed in place through [`Entry::dirty_mut`].

use crate::file::Held;
use crate::ranges::ByteRanges;
use crate::schedule::Schedule;
use bytes::Bytes;
use s3b_store::{BlockNum, Etag, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One cached block.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The data: in memory (`None`: all zeros), or with a cache file only in the entry's slot.
    /// While loading: nothing yet, or the reloaded data being checked against the store.
    pub(crate) data: Held,
    /// Generation: every write gives the block the cache's next generation, and a new entry
    /// starts at the newest one handed out, so a block's generation only grows, across
    /// evictions too. A flush waits until [`Entry::stored_ver`] reaches the generation it saw:
    /// a block that was stored, evicted and cached again meanwhile is past it at once.
    pub(crate) ver: u64,
    /// Last read or write.
    pub(crate) last_access: Instant,
    /// Slot in the cache file, if any (taken out while the file's record of the block is
    /// being rewritten).
    pub(crate) slot: Option<u32>,
    /// What the slot's record holds (`None`: nothing known to be current).
    pub(crate) slot_image: Option<Image>,
    /// Where the block is in its life, with what only that phase has.
    state: BlockState,
}

impl Entry {
    /// Where the block is in its life.
    pub(crate) fn state(&self) -> &BlockState {
        &self.state
    }

    /// What the block has while dirty.
    pub(crate) fn dirty(&self) -> Option<&Dirty> {
        match &self.state {
            BlockState::Dirty(d) => Some(&**d),
            _ => None,
        }
    }

    /// What the block has while dirty, to change within that phase.
    pub(crate) fn dirty_mut(&mut self) -> Option<&mut Dirty> {
        match &mut self.state {
            BlockState::Dirty(d) => Some(&mut **d),
            _ => None,
        }
    }

    /// Whether the block is dirty.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty().is_some()
    }

    /// For a block written only in part: the byte ranges it holds.
    pub(crate) fn partial(&self) -> Option<&ByteRanges> {
        self.dirty()?.partial.as_ref().map(|p| &p.valid)
    }

    /// For a block written only in part: its ranges and completion, to change.
    pub(crate) fn partial_mut(&mut self) -> Option<&mut Partial> {
        self.dirty_mut()?.partial.as_mut()
    }

    /// ETag of the version the block holds (known only while clean).
    pub(crate) fn etag(&self) -> Option<Etag> {
        match &self.state {
            BlockState::Clean(c) => c.etag,
            _ => None,
        }
    }

    /// Generation the store holds: every generation of a block that is not dirty.
    pub(crate) fn stored_ver(&self) -> u64 {
        self.dirty().map_or(self.ver, |d| d.upload.stored_ver)
    }

    /// Failed upload attempts since the block last turned dirty (none when it is not).
    pub(crate) fn failures(&self) -> u64 {
        self.dirty().map_or(0, |d| d.upload.failures)
    }

    /// What the cache file should hold for the block now (`None` while it loads: nothing).
    pub(crate) fn image(&self) -> Option<Image> {
        match &self.state {
            BlockState::Loading => None,
            BlockState::Clean(_) => Some(Image { ver: self.ver, dirty: false, partial: false }),
            BlockState::Dirty(d) => Some(Image { ver: self.ver, dirty: true, partial: d.partial.is_some() }),
        }
    }
}

/// What a cache-file record says of a block: which generation, and whether dirty or partial.
/// The file's copy of a block is current when its record's image is the entry's
/// [`Entry::image`]: rewriting it is skipped then ("commit by generation").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    /// The block's generation the record holds.
    pub(crate) ver: u64,
    /// Recorded dirty.
    pub(crate) dirty: bool,
    /// Recorded partial.
    pub(crate) partial: bool,
}

/// Where a cached block is in its life.
#[derive(Debug)]
pub(crate) enum BlockState {
    /// One inner read is in flight; other readers wait for it.
    Loading,
    /// Same as the stored version.
    Clean(Clean),
    /// Newer than the stored version (boxed: few blocks are dirty at once, and a clean entry
    /// stays small).
    Dirty(Box<Dirty>),
}

/// What a clean block has.
#[derive(Debug)]
pub(crate) struct Clean {
    /// ETag of the stored version, when known.
    pub(crate) etag: Option<Etag>,
    /// Reloaded from the cache file: to be checked against the store on first read.
    pub(crate) verify: bool,
    /// Key in the LRU map: every clean block is evictable.
    lru_key: u64,
}

/// What a dirty block has: its upload's progress, and the byte ranges of a block written only
/// in part.
///
/// It lasts from the write that made the block dirty to the upload that makes it clean, and is
/// dropped then. Nothing in it needs to outlive that: a flush waiting for the block waits for a
/// generation, and once the block is clean every generation it had is stored, so the wait is
/// over even if the block turns dirty again (its [`Upload::stored_ver`] starts at the
/// generation it had).
#[derive(Debug)]
pub(crate) struct Dirty {
    /// When the block went from clean (or not cached) to dirty.
    pub(crate) since: Instant,
    /// How uploading it goes.
    pub(crate) upload: Upload,
    /// For a block written only in part, what it holds and how its completion goes.
    pub(crate) partial: Option<Partial>,
}

impl Dirty {
    /// A block that has just turned dirty from generation `ver` by the write of generation
    /// `generation`, written in part when `valid` is given.
    fn new(ver: u64, valid: Option<ByteRanges>, now: Instant, generation: u64) -> Dirty {
        Dirty {
            since: now,
            upload: Upload { urgent: false, stored_ver: ver, in_flight: false, failures: 0, failing: None },
            partial: valid.map(|v| Partial::new(v, generation)),
        }
    }

    /// A new write, of generation `generation`: the block now holds `valid` only (`None`: all
    /// of it). A block still partial keeps its completion state (a read in flight completes it
    /// all the same: the stored version it completes from has not changed).
    fn rewritten(&mut self, valid: Option<ByteRanges>, generation: u64) {
        match (&mut self.partial, valid) {
            (Some(p), Some(v)) => p.valid = v,
            (_, v) => self.partial = v.map(|v| Partial::new(v, generation)),
        }
    }
}

/// How uploading a dirty block goes.
#[derive(Debug)]
pub(crate) struct Upload {
    /// Somebody waits for it (flush, sync write): started without delay.
    pub(crate) urgent: bool,
    /// Generation the store holds: the block's generation when it turned dirty, then that of
    /// each successful upload.
    pub(crate) stored_ver: u64,
    /// An upload is in flight (the task doing it knows which generation it sends).
    pub(crate) in_flight: bool,
    /// Failed attempts since the block turned dirty (a successful upload of an older generation
    /// does not reset it): a flush fails when this grows while it waits for the block.
    pub(crate) failures: u64,
    /// The failed attempts since the last successful one, if the last attempt failed.
    pub(crate) failing: Option<Failing>,
}

impl Upload {
    /// The upload of generation `ver` succeeded.
    pub(crate) fn succeeded(&mut self, ver: u64) {
        self.in_flight = false;
        self.failing = None;
        self.stored_ver = ver;
    }

    /// The upload in flight failed with `error`; the next attempt waits `backoff(n)` after
    /// `now`, where `n` counts the failures in a row. Returns this failure's record.
    pub(crate) fn failed(
        &mut self,
        error: StoreError,
        backoff: impl FnOnce(u32) -> std::time::Duration,
        now: Instant,
    ) -> &Failing {
        self.in_flight = false;
        self.failures += 1;
        let retries = self.failing.as_ref().map_or(0, |f| f.retries) + 1;
        self.failing.insert(Failing { retries, error: Arc::new(error), retry_at: now + backoff(retries) })
    }
}

/// The failed upload attempts of a dirty block since its last successful one.
#[derive(Debug)]
pub(crate) struct Failing {
    /// Failed attempts in a row (at least 1).
    pub(crate) retries: u32,
    /// Why the last one failed.
    pub(crate) error: Arc<StoreError>,
    /// No new attempt before this.
    pub(crate) retry_at: Instant,
}

/// A block written only in part (always dirty): `Entry::data` holds the bytes of `valid`; the
/// other bytes are placeholders until the store's version is merged in.
#[derive(Debug)]
pub(crate) struct Partial {
    /// The byte ranges written.
    pub(crate) valid: ByteRanges,
    /// A read of the store's version to complete the block is in flight.
    pub(crate) filling: bool,
    /// Completing the block ahead of its upload failed: its upload completes it instead
    /// (with the upload's retries).
    pub(crate) fill_failed: bool,
    /// Generation of the write that made the block partial (fixed for the partial block's
    /// life, see [`Partial::born`]).
    born: u64,
}

impl Partial {
    /// A block holding `valid` only since the write of generation `born`, with no completion
    /// tried yet.
    fn new(valid: ByteRanges, born: u64) -> Partial {
        Partial { valid, filling: false, fill_failed: false, born }
    }

    /// Generation of the write that made the block partial. A completion read applies only to
    /// the partial block it was started for: while it was in flight the block may have been
    /// written whole, stored, evicted and written in part again, and then the read may predate
    /// the stored version.
    pub(crate) fn born(&self) -> u64 {
        self.born
    }
}

/// The cached blocks, to look at and to change within their phase. Adding and removing an
/// entry, and changing its phase, go through [`State`].
///
/// Entries are boxed: a hash table is between 44 % and 88 % full, and its empty buckets cost
/// a pointer each instead of a whole entry (with a cache file, whose blocks' data is not in
/// memory, this bookkeeping is what a cached block costs).
#[derive(Debug, Default)]
pub(crate) struct Entries(HashMap<BlockNum, Box<Entry>>);

impl Entries {
    /// The entry of block `n`.
    pub(crate) fn get(&self, n: &BlockNum) -> Option<&Entry> {
        self.0.get(n).map(|e| &**e)
    }

    /// The entry of block `n`, to change.
    pub(crate) fn get_mut(&mut self, n: &BlockNum) -> Option<&mut Entry> {
        self.0.get_mut(n).map(|e| &mut **e)
    }

    /// Whether block `n` is cached.
    pub(crate) fn contains_key(&self, n: &BlockNum) -> bool {
        self.0.contains_key(n)
    }

    /// Number of cached blocks.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The cached blocks and their entries.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&BlockNum, &Entry)> {
        self.0.iter().map(|(n, e)| (n, &**e))
    }
}

/// The evictable (clean) blocks by last use, in two lists so that protected blocks go last.
#[derive(Debug)]
struct Lru {
    /// Unprotected blocks.
    lo: BTreeMap<u64, BlockNum>,
    /// Protected blocks (numbers below `num_protected`).
    hi: BTreeMap<u64, BlockNum>,
    tick: u64,
    num_protected: u32,
}

impl Lru {
    /// Adds block `n` as the most recently used; returns its key.
    fn insert(&mut self, n: BlockNum) -> u64 {
        self.tick += 1;
        if n < self.num_protected { &mut self.hi } else { &mut self.lo }.insert(self.tick, n);
        self.tick
    }

    fn remove(&mut self, key: u64) {
        self.lo.remove(&key);
        self.hi.remove(&key);
    }

    /// The least recently used unprotected block, else protected one.
    fn oldest(&self) -> Option<BlockNum> {
        self.lo.values().next().or_else(|| self.hi.values().next()).copied()
    }
}

/// The write-back scheduler's work in flight, each kind at most `threads` at a time.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// Uploads.
    pub(crate) uploads: usize,
    /// Partial blocks being completed ahead of their upload.
    pub(crate) fills: usize,
    /// Foreground reads of the store (misses) in flight: with uploads, what tells whether the
    /// link is idle (see `prefetch::on_miss`).
    pub(crate) reads: usize,
}

/// Callers waiting on write-back as a whole (a flush or sync write waiting for one block marks
/// it [`Upload::urgent`] instead). Counted while they wait: uploads hurry meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// Writers waiting for room.
    pub(crate) room: usize,
    /// `flush(None)` calls in progress.
    pub(crate) flush_all: usize,
}

/// All bookkeeping, under one mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) entries: Entries,
    lru: Lru,
    /// The dirty blocks.
    dirty: HashSet<BlockNum>,
    /// The dirty blocks waiting for an upload (all but those being uploaded or completed).
    pub(crate) sched: Schedule,
    /// How long a block stays dirty before it is due for upload.
    write_delay: Duration,
    /// Set when a change needs the write-back scheduler to look again (see
    /// [`State::take_kick`]).
    kick: bool,
    /// Failed upload attempts so far, of any block: a flush watching for failures looks at its
    /// blocks only when this grew.
    pub(crate) upload_failures: u64,
    pub(crate) in_flight: InFlight,
    pub(crate) waiters: Waiters,
    /// Set by shutdown: the scheduler exits.
    pub(crate) stopped: bool,
    /// The newest generation handed out, to any block (see [`Entry::ver`]).
    generation: u64,
}

impl State {
    /// Nothing cached; blocks numbered below `num_protected` are evicted last; a block is due
    /// for upload `write_delay` after it turned dirty.
    pub(crate) fn new(num_protected: u32, write_delay: Duration) -> State {
        State {
            entries: Entries::default(),
            lru: Lru { lo: BTreeMap::new(), hi: BTreeMap::new(), tick: 0, num_protected },
            dirty: HashSet::new(),
            sched: Schedule::default(),
            write_delay,
            kick: false,
            upload_failures: 0,
            in_flight: InFlight::default(),
            waiters: Waiters::default(),
            stopped: false,
            generation: 0,
        }
    }

    /// Number of dirty blocks.
    pub(crate) fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// The dirty blocks.
    pub(crate) fn dirty_blocks(&self) -> impl Iterator<Item = BlockNum> + '_ {
        self.dirty.iter().copied()
    }

    /// When block `n`, dirty since `since`, is due for upload.
    pub(crate) fn due(&self, since: Instant) -> Instant {
        since + self.write_delay
    }

    /// Asks the write-back scheduler to look again when the lock is released.
    pub(crate) fn kick(&mut self) {
        self.kick = true;
    }

    /// Whether a change since the last call needs the write-back scheduler to look again (a
    /// block due earlier than it sleeps, or due now); clears the request.
    pub(crate) fn take_kick(&mut self) -> bool {
        std::mem::take(&mut self.kick)
    }

    /// Caches block `n` (not cached yet) as loading, with no data; returns its entry.
    pub(crate) fn insert_loading(&mut self, n: BlockNum, now: Instant) -> &mut Entry {
        debug_assert!(!self.entries.contains_key(&n), "block {n:#010x} is cached already");
        self.leave(n);
        let e = Entry {
            data: Held::Mem(None),
            ver: self.generation,
            last_access: now,
            slot: None,
            slot_image: None,
            state: BlockState::Loading,
        };
        self.entries.0.entry(n).insert_entry(Box::new(e)).into_mut()
    }

    /// Clean block `n`, reloaded from the cache file and not yet checked against the store,
    /// goes back to loading for the check (no longer evictable).
    pub(crate) fn start_verify(&mut self, n: BlockNum) {
        if let Some(BlockState::Clean(c)) = self.entries.get(&n).map(Entry::state) {
            self.lru.remove(c.lru_key);
            if let Some(e) = self.entries.get_mut(&n) {
                e.state = BlockState::Loading;
            }
        }
    }

    /// Block `n` now holds the stored version (ETag `etag`), or with `verify` a reloaded
    /// version to check on first read: clean, and evictable as the most recently used.
    pub(crate) fn set_clean(&mut self, n: BlockNum, etag: Option<Etag>, verify: bool) {
        if !self.entries.contains_key(&n) {
            return;
        }
        self.leave(n);
        let lru_key = self.lru.insert(n);
        if let Some(e) = self.entries.get_mut(&n) {
            e.state = BlockState::Clean(Clean { etag, verify, lru_key });
        }
    }

    /// A write of block `n` (cached or not, in any phase): it holds `data`, all of it or, with
    /// `valid`, those byte ranges. Dirty from now on: a block that was not is scheduled for
    /// upload after the write delay. Returns the entry, at its new generation.
    pub(crate) fn write(
        &mut self,
        n: BlockNum,
        data: Option<Bytes>,
        valid: Option<ByteRanges>,
        now: Instant,
    ) -> &mut Entry {
        if !self.entries.contains_key(&n) {
            self.insert_loading(n, now);
        }
        if !self.entries.get(&n).is_some_and(Entry::is_dirty) {
            self.leave(n);
            self.dirty.insert(n);
            if self.sched.wait_until(n, now + self.write_delay) {
                self.kick = true;
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let e = self.entries.get_mut(&n).expect("inserted above");
        match &mut e.state {
            BlockState::Dirty(d) => d.rewritten(valid, generation),
            state => *state = BlockState::Dirty(Box::new(Dirty::new(e.ver, valid, now, generation))),
        }
        e.data = Held::Mem(data);
        e.ver = generation;
        e.last_access = now;
        e
    }

    /// Marks block `n` as just used (`now`): a clean block becomes the most recently used.
    pub(crate) fn touch(&mut self, n: BlockNum, now: Instant) {
        let Some(e) = self.entries.get_mut(&n) else { return };
        e.last_access = now;
        if let BlockState::Clean(c) = &mut e.state {
            self.lru.remove(c.lru_key);
            c.lru_key = self.lru.insert(n);
        }
    }

    /// Takes block `n` out of the cache (clean or loading: dirty blocks are never evicted).
    pub(crate) fn remove(&mut self, n: BlockNum) -> Option<Entry> {
        debug_assert!(!self.entries.get(&n).is_some_and(Entry::is_dirty), "dirty block {n:#010x} evicted");
        self.leave(n);
        self.entries.0.remove(&n).map(|e| *e)
    }

    /// Undoes what block `n`'s current phase adds to the bookkeeping (LRU position, dirty
    /// count), before the block leaves that phase.
    fn leave(&mut self, n: BlockNum) {
        match self.entries.get(&n).map(Entry::state) {
            Some(BlockState::Clean(c)) => self.lru.remove(c.lru_key),
            Some(BlockState::Dirty(_)) => {
                self.dirty.remove(&n);
                self.sched.remove(n);
            }
            Some(BlockState::Loading) | None => {}
        }
    }

    /// The block to evict next: the least recently used unprotected one, else protected one.
    pub(crate) fn lru_oldest(&self) -> Option<BlockNum> {
        self.lru.oldest()
    }

    /// Number of evictable blocks.
    #[cfg(test)]
    pub(crate) fn lru_len(&self) -> usize {
        self.lru.lo.len() + self.lru.hi.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(st: &mut State, n: BlockNum) {
        st.insert_loading(n, Instant::now());
        st.set_clean(n, None, false);
    }

    /// Checks that the bookkeeping agrees with the entries' phases: every clean block is in
    /// the LRU once, the dirty count counts the dirty ones.
    fn check(st: &State) {
        let clean: HashSet<BlockNum> =
            st.entries.iter().filter(|(_, e)| matches!(e.state(), BlockState::Clean(_))).map(|(n, _)| *n).collect();
        let in_lru: Vec<BlockNum> = st.lru.lo.values().chain(st.lru.hi.values()).copied().collect();
        assert_eq!(in_lru.len(), clean.len(), "LRU {in_lru:?}, clean {clean:?}");
        assert_eq!(in_lru.iter().copied().collect::<HashSet<_>>(), clean);
        for (n, e) in st.entries.iter() {
            if let BlockState::Clean(c) = e.state() {
                let list = if *n < st.lru.num_protected { &st.lru.hi } else { &st.lru.lo };
                assert_eq!(list.get(&c.lru_key), Some(n));
            }
        }
        assert_eq!(st.dirty_count(), st.entries.iter().filter(|(_, e)| e.is_dirty()).count());
        // Without uploads in flight, every dirty block is scheduled, and only they are.
        for (n, e) in st.entries.iter() {
            assert_eq!(st.sched.contains(*n), e.is_dirty(), "block {n}");
        }
        st.sched.check();
    }

    #[test]
    fn lru_order_touch_and_protection() {
        let mut st = State::new(2, std::time::Duration::ZERO);
        let now = Instant::now();
        for n in [5, 1, 6, 0, 7] {
            clean(&mut st, n);
        }
        assert_eq!(st.lru_oldest(), Some(5));
        st.touch(5, now);
        assert_eq!(st.lru_oldest(), Some(6));
        st.remove(6);
        st.remove(7);
        assert_eq!(st.lru_oldest(), Some(5));
        // Written: dirty, so no longer evictable.
        st.write(5, None, None, now);
        // Only protected blocks left: oldest of them.
        assert_eq!(st.lru_oldest(), Some(1));
        assert_eq!(st.lru_len(), 2);
        st.remove(1);
        st.remove(0);
        assert_eq!(st.lru_oldest(), None);
        // Touching a non-evictable entry does not make it evictable.
        st.touch(5, now);
        assert_eq!(st.lru_oldest(), None);
        check(&st);
    }

    /// A block that turns dirty again after an upload starts from the generation the store
    /// holds, with its upload history of the earlier dirty spell gone; a partial block being
    /// completed keeps its completion when written in part again, and drops it when written
    /// whole.
    #[test]
    fn transitions_carry_what_each_phase_needs() {
        let mut st = State::new(0, std::time::Duration::ZERO);
        let now = Instant::now();
        assert_eq!(st.write(3, None, Some(ByteRanges::new(0, 4)), now).ver, 1);
        let e = st.entries.get_mut(&3).unwrap();
        assert_eq!((e.stored_ver(), e.partial()), (0, Some(&ByteRanges::new(0, 4))));
        e.partial_mut().unwrap().filling = true;
        let e = st.write(3, None, Some(ByteRanges::new(0, 8)), now);
        assert_eq!((e.ver, e.partial_mut().map(|p| p.filling)), (2, Some(true)));
        let d = st.write(3, None, None, now).dirty_mut().unwrap();
        assert!(d.partial.is_none());
        d.upload.in_flight = true;
        d.upload.failed(StoreError::Injected, |_| std::time::Duration::ZERO, now);
        assert_eq!((d.upload.failures, d.upload.failing.as_ref().map(|f| f.retries)), (1, Some(1)));
        assert_eq!(st.dirty_count(), 1);
        st.set_clean(3, Some(Etag([1; 16])), false);
        let e = st.entries.get(&3).unwrap();
        assert_eq!((e.stored_ver(), e.failures(), e.etag(), e.is_dirty()), (3, 0, Some(Etag([1; 16])), false));
        assert_eq!((st.dirty_count(), st.lru_oldest()), (0, Some(3)));
        let e = st.write(3, None, None, now);
        assert_eq!((e.ver, e.stored_ver(), e.etag()), (4, 3, None));
        assert!(e.dirty().is_some_and(|d| d.upload.failing.is_none() && !d.upload.urgent && !d.upload.in_flight));
        assert_eq!((st.dirty_count(), st.lru_oldest()), (1, None));
        check(&st);
    }

    proptest::proptest! {
        /// Any sequence of transitions keeps the LRU and the dirty count in step with the
        /// entries' phases.
        #[test]
        fn bookkeeping_follows_the_phases(ops in proptest::collection::vec((0u8..6, 0u32..6), 0..60)) {
            let mut st = State::new(2, std::time::Duration::ZERO);
            let now = Instant::now();
            for (op, n) in ops {
                let cached = st.entries.contains_key(&n);
                let dirty = st.entries.get(&n).is_some_and(Entry::is_dirty);
                match op {
                    0 if !cached => drop(st.insert_loading(n, now)),
                    1 if cached => st.set_clean(n, None, n % 2 == 0),
                    2 => drop(st.write(n, None, (n % 2 == 0).then(|| ByteRanges::new(0, 1)), now)),
                    3 => st.touch(n, now),
                    4 if cached && !dirty => drop(st.remove(n)),
                    5 => st.start_verify(n),
                    _ => {}
                }
                check(&st);
            }
        }
    }
}
