//! Tests of the snapshot layer against the in-memory store: unit cases, and a model test of
//! writes, snapshots, deletions, flushes and crashes at every request boundary.

use crate::book;
use crate::format::INDEX_NAME;
use crate::{SnapError, SnapshotView};
use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;
use s3b_store::mock::MemObjects;
use s3b_store::named::{NamedObject, NamedObjects};
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, TokenSwap,
    VolumeMeta,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const BLOCKS: u32 = 6;

/// A process that dies: every request passes until its budget is spent, then every request
/// fails (a killed process sends nothing more). The store below keeps what was done.
struct Crashy {
    mem: Arc<MemObjects>,
    budget: AtomicI64,
}

impl Crashy {
    fn new(mem: &Arc<MemObjects>, budget: i64) -> Arc<Crashy> {
        Arc::new(Crashy { mem: mem.clone(), budget: AtomicI64::new(budget) })
    }
    fn alive() -> i64 {
        i64::MAX
    }
    fn pass(&self) -> Result<()> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) > 0 { Ok(()) } else { Err(StoreError::Injected) }
    }
    fn dead(&self) -> bool {
        self.budget.load(Ordering::SeqCst) <= 0
    }
}

#[async_trait]
impl ObjectStore for Crashy {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.pass()?;
        self.mem.get_object(n, cond).await
    }
    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.pass()?;
        self.mem.put_object(n, body, volume).await
    }
    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.pass()?;
        self.mem.delete_object(n).await
    }
    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.pass()?;
        self.mem.list_objects(sink).await
    }
    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        self.pass()?;
        self.mem.read_volume_meta().await
    }
    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        self.pass()?;
        self.mem.mount_token(op).await
    }
    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.pass()?;
        self.mem.swap_mount_token(expected, new).await
    }
    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        self.pass()
    }
    fn named(&self) -> Option<&dyn NamedObjects> {
        Some(self)
    }
}

#[async_trait]
impl NamedObjects for Crashy {
    async fn get_named(&self, name: &str) -> Result<Option<NamedObject>> {
        self.pass()?;
        self.mem.get_named(name).await
    }
    async fn put_named(&self, name: &str, body: ObjectBody) -> Result<()> {
        self.pass()?;
        self.mem.put_named(name, body).await
    }
    async fn delete_named(&self, name: &str) -> Result<()> {
        self.pass()?;
        self.mem.delete_named(name).await
    }
    async fn copy_block(&self, n: BlockNum, to: &str) -> Result<bool> {
        self.pass()?;
        self.mem.copy_block(n, to).await
    }
    async fn copy_named(&self, from: &str, to: &str) -> Result<bool> {
        self.pass()?;
        self.mem.copy_named(from, to).await
    }
    async fn list_named(&self, prefix: &str, sink: &(dyn for<'k> Fn(&'k str, u64) + Send + Sync)) -> Result<()> {
        self.pass()?;
        self.mem.list_named(prefix, sink).await
    }
}

fn body(v: u8) -> ObjectBody {
    ObjectBody { data: Bytes::from(vec![v; 8]), content_encoding: Some(format!("x-{v}")), hmac: None }
}

/// The value a block read gives (0: zeros).
async fn value(store: &dyn ObjectStore, n: BlockNum) -> Result<u8> {
    Ok(match store.get_object(n, ReadCondition::None).await? {
        GetOutcome::Found { body, .. } => {
            assert_eq!(body.content_encoding, Some(format!("x-{}", body.data[0])), "headers travel with copies");
            body.data[0]
        }
        _ => 0,
    })
}

async fn write(store: &dyn ObjectStore, n: BlockNum, v: u8) -> Result<()> {
    if v == 0 { store.delete_object(n).await } else { store.put_object(n, body(v), None).await.map(|_| ()) }
}

async fn live(mem: &Arc<MemObjects>, budget: i64) -> (Arc<Crashy>, Arc<crate::LiveStore>) {
    let c = Crashy::new(mem, budget);
    let t: Arc<dyn ObjectStore> = c.clone();
    let store = crate::layer(t.clone(), t, &s3b_store::StatsRegistry::new()).expect("a store with named objects");
    (c, store)
}

async fn view(mem: &Arc<MemObjects>, name: &str) -> std::result::Result<SnapshotView, SnapError> {
    let t: Arc<dyn ObjectStore> = Crashy::new(mem, Crashy::alive());
    SnapshotView::open(t.clone(), t, name).await
}

#[tokio::test]
async fn snapshot_keeps_the_old_blocks_and_zero_blocks_read_as_zeros() {
    let mem = Arc::new(MemObjects::new());
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 1).await.unwrap();
    write(s.as_ref(), 1, 2).await.unwrap();
    book::create(mem.as_ref(), "a", 8, 48, 1).await.unwrap();
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 3).await.unwrap();
    write(s.as_ref(), 2, 4).await.unwrap(); // zero at snapshot time
    write(s.as_ref(), 1, 0).await.unwrap(); // zeroed after
    write(s.as_ref(), 0, 5).await.unwrap(); // second write: no second copy
    let v = view(&mem, "a").await.unwrap();
    for (n, want) in [(0, 1), (1, 2), (2, 0), (3, 0)] {
        assert_eq!(value(&v, n).await.unwrap(), want, "block {n}");
    }
    assert_eq!(value(s.as_ref(), 0).await.unwrap(), 5);
    s.flush(None).await.unwrap();
    let info = book::list(mem.as_ref()).await.unwrap();
    assert_eq!((info[0].held, info[0].changed), (2, 3));
    assert!(matches!(book::create(mem.as_ref(), "a", 8, 48, 2).await, Err(SnapError::Exists(_))));
    assert!(matches!(book::delete(mem.as_ref(), "zz").await, Err(SnapError::Unknown(_))));
    assert!(matches!(view(&mem, "zz").await, Err(SnapError::Unknown(_))));
    book::delete(mem.as_ref(), "a").await.unwrap();
    // Only the index is left.
    assert_eq!(mem.named_objects(), vec![INDEX_NAME.to_string()]);
}

/// A mount's stack is built before it holds the volume, so a snapshot can be taken in between:
/// the layer reads the index at the first write, not when it is built.
#[tokio::test]
async fn a_stack_built_before_a_snapshot_still_preserves_its_first_writes() {
    let mem = Arc::new(MemObjects::new());
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 1).await.unwrap();
    let (_, s) = live(&mem, Crashy::alive()).await;
    book::create(mem.as_ref(), "a", 8, 48, 1).await.unwrap();
    write(s.as_ref(), 0, 2).await.unwrap();
    assert_eq!(value(&view(&mem, "a").await.unwrap(), 0).await.unwrap(), 1);
}

#[tokio::test]
async fn a_clean_flush_leaves_nothing_to_recover_and_a_crash_is_recovered_by_list() {
    let mem = Arc::new(MemObjects::new());
    book::create(mem.as_ref(), "a", 8, 48, 1).await.unwrap();
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 3, 1).await.unwrap();
    let idx = book::read_index(mem.as_ref()).await.unwrap().unwrap();
    assert_ne!(idx.writer, 0, "marked before the first copy");
    s.flush(None).await.unwrap();
    let idx = book::read_index(mem.as_ref()).await.unwrap().unwrap();
    assert_eq!(idx.writer, 0);
    assert_eq!(book::read_map(mem.as_ref(), 1).await.unwrap().len(), 1);
    // A crashed mount: copies its saved map lacks.
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 4, 1).await.unwrap();
    drop(s);
    assert_eq!(book::read_map(mem.as_ref(), 1).await.unwrap().len(), 1);
    let lists = mem.calls(s3b_store::mock::Op::List);
    book::recover(mem.as_ref()).await.unwrap();
    assert_eq!(mem.calls(s3b_store::mock::Op::List), lists + 1);
    assert_eq!(book::read_map(mem.as_ref(), 1).await.unwrap().len(), 2);
    // Nothing to recover: no LIST.
    book::recover(mem.as_ref()).await.unwrap();
    assert_eq!(mem.calls(s3b_store::mock::Op::List), lists + 1);
}

#[tokio::test]
async fn copies_of_encrypted_blocks_decode_as_their_block() {
    use s3b_codec::{Cipher, Codec, CodecConfig, CodecStore, Compression, Encryption};
    use s3b_store::{BlockData, BlockStore, ReadOutcome, ReadRequest};
    let mem = Arc::new(MemObjects::new());
    let cfg = CodecConfig {
        compress: Some(Compression::Deflate(None)),
        encrypt: Some(Encryption {
            cipher: Cipher::Aes128Cbc,
            password: zeroize::Zeroizing::new("pw".into()),
            key_length: None,
            salt: "bkt/".into(),
        }),
        ..Default::default()
    };
    let codec = |o: Arc<dyn ObjectStore>| CodecStore::new(o, Codec::new(4096, cfg.clone()), 4);
    let block = |v: u8| BlockData::new(Bytes::from((0..4096u32).map(|i| (i % 251) as u8 ^ v).collect::<Vec<_>>()));
    let (_, s) = live(&mem, Crashy::alive()).await;
    codec(s).write_block(1, block(1)).await.unwrap();
    book::create(mem.as_ref(), "a", 4096, 4 * 4096, 1).await.unwrap();
    let (_, s) = live(&mem, Crashy::alive()).await;
    codec(s.clone()).write_block(1, block(2)).await.unwrap();
    let copy = mem.get_named("s3backer-snap/00000001/00000001").await.unwrap().unwrap();
    assert!(copy.body.hmac.is_some() && copy.body.content_encoding.as_deref().unwrap().contains("encrypt"));
    let v: Arc<dyn ObjectStore> = Arc::new(view(&mem, "a").await.unwrap());
    let got = codec(v).read_block(1, ReadRequest::PLAIN).await.unwrap();
    assert_eq!(got, ReadOutcome::Data { data: block(1).unwrap().into_bytes(), etag: got_etag(&got) });
}

fn got_etag(o: &s3b_store::ReadOutcome) -> Option<Etag> {
    match o {
        s3b_store::ReadOutcome::Data { etag, .. } => *etag,
        _ => None,
    }
}

/// A view opened before writes and deletions keeps answering the snapshot as it was.
#[tokio::test]
async fn a_long_lived_view_follows_writes_new_snapshots_and_deletions() {
    let mem = Arc::new(MemObjects::new());
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 1).await.unwrap();
    book::create(mem.as_ref(), "a", 8, 48, 1).await.unwrap();
    let va = view(&mem, "a").await.unwrap();
    book::create(mem.as_ref(), "b", 8, 48, 2).await.unwrap();
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 2).await.unwrap(); // preserved into b, which a reads through
    assert_eq!(value(&va, 0).await.unwrap(), 1);
    s.flush(None).await.unwrap();
    book::delete(mem.as_ref(), "b").await.unwrap(); // handed on to a
    assert_eq!(value(&va, 0).await.unwrap(), 1);
    let (_, s) = live(&mem, Crashy::alive()).await;
    write(s.as_ref(), 0, 3).await.unwrap();
    assert_eq!(value(&va, 0).await.unwrap(), 1);
}

/// Views read while a writer copies, writes and flushes at the same time, every request of
/// both delayed at random: each read still answers the snapshot (the race of a live read
/// against a first write is what the view's index check settles).
#[tokio::test(start_paused = true, flavor = "current_thread")]
async fn views_beside_a_busy_writer_always_answer_the_snapshot() {
    use s3b_store::mock::Op;
    use std::time::Duration;
    let mem = Arc::new(MemObjects::new());
    let (_, s) = live(&mem, Crashy::alive()).await;
    for n in 0..BLOCKS {
        if n != 2 {
            write(s.as_ref(), n, u8::try_from(n).expect("a few blocks") + 1).await.unwrap();
        }
    }
    let want = |n: BlockNum| if n == 2 { 0 } else { u8::try_from(n).expect("a few blocks") + 1 };
    book::create(mem.as_ref(), "a", 8, 48, 1).await.unwrap();
    let early = Arc::new(view(&mem, "a").await.unwrap());
    for op in [Op::Read, Op::Write, Op::List] {
        mem.delay_up_to(op, Duration::from_millis(3));
    }
    let (_, s) = live(&mem, Crashy::alive()).await;
    let writer = tokio::spawn(async move {
        for i in 0..300u32 {
            let n = (i * 7 + i / 5) % BLOCKS;
            write(s.as_ref(), n, u8::try_from(10 + i % 200).unwrap()).await.unwrap();
            if i % 13 == 0 {
                s.flush(None).await.unwrap();
            }
        }
        s.flush(None).await.unwrap();
    });
    let mut readers = Vec::new();
    for r in 0..3u32 {
        let (mem, early) = (mem.clone(), early.clone());
        readers.push(tokio::spawn(async move {
            let late = view(&mem, "a").await.unwrap();
            for i in 0..200u32 {
                let n = (i + r) % BLOCKS;
                let v = if i % 2 == 0 { &*early } else { &late };
                assert_eq!(value(v, n).await.unwrap(), want(n), "reader {r}, read {i}, block {n}");
            }
        }));
    }
    for t in readers {
        t.await.unwrap();
    }
    writer.await.unwrap();
    for n in 0..BLOCKS {
        assert_eq!(value(&*early, n).await.unwrap(), want(n));
    }
}

/// A step of the model test.
#[derive(Clone, Debug)]
enum Step {
    /// Write a value (0: zeros) into a block of the live volume.
    Write(BlockNum, u8),
    /// Flush the whole live volume.
    Flush,
    /// Unmount cleanly, take a snapshot.
    Snapshot,
    /// Unmount cleanly, delete the i-th snapshot (modulo their number).
    Delete(usize),
    /// The mount takes a snapshot (as asked through its control socket), and goes on.
    MountSnapshot,
    /// The mount deletes the i-th snapshot, and goes on.
    MountDelete(usize),
    /// The next step's process is killed after this many requests.
    Crash(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..BLOCKS, 0u8..4).prop_map(|(n, v)| Step::Write(n, v)),
        1 => Just(Step::Flush),
        2 => Just(Step::Snapshot),
        1 => (0usize..4).prop_map(Step::Delete),
        2 => Just(Step::MountSnapshot),
        1 => (0usize..4).prop_map(Step::MountDelete),
        2 => (0i64..12).prop_map(Step::Crash),
    ]
}

/// The model: the live volume and each snapshot's blocks, by name.
#[derive(Default)]
struct Model {
    live: [u8; BLOCKS as usize],
    snaps: BTreeMap<String, [u8; BLOCKS as usize]>,
    taken: u32,
}

async fn check(mem: &Arc<MemObjects>, m: &Model, views: &BTreeMap<String, SnapshotView>) {
    let (_, s) = live(mem, Crashy::alive()).await;
    for n in 0..BLOCKS {
        assert_eq!(value(s.as_ref(), n).await.unwrap(), m.live[n as usize], "live block {n}");
    }
    for (name, blocks) in &m.snaps {
        let fresh = view(mem, name).await.unwrap();
        for n in 0..BLOCKS {
            assert_eq!(value(&fresh, n).await.unwrap(), blocks[n as usize], "snapshot {name} block {n}");
            if let Some(old) = views.get(name) {
                assert_eq!(value(old, n).await.unwrap(), blocks[n as usize], "long-lived view of {name} block {n}");
            }
        }
    }
}

/// After an attempt to take snapshot `name` (`failed`: it reported an error): a snapshot the
/// index holds joins the model (with a long-lived view of it); one it lacks must have failed.
async fn note_taken(
    mem: &Arc<MemObjects>,
    m: &mut Model,
    views: &mut BTreeMap<String, SnapshotView>,
    name: &str,
    failed: bool,
) {
    if book::read_index(mem.as_ref()).await.unwrap().is_some_and(|i| i.find(name).is_some()) {
        m.snaps.insert(name.to_string(), m.live);
        views.insert(name.to_string(), view(mem, name).await.unwrap());
    } else {
        assert!(failed, "snapshot {name} missing but reported taken");
    }
}

async fn run(steps: Vec<Step>) {
    let mem = Arc::new(MemObjects::new());
    let mut m = Model::default();
    let mut views: BTreeMap<String, SnapshotView> = BTreeMap::new();
    let mut crash_next: Option<i64> = None;
    let (mut crashy, mut store) = live(&mem, Crashy::alive()).await;
    for st in steps {
        if let Step::Crash(k) = st {
            crash_next = Some(k);
            continue;
        }
        let budget = crash_next.take().unwrap_or(Crashy::alive());
        match st {
            Step::Write(n, v) => {
                if budget != Crashy::alive() {
                    (crashy, store) = live(&mem, budget).await;
                }
                let r = write(store.as_ref(), n, v).await;
                if r.is_err() || crashy.dead() {
                    // Killed: the block is old or new; every snapshot is as it was.
                    (crashy, store) = live(&mem, Crashy::alive()).await;
                    let now = value(store.as_ref(), n).await.unwrap();
                    assert!(now == v || now == m.live[n as usize], "block {n} is {now}");
                    m.live[n as usize] = now;
                } else {
                    m.live[n as usize] = v;
                }
            }
            Step::Flush => {
                if store.flush(None).await.is_err() {
                    (crashy, store) = live(&mem, Crashy::alive()).await;
                }
            }
            Step::MountSnapshot | Step::MountDelete(_) => {
                // The mount as it is (unsaved copies and all) dies after `budget` requests.
                crashy.budget.store(budget, Ordering::SeqCst);
                let r = if let Step::MountDelete(i) = st {
                    let Some(name) = m.snaps.keys().nth(i % m.snaps.len().max(1)).cloned() else { continue };
                    let r = store.delete_snapshot(&name).await;
                    let idx = book::recover(mem.as_ref()).await.unwrap().unwrap();
                    if idx.find(&name).is_none() {
                        m.snaps.remove(&name);
                        views.remove(&name);
                    } else {
                        assert!(r.is_err() || crashy.dead());
                    }
                    r.map(|_| ())
                } else {
                    m.taken += 1;
                    let name = format!("s{}", m.taken);
                    let r = store.snapshot(&name, 8, u64::from(BLOCKS) * 8, u64::from(m.taken)).await;
                    if crashy.dead() {
                        book::recover(mem.as_ref()).await.unwrap();
                    }
                    note_taken(&mem, &mut m, &mut views, &name, r.is_err()).await;
                    r.map(|_| ())
                };
                if budget == Crashy::alive() {
                    r.unwrap();
                } else if crashy.dead() {
                    // Killed: the next mount takes over.
                    (crashy, store) = live(&mem, Crashy::alive()).await;
                } else {
                    crashy.budget.store(Crashy::alive(), Ordering::SeqCst);
                }
            }
            Step::Snapshot | Step::Delete(_) => {
                // The live mount ends cleanly (or it crashed earlier: then nothing to do).
                let _ = store.flush(None).await;
                let c = Crashy::new(&mem, budget);
                let r = if let Step::Delete(i) = st {
                    let Some(name) = m.snaps.keys().nth(i % m.snaps.len().max(1)).cloned() else { continue };
                    let r = book::delete(c.as_ref(), &name).await;
                    // Whatever the crash, after recovery the snapshot is gone, unless it was
                    // not yet marked.
                    let idx = book::recover(mem.as_ref()).await.unwrap().unwrap();
                    if idx.find(&name).is_none() {
                        m.snaps.remove(&name);
                        views.remove(&name);
                    } else {
                        assert!(r.is_err());
                    }
                    r.map(|_| ())
                } else {
                    m.taken += 1;
                    let name = format!("s{}", m.taken);
                    let r = book::create(c.as_ref(), &name, 8, u64::from(BLOCKS) * 8, u64::from(m.taken)).await;
                    book::recover(mem.as_ref()).await.unwrap();
                    note_taken(&mem, &mut m, &mut views, &name, r.is_err()).await;
                    r.map(|_| ())
                };
                if budget == Crashy::alive() {
                    r.unwrap();
                }
                (crashy, store) = live(&mem, Crashy::alive()).await;
            }
            Step::Crash(_) => unreachable!(),
        }
        check(&mem, &m, &views).await;
    }
    // Every copy and map left belongs to a snapshot that exists.
    let idx = book::recover(mem.as_ref()).await.unwrap();
    let ids: Vec<String> = idx.map(|i| i.snaps.iter().map(|p| format!("{:08x}", p.id)).collect()).unwrap_or_default();
    for name in mem.named_objects() {
        if name.starts_with("s3backer-snap/") || name.starts_with("s3backer-snapmap/") {
            assert!(ids.iter().any(|id| name.contains(id.as_str())), "leftover {name}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn model(steps in proptest::collection::vec(step(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(steps));
    }
}

async fn live_layer(mem: &Arc<MemObjects>) -> Arc<crate::LiveStore> {
    let t: Arc<dyn ObjectStore> = Crashy::new(mem, Crashy::alive());
    crate::layer(t.clone(), t, &s3b_store::StatsRegistry::new()).expect("a store with named objects")
}

/// A mount takes snapshots of the volume it writes: each is the volume at that moment, later
/// writes preserve into the newest, and what changed since each is known without a LIST.
#[tokio::test]
async fn a_mount_takes_and_deletes_snapshots_while_it_writes() {
    let mem = Arc::new(MemObjects::new());
    let s = live_layer(&mem).await;
    write(s.as_ref(), 0, 1).await.unwrap();
    write(s.as_ref(), 1, 1).await.unwrap();
    s.snapshot("a", 8, 48, 1).await.unwrap();
    write(s.as_ref(), 0, 2).await.unwrap();
    write(s.as_ref(), 2, 2).await.unwrap();
    let lists = mem.calls(s3b_store::mock::Op::List);
    assert_eq!(s.changed_since("a").await.unwrap().into_iter().collect::<Vec<_>>(), [0, 2]);
    s.snapshot("b", 8, 48, 2).await.unwrap();
    assert!(matches!(s.snapshot("a", 8, 48, 3).await, Err(SnapError::Exists(_))));
    assert!(matches!(s.snapshot("a/", 8, 48, 3).await, Err(SnapError::BadName(_))));
    write(s.as_ref(), 1, 3).await.unwrap();
    write(s.as_ref(), 0, 3).await.unwrap();
    assert_eq!(s.changed_since("a").await.unwrap().into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(s.changed_since("b").await.unwrap().into_iter().collect::<Vec<_>>(), [0, 1]);
    assert!(matches!(s.changed_since("zz").await, Err(SnapError::Unknown(_))));
    assert_eq!(mem.calls(s3b_store::mock::Op::List), lists, "no LIST");
    for (name, want) in [("a", [1, 1, 0]), ("b", [2, 1, 2])] {
        let v = view(&mem, name).await.unwrap();
        for (n, w) in (0..).zip(want) {
            assert_eq!(value(&v, n).await.unwrap(), w, "{name} block {n}");
        }
    }
    // A crash now: the next command recovers what the maps lack.
    let idx = book::read_index(mem.as_ref()).await.unwrap().unwrap();
    assert_ne!(idx.writer, 0, "marked by the snapshot's own PUT");
    // Deleting the newest through the mount: a is still right, writes go on into a.
    s.delete_snapshot("b").await.unwrap();
    assert!(matches!(s.delete_snapshot("b").await, Err(SnapError::Unknown(_))));
    write(s.as_ref(), 2, 4).await.unwrap();
    write(s.as_ref(), 3, 4).await.unwrap();
    let v = view(&mem, "a").await.unwrap();
    for (n, w) in (0..).zip([1, 1, 0, 0]) {
        assert_eq!(value(&v, n).await.unwrap(), w, "a block {n}");
    }
    assert_eq!(s.changed_since("a").await.unwrap().into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    s.flush(None).await.unwrap();
    let idx = book::read_index(mem.as_ref()).await.unwrap().unwrap();
    assert_eq!(idx.writer, 0);
    let info = book::list(mem.as_ref()).await.unwrap();
    assert_eq!((info.len(), info[0].changed), (1, 4));
}

/// Writes racing a snapshot of the mount: the snapshot holds, for each block, a value no older
/// than the last write finished before the request and no newer than the last one started
/// before it returned (each write lands wholly on one side).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_a_mount_snapshot_fall_on_one_side() {
    use std::sync::atomic::AtomicU8;
    let mem = Arc::new(MemObjects::new());
    let s = live_layer(&mem).await;
    for n in 0..BLOCKS {
        write(s.as_ref(), n, 1).await.unwrap();
    }
    let done: Arc<Vec<AtomicU8>> = Arc::new((0..BLOCKS).map(|_| AtomicU8::new(1)).collect());
    let started: Arc<Vec<AtomicU8>> = Arc::new((0..BLOCKS).map(|_| AtomicU8::new(1)).collect());
    let writers: Vec<_> = (0..BLOCKS)
        .map(|n| {
            let (s, done, started) = (s.clone(), done.clone(), started.clone());
            tokio::spawn(async move {
                for v in 2..200u8 {
                    started[n as usize].store(v, Ordering::SeqCst);
                    write(s.as_ref(), n, v).await.unwrap();
                    done[n as usize].store(v, Ordering::SeqCst);
                }
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let low: Vec<u8> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    s.snapshot("mid", 8, 48, 1).await.unwrap();
    let high: Vec<u8> = started.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    for w in writers {
        w.await.unwrap();
    }
    let v = view(&mem, "mid").await.unwrap();
    for n in 0..BLOCKS {
        let got = value(&v, n).await.unwrap();
        let i = n as usize;
        assert!((low[i]..=high[i]).contains(&got), "block {n}: {got} not in {}..={}", low[i], high[i]);
        assert_eq!(value(s.as_ref(), n).await.unwrap(), 199);
    }
}

/// A write reaching the cache starts its block's copy at once (the cache here keeps the data
/// and writes nothing back); the copy holds the block as it was, and the write-back later
/// makes no second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_start_when_a_write_reaches_the_cache() {
    use s3b_store::BlockStore;
    let mem = Arc::new(MemObjects::new());
    let s = live_layer(&mem).await;
    write(s.as_ref(), 2, 1).await.unwrap();
    s.snapshot("a", 8, 48, 1).await.unwrap();
    let cache: Arc<dyn BlockStore> = Arc::new(s3b_store::mock::MemBlocks::new(8, BLOCKS.into()));
    let ahead = crate::PreserveAhead::new(cache, s.clone());
    ahead.write_block(2, s3b_store::BlockData::new(Bytes::from(vec![9u8; 8]))).await.unwrap();
    ahead.write_block(4, s3b_store::BlockData::new(Bytes::from(vec![9u8; 8]))).await.unwrap();
    let copied = || async { mem.named_objects().iter().filter(|n| n.starts_with("s3backer-snap/")).count() };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while copied().await < 2 {
        assert!(std::time::Instant::now() < end, "no copies started: {:?}", mem.named_objects());
        tokio::task::yield_now().await;
    }
    let before = mem.named_objects();
    write(s.as_ref(), 2, 3).await.unwrap();
    assert_eq!(mem.named_objects(), before, "the write-back makes no second copy");
    let v = view(&mem, "a").await.unwrap();
    assert_eq!((value(&v, 2).await.unwrap(), value(&v, 4).await.unwrap()), (1, 0));
}
