//! What can go wrong with clones, as typed values.

use s3b_store::StoreError;

/// A clone operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// The clone record is not in the expected format.
    #[error("clone record \"s3backer-clone\" is damaged (line \"{line}\")")]
    Format {
        /// The line that does not parse.
        line: String,
    },
    /// The base is not there (the source volume, or its snapshot, is gone).
    #[error("the clone's base {0} is missing")]
    BaseMissing(String),
    /// The base is not what the clone was made from.
    #[error("the clone's base {base} changed since the clone was made ({what}); the clone cannot be read")]
    BaseChanged {
        /// The base.
        base: String,
        /// What differs.
        what: String,
    },
    /// `--flatten` of a volume that is not a clone.
    #[error("{0} is not a clone (it has no clone record)")]
    NotAClone(String),
    /// `--cloneOf` names another base than the one the volume is a clone of.
    #[error("{volume} is already a clone of {base}")]
    OtherClone {
        /// The volume.
        volume: String,
        /// Its base.
        base: String,
    },
    /// `--cloneOf` on a volume that already holds data.
    #[error("{0} already holds a volume ({1}): --cloneOf makes a clone only in an empty place")]
    HasData(String, &'static str),
    /// The base is itself a clone.
    #[error("{0} is itself a clone: clones of clones are not supported; flatten it first (--flatten)")]
    ChainTooDeep(String),
    /// The store cannot hold a clone record (e.g. `--test`).
    #[error("clones need an S3 bucket; this store cannot hold them")]
    Unsupported,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

s3b_store::refusals_into_store_error!(CloneError);
