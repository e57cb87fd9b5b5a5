//! Objects of a volume's own besides its blocks: named by a string after the volume's prefix
//! (`<prefix><name>`), copied server-side, listed by name prefix.
//!
//! The snapshot layer keeps its bookkeeping (an index, per-snapshot maps) and the preserved
//! copies of blocks in such objects, beside the block objects, so that the block objects keep
//! exactly upstream's format. A transport that can store them answers
//! [`ObjectStore::named`](crate::ObjectStore::named) with itself; the others (the `--test`
//! directory for now) answer `None` and volumes on them cannot have snapshots.
//!
//! A copy is made by the server (S3 CopyObject) and keeps the stored bytes and the headers
//! that say how they are encoded (`Content-Encoding`, the HMAC), so the copy of an encrypted
//! or compressed block stays encrypted or compressed, and no data travels through the client.

use crate::{BlockNum, Etag, ObjectBody, Result};
use async_trait::async_trait;

/// A named object as a GET returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedObject {
    /// Body and encoding headers.
    pub body: ObjectBody,
    /// Its ETag, when the transport reports one.
    pub etag: Option<Etag>,
}

/// Named objects beside the block objects (see the module documentation).
#[async_trait]
pub trait NamedObjects: Send + Sync {
    /// Fetches the object `name`; `None` when there is none.
    async fn get_named(&self, name: &str) -> Result<Option<NamedObject>>;

    /// Stores `body` (with its encoding headers) as the object `name`, replacing any.
    async fn put_named(&self, name: &str, body: ObjectBody) -> Result<()>;

    /// Deletes the object `name`; a missing object is not an error.
    async fn delete_named(&self, name: &str) -> Result<()>;

    /// Copies the object of block `n`, with its encoding headers, to `to`, on the server.
    /// Returns false (and creates nothing) when block `n` has no object.
    async fn copy_block(&self, n: BlockNum, to: &str) -> Result<bool>;

    /// Copies the object `from`, with its encoding headers, to `to`, on the server. Returns
    /// false (and creates nothing) when `from` does not exist.
    async fn copy_named(&self, from: &str, to: &str) -> Result<bool>;

    /// Calls `sink` with the name (without the volume's prefix) and size in bytes of every
    /// object whose name starts with `prefix`. This is a LIST: only bookkeeping commands and
    /// crash recovery use it.
    async fn list_named(&self, prefix: &str, sink: &(dyn for<'k> Fn(&'k str, u64) + Send + Sync)) -> Result<()>;
}
