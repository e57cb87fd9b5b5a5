//! What can go wrong in the S3 transport besides the exchange itself ([`crate::client`] has
//! those): setting it up, signing, and answers that break the protocol. Each is carried as the
//! source of a [`StoreError`], which says what kind of failure it is.

use crate::client::{ClientError, TransportError};
use s3b_store::StoreError;

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The endpoint is not `scheme://host…`.
    #[error("invalid base URL \"{0}\"")]
    BaseUrl(String),
    /// The HTTP client could not be built (TLS set-up, `--cacert`).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("can't sign the request")]
pub struct SignError(#[source] pub s3b_store::BoxError);

/// An answer the protocol does not allow.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A multi-object DELETE answered with per-key errors.
    #[error("multi-object DELETE failed for {failed} of {total} keys: {message}")]
    MultiDelete {
        /// Keys that failed.
        failed: usize,
        /// Keys sent.
        total: usize,
        /// The first error's message or code.
        message: String,
    },
    /// Block 0's block-size header does not fit a block size.
    #[error("block size header {0} is too large")]
    BlockSizeHeader(u64),
}

impl From<TransportError> for StoreError {
    /// The kind of failure upstream would count the exchange as.
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout { .. } => StoreError::Timeout(e.into()),
            TransportError::Connect { .. } => StoreError::Connect(e.into()),
            TransportError::BadRequest { .. } => StoreError::Request(e.into()),
            TransportError::Exchange { .. } | TransportError::Body { .. } | TransportError::TooLarge { .. } => {
                StoreError::Transport(e.into())
            }
        }
    }
}

impl From<SetupError> for StoreError {
    fn from(e: SetupError) -> Self {
        StoreError::Request(e.into())
    }
}

impl From<SignError> for StoreError {
    fn from(e: SignError) -> Self {
        StoreError::Request(e.into())
    }
}

impl From<ServiceError> for StoreError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BlockSizeHeader(_) => StoreError::corrupt(0, e),
            ServiceError::MultiDelete { .. } => StoreError::Refused(e.into()),
        }
    }
}
