//! A fault-injecting [`ObjectStore`] wrapper: `--test-delays`, `--test-discard`, `--test-errors`.
//!
//! Upstream offers these flags in `--test` mode, but its error injection is compiled to 0%.
//! Ours really injects: with `error_percent > 0`, that share of operations fails with
//! [`StoreError::Injected`] (EIO) before reaching the inner store, so nothing is half-done. The
//! wrapper works over any transport, which lets tests aim faults at the layers above.

use crate::stats::{StatsSource, StatsWriter};
use crate::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, VolumeMeta,
};
use async_trait::async_trait;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What to inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultConfig {
    /// Sleep a random 0-199 ms before each block operation.
    pub delays: bool,
    /// Drop writes and deletes; read every block as missing (zeros).
    pub discard: bool,
    /// Percentage (0-100) of block operations that fail.
    pub error_percent: u32,
}

/// The wrapper.
pub struct FaultyObjects {
    inner: Arc<dyn ObjectStore>,
    config: FaultConfig,
    counters: Arc<FaultCounters>,
}

/// Counts of injected faults, reported in the stats file.
#[derive(Default)]
pub struct FaultCounters {
    errors: AtomicU64,
    delays: AtomicU64,
}

impl StatsSource for FaultCounters {
    fn write_stats(&self, w: &mut StatsWriter) {
        w.count("test_injected_errors", self.errors.load(Ordering::Relaxed));
        w.count("test_injected_delays", self.delays.load(Ordering::Relaxed));
    }
    fn reset_stats(&self) {
        self.errors.store(0, Ordering::Relaxed);
        self.delays.store(0, Ordering::Relaxed);
    }
}

impl FaultyObjects {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> Self {
        FaultyObjects { inner, config, counters: Arc::default() }
    }

    /// The counters, to register with the stats registry.
    pub fn counters(&self) -> Arc<FaultCounters> {
        self.counters.clone()
    }

    async fn before(&self) -> Result<()> {
        let (delay, fail) = {
            let mut rng = rand::thread_rng();
            let delay = self.config.delays.then(|| rng.gen_range(0..200u64));
            let fail = self.config.error_percent > 0 && rng.gen_range(0..100u32) < self.config.error_percent;
            (delay, fail)
        };
        if let Some(ms) = delay {
            self.counters.delays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if fail {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Injected);
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyObjects {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.before().await?;
        if self.config.discard {
            return Ok(GetOutcome::NotFound);
        }
        self.inner.get_object(n, cond).await
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.before().await?;
        if self.config.discard {
            return Ok(None);
        }
        self.inner.put_object(n, body, volume).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.before().await?;
        if self.config.discard {
            return Ok(());
        }
        self.inner.delete_object(n).await
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        self.before().await?;
        if self.config.discard {
            return Ok(());
        }
        self.inner.delete_objects(blocks).await
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        if self.config.discard {
            return Ok(());
        }
        self.inner.list_objects(sink).await
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        self.inner.read_volume_meta().await
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        self.inner.mount_token(op).await
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<crate::TokenSwap> {
        self.inner.swap_mount_token(expected, new).await
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.inner.flush(blocks).await
    }

    fn set_block_size(&self, block_size: u32) {
        self.inner.set_block_size(block_size)
    }
}
