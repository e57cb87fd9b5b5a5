//! Read-ahead: after `trigger` sequential block reads, fetch the next blocks in parallel.
//!
//! Upstream fetches a fixed `--readAhead` blocks, one worker at a time. Here the window starts
//! at `--readAhead` and doubles each time the reader reaches the previous batch, up to half the
//! cache (so read-ahead never evicts what the reader is about to use), and all blocks of a
//! batch are fetched at once on a bounded pool. Any non-sequential read resets the window.
//!
//! Besides, a miss while the link is idle fetches the `--readAhead` blocks after it
//! (`on_miss`): the dependent, mostly forward reads of a file system after a mount (inode
//! tables, directories, small files) are not sequential, but nearby.

use crate::shared::Shared;
use s3b_store::BlockNum;
use std::sync::Arc;
use tokio::time::Instant;

/// How far behind the last read block a read may be and still belong to the same run (the
/// pieces of one request complete out of order).
const REORDER_SLACK: BlockNum = 4;
/// Largest forward step, in blocks, that continues a sequential run.
const MAX_STEP: BlockNum = 2;

/// Sequential-read detector and window.
#[derive(Debug)]
pub struct ReadAhead {
    initial: u32,
    trigger: u32,
    cap: u32,
    last: Option<BlockNum>,
    run: u32,
    window: u32,
    /// Blocks below this were already requested.
    end: u64,
    /// The window doubles when the reader reaches this block.
    grow_at: u64,
}

impl ReadAhead {
    /// A detector with window `initial` (0 = off) after `trigger` sequential reads, growing to
    /// at most `cap` blocks.
    pub fn new(initial: u32, trigger: u32, cap: u32) -> ReadAhead {
        ReadAhead {
            initial,
            trigger,
            cap: cap.max(initial.min(1)),
            last: None,
            run: 0,
            window: initial,
            end: 0,
            grow_at: u64::MAX,
        }
    }

    /// Records a read of block `n` and returns the range of blocks to fetch now, if any.
    ///
    /// Reads arrive as the kernel sends them: a block is often read in several pieces, and the
    /// pieces of one large request are read in parallel, so they finish slightly out of order.
    /// Neither breaks a sequential run: another read of the last block, or of one just before
    /// it, is ignored, and a step of up to `MAX_STEP` blocks forward counts as sequential.
    pub fn on_read(&mut self, n: BlockNum, num_blocks: u64) -> Option<std::ops::Range<u64>> {
        if let Some(l) = self.last
            && n <= l
            && l - n <= REORDER_SLACK
        {
            return None;
        }
        let sequential = self.last.is_some_and(|l| n > l && n - l <= MAX_STEP);
        self.last = Some(n);
        if !sequential {
            self.run = 0;
            self.window = self.initial.min(self.cap);
            self.end = n as u64 + 1;
            self.grow_at = u64::MAX;
            return None;
        }
        self.run += 1;
        if self.initial == 0 || self.run < self.trigger.max(1) {
            return None;
        }
        let n = n as u64;
        let start = self.end.max(n + 1);
        // Grow each time the reader has consumed what was requested at the last growth.
        if n >= self.grow_at {
            self.window = (self.window.saturating_mul(2)).min(self.cap).max(1);
            self.grow_at = self.end;
        }
        let want = (n + 1 + self.window as u64).min(num_blocks);
        if want <= start {
            return None;
        }
        if self.grow_at == u64::MAX {
            self.grow_at = start;
        }
        self.end = want;
        Some(start..want)
    }

    /// The current window in blocks.
    pub fn window(&self) -> u32 {
        self.window
    }
}

/// Called after each foreground read: starts the fetches read-ahead asks for.
pub(crate) fn after_read(sh: &Arc<Shared>, n: BlockNum) {
    let range = sh.ra.lock().on_read(n, sh.inner.num_blocks());
    if let Some(range) = range {
        fetch(sh, range);
    }
}

/// Called before each foreground read: when block `n` is not cached and the link is idle (no
/// upload, no other miss and no read-ahead in flight), the `--readAhead` blocks after it that
/// are not cached are fetched beside it. A file system reading its metadata and small files
/// after a mount issues one dependent read after another, mostly forward within a few blocks
/// (inode table, directory, data allocated together), and each is a full round trip; fetching
/// the neighbours of a miss while nothing else uses the link turns the next few of those into
/// hits, at the cost of a few reads of blocks nobody asks for. A busy link (random reads in
/// parallel, write-back) gets none of them.
pub(crate) fn on_miss(sh: &Arc<Shared>, n: BlockNum) {
    let window = u64::from(sh.cfg.read_ahead);
    if window == 0 || sh.ra_pool.available_permits() < sh.cfg.threads {
        return;
    }
    {
        let st = sh.state.lock();
        if st.entries.contains_key(&n) || st.in_flight.uploads > 0 || st.in_flight.fills > 0 || st.in_flight.reads > 0 {
            return;
        }
    }
    let start = u64::from(n) + 1;
    fetch(sh, start..(start + window).min(sh.inner.num_blocks()));
}

/// Starts background fetches of the blocks of `range` not cached yet, on the read-ahead pool.
fn fetch(sh: &Arc<Shared>, range: std::ops::Range<u64>) {
    for b in range {
        // The range ends at most at the volume's last block, which is a BlockNum.
        let Ok(b) = BlockNum::try_from(b) else { break };
        {
            // Claim the entry now, so the reader arriving next waits for this fetch instead of
            // starting its own.
            let mut st = sh.state.lock();
            if st.entries.contains_key(&b) {
                continue;
            }
            if !sh.make_room(&mut st) {
                break;
            }
            st.insert_loading(b, Instant::now());
        }
        let sh = sh.clone();
        tokio::spawn(async move {
            // The pool is fair: fetches start in block order, at most `threads` at a time.
            let _permit = sh.ra_pool.clone().acquire_owned().await;
            if let Some(Err(e)) = sh.load(b, None).await {
                log::debug!("read-ahead of block {b:#010x} failed: {}", s3b_store::Chain(&e));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_a_block_and_reordered_reads_keep_the_run() {
        let mut ra = ReadAhead::new(4, 2, 64);
        // Each block read in two pieces, as with 128 KiB requests on 256 KiB blocks.
        assert_eq!(ra.on_read(10, 1000), None);
        assert_eq!(ra.on_read(10, 1000), None);
        assert_eq!(ra.on_read(11, 1000), None);
        assert_eq!(ra.on_read(11, 1000), None);
        assert_eq!(ra.on_read(12, 1000), Some(13..17));
        // Parallel pieces finishing out of order: 14 before 13.
        assert_eq!(ra.on_read(14, 1000), Some(17..23));
        assert_eq!(ra.on_read(13, 1000), None);
        assert_eq!(ra.on_read(15, 1000).map(|r| r.start), Some(23));
        assert!(ra.window() >= 8, "the run went on: window {}", ra.window());
    }

    #[test]
    fn triggers_grows_and_resets() {
        let mut ra = ReadAhead::new(4, 2, 64);
        assert_eq!(ra.on_read(10, 1000), None);
        assert_eq!(ra.on_read(11, 1000), None, "one sequential read is below the trigger");
        assert_eq!(ra.on_read(12, 1000), Some(13..17));
        // Reader inside the first batch: the window doubles and the next batch is requested.
        assert_eq!(ra.on_read(13, 1000), Some(17..22));
        assert_eq!(ra.window(), 8);
        let mut grew = ra.window();
        for n in 14..200 {
            ra.on_read(n, 1000);
            grew = grew.max(ra.window());
        }
        assert_eq!(grew, 64, "window capped");
        // A jump resets.
        assert_eq!(ra.on_read(500, 1000), None);
        assert_eq!(ra.window(), 4);
        assert_eq!(ra.on_read(501, 1000), None);
        assert_eq!(ra.on_read(502, 1000), Some(503..507));
        // Backwards beyond the slack resets too.
        assert_eq!(ra.on_read(400, 1000), None);
        assert_eq!(ra.on_read(401, 1000), None);
        assert_eq!(ra.on_read(402, 1000), Some(403..407));
        // A jump resets.
        assert_eq!(ra.on_read(500, 1000), None);
        assert_eq!(ra.window(), 4);
        assert_eq!(ra.on_read(501, 1000), None);
        assert_eq!(ra.on_read(502, 1000), Some(503..507));
    }

    #[test]
    fn off_and_end_of_volume() {
        let mut ra = ReadAhead::new(0, 2, 64);
        for n in 0..10 {
            assert_eq!(ra.on_read(n, 1000), None);
        }
        let mut ra = ReadAhead::new(4, 1, 64);
        ra.on_read(7, 10);
        assert_eq!(ra.on_read(8, 10), Some(9..10));
        assert_eq!(ra.on_read(9, 10), None);
    }
}
