//! The mount token object as the fenced mount protocol sees it: one attempt of each request,
//! nothing retried, every outcome reported.
//!
//! The protocol (`s3b_http::token`) decides what to make of each answer — retry, wait, read the
//! token back — so a transport implementing [`TokenObject`] sends each request exactly once and
//! reports what came back. Keeping single attempts behind a trait lets the protocol be tested,
//! on tokio's paused clock, against the in-memory server of `mock` that answers 503s, loses
//! answers and applies requests late, as real servers do.

use crate::Result;
use async_trait::async_trait;
use std::time::Duration;

/// The token object as one HEAD found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenState {
    /// The token: 0 when there is no object, 1 for an object without the token header (a flag
    /// written by s3backer before 1.5.0).
    pub token: u32,
    /// The object's ETag as the server sent it (quoted), for a later `If-Match`.
    pub etag: Option<String>,
}

/// A precondition for a token write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCondition {
    /// None: the write happens whatever is stored.
    None,
    /// `If-None-Match: *`: only if there is no token object.
    Absent,
    /// `If-Match: <etag>`: only if the object is still the version with this ETag.
    Is(String),
}

/// One request at a time to the token object of a volume (see the module documentation).
///
/// Errors are the transport's: [`crate::StoreError::Stale`] when the server refused a write
/// because its precondition did not hold (HTTP 412, or 404 for an `If-Match` on a missing
/// object); [`crate::StoreError::Unsupported`] when the server does not implement the
/// precondition header. Anything else failed, and a write that failed may still have been
/// applied.
#[async_trait]
pub trait TokenObject: Send + Sync {
    /// One HEAD of the token object.
    async fn head_token(&self) -> Result<TokenState>;

    /// One PUT of the token object carrying `token`, under `cond`.
    async fn put_token(&self, token: u32, cond: &TokenCondition) -> Result<()>;

    /// One DELETE of the token object, under `cond` (a missing object is success).
    async fn delete_token(&self, cond: &TokenCondition) -> Result<()>;

    /// Whether to send preconditions with token writes (false once the server answered one with
    /// 501). The default: yes.
    fn conditional_writes(&self) -> bool {
        true
    }

    /// Remembers that the server answered a precondition with 501. The default forgets it.
    fn no_conditional_writes(&self) {}

    /// Called before the protocol pauses `pause` to retry after a failed request (for counters).
    fn retrying(&self, pause: Duration) {
        let _ = pause;
    }
}
