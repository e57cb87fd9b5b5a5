//! The mount token, fenced: of several mounts of one volume that start at the same instant, at
//! most one comes up, and a mount that meets the errors S3 documents (503 SlowDown, 500, a
//! dropped connection) retries them and still comes up, or finds the other mount that holds
//! the volume.
//!
//! The token is the object `<prefix>s3backer-mounted` with the header
//! `x-amz-meta-s3backer-mount-token: <8 hex digits>` and a body of host name and date, as C
//! s3backer writes it, so each implementation sees the other's mounts. Reading it is a HEAD
//! (404 = not mounted). A plain "HEAD, then PUT if absent" lets two mounts that start together
//! both see "absent" and both write; both then come up, and two writers on one volume corrupt
//! it silently. [`set_token`] makes it a compare-and-swap that needs nothing from the server but
//! what every S3 server gives.
//!
//! **Conditional writes help, but cannot be trusted alone.** The token is created with
//! `PUT If-None-Match: *` and replaced with `PUT If-Match: <ETag of the token read>`, so a
//! server that honours them refuses (412) a mount that comes second by more than the server's
//! own check. But the answers do not tell how the server honours them: Garage 2.5 ignores both
//! headers (the PUT overwrites), and s3s-fs 0.14.1 checks and then writes, so two PUTs that
//! arrive together both succeed (docs/design-notes.md has the count). So every mount runs the
//! protocol below, which needs no conditional writes; the headers only make losers fail sooner.
//! It writes nothing but the token object and uses no LIST (least-privilege keys may not list).
//!
//! **What the server must promise.** (1) Read-after-write: a HEAD sees every write that took
//! effect before the HEAD was sent (AWS S3, Garage, Ceph and s3s-fs all do). (2) A write takes
//! effect, if it ever does, before its answer is sent and no later than [`ANSWER_LIMIT`] after
//! the client sent it — also when the client never sees the answer (a reset connection) or
//! gives up waiting (a timeout), or the answer is an error (a 500 may come after the write was
//! stored). A server that stores a write it answered with an error and spreads it minutes later
//! breaks (2), and with it the fence.
//!
//! **The protocol.** A mount writes a fresh random 31-bit value in each PUT it sends (all of
//! them are "ours"), and keeps `settled`: the instant after which no write of ours can still
//! take effect — the answer of a write answered with success, [`ANSWER_LIMIT`] after the sending
//! of one that failed in any way (each token request is given up after [`ANSWER_LIMIT`], and by
//! (2) it can take effect no later). Every step is a HEAD, sent at time `h`, and what it found:
//!
//! - one of our values: if `h` ≥ `settled` + [`SETTLE_WAIT`], **we hold the volume**; else wait
//!   until then and HEAD again (the read-back).
//! - another mount's value (not absent, not the token `--force` was told to replace): if `h` ≥
//!   `settled`, **another mount holds it**: stop, leaving it; else wait until `settled` and HEAD
//!   again (a write of ours still on its way may yet replace it).
//! - absent (or the replaced token): PUT a fresh value of ours with the precondition above, sent
//!   no later than [`SETTLE_BOUND`] − [`ANSWER_LIMIT`] after `h`. A success, a refusal (412) or
//!   a failure (retried after a pause, with upstream's backoff and budget) all lead to the next
//!   HEAD; a success first waits for the read-back.
//!
//! So every write a mount makes takes effect within [`SETTLE_BOUND`] of a HEAD of its own that
//! found the volume free for it, and it comes up only on a read-back that finds its value at
//! least [`SETTLE_WAIT`] after all its writes settled. A 503, a 500, a lost answer or a late
//! application of an earlier attempt only moves `settled` and costs a retry; nothing is
//! uncertain at the end.
//!
//! **Why at most one mount comes up.** Let W come up at its read-back `r_W`, M at `r_M`, and
//! `w` be the last write of W (all W's writes are ≤ `settled_W` ≤ `r_W` − [`SETTLE_WAIT`]). Since
//! `r_W` found W's value, no write took effect in (`w`, `r_W`]. (a) Nobody writes after `r_W`:
//! let `x` be the first write after `r_W`, by a mount Q ≠ W (W writes no more); Q sent it within
//! [`SETTLE_BOUND`] of a HEAD `q` that found the volume free for Q. If `q` > `w`, that HEAD found
//! W's value (nothing changed it between `w` and `x`), which is not free for Q; so `q` ≤ `w`
//! and `x` ≤ `w` + [`SETTLE_BOUND`] < `w` + [`SETTLE_WAIT`] ≤ `r_W`: a contradiction. (b) So M's
//! last write `m` took effect before `w`, and, by the same reasoning about `r_M`, no write took
//! effect in (`m`, `r_M`], so `r_M` < `w`: M came up first, and swapping the names in (a) shows
//! nobody wrote after `r_M` — but W wrote at `w` > `r_M`. So at most one comes up, and the value
//! of the one that came up stays until it clears it. Values are unique per mount (31 random
//! bits each), which the argument needs; clocks need only run at about the same rate (the
//! margin between [`SETTLE_BOUND`] and [`SETTLE_WAIT`] is far above any drift).
//!
//! **A mount that does not come up leaves no token of its own.** When a mount gives up (the
//! retry budget is spent, or an error that no retry heals), it waits until `settled`, then
//! clears any value of its own it finds ([`clear_token`]: HEAD, then `DELETE If-Match` with its
//! ETag where the server honours it, sent within the same bound). That is safe: by the argument
//! above a value of ours in place means no mount is up (a mount still waiting to read back finds
//! the volume free and writes again), so the next mount comes up without
//! `--reset-mounted-flag`. Unmount clears the token the same way.
//!
//! The price is [`SETTLE_WAIT`] added to every read-write mount (plus up to [`ANSWER_LIMIT`]
//! after a failed write), and a failure — never a double mount, never a token left behind by a
//! mount that did not come up — when the server does not answer within [`ANSWER_LIMIT`] for a
//! whole retry budget. Read-only and `--sharedDiskMode` mounts do not take part. C s3backer
//! only HEADs then PUTs: a race against one of its mounts is still the plain HEAD-then-PUT race.

use crate::request::{Req, Resp, hostname, httpdate_compact};
use crate::retry::{self, Backoff, RetryPauses};
use crate::stats::{add_time, bump};
use crate::{MOUNT_TOKEN_HEADER, S3Store};
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use s3b_store::{Chain, Result, SHARED_DISK_TOKEN, StoreError, TokenCondition, TokenObject, TokenState, TokenSwap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, sleep_until};

/// Longest time from sending a HEAD that found the volume free to the latest instant the write
/// it allows can take effect.
pub const SETTLE_BOUND: Duration = Duration::from_millis(2000);
/// How long each token request may take before it is given up, and (the server's promise) the
/// latest a write can take effect after it was sent.
pub const ANSWER_LIMIT: Duration = Duration::from_millis(1000);
/// How long after its writes settled a mount reads its token back before it comes up; longer
/// than [`SETTLE_BOUND`] by a margin.
pub const SETTLE_WAIT: Duration = Duration::from_millis(2500);
/// Most token writes one mount (or one clearing) sends before it gives up: reached only when
/// something keeps deleting the token this mount writes.
const MAX_WRITES: u32 = 16;

// A write sent at the latest allowed moment after its HEAD, taking effect at the latest the
// server may apply it, is still within the bound; and the wait exceeds the bound.
const _: () = assert!(ANSWER_LIMIT.as_millis() * 2 <= SETTLE_BOUND.as_millis());
const _: () = assert!(SETTLE_BOUND.as_millis() < SETTLE_WAIT.as_millis());

/// Whether to send preconditions with token writes: yes, until the server answers one with 501.
#[derive(Debug, Default)]
pub(crate) struct CondWrites(AtomicBool);

impl CondWrites {
    fn unsupported(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set_unsupported(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// Sets the mount token: `expected` (0: none; or the token `--force` replaces) → a value of this
/// mount's, `first` for the first write and fresh ones after. Returns [`TokenSwap::Done`] with
/// the value in place once this mount holds the volume, or [`TokenSwap::Changed`] with another
/// mount's token. On an error, no value of this mount's is left in place when it could be
/// cleared (see the module documentation).
pub async fn set_token<T: TokenObject + ?Sized>(
    obj: &T,
    pauses: RetryPauses,
    expected: u32,
    first: u32,
) -> Result<TokenSwap> {
    let mut run = Run::new(obj, pauses);
    match run.set(expected, first).await {
        Ok(swap) => Ok(swap),
        Err(e) => {
            run.abandon().await;
            Err(e)
        }
    }
}

/// Clears the mount token if it is one of `ours`: [`TokenSwap::Done`] (with 0) once it is gone,
/// [`TokenSwap::Changed`] when another mount's token is there (left in place).
pub async fn clear_token<T: TokenObject + ?Sized>(obj: &T, pauses: RetryPauses, ours: &[u32]) -> Result<TokenSwap> {
    Run::new(obj, pauses).clear(ours).await
}

/// One run of the protocol.
struct Run<'a, T: ?Sized> {
    obj: &'a T,
    pauses: RetryPauses,
    backoff: Backoff,
    /// Every value this run sent in a PUT.
    ours: Vec<u32>,
    /// No write of this run can take effect after this instant.
    settled: Instant,
    /// Whether to send preconditions.
    conditions: bool,
    /// Writes sent.
    writes: u32,
    /// How `If-Match` carries the ETag (see [`IfMatchForm`]).
    if_match: IfMatchForm,
    /// The token and ETag that the last `If-Match` write was refused over.
    refused_over: Option<(u32, Option<String>)>,
}

/// How a token write replacing a token carries its ETag. A refused `If-Match` while the token
/// and its ETag stay as they were means the server compares differently, not that another
/// mount wrote: Ceph's RGW 16 compares a PUT's `If-Match` with the stored ETag without quotes,
/// so the quoted ETag its own HEAD returns never matches. The next form is tried then: the ETag
/// unquoted, then no header at all (the protocol does not need it; it only makes losers fail
/// sooner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfMatchForm {
    /// The ETag as the HEAD returned it.
    AsGiven,
    /// The ETag without its quotes.
    Unquoted,
    /// No `If-Match`.
    Omitted,
}

/// A fresh token value that is none of `taken` (nor 0 or the shared-disk token).
fn fresh_token(taken: &[u32]) -> u32 {
    loop {
        let t = rand::random::<u32>() & 0x7fff_ffff;
        if t != 0 && t != SHARED_DISK_TOKEN && !taken.contains(&t) {
            return t;
        }
    }
}

impl<'a, T: TokenObject + ?Sized> Run<'a, T> {
    fn new(obj: &'a T, pauses: RetryPauses) -> Self {
        Run {
            obj,
            pauses,
            backoff: pauses.backoff(),
            ours: Vec::new(),
            settled: Instant::now(),
            conditions: obj.conditional_writes(),
            writes: 0,
            if_match: IfMatchForm::AsGiven,
            refused_over: None,
        }
    }

    /// Runs one token request, given up after [`ANSWER_LIMIT`].
    async fn timed<R>(fut: impl Future<Output = Result<R>>) -> Result<R> {
        match tokio::time::timeout(ANSWER_LIMIT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::TimedOut(
                format!("no answer to a mount token request in {} ms", ANSWER_LIMIT.as_millis()).into(),
            )),
        }
    }

    /// Pauses before the next attempt after `e`, or gives up with it (not worth retrying, or the
    /// retry budget is spent).
    async fn retry(&mut self, what: &str, e: StoreError) -> Result<()> {
        let pause = if retry::is_retryable(&e) { self.backoff.next_pause() } else { None };
        let Some(pause) = pause else { return Err(e) };
        log::warn!("{what} of the mount token: {}; retrying in {} ms", Chain(&e), pause.as_millis());
        self.obj.retrying(pause);
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// A failed write may take effect until [`ANSWER_LIMIT`] after `sent`.
    fn unsettled_since(&mut self, sent: Instant) {
        self.settled = self.settled.max(Instant::now().max(sent + ANSWER_LIMIT));
    }

    /// The precondition for a write over what `cur` found.
    fn condition(&self, cur: &TokenState) -> TokenCondition {
        match (&cur.etag, cur.token) {
            _ if !self.conditions => TokenCondition::None,
            (Some(etag), _) => match self.if_match {
                IfMatchForm::AsGiven => TokenCondition::Is(etag.clone()),
                IfMatchForm::Unquoted => TokenCondition::Is(etag.trim_matches('"').to_string()),
                IfMatchForm::Omitted => TokenCondition::None,
            },
            (None, 0) => TokenCondition::Absent,
            (None, _) => TokenCondition::None,
        }
    }

    /// Whether a write may still be sent after a HEAD sent at `head` (so that it takes effect
    /// within [`SETTLE_BOUND`] of it); otherwise retries, or fails.
    async fn in_time(&mut self, head: Instant, what: &str) -> Result<bool> {
        if Instant::now() <= head + (SETTLE_BOUND - ANSWER_LIMIT) {
            return Ok(true);
        }
        let late = StoreError::TimedOut(
            format!("the HEAD of the mount token took more than {} ms", (SETTLE_BOUND - ANSWER_LIMIT).as_millis())
                .into(),
        );
        self.retry(what, late).await?;
        Ok(false)
    }

    fn count_write(&mut self) -> Result<()> {
        self.writes += 1;
        if self.writes > MAX_WRITES {
            return Err(StoreError::Conflict(
                format!(
                    "the mount token did not settle: it changed under this mount {MAX_WRITES} times (is another \
                     program deleting it?)"
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// HEADs the token until a HEAD is answered, each failure retried under the retry budget;
    /// returns when the answered HEAD was sent (what it shows was so at that moment or later)
    /// and what it showed.
    async fn head_answered(&mut self) -> Result<(Instant, TokenState)> {
        loop {
            let sent = Instant::now();
            match Self::timed(self.obj.head_token()).await {
                Ok(cur) => return Ok((sent, cur)),
                Err(e) => self.retry("HEAD", e).await?,
            }
        }
    }

    async fn set(&mut self, expected: u32, first: u32) -> Result<TokenSwap> {
        loop {
            let (head, cur) = self.head_answered().await?;
            if self.ours.contains(&cur.token) {
                let due = self.settled + SETTLE_WAIT;
                if head >= due {
                    return Ok(TokenSwap::Done(cur.token));
                }
                sleep_until(due).await;
                continue;
            }
            if cur.token != 0 && cur.token != expected {
                if head >= self.settled {
                    return Ok(TokenSwap::Changed(cur.token));
                }
                // A write of ours may still take effect: look again once none can.
                sleep_until(self.settled).await;
                continue;
            }
            if !self.in_time(head, "HEAD").await? {
                continue;
            }
            self.count_write()?;
            let value = if self.ours.is_empty() { first } else { fresh_token(&self.ours) };
            self.ours.push(value);
            if self.refused_over.as_ref() == Some(&(cur.token, cur.etag.clone())) {
                // Refused although nothing changed: the server compares another way.
                self.if_match = match self.if_match {
                    IfMatchForm::AsGiven => IfMatchForm::Unquoted,
                    IfMatchForm::Unquoted | IfMatchForm::Omitted => IfMatchForm::Omitted,
                };
                log::debug!("the server refused If-Match over an unchanged token; now {:?}", self.if_match);
            }
            let cond = self.condition(&cur);
            let sent = Instant::now();
            match Self::timed(self.obj.put_token(value, &cond)).await {
                Ok(()) => {
                    self.settled = self.settled.max(Instant::now());
                    log::debug!(
                        "mount token {value:08x} written in {} ms; reading it back in {} ms",
                        (Instant::now() - head).as_millis(),
                        (self.settled + SETTLE_WAIT - Instant::now()).as_millis()
                    );
                    sleep_until(self.settled + SETTLE_WAIT).await;
                }
                // Refused, so not written: the next HEAD shows who holds the volume.
                Err(StoreError::Stale(_)) => {
                    if let TokenCondition::Is(_) = cond {
                        self.refused_over = Some((cur.token, cur.etag.clone()));
                    }
                }
                Err(StoreError::Unsupported(_)) if cond != TokenCondition::None => {
                    self.conditions = false;
                    self.obj.no_conditional_writes();
                }
                Err(e) => {
                    self.unsettled_since(sent);
                    self.retry("PUT", e).await?;
                }
            }
        }
    }

    async fn clear(&mut self, ours: &[u32]) -> Result<TokenSwap> {
        // Whether a DELETE of ours failed, and so may have taken effect after all.
        let mut maybe_deleted = false;
        loop {
            let (head, cur) = self.head_answered().await?;
            if cur.token == 0 {
                return Ok(TokenSwap::Done(0));
            }
            if !ours.contains(&cur.token) {
                // Our failed DELETE may have worked and a new mount have set its token since.
                return Ok(if maybe_deleted { TokenSwap::Done(0) } else { TokenSwap::Changed(cur.token) });
            }
            if !self.in_time(head, "HEAD").await? {
                continue;
            }
            self.count_write()?;
            let cond = match &cur.etag {
                Some(etag) if self.conditions => TokenCondition::Is(etag.clone()),
                _ => TokenCondition::None,
            };
            let sent = Instant::now();
            match Self::timed(self.obj.delete_token(&cond)).await {
                Ok(()) => return Ok(TokenSwap::Done(0)),
                // Replaced since the HEAD: look again.
                Err(StoreError::Stale(_)) => {}
                Err(StoreError::Unsupported(_)) if cond != TokenCondition::None => {
                    self.conditions = false;
                    self.obj.no_conditional_writes();
                }
                Err(e) => {
                    maybe_deleted = true;
                    self.unsettled_since(sent);
                    self.retry("DELETE", e).await?;
                }
            }
        }
    }

    /// After a failed [`set`](Self::set): once no write of ours can still take effect, clears
    /// any value of ours in place, with a retry budget of its own.
    async fn abandon(&mut self) {
        if self.ours.is_empty() {
            return;
        }
        sleep_until(self.settled).await;
        let ours = std::mem::take(&mut self.ours);
        self.backoff = self.pauses.backoff();
        self.writes = 0;
        match self.clear(&ours).await {
            Ok(_) => log::debug!("this mount did not come up; no mount token of its own is left"),
            Err(e) => log::warn!(
                "a mount token this mount wrote may be left on the volume ({}); once no mount is running, \
                 clear it with --reset-mounted-flag",
                Chain(&e)
            ),
        }
    }
}

/// Parses the token header of a HEAD answer.
fn token_of(resp: &Resp) -> u32 {
    if resp.status == 404 {
        return 0;
    }
    match resp.header(MOUNT_TOKEN_HEADER) {
        Some(v) => u32::from_str_radix(v.trim(), 16).unwrap_or(1),
        None => 1,
    }
}

impl S3Store {
    /// The PUT that stores `token`, upstream's way.
    pub(crate) fn token_put(&self, token: u32) -> Req {
        let mut req = Req::new(Method::PUT, Some(self.cfg.keys.mount_token_key()));
        req.body = Bytes::from(format!("{}\n{}\n", hostname(), httpdate_compact(SystemTime::now())));
        self.put_headers(&mut req, "text/plain");
        req.headers.push((MOUNT_TOKEN_HEADER, format!("{token:08x}")));
        req
    }

    /// Compare-and-swap of the mount token (see the module documentation): `expected` → `new`,
    /// `new == 0` clears it.
    pub(crate) async fn swap_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        if new == 0 {
            return clear_token(self, self.cfg.retry, &[expected]).await;
        }
        set_token(self, self.cfg.retry, expected, new).await
    }

    /// Sends one attempt of a token request, counting a failure.
    async fn token_attempt(&self, req: &Req) -> Result<Resp> {
        match self.attempt(req).await {
            Ok(resp) => {
                self.contacted.store(true, Ordering::Relaxed);
                Ok(resp)
            }
            Err(e) => {
                self.stats.count_error(&e);
                Err(e)
            }
        }
    }
}

/// Adds the header of a precondition to a request.
fn with_condition(req: &mut Req, cond: &TokenCondition) {
    match cond {
        TokenCondition::None => {}
        TokenCondition::Absent => req.headers.push(("if-none-match", "*".into())),
        TokenCondition::Is(etag) => req.headers.push(("if-match", etag.clone())),
    }
}

#[async_trait]
impl TokenObject for S3Store {
    async fn head_token(&self) -> Result<TokenState> {
        let req = Req::new(Method::HEAD, Some(self.cfg.keys.mount_token_key()));
        bump(&self.stats.http_heads);
        let resp = self.token_attempt(&req).await?;
        let etag = if resp.status == 404 { None } else { resp.header("etag").map(str::to_string) };
        Ok(TokenState { token: token_of(&resp), etag })
    }

    async fn put_token(&self, token: u32, cond: &TokenCondition) -> Result<()> {
        let mut req = self.token_put(token);
        with_condition(&mut req, cond);
        let resp = self.token_attempt(&req).await?;
        if resp.status == 404 {
            // `If-Match` on an object that is gone.
            return Err(StoreError::Stale(0));
        }
        Ok(())
    }

    async fn delete_token(&self, cond: &TokenCondition) -> Result<()> {
        let mut req = Req::new(Method::DELETE, Some(self.cfg.keys.mount_token_key()));
        with_condition(&mut req, cond);
        self.token_attempt(&req).await.map(drop)
    }

    fn conditional_writes(&self) -> bool {
        !self.cond.unsupported()
    }

    fn no_conditional_writes(&self) {
        self.cond.set_unsupported();
    }

    fn retrying(&self, pause: Duration) {
        bump(&self.stats.http_num_retries);
        add_time(&self.stats.retry_delay_micros, pause);
    }
}

#[cfg(test)]
mod tests;
