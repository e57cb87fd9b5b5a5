//! In-memory test doubles of both store traits (cargo feature `mock`): [`MemBlocks`] is a
//! [`BlockStore`], [`MemObjects`] an [`ObjectStore`].
//!
//! Both keep their contents in a map and share one set of [`Hooks`] (reached through `Deref`):
//! - counts per kind of operation ([`Op`]): calls, in flight now, most in flight at once,
//!   successes, failures — and [`Hooks::wait_until`] to wait for a state of those counts;
//! - delays (fixed or random up to a bound), which cost nothing on tokio's paused clock;
//! - gates ([`Gate`]): operations wait at a gate until the test lets them through, and the test
//!   can wait until an operation has arrived there; a gate behind an operation holds its answer
//!   instead (an answer that is old by the time it arrives);
//! - failures ([`Fail`]): the next N operations, every operation on one block, every one, or a
//!   share of them, with [`StoreError::Injected`] or an error the test chooses.
//!
//! [`MemTokenObject`] is a third double: an S3 server holding one mount token object, with the
//! faults S3 documents (503, 500), lost answers, dropped requests and late application.
//!
//! An operation goes through its hooks in this order: counted as called (and in flight), gates,
//! delay, failure, the map, then the gates behind it; it stops being in flight when it returns
//! or is dropped.

use crate::named::{NamedObject, NamedObjects};
use crate::{
    BlockData, BlockNum, BlockStore, Etag, Geometry, GetOutcome, ObjectBody, ObjectStore, ReadCondition, ReadOutcome,
    ReadRequest, Result, Revalidation, StoreError, TokenCondition, TokenObject, TokenOp, TokenState, TokenSwap,
    VolumeMeta,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::ops::{Deref, Index};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How long [`Hooks::wait_until`] and [`Gate::arrived`] wait before they fail the test (on the
/// paused clock this passes at once when nothing else can run: a hang becomes a failure).
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Lets `d` pass in a test on tokio's paused clock (`#[tokio::test(start_paused = true)]`):
/// every timer due by then fires in order, and what it wakes runs until it waits again before
/// the clock moves on. No real time passes: this is a step of the test's script, not a wait for
/// something to happen.
pub async fn elapse(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A kind of store operation, for counting and aiming hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `read_block`, `get_object`.
    Read,
    /// `write_block` (zeros too), `put_object`, `delete_object`.
    Write,
    /// `survey_non_zero`, `list_objects`.
    List,
    /// `flush`.
    Flush,
    /// `mount_token`, `swap_mount_token`.
    Token,
    /// `read_volume_meta`.
    Meta,
    /// `shutdown`.
    Shutdown,
}

impl Op {
    const ALL: usize = 7;
}

/// Counts of one kind of operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCount {
    /// Operations begun.
    pub calls: u64,
    /// Operations begun and not finished (waiting at a gate included).
    pub in_flight: u64,
    /// The most that were in flight at once.
    pub max_in_flight: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed by an injected failure.
    pub failed: u64,
}

/// Counts of every kind of operation, indexed by [`Op`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts([OpCount; Op::ALL]);

impl Index<Op> for Counts {
    type Output = OpCount;
    fn index(&self, op: Op) -> &OpCount {
        &self.0[op as usize]
    }
}

/// Which operations fail (see [`Hooks::fail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// The next N operations.
    Next(u64),
    /// Every operation on this block.
    Block(BlockNum),
    /// Every operation.
    Always,
    /// This percentage (0-100) of operations, at random.
    Percent(u32),
}

type MakeError = Arc<dyn Fn(BlockNum) -> StoreError + Send + Sync>;

struct Failure {
    op: Op,
    which: Fail,
    error: MakeError,
}

#[derive(Clone, Copy)]
struct Delay {
    min: Duration,
    max: Duration,
}

/// What an operation passes through: counts, gates, delays and failures. Shared by
/// [`MemBlocks`] and [`MemObjects`].
pub struct Hooks {
    counts: watch::Sender<Counts>,
    gates: Mutex<Vec<Arc<Gate>>>,
    delays: Mutex<HashMap<Op, Delay>>,
    failures: Mutex<Vec<Failure>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            counts: watch::Sender::new(Counts::default()),
            gates: Mutex::default(),
            delays: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

/// Marks an operation in flight until dropped.
struct InFlight<'a>(&'a Hooks, Op);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.counts.send_modify(|c| c.0[self.1 as usize].in_flight -= 1);
    }
}

impl Hooks {
    /// The counts now.
    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// The counts of one kind of operation now.
    pub fn count(&self, op: Op) -> OpCount {
        self.counts()[op]
    }

    /// Operations of kind `op` begun so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.count(op).calls
    }

    /// Operations of kind `op` that succeeded so far.
    pub fn ok(&self, op: Op) -> u64 {
        self.count(op).ok
    }

    /// Waits until `done` holds for the counts; panics after [`WAIT_LIMIT`].
    pub async fn wait_until(&self, what: &str, done: impl FnMut(&Counts) -> bool) {
        let mut rx = self.counts.subscribe();
        if tokio::time::timeout(WAIT_LIMIT, rx.wait_for(done)).await.is_err() {
            panic!("never {what}: {:?}", self.counts());
        }
    }

    /// Every operation of kind `op` first sleeps `delay`.
    pub fn delay(&self, op: Op, delay: Duration) {
        self.delays.lock().insert(op, Delay { min: delay, max: delay });
    }

    /// Every operation of kind `op` first sleeps a random time below `max`.
    pub fn delay_up_to(&self, op: Op, max: Duration) {
        self.delays.lock().insert(op, Delay { min: Duration::ZERO, max });
    }

    /// Operations of kind `op` fail as `which` says, with [`StoreError::Injected`].
    pub fn fail(&self, op: Op, which: Fail) {
        self.fail_with(op, which, |_| StoreError::Injected);
    }

    /// Operations of kind `op` fail as `which` says, with the error `error` makes of the block
    /// number (0 for operations without one).
    pub fn fail_with(&self, op: Op, which: Fail, error: impl Fn(BlockNum) -> StoreError + Send + Sync + 'static) {
        self.failures.lock().push(Failure { op, which, error: Arc::new(error) });
    }

    /// Removes every failure rule.
    pub fn stop_failing(&self) {
        self.failures.lock().clear();
    }

    /// Closes a new gate in front of every operation of kind `op`.
    pub fn hold(&self, op: Op) -> Arc<Gate> {
        self.add_gate(op, None, false)
    }

    /// Closes a new gate in front of the operations of kind `op` on block `n`.
    pub fn hold_block(&self, op: Op, n: BlockNum) -> Arc<Gate> {
        self.add_gate(op, Some(n), false)
    }

    /// Closes a new gate behind the operations of kind `op` on block `n`: each is done on the
    /// map at once and waits at the gate with its answer.
    pub fn hold_answers(&self, op: Op, n: BlockNum) -> Arc<Gate> {
        self.add_gate(op, Some(n), true)
    }

    fn add_gate(&self, op: Op, block: Option<BlockNum>, behind: bool) -> Arc<Gate> {
        let g = Arc::new(Gate { op, block, behind, state: watch::Sender::new(GateState::default()) });
        self.gates.lock().push(g.clone());
        g
    }

    /// The gates in front of (or, with `behind`, behind) an operation of kind `op` on `n`.
    fn gates_of(&self, op: Op, n: Option<BlockNum>, behind: bool) -> Vec<Arc<Gate>> {
        let gates = self.gates.lock();
        gates
            .iter()
            .filter(|g| g.op == op && g.behind == behind && (g.block.is_none() || g.block == n))
            .cloned()
            .collect()
    }

    /// Runs an operation through the hooks, then `body` (the operation on the map).
    async fn run<T>(&self, op: Op, n: Option<BlockNum>, body: impl FnOnce() -> Result<T>) -> Result<T> {
        self.counts.send_modify(|c| {
            let k = &mut c.0[op as usize];
            k.calls += 1;
            k.in_flight += 1;
            k.max_in_flight = k.max_in_flight.max(k.in_flight);
        });
        let _in_flight = InFlight(self, op);
        for g in self.gates_of(op, n, false) {
            g.pass().await;
        }
        let delay = self.delays.lock().get(&op).copied();
        if let Some(d) = delay {
            let t = if d.max > d.min { rand::thread_rng().gen_range(d.min..d.max) } else { d.min };
            tokio::time::sleep(t).await;
        }
        if let Some(e) = self.injected(op, n) {
            self.counts.send_modify(|c| c.0[op as usize].failed += 1);
            return Err(e);
        }
        let r = body();
        for g in self.gates_of(op, n, true) {
            g.pass().await;
        }
        if r.is_ok() {
            self.counts.send_modify(|c| c.0[op as usize].ok += 1);
        }
        r
    }

    fn injected(&self, op: Op, n: Option<BlockNum>) -> Option<StoreError> {
        let mut failures = self.failures.lock();
        for f in failures.iter_mut().filter(|f| f.op == op) {
            let hit = match &mut f.which {
                Fail::Next(0) => false,
                Fail::Next(left) => {
                    *left -= 1;
                    true
                }
                Fail::Block(b) => n == Some(*b),
                Fail::Always => true,
                Fail::Percent(p) => rand::thread_rng().gen_range(0..100) < *p,
            };
            if hit {
                return Some((f.error)(n.unwrap_or(0)));
            }
        }
        None
    }
}

/// The state of a [`Gate`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GateState {
    /// Open for good: every operation passes.
    pub open: bool,
    /// Operations that may still pass while closed.
    pub permits: u64,
    /// Operations that reached the gate so far.
    pub arrived: u64,
    /// Operations waiting at it now.
    pub waiting: u64,
}

/// A gate in front of (or behind) operations: closed when made, operations wait at it until the
/// test lets them through ([`allow`](Self::allow), [`release`](Self::release)).
pub struct Gate {
    op: Op,
    block: Option<BlockNum>,
    /// Behind the operation (it waits with its answer) rather than in front of it.
    behind: bool,
    state: watch::Sender<GateState>,
}

/// Counts an operation waiting at a gate until it passes or is dropped.
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| s.waiting -= 1);
    }
}

impl Gate {
    async fn pass(&self) {
        let mut rx = self.state.subscribe();
        self.state.send_modify(|s| {
            s.arrived += 1;
            s.waiting += 1;
        });
        let _waiting = Waiting(self);
        loop {
            let passed = self.state.send_if_modified(|s| {
                if s.open {
                    return true;
                }
                if s.permits > 0 {
                    s.permits -= 1;
                    return true;
                }
                false
            });
            if passed {
                return;
            }
            // The sender lives as long as `self`.
            let _ = rx.changed().await;
        }
    }

    /// The state now.
    pub fn state(&self) -> GateState {
        *self.state.borrow()
    }

    /// Lets `n` more operations through.
    pub fn allow(&self, n: u64) {
        self.state.send_modify(|s| s.permits += n);
    }

    /// Opens the gate for good: waiting and later operations pass.
    pub fn release(&self) {
        self.state.send_modify(|s| s.open = true);
    }

    /// Closes the gate again.
    pub fn close(&self) {
        self.state.send_modify(|s| s.open = false);
    }

    /// Waits until `n` operations in all have reached the gate; panics after [`WAIT_LIMIT`].
    pub async fn arrived(&self, n: u64) {
        self.wait_until(|s| s.arrived >= n).await;
    }

    /// Waits until `n` operations wait at the gate now; panics after [`WAIT_LIMIT`].
    pub async fn waiting(&self, n: u64) {
        self.wait_until(|s| s.waiting == n).await;
    }

    async fn wait_until(&self, done: impl FnMut(&GateState) -> bool) {
        let mut rx = self.state.subscribe();
        if tokio::time::timeout(WAIT_LIMIT, rx.wait_for(done)).await.is_err() {
            panic!("gate on {:?}: never got there: {:?}", self.op, self.state());
        }
    }
}

/// Gives a store's [`Hooks`] methods to the store itself.
macro_rules! hooks_deref {
    ($store:ty) => {
        impl Deref for $store {
            type Target = Hooks;
            fn deref(&self) -> &Hooks {
                &self.hooks
            }
        }
    };
}

/// The ETag of version `v` of an object.
fn version_etag(v: u64) -> Etag {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&v.to_le_bytes());
    e[8] = 0xe7;
    Etag(e)
}

/// Answers a conditional read of an object stored with `etag`: `Err` for a failed `If-Match`,
/// `Ok(false)` for "not modified", `Ok(true)` for "send the data".
fn check_condition(n: BlockNum, etag: Option<Etag>, cond: ReadCondition) -> Result<bool> {
    match (cond, etag) {
        (ReadCondition::IfNoneMatch(want), Some(e)) if e == want => Ok(false),
        (ReadCondition::IfMatch(want), Some(e)) if e != want => Err(StoreError::Stale(n)),
        _ => Ok(true),
    }
}

/// An in-memory [`BlockStore`]: blocks in a map, each with an ETag (a version number) unless
/// made [`without_etags`](Self::without_etags); conditional reads are answered as S3 would.
/// Writing `None` (zeros) removes the block; a write of other than one block's length
/// panics (a bug in the layer above). Hooks: see the module documentation.
pub struct MemBlocks {
    block_size: u32,
    num_blocks: u64,
    etags: bool,
    blocks: Mutex<HashMap<BlockNum, (Bytes, Option<Etag>)>>,
    version: AtomicU64,
    deletes: AtomicU64,
    conditions: Mutex<Vec<ReadCondition>>,
    flushes: Mutex<Vec<Option<Vec<BlockNum>>>>,
    known_zero: Mutex<HashSet<BlockNum>>,
    hooks: Hooks,
}

hooks_deref!(MemBlocks);

impl MemBlocks {
    /// An empty store of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        MemBlocks {
            block_size,
            num_blocks,
            etags: true,
            blocks: Mutex::default(),
            version: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            conditions: Mutex::default(),
            flushes: Mutex::default(),
            known_zero: Mutex::default(),
            hooks: Hooks::default(),
        }
    }

    /// The same store, answering without ETags (as a store that does not know them).
    pub fn without_etags(mut self) -> Self {
        self.etags = false;
        self
    }

    fn next_etag(&self) -> Option<Etag> {
        let v = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.etags.then(|| version_etag(v))
    }

    /// Stores `data` as block `n`, past the hooks (a new version).
    pub fn put(&self, n: BlockNum, data: Bytes) {
        let e = self.next_etag();
        self.blocks.lock().insert(n, (data, e));
    }

    /// The stored contents of block `n` (`None`: absent, i.e. zeros).
    pub fn get(&self, n: BlockNum) -> Option<Bytes> {
        self.blocks.lock().get(&n).map(|b| b.0.clone())
    }

    /// The stored contents of block `n`, zeros when absent.
    pub fn get_or_zeros(&self, n: BlockNum) -> Bytes {
        self.get(n).unwrap_or_else(|| crate::zero_block(self.block_size))
    }

    /// The numbers of the stored blocks, in order.
    pub fn stored(&self) -> Vec<BlockNum> {
        let mut v: Vec<BlockNum> = self.blocks.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Successful writes that removed a block because they carried `None` (not zeros).
    pub fn deletes(&self) -> u64 {
        self.deletes.load(Ordering::SeqCst)
    }

    /// The conditions every read came with, in order.
    pub fn read_conditions(&self) -> Vec<ReadCondition> {
        self.conditions.lock().clone()
    }

    /// The blocks every flush named (`None`: all), in order.
    pub fn flushes(&self) -> Vec<Option<Vec<BlockNum>>> {
        self.flushes.lock().clone()
    }

    /// From now on [`BlockStore::known_zero`] says yes for these blocks.
    pub fn set_known_zero(&self, blocks: &[BlockNum]) {
        self.known_zero.lock().extend(blocks.iter().copied());
    }

    fn read_now(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        let Some((data, etag)) = self.blocks.lock().get(&n).cloned() else {
            return Ok(ReadOutcome::Zero);
        };
        check_condition(n, etag, req.condition())?;
        Ok(ReadOutcome::Data { data, etag })
    }

    fn revalidate_now(&self, n: BlockNum, want: Etag) -> Result<Revalidation> {
        let Some((data, etag)) = self.blocks.lock().get(&n).cloned() else {
            return Ok(Revalidation::Changed(ReadOutcome::Zero));
        };
        Ok(if check_condition(n, etag, ReadCondition::IfNoneMatch(want))? {
            Revalidation::Changed(ReadOutcome::Data { data, etag })
        } else {
            Revalidation::Unchanged
        })
    }

    fn write_now(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        if let Some(d) = &data {
            assert_eq!(d.len(), self.block_size as usize, "block {n:#010x} is written whole");
        }
        match data {
            Some(d) => {
                let e = self.next_etag();
                self.blocks.lock().insert(n, (d.into_bytes(), e));
                Ok(e)
            }
            None => {
                self.deletes.fetch_add(1, Ordering::SeqCst);
                self.blocks.lock().remove(&n);
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl BlockStore for MemBlocks {
    fn geometry(&self) -> Geometry {
        Geometry { block_size: self.block_size, num_blocks: self.num_blocks }
    }

    async fn read_block(&self, n: BlockNum, req: ReadRequest) -> Result<ReadOutcome> {
        self.conditions.lock().push(req.condition());
        self.hooks.run(Op::Read, Some(n), || self.read_now(n, req)).await
    }

    async fn revalidate(&self, n: BlockNum, etag: Etag) -> Result<Revalidation> {
        self.conditions.lock().push(ReadCondition::IfNoneMatch(etag));
        self.hooks.run(Op::Read, Some(n), || self.revalidate_now(n, etag)).await
    }

    async fn write_block(&self, n: BlockNum, data: Option<BlockData>) -> Result<Option<Etag>> {
        self.hooks.run(Op::Write, Some(n), || self.write_now(n, data)).await
    }

    fn known_zero(&self, n: BlockNum) -> bool {
        self.known_zero.lock().contains(&n)
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        self.flushes.lock().push(blocks.map(<[BlockNum]>::to_vec));
        self.hooks.run(Op::Flush, None, || Ok(())).await
    }

    async fn survey_non_zero(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let blocks = self.hooks.run(Op::List, None, || Ok(self.stored())).await?;
        blocks.into_iter().for_each(sink);
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.hooks.run(Op::Shutdown, None, || Ok(())).await
    }
}

/// An in-memory [`ObjectStore`]: objects in a map with version ETags, the volume metadata and
/// the mount token (swapped atomically, as a store shared between hosts must). Hooks: see the
/// module documentation.
#[derive(Default)]
pub struct MemObjects {
    objects: Mutex<HashMap<BlockNum, (ObjectBody, Etag)>>,
    named: Mutex<std::collections::BTreeMap<String, (ObjectBody, Etag)>>,
    meta: Mutex<Option<VolumeMeta>>,
    token: AtomicU32,
    version: AtomicU64,
    hooks: Hooks,
}

hooks_deref!(MemObjects);

impl MemObjects {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mount token now, past the hooks (0: none).
    pub fn token(&self) -> u32 {
        self.token.load(Ordering::SeqCst)
    }

    /// Sets the mount token past the hooks, as another mount would.
    pub fn set_token(&self, token: u32) {
        self.token.store(token, Ordering::SeqCst);
    }

    /// The stored object of block `n`.
    pub fn object(&self, n: BlockNum) -> Option<ObjectBody> {
        self.objects.lock().get(&n).map(|o| o.0.clone())
    }

    /// The numbers of the stored objects, in order.
    pub fn stored(&self) -> Vec<BlockNum> {
        let mut v: Vec<BlockNum> = self.objects.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The names of the stored named objects, in order.
    pub fn named_objects(&self) -> Vec<String> {
        self.named.lock().keys().cloned().collect()
    }

    fn new_etag(&self) -> Etag {
        version_etag(self.version.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn get_now(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        let Some((body, etag)) = self.objects.lock().get(&n).cloned() else {
            return Ok(GetOutcome::NotFound);
        };
        Ok(if check_condition(n, Some(etag), cond)? {
            GetOutcome::Found { body, etag: Some(etag) }
        } else {
            GetOutcome::NotModified
        })
    }

    fn put_now(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Etag {
        let e = version_etag(self.version.fetch_add(1, Ordering::SeqCst) + 1);
        self.objects.lock().insert(n, (body, e));
        if volume.is_some() {
            *self.meta.lock() = volume;
        }
        e
    }

    fn token_now(&self, op: TokenOp) -> u32 {
        match op {
            TokenOp::Read => self.token(),
            TokenOp::Clear => self.token.swap(0, Ordering::SeqCst),
            TokenOp::Set(t) => self.token.swap(t, Ordering::SeqCst),
        }
    }
}

#[async_trait]
impl ObjectStore for MemObjects {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.hooks.run(Op::Read, Some(n), || self.get_now(n, cond)).await
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.hooks.run(Op::Write, Some(n), || Ok(Some(self.put_now(n, body, volume)))).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.hooks
            .run(Op::Write, Some(n), || {
                self.objects.lock().remove(&n);
                Ok(())
            })
            .await
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let objects = self.hooks.run(Op::List, None, || Ok(self.stored())).await?;
        objects.into_iter().for_each(sink);
        Ok(())
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        self.hooks.run(Op::Meta, None, || Ok(*self.meta.lock())).await
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        self.hooks.run(Op::Token, None, || Ok(self.token_now(op))).await
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.hooks
            .run(Op::Token, None, || {
                Ok(match self.token.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => TokenSwap::Done(new),
                    Err(now) => TokenSwap::Changed(now),
                })
            })
            .await
    }

    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        self.hooks.run(Op::Flush, None, || Ok(())).await
    }

    fn named(&self) -> Option<&dyn NamedObjects> {
        Some(self)
    }
}

/// Named objects in a second map; reads, writes (copies and deletes too) and lists go through
/// the hooks as [`Op::Read`], [`Op::Write`] and [`Op::List`] without a block number.
#[async_trait]
impl NamedObjects for MemObjects {
    async fn get_named(&self, name: &str) -> Result<Option<NamedObject>> {
        let found = self.hooks.run(Op::Read, None, || Ok(self.named.lock().get(name).cloned())).await?;
        Ok(found.map(|(body, etag)| NamedObject { body, etag: Some(etag) }))
    }

    async fn put_named(&self, name: &str, body: ObjectBody) -> Result<()> {
        self.hooks
            .run(Op::Write, None, || {
                let e = self.new_etag();
                self.named.lock().insert(name.to_string(), (body, e));
                Ok(())
            })
            .await
    }

    async fn delete_named(&self, name: &str) -> Result<()> {
        self.hooks
            .run(Op::Write, None, || {
                self.named.lock().remove(name);
                Ok(())
            })
            .await
    }

    async fn copy_block(&self, n: BlockNum, to: &str) -> Result<bool> {
        self.hooks
            .run(Op::Write, None, || {
                let Some((body, _)) = self.objects.lock().get(&n).cloned() else { return Ok(false) };
                let e = self.new_etag();
                self.named.lock().insert(to.to_string(), (body, e));
                Ok(true)
            })
            .await
    }

    async fn copy_named(&self, from: &str, to: &str) -> Result<bool> {
        self.hooks
            .run(Op::Write, None, || {
                let mut named = self.named.lock();
                let Some((body, _)) = named.get(from).cloned() else { return Ok(false) };
                let e = self.new_etag();
                named.insert(to.to_string(), (body, e));
                Ok(true)
            })
            .await
    }

    async fn list_named(&self, prefix: &str, sink: &(dyn for<'k> Fn(&'k str, u64) + Send + Sync)) -> Result<()> {
        let found: Vec<(String, u64)> = self
            .hooks
            .run(Op::List, None, || {
                Ok(self
                    .named
                    .lock()
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, (b, _))| (k.clone(), b.data.len() as u64))
                    .collect())
            })
            .await?;
        for (k, size) in found {
            sink(&k, size);
        }
        Ok(())
    }
}

/// A token request kind, for [`MemTokenObject`]'s scripts and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenReq {
    /// [`TokenObject::head_token`].
    Head,
    /// [`TokenObject::put_token`].
    Put,
    /// [`TokenObject::delete_token`].
    Delete,
}

/// What [`MemTokenObject`] does with one request instead of answering it plainly: the errors S3
/// documents and the ones a network adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// Refused with this HTTP status, nothing done (503 SlowDown, 500 InternalError, 429:
    /// [`StoreError::Unavailable`]; 501: [`StoreError::Unsupported`]).
    Refuse(u16),
    /// Done, then answered with this status (a 500 from a server that stored the write).
    DoneThenStatus(u16),
    /// Done, but the answer is lost: the client sees a reset connection.
    LostAnswer,
    /// Never reaches the server: the client sees a reset connection.
    Dropped,
    /// The answer is lost now (a reset), and the server applies the request this long after it
    /// arrived (it was still working on it when the client gave up). A HEAD is just lost.
    AppliedLater(Duration),
}

/// How [`MemTokenObject`] treats the preconditions of writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPreconditions {
    /// Checked and applied atomically (AWS S3).
    Atomic,
    /// Ignored: every write is done (Garage 2.5).
    Ignored,
    /// Checked when the request arrives, applied when it is answered: two writes that arrive
    /// together both pass (s3s-fs 0.14).
    CheckThenWrite,
    /// Checked and applied atomically, as Ceph's RGW 16 does it: a PUT's `If-Match` is compared
    /// with the ETag without its quotes, so the quoted ETag a HEAD returns never matches, and a
    /// DELETE's precondition is ignored.
    AtomicUnquotedPut,
}

/// Random faults and latencies of [`MemTokenObject`], in percent of requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenChaos {
    /// Seed of the random choices (runs are reproducible).
    pub seed: u64,
    /// Refused with 503.
    pub refuse_503: u32,
    /// Refused with 500.
    pub refuse_500: u32,
    /// Done, answered 500.
    pub done_500: u32,
    /// Done, answer lost.
    pub lost: u32,
    /// Dropped before the server.
    pub dropped: u32,
    /// Applied up to `later_max` after arrival, answer lost.
    pub later: u32,
    /// Longest delay of a late application.
    pub later_max: Duration,
    /// Each request takes a random time below this to arrive, and again to be answered.
    pub latency_max: Duration,
}

/// A write waiting to be applied.
#[derive(Clone, Debug)]
struct TokenWrite {
    /// The new token; 0 deletes the object.
    token: u32,
    cond: TokenCondition,
}

struct TokenServer {
    /// 0: no object.
    token: u32,
    version: u64,
    pending: Vec<(tokio::time::Instant, TokenWrite)>,
    history: Vec<(tokio::time::Instant, u32)>,
    scripts: HashMap<TokenReq, std::collections::VecDeque<Option<TokenFault>>>,
    chaos: Option<(rand::rngs::StdRng, TokenChaos)>,
    requests: HashMap<TokenReq, u64>,
    conditions_seen: u64,
    /// Whether late writes are checked against their precondition when they take effect.
    check_late: bool,
    /// [`TokenPreconditions::AtomicUnquotedPut`].
    unquoted_put: bool,
}

/// An in-memory S3 server holding one mount token object, for the fenced mount protocol's tests
/// (it implements [`TokenObject`]): it answers each request after a latency, and can refuse it
/// (503, 500), lose its answer after doing it, drop it, or apply it later, by script
/// ([`script`](Self::script)) or at random ([`chaos`](Self::chaos)). Preconditions are honoured
/// as one of the real servers does ([`TokenPreconditions`]). Every applied write is recorded
/// with the time it took effect ([`history`](Self::history)). Time is tokio's, so on the paused
/// clock a test is a deterministic script.
pub struct MemTokenObject {
    server: Mutex<TokenServer>,
    preconditions: TokenPreconditions,
}

impl MemTokenObject {
    /// A server without a token object, honouring preconditions as `preconditions` says.
    pub fn new(preconditions: TokenPreconditions) -> Self {
        MemTokenObject {
            server: Mutex::new(TokenServer {
                token: 0,
                version: 0,
                pending: Vec::new(),
                history: Vec::new(),
                scripts: HashMap::new(),
                chaos: None,
                requests: HashMap::new(),
                conditions_seen: 0,
                check_late: preconditions != TokenPreconditions::Ignored,
                unquoted_put: preconditions == TokenPreconditions::AtomicUnquotedPut,
            }),
            preconditions,
        }
    }

    /// The next requests of kind `req` meet these faults in turn (`None`: answered plainly);
    /// after the script come the random ones, if any.
    pub fn script(&self, req: TokenReq, faults: &[Option<TokenFault>]) {
        self.server.lock().scripts.entry(req).or_default().extend(faults.iter().copied());
    }

    /// Random faults and latencies from now on.
    pub fn chaos(&self, chaos: TokenChaos) {
        use rand::SeedableRng;
        self.server.lock().chaos = Some((rand::rngs::StdRng::seed_from_u64(chaos.seed), chaos));
    }

    /// The token now (0: none), with every late write due by now applied.
    pub fn token(&self) -> u32 {
        let mut s = self.server.lock();
        s.apply_due(tokio::time::Instant::now());
        s.token
    }

    /// Stores a token past the faults, as another program would (0 deletes it).
    pub fn set_token(&self, token: u32) {
        let mut s = self.server.lock();
        s.apply(tokio::time::Instant::now(), token);
    }

    /// Every write applied so far: when it took effect and the token it left (0: deleted).
    pub fn history(&self) -> Vec<(tokio::time::Instant, u32)> {
        let mut s = self.server.lock();
        s.apply_due(tokio::time::Instant::now());
        s.history.clone()
    }

    /// Late writes not applied yet.
    pub fn pending(&self) -> usize {
        self.server.lock().pending.len()
    }

    /// Requests of kind `req` received so far.
    pub fn requests(&self, req: TokenReq) -> u64 {
        self.server.lock().requests.get(&req).copied().unwrap_or(0)
    }

    /// Writes received so far that carried a precondition.
    pub fn conditional_requests(&self) -> u64 {
        self.server.lock().conditions_seen
    }

    /// Runs one request: `write` is `None` for a HEAD.
    async fn request(&self, req: TokenReq, write: Option<TokenWrite>) -> Result<TokenState> {
        let (fault, arrive, answer) = {
            let mut s = self.server.lock();
            *s.requests.entry(req).or_default() += 1;
            if write.as_ref().is_some_and(|w| w.cond != TokenCondition::None) {
                s.conditions_seen += 1;
            }
            let scripted = s.scripts.get_mut(&req).and_then(|q| q.pop_front());
            let (fault, arrive, answer) = s.roll();
            (scripted.unwrap_or(fault), arrive, answer)
        };
        tokio::time::sleep(arrive).await;
        let reset = || StoreError::Unavailable("connection reset by peer (injected)".into());
        // The statuses a fault names are server errors S3 documents (passing trouble), or 501:
        // the server does not implement the precondition.
        let status = |status: u16| {
            let detail = format!("HTTP {status} (injected)").into();
            if status == 501 { StoreError::Unsupported(detail) } else { StoreError::Unavailable(detail) }
        };
        let outcome = match fault {
            Some(TokenFault::Dropped) => return Err(reset()),
            Some(TokenFault::Refuse(code)) => Err(status(code)),
            Some(TokenFault::AppliedLater(d)) => {
                if let Some(w) = write {
                    self.server.lock().pending.push((tokio::time::Instant::now() + d, w));
                }
                Err(reset())
            }
            _ => self.act(write, answer).await,
        };
        tokio::time::sleep(answer).await;
        match (fault, outcome) {
            (Some(TokenFault::LostAnswer), _) => Err(reset()),
            (Some(TokenFault::DoneThenStatus(code)), _) => Err(status(code)),
            (_, outcome) => outcome,
        }
    }

    /// Does a request that reached the server; a write that checks and then writes takes
    /// `answer` (half of it) between the two.
    async fn act(&self, write: Option<TokenWrite>, answer: Duration) -> Result<TokenState> {
        let checked_only = {
            let now = tokio::time::Instant::now();
            let mut s = self.server.lock();
            s.apply_due(now);
            match (&write, self.preconditions) {
                (None, _) => return Ok(s.state()),
                (Some(w), TokenPreconditions::Atomic | TokenPreconditions::AtomicUnquotedPut) => {
                    return s.write(now, w, true);
                }
                (Some(w), TokenPreconditions::Ignored) => return s.write(now, w, false),
                (Some(w), TokenPreconditions::CheckThenWrite) => {
                    s.check(w)?;
                    w.clone()
                }
            }
        };
        tokio::time::sleep(answer / 2).await;
        let now = tokio::time::Instant::now();
        let mut s = self.server.lock();
        s.apply_due(now);
        s.write(now, &checked_only, false)
    }
}

impl TokenServer {
    fn state(&self) -> TokenState {
        TokenState { token: self.token, etag: (self.token != 0).then(|| format!("\"v{}\"", self.version)) }
    }

    /// A fault for the next request (if chaos is on) and its two latencies.
    fn roll(&mut self) -> (Option<TokenFault>, Duration, Duration) {
        let Some((rng, c)) = self.chaos.as_mut() else {
            return (None, Duration::ZERO, Duration::ZERO);
        };
        let mut lat =
            || if c.latency_max.is_zero() { Duration::ZERO } else { rng.gen_range(Duration::ZERO..c.latency_max) };
        let (arrive, answer) = (lat(), lat());
        let r = rng.gen_range(0..100u32);
        let mut edge = 0;
        let mut pick = |pct: u32| {
            edge += pct;
            r < edge
        };
        let fault = if pick(c.refuse_503) {
            Some(TokenFault::Refuse(503))
        } else if pick(c.refuse_500) {
            Some(TokenFault::Refuse(500))
        } else if pick(c.done_500) {
            Some(TokenFault::DoneThenStatus(500))
        } else if pick(c.lost) {
            Some(TokenFault::LostAnswer)
        } else if pick(c.dropped) {
            Some(TokenFault::Dropped)
        } else if pick(c.later) {
            let max = c.later_max.max(Duration::from_millis(1));
            Some(TokenFault::AppliedLater(rng.gen_range(Duration::ZERO..max)))
        } else {
            None
        };
        (fault, arrive, answer)
    }

    fn check(&self, w: &TokenWrite) -> Result<()> {
        let stored = self.state().etag;
        let holds = match &w.cond {
            TokenCondition::None => true,
            // A DELETE (token 0) under RGW's rules: its precondition is ignored.
            _ if self.unquoted_put && w.token == 0 => true,
            TokenCondition::Absent => self.token == 0,
            TokenCondition::Is(etag) if self.unquoted_put => {
                stored.as_deref().map(|e| e.trim_matches('"')) == Some(etag.as_str())
            }
            TokenCondition::Is(etag) => stored.as_deref() == Some(etag.as_str()),
        };
        if holds { Ok(()) } else { Err(StoreError::Stale(0)) }
    }

    fn write(&mut self, now: tokio::time::Instant, w: &TokenWrite, checked: bool) -> Result<TokenState> {
        if checked {
            self.check(w)?;
        }
        self.apply(now, w.token);
        Ok(self.state())
    }

    fn apply(&mut self, at: tokio::time::Instant, token: u32) {
        self.token = token;
        self.version += 1;
        self.history.push((at, token));
    }

    /// Applies the late writes due by `now`, in order, each checked (unless preconditions are
    /// ignored) as the server would then.
    fn apply_due(&mut self, now: tokio::time::Instant) {
        self.pending.sort_by_key(|(at, _)| *at);
        while self.pending.first().is_some_and(|(at, _)| *at <= now) {
            let (at, w) = self.pending.remove(0);
            let _ = self.write(at, &w, self.check_late);
        }
    }
}

#[async_trait]
impl TokenObject for MemTokenObject {
    async fn head_token(&self) -> Result<TokenState> {
        self.request(TokenReq::Head, None).await
    }

    async fn put_token(&self, token: u32, cond: &TokenCondition) -> Result<()> {
        self.request(TokenReq::Put, Some(TokenWrite { token, cond: cond.clone() })).await.map(drop)
    }

    async fn delete_token(&self, cond: &TokenCondition) -> Result<()> {
        self.request(TokenReq::Delete, Some(TokenWrite { token: 0, cond: cond.clone() })).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(b: u8) -> Bytes {
        Bytes::from(vec![b; 8])
    }

    #[tokio::test]
    async fn blocks_round_trip_with_etags_and_conditions() {
        let m = MemBlocks::new(8, 4);
        assert_eq!(m.read_block(1, ReadRequest::PLAIN).await.unwrap(), ReadOutcome::Zero);
        let e = m.write_block(1, BlockData::new(block(1))).await.unwrap().unwrap();
        assert_eq!(
            m.read_block(1, ReadRequest::PLAIN).await.unwrap(),
            ReadOutcome::Data { data: block(1), etag: Some(e) }
        );
        assert_eq!(m.revalidate(1, e).await.unwrap(), Revalidation::Unchanged);
        let unknown = ReadRequest::PLAIN.with_if_match(Etag::UNKNOWN);
        assert!(matches!(m.read_block(1, unknown).await, Err(StoreError::Stale(1))));
        assert_eq!(m.read_conditions().len(), 4);
        // Zeros are `None` (decided by BlockData::new): both remove, and count as deletes.
        m.write_block(1, BlockData::new(block(0))).await.unwrap();
        assert_eq!((m.get(1), m.deletes()), (None, 1));
        m.put(2, block(2));
        m.write_block(2, None).await.unwrap();
        assert_eq!((m.stored(), m.deletes()), (vec![], 2));
        let c = m.count(Op::Write);
        assert_eq!((c.calls, c.ok, c.in_flight, c.max_in_flight), (3, 3, 0, 1));
        let plain = MemBlocks::new(8, 4).without_etags();
        assert_eq!(plain.write_block(0, BlockData::new(block(3))).await.unwrap(), None);
    }

    #[tokio::test]
    async fn failures_next_block_always_and_custom() {
        let m = MemBlocks::new(8, 4);
        m.fail(Op::Write, Fail::Next(2));
        assert!(m.write_block(0, BlockData::new(block(1))).await.is_err());
        assert!(m.write_block(0, BlockData::new(block(1))).await.is_err());
        m.write_block(0, BlockData::new(block(1))).await.unwrap();
        m.fail_with(Op::Read, Fail::Block(3), StoreError::Stale);
        assert!(matches!(m.read_block(3, ReadRequest::PLAIN).await, Err(StoreError::Stale(3))));
        m.read_block(2, ReadRequest::PLAIN).await.unwrap();
        m.fail(Op::Flush, Fail::Always);
        assert!(matches!(m.flush(None).await, Err(StoreError::Injected)));
        assert!(m.flush(None).await.is_err());
        assert_eq!(m.count(Op::Flush).failed, 2);
        m.stop_failing();
        m.flush(None).await.unwrap();
        assert_eq!(m.flushes(), vec![None, None, None]);
    }

    #[tokio::test(start_paused = true)]
    async fn gates_hold_until_released_and_report_arrivals() {
        let m = Arc::new(MemBlocks::new(8, 4));
        let gate = m.hold_block(Op::Write, 1);
        let w = {
            let m = m.clone();
            tokio::spawn(async move { m.write_block(1, BlockData::new(block(1))).await })
        };
        gate.arrived(1).await;
        // Other blocks pass.
        m.write_block(2, BlockData::new(block(2))).await.unwrap();
        assert_eq!((m.count(Op::Write).in_flight, m.get(1)), (1, None));
        gate.allow(1);
        w.await.unwrap().unwrap();
        assert_eq!(m.get(1), Some(block(1)));
        // Closed again once the permit is used: a dropped waiter stops counting.
        let held = {
            let m = m.clone();
            tokio::spawn(async move { m.write_block(1, BlockData::new(block(3))).await })
        };
        gate.waiting(1).await;
        held.abort();
        gate.waiting(0).await;
        m.wait_until("the aborted write gone", |c| c[Op::Write].in_flight == 0).await;
        gate.release();
        m.write_block(1, BlockData::new(block(4))).await.unwrap();
        assert_eq!(m.get(1), Some(block(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn delays_run_on_the_paused_clock() {
        let m = MemBlocks::new(8, 4);
        m.delay(Op::Read, Duration::from_secs(30));
        let t = tokio::time::Instant::now();
        m.read_block(0, ReadRequest::PLAIN).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_secs(30));
        m.delay_up_to(Op::Read, Duration::from_secs(5));
        let t = tokio::time::Instant::now();
        m.read_block(0, ReadRequest::PLAIN).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn objects_keep_bodies_meta_and_swap_the_token_atomically() {
        let m = MemObjects::new();
        let body = ObjectBody { data: Bytes::from_static(b"x"), ..Default::default() };
        let meta = VolumeMeta { block_size: 8, file_size: 64 };
        let e = m.put_object(0, body.clone(), Some(meta)).await.unwrap().unwrap();
        assert_eq!(m.get_object(0, ReadCondition::IfNoneMatch(e)).await.unwrap(), GetOutcome::NotModified);
        assert_eq!(m.get_object(0, ReadCondition::None).await.unwrap(), GetOutcome::Found { body, etag: Some(e) });
        assert_eq!(m.read_volume_meta().await.unwrap(), Some(meta));
        m.delete_object(0).await.unwrap();
        assert_eq!(m.get_object(0, ReadCondition::None).await.unwrap(), GetOutcome::NotFound);
        assert_eq!(m.swap_mount_token(0, 5).await.unwrap(), TokenSwap::Done(5));
        assert_eq!(m.swap_mount_token(0, 6).await.unwrap(), TokenSwap::Changed(5));
        assert_eq!(m.mount_token(TokenOp::Clear).await.unwrap(), 5);
        assert_eq!((m.token(), m.calls(Op::Token), m.calls(Op::Write)), (0, 3, 2));
    }
}
