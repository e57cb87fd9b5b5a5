//! Per-request observations for monitoring (the daemon's Prometheus metrics): each attempt's
//! method, outcome, duration and bytes moved, and each retry's cause. The transport calls the
//! [`RequestObserver`] installed with [`S3Store::observe`](crate::S3Store::observe), if any;
//! without one nothing is recorded and nothing is paid but a check. Outcomes and causes are
//! fixed words chosen from the typed answer ([`outcome`]), so a monitoring system can count
//! them without parsing messages.

use crate::client::TransportError;
use crate::error::HttpError;
use s3b_store::StoreError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One finished attempt.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// `GET`, `PUT`, `HEAD`, `DELETE`, `POST` (multi-object DELETE).
    pub method: &'a str,
    /// `ok` (an answer: 2xx, 304, 404) or the error class from [`outcome`].
    pub outcome: &'static str,
    /// From sending the request to the end of the answer's body.
    pub elapsed: Duration,
    /// Request body bytes sent.
    pub sent: u64,
    /// Answer body bytes received.
    pub received: u64,
}

/// Receives the transport's observations.
pub trait RequestObserver: Send + Sync {
    /// An attempt finished (successfully or not).
    fn attempt(&self, a: &Attempt<'_>);
    /// A failed attempt will be retried; `cause` is its [`outcome`] word.
    fn retry(&self, cause: &'static str);
}

/// Where a transport keeps its observer (set at most once).
#[derive(Default)]
pub(crate) struct Slot(OnceLock<Arc<dyn RequestObserver>>);

impl Slot {
    pub(crate) fn set(&self, o: Arc<dyn RequestObserver>) {
        let _ = self.0.set(o);
    }
    pub(crate) fn get(&self) -> Option<&Arc<dyn RequestObserver>> {
        self.0.get()
    }
}

/// The class of a failed attempt, as one word.
pub fn outcome(e: &StoreError) -> &'static str {
    if let StoreError::Stale(_) = e {
        return "stale";
    }
    match HttpError::of(e) {
        Some(HttpError::Unauthorized { .. }) => "unauthorized",
        Some(HttpError::Forbidden { .. }) => "forbidden",
        Some(HttpError::Redirect { .. }) => "redirect",
        Some(HttpError::NoSuchBucket { .. }) => "no_such_bucket",
        Some(HttpError::Status { status: 500..=599, .. }) => "http_5xx",
        Some(HttpError::Status { status: 400..=499, .. }) => "http_4xx",
        Some(HttpError::Status { .. }) => "http_other",
        Some(HttpError::Exchange(e)) => match e {
            TransportError::Timeout { .. } => "timeout",
            TransportError::Connect { .. } => "connect",
            TransportError::Exchange { .. } | TransportError::Body { .. } | TransportError::TooLarge { .. } => {
                "transport"
            }
            TransportError::BadRequest { .. } => "other",
        },
        Some(HttpError::Credentials(_)) => "credentials",
        Some(HttpError::CopyFailed { .. }) | None => "other",
    }
}

impl crate::S3Store {
    /// Installs `observer` for every later request of this transport (the first one installed
    /// stays).
    pub fn observe(&self, observer: Arc<dyn RequestObserver>) {
        self.observer.set(observer);
    }

    /// Reports a finished attempt to the observer, if any.
    pub(crate) fn observed(&self, method: &str, result: &Result<u64, &StoreError>, elapsed: Duration, sent: u64) {
        if let Some(o) = self.observer.get() {
            let (outcome, received) = match result {
                Ok(n) => ("ok", *n),
                Err(e) => (outcome(e), 0),
            };
            o.attempt(&Attempt { method, outcome, elapsed, sent, received });
        }
    }

    /// Reports a retry to the observer, if any.
    pub(crate) fn observed_retry(&self, e: &StoreError) {
        if let Some(o) = self.observer.get() {
            o.retry(outcome(e));
        }
    }
}
