//! Fetching ahead of the reader: the blocks the read-ahead detector asks for after a sequential
//! run, and, when a miss finds the link idle, the `--readAhead` blocks after it. The dependent,
//! mostly forward reads of a file system after a mount (inode tables, directories, small files)
//! are not sequential, but nearby, so fetching the neighbours of a miss while nothing else uses
//! the link turns the next few of them into hits.
//!
//! Fetches run in the background on the read-ahead pool; each claims its entry (loading) first,
//! so a reader arriving next waits for the fetch instead of starting its own.

use crate::shared::Shared;
use s3b_store::BlockNum;
use std::sync::Arc;
use tokio::time::Instant;

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
