//! The mount token, fenced: of several mounts of one volume that start at the same instant, at
//! most one comes up.
//!
//! The token is the object `<prefix>s3backer-mounted` with the header
//! `x-amz-meta-s3backer-mount-token: <8 hex digits>` and a body of host name and date, as C
//! s3backer writes it, so each implementation sees the other's mounts. Reading it is a HEAD
//! (404 = not mounted). A plain "HEAD, then PUT if absent" lets two mounts that start together
//! both see "absent" and both write; both then come up, and two writers on one volume corrupt
//! it silently. [`S3Store::swap_token`] makes it a compare-and-swap.
//!
//! **Conditional writes help, but cannot be trusted alone.** The token is created with
//! `PUT If-None-Match: *` and replaced with `PUT If-Match: <ETag of the token read>`, so a
//! server that honours them refuses (412) a mount that comes second by more than the server's
//! own check. But the answers do not tell how the server honours them: Garage 2.5 ignores both
//! headers (the PUT overwrites), and s3s-fs 0.14.1 checks and then writes, so two PUTs that
//! arrive together both succeed (measured: 7 of 30 simultaneous pairs). Only a server that
//! checks and writes atomically (AWS S3) makes the header enough, and a client cannot tell
//! that server from the others. So every mount also runs the protocol below, which needs no
//! conditional writes; the headers only make losers fail sooner and cheaper. The protocol
//! writes nothing but the token object and uses no LIST (least-privilege keys may not list).
//!
//! **Write, wait, read back.** Every read-write mount runs the same steps:
//!
//! 1. `t0` = now; HEAD the token; if it is not the expected one (absent, or the token the mount
//!    was told to replace by `--force`), stop: someone else holds the volume.
//! 2. PUT our token — a fresh random 31-bit value, unique to this mount — under the precondition
//!    above. Refused: stop, someone else holds the volume. If the PUT needed a retry, or `t0`
//!    to its answer took longer than [`SETTLE_BOUND`], the mount is "late" (see below).
//! 3. Wait [`SETTLE_WAIT`] (≥ [`SETTLE_BOUND`]), then HEAD again. Our token and not late: we
//!    hold the volume. Another token: another mount won; stop with "already mounted".
//!
//! Why at most one mount comes up: among the mounts that wrote and were not late, let W be the
//! one whose write the server applied last, and P any other. W's step 1 HEAD found no token of
//! P's, so the server served it before P's write, which was therefore answered after it. W's
//! write was served within [`SETTLE_BOUND`] of W's HEAD (W's clock runs from before it sent the
//! HEAD to after it got the PUT's answer, an interval that contains both). P reads back at least
//! [`SETTLE_WAIT`] after its write was answered, so after W's write: P sees W's token (or a
//! later one), not its own, and gives up. Mounts whose HEAD found a token, or whose PUT was
//! refused, never come up. A late mount never comes up either: an attempt it gave up on may
//! still be applied by the server at any later time, so its writes are not bounded; it stops
//! with an error and leaves the token as it is (deleting it could remove the winner's), to be
//! cleared with `--reset-mounted-flag` once no mount is running. Such a stray write can only
//! replace the winner's token by another one, which keeps later mounts out and makes the
//! winner's unmount leave it in place with a warning — never let a second mount in. The
//! argument relies on the server's reads seeing every write answered before them (S3 and
//! Garage promise read-after-write consistency) and on the hosts' clocks running at about the
//! same rate (the margin between the two constants is far above any drift).
//!
//! The price is [`SETTLE_WAIT`] added to every read-write mount, and a clear failure (never a
//! double mount) when the server takes longer than [`SETTLE_BOUND`] to answer a HEAD and a small
//! PUT. Read-only and `--sharedDiskMode` mounts do not take part, as before. C s3backer only
//! HEADs then PUTs: a race against one of its mounts is still the plain HEAD-then-PUT race.
//! Clearing the token at unmount HEADs it and deletes it only if it is still ours (`If-Match`
//! with its ETag, for servers that honour that on DELETE).

use crate::request::{Req, Resp, hostname, httpdate_compact};
use crate::retry;
use crate::stats::bump;
use crate::{MOUNT_TOKEN_HEADER, S3Store};
use bytes::Bytes;
use http::Method;
use s3b_store::{Result, StoreError, TokenSwap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Longest time, from sending the first HEAD to the answer of the PUT, a mount may take to
/// write its token and still come up.
pub const SETTLE_BOUND: Duration = Duration::from_millis(2000);
/// How long a mount waits after writing its token before it reads it back; longer than
/// [`SETTLE_BOUND`] by a margin.
pub const SETTLE_WAIT: Duration = Duration::from_millis(2500);

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

/// The token object as a HEAD found it.
#[derive(Debug)]
struct Current {
    /// 0 when there is no object; 1 for an object without the token header (pre-1.5.0 flag).
    token: u32,
    /// Its ETag as the server sent it (quoted), for `If-Match`.
    etag: Option<String>,
}

/// A precondition for a token write.
#[derive(Clone, Copy, Debug)]
enum Precondition<'a> {
    None,
    /// `If-None-Match: *`: only if there is no object.
    Absent,
    /// `If-Match: <etag>`: only if the object is still this version.
    Is(&'a str),
}

/// What a token write did.
#[derive(Debug)]
enum Written {
    /// Stored.
    Yes,
    /// The server refused it: the precondition does not hold (412), or, for an `If-Match`, the
    /// object is gone (404).
    PreconditionFailed,
    /// The server does not implement the precondition header (501).
    NotImplemented,
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
    /// Sends one token request, retrying passing failures (a 501 says the server does not do
    /// conditional writes: final). Also tells whether any attempt failed (so that an earlier
    /// attempt might still be applied by the server later).
    async fn send_token_req(&self, req: &Req) -> (Result<Resp>, bool) {
        self.send_retrying(req, |e, _| retry::is_retryable(e) && !matches!(e, StoreError::Http { status: 501, .. }))
            .await
    }

    /// HEADs the token object.
    async fn read_token(&self) -> Result<(Current, bool)> {
        let req = Req::new(Method::HEAD, Some(self.cfg.keys.mount_token_key()));
        bump(&self.stats.http_heads);
        let (resp, retried) = self.send_token_req(&req).await;
        let resp = resp?;
        let etag = if resp.status == 404 { None } else { resp.header("etag").map(str::to_string) };
        Ok((Current { token: token_of(&resp), etag }, retried))
    }

    /// The PUT that stores `token`, upstream's way.
    pub(crate) fn token_put(&self, token: u32) -> Req {
        let mut req = Req::new(Method::PUT, Some(self.cfg.keys.mount_token_key()));
        req.body = Bytes::from(format!("{}\n{}\n", hostname(), httpdate_compact(SystemTime::now())));
        self.put_headers(&mut req, "text/plain");
        req.headers.push((MOUNT_TOKEN_HEADER, format!("{token:08x}")));
        req
    }

    /// Sends a token PUT (or a DELETE when `req` is one) under a precondition.
    async fn write_token(&self, req: &Req, pre: Precondition<'_>) -> Result<(Written, bool)> {
        let mut req = Req {
            method: req.method.clone(),
            key: req.key.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            max_body: req.max_body,
        };
        match pre {
            Precondition::None => {}
            Precondition::Absent => req.headers.push(("if-none-match", "*".into())),
            Precondition::Is(etag) => req.headers.push(("if-match", etag.to_string())),
        }
        let (result, retried) = self.send_token_req(&req).await;
        let written = match result {
            Ok(resp) if resp.status == 404 && matches!(pre, Precondition::Is(_)) => Written::PreconditionFailed,
            Ok(_) => Written::Yes,
            Err(StoreError::Stale(_)) => Written::PreconditionFailed,
            Err(StoreError::Http { status: 501, .. }) if !matches!(pre, Precondition::None) => Written::NotImplemented,
            Err(e) => return Err(e),
        };
        Ok((written, retried))
    }

    /// Compare-and-swap of the mount token (see the module documentation): `expected` → `new`,
    /// `new == 0` clears it.
    pub(crate) async fn swap_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        if new == 0 {
            return self.clear_token(expected).await;
        }
        let started = Instant::now();
        let (current, _) = self.read_token().await?;
        if current.token != expected {
            return Ok(TokenSwap::Changed(current.token));
        }
        let put = self.token_put(new);
        let pre = match &current.etag {
            _ if self.cond.unsupported() => Precondition::None,
            None => Precondition::Absent,
            Some(etag) => Precondition::Is(etag),
        };
        let (mut written, mut late) = self.write_token(&put, pre).await?;
        if let Written::NotImplemented = written {
            self.cond.set_unsupported();
            (written, late) = self.write_token(&put, Precondition::None).await?;
        }
        if let (Written::PreconditionFailed, Precondition::Is(etag)) = (&written, pre) {
            let retried;
            (written, retried) = self.retry_if_match(&put, &current, etag).await?;
            late |= retried;
        }
        let took = started.elapsed();
        late |= took > SETTLE_BOUND;
        if let Written::PreconditionFailed = written {
            let (now, _) = self.read_token().await?;
            if now.token != new {
                return Ok(TokenSwap::Changed(now.token));
            }
            // Our own earlier attempt got there first: we are late.
            late = true;
        } else {
            log::debug!(
                "mount token {new:08x} written in {} ms; reading it back in {} ms",
                took.as_millis(),
                SETTLE_WAIT.as_millis()
            );
            tokio::time::sleep(SETTLE_WAIT).await;
            let (now, _) = self.read_token().await?;
            if now.token != new {
                return Ok(TokenSwap::Changed(now.token));
            }
        }
        if late {
            return Err(StoreError::TokenUncertain { took_ms: took.as_millis(), limit_ms: SETTLE_BOUND.as_millis() });
        }
        Ok(TokenSwap::Done)
    }

    /// After a PUT under `If-Match: <etag>` was refused: if the token is still the version that
    /// ETag names, the refusal came from how the server compares, not from another mount. Ceph's
    /// RGW 16 compares a PUT's `If-Match` with its stored ETag without quotes, so the quoted
    /// ETag it sent on HEAD never matches; it is sent again unquoted, and if that is refused too
    /// while the token is unchanged, without the header (the protocol does not need it).
    async fn retry_if_match(&self, put: &Req, was: &Current, etag: &str) -> Result<(Written, bool)> {
        let mut late = false;
        for pre in [Precondition::Is(etag.trim_matches('"')), Precondition::None] {
            let (now, _) = self.read_token().await?;
            if now.token != was.token || now.etag != was.etag {
                return Ok((Written::PreconditionFailed, late));
            }
            let (written, retried) = self.write_token(put, pre).await?;
            late |= retried;
            if !matches!(written, Written::PreconditionFailed) {
                return Ok((written, late));
            }
        }
        Ok((Written::PreconditionFailed, late))
    }

    /// Clears the token if it is still `expected`.
    async fn clear_token(&self, expected: u32) -> Result<TokenSwap> {
        let (current, _) = self.read_token().await?;
        if current.token != expected {
            return Ok(TokenSwap::Changed(current.token));
        }
        if current.token == 0 {
            return Ok(TokenSwap::Done);
        }
        let delete = Req::new(Method::DELETE, Some(self.cfg.keys.mount_token_key()));
        let pre = match &current.etag {
            Some(etag) if !self.cond.unsupported() => Precondition::Is(etag),
            _ => Precondition::None,
        };
        match self.write_token(&delete, pre).await?.0 {
            Written::Yes => Ok(TokenSwap::Done),
            Written::NotImplemented => {
                self.write_token(&delete, Precondition::None).await?;
                Ok(TokenSwap::Done)
            }
            Written::PreconditionFailed => {
                let (now, _) = self.read_token().await?;
                Ok(if now.token == 0 { TokenSwap::Done } else { TokenSwap::Changed(now.token) })
            }
        }
    }
}
