//! Request timing for monitoring (the daemon's Prometheus metrics): every request a front end
//! makes of the [`Volume`](crate::Volume) — read, write, trim, flush — is reported with its
//! duration and whether it succeeded to the [`VolumeObserver`] installed with
//! [`Volume::observe`](crate::Volume::observe). Without one, nothing is recorded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The kind of a front end's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A discard / hole punch (zeroing a range).
    Trim,
    /// A flush (fsync, NBD FLUSH or a forced-unit-access write's flush).
    Flush,
}

impl Op {
    /// The request kind as a lower-case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Trim => "trim",
            Op::Flush => "flush",
        }
    }
}

/// Receives each request's kind, duration and success.
pub trait VolumeObserver: Send + Sync {
    /// A request finished.
    fn request(&self, op: Op, elapsed: Duration, ok: bool);
}

/// Where a volume keeps its observer (set at most once).
#[derive(Default)]
pub(crate) struct Slot(pub(crate) OnceLock<Arc<dyn VolumeObserver>>);
