//! Local-directory object store, used by `s3backer --test DIR`.
//!
//! Every block object is one file in `DIR`, named exactly like its S3 key (see
//! [`s3b_store::keys::BlockKeys`]), holding the object body. This is upstream's `test_io` layout,
//! so a directory written by C s3backer in `--test` mode mounts with ours and the other way round.
//!
//! - Writes go to a temporary file in the same directory, then `rename` over the final name, so a
//!   crash leaves either the old or the new block, never a torn one.
//! - A missing file reads as "not found" (zeros upstream of the codec); a deleted block is a
//!   removed file.
//! - [`ObjectStore::flush`] fsyncs the files written since the last flush and then the directory,
//!   so that after it returns the renames are durable too.
//! - The ETag of an object is the MD5 of its body, as S3 computes it for a single PUT.
//! - Upstream keeps no size metadata and no mount token in `--test` mode; neither do we, so the
//!   size must be given with `--size` and double mounts are not detected.
//!
//! When a codec is active, the encoding headers an S3 object would carry are kept in a small
//! sidecar file `<key>.meta` beside the data (lines `content-encoding: …`, `hmac: …`, and `md5: …`
//! of the data it belongs to, so a crash between the two renames is detected, not decoded); plain
//! volumes have none and stay byte-compatible with upstream.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use s3b_store::keys::BlockKeys;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, VolumeMeta,
};
use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Suffix of the sidecar file that holds encoding headers.
const META_SUFFIX: &str = ".meta";

/// An [`ObjectStore`] over a local directory.
pub struct DirStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    keys: BlockKeys,
    /// Blocks written or deleted since the last flush; their files (and the directory) need fsync.
    unsynced: Mutex<BTreeSet<BlockNum>>,
    tmp_counter: AtomicU64,
    /// This process's mount token (see [`ObjectStore::mount_token`] below).
    token: AtomicU32,
}

impl DirStore {
    /// Opens the store in `dir`, which must exist and be a directory.
    pub fn open(dir: impl Into<PathBuf>, keys: BlockKeys) -> std::result::Result<Self, OpenError> {
        let dir = dir.into();
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(OpenError::NotADirectory(dir)),
            Err(source) => return Err(OpenError::Unusable { path: dir, source }),
        }
        // Keys with a prefix containing '/' live in subdirectories.
        let probe = dir.join(keys.block_key(0));
        if let Some(parent) = probe.parent() {
            fs::create_dir_all(parent).map_err(|source| OpenError::Unusable { path: parent.to_path_buf(), source })?;
        }
        Ok(DirStore {
            inner: Arc::new(Inner {
                dir,
                keys,
                unsynced: Mutex::new(BTreeSet::new()),
                tmp_counter: AtomicU64::new(0),
                token: AtomicU32::new(0),
            }),
        })
    }

    /// The directory this store writes to.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::Task(e.into()))?
    }
}

/// Why a directory cannot hold a volume.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path exists and is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The path (or the subdirectory the prefix needs) cannot be used.
    #[error("{}", path.display())]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The sidecar of a block's encoding headers was written for other data.
#[derive(Debug, thiserror::Error)]
#[error("{} belongs to other data", .0.display())]
pub struct ForeignSidecar(pub PathBuf);

impl Inner {
    fn path(&self, n: BlockNum) -> PathBuf {
        self.dir.join(self.keys.block_key(n))
    }

    fn meta_path(&self, n: BlockNum) -> PathBuf {
        let mut p = self.path(n).into_os_string();
        p.push(META_SUFFIX);
        PathBuf::from(p)
    }

    /// The encoding headers kept beside block `n`, checked against its data's ETag: a sidecar
    /// written for other data (a crash between the two renames) makes the block corrupt.
    fn read_sidecar(&self, n: BlockNum, etag: &Etag) -> Result<(Option<String>, Option<String>)> {
        let path = self.meta_path(n);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((None, None)),
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
        };
        let (mut enc, mut hmac, mut md5) = (None, None, None);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("content-encoding: ") {
                enc = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("hmac: ") {
                hmac = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("md5: ") {
                md5 = Some(v.to_string());
            }
        }
        if md5.as_deref().is_some_and(|m| m != etag.to_hex()) {
            return Err(StoreError::corrupt(n, ForeignSidecar(path)));
        }
        Ok((enc, hmac))
    }

    fn get(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        let path = self.path(n);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(GetOutcome::NotFound),
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
        };
        let etag = Etag(Md5::digest(&data).into());
        match cond {
            ReadCondition::IfMatch(want) if want != etag => return Err(StoreError::Stale(n)),
            ReadCondition::IfNoneMatch(have) if have == etag => return Ok(GetOutcome::NotModified),
            _ => {}
        }
        let (content_encoding, hmac) = self.read_sidecar(n, &etag)?;
        Ok(GetOutcome::Found { body: ObjectBody { data: Bytes::from(data), content_encoding, hmac }, etag: Some(etag) })
    }

    /// Writes `data` to `path` atomically: a temporary file in the same directory, then rename.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let seq = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp.{}.{seq}", std::process::id()));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io(format!("write {}", path.display()), e));
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("delete {}", path.display()), e)),
        }
    }

    fn put(&self, n: BlockNum, body: &ObjectBody) -> Result<Etag> {
        let path = self.path(n);
        // Sidecar first: a crash between the two leaves a sidecar that the next put replaces;
        // a plain body never has one.
        let meta_path = self.meta_path(n);
        if body.content_encoding.is_some() || body.hmac.is_some() {
            let mut text = String::new();
            if let Some(e) = &body.content_encoding {
                text.push_str(&format!("content-encoding: {e}\n"));
            }
            if let Some(h) = &body.hmac {
                text.push_str(&format!("hmac: {h}\n"));
            }
            text.push_str(&format!("md5: {}\n", Etag(Md5::digest(&body.data).into()).to_hex()));
            self.write_atomic(&meta_path, text.as_bytes())?;
        } else {
            self.remove(&meta_path)?;
        }
        self.write_atomic(&path, &body.data)?;
        self.unsynced.lock().insert(n);
        Ok(Etag(Md5::digest(&body.data).into()))
    }

    fn delete(&self, n: BlockNum) -> Result<()> {
        self.remove(&self.path(n))?;
        self.remove(&self.meta_path(n))?;
        self.unsynced.lock().insert(n);
        Ok(())
    }

    fn list(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let probe = self.path(0);
        let dir = probe.parent().unwrap_or(&self.dir);
        let name_prefix = Path::new(&self.keys.block_key(0))
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
            .map(|p| p + "/")
            .unwrap_or_default();
        let entries = fs::read_dir(dir).map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = self.keys.parse_key(&format!("{name_prefix}{name}")) {
                sink(n);
            }
        }
        Ok(())
    }

    fn sync(&self, which: Option<&[BlockNum]>) -> Result<()> {
        let todo: Vec<BlockNum> = {
            let mut set = self.unsynced.lock();
            match which {
                None => std::mem::take(&mut *set).into_iter().collect(),
                Some(list) => list.iter().filter(|n| set.remove(n)).copied().collect(),
            }
        };
        if todo.is_empty() {
            return Ok(());
        }
        let res = (|| {
            for &n in &todo {
                for path in [self.path(n), self.meta_path(n)] {
                    match fs::File::open(&path) {
                        Ok(f) => f.sync_all().map_err(|e| StoreError::io(format!("fsync {}", path.display()), e))?,
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
                    }
                }
            }
            let probe = self.path(0);
            let dir = probe.parent().unwrap_or(&self.dir);
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))
        })();
        if res.is_err() {
            // Not durable yet: remember them for the next flush.
            self.unsynced.lock().extend(todo);
        }
        res
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        self.blocking(move |i| i.get(n, cond)).await
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, _volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        self.blocking(move |i| i.put(n, &body).map(Some)).await
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        self.blocking(move |i| i.delete(n)).await
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        let blocks = blocks.to_vec();
        self.blocking(move |i| blocks.iter().try_for_each(|&n| i.delete(n))).await
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        // Listing is a few readdir calls; done inline to avoid sending the borrowed sink.
        let inner = self.inner.clone();
        tokio::task::block_in_place(|| inner.list(sink))
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        Ok(None)
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        // Kept in memory for this process, as upstream's test mode keeps none on disk: the
        // directory's layout stays upstream's, and a mount clears what it set.
        let t = &self.inner.token;
        Ok(match op {
            TokenOp::Read => t.load(Ordering::SeqCst),
            TokenOp::Clear => t.swap(0, Ordering::SeqCst),
            TokenOp::Set(v) => t.swap(v, Ordering::SeqCst),
        })
    }

    async fn flush(&self, blocks: Option<&[BlockNum]>) -> Result<()> {
        let blocks = blocks.map(|b| b.to_vec());
        self.blocking(move |i| i.sync(blocks.as_deref())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount sets its token and clears it again at unmount: the swap finds its own token
    /// (it did not, when the test mode kept none, and every unmount warned of a take-over).
    #[tokio::test]
    async fn the_mount_token_lives_for_the_process() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path(), BlockKeys::default()).unwrap();
        assert_eq!(s.mount_token(TokenOp::Read).await.unwrap(), 0);
        assert_eq!(s.swap_mount_token(0, 0x1234).await.unwrap(), s3b_store::TokenSwap::Done(0x1234));
        assert_eq!(s.mount_token(TokenOp::Read).await.unwrap(), 0x1234);
        assert_eq!(s.swap_mount_token(0x1234, 0).await.unwrap(), s3b_store::TokenSwap::Done(0));
        assert_eq!(s.mount_token(TokenOp::Read).await.unwrap(), 0);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "nothing written for the token");
    }

    fn body(data: &[u8]) -> ObjectBody {
        ObjectBody { data: Bytes::copy_from_slice(data), ..Default::default() }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn put_get_delete_list() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path(), BlockKeys::new("", true)).unwrap();
        assert_eq!(s.get_object(3, ReadCondition::None).await.unwrap(), GetOutcome::NotFound);
        let etag = s.put_object(3, body(b"abc"), None).await.unwrap().unwrap();
        assert!(d.path().join(BlockKeys::new("", true).block_key(3)).exists());
        match s.get_object(3, ReadCondition::None).await.unwrap() {
            GetOutcome::Found { body, etag: e } => {
                assert_eq!(&body.data[..], b"abc");
                assert_eq!(e, Some(etag));
                assert_eq!(body.content_encoding, None);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(s.get_object(3, ReadCondition::IfNoneMatch(etag)).await.unwrap(), GetOutcome::NotModified);
        assert!(matches!(s.get_object(3, ReadCondition::IfMatch(Etag::UNKNOWN)).await, Err(StoreError::Stale(3))));
        s.put_object(7, body(b"x"), None).await.unwrap();
        let found = Mutex::new(Vec::new());
        s.list_objects(&|n| found.lock().push(n)).await.unwrap();
        let mut found = found.into_inner();
        found.sort();
        assert_eq!(found, vec![3, 7]);
        s.flush(None).await.unwrap();
        s.delete_object(3).await.unwrap();
        s.delete_object(3).await.unwrap();
        assert_eq!(s.get_object(3, ReadCondition::None).await.unwrap(), GetOutcome::NotFound);
        s.flush(Some(&[3])).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sidecar_headers_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path(), BlockKeys::new("sub/", false)).unwrap();
        let b = ObjectBody {
            data: Bytes::from_static(b"zz"),
            content_encoding: Some("deflate, encrypt-AES-128-CBC".into()),
            hmac: Some("\"00ff\"".into()),
        };
        s.put_object(1, b.clone(), None).await.unwrap();
        assert!(d.path().join("sub/00000001.meta").exists());
        match s.get_object(1, ReadCondition::None).await.unwrap() {
            GetOutcome::Found { body, .. } => assert_eq!(body, b),
            o => panic!("{o:?}"),
        }
        // The sidecar is not mistaken for a block when listing.
        let found = Mutex::new(Vec::new());
        s.list_objects(&|n| found.lock().push(n)).await.unwrap();
        assert_eq!(found.into_inner(), vec![1]);
        // A plain rewrite drops the sidecar.
        s.put_object(1, body(b"plain"), None).await.unwrap();
        assert!(!d.path().join("sub/00000001.meta").exists());
    }

    #[test]
    fn open_errors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(DirStore::open(&f, BlockKeys::default()).err().unwrap().to_string().contains("not a directory"));
        assert!(
            DirStore::open(d.path().join("nope"), BlockKeys::default())
                .err()
                .map(|e| s3b_store::Chain(&e).to_string())
                .unwrap()
                .contains("No such file")
        );
    }
}
