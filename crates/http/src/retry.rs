//! Retry policy of the S3 transport, as upstream C s3backer's: which outcomes are worth
//! another attempt, and the pause schedule — `--initialRetryPause`, doubling each time, the last
//! pause clipped so that the pauses of one operation add up to at most `--maxRetryPause`.

use s3b_store::StoreError;
use std::time::Duration;

/// The pauses of one operation's retries: `--initialRetryPause` and `--maxRetryPause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPauses {
    /// The first pause.
    pub initial: Duration,
    /// All pauses of one operation together.
    pub max_total: Duration,
}

impl Default for RetryPauses {
    fn default() -> Self {
        RetryPauses { initial: Duration::from_millis(200), max_total: Duration::from_millis(30_000) }
    }
}

impl RetryPauses {
    /// The schedule of a new operation.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial, self.max_total)
    }
}

/// The pause schedule of one operation.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    left: Duration,
}

impl Backoff {
    /// A schedule starting at `initial` with `max_total` of pausing in all.
    pub fn new(initial: Duration, max_total: Duration) -> Self {
        Backoff { next: initial.max(Duration::from_millis(1)), left: max_total }
    }

    /// The next pause, or `None` when the budget is spent (give up with the last error).
    pub fn next_pause(&mut self) -> Option<Duration> {
        if self.left.is_zero() {
            return None;
        }
        let pause = self.next.min(self.left);
        self.left -= pause;
        self.next = self.next.saturating_mul(2);
        Some(pause)
    }
}

/// Whether an error of one attempt is worth retrying.
///
/// Upstream retries every failure but 404 and 304 (which are answers, not failures). We also
/// give up at once on a stale `If-Match` read (the consistency layer above retries it with its
/// own pacing), on a request the server does not implement, and on errors that cannot heal
/// (corrupt data, a missing bucket, a read-only volume).
pub fn is_retryable(e: &StoreError) -> bool {
    match e {
        // Corrupt data stays corrupt; a stale read is the caller's to handle; the rest are
        // settled answers or our own state, which asking again will not change.
        StoreError::Corrupt { .. }
        | StoreError::WrongPassword { .. }
        | StoreError::Stale(_)
        | StoreError::ReadOnly
        | StoreError::NotRunning
        | StoreError::NotFound(_)
        | StoreError::Unsupported(_)
        | StoreError::Setup(_)
        | StoreError::Conflict(_)
        | StoreError::PastEnd { .. }
        | StoreError::Contract(_)
        | StoreError::UploadFailed { .. }
        | StoreError::Task(_) => false,
        StoreError::Io { .. }
        | StoreError::Unauthenticated(_)
        | StoreError::Forbidden(_)
        | StoreError::Misdirected(_)
        | StoreError::TimedOut(_)
        | StoreError::Unreachable(_)
        | StoreError::Unavailable(_)
        | StoreError::Refused(_)
        | StoreError::Injected => true,
    }
}

/// Whether a failed listing (`--listBlocks`, `--erase`) is worth another attempt: as
/// [`is_retryable`], except that a refusal (401, 403, a redirect) is final — keys that may read
/// and write objects but not list the bucket are common, and asking again will not change that.
pub fn is_retryable_listing(e: &StoreError) -> bool {
    is_retryable(e)
        && !matches!(e, StoreError::Unauthenticated(_) | StoreError::Forbidden(_) | StoreError::Misdirected(_))
}

/// Whether an error looks like passing trouble rather than a wrong setting: server errors,
/// timeouts and broken connections, but not refused credentials, redirects or a closed port.
pub fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::TimedOut(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_default_schedule() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(30_000));
        let got: Vec<u128> = std::iter::from_fn(|| b.next_pause()).map(|d| d.as_millis()).collect();
        assert_eq!(got, vec![200, 400, 800, 1600, 3200, 6400, 12800, 4600]);
        assert_eq!(got.iter().sum::<u128>(), 30_000);
    }

    #[test]
    fn zero_budget_never_retries() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::ZERO);
        assert_eq!(b.next_pause(), None);
    }

    #[test]
    fn classification() {
        use crate::client::TransportError;
        use crate::error::{HttpError, Subject};
        let subject = || Subject { bucket: "b".into(), key: None };
        let status = |status| StoreError::from(HttpError::Status { status, subject: subject(), code: None });
        let forbidden = StoreError::from(HttpError::Forbidden { subject: subject(), code: None });
        let unauthorized = StoreError::from(HttpError::Unauthorized { subject: subject(), code: None });
        let timeout = StoreError::from(TransportError::Timeout { url: "u".into(), limit_ms: 1 });
        let missing = StoreError::from(HttpError::NoSuchBucket { bucket: "b".into(), endpoint: "http://h/".into() });
        // (error, retried, retried before the server answered once, retried in a listing)
        let cases = [
            (status(503), true, true, true),
            (status(429), true, true, true),
            (status(400), true, false, true),
            (status(501), false, false, false),
            (status(405), false, false, false),
            (timeout, true, true, true),
            (forbidden, true, false, false),
            (unauthorized, true, false, false),
            (StoreError::Unreachable("refused".into()), true, false, true),
            (missing, false, false, false),
            (StoreError::Stale(3), false, false, false),
            (StoreError::corrupt(1, "x"), false, false, false),
            (StoreError::Setup("bad URL".into()), false, false, false),
            (StoreError::Conflict("token".into()), false, false, false),
        ];
        for (e, retried, early, listing) in cases {
            assert_eq!(is_retryable(&e), retried, "{e}");
            assert_eq!(is_retryable(&e) && is_transient(&e), early, "{e}");
            assert_eq!(is_retryable_listing(&e), listing, "{e}");
        }
    }
}
