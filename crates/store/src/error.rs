//! The one error type of the store layers.
//!
//! A [`StoreError`] says *what kind* of failure happened, which is all a layer above needs to
//! decide anything; *why* it happened is the typed error of the crate that knows (the HTTP
//! client's answers and exchanges, the codec's decode errors, the cache file's format errors),
//! which the variant carries. No decision is ever made by reading a message.
//!
//! What layers decide on the kind:
//!
//! - **Retry** (the transport's retry loop): worth another attempt are local I/O failures,
//!   [`Unavailable`](StoreError::Unavailable) and [`TimedOut`](StoreError::TimedOut) (passing
//!   trouble: the only kinds retried before the server has answered once),
//!   [`Unreachable`](StoreError::Unreachable), the refusals a server may lift
//!   ([`Unauthenticated`](StoreError::Unauthenticated), [`Forbidden`](StoreError::Forbidden),
//!   [`Misdirected`](StoreError::Misdirected), [`Refused`](StoreError::Refused); a listing gives
//!   up on the first three at once) and injected failures. Never retried: what asking again
//!   cannot change ([`NotFound`](StoreError::NotFound), [`Unsupported`](StoreError::Unsupported),
//!   [`Setup`](StoreError::Setup), [`Conflict`](StoreError::Conflict), corrupt data, a stale
//!   read, which the consistency layer retries at its own pace, a read-only volume, a broken
//!   contract, a store that is not running).
//! - **Fallback**: [`Unsupported`](StoreError::Unsupported) makes a caller do without the
//!   request (one DELETE per object instead of a multi-object DELETE, token writes without
//!   preconditions); [`Stale`](StoreError::Stale) tells a conditional write it lost.
//! - **errno** (the front ends, through one function in the volume layer): `EACCES`
//!   (unauthenticated), `EPERM` (forbidden), `ELOOP` (misdirected), `ETIMEDOUT`, `ENXIO`
//!   (unreachable), `ESTALE`, `ESPIPE` (past the end), `EROFS`, `ENOTCONN` (not running), a
//!   local error's own errno, and `EIO` for the rest.
//! - **Wrong password** (the codec turns a block 0 that fails authentication into
//!   [`WrongPassword`](StoreError::WrongPassword)).
//!
//! The kinds that wrap another crate's error ([`BoxError`]) are transparent: their message and
//! causes are the wrapped error's, so a line says what happened in the words of the crate that
//! knows. Reach the wrapped error with [`StoreError::detail`] and `downcast_ref` for a detail
//! (a status code, a bucket name). The other variants add their own context (a block number)
//! and carry the cause as their [`source`](std::error::Error::source). A variant's own message
//! never repeats its source's; print an error with [`Chain`] (or anyhow's `{:#}`) to get every
//! cause once, outermost first.

use crate::BlockNum;
use thiserror::Error;

/// A boxed error from the crate that knows the details.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure happened, with the detailed error of the layer that met it.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A local I/O operation failed (cache file, `--test` directory).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored object is not a valid block (wrong size, bad HMAC, unknown encoding…); the
    /// source says which.
    #[error("corrupt block {block:#010x}")]
    Corrupt {
        /// The block number.
        block: BlockNum,
        /// Why the object was rejected.
        #[source]
        source: BoxError,
    },
    /// With encryption on, block 0 fails authentication: the password is not the one the
    /// volume was written with.
    #[error("wrong password: block 0 fails authentication")]
    WrongPassword {
        /// The codec's finding.
        #[source]
        source: BoxError,
    },
    /// A conditional request found another version: a read `If-Match` (or a write's
    /// precondition) did not hold.
    #[error("stale read of block {0:#010x}")]
    Stale(BlockNum),
    /// The store does not accept who we say we are (refused keys), or no credentials could be
    /// obtained to say it.
    #[error(transparent)]
    Unauthenticated(BoxError),
    /// The store knows who we are and does not allow the request.
    #[error(transparent)]
    Forbidden(BoxError),
    /// The store sends us elsewhere: the volume is reached at another address (another region,
    /// another addressing style).
    #[error(transparent)]
    Misdirected(BoxError),
    /// The store itself (the bucket) does not exist. A missing block is not this: it reads as
    /// zeros.
    #[error(transparent)]
    NotFound(BoxError),
    /// No complete answer came in time.
    #[error(transparent)]
    TimedOut(BoxError),
    /// The store could not be reached (name resolution, refused connection).
    #[error(transparent)]
    Unreachable(BoxError),
    /// The store could not serve the request this time: a server error, "slow down", a broken
    /// exchange or an unusable answer. Passing trouble, worth retrying.
    #[error(transparent)]
    Unavailable(BoxError),
    /// The store does not implement the request (for example a multi-object DELETE or a
    /// conditional write); the caller does without it.
    #[error(transparent)]
    Unsupported(BoxError),
    /// The store answered no for another reason (a request it will not serve as sent, a
    /// snapshot that does not exist).
    #[error(transparent)]
    Refused(BoxError),
    /// The store could not be set up, or a request could not be made: a bad setting, an
    /// unusable cache file, a request that cannot be built or signed. Someone must fix it.
    #[error(transparent)]
    Setup(BoxError),
    /// Something outside this program kept changing what the operation needs to hold still (the
    /// mount token kept disappearing), for longer than its retry budget.
    #[error(transparent)]
    Conflict(BoxError),
    /// An I/O starts past the end of the volume (upstream reports `ESPIPE`).
    #[error("offset {offset} is past the end of the volume ({size} bytes)")]
    PastEnd {
        /// Where the I/O starts.
        offset: u64,
        /// The volume's size.
        size: u64,
    },
    /// A caller broke the [`BlockStore`](crate::BlockStore) contract.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// A write-back upload of the block failed (after the transport's retries). The block stays
    /// dirty and is tried again; every flush that waited for it gets this error, sharing the
    /// upload's own error as the source (front ends report that one's errno).
    #[error("upload of block {block:#010x} failed")]
    UploadFailed {
        /// The block.
        block: BlockNum,
        /// What the upload met.
        #[source]
        source: std::sync::Arc<StoreError>,
    },
    /// A write was attempted on a read-only volume.
    #[error("volume is read-only")]
    ReadOnly,
    /// An injected failure (`--test-errors`, fault-injection wrappers).
    #[error("injected error")]
    Injected,
    /// The store is shutting down or not started.
    #[error("store is not running")]
    NotRunning,
    /// A background task of a layer died (a panic or a cancelled runtime).
    #[error("a background task failed")]
    Task(#[source] BoxError),
}

/// A call that breaks the [`BlockStore`](crate::BlockStore) contract: a bug in the layer above,
/// never a condition of the store.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContractError {
    /// Whole-block data of the wrong length.
    #[error("write of {len} bytes to block {block:#010x}: a block is {block_size} bytes")]
    WrongLength {
        /// The block.
        block: BlockNum,
        /// The length given.
        len: usize,
        /// The block size.
        block_size: u32,
    },
    /// An object store answered "not modified" to a GET that sent no `If-None-Match`.
    #[error("block {0:#010x}: \"not modified\" answer to a GET without If-None-Match")]
    UnexpectedNotModified(BlockNum),
    /// A partial-block range that runs past the block's end.
    #[error("{len} bytes at offset {offset} of block {block:#010x} pass the end of the block ({block_size} bytes)")]
    PastBlockEnd {
        /// The block.
        block: BlockNum,
        /// Offset in the block.
        offset: u32,
        /// Length of the range.
        len: usize,
        /// The block size.
        block_size: u32,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// A corrupt block, with the typed reason.
    pub fn corrupt(block: BlockNum, source: impl Into<BoxError>) -> Self {
        StoreError::Corrupt { block, source: source.into() }
    }

    /// The typed error this one carries, from the crate that met the failure, to downcast for
    /// a detail (`e.detail().and_then(|d| d.downcast_ref::<T>())`); `None` for the variants that
    /// carry nothing. Decide on the variant; use this only for what the kind does not say.
    pub fn detail(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unauthenticated(e)
            | StoreError::Forbidden(e)
            | StoreError::Misdirected(e)
            | StoreError::NotFound(e)
            | StoreError::TimedOut(e)
            | StoreError::Unreachable(e)
            | StoreError::Unavailable(e)
            | StoreError::Unsupported(e)
            | StoreError::Refused(e)
            | StoreError::Setup(e)
            | StoreError::Conflict(e)
            | StoreError::Corrupt { source: e, .. }
            | StoreError::WrongPassword { source: e }
            | StoreError::Task(e) => Some(&**e),
            StoreError::Io { source, .. } => Some(source),
            StoreError::Contract(e) => Some(e),
            StoreError::UploadFailed { source, .. } => Some(&**source),
            StoreError::Stale(_)
            | StoreError::PastEnd { .. }
            | StoreError::ReadOnly
            | StoreError::Injected
            | StoreError::NotRunning => None,
        }
    }
}

/// Displays an error and each of its causes once, outermost first, separated by `": "` (the
/// form anyhow's `{:#}` uses). Log lines use it so that no cause is lost and none repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// `impl From<$layer> for StoreError` for a layer's own error enum that wraps store failures in
/// a `Store(StoreError)` variant: those pass through as they are, every other case is the
/// layer saying no ([`StoreError::Refused`]) and stays the source.
#[macro_export]
macro_rules! refusals_into_store_error {
    ($layer:ident) => {
        impl From<$layer> for $crate::StoreError {
            fn from(e: $layer) -> $crate::StoreError {
                match e {
                    $layer::Store(e) => e,
                    other => $crate::StoreError::Refused(Box::new(other)),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_each_cause_once() {
        let e = StoreError::io("reading block 7", std::io::Error::other("disk gone"));
        assert_eq!(Chain(&e).to_string(), "reading block 7: disk gone");
        let e = StoreError::corrupt(2, "object is 9 bytes, block size is 4096");
        assert_eq!(Chain(&e).to_string(), "corrupt block 0x00000002: object is 9 bytes, block size is 4096");
        let e = StoreError::from(ContractError::WrongLength { block: 1, len: 3, block_size: 4096 });
        assert_eq!(Chain(&e).to_string(), "write of 3 bytes to block 0x00000001: a block is 4096 bytes");
    }

    /// A detail with a cause of its own, as the transport's are.
    #[derive(Debug, Error)]
    #[error("HTTP 503: object \"00000001\"")]
    struct Detail(#[source] std::io::Error);

    #[test]
    fn a_kind_speaks_in_its_details_words_and_hands_the_detail_out() {
        let e = StoreError::Unavailable(Detail(std::io::Error::other("slow down")).into());
        assert_eq!(Chain(&e).to_string(), "HTTP 503: object \"00000001\": slow down");
        assert!(e.detail().and_then(|d| d.downcast_ref::<Detail>()).is_some());
        let up = StoreError::UploadFailed { block: 1, source: std::sync::Arc::new(e) };
        assert_eq!(
            Chain(&up).to_string(),
            "upload of block 0x00000001 failed: HTTP 503: object \"00000001\": slow down"
        );
        assert!(up.detail().and_then(|d| d.downcast_ref::<StoreError>()).is_some());
        assert!(StoreError::ReadOnly.detail().is_none());
    }
}
