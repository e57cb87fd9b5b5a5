//! Preserving ahead: a block layer over the block cache that starts the copy-on-first-write of a block as soon as
//! the block is written to the cache, in the background, so that the copy is usually
//! done by the time the cache writes the block back, and the write-back costs one request, not
//! a copy and then a PUT in a row.
//!
//! It only moves the copy earlier: the copy is made by [`LiveStore`]'s own preservation (under
//! its gate and the block's lock), of the block as the server holds it then, which the newest
//! snapshot needs whatever the cache later writes; the write-back still preserves first if the
//! copy failed or was not started. At most [`crate::CONCURRENCY`] copies run ahead at once;
//! a write that finds them all busy leaves its copy to its write-back.

use crate::LiveStore;
use async_trait::async_trait;
use bytes::Bytes;
use s3b_store::{BlockData, BlockNum, BlockStore, Etag, Geometry, ReadOutcome, ReadRequest, Result, Revalidation};
use std::sync::Arc;

/// The layer; see the module documentation.
pub struct PreserveAhead {
    inner: Arc<dyn BlockStore>,
    live: Arc<LiveStore>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl PreserveAhead {
    /// Puts the layer over `inner` (the block cache), for the live volume's `live`.
    pub fn new(inner: Arc<dyn BlockStore>, live: Arc<LiveStore>) -> Self {
        PreserveAhead { inner, live, slots: Arc::new(tokio::sync::Semaphore::new(crate::CONCURRENCY)) }
    }

    /// Starts preserving the blocks `blocks` in the background where a slot is free.
    fn ahead(&self, blocks: &[BlockNum]) {
        for &n in blocks {
            if self.live.settled_now(n) {
                continue;
            }
            let Ok(slot) = self.slots.clone().try_acquire_owned() else { return };
            let live = self.live.clone();
            tokio::spawn(async move {
                // A failure is the write-back's to meet again (and report).
                if let Err(e) = live.preserve_ahead(n).await {
                    log::debug!("snapshots: copying block {n:#010x} ahead of its write-back failed: {e}");
                }
                drop(slot);
            });
        }
    }
}

#[async_trait]
impl BlockStore for PreserveAhead {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        self.inner.read_block(n, req).await
    }
    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        self.inner.revalidate(n, etag).await
    }
    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        self.ahead(&[n]);
        self.inner.write_block(n, data).await
    }
    async fn write_block_part(&self, n: BlockNum, offset: u32, data: Bytes) -> Result<()> {
        self.ahead(&[n]);
        self.inner.write_block_part(n, offset, data).await
    }
    async fn read_block_part(&self, n: BlockNum, offset: u32, len: u32) -> Result<Bytes> {
        self.inner.read_block_part(n, offset, len).await
    }
    async fn bulk_zero(&self, blocks: &[BlockNum]) -> Result<()> {
        self.ahead(blocks);
        self.inner.bulk_zero(blocks).await
    }
    fn known_zero(&self, n: BlockNum) -> bool {
        self.inner.known_zero(n)
    }
    fn below(&self) -> Option<&dyn BlockStore> {
        Some(&*self.inner)
    }
}
