//! The clone layer and flatten against in-memory stores: unit cases, and a model test of
//! write / zero / flatten / crash interleavings.

use super::*;
use crate::flatten::{Report, Step};
use proptest::prelude::*;
use s3b_store::StoreError;
use s3b_store::mock::{Fail, MemObjects, Op};
use std::time::Duration;

/// Blocks of the test volumes.
const BLOCKS: u32 = 8;
/// Bytes per test block body.
const LEN: usize = 4;

fn body(v: u8) -> ObjectBody {
    ObjectBody { data: Bytes::from(vec![v; LEN]), ..Default::default() }
}

fn record(state: State) -> Record {
    Record {
        state,
        bucket: "base".into(),
        prefix: String::new(),
        url: None,
        hash_prefix: false,
        encrypted: false,
        block_size: 4096,
        file_size: 4096 * u64::from(BLOCKS),
        base: BaseId::Volume { block0: None },
    }
}

/// Lists a mock store's block objects with their sizes.
struct MemListing(Arc<MemObjects>);

#[async_trait]
impl ListBlocks for MemListing {
    async fn list_blocks(&self, sink: &(dyn Fn(BlockNum, u64) + Send + Sync)) -> Result<()> {
        for n in self.0.stored() {
            sink(n, self.0.object(n).map_or(0, |b| b.data.len() as u64));
        }
        Ok(())
    }
}

/// A mount of the clone as its record says now: the clone layer, or the plain volume once
/// flattened.
async fn view(clone: &Arc<MemObjects>, base: &Arc<MemObjects>) -> Arc<dyn ObjectStore> {
    match read_record(clone.as_ref()).await.unwrap() {
        Some(r) => Arc::new(CloneStore::new(clone.clone(), base.clone(), &r)),
        None => clone.clone(),
    }
}

async fn read(s: &dyn ObjectStore, n: BlockNum) -> Option<u8> {
    match s.get_object(n, ReadCondition::None).await.unwrap() {
        GetOutcome::Found { body, .. } => {
            assert_eq!(body.data.len(), LEN, "block {n}: a marker or a short body came through");
            Some(body.data[0])
        }
        GetOutcome::NotFound => None,
        GetOutcome::NotModified => panic!("not modified"),
    }
}

async fn stores(base_blocks: &[Option<u8>]) -> (Arc<MemObjects>, Arc<MemObjects>) {
    let base = Arc::new(MemObjects::new());
    let clone = Arc::new(MemObjects::new());
    for (n, v) in base_blocks.iter().enumerate() {
        if let Some(v) = v {
            base.put_object(BlockNum::try_from(n).unwrap(), body(*v), None).await.unwrap();
        }
    }
    write_record(clone.as_ref(), &record(State::Cloned)).await.unwrap();
    (base, clone)
}

#[tokio::test]
async fn reads_fall_through_writes_and_zeros_stay_in_the_clone() {
    let (base, clone) = stores(&[Some(1), Some(2), Some(3), None]).await;
    let v = view(&clone, &base).await;
    assert_eq!(read(v.as_ref(), 0).await, Some(1));
    v.put_object(0, body(9), None).await.unwrap();
    v.delete_object(1).await.unwrap();
    v.delete_objects(&[2, 3]).await.unwrap();
    let v = view(&clone, &base).await;
    assert_eq!(
        [read(v.as_ref(), 0).await, read(v.as_ref(), 1).await, read(v.as_ref(), 2).await],
        [Some(9), None, None]
    );
    // The base is untouched; the zeros are markers in the clone.
    assert_eq!(base.stored(), vec![0, 1, 2]);
    assert_eq!(base.object(1), Some(body(2)));
    assert_eq!(clone.object(1).map(|b| b.data.len()), Some(0));
    assert_eq!(base.calls(Op::Write), 3, "only the set-up wrote the base");
}

#[tokio::test]
async fn flatten_copies_what_the_clone_uses_and_leaves_a_plain_volume() {
    let (base, clone) = stores(&[Some(1), Some(2), Some(3), None, Some(5)]).await;
    let v = view(&clone, &base).await;
    v.put_object(1, body(7), None).await.unwrap();
    v.delete_object(2).await.unwrap();
    let r = read_record(clone.as_ref()).await.unwrap().unwrap();
    let report =
        flatten(clone.as_ref(), &MemListing(clone.clone()), Some(base.as_ref()), None, r, &|_| {}).await.unwrap();
    assert_eq!(report, Report { copied: 2, absent: 0, markers: 1 });
    assert!(clone.named_objects().is_empty(), "the record is gone");
    assert_eq!(clone.stored(), vec![0, 1, 4]);
    assert_eq!([clone.object(0), clone.object(1), clone.object(4)], [Some(body(1)), Some(body(7)), Some(body(5))]);
}

#[tokio::test]
async fn a_base_that_refuses_listings_is_read_block_by_block() {
    let (base, clone) = stores(&[None, Some(2)]).await;
    base.fail_with(Op::List, Fail::Always, |_| StoreError::Forbidden("no listing".into()));
    let r = read_record(clone.as_ref()).await.unwrap().unwrap();
    let total = parking_lot::Mutex::new(0);
    let step = |s: Step| {
        if let Step::Total(t) = s {
            *total.lock() = t;
        }
    };
    let report =
        flatten(clone.as_ref(), &MemListing(clone.clone()), Some(base.as_ref()), None, r, &step).await.unwrap();
    assert_eq!((*total.lock(), report.copied, report.absent), (u64::from(BLOCKS), 1, u64::from(BLOCKS) - 1));
    assert_eq!(clone.stored(), vec![1]);
}

#[tokio::test]
async fn a_changed_volume_base_is_refused() {
    let (base, _clone) = stores(&[Some(1)]).await;
    let mut r = record(State::Cloned);
    r.base = BaseId::Volume { block0: block0_id(base.as_ref()).await.unwrap() };
    check_volume_base(base.as_ref(), &r).await.unwrap();
    base.put_object(0, body(2), None).await.unwrap();
    let e = check_volume_base(base.as_ref(), &r).await.unwrap_err();
    assert!(matches!(e, CloneError::BaseChanged { .. }), "{e}");
    base.delete_object(0).await.unwrap();
    assert!(matches!(check_volume_base(base.as_ref(), &r).await, Err(CloneError::BaseMissing(_))));
}

/// Adds one to every byte: a stand-in for decrypting with the base's key and encrypting with
/// the clone's.
struct AddOne;

impl Recode for AddOne {
    fn recode(&self, _n: BlockNum, body: ObjectBody) -> Result<ObjectBody> {
        Ok(ObjectBody { data: body.data.iter().map(|b| b.wrapping_add(1)).collect(), ..body })
    }
}

#[tokio::test]
async fn a_recoded_base_is_re_encoded_on_its_way_up_and_by_flatten() {
    let (base, clone) = stores(&[Some(1), Some(2), None]).await;
    let recoded: Arc<dyn ObjectStore> = Arc::new(RecodedBase::new(base.clone(), Arc::new(AddOne)));
    let r = read_record(clone.as_ref()).await.unwrap().unwrap();
    let v = CloneStore::new(clone.clone(), recoded.clone(), &r);
    assert_eq!([read(&v, 0).await, read(&v, 1).await, read(&v, 2).await], [Some(2), Some(3), None]);
    assert!(recoded.put_object(0, body(1), None).await.is_err(), "the base is read-only");
    v.put_object(1, body(9), None).await.unwrap();
    flatten(clone.as_ref(), &MemListing(clone.clone()), Some(recoded.as_ref()), None, r, &|_| {}).await.unwrap();
    assert_eq!([clone.object(0), clone.object(1), clone.object(2)], [Some(body(2)), Some(body(9)), None]);
    assert_eq!(base.object(0), Some(body(1)));
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step2 {
    Write(BlockNum, u8),
    Zero(BlockNum),
    ZeroMany(Vec<BlockNum>),
    /// A flatten, killed after this many writes (`None`: runs to the end).
    Flatten(Option<u64>),
}

fn step() -> impl Strategy<Value = Step2> {
    prop_oneof![
        4 => (0..BLOCKS, 1u8..=255).prop_map(|(n, v)| Step2::Write(n, v)),
        2 => (0..BLOCKS).prop_map(Step2::Zero),
        1 => prop::collection::vec(0..BLOCKS, 1..4).prop_map(Step2::ZeroMany),
        2 => prop::option::of(0u64..12).prop_map(Step2::Flatten),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the interleaving of writes, zero writes, flattens and flattens killed part-way
    /// (each followed by a remount, which rebuilds the layer from the record), every block
    /// reads as the model says; the base never changes; a finished flatten leaves no record
    /// and no marker, only the volume's blocks.
    #[test]
    fn clones_match_the_model(
        base_blocks in prop::collection::vec(prop::option::of(1u8..=255), BLOCKS as usize),
        refuse_list in any::<bool>(),
        steps in prop::collection::vec(step(), 1..16),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let (base, clone) = rt.block_on(stores(&base_blocks));
        if refuse_list {
            base.fail_with(Op::List, Fail::Always, |_| StoreError::Forbidden("no listing".into()));
        }
        let base_before: Vec<_> = (0..BLOCKS).map(|n| base.object(n)).collect();
        rt.block_on(async {
            let mut model = base_blocks.clone();
            for s in steps {
                let v = view(&clone, &base).await;
                match s {
                    Step2::Write(n, x) => {
                        v.put_object(n, body(x), None).await.unwrap();
                        model[n as usize] = Some(x);
                    }
                    Step2::Zero(n) => {
                        v.delete_object(n).await.unwrap();
                        model[n as usize] = None;
                    }
                    Step2::ZeroMany(ns) => {
                        v.delete_objects(&ns).await.unwrap();
                        ns.iter().for_each(|&n| model[n as usize] = None);
                    }
                    Step2::Flatten(kill) => {
                        let Some(r) = read_record(clone.as_ref()).await.unwrap() else { continue };
                        let gate = kill.map(|k| {
                            let g = clone.hold(Op::Write);
                            g.allow(k);
                            g
                        });
                        let listing = MemListing(clone.clone());
                        let run = flatten(clone.as_ref(), &listing, Some(base.as_ref()), None, r, &|_| {});
                        let done = tokio::time::timeout(Duration::from_secs(60), run).await;
                        if let Some(g) = gate {
                            g.release();
                        }
                        match done {
                            Ok(result) => {
                                result.unwrap();
                                assert!(clone.named_objects().is_empty());
                                for n in clone.stored() {
                                    assert_eq!(clone.object(n).unwrap().data.len(), LEN, "a marker is left");
                                }
                            }
                            Err(_) => assert!(kill.is_some(), "an unhindered flatten hung"),
                        }
                    }
                }
                let v = view(&clone, &base).await;
                for n in 0..BLOCKS {
                    assert_eq!(read(v.as_ref(), n).await, model[n as usize], "block {n}");
                }
            }
        });
        let base_after: Vec<_> = (0..BLOCKS).map(|n| base.object(n)).collect();
        prop_assert_eq!(base_before, base_after);
    }
}
