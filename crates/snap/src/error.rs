//! What can go wrong with snapshots, as typed values.

use s3b_store::StoreError;

/// A snapshot operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// No snapshot has this name.
    #[error("no snapshot named \"{0}\"")]
    Unknown(String),
    /// A snapshot of this name exists already.
    #[error("a snapshot named \"{0}\" exists already")]
    Exists(String),
    /// The name is not allowed.
    #[error(
        "invalid snapshot name \"{0}\": use 1 to 64 letters, digits, '.', '_', '-', ':' or '+', not starting with '-'"
    )]
    BadName(String),
    /// The store cannot hold the snapshot bookkeeping (no named objects, e.g. `--test`).
    #[error("snapshots need an S3 bucket; this store cannot hold them")]
    Unsupported,
    /// A bookkeeping object is not in the expected format.
    #[error("snapshot bookkeeping object \"{object}\" is damaged (line \"{line}\")")]
    Format {
        /// The object.
        object: String,
        /// The line that does not parse.
        line: String,
    },
    /// The server's copies lose the headers that say how a block is encoded, so copies of
    /// compressed or encrypted blocks could not be read back.
    #[error("the server's CopyObject does not keep an object's {0} header; snapshots would be unreadable")]
    CopyDropsHeaders(&'static str),
    /// A copy that the bookkeeping lists is missing.
    #[error("snapshot copy \"{0}\" is missing")]
    MissingCopy(String),
    /// A snapshot view kept meeting a changing index.
    #[error("the snapshots kept changing while block {0:#010x} was read")]
    Unsettled(u32),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

s3b_store::refusals_into_store_error!(SnapError);
