//! Clones as the program runs them: the clone layer of a mount's stack (the clone record read,
//! or written at the first mount with `--cloneOf`; the base opened and checked against it) and
//! `--flatten`. The on-server format and the crash-safety argument are [`s3b_clone`]'s.
//!
//! The base is reached with the volume's own S3 settings and credentials (another bucket or
//! prefix on the same endpoint), or, with `--cloneBaseURL`, at that server without credentials,
//! where only GET and HEAD are sent. A snapshot base is read through the snapshot's view
//! ([`s3b_snap::SnapshotView`]), so it reads right while its volume is mounted and written.
//! Making a clone writes one object, the record, and only after every check passed.
//!
//! An encrypted clone needs the base's password: base blocks are decrypted with the key of
//! the base's location and encrypted again with the clone's ([`s3b_clone::Recode`]), so they
//! are copied through the client, never on the server.

use crate::config::Config;
use crate::config::clone::CloneSource;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use s3b_clone::flatten::Step;
use s3b_clone::{BaseId, CloneError, NamedListing, Recode, RecodedBase, Record, ServerCopy, State};
use s3b_clone::{read_record, write_record};
use s3b_codec::{Codec, CodecConfig};
use s3b_http::{Credentials, S3Store};
use s3b_snap::format::{Kind, copy_name};
use s3b_store::StoreError;
use s3b_store::keys::BlockKeys;
use s3b_store::named::NamedObjects;
use s3b_store::{BlockNum, GetOutcome, ObjectBody, ObjectStore, ReadCondition, TokenOp, VolumeProbe};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A clone, opened for a mount: its record and its checked base.
pub struct Opened {
    /// The clone record.
    pub record: Record,
    /// The base, read-only.
    pub base: Arc<dyn ObjectStore>,
}

impl Opened {
    /// The clone's block size and block count, refusing a `--blockSize` or `--size` that
    /// differs from them.
    pub fn geometry(&self, cfg: &Config) -> Result<(u32, u64)> {
        let r = &self.record;
        for (what, given, found) in [
            ("block size", cfg.geometry.block_size.map(u64::from), u64::from(r.block_size)),
            ("size", cfg.geometry.size, r.file_size),
        ] {
            if let Some(given) = given.filter(|&g| g != found) {
                bail!("the clone's {what} is {found} bytes, not the {given} given (a clone has its base's geometry)");
            }
        }
        Ok((r.block_size, crate::config::check_geometry(r.file_size, r.block_size)?))
    }
}

/// The clone layer's inputs for a mount of `cfg`'s volume (`transport`: its S3 store; `codec`:
/// its codec settings): `None` for a plain volume. With `--cloneOf` on a volume that is no
/// clone yet, makes it one.
pub async fn open(cfg: &Config, transport: &Arc<dyn ObjectStore>, codec: &CodecConfig) -> Result<Option<Opened>> {
    let Some(named) = transport.named() else { return Ok(None) };
    let found = match read_record(named).await {
        // A bucket readable only by GetObject (an anonymous-read policy without ListBucket)
        // answers 403 for a key it does not hold: a read-only mount takes that as "no record".
        Err(s3b_clone::CloneError::Store(StoreError::Forbidden(_))) if cfg.read_only && cfg.clone.of.is_none() => None,
        r => r?,
    };
    let record = match (found, &cfg.clone.of) {
        (None, None) => return Ok(None),
        (Some(r), None) => r,
        (Some(r), Some(src)) if same_base(&r, src) => r,
        (Some(r), Some(_)) => {
            return Err(CloneError::OtherClone { volume: cfg.describe(), base: r.describe_base() }.into());
        }
        (None, Some(src)) => create(cfg, transport.as_ref(), src, codec).await?,
    };
    if cfg.snap.from.is_some() {
        bail!("{} is a clone: a clone has no snapshots until it is flattened", cfg.describe());
    }
    check_encryption(cfg, &record)?;
    let base = open_base(cfg, &record).await?;
    check_base_codec(base.as_ref(), &record, codec).await?;
    let base = recoded(base, &record, codec);
    Ok(Some(Opened { record, base }))
}

/// Refuses codec flags that disagree with the clone's encryption.
fn check_encryption(cfg: &Config, r: &Record) -> Result<()> {
    match (r.encrypted, cfg.codec.encrypt.is_some()) {
        (true, false) => bail!("{} is an encrypted clone: give --encrypt and its base's password", cfg.describe()),
        (false, true) => bail!("{} is a clone of an unencrypted volume: --encrypt cannot be used", cfg.describe()),
        _ => Ok(()),
    }
}

/// Checks the base's block 0 against the codec flags: encrypted if and only if `--encrypt` is
/// given, and then readable with the password given (so that no block is ever re-encrypted
/// with a wrong key).
async fn check_base_codec(base: &dyn ObjectStore, r: &Record, codec: &CodecConfig) -> Result<()> {
    let GetOutcome::Found { body, .. } = base.get_object(0, ReadCondition::None).await? else { return Ok(()) };
    let encrypted = body.content_encoding.as_deref().is_some_and(|e| e.contains("encrypt-"));
    let shown = r.describe_base();
    match (encrypted, r.encrypted) {
        (true, false) => bail!("the base {shown} is encrypted: give --encrypt and its password"),
        (false, true) => bail!("the base {shown} is not encrypted: --encrypt cannot be used"),
        (false, false) => Ok(()),
        (true, true) => {
            let mut of_base = codec.clone();
            if let Some(e) = of_base.encrypt.as_mut() {
                e.salt = base_salt(r);
            }
            Codec::new(r.block_size, of_base)
                .decode(0, body)
                .map(|_| ())
                .with_context(|| format!("can't read block 0 of the base {shown} (wrong password?)"))
        }
    }
}

/// The key-derivation salt of the base's location, as the codec's own: `<bucket>/<prefix>`.
fn base_salt(r: &Record) -> String {
    format!("{}/{}", r.bucket, r.prefix)
}

/// Re-encryption of base blocks for the clone's location.
struct Recrypt {
    base: Codec,
    clone: Codec,
}

impl Recode for Recrypt {
    fn recode(&self, n: BlockNum, body: ObjectBody) -> s3b_store::Result<ObjectBody> {
        self.clone.encode(n, self.base.decode(n, body)?)
    }
}

/// The base as the clone's codec must see it: re-encrypted when the volume is encrypted.
fn recoded(base: Arc<dyn ObjectStore>, r: &Record, codec: &CodecConfig) -> Arc<dyn ObjectStore> {
    let mut of_base = codec.clone();
    let Some(e) = of_base.encrypt.as_mut().filter(|_| r.encrypted) else { return base };
    e.salt = base_salt(r);
    let recode = Recrypt { base: Codec::new(r.block_size, of_base), clone: Codec::new(r.block_size, codec.clone()) };
    Arc::new(RecodedBase::new(base, Arc::new(recode)))
}

/// True when `--cloneOf` names the base `r` records.
fn same_base(r: &Record, src: &CloneSource) -> bool {
    let snapshot = match &r.base {
        BaseId::Snapshot { name, .. } => Some(name.as_str()),
        BaseId::Volume { .. } => None,
    };
    r.bucket == src.bucket && r.prefix == src.prefix && r.url == src.url && snapshot == src.snapshot.as_deref()
}

/// The S3 store of a clone's base.
fn base_store(cfg: &Config, bucket: &str, prefix: &str, url: Option<&str>, hash: bool) -> Result<Arc<S3Store>> {
    let mut c = cfg.s3.clone().context("clones need a bucket")?;
    c.bucket = bucket.to_string();
    c.keys = BlockKeys::new(prefix, hash);
    if let Some(u) = url {
        c.base_url = u.to_string();
        c.credentials = Credentials::Anonymous;
        c.vhost = false;
    }
    Ok(Arc::new(S3Store::new(c)?))
}

/// Makes the volume a clone of `src`: every check first, then the record (the one write).
async fn create(cfg: &Config, transport: &dyn ObjectStore, src: &CloneSource, codec: &CodecConfig) -> Result<Record> {
    let what = cfg.describe();
    if cfg.read_only {
        bail!("--cloneOf makes {what} a clone at its first mount, which cannot be --readOnly");
    }
    let s3 = cfg.s3.as_ref().context("clones need a bucket")?;
    if src.url.is_none() && src.bucket == s3.bucket && src.prefix == cfg.prefix {
        bail!("--cloneOf names {what} itself");
    }
    let named = transport.named().ok_or(CloneError::Unsupported)?;
    if transport.mount_token(TokenOp::Read).await.context("can't read the mount token")? != 0 {
        return Err(CloneError::HasData(what, "it is marked as mounted").into());
    }
    if !matches!(transport.probe_volume().await?, VolumeProbe::Nothing) {
        return Err(CloneError::HasData(what, "it has a block 0").into());
    }
    if s3b_snap::book::read_index(named).await?.is_some() {
        return Err(CloneError::HasData(what, "it has snapshots").into());
    }
    let base = base_store(cfg, &src.bucket, &src.prefix, src.url.as_deref(), cfg.hash_prefix)?;
    let mut shown = format!("{}/{}", src.bucket, src.prefix);
    shown.truncate(shown.trim_end_matches('/').len());
    if read_record(base.as_ref()).await?.is_some() {
        return Err(CloneError::ChainTooDeep(shown).into());
    }
    let (base_id, block_size, file_size) = match &src.snapshot {
        Some(name) => {
            let idx = s3b_snap::book::read_index(base.as_ref()).await?;
            let Some(snap) = idx.as_ref().and_then(|i| i.find(name)).filter(|p| !p.deleting) else {
                return Err(CloneError::BaseMissing(format!("{shown}@{name} (no snapshot named \"{name}\")")).into());
            };
            let (bs, fs) = (snap.block_size, snap.file_size);
            for (w, given, found) in
                [("block size", cfg.geometry.block_size.map(u64::from), u64::from(bs)), ("size", cfg.geometry.size, fs)]
            {
                if let Some(g) = given.filter(|&g| g != found) {
                    bail!("snapshot \"{name}\" of {shown} has {w} {found}, not the {g} given");
                }
            }
            (BaseId::Snapshot { id: snap.id, time: snap.time, name: name.clone() }, bs, fs)
        }
        None => {
            let Some(block0) = s3b_clone::block0_id(base.as_ref()).await? else {
                return Err(CloneError::BaseMissing(format!("{shown} (it has no block 0)")).into());
            };
            let (bs, blocks) = crate::geometry::resolve_geometry(cfg, base.as_ref()).await?;
            (BaseId::Volume { block0: Some(block0) }, bs, blocks * u64::from(bs))
        }
    };
    let record = Record {
        state: State::Cloned,
        bucket: src.bucket.clone(),
        prefix: src.prefix.clone(),
        url: src.url.clone(),
        hash_prefix: cfg.hash_prefix,
        encrypted: cfg.codec.encrypt.is_some(),
        block_size,
        file_size,
        base: base_id,
    };
    let view = open_base(cfg, &record).await?;
    check_base_codec(view.as_ref(), &record, codec).await?;
    write_record(named, &record).await?;
    if !cfg.quiet {
        log::info!("made {what} a clone of {}", record.describe_base());
    }
    Ok(record)
}

/// Opens the base of `r` and checks it is still what the clone was made from.
async fn open_base(cfg: &Config, r: &Record) -> Result<Arc<dyn ObjectStore>> {
    let store = base_store(cfg, &r.bucket, &r.prefix, r.url.as_deref(), r.hash_prefix)?;
    let base = r.describe_base();
    match &r.base {
        BaseId::Snapshot { id, time, name } => {
            let idx = s3b_snap::book::read_index(store.as_ref()).await?;
            let Some(snap) = idx.as_ref().and_then(|i| i.find(name)).filter(|p| !p.deleting) else {
                return Err(CloneError::BaseMissing(base).into());
            };
            if (snap.id, snap.time) != (*id, *time) {
                let what = format!("snapshot \"{name}\" is not the one it was made from: it was taken again");
                return Err(CloneError::BaseChanged { base, what }.into());
            }
            let view = s3b_snap::SnapshotView::open(store.clone(), store, name).await?;
            Ok(Arc::new(view))
        }
        BaseId::Volume { .. } => {
            s3b_clone::check_volume_base(store.as_ref(), r).await?;
            if let VolumeProbe::Meta(m) = store.probe_volume().await?
                && (m.block_size, m.file_size) != (r.block_size, r.file_size)
            {
                let what = format!("its geometry is {} {} now", m.block_size, m.file_size);
                return Err(CloneError::BaseChanged { base, what }.into());
            }
            Ok(store)
        }
    }
}

/// Where a flatten stages a copy of a snapshot's live block (a name after the clone's prefix)
/// until it is known to be the snapshot's.
fn stage_name(n: BlockNum) -> String {
    format!("{STAGE_PREFIX}{n:08x}")
}

/// The name prefix of staged copies.
const STAGE_PREFIX: &str = "s3backer-clone-stage/";

/// Server-side copies into the clone from a base on the clone's endpoint: a read-only
/// volume's blocks, and a snapshot's blocks, preserved copies (immutable objects) directly.
/// A snapshot block still in its live volume may change while it is copied, so it is copied
/// to a staging object first, then the snapshot index is read: unchanged since the maps were
/// read (same generation, no writer), no block was preserved meanwhile, so the staged copy is
/// the snapshot's and is copied into place; otherwise the block is read through the snapshot's
/// view instead (`None`). A crash leaves at most staging objects, which the next flatten
/// deletes; the clone's own blocks only ever receive the snapshot's data.
struct Copier {
    clone: S3Store,
    bucket: String,
    prefix: String,
    keys: BlockKeys,
    /// For a snapshot base: its source volume, and which snapshot holds each preserved block
    /// (`None`: zeros) as of the index generation recorded.
    snapshot: Option<SnapshotBase>,
    copies: AtomicU64,
}

/// What [`Copier`] knows of a snapshot base.
struct SnapshotBase {
    source: Arc<S3Store>,
    generation: u64,
    /// No writer was marked then: live blocks may be staged (else they all go by the view).
    quiet: bool,
    held: BTreeMap<BlockNum, Option<u32>>,
}

impl Copier {
    /// A live block of a snapshot base, by way of a staging copy (see [`Copier`]).
    async fn copy_live(&self, snap: &SnapshotBase, n: BlockNum) -> s3b_store::Result<Option<bool>> {
        let stage = stage_name(n);
        let found = self.clone.copy_into_named(&self.bucket, &self.keys.block_key(n), &stage).await?;
        let idx = s3b_snap::book::read_index(snap.source.as_ref()).await.map_err(s3b_store::StoreError::from)?;
        let settled = idx.is_some_and(|i| i.generation == snap.generation && i.writer == 0);
        let result = match (settled, found) {
            (false, _) => None,
            (true, false) => Some(false),
            (true, true) => {
                let from = format!("{}{stage}", self.clone.config().keys.prefix);
                let copied = self.clone.copy_into_block(&self.clone.config().bucket, &from, n).await?;
                copied.then_some(true)
            }
        };
        if found {
            self.clone.delete_named(&stage).await?;
        }
        Ok(result)
    }
}

#[async_trait]
impl ServerCopy for Copier {
    async fn copy_block(&self, n: BlockNum) -> s3b_store::Result<Option<bool>> {
        let Some(snap) = &self.snapshot else {
            let copied = self.clone.copy_into_block(&self.bucket, &self.keys.block_key(n), n).await?;
            if copied {
                self.copies.fetch_add(1, Relaxed);
            }
            return Ok(Some(copied));
        };
        let done = match snap.held.get(&n) {
            None if snap.quiet => self.copy_live(snap, n).await?,
            None => None,
            Some(None) => return Ok(Some(false)),
            Some(Some(id)) => {
                let key = format!("{}{}", self.prefix, copy_name(*id, n));
                // A missing copy was handed on to an older snapshot by a deletion: the view
                // finds it.
                self.clone.copy_into_block(&self.bucket, &key, n).await?.then_some(true)
            }
        };
        if done == Some(true) {
            self.copies.fetch_add(1, Relaxed);
        }
        Ok(done)
    }
}

/// The server-side copier for `r`'s base, when base and clone share an endpoint (and the
/// blocks need no re-encryption).
async fn copier(cfg: &Config, r: &Record) -> Result<Option<Copier>> {
    if r.url.is_some() || r.encrypted {
        return Ok(None);
    }
    let clone = S3Store::new(cfg.s3.clone().context("clones need a bucket")?)?;
    let snapshot = match &r.base {
        BaseId::Volume { .. } => None,
        BaseId::Snapshot { id, .. } => {
            let source = base_store(cfg, &r.bucket, &r.prefix, None, r.hash_prefix)?;
            let idx = s3b_snap::book::read_index(source.as_ref()).await?.unwrap_or_default();
            let mut held = BTreeMap::new();
            for p in idx.snaps.iter().skip_while(|p| p.id != *id) {
                for (n, kind) in s3b_snap::book::read_map(source.as_ref(), p.id).await? {
                    held.entry(n).or_insert((kind == Kind::Data).then_some(p.id));
                }
            }
            Some(SnapshotBase { source, generation: idx.generation, quiet: idx.writer == 0, held })
        }
    };
    Ok(Some(Copier {
        clone,
        bucket: r.bucket.clone(),
        prefix: r.prefix.clone(),
        keys: BlockKeys::new(r.prefix.clone(), r.hash_prefix),
        snapshot,
        copies: AtomicU64::new(0),
    }))
}

/// Deletes the staging objects a killed flatten left.
async fn remove_stages(clone: &S3Store) -> Result<()> {
    let found = parking_lot::Mutex::new(Vec::new());
    clone.list_named(STAGE_PREFIX, &|name, _| found.lock().push(name.to_string())).await?;
    for name in found.into_inner() {
        clone.delete_named(&name).await?;
    }
    Ok(())
}

/// `--flatten`: copies what the clone still uses of its base into it and makes it a plain
/// volume, holding the volume (its mount token) as a mount would.
pub fn flatten(cfg: Config) -> Result<i32> {
    let rt = crate::daemon::runtime().context("can't start the runtime")?;
    rt.block_on(async {
        let what = cfg.describe();
        let transport = Arc::new(S3Store::new(cfg.s3.clone().context("clones need a bucket")?)?);
        let Some(record) = read_record(transport.as_ref()).await? else {
            return Err(CloneError::NotAClone(what).into());
        };
        let old = transport.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
        if old != 0 && !cfg.force {
            bail!(
                "volume is mounted (mount token {old:08x}): unmount it before --flatten (or, if no mount is running, \
                 use --force)"
            );
        }
        check_encryption(&cfg, &record)?;
        let codec = crate::encoding::codec_config(&cfg)?;
        let base = match record.state {
            State::Cloned => Some(recoded(open_base(&cfg, &record).await?, &record, &codec)),
            State::Flat => None,
        };
        let copier = copier(&cfg, &record).await?;
        let token = crate::token::acquire(&cfg, transport.as_ref(), None).await?;
        if let Err(e) = remove_stages(transport.as_ref()).await {
            let _ = crate::token::release(transport.as_ref(), token, None).await;
            return Err(e.context("can't remove what an earlier flatten left"));
        }
        let bar = parking_lot::Mutex::new(None::<crate::progress::Progress>);
        let step = |s: Step| match s {
            Step::Total(n) => *bar.lock() = Some(crate::progress::Progress::start("flattening", Some(n), cfg.quiet)),
            Step::Done => {
                if let Some(b) = bar.lock().as_ref() {
                    b.inc(1);
                }
            }
        };
        let listing = NamedListing { named: transport.as_ref(), hash_prefix: cfg.hash_prefix };
        let started = std::time::Instant::now();
        let result = s3b_clone::flatten(
            transport.as_ref(),
            &listing,
            base.as_deref(),
            copier.as_ref().map(|c| c as &dyn ServerCopy),
            record.clone(),
            &step,
        )
        .await;
        let released = crate::token::release(transport.as_ref(), token, None).await;
        let report = result.with_context(|| format!("flattening {what} failed (run --flatten again to finish it)"))?;
        released?;
        let timing = bar
            .into_inner()
            .map_or_else(|| format!("in {:.1} s", started.elapsed().as_secs_f64()), |b| b.finish(report.copied));
        let on_server = copier.map_or(0, |c| c.copies.load(Relaxed));
        if !cfg.quiet {
            eprintln!(
                "s3backer: flattened {what} (was a clone of {}): copied {} base blocks ({on_server} on the server), \
                 removed {} zero markers, {timing}",
                record.describe_base(),
                report.copied,
                report.markers
            );
        }
        Ok(0)
    })
}
