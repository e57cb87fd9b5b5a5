//! The write-back schedule: the dirty blocks waiting for their upload (or for the read that
//! completes a partially written block ahead of it), ordered so that every step costs
//! O(log n) whatever the backlog.
//!
//! A waiting block is in exactly one place:
//! * *waiting*: due at a time (when it has been dirty for the write delay), ordered by that
//!   time; when write-back hurries (a writer waits for room, a flush of everything, the cache
//!   filling with dirty blocks) the earliest of them start before their time;
//! * *backing off*: its last upload failed, so it is not retried before a time, even in a hurry;
//! * *ready*: due now, in one of two lanes (upload, or completion of a partial block ahead of its
//!   upload), first come first served;
//! * *parked*: due, but a reader is completing it; it comes back when that read ends.
//!
//! The scheduler sleeps until the earliest time of the first two ([`Schedule::next_deadline`])
//! or until an event makes a block due at once (a flush, a sync write, a slot freed); nothing
//! here is ever walked as a whole. A block being uploaded or completed is in no place: the task
//! doing it puts it back when the block is still dirty afterwards.

use s3b_store::BlockNum;
use std::collections::{BTreeSet, HashMap};
use tokio::time::Instant;

/// The two lanes of ready blocks; each has its own pool of `threads` tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// To upload.
    Upload,
    /// Partial, to complete with a read of the stored version before its upload.
    Fill,
}

/// Where a block is in the schedule; the `u64` is its arrival number (ties and FIFO order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Waiting(Instant, u64),
    Backoff(Instant, u64),
    Ready(Lane, u64),
    Parked,
}

/// The two places with a time: *waiting* and *backing off*.
#[derive(Clone, Copy, Debug)]
enum Timer {
    Due,
    Backoff,
}

/// The schedule (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Arrival numbers handed out.
    seq: u64,
    place: HashMap<BlockNum, Place>,
    waiting: BTreeSet<(Instant, u64, BlockNum)>,
    backoff: BTreeSet<(Instant, u64, BlockNum)>,
    upload: BTreeSet<(u64, BlockNum)>,
    fill: BTreeSet<(u64, BlockNum)>,
}

impl Schedule {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn lane(&mut self, lane: Lane) -> &mut BTreeSet<(u64, BlockNum)> {
        match lane {
            Lane::Upload => &mut self.upload,
            Lane::Fill => &mut self.fill,
        }
    }

    /// Takes block `n` out of the schedule (it starts, or is no longer dirty). True when it
    /// was scheduled.
    pub(crate) fn remove(&mut self, n: BlockNum) -> bool {
        let Some(p) = self.place.remove(&n) else { return false };
        match p {
            Place::Waiting(t, s) => drop(self.waiting.remove(&(t, s, n))),
            Place::Backoff(t, s) => drop(self.backoff.remove(&(t, s, n))),
            Place::Ready(lane, s) => drop(self.lane(lane).remove(&(s, n))),
            Place::Parked => {}
        }
        true
    }

    /// Puts block `n` in the timed place `timer` at `at` (moved there if it was elsewhere).
    /// True when `at` is now the earliest deadline: the scheduler, which sleeps until the
    /// earliest one, must look again.
    fn place_timed(&mut self, n: BlockNum, at: Instant, timer: Timer) -> bool {
        self.remove(n);
        let s = self.next_seq();
        let (place, set) = match timer {
            Timer::Due => (Place::Waiting(at, s), &mut self.waiting),
            Timer::Backoff => (Place::Backoff(at, s), &mut self.backoff),
        };
        set.insert((at, s, n));
        self.place.insert(n, place);
        self.next_deadline() == Some(at)
    }

    /// Block `n` is due at `due`. True when that is now the earliest deadline.
    pub(crate) fn wait_until(&mut self, n: BlockNum, due: Instant) -> bool {
        self.place_timed(n, due, Timer::Due)
    }

    /// Block `n`'s upload failed: not to be tried again before `at`. True when that is now the
    /// earliest deadline.
    pub(crate) fn back_off(&mut self, n: BlockNum, at: Instant) -> bool {
        self.place_timed(n, at, Timer::Backoff)
    }

    /// Block `n` is due now, last in `lane`.
    pub(crate) fn ready(&mut self, n: BlockNum, lane: Lane) {
        self.remove(n);
        let s = self.next_seq();
        self.place.insert(n, Place::Ready(lane, s));
        self.lane(lane).insert((s, n));
    }

    /// Somebody waits for block `n`: a waiting block is due now (a block backing off keeps its
    /// time; one ready, parked or not scheduled stays as it is). True when it moved.
    pub(crate) fn hurry(&mut self, n: BlockNum) -> bool {
        if !matches!(self.place.get(&n), Some(Place::Waiting(..))) {
            return false;
        }
        self.ready(n, Lane::Upload);
        true
    }

    /// Block `n` waits for a reader's completion of it, outside every lane.
    pub(crate) fn park(&mut self, n: BlockNum) {
        self.remove(n);
        self.place.insert(n, Place::Parked);
    }

    /// A completion of block `n` ended: a parked block is ready to upload again. True when it
    /// was parked.
    pub(crate) fn unpark(&mut self, n: BlockNum) -> bool {
        if self.place.get(&n) != Some(&Place::Parked) {
            return false;
        }
        self.ready(n, Lane::Upload);
        true
    }

    /// Moves every block whose time has come (`<= now`) to a ready lane, which `lane_of` picks,
    /// earliest first. Costs O(log n) per block moved.
    pub(crate) fn promote(&mut self, now: Instant, mut lane_of: impl FnMut(BlockNum) -> Lane) {
        for from_backoff in [false, true] {
            loop {
                let set = if from_backoff { &self.backoff } else { &self.waiting };
                let Some(&(t, _, n)) = set.first() else { break };
                if t > now {
                    break;
                }
                let lane = lane_of(n);
                self.ready(n, lane);
            }
        }
    }

    /// The first ready block of `lane`.
    pub(crate) fn first(&self, lane: Lane) -> Option<BlockNum> {
        match lane {
            Lane::Upload => self.upload.first(),
            Lane::Fill => self.fill.first(),
        }
        .map(|&(_, n)| n)
    }

    /// The waiting block due first (to start early when write-back hurries).
    pub(crate) fn earliest_waiting(&self) -> Option<BlockNum> {
        self.waiting.first().map(|&(_, _, n)| n)
    }

    /// When the next waiting or backing-off block is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let w = self.waiting.first().map(|&(t, ..)| t);
        let b = self.backoff.first().map(|&(t, ..)| t);
        match (w, b) {
            (Some(w), Some(b)) => Some(w.min(b)),
            (w, b) => w.or(b),
        }
    }

    /// Whether block `n` is scheduled (anywhere).
    pub(crate) fn contains(&self, n: BlockNum) -> bool {
        self.place.contains_key(&n)
    }

    /// Number of blocks scheduled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.place.len()
    }

    /// Checks that every block is in exactly the set its place names.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let sets = self.waiting.len() + self.backoff.len() + self.upload.len() + self.fill.len();
        let parked = self.place.values().filter(|p| **p == Place::Parked).count();
        assert_eq!(sets + parked, self.place.len(), "each block in one set");
        for (&n, &p) in &self.place {
            let found = match p {
                Place::Waiting(t, s) => self.waiting.contains(&(t, s, n)),
                Place::Backoff(t, s) => self.backoff.contains(&(t, s, n)),
                Place::Ready(lane, s) => match lane {
                    Lane::Upload => self.upload.contains(&(s, n)),
                    Lane::Fill => self.fill.contains(&(s, n)),
                },
                Place::Parked => true,
            };
            assert!(found, "block {n} at {p:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn due_blocks_come_out_in_time_order_and_ready_ones_first_come_first_served() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert!(s.wait_until(5, at(t0, 30)), "first deadline");
        assert!(!s.wait_until(6, at(t0, 40)), "later deadline: no need to wake the scheduler");
        assert!(s.wait_until(7, at(t0, 10)), "earlier deadline");
        assert!(!s.back_off(8, at(t0, 20)));
        assert_eq!(s.next_deadline(), Some(at(t0, 10)));
        s.promote(at(t0, 25), |n| if n == 8 { Lane::Fill } else { Lane::Upload });
        assert_eq!((s.first(Lane::Upload), s.first(Lane::Fill)), (Some(7), Some(8)));
        assert_eq!(s.next_deadline(), Some(at(t0, 30)));
        assert_eq!(s.earliest_waiting(), Some(5));
        // A flush of 6 makes it due now, behind 7; one backing off keeps its time.
        assert!(s.hurry(6));
        assert!(!s.back_off(9, at(t0, 500)));
        assert!(!s.hurry(9));
        assert!(s.remove(7));
        assert_eq!(s.first(Lane::Upload), Some(6));
        s.park(6);
        assert_eq!(s.first(Lane::Upload), None);
        assert!(s.unpark(6) && !s.unpark(6));
        assert_eq!(s.first(Lane::Upload), Some(6));
        s.check();
        assert_eq!(s.len(), 4);
    }

    proptest::proptest! {
        /// Against a model (a list of places): the schedule answers the same first blocks,
        /// earliest deadline and promotions, and keeps each block in one set.
        #[test]
        fn schedule_matches_a_model(ops in proptest::collection::vec((0u8..8, 0u32..8, 0u64..50), 0..80)) {
            let t0 = Instant::now();
            let mut s = Schedule::default();
            // The model: block -> (kind 0 waiting / 1 backoff / 2 upload / 3 fill / 4 parked, time, seq).
            let mut m: HashMap<BlockNum, (u8, u64, u64)> = HashMap::new();
            let mut seq = 0u64;
            let mut clock = 0u64;
            for (op, n, ms) in ops {
                let mut next = || { seq += 1; seq };
                match op {
                    0 => { s.wait_until(n, at(t0, ms)); m.insert(n, (0, ms, next())); }
                    1 => { s.back_off(n, at(t0, ms)); m.insert(n, (1, ms, next())); }
                    2 => { s.ready(n, Lane::Upload); m.insert(n, (2, 0, next())); }
                    3 => {
                        let was = m.get(&n).is_some_and(|p| p.0 == 0);
                        proptest::prop_assert_eq!(s.hurry(n), was);
                        if was { m.insert(n, (2, 0, next())); }
                    }
                    4 => { s.park(n); m.insert(n, (4, 0, 0)); }
                    5 => {
                        let was = m.get(&n).is_some_and(|p| p.0 == 4);
                        proptest::prop_assert_eq!(s.unpark(n), was);
                        if was { m.insert(n, (2, 0, next())); }
                    }
                    6 => { proptest::prop_assert_eq!(s.remove(n), m.remove(&n).is_some()); }
                    _ => {
                        clock = clock.max(ms);
                        s.promote(at(t0, clock), |b| if b % 2 == 0 { Lane::Fill } else { Lane::Upload });
                        // Promotion order: waiting by (time, seq), then backoff likewise.
                        let mut due: Vec<(u8, u64, u64, BlockNum)> = m.iter()
                            .filter(|(_, p)| p.0 <= 1 && p.1 <= clock)
                            .map(|(&b, p)| (p.0, p.1, p.2, b)).collect();
                        due.sort();
                        for (_, _, _, b) in due {
                            let kind = if b % 2 == 0 { 3 } else { 2 };
                            m.insert(b, (kind, 0, next()));
                        }
                    }
                }
                s.check();
                let first = |kind: u8| m.iter().filter(|(_, p)| p.0 == kind).min_by_key(|(_, p)| p.2).map(|(&b, _)| b);
                proptest::prop_assert_eq!(s.first(Lane::Upload), first(2));
                proptest::prop_assert_eq!(s.first(Lane::Fill), first(3));
                let deadline = m.values().filter(|p| p.0 <= 1).map(|p| p.1).min().map(|ms| at(t0, ms));
                proptest::prop_assert_eq!(s.next_deadline(), deadline);
                let earliest = m.iter().filter(|(_, p)| p.0 == 0).min_by_key(|(_, p)| (p.1, p.2)).map(|(&b, _)| b);
                proptest::prop_assert_eq!(s.earliest_waiting(), earliest);
                proptest::prop_assert_eq!(s.len(), m.len());
                for b in 0..8 { proptest::prop_assert_eq!(s.contains(b), m.contains_key(&b)); }
            }
        }
    }
}
