//! The one error type of the store layers, and its single mapping to errno.

use thiserror::Error;

/// Errors that any layer of the stack can return.
///
/// Each variant maps to one errno ([`StoreError::errno`]); the FUSE front end uses that mapping
/// and nothing else, so the translation lives in one place.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A local I/O operation failed (cache file, `--test` directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored object is not a valid block (wrong size, bad HMAC, unknown encoding…).
    #[error("corrupt block {block:#010x}: {reason}")]
    Corrupt {
        /// The block number.
        block: u32,
        /// Why the object was rejected.
        reason: String,
    },
    /// An `If-Match` read found another version (HTTP 412).
    #[error("stale read of block {0:#010x}")]
    Stale(u32),
    /// The server refused our credentials (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
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
    #[error("timed out: {0}")]
    Timeout(String),
    /// The endpoint could not be reached (DNS, connection refused…).
    #[error("cannot connect: {0}")]
    Connect(String),
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
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// The errno the front end reports for this error (upstream's mapping where it has one).
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Corrupt { .. } => libc::EIO,
            StoreError::Stale(_) => libc::ESTALE,
            StoreError::Unauthorized(_) => libc::EACCES,
            StoreError::Forbidden(_) => libc::EPERM,
            StoreError::Redirect(_) => libc::ELOOP,
            StoreError::Http { .. } => libc::EIO,
            StoreError::Timeout(_) => libc::ETIMEDOUT,
            StoreError::Connect(_) => libc::ENXIO,
            StoreError::ReadOnly => libc::EROFS,
            StoreError::Injected => libc::EIO,
            StoreError::NotRunning => libc::ENOTCONN,
            StoreError::NoSuchBucket { .. } => libc::EIO,
            StoreError::Other(_) => libc::EIO,
        }
    }

    /// True for errors worth retrying: everything but corrupt data, read-only, shutdown and a
    /// missing bucket (upstream retries all HTTP failures except 404; a corrupt object stays
    /// corrupt).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::ReadOnly
                | StoreError::NotRunning
                | StoreError::NoSuchBucket { .. }
        )
    }
}
