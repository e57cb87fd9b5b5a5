//! The write-back engine: starts the uploads of due dirty blocks (at most `threads` at a time),
//! completes partially written blocks ahead of their upload (at most `threads` more), retries
//! failed uploads with backoff, and evicts clean blocks idle past the timeout.
//!
//! What it promises: every dirty block is uploaded, however often its upload fails (data
//! accepted by a write is never dropped), no sooner than the write delay unless somebody waits
//! for it or the cache fills with dirty blocks; and each step costs O(log n) in the number of
//! dirty blocks. The scheduler never walks the dirty blocks: they wait in the
//! [`Schedule`](crate::schedule::Schedule), ordered by due time, and the scheduler sleeps until
//! the earliest due time or until an event makes a block due now (a write under pressure, a
//! flush, a sync write, a finished upload or completion, uploads being allowed, the last
//! foreground read ending). There is no periodic poll. While a foreground read (a miss) is in
//! flight, uploads use only half the threads, so reads do not wait behind write-back.

use crate::schedule::Lane;
use crate::shared::{Shared, Source};
use crate::state::{Entries, Entry, State};
use s3b_store::{BlockData, BlockNum};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// While a foreground read is in flight, at most 1/this of the upload threads are busy: half,
/// which leaves the read the server and link mostly to itself while the write-back still runs
/// at about the rate one round trip per block allows.
const UPLOAD_SHARE_WHILE_READING: usize = 2;

/// First retry delay after a failed upload; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longest delay between two attempts to upload a block.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How long to wait before the next attempt to upload a block after `retries` failures in a
/// row.
pub(crate) fn retry_delay(retries: u32) -> Duration {
    // The shift is capped only so that it cannot overflow: 50 ms << 7 already passes the 5 s
    // ceiling.
    FIRST_RETRY_DELAY.saturating_mul(1 << retries.min(10)).min(MAX_RETRY_DELAY)
}

/// The lane a block whose time has come goes to: a block still partial (and not failed to
/// complete) is completed on the fill pool first, so an upload slot is only held for a PUT.
fn lane_of(entries: &Entries, n: BlockNum) -> Lane {
    let partial = entries.get(&n).and_then(|e| e.dirty()?.partial.as_ref());
    if partial.is_some_and(|p| !p.fill_failed) { Lane::Fill } else { Lane::Upload }
}

/// Puts dirty block `n`, no longer uploaded or completed, back into the schedule: due now
/// when somebody waits for it or it was due already, else at its due time.
pub(crate) fn reschedule(st: &mut State, n: BlockNum, now: Instant) {
    let Some(d) = st.entries.get(&n).and_then(Entry::dirty) else { return };
    let due = st.due(d.since);
    if d.upload.urgent || due <= now {
        let lane = if due <= now { lane_of(&st.entries, n) } else { Lane::Upload };
        st.sched.ready(n, lane);
        st.kick();
    } else if st.sched.wait_until(n, due) {
        st.kick();
    }
}

/// The scheduler task (spawned by the cache): runs until the cache stops.
pub(crate) async fn run(sh: Arc<Shared>) {
    loop {
        let notified = sh.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Recovered dirty blocks wait until uploads are allowed: that is an event too.
        let allowed = sh.file.as_ref().map(|f| f.allowed());
        let now = Instant::now();
        let mut jobs = Vec::new();
        let mut fills = Vec::new();
        let (next, paused) = {
            let mut st = sh.state.lock();
            if st.stopped {
                return;
            }
            st.take_kick();
            let paused = sh.file.as_ref().is_some_and(|f| !f.uploads_allowed());
            if !paused {
                start_due(&sh, &mut st, now, &mut jobs, &mut fills);
            }
            // While paused, due blocks wait for uploads to be allowed, not for their time.
            let mut next = if paused { None } else { st.sched.next_deadline() };
            if let Some(t) = sh.cfg.timeout {
                next = evict_idle(&sh, &mut st, now, t).map_or(next, |idle| Some(next.map_or(idle, |n| n.min(idle))));
            }
            (next, paused)
        };
        for (n, partial) in jobs {
            tokio::spawn(upload(sh.clone(), n, partial));
        }
        for n in fills {
            tokio::spawn(fill_ahead(sh.clone(), n));
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let allowed = async {
            match allowed {
                Some(a) if paused => a.await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = sleep => {}
            _ = allowed => {}
        }
    }
}

/// Starts what is due, while slots are free: completions of partial blocks on the fill pool,
/// uploads on the upload pool (when write-back hurries, waiting blocks too, earliest first).
fn start_due(sh: &Shared, st: &mut State, now: Instant, jobs: &mut Vec<(BlockNum, bool)>, fills: &mut Vec<BlockNum>) {
    let threads = sh.cfg.threads;
    {
        let State { sched, entries, .. } = &mut *st;
        sched.promote(now, |n| lane_of(entries, n));
    }
    while st.in_flight.fills < threads
        && let Some(n) = st.sched.first(Lane::Fill)
    {
        match st.entries.get(&n).and_then(|e| e.dirty()?.partial.as_ref()) {
            // Completed meanwhile (written whole), or its completion failed: upload it.
            None => st.sched.ready(n, Lane::Upload),
            Some(p) if p.fill_failed => st.sched.ready(n, Lane::Upload),
            // A reader completes it: it comes back when that read ends.
            Some(p) if p.filling => st.sched.park(n),
            Some(_) => {
                st.sched.remove(n);
                st.in_flight.fills += 1;
                fills.push(n);
            }
        }
    }
    let hurry = sh.hurried(st);
    // A foreground read waiting on the store (a miss) goes first: while one is in flight, new
    // uploads start only up to a share of the threads, so the read does not queue behind a
    // full set of PUTs at the server and on the link. A flush of everything, or sync writes,
    // take all the threads.
    let cap = if st.in_flight.reads > 0 && st.waiters.flush_all == 0 && !sh.cfg.sync {
        threads.div_ceil(UPLOAD_SHARE_WHILE_READING)
    } else {
        threads
    };
    while st.in_flight.uploads < cap {
        let Some(n) = st.sched.first(Lane::Upload).or_else(|| hurry.then(|| st.sched.earliest_waiting()).flatten())
        else {
            break;
        };
        st.sched.remove(n);
        let Some(d) = st.entries.get_mut(&n).and_then(Entry::dirty_mut) else { continue };
        d.upload.in_flight = true;
        let partial = d.partial.is_some();
        st.in_flight.uploads += 1;
        jobs.push((n, partial));
    }
}

/// Evicts clean blocks idle for `timeout`, least recently used first; returns when the next
/// one is due to go. With no clean block cached, the first one to become clean can go no
/// sooner than `timeout` from now.
fn evict_idle(sh: &Shared, st: &mut State, now: Instant, timeout: Duration) -> Option<Instant> {
    while let Some(victim) = st.lru_oldest() {
        let idle = st.entries.get(&victim).map_or(now, |e| e.last_access) + timeout;
        if idle > now {
            return Some(idle);
        }
        sh.drop_entry(st, victim);
    }
    Some(now + timeout)
}

/// Completes a partial block that is due for upload, then puts it back in the schedule to
/// upload it. These reads run beside the uploads (at most `threads` of them), so an upload slot
/// is only ever held for a PUT: with random writes, where nearly every block is partial when
/// due, the GET of one block overlaps the PUTs of others instead of doubling each upload's
/// time. A failed completion is not retried here: the block goes the old way (completed in its
/// upload slot, with the upload's retries and backoff).
async fn fill_ahead(sh: Arc<Shared>, n: BlockNum) {
    let res = sh.fill(n).await;
    {
        let mut st = sh.state.lock();
        st.in_flight.fills -= 1;
        if let Err(err) = res {
            log::debug!("block cache: completing block {n:#010x} ahead of its upload failed: {err}");
            if let Some(p) = st.entries.get_mut(&n).and_then(Entry::partial_mut) {
                p.fill_failed = true;
            }
        }
        if !st.sched.contains(n) && !st.entries.get(&n).and_then(Entry::dirty).is_none_or(|d| d.upload.in_flight) {
            reschedule(&mut st, n, Instant::now());
        }
    }
    sh.wake.notify_one();
}

/// Uploads block `n`'s data from `src` (read from the cache file first when it is there, before
/// anything is awaited).
async fn put(sh: &Shared, n: BlockNum, src: Option<Source>) -> s3b_store::Result<Option<s3b_store::Etag>> {
    // A dirty block's data is in memory or in its slot, never without both.
    let Some(src) = src else {
        return Err(s3b_store::StoreError::io(
            format!("block cache: block {n:#010x} has no data to upload"),
            std::io::Error::other("slot out of its entry"),
        ));
    };
    let data = match sh.fetch(n, &src)? {
        Some(d) => d,
        // Dirty data is checked before it is kept in the file only: this is not reached.
        None => {
            return Err(s3b_store::StoreError::io(
                format!("block cache: block {n:#010x} in the cache file fails its checksum"),
                std::io::Error::other("checksum mismatch"),
            ));
        }
    };
    drop(src);
    sh.inner.write_block(n, data.map(BlockData::already_checked)).await
}

/// Why a block with an upload in flight is dirty: nothing but that upload makes it clean.
const ONLY_UPLOADS_CLEAN: &str = "a block being uploaded stays dirty";

/// Uploads one block version and settles the entry afterwards: the version the block has when
/// the upload starts (a block still `partial` is completed first, then its version at that
/// moment is uploaded).
async fn upload(sh: Arc<Shared>, n: BlockNum, partial: bool) {
    let filled = if partial { sh.fill(n).await } else { Ok(()) };
    let mut ver = 0;
    let res = match filled {
        Ok(()) => {
            // The data as it is now (its slot pinned only for the read, in `put`).
            let data = {
                let st = sh.state.lock();
                let e = st.entries.get(&n).expect("dirty entries are never evicted");
                ver = e.ver;
                sh.source(e)
            };
            put(&sh, n, data).await
        }
        Err(e) => Err(e),
    };
    let clean = {
        let mut st = sh.state.lock();
        st.in_flight.uploads -= 1;
        let now = Instant::now();
        let e = st.entries.get_mut(&n).expect("dirty entries are never evicted");
        let upload = &mut e.dirty_mut().expect(ONLY_UPLOADS_CLEAN).upload;
        match res {
            Ok(etag) => {
                upload.succeeded(ver);
                if e.ver == ver {
                    e.last_access = now;
                    st.set_clean(n, etag, false);
                    true
                } else {
                    // Re-dirtied during the upload: the newer data goes up next.
                    reschedule(&mut st, n, now);
                    false
                }
            }
            Err(err) => {
                let f = upload.failed(err, retry_delay, now);
                log::warn!(
                    "block cache: upload of block {n:#010x} failed (attempt {}): {}; retrying in {:?}",
                    f.retries,
                    s3b_store::Chain(&*f.error),
                    f.retry_at - now
                );
                let at = f.retry_at;
                st.upload_failures += 1;
                st.sched.back_off(n, at);
                false
            }
        }
    };
    // The slot is free: the next upload may start while the file's record is updated. Waiters
    // (a flush, shutdown) hear of the change once the record says clean too.
    sh.wake.notify_one();
    if clean && let Err(e) = sh.persist(n).await {
        log::error!("block cache: can't record block {n:#010x} as clean in the cache file: {e}");
    }
    sh.changed.notify_waiters();
}
