//! Which bytes of a partially written block the cache holds: a short sorted list of disjoint
//! byte ranges. A block written only in part is accepted without reading it first; the bytes
//! outside these ranges are fetched from the store only when somebody needs them.

/// Most ranges one block may hold (the cache file has room for this many per entry). A write
/// that would make more first completes the block with one read.
pub const MAX_RANGES: usize = 8;

/// Disjoint, non-adjacent half-open byte ranges `[start, end)`, in increasing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteRanges(Vec<(u32, u32)>);

impl ByteRanges {
    /// One range (empty when `start >= end`).
    pub fn new(start: u32, end: u32) -> ByteRanges {
        let mut r = ByteRanges::default();
        r.insert(start, end);
        r
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no byte is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `[start, end)`, merging with ranges it overlaps or touches.
    pub fn insert(&mut self, start: u32, end: u32) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < s {
                out.push((a, b));
            } else if a > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            out.push((s, e));
        }
        self.0 = out;
    }

    /// The number of ranges after inserting `[start, end)`.
    pub fn len_after(&self, start: u32, end: u32) -> usize {
        let mut c = self.clone();
        c.insert(start, end);
        c.len()
    }

    /// True when every byte of `[start, end)` is held.
    pub fn covers(&self, start: u32, end: u32) -> bool {
        start >= end || self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }

    /// True when the whole block of `len` bytes is held.
    pub fn is_full(&self, len: u32) -> bool {
        self.covers(0, len)
    }

    /// Builds a list from stored ranges; `None` unless they are in order, disjoint,
    /// non-adjacent, non-empty and inside a block of `len` bytes.
    pub fn from_stored(ranges: &[(u32, u32)], len: u32) -> Option<ByteRanges> {
        let mut prev_end = None;
        for &(a, b) in ranges {
            if a >= b || b > len || prev_end.is_some_and(|p| a <= p) {
                return None;
            }
            prev_end = Some(b);
        }
        Some(ByteRanges(ranges.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Matches a per-byte model: after any inserts, exactly the inserted bytes are held, and
        /// the list stays sorted, disjoint and non-adjacent.
        #[test]
        fn matches_a_byte_model(ins in proptest::collection::vec((0u32..64, 0u32..64), 0..12)) {
            let mut r = ByteRanges::default();
            let mut model = [false; 64];
            for (a, b) in ins {
                r.insert(a, b);
                for m in model.iter_mut().take(b as usize).skip(a as usize) {
                    *m = true;
                }
            }
            for i in 0..64u32 {
                prop_assert_eq!(r.covers(i, i + 1), model[i as usize], "byte {}", i);
            }
            prop_assert_eq!(r.is_full(64), model.iter().all(|&m| m));
            prop_assert!(ByteRanges::from_stored(r.ranges(), 64).is_some());
        }
    }

    #[test]
    fn merges_touching_and_rejects_bad_stored_lists() {
        let mut r = ByteRanges::new(10, 20);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[(10, 30)]);
        r.insert(0, 5);
        assert_eq!(r.len_after(5, 10), 1);
        assert_eq!(r.len_after(40, 50), 3);
        assert!(!r.covers(4, 11));
        assert!(r.covers(12, 30));
        assert!(ByteRanges::from_stored(&[(5, 5)], 64).is_none());
        assert!(ByteRanges::from_stored(&[(0, 5), (5, 9)], 64).is_none());
        assert!(ByteRanges::from_stored(&[(6, 9), (0, 5)], 64).is_none());
        assert!(ByteRanges::from_stored(&[(0, 65)], 64).is_none());
    }
}
