//! NBD front end: a Network Block Device protocol server exporting the volume as one export.
//!
//! Written from the protocol specification (NetworkBlockDevice/nbd `doc/proto.md`): fixed
//! newstyle negotiation (`OPT_GO`/`OPT_INFO` with export, name, description and block sizes,
//! `OPT_LIST`, `OPT_ABORT`, `OPT_EXPORT_NAME`, structured replies, extended headers (from the
//! specification's `extension-ext-header` branch, as qemu and libnbd use them), the
//! `base:allocation` metadata context), then the transmission phase with READ, WRITE, FLUSH, FUA, TRIM,
//! WRITE_ZEROES (`NO_HOLE`, `FAST_ZERO`), CACHE, BLOCK_STATUS and DISC. With a TLS
//! configuration the server is TLS-only: `OPT_STARTTLS` upgrades the connection (rustls), and
//! every other option before it gets `ERR_TLS_REQD`; without one, STARTTLS gets `ERR_POLICY`.
//!
//! Each connection has one reader, which decodes and checks requests, a task per request
//! running it against the shared [`Volume`], and one writer, which sends the replies in the
//! order they finish. Requests and payload bytes in flight per connection are bounded by
//! semaphores, whose permits are only returned once the reply has been written, so a client
//! that stops reading its replies stalls only itself. All connections share one volume and one
//! stack below it, so a FLUSH on any connection covers writes completed on every connection
//! (`CAN_MULTI_CONN`).
//!
//! Block status is answered from what the layers below know without asking the store
//! ([`Volume::known_zero`]): blocks known to be zero are `HOLE|ZERO`, everything else is
//! reported as data, which is always safe. With changed-block tracking ([`DirtyBitmaps`]), each
//! bitmap is also a context `qemu:dirty-bitmap:NAME` (qemu's convention: flag 1, "dirty", marks
//! what was written since the bitmap began), answered after the range is flushed, so that what
//! a cache still holds counts too. Reads skip known-zero block runs the same way: a
//! block-aligned run of zeros goes out as an `OFFSET_HOLE` chunk.
//!
//! A broken or hostile client gets the specification's error, or its connection closed (bad
//! magic, an unknown flag in the handshake, a write payload larger than the maximum); never a
//! panic and never a stall of other connections.

#![forbid(unsafe_code)]

pub mod negotiate;
pub mod proto;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use negotiate::{Negotiation, Next, Offer, Session};
use proto::{Command, CommandType, Errno, Limits, Request};
use s3b_store::{Chain, StoreError};
use s3b_volume::Volume;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// Most descriptors in one block-status reply (the specification's limit is 2^20).
const MAX_EXTENTS: usize = 1 << 16;
/// Most blocks looked at for one block-status request.
const MAX_STATUS_BLOCKS: u64 = 1 << 20;
/// How long replies may take to drain once the server is shutting down.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(10);
/// Requests in flight per connection by default: enough to keep the stack below busy (the
/// Linux client queues 128, qemu 16) while bounding the tasks and replies one client can pile up.
pub const DEFAULT_MAX_REQUESTS: usize = 64;
/// The specification's "never treat as abuse" payload size: 32 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// What the export looks like and how much one connection may have in flight.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Canonical export name (the empty name, the default export, is accepted too).
    pub name: String,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`, `OPT_LIST`).
    pub description: String,
    /// Export read-only.
    pub read_only: bool,
    /// Largest read or write payload (at least 32 MiB by default).
    pub max_payload: u32,
    /// Requests in flight per connection.
    pub max_requests: usize,
    /// Payload bytes in flight per connection (at least `max_payload`).
    pub max_bytes: usize,
    /// TLS: when set, clients must upgrade with `OPT_STARTTLS` before anything else.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Changed-block tracking, offered as `qemu:dirty-bitmap:NAME` contexts.
    pub bitmaps: Option<Arc<dyn DirtyBitmaps>>,
}

/// Changed-block tracking for the export: named bitmaps of the blocks written since each
/// began (the volume's snapshots, say).
pub trait DirtyBitmaps: Send + Sync + std::fmt::Debug + 'static {
    /// The bitmaps there are now, by name (read when a client connects).
    fn names(&self) -> futures::future::BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// The blocks written since bitmap `name` began, as far as the store below has them (the
    /// server flushes the range it asks about first).
    fn dirty<'a>(&'a self, name: &'a str) -> futures::future::BoxFuture<'a, Result<BTreeSet<u64>, StoreError>>;
}

impl ExportConfig {
    /// Defaults for an export called `name`.
    pub fn new(name: impl Into<String>, description: impl Into<String>, read_only: bool) -> Self {
        ExportConfig {
            name: name.into(),
            description: description.into(),
            read_only,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_bytes: 2 * DEFAULT_MAX_PAYLOAD as usize,
            tls: None,
            bitmaps: None,
        }
    }
}

/// A byte stream a client connected on.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// A listening socket: a Unix socket or TCP.
pub enum Listener {
    /// A Unix-domain socket.
    Unix(tokio::net::UnixListener),
    /// A TCP socket.
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Box<dyn Conn>, String)> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), "unix socket".to_string()))
            }
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), a.to_string()))
            }
        }
    }
}

/// The NBD server: one export over one volume, any number of connections.
pub struct Server {
    volume: Arc<Volume>,
    cfg: ExportConfig,
    shutdown: watch::Sender<bool>,
}

/// The metadata contexts a connection selected.
struct Contexts {
    base_allocation: bool,
    bitmaps: Arc<Vec<(u32, String)>>,
}

/// The extents of a bitmap over `len` bytes at `offset` of blocks of `bs` bytes, at most `max`:
/// runs of blocks in `dirty` (flag [`proto::STATE_DIRTY`]) and of the others (flag 0).
pub fn dirty_runs(offset: u64, len: u64, bs: u64, dirty: &BTreeSet<u64>, max: usize) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    let end = offset.saturating_add(len);
    let mut pos = offset;
    while pos < end && bs > 0 {
        let block = pos / bs;
        let is_dirty = dirty.contains(&block);
        // This block and every following one of the same state, up to the end.
        let next_change = if is_dirty {
            (block..)
                .zip(dirty.range(block..))
                .find(|(want, got)| want != *got)
                .map_or_else(|| dirty.range(block..).next_back().map_or(block + 1, |l| l + 1), |(want, _)| want)
        } else {
            dirty.range(block..).next().copied().unwrap_or(u64::MAX / bs)
        };
        let stop = next_change.saturating_mul(bs).min(end);
        let flag = if is_dirty { proto::STATE_DIRTY } else { 0 };
        if !s3b_volume::push_run(&mut out, stop - pos, flag, max) {
            break;
        }
        pos = stop;
    }
    out
}

/// One reply on its way to the writer, with the permits it holds until written.
struct Outgoing {
    frames: Vec<Bytes>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Server {
    /// A server exporting `volume`.
    pub fn new(volume: Arc<Volume>, mut cfg: ExportConfig) -> Arc<Server> {
        cfg.max_bytes = cfg.max_bytes.max(cfg.max_payload as usize);
        cfg.max_requests = cfg.max_requests.max(1);
        Arc::new(Server { volume, cfg, shutdown: watch::channel(false).0 })
    }

    /// Asks every connection and the accept loop to finish: outstanding requests are
    /// answered, then connections close. [`Server::run`] returns once all are gone.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Accepts connections until [`Server::shutdown`], then waits for every connection to end.
    pub async fn run(self: Arc<Self>, listener: Listener) {
        let mut conns = JoinSet::new();
        let mut stop = self.shutdown.subscribe();
        loop {
            while conns.try_join_next().is_some() {}
            tokio::select! {
                _ = stopped(&mut stop) => break,
                r = listener.accept() => match r {
                    Ok((conn, peer)) => {
                        log::debug!("NBD connection from {peer}");
                        let me = self.clone();
                        conns.spawn(async move {
                            if let Err(e) = me.serve(conn).await {
                                log::debug!("NBD connection from {peer} ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        log::warn!("accepting an NBD connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(listener);
        while conns.join_next().await.is_some() {}
    }

    /// Serves one client connection from the handshake to the end.
    pub async fn serve(self: Arc<Self>, conn: Box<dyn Conn>) -> std::io::Result<()> {
        let Some((conn, session)) = self.handshake(conn).await? else {
            return Ok(());
        };
        let (r, w) = tokio::io::split(conn);
        self.transmission(r, w, session).await
    }

    fn limits(&self, s: &Session) -> Limits {
        Limits {
            size: self.volume.size(),
            max_payload: self.cfg.max_payload,
            read_only: self.cfg.read_only,
            structured: s.structured,
            extended: s.extended,
            block_status: s.any_context(),
        }
    }

    /// Block sizes: any alignment works (the volume does read-modify-write), whole blocks are
    /// preferred, payloads up to the configured maximum.
    fn block_sizes(&self) -> [u32; 3] {
        let preferred = self.volume.block_size().clamp(512, self.cfg.max_payload.max(512));
        [1, preferred, self.cfg.max_payload.max(preferred)]
    }

    /// What negotiation offers: this export, as the volume and the configuration describe it.
    /// Bitmaps that cannot be read now are left out (and logged).
    async fn offer(&self) -> Offer {
        let bitmaps = match &self.cfg.bitmaps {
            None => Vec::new(),
            Some(b) => b.names().await.unwrap_or_else(|e| {
                log::warn!("NBD: changed-block bitmaps are not offered to this client: {}", Chain(&e));
                Vec::new()
            }),
        };
        Offer {
            bitmaps,
            name: self.cfg.name.clone(),
            description: self.cfg.description.clone(),
            size: self.volume.size(),
            read_only: self.cfg.read_only,
            block_sizes: self.block_sizes(),
            tls: self.cfg.tls.is_some(),
        }
    }

    /// Fixed newstyle negotiation: reads options and writes what [`Negotiation`] answers.
    /// `None`: the client ended it without transmission (or the server is shutting down).
    async fn handshake(&self, mut conn: Box<dyn Conn>) -> std::io::Result<Option<(Box<dyn Conn>, Session)>> {
        conn.write_all(&negotiate::greeting()).await?;
        conn.flush().await?;
        let flags = conn.read_u32().await?;
        let mut n = Negotiation::new(self.offer().await, flags).map_err(violation)?;
        let mut stop = self.shutdown.subscribe();
        loop {
            let magic = tokio::select! {
                _ = stopped(&mut stop) => return Ok(None),
                m = conn.read_u64() => m?,
            };
            let option = conn.read_u32().await?;
            let len = negotiate::option_header(magic, option, conn.read_u32().await?).map_err(violation)?;
            let mut data = vec![0u8; len];
            conn.read_exact(&mut data).await?;
            let step = n.option(option, &data, self.shutting_down()).map_err(violation)?;
            let written = async {
                conn.write_all(&step.out).await?;
                conn.flush().await
            };
            match step.next {
                Next::Option => written.await?,
                Next::Transmission(session) => {
                    written.await?;
                    return Ok(Some((conn, session)));
                }
                Next::Close => {
                    // The client may already be gone: a reply it never reads is fine.
                    let _ = written.await;
                    return Ok(None);
                }
                Next::StartTls => {
                    written.await?;
                    let Some(cfg) = &self.cfg.tls else {
                        return Err(protocol_error("TLS started without a TLS configuration".into()));
                    };
                    conn = Box::new(tokio_rustls::TlsAcceptor::from(cfg.clone()).accept(conn).await?);
                }
            }
        }
    }

    /// The transmission phase: reader here, handlers spawned, writer spawned.
    async fn transmission<R, W>(self: Arc<Self>, mut r: R, w: W, s: Session) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits(&s);
        let selected = Arc::new(s.bitmaps.clone());
        let base_allocation = s.block_status;
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let writer = tokio::spawn(write_loop(w, rx, self.shutdown.subscribe()));
        let requests = Arc::new(Semaphore::new(self.cfg.max_requests));
        let bytes = Arc::new(Semaphore::new(self.cfg.max_bytes));
        let mut handlers = JoinSet::new();
        let mut stop = self.shutdown.subscribe();
        let mut result = Ok(());
        loop {
            while handlers.try_join_next().is_some() {}
            let mut hdr = [0u8; proto::EXT_REQUEST_LEN];
            // Everything that may wait on the client also ends at shutdown; requests not read
            // by then were never acknowledged.
            let step = async {
                let req = if s.extended {
                    r.read_exact(&mut hdr).await?;
                    Request::decode_extended(&hdr)
                } else {
                    let h: &mut [u8; proto::REQUEST_LEN] =
                        (&mut hdr[..proto::REQUEST_LEN]).try_into().expect("28 bytes");
                    r.read_exact(h).await?;
                    Request::decode(h)
                };
                let req = req.map_err(|e| protocol_error(e.to_string()))?;
                let payload_len = proto::has_payload(&req, s.extended);
                if payload_len && req.length > self.cfg.max_payload as u64 {
                    return Err(protocol_error(format!(
                        "write of {} bytes exceeds the maximum payload of {}",
                        req.length, self.cfg.max_payload
                    )));
                }
                let p1 = requests.clone().acquire_owned().await.expect("never closed");
                let cost = match req.command_type() {
                    Some(CommandType::Read | CommandType::Write) => {
                        u32::try_from(req.length.clamp(1, self.cfg.max_payload.into())).unwrap_or(self.cfg.max_payload)
                    }
                    _ => 1,
                };
                let p2 = bytes.clone().acquire_many_owned(cost).await.expect("never closed");
                let payload = if payload_len {
                    // At most the maximum payload (checked above).
                    let mut buf = BytesMut::zeroed(usize::try_from(req.length).unwrap_or(usize::MAX));
                    r.read_exact(&mut buf).await?;
                    Some(buf.freeze())
                } else {
                    None
                };
                Ok::<_, std::io::Error>((req, payload, (p1, p2)))
            };
            let (req, payload, permits) = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                step = step => match step {
                    Ok(v) => v,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => {
                        log::warn!("NBD client dropped: {e}");
                        result = Err(e);
                        break;
                    }
                },
            };
            let f = proto::Framer {
                structured: s.structured,
                extended: s.extended,
                cookie: req.cookie,
                offset: req.offset,
            };
            match proto::check(&req, &limits) {
                Err(code) => {
                    let value = code.wire();
                    log::debug!("refusing NBD request {req:?}: error {value}");
                    let frames = vec![f.error(code, &format!("invalid request (error {value})"))];
                    let _ = tx.send(Outgoing { frames, _permits: Some(permits) });
                }
                Ok(Command::Disconnect) => break,
                Ok(cmd) => {
                    let me = self.clone();
                    let tx = tx.clone();
                    let contexts = Contexts { base_allocation, bitmaps: selected.clone() };
                    handlers.spawn(async move {
                        let frames = me.answer(cmd, f, payload, &contexts).await;
                        let _ = tx.send(Outgoing { frames, _permits: Some(permits) });
                    });
                }
            }
        }
        // Finish what was accepted, then let the writer drain and close.
        while handlers.join_next().await.is_some() {}
        drop(tx);
        let _ = writer.await;
        result
    }

    /// Runs one checked command and returns the reply frames. A command whose handler panics
    /// is answered with `EIO` (and the panic logged), so the client never waits for a reply
    /// that will not come.
    async fn answer(&self, cmd: Command, f: proto::Framer, payload: Option<Bytes>, c: &Contexts) -> Vec<Bytes> {
        match AssertUnwindSafe(self.execute(cmd, f, payload, c)).catch_unwind().await {
            Ok(frames) => frames,
            Err(panic) => {
                log::error!("NBD request {cmd:?} failed: its handler panicked: {}", panic_message(&*panic));
                vec![f.error(Errno::Io, "internal error: the request's handler panicked")]
            }
        }
    }

    /// Runs one checked command; returns the reply frames.
    async fn execute(&self, cmd: Command, f: proto::Framer, payload: Option<Bytes>, c: &Contexts) -> Vec<Bytes> {
        let v = &self.volume;
        match cmd {
            Command::Read { offset, len, df } => match v.read(offset, len).await {
                Ok(data) => read_reply(&f, offset, data, df, v.block_size()),
                Err(e) => self.failure(&f, e, &format!("read of {len} bytes at {offset}")),
            },
            Command::Write { offset, len, fua } => {
                let r = self.modify(v.write(offset, payload.unwrap_or_default()), offset, len, fua).await;
                self.reply(&f, r, || format!("write of {len} bytes at {offset}"))
            }
            Command::Flush => self.reply(&f, v.flush().await, || "flush".to_string()),
            Command::WriteZeroes { offset, len, fast: true, .. } if !v.zeroing_is_whole_blocks(offset, len) => {
                // A partial block is a read-modify-write: no faster than writing zeros.
                vec![f.error(Errno::NotSup, "fast zero needs whole blocks")]
            }
            Command::Trim { offset, len, fua } | Command::WriteZeroes { offset, len, fua, .. } => {
                let r = self.modify(v.punch_hole(offset, len), offset, len, fua).await;
                self.reply(&f, r, || format!("zeroing {len} bytes at {offset}"))
            }
            // A hint only; the block cache (if any) fills on the reads that follow.
            Command::Cache { .. } => vec![f.ok()],
            Command::BlockStatus { offset, len, req_one } => {
                let max = if req_one { 1 } else { MAX_EXTENTS };
                // Look at most MAX_STATUS_BLOCKS blocks per request (a shorter answer is fine;
                // in compact mode this also keeps every extent within 32 bits).
                let len = len.min(MAX_STATUS_BLOCKS * v.block_size() as u64).min(u32::MAX as u64).max(1);
                match self.block_status(offset, len, max, c).await {
                    Ok(chunks) => {
                        let last = chunks.len().saturating_sub(1);
                        chunks.iter().enumerate().map(|(i, (id, ext))| f.block_status(*id, ext, i == last)).collect()
                    }
                    Err(e) => self.failure(&f, e, "block status"),
                }
            }
            Command::Disconnect => Vec::new(),
        }
    }

    /// The extents of each selected context over `len` bytes at `offset` (at most `max` each):
    /// `base:allocation` first, then the bitmaps in id order.
    async fn block_status(
        &self,
        offset: u64,
        len: u64,
        max: usize,
        c: &Contexts,
    ) -> Result<Vec<(u32, Vec<(u64, u32)>)>, StoreError> {
        let v = &self.volume;
        let mut out = Vec::new();
        if c.base_allocation {
            let extents = v
                .zero_runs(offset, len, max)?
                .into_iter()
                .map(|(l, z)| (l, if z { proto::STATE_HOLE | proto::STATE_ZERO } else { 0 }))
                .collect();
            out.push((proto::BASE_ALLOCATION_ID, extents));
        }
        if let (false, Some(bitmaps)) = (c.bitmaps.is_empty(), &self.cfg.bitmaps) {
            // Writes a cache still holds reach the store first, so that they count.
            v.flush_range(offset, len).await?;
            let len = len.min(v.size().saturating_sub(offset));
            for (id, name) in c.bitmaps.iter() {
                let dirty = bitmaps.dirty(name).await?;
                out.push((*id, dirty_runs(offset, len, u64::from(v.block_size()), &dirty, max)));
            }
        }
        Ok(out)
    }

    /// Runs a change to the volume; with `fua`, the range it touched is then flushed too.
    async fn modify<T>(
        &self,
        change: impl Future<Output = Result<T, StoreError>>,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), StoreError> {
        change.await?;
        if fua {
            self.volume.flush_range(offset, len).await?;
        }
        Ok(())
    }

    /// The reply to a command without data: success, or the error reply to `what` failing.
    fn reply(&self, f: &proto::Framer, r: Result<(), StoreError>, what: impl FnOnce() -> String) -> Vec<Bytes> {
        match r {
            Ok(()) => vec![f.ok()],
            Err(e) => self.failure(f, e, &what()),
        }
    }

    /// The error reply to `what` failing with `e` (logged); `ESHUTDOWN` when the volume
    /// stopped because the server is shutting down.
    fn failure(&self, f: &proto::Framer, e: StoreError, what: &str) -> Vec<Bytes> {
        let code =
            if self.shutting_down() && matches!(e, StoreError::NotRunning) { Errno::Shutdown } else { nbd_error(&e) };
        log::error!("NBD {what} failed: {}", Chain(&e));
        vec![f.error(code, &format!("{what} failed: {}", Chain(&e)))]
    }
}

/// The message of a panic's payload (a `&str` or `String`, as `panic!` makes them).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Returns once the server is shutting down (never holds the watch's lock across an await).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// An I/O error for a protocol violation (the connection closes).
fn protocol_error(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// An I/O error for a violation of the negotiation rules (the connection closes).
fn violation(v: negotiate::Violation) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, v)
}

/// The NBD error value for a store error.
fn nbd_error(e: &StoreError) -> Errno {
    match s3b_volume::errno(e) {
        libc::EPERM | libc::EROFS | libc::EACCES => Errno::Perm,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Errno::NoSpc,
        libc::EINVAL | libc::ESPIPE => Errno::Inval,
        libc::ENOMEM => Errno::NoMem,
        _ => Errno::Io,
    }
}

/// The reply to a successful read. Structured: block-aligned runs of zeros become hole chunks
/// and the rest data chunks (one data chunk with `df`).
#[expect(
    clippy::cast_possible_truncation,
    reason = "a read carries at most the maximum payload, a u32, so every length and offset \
              inside `data` fits both a u32 and a usize"
)]
fn read_reply(f: &proto::Framer, offset: u64, data: Bytes, df: bool, block_size: u32) -> Vec<Bytes> {
    if !f.structured {
        return vec![f.simple(0), data];
    }
    if data.is_empty() {
        return vec![f.none()];
    }
    if df {
        return vec![f.data_header(true, offset, data.len() as u32), data];
    }
    // Runs of (is_zero, start, end) within `data`, split at block boundaries of the volume.
    let bs = block_size as u64;
    let mut runs: Vec<(bool, usize, usize)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = offset + pos as u64;
        let next = (((abs / bs) + 1) * bs - offset).min(data.len() as u64) as usize;
        // Only whole blocks count as holes; partial ones at the edges go out as data.
        let whole = abs.is_multiple_of(bs) && (next - pos) as u64 == bs;
        let zero = whole && s3b_store::is_zero(&data[pos..next]);
        match runs.last_mut() {
            Some((z, _, end)) if *z == zero => *end = next,
            _ => runs.push((zero, pos, next)),
        }
        pos = next;
    }
    let last = runs.len() - 1;
    let mut frames = Vec::with_capacity(runs.len() * 2);
    for (i, (zero, start, end)) in runs.into_iter().enumerate() {
        let at = offset + start as u64;
        let n = (end - start) as u32;
        if zero {
            frames.push(f.hole(i == last, at, n));
        } else {
            frames.push(f.data_header(i == last, at, n));
            frames.push(data.slice(start..end));
        }
    }
    frames
}

/// Writes replies as they come; once the server shuts down, a client that does not read them
/// within [`SHUTDOWN_WRITE_GRACE`] is dropped. After a write error, replies are discarded (the
/// permits they hold must still be returned).
async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    let mut dead = false;
    let deadline = async move {
        stopped(&mut stop).await;
        tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
    };
    tokio::pin!(deadline);
    while let Some(out) = rx.recv().await {
        if dead {
            continue;
        }
        let send = async {
            for f in &out.frames {
                w.write_all(f).await?;
            }
            if rx.is_empty() {
                w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let r = tokio::select! {
            r = send => r,
            _ = &mut deadline => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading at shutdown")),
        };
        if let Err(e) = r {
            log::debug!("NBD reply not delivered: {e}");
            dead = true;
        }
    }
    if !dead {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
