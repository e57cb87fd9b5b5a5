//! The one error type of the store layers.
//!
//! A [`StoreError`] says *what kind* of failure happened, which is all a layer above needs to
//! decide anything: whether to retry (the transport's retry loop), which errno to report (the
//! front ends), whether the password is wrong (the codec). *Why* it happened travels as the
//! error's [`source`](std::error::Error::source): each crate has its own typed error for that
//! (the codec's decode errors, the HTTP client's transport errors, the cache file's format
//! errors), so no decision is ever made by reading a message.
//!
//! A variant's own message never repeats its source's; print an error with [`Chain`] (or
//! anyhow's `{:#}`) to get every cause once, outermost first.

use crate::BlockNum;
use std::path::PathBuf;
use thiserror::Error;

/// A boxed error from the crate that knows the details.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors that any layer of the stack can return.
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
    /// An `If-Match` read found another version (HTTP 412).
    #[error("stale read of block {0:#010x}")]
    Stale(BlockNum),
    /// The server refused our credentials (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Signing keys could not be obtained (EC2 instance metadata).
    #[error("can't get credentials")]
    Credentials(#[source] BoxError),
    /// The server refused access (HTTP 403).
    #[error("access denied: {0}")]
    Forbidden(String),
    /// The server answered with a redirect (wrong region or addressing style).
    #[error("redirected: {0}")]
    Redirect(String),
    /// Another unexpected HTTP status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// Server message, if any.
        message: String,
    },
    /// A request took longer than `--timeout`.
    #[error("timed out")]
    Timeout(#[source] BoxError),
    /// The endpoint could not be reached (DNS, connection refused…).
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// An exchange with the server broke off or its answer was unusable (reset connection, TLS
    /// failure, malformed or oversized answer).
    #[error("transport failure")]
    Transport(#[source] BoxError),
    /// The server answered, but not as the protocol allows (for example a multi-object DELETE
    /// that reports failed keys).
    #[error("the server refused the request")]
    Refused(#[source] BoxError),
    /// A request could not be built (bad base URL, signing failure).
    #[error("can't build the request")]
    Request(#[source] BoxError),
    /// The mount token would not settle: this mount's token kept disappearing from the store
    /// (another program deleting it) within one retry budget.
    #[error("the mount token did not settle: {0}")]
    TokenUnsettled(String),
    /// The persistent cache file is unusable.
    #[error("cache file {}", path.display())]
    CacheFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BoxError,
    },
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
    /// The bucket does not exist (an S3 `NoSuchBucket` answer).
    #[error("bucket \"{bucket}\" does not exist at {endpoint}")]
    NoSuchBucket {
        /// The bucket's name.
        bucket: String,
        /// The endpoint that said so.
        endpoint: String,
    },
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
}
