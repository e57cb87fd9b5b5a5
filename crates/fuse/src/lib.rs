//! FUSE front end: a root directory holding the volume file and the `stats` file.
//!
//! The kernel's requests arrive on fuser's session threads. Those threads never wait for the
//! store: every data operation (read, write, flush, fsync, fallocate) is handed to the tokio
//! runtime and answered from the task when it finishes, so many requests are in flight at once
//! and a slow upload never blocks an unrelated read. The byte-range logic (head/tail
//! read-modify-write, per-block locks, end-of-volume rules) lives in [`s3b_volume`], shared with other
//! front ends.
//!
//! `flush` (every `close`) and `fsync` return only once every byte written so far is durable in
//! the store below — stronger than upstream 1.5.4, where both are no-ops. The `stats` file is
//! rendered afresh on each open; unlinking it resets the counters, as upstream.

#![forbid(unsafe_code)]

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use s3b_store::{Chain, StatsRegistry, StoreError};
use s3b_volume::Volume;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const ROOT_INO: INodeNo = INodeNo::ROOT;
const FILE_INO: INodeNo = INodeNo(2);
const STATS_INO: INodeNo = INodeNo(3);
/// Default name-lookup cache time: upstream's `entry_timeout`, a year (the two names never
/// change while mounted, so there is nothing to look up again).
const DEFAULT_ENTRY_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Default requests the kernel keeps in flight: well above the kernel's 12, because the store
/// below serves many requests at once; as many as an NBD connection may have.
const DEFAULT_MAX_BACKGROUND: u16 = 64;
/// Default congestion mark: three quarters of [`DEFAULT_MAX_BACKGROUND`], the kernel's own
/// proportion (9 of 12).
const DEFAULT_CONGESTION_THRESHOLD: u16 = DEFAULT_MAX_BACKGROUND / 4 * 3;
/// Kernel-side tuning of the FUSE session: what the `-o` mount options `entry_timeout=`,
/// `attr_timeout=`, `max_background=`, `congestion_threshold=` and `max_readahead=` set.
#[derive(Clone, Debug)]
pub struct FuseTuning {
    /// How long the kernel may cache a name lookup. Directory entries never change while
    /// mounted, so upstream's default is a year.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes. Upstream's default is 0, so times and the
    /// stats file's size stay fresh.
    pub attr_ttl: Duration,
    /// Requests the kernel may keep in flight (the store below is concurrent).
    pub max_background: u16,
    /// In-flight requests at which the kernel marks the file system congested.
    pub congestion_threshold: u16,
    /// Largest kernel read-ahead in bytes, or the kernel's choice.
    pub max_readahead: Option<u32>,
}

impl Default for FuseTuning {
    fn default() -> Self {
        FuseTuning {
            entry_ttl: DEFAULT_ENTRY_TTL,
            attr_ttl: Duration::ZERO,
            max_background: DEFAULT_MAX_BACKGROUND,
            congestion_threshold: DEFAULT_CONGESTION_THRESHOLD,
            max_readahead: None,
        }
    }
}

/// Settings of the FUSE file system.
#[derive(Clone, Debug)]
pub struct FuseConfig {
    /// Name of the volume file (`--filename`).
    pub filename: String,
    /// Name of the stats file (`--statsFilename`).
    pub stats_filename: String,
    /// Permission bits of the volume file (`--fileMode`).
    pub file_mode: u16,
    /// Refuse writes (`--readOnly`).
    pub read_only: bool,
    /// Open the volume file with FUSE direct I/O (`--directIO`), bypassing the page cache.
    pub direct_io: bool,
    /// Owner reported for the files.
    pub uid: u32,
    /// Group reported for the files.
    pub gid: u32,
    /// Kernel-side tuning from the mount options.
    pub tuning: FuseTuning,
}

/// The FUSE file system of one mount. Not `Clone`: fuser's session owns it, and the tasks a
/// request hands to the runtime hold a clone of its shared state (one `Arc`) instead.
pub struct VolumeFs {
    shared: Arc<Shared>,
}

struct Shared {
    volume: Arc<Volume>,
    stats: Arc<StatsRegistry>,
    config: FuseConfig,
    rt: tokio::runtime::Handle,
    start: SystemTime,
    times: Mutex<Times>,
    /// Rendered stats snapshots, one per open handle.
    stats_handles: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_fh: AtomicU64,
    /// Requests handed to the runtime and not yet answered.
    in_flight: Arc<InFlight>,
}

#[derive(Clone, Copy)]
struct Times {
    file_atime: SystemTime,
    file_mtime: SystemTime,
    stats_atime: SystemTime,
}

/// Counts requests still being served, so shutdown can wait for them.
#[derive(Default)]
pub struct InFlight {
    count: AtomicU64,
    done: tokio::sync::Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Waits until no request is being served.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

fn errno(e: &StoreError) -> Errno {
    Errno::from_i32(s3b_volume::errno(e))
}

impl VolumeFs {
    /// A file system exporting `volume`, with `stats` rendered from `stats`, serving data
    /// requests on the runtime behind `rt`.
    pub fn new(volume: Arc<Volume>, stats: Arc<StatsRegistry>, config: FuseConfig, rt: tokio::runtime::Handle) -> Self {
        let now = SystemTime::now();
        VolumeFs {
            shared: Arc::new(Shared {
                volume,
                stats,
                config,
                rt,
                start: now,
                times: Mutex::new(Times { file_atime: now, file_mtime: now, stats_atime: now }),
                stats_handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                in_flight: Arc::new(InFlight::default()),
            }),
        }
    }

    /// The in-flight request tracker, to wait for outstanding replies at shutdown.
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.shared.in_flight.clone()
    }

    /// Serves a request with [`serve`], counting it as in flight until it finishes.
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, fut: F) {
        let guard = self.shared.in_flight.enter();
        serve(&self.shared.rt, async move {
            fut.await;
            drop(guard);
        });
    }
}

/// Runs `fut` to completion: polls it once right here on the calling (session) thread, and only
/// if it cannot finish at once (a cache miss, an upload to wait for) hands it to the runtime.
///
/// Most requests of a file system on a warm cache are hits that finish in microseconds;
/// answering them inline saves waking a runtime worker and a thread switch for each, which a
/// profile of the small-file benchmark showed to dominate the daemon's CPU. A future
/// that returned `Pending` is polled again by the runtime with the runtime's waker (futures
/// register the newest waker on every poll), so no wake-up is lost.
///
/// The first poll never waits for the network: it may start a request (name lookups run on the
/// blocking pool, sockets are non-blocking), and it does the work a layer does before its first
/// await, on this thread instead of a runtime worker — the cache file's write and sync, and with
/// no block cache the encoding and signing of an upload. That is the same work C s3backer does
/// on its FUSE threads, and there is one session thread per core.
fn serve<F: std::future::Future<Output = ()> + Send + 'static>(rt: &tokio::runtime::Handle, fut: F) {
    let mut task = Box::pin(fut);
    // Inside the runtime's context, so the first poll may spawn tasks and use timers and sockets
    // as it would on a worker.
    let _ctx = rt.enter();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if std::future::Future::poll(task.as_mut(), &mut cx).is_pending() {
        rt.spawn(task);
    }
}

impl Shared {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let t = *self.times.lock();
        let base = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind: FileType::RegularFile,
            perm: 0,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize: self.volume.block_size(),
            flags: 0,
        };
        match ino {
            ROOT_INO => Some(FileAttr { kind: FileType::Directory, perm: 0o755, nlink: 2, blksize: 4096, ..base }),
            FILE_INO => {
                let size = self.volume.size();
                Some(FileAttr {
                    size,
                    blocks: size.div_ceil(512),
                    atime: t.file_atime,
                    mtime: t.file_mtime,
                    ctime: t.file_mtime,
                    perm: self.config.file_mode,
                    ..base
                })
            }
            STATS_INO => {
                let size = self.stats.render().len() as u64;
                Some(FileAttr { size, atime: t.stats_atime, perm: 0o444, blksize: 4096, ..base })
            }
            _ => None,
        }
    }
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Let the kernel keep many requests in flight: the store below is concurrent.
        let t = &self.shared.config.tuning;
        if let Err(max) = config.set_max_background(t.max_background) {
            log::warn!("max_background={} is above the kernel's limit {max}", t.max_background);
        }
        if let Err(max) = config.set_congestion_threshold(t.congestion_threshold) {
            log::warn!("congestion_threshold={} is above the kernel's limit {max}", t.congestion_threshold);
        }
        if let Some(ra) = t.max_readahead
            && let Err(max) = config.set_max_readahead(ra)
        {
            log::warn!("max_readahead={ra} is above the kernel's limit {max}");
        }
        // Asynchronous direct I/O: the kernel sends the requests of an asynchronous O_DIRECT
        // submission (a loop device with --direct-io=on, fio with libaio) concurrently instead
        // of one after the other. Without it, a direct-I/O loop device waits a full round trip
        // to the store for every request.
        if config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO).is_err() {
            log::debug!("the kernel does not offer asynchronous direct I/O");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        let ino = if parent != ROOT_INO {
            None
        } else if name == OsStr::new(&s.config.filename) {
            Some(FILE_INO)
        } else if name == OsStr::new(&s.config.stats_filename) {
            Some(STATS_INO)
        } else {
            None
        };
        match ino.and_then(|i| s.attr(i)) {
            Some(attr) => reply.entry(&s.config.tuning.entry_ttl, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.shared.attr(ino) {
            Some(attr) => reply.attr(&self.shared.config.tuning.attr_ttl, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The volume has a fixed size: truncate is accepted and ignored, as upstream. Only
        // the times of the volume file can be changed.
        let when = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if ino == FILE_INO {
            let mut t = self.shared.times.lock();
            if let Some(a) = atime {
                t.file_atime = when(a);
            }
            if let Some(m) = mtime {
                t.file_mtime = when(m);
            }
        }
        match self.shared.attr(ino) {
            Some(attr) => reply.attr(&self.shared.config.tuning.attr_ttl, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.shared;
        if parent == ROOT_INO && name == OsStr::new(&s.config.stats_filename) {
            s.stats.reset();
            log::info!("statistics reset");
            reply.ok();
        } else if parent == ROOT_INO && name == OsStr::new(&s.config.filename) {
            reply.error(Errno::EPERM);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match ino {
            FILE_INO => {
                if writing && s.config.read_only {
                    return reply.error(Errno::EROFS);
                }
                let flags = if s.config.direct_io { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::FOPEN_KEEP_CACHE };
                reply.opened(FileHandle(0), flags);
            }
            STATS_INO => {
                if writing {
                    return reply.error(Errno::EACCES);
                }
                let fh = s.next_fh.fetch_add(1, Ordering::Relaxed);
                s.stats_handles.lock().insert(fh, Arc::new(s.stats.render().into_bytes()));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            ROOT_INO => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if ino == STATS_INO {
            self.shared.stats_handles.lock().remove(&fh.0);
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match ino {
            FILE_INO => {
                let s = self.shared.clone();
                self.spawn(async move {
                    match s.volume.read(offset, size as u64).await {
                        Ok(data) => {
                            s.times.lock().file_atime = SystemTime::now();
                            reply.data(&data)
                        }
                        Err(e) => {
                            log::error!("read of {size} bytes at offset {offset} failed: {}", Chain(&e));
                            reply.error(errno(&e))
                        }
                    }
                });
            }
            STATS_INO => {
                let snap = self.shared.stats_handles.lock().get(&fh.0).cloned();
                let snap = snap.unwrap_or_else(|| Arc::new(self.shared.stats.render().into_bytes()));
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(snap.len());
                let end = start.saturating_add(size as usize).min(snap.len());
                self.shared.times.lock().stats_atime = SystemTime::now();
                reply.data(&snap[start..end]);
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EINVAL);
        }
        if self.shared.config.read_only {
            return reply.error(Errno::EROFS);
        }
        let s = self.shared.clone();
        let data = bytes::Bytes::copy_from_slice(data);
        self.spawn(async move {
            let len = data.len();
            match s.volume.write(offset, data).await {
                Ok(n) => {
                    s.times.lock().file_mtime = SystemTime::now();
                    // All of `data` was written, and a FUSE write carries fewer than 2^32 bytes.
                    reply.written(u32::try_from(n).unwrap_or(u32::MAX))
                }
                Err(e) => {
                    log::error!("write of {len} bytes at offset {offset} failed: {}", Chain(&e));
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.sync_reply(ino, reply);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync_reply(ino, reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let s = self.shared.clone();
        if length == 0 {
            return reply.error(Errno::EINVAL);
        }
        if offset.checked_add(length).is_none_or(|end| end > s.volume.size()) {
            return reply.error(Errno::ENOSPC);
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
            // The volume is fully "allocated" already; other modes have nothing to do.
            return reply.ok();
        }
        if s.config.read_only {
            return reply.error(Errno::EROFS);
        }
        self.spawn(async move {
            match s.volume.punch_hole(offset, length).await {
                Ok(()) => {
                    s.times.lock().file_mtime = SystemTime::now();
                    reply.ok()
                }
                Err(e) => {
                    log::error!("punch hole of {length} bytes at offset {offset} failed: {}", Chain(&e));
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let s = &self.shared;
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, s.config.filename.as_str()),
            (STATS_INO, FileType::RegularFile, s.config.stats_filename.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        // No extended attributes; ENOTSUP tells the kernel to stop asking.
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let v = &self.shared.volume;
        let bs = v.block_size();
        reply.statfs(v.store().num_blocks(), 0, 0, 3, 0, bs, 255, bs);
    }
}

impl VolumeFs {
    fn sync_reply(&self, ino: INodeNo, reply: ReplyEmpty) {
        if ino != FILE_INO {
            return reply.ok();
        }
        let s = self.shared.clone();
        self.spawn(async move {
            match s.volume.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    log::error!("flush failed: {}", Chain(&e));
                    reply.error(errno(&e))
                }
            }
        });
    }
}

#[cfg(test)]
mod serve_tests {
    use super::serve;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn a_future_that_is_ready_runs_on_the_calling_thread() {
        let rt = runtime();
        let (tx, rx) = std::sync::mpsc::channel();
        serve(rt.handle(), async move { tx.send(std::thread::current().id()).unwrap() });
        // Already sent: it ran before serve returned, here.
        assert_eq!(rx.try_recv().unwrap(), std::thread::current().id());
    }

    #[test]
    fn a_pending_future_finishes_on_the_runtime_without_losing_its_wakeup() {
        let rt = runtime();
        for _ in 0..200 {
            let notify = Arc::new(tokio::sync::Notify::new());
            let (tx, rx) = std::sync::mpsc::channel();
            let n = notify.clone();
            serve(rt.handle(), async move {
                n.notified().await;
                tx.send(std::thread::current().id()).unwrap();
            });
            // Woken right after the inline poll, possibly before the runtime polled it.
            notify.notify_one();
            let id = rx.recv_timeout(Duration::from_secs(5)).expect("the wake-up was lost");
            assert_ne!(id, std::thread::current().id());
        }
    }

    #[test]
    fn the_first_poll_may_spawn_and_use_timers() {
        let rt = runtime();
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let d = done.clone();
        serve(rt.handle(), async move {
            let inner = tokio::spawn(async { 7 });
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(inner.await.unwrap(), 7);
            d.store(true, Ordering::SeqCst);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
