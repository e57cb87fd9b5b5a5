//! In-process tests of the server with a minimal hand-written client over in-memory pipes:
//! negotiation, every command, and broken or hostile clients.

#![allow(clippy::cast_possible_truncation, reason = "test values are small constants and offsets within them")]

use super::*;
use proto::{ChunkType, CommandFlag, Errno, InfoType, OptionType, ReplyType, TransmissionFlag};
use s3b_codec::{Codec, CodecConfig, CodecStore};
use s3b_dir::DirStore;
use s3b_store::keys::BlockKeys;
use tokio::io::DuplexStream;

const BS: u32 = 4096;
const BLOCKS: u64 = 64;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
}

fn fixture(read_only: bool) -> Fixture {
    fixture_over(read_only, |coded| Arc::new(ZeroTracking::new(coded)))
}

/// A fixture whose volume sits on `top` over the coded directory store.
fn fixture_over(
    read_only: bool,
    top: impl FnOnce(Arc<dyn s3b_store::BlockStore>) -> Arc<dyn s3b_store::BlockStore>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::open(dir.path(), BlockKeys::default()).unwrap());
    let coded = Arc::new(CodecStore::new(store, Codec::new(BS, CodecConfig::default()), BLOCKS));
    let volume = Arc::new(Volume::new(top(coded), read_only));
    let mut cfg = ExportConfig::new("vol", "test volume", read_only);
    cfg.max_payload = 1 << 20;
    cfg.max_bytes = 2 << 20;
    Fixture { _dir: dir, server: Server::new(volume, cfg) }
}

/// A pass-through store that remembers zero writes, standing in for the zero cache; with
/// `panics_on`, any read or write of that block panics, standing in for a bug below.
struct ZeroTracking {
    inner: Arc<dyn s3b_store::BlockStore>,
    zero: parking_lot::Mutex<std::collections::HashSet<u32>>,
    panics_on: Option<u32>,
}

impl ZeroTracking {
    fn new(inner: Arc<dyn s3b_store::BlockStore>) -> Self {
        ZeroTracking { inner, zero: Default::default(), panics_on: None }
    }
}

#[async_trait::async_trait]
impl s3b_store::BlockStore for ZeroTracking {
    fn geometry(&self) -> s3b_store::Geometry {
        self.inner.geometry()
    }
    async fn read_block(&self, n: u32, c: s3b_store::ReadRequest) -> s3b_store::Result<s3b_store::ReadOutcome> {
        assert_ne!(Some(n), self.panics_on, "reading the poisoned block");
        self.inner.read_block(n, c).await
    }
    async fn write_block(&self, n: u32, d: Option<s3b_store::BlockData>) -> s3b_store::Result<Option<s3b_store::Etag>> {
        assert_ne!(Some(n), self.panics_on, "writing the poisoned block");
        let zero = d.is_none();
        self.zero.lock().remove(&n);
        let r = self.inner.write_block(n, d).await;
        if zero && r.is_ok() {
            self.zero.lock().insert(n);
        }
        r
    }
    fn known_zero(&self, n: u32) -> bool {
        self.zero.lock().contains(&n)
    }
    async fn flush(&self, b: Option<&[u32]>) -> s3b_store::Result<()> {
        self.inner.flush(b).await
    }
    async fn survey_non_zero(&self, sink: &(dyn Fn(u32) + Send + Sync)) -> s3b_store::Result<()> {
        self.inner.survey_non_zero(sink).await
    }
    async fn shutdown(&self) -> s3b_store::Result<()> {
        self.inner.shutdown().await
    }
}

/// A raw client end.
struct Client {
    s: DuplexStream,
}

fn connect(f: &Fixture) -> (Client, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (a, b) = tokio::io::duplex(4 << 20);
    let server = f.server.clone();
    let h = tokio::spawn(async move { server.serve(Box::new(b)).await });
    (Client { s: a }, h)
}

impl Client {
    async fn greet(&mut self) {
        assert_eq!(self.s.read_u64().await.unwrap(), proto::NBD_MAGIC);
        assert_eq!(self.s.read_u64().await.unwrap(), proto::IHAVEOPT);
        assert_eq!(self.s.read_u16().await.unwrap(), proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
        self.s.write_u32(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).await.unwrap();
    }

    /// Sends an option: an [`OptionType`], or any number.
    async fn option(&mut self, option: impl Into<u32>, data: &[u8]) {
        self.s.write_u64(proto::IHAVEOPT).await.unwrap();
        self.s.write_u32(option.into()).await.unwrap();
        self.s.write_u32(data.len() as u32).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    /// Sends an option and reads the (first) reply to it: (type, data).
    async fn ask(&mut self, option: impl Into<u32> + Copy, data: &[u8]) -> (ReplyType, Vec<u8>) {
        self.option(option, data).await;
        self.option_reply(option).await
    }

    /// Reads one option reply to `option`: (type, data).
    async fn option_reply(&mut self, option: impl Into<u32>) -> (ReplyType, Vec<u8>) {
        assert_eq!(self.s.read_u64().await.unwrap(), proto::OPT_REPLY_MAGIC);
        assert_eq!(self.s.read_u32().await.unwrap(), option.into());
        let value = self.s.read_u32().await.unwrap();
        let kind = ReplyType::from_wire(value).unwrap_or_else(|| panic!("unknown option reply type {value:#x}"));
        let len = self.s.read_u32().await.unwrap();
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (kind, d)
    }

    /// Structured replies, base:allocation, then GO; returns the transmission flags.
    async fn negotiate(&mut self) -> u16 {
        self.greet().await;
        assert_eq!(self.ask(OptionType::StructuredReply, &[]).await.0, ReplyType::Ack);
        self.select_base_allocation().await;
        self.go().await
    }

    /// `SET_META_CONTEXT` of `base:allocation` on the default export: selected, then ACK.
    async fn select_base_allocation(&mut self) {
        let (k, d) = self.ask(OptionType::SetMetaContext, &proto::encode_meta("", &[proto::BASE_ALLOCATION])).await;
        assert_eq!(k, ReplyType::MetaContext);
        assert_eq!(&d[4..], proto::BASE_ALLOCATION.as_bytes());
        assert_eq!(self.option_reply(OptionType::SetMetaContext).await.0, ReplyType::Ack);
    }

    async fn go(&mut self) -> u16 {
        let g = proto::encode_info("", &[InfoType::Name.wire(), InfoType::BlockSize.wire()]);
        self.option(OptionType::Go, &g).await;
        let mut flags = None;
        loop {
            let (k, d) = self.option_reply(OptionType::Go).await;
            if k == ReplyType::Ack {
                break;
            }
            assert_eq!(k, ReplyType::Info);
            let info = u16::from_be_bytes([d[0], d[1]]);
            match InfoType::from_wire(info).unwrap_or_else(|| panic!("unexpected info {info}")) {
                InfoType::Export => {
                    assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), BS as u64 * BLOCKS);
                    flags = Some(u16::from_be_bytes([d[10], d[11]]));
                }
                InfoType::Name => assert_eq!(&d[2..], b"vol"),
                InfoType::BlockSize => {
                    let v: Vec<u32> = d[2..].chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect();
                    assert_eq!(v, vec![1, BS, 1 << 20]);
                }
                InfoType::Description => panic!("unexpected info {info}"),
            }
        }
        flags.expect("no INFO_EXPORT")
    }

    /// Sends a request: a [`CommandType`] or any number, with `flags`, then `payload`.
    async fn request(
        &mut self,
        kind: impl Into<u16>,
        flags: &[CommandFlag],
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let r = Request { flags: CommandFlag::mask(flags), kind: kind.into(), cookie, offset, length: length as u64 };
        self.s.write_all(&r.encode()).await.unwrap();
        self.s.write_all(payload).await.unwrap();
    }

    /// Reads one structured chunk: (flags, type, cookie, payload).
    async fn chunk(&mut self) -> (u16, ChunkType, u64, Vec<u8>) {
        let (flags, kind, cookie, _, d) = self.any_chunk(false).await;
        (flags, kind, cookie, d)
    }

    /// Reads one extended chunk: (flags, type, cookie, offset, payload).
    async fn ext_chunk(&mut self) -> (u16, ChunkType, u64, u64, Vec<u8>) {
        self.any_chunk(true).await
    }

    /// Reads one structured chunk, or with `extended` one extended chunk (the only kind that
    /// carries an offset; 0 otherwise): (flags, type, cookie, offset, payload).
    async fn any_chunk(&mut self, extended: bool) -> (u16, ChunkType, u64, u64, Vec<u8>) {
        let magic = self.s.read_u32().await.unwrap();
        let want = if extended { proto::EXTENDED_REPLY_MAGIC } else { proto::STRUCTURED_REPLY_MAGIC };
        assert_eq!(magic, want, "expected a structured chunk (extended: {extended})");
        let flags = self.s.read_u16().await.unwrap();
        let value = self.s.read_u16().await.unwrap();
        let kind = ChunkType::from_wire(value).unwrap_or_else(|| panic!("unexpected chunk {value}"));
        let cookie = self.s.read_u64().await.unwrap();
        let (offset, len) = if extended {
            (self.s.read_u64().await.unwrap(), self.s.read_u64().await.unwrap())
        } else {
            (0, self.s.read_u32().await.unwrap().into())
        };
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (flags, kind, cookie, offset, d)
    }

    /// Reads one simple reply: (error, cookie).
    async fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.s.read_u32().await.unwrap(), proto::SIMPLE_REPLY_MAGIC);
        let e = self.s.read_u32().await.unwrap();
        (e, self.s.read_u64().await.unwrap())
    }

    /// A whole structured read reply reassembled: Ok(bytes) or Err(error value).
    async fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CommandType::Read, &[], cookie, offset, len, &[]).await;
        let mut out = vec![0xee; len as usize];
        let mut error = None;
        loop {
            let (flags, kind, c, d) = self.chunk().await;
            assert_eq!(c, cookie);
            match kind {
                ChunkType::OffsetData => {
                    let at = (u64::from_be_bytes(d[..8].try_into().unwrap()) - offset) as usize;
                    out[at..at + d.len() - 8].copy_from_slice(&d[8..]);
                }
                ChunkType::OffsetHole => {
                    let at = (u64::from_be_bytes(d[..8].try_into().unwrap()) - offset) as usize;
                    let n = u32::from_be_bytes(d[8..12].try_into().unwrap()) as usize;
                    out[at..at + n].fill(0);
                }
                ChunkType::Error => error = Some(u32::from_be_bytes(d[..4].try_into().unwrap())),
                ChunkType::None => {}
                other => panic!("unexpected chunk {other:?}"),
            }
            if flags & proto::REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        error.map_or(Ok(out), Err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_and_every_command() {
    let f = fixture(false);
    let (mut c, h) = connect(&f);
    let flags = c.negotiate().await;
    use TransmissionFlag::{
        CanMultiConn, HasFlags, SendCache, SendDf, SendFastZero, SendFlush, SendFua, SendTrim, SendWriteZeroes,
    };
    for flag in [HasFlags, SendFlush, SendFua, SendTrim, SendWriteZeroes, SendDf, CanMultiConn, SendCache, SendFastZero]
    {
        assert!(flags & flag.bit() != 0, "flag {flag:?} missing from {flags:#x}");
    }
    assert_eq!(flags & TransmissionFlag::ReadOnly.bit(), 0);

    // Unaligned write across blocks, with FUA.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    c.request(CommandType::Write, &[CommandFlag::Fua], 1, 1000, data.len() as u32, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    assert_eq!(c.read(2, 1000, data.len() as u32).await.unwrap(), data);
    // Zero whole blocks 1 and 2, fast: they read back as zeros, holes in block status.
    c.request(CommandType::WriteZeroes, &[CommandFlag::FastZero], 3, BS as u64, 2 * BS, &[]).await;
    assert_eq!(c.simple().await, (0, 3));
    // A fast zero of a partial block is refused and changes nothing.
    c.request(CommandType::WriteZeroes, &[CommandFlag::FastZero], 4, 1000, 10, &[]).await;
    let (fl, kind, cookie, d) = c.chunk().await;
    assert_eq!((fl & proto::REPLY_FLAG_DONE, kind, cookie), (1, ChunkType::Error, 4));
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), Errno::NotSup.wire());
    let got = c.read(5, 0, 3 * BS).await.unwrap();
    assert_eq!(&got[1000..BS as usize], &data[..BS as usize - 1000]);
    assert!(got[BS as usize..].iter().all(|&b| b == 0));
    // Block status: block 0 data, blocks 1-2 hole|zero, then unknown (data) to the end.
    c.request(CommandType::BlockStatus, &[], 6, 0, (BS as u64 * BLOCKS) as u32, &[]).await;
    let (fl, kind, _, d) = c.chunk().await;
    assert_eq!((fl, kind), (proto::REPLY_FLAG_DONE, ChunkType::BlockStatus));
    let ext: Vec<(u32, u32)> = d[4..]
        .chunks(8)
        .map(|e| (u32::from_be_bytes(e[..4].try_into().unwrap()), u32::from_be_bytes(e[4..].try_into().unwrap())))
        .collect();
    assert_eq!(ext, vec![(BS, 0), (2 * BS, 3), ((BLOCKS as u32 - 3) * BS, 0)]);
    // REQ_ONE: one extent, no longer than asked.
    c.request(CommandType::BlockStatus, &[CommandFlag::ReqOne], 7, BS as u64, 100, &[]).await;
    let (_, _, _, d) = c.chunk().await;
    assert_eq!(d.len(), 12);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 100);
    // Trim with FUA, flush, cache.
    c.request(CommandType::Trim, &[CommandFlag::Fua], 8, 0, BS, &[]).await;
    assert_eq!(c.simple().await, (0, 8));
    c.request(CommandType::Flush, &[], 9, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (0, 9));
    c.request(CommandType::Cache, &[], 10, 0, BS, &[]).await;
    assert_eq!(c.simple().await, (0, 10));
    assert!(c.read(11, 0, 4 * BS).await.unwrap().iter().all(|&b| b == 0));
    // A whole-block zero read comes back as a hole chunk.
    c.request(CommandType::Read, &[], 12, 0, BS, &[]).await;
    let (_, kind, _, _) = c.chunk().await;
    assert_eq!(kind, ChunkType::OffsetHole);
    // DF: one data chunk.
    c.request(CommandType::Read, &[CommandFlag::Df], 13, 0, 2 * BS, &[]).await;
    let (fl, kind, _, d) = c.chunk().await;
    assert_eq!((fl, kind, d.len()), (proto::REPLY_FLAG_DONE, ChunkType::OffsetData, 8 + 2 * BS as usize));
    // Disconnect: the server ends the connection cleanly.
    c.request(CommandType::Disc, &[], 14, 0, 0, &[]).await;
    h.await.unwrap().unwrap();
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_list_info_unsupported_and_starttls() {
    let f = fixture(false);
    let (mut c, _h) = connect(&f);
    c.greet().await;
    let (k, d) = c.ask(OptionType::List, &[]).await;
    assert_eq!(k, ReplyType::Server);
    assert_eq!(&d[4..7], b"vol");
    assert_eq!(&d[7..], b"test volume");
    assert_eq!(c.option_reply(OptionType::List).await.0, ReplyType::Ack);
    assert_eq!(c.ask(OptionType::List, b"x").await.0, ReplyType::ErrInvalid);
    assert_eq!(c.ask(OptionType::StartTls, &[]).await.0, ReplyType::ErrPolicy);
    assert_eq!(c.ask(4242u32, b"whatever").await.0, ReplyType::ErrUnsup);
    // Meta contexts before structured replies: invalid.
    assert_eq!(c.ask(OptionType::ListMetaContext, &[0, 0, 0, 0, 0, 0, 0, 0]).await.0, ReplyType::ErrInvalid);
    // INFO for an unknown export, then malformed.
    assert_eq!(c.ask(OptionType::Info, &proto::encode_info("nope", &[])).await.0, ReplyType::ErrUnknown);
    assert_eq!(c.ask(OptionType::Info, &[0, 0, 0, 9]).await.0, ReplyType::ErrInvalid);
    // Then a normal GO still works, simple replies.
    let flags = c.go().await;
    assert_eq!(flags & TransmissionFlag::SendDf.bit(), 0);
    c.request(CommandType::Read, &[], 1, 0, 16, &[]).await;
    assert_eq!(c.simple().await, (0, 1));
    let mut d = [1u8; 16];
    c.s.read_exact(&mut d).await.unwrap();
    assert_eq!(d, [0; 16]);
    // Out of range and unknown commands: EINVAL, the connection goes on.
    c.request(CommandType::Read, &[], 2, BS as u64 * BLOCKS, 1, &[]).await;
    assert_eq!(c.simple().await, (Errno::Inval.wire(), 2));
    c.request(77u16, &[], 3, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (Errno::Inval.wire(), 3));
    c.request(CommandType::Write, &[], 4, BS as u64 * BLOCKS - 1, 2, b"ab").await;
    assert_eq!(c.simple().await, (Errno::NoSpc.wire(), 4));
    c.request(CommandType::BlockStatus, &[], 5, 0, 1, &[]).await;
    assert_eq!(c.simple().await, (Errno::Inval.wire(), 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_and_abort() {
    let f = fixture(false);
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.option(OptionType::ExportName, b"vol").await;
    assert_eq!(c.s.read_u64().await.unwrap(), BS as u64 * BLOCKS);
    let flags = c.s.read_u16().await.unwrap();
    assert!(flags & TransmissionFlag::CanMultiConn.bit() != 0);
    // NO_ZEROES was negotiated: the next bytes are a reply to our first request.
    c.request(CommandType::Flush, &[], 9, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (0, 9));
    drop(c);
    h.await.unwrap().unwrap();

    let (mut c, h) = connect(&f);
    c.greet().await;
    assert_eq!(c.ask(OptionType::Abort, &[]).await.0, ReplyType::Ack);
    h.await.unwrap().unwrap();

    // An unknown name with EXPORT_NAME closes the connection.
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.option(OptionType::ExportName, b"other").await;
    assert!(h.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export() {
    let f = fixture(true);
    let (mut c, _h) = connect(&f);
    let flags = c.negotiate().await;
    assert!(flags & TransmissionFlag::ReadOnly.bit() != 0);
    assert_eq!(flags & (TransmissionFlag::SendTrim.bit() | TransmissionFlag::SendWriteZeroes.bit()), 0);
    c.request(CommandType::Write, &[], 1, 0, 4, b"abcd").await;
    let (_, kind, _, d) = c.chunk().await;
    assert_eq!(kind, ChunkType::Error);
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), Errno::Perm.wire());
    assert_eq!(c.read(2, 0, 4).await.unwrap(), vec![0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_disturb_others() {
    let f = fixture(false);
    let (mut good, _gh) = connect(&f);
    good.negotiate().await;

    // Garbage instead of the client flags' successors.
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.s.write_all(b"this is not an option header at all").await.unwrap();
    assert!(h.await.unwrap().is_err());

    // Unknown client flags.
    let (mut c, h) = connect(&f);
    let mut hello = [0u8; 18];
    c.s.read_exact(&mut hello).await.unwrap();
    c.s.write_u32(0x80).await.unwrap();
    assert!(h.await.unwrap().is_err());

    // A huge option length.
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.s.write_u64(proto::IHAVEOPT).await.unwrap();
    c.s.write_u32(OptionType::Go.wire()).await.unwrap();
    c.s.write_u32(u32::MAX).await.unwrap();
    assert!(h.await.unwrap().is_err());

    // Bad request magic in transmission.
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    c.s.write_all(&[0x55; 28]).await.unwrap();
    assert!(h.await.unwrap().is_err());

    // A write bigger than the maximum payload: closed without reading 4 GiB.
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    c.request(CommandType::Write, &[], 1, 0, u32::MAX, &[]).await;
    assert!(h.await.unwrap().is_err());

    // A client that vanishes in the middle of a write payload: nothing is written.
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    let r = Request { flags: 0, kind: CommandType::Write.wire(), cookie: 1, offset: 0, length: 8192 };
    c.s.write_all(&r.encode()).await.unwrap();
    c.s.write_all(&[0xab; 100]).await.unwrap();
    drop(c);
    h.await.unwrap().unwrap();

    // A client that sends many requests and never reads a reply stalls only itself.
    let (mut c, _h) = connect(&f);
    c.negotiate().await;
    let writer = tokio::spawn(async move {
        for i in 0..10_000u64 {
            if c.request_nowait(CommandType::Read, i, 0, 64 * 1024).await.is_err() {
                break;
            }
        }
        c
    });

    // Meanwhile the good client works, and sees that nothing was written at 0.
    for i in 0..20u64 {
        assert_eq!(good.read(100 + i, 0, 8192).await.unwrap(), vec![0; 8192]);
    }
    let data = vec![7u8; 5000];
    good.request(CommandType::Write, &[], 200, 3, 5000, &data).await;
    assert_eq!(good.simple().await, (0, 200));
    assert_eq!(good.read(201, 3, 5000).await.unwrap(), data);
    writer.abort();
}

impl Client {
    async fn request_nowait(
        &mut self,
        kind: CommandType,
        cookie: u64,
        offset: u64,
        length: u32,
    ) -> std::io::Result<()> {
        let r = Request { flags: 0, kind: kind.wire(), cookie, offset, length: length as u64 };
        self.s.write_all(&r.encode()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_outstanding_requests_then_closes() {
    let f = fixture(false);
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    let data = vec![3u8; 3 * BS as usize];
    c.request(CommandType::Write, &[], 1, 0, data.len() as u32, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    f.server.shutdown();
    h.await.unwrap().unwrap();
    // A client arriving during shutdown gets the greeting, then the connection ends.
    let (mut c, h) = connect(&f);
    c.greet().await;
    h.await.unwrap().unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest).await;
    assert!(rest.is_empty() || u32::from_be_bytes(rest[12..16].try_into().unwrap()) == ReplyType::ErrShutdown.wire());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_headers() {
    let f = fixture(false);
    let (mut c, _h) = connect(&f);
    c.greet().await;
    assert_eq!(c.ask(OptionType::ExtendedHeaders, &[]).await.0, ReplyType::Ack);
    assert_eq!(c.ask(OptionType::ExtendedHeaders, &[]).await.0, ReplyType::ErrInvalid);
    c.select_base_allocation().await;
    let flags = c.go().await;
    assert!(flags & TransmissionFlag::SendDf.bit() != 0);
    let send = |flags: &[CommandFlag], kind: CommandType, cookie: u64, offset: u64, length: u64| {
        Request { flags: CommandFlag::mask(flags), kind: kind.wire(), cookie, offset, length }.encode_extended()
    };
    // A write with PAYLOAD_LEN: answered with a NONE chunk echoing the offset.
    c.s.write_all(&send(&[CommandFlag::PayloadLen], CommandType::Write, 1, 5000, 3)).await.unwrap();
    c.s.write_all(b"xyz").await.unwrap();
    assert_eq!(c.ext_chunk().await, (proto::REPLY_FLAG_DONE, ChunkType::None, 1, 5000, vec![]));
    // A write without it (as qemu 10 sends them): the payload still follows.
    c.s.write_all(&send(&[], CommandType::Write, 2, 9000, 3)).await.unwrap();
    c.s.write_all(b"abc").await.unwrap();
    assert_eq!(c.ext_chunk().await.1, ChunkType::None);
    // A read with an unexpected payload: the payload is consumed, EINVAL, the stream goes on.
    c.s.write_all(&send(&[CommandFlag::PayloadLen], CommandType::Read, 3, 0, 4)).await.unwrap();
    c.s.write_all(b"junk").await.unwrap();
    let (_, kind, cookie, _, _) = c.ext_chunk().await;
    assert_eq!((kind, cookie), (ChunkType::Error, 3));
    // Read it back: one data chunk.
    c.s.write_all(&send(&[CommandFlag::Df], CommandType::Read, 4, 5000, 3)).await.unwrap();
    let (fl, kind, cookie, off, d) = c.ext_chunk().await;
    assert_eq!((fl, kind, cookie, off), (proto::REPLY_FLAG_DONE, ChunkType::OffsetData, 4, 5000));
    assert_eq!(&d[8..], b"xyz");
    // A trim with a 64-bit effect length over the whole export (and past 4 GiB is refused).
    c.s.write_all(&send(&[], CommandType::Trim, 5, 0, BS as u64 * BLOCKS)).await.unwrap();
    assert_eq!(c.ext_chunk().await.1, ChunkType::None);
    c.s.write_all(&send(&[], CommandType::Trim, 6, 0, 1 << 33)).await.unwrap();
    assert_eq!(c.ext_chunk().await.1, ChunkType::Error);
    // Block status: BLOCK_STATUS_EXT with 64-bit descriptors; all of it is known zero now.
    c.s.write_all(&send(&[], CommandType::BlockStatus, 7, 0, BS as u64 * BLOCKS)).await.unwrap();
    let (_, kind, _, _, d) = c.ext_chunk().await;
    assert_eq!(kind, ChunkType::BlockStatusExt);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), BS as u64 * BLOCKS);
    assert_eq!(u64::from_be_bytes(d[16..24].try_into().unwrap()), 3);
    // Flush: a NONE chunk, never a simple reply.
    c.s.write_all(&send(&[], CommandType::Flush, 8, 0, 0)).await.unwrap();
    assert_eq!(c.ext_chunk().await.1, ChunkType::None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_its_request_with_eio() {
    let f = fixture_over(false, |coded| Arc::new(ZeroTracking { panics_on: Some(3), ..ZeroTracking::new(coded) }));
    for structured in [false, true] {
        let (mut c, h) = connect(&f);
        if structured {
            c.negotiate().await;
        } else {
            c.greet().await;
            c.go().await;
        }
        // A read and a write of the poisoned block, then a write elsewhere: each gets its own
        // answer, EIO for the two that panicked. The client then stops sending, so a missing
        // answer shows as the end of the stream, not as a wait.
        let poisoned = 3 * BS as u64;
        let data = vec![9u8; BS as usize];
        c.request(CommandType::Read, &[], 1, poisoned, BS, &[]).await;
        c.request(CommandType::Write, &[], 2, poisoned, BS, &data).await;
        c.request(CommandType::Write, &[], 3, 0, BS, &data).await;
        c.s.shutdown().await.unwrap();
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let (error, cookie) = if structured {
                match c.s.read_u32().await.unwrap() {
                    proto::SIMPLE_REPLY_MAGIC => (c.s.read_u32().await.unwrap(), c.s.read_u64().await.unwrap()),
                    magic => {
                        assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC);
                        let (flags, kind) = (c.s.read_u16().await.unwrap(), c.s.read_u16().await.unwrap());
                        assert_eq!(
                            (flags, ChunkType::from_wire(kind)),
                            (proto::REPLY_FLAG_DONE, Some(ChunkType::Error))
                        );
                        let cookie = c.s.read_u64().await.unwrap();
                        let mut d = vec![0; c.s.read_u32().await.unwrap() as usize];
                        c.s.read_exact(&mut d).await.unwrap();
                        (u32::from_be_bytes(d[..4].try_into().unwrap()), cookie)
                    }
                }
            } else {
                c.simple().await
            };
            answers.insert(cookie, error);
        }
        let eio = Errno::Io.wire();
        assert_eq!(answers.into_iter().collect::<Vec<_>>(), vec![(1, eio), (2, eio), (3, 0)]);
        h.await.unwrap().unwrap();
        // The server goes on: what the connection wrote after the panics reads back.
        let (mut c, h) = connect(&f);
        c.negotiate().await;
        assert_eq!(c.read(4, 0, BS).await.unwrap(), data);
        drop(c);
        h.await.unwrap().unwrap();
    }
}

/// A changed-block source for tests: fixed bitmaps, and how often they were read.
#[derive(Debug, Default)]
struct FixedBitmaps {
    maps: Vec<(String, BTreeSet<u64>)>,
}

impl DirtyBitmaps for FixedBitmaps {
    fn names(&self) -> futures::future::BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async { Ok(self.maps.iter().map(|(n, _)| n.clone()).collect()) })
    }
    fn dirty<'a>(&'a self, name: &'a str) -> futures::future::BoxFuture<'a, Result<BTreeSet<u64>, StoreError>> {
        Box::pin(
            async move { Ok(self.maps.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()).unwrap_or_default()) },
        )
    }
}

fn extents(d: &[u8]) -> (u32, Vec<(u32, u32)>) {
    let id = u32::from_be_bytes(d[..4].try_into().unwrap());
    let ext = d[4..]
        .chunks(8)
        .map(|e| (u32::from_be_bytes(e[..4].try_into().unwrap()), u32::from_be_bytes(e[4..].try_into().unwrap())))
        .collect();
    (id, ext)
}

/// The dirty-bitmap contexts: listed by the qemu wildcards, selected beside base:allocation,
/// and answered one chunk per context (only the last one final), dirty blocks with flag 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_bitmap_contexts() {
    let mut f = fixture(false);
    let bitmaps = FixedBitmaps {
        maps: vec![("mon".into(), [0, 1, 5, 63].into_iter().collect()), ("tue".into(), [5].into_iter().collect())],
    };
    let server =
        Server::new(f.server.volume.clone(), ExportConfig { bitmaps: Some(Arc::new(bitmaps)), ..f.server.cfg.clone() });
    f.server = server;
    let (mut c, _h) = connect(&f);
    c.greet().await;
    assert_eq!(c.ask(OptionType::StructuredReply, &[]).await.0, ReplyType::Ack);
    c.option(OptionType::ListMetaContext, &proto::encode_meta("", &["qemu:dirty-bitmap:"])).await;
    let mut listed = Vec::new();
    loop {
        let (k, d) = c.option_reply(OptionType::ListMetaContext).await;
        if k == ReplyType::Ack {
            break;
        }
        assert_eq!((k, &d[..4]), (ReplyType::MetaContext, &[0u8; 4][..]));
        listed.push(String::from_utf8(d[4..].to_vec()).unwrap());
    }
    assert_eq!(listed, ["qemu:dirty-bitmap:mon", "qemu:dirty-bitmap:tue"]);
    let q = proto::encode_meta("", &[proto::BASE_ALLOCATION, "qemu:dirty-bitmap:mon", "qemu:dirty-bitmap:wed"]);
    c.option(OptionType::SetMetaContext, &q).await;
    let (k1, d1) = c.option_reply(OptionType::SetMetaContext).await;
    let (k2, d2) = c.option_reply(OptionType::SetMetaContext).await;
    assert_eq!((k1, &d1[..4]), (ReplyType::MetaContext, &proto::BASE_ALLOCATION_ID.to_be_bytes()[..]));
    assert_eq!((k2, &d2[4..]), (ReplyType::MetaContext, &b"qemu:dirty-bitmap:mon"[..]));
    let mon_id = u32::from_be_bytes(d2[..4].try_into().unwrap());
    assert_eq!(mon_id, proto::FIRST_BITMAP_ID);
    assert_eq!(c.option_reply(OptionType::SetMetaContext).await.0, ReplyType::Ack);
    c.go().await;

    c.request(CommandType::BlockStatus, &[], 1, 0, (BS as u64 * BLOCKS) as u32, &[]).await;
    let (fl, kind, _, d) = c.chunk().await;
    assert_eq!((fl & proto::REPLY_FLAG_DONE, kind), (0, ChunkType::BlockStatus), "not the last chunk");
    assert_eq!(extents(&d).0, proto::BASE_ALLOCATION_ID);
    let (fl, _, _, d) = c.chunk().await;
    assert_eq!(fl & proto::REPLY_FLAG_DONE, proto::REPLY_FLAG_DONE);
    assert_eq!(extents(&d), (mon_id, vec![(2 * BS, 1), (3 * BS, 0), (BS, 1), ((BLOCKS as u32 - 7) * BS, 0), (BS, 1)]));
    // Unaligned, and REQ_ONE: one extent per context, within the request.
    c.request(CommandType::BlockStatus, &[CommandFlag::ReqOne], 2, BS as u64 + 100, 10, &[]).await;
    let _ = c.chunk().await;
    let (_, _, _, d) = c.chunk().await;
    assert_eq!(extents(&d), (mon_id, vec![(10, 1)]));
    c.request(CommandType::BlockStatus, &[], 3, 5 * BS as u64 - 1, BS + 2, &[]).await;
    let _ = c.chunk().await;
    let (_, _, _, d) = c.chunk().await;
    assert_eq!(extents(&d), (mon_id, vec![(1, 0), (BS, 1), (1, 0)]));
}

#[test]
fn dirty_runs_cover_the_range_in_alternating_runs() {
    let set: BTreeSet<u64> = [2, 3, 4, 9].into_iter().collect();
    assert_eq!(dirty_runs(0, 12 * 10, 10, &set, 100), vec![(20, 0), (30, 1), (40, 0), (10, 1), (20, 0)]);
    assert_eq!(dirty_runs(25, 10, 10, &set, 100), vec![(10, 1)]);
    assert_eq!(dirty_runs(0, 120, 10, &set, 2), vec![(20, 0), (30, 1)]);
    assert_eq!(dirty_runs(95, 10, 10, &set, 100), vec![(5, 1), (5, 0)]);
    assert_eq!(dirty_runs(0, 30, 10, &BTreeSet::new(), 100), vec![(30, 0)]);
    assert!(dirty_runs(5, 0, 10, &set, 100).is_empty());
    // Against the block-by-block definition, for every start and length in a small volume.
    for start in 0..60 {
        for len in 0..60 {
            let got = dirty_runs(start, len, 7, &set, usize::MAX);
            let mut want: Vec<(u64, u32)> = Vec::new();
            for b in start..start + len {
                let flag = u32::from(set.contains(&(b / 7)));
                match want.last_mut() {
                    Some((l, f)) if *f == flag => *l += 1,
                    _ => want.push((1, flag)),
                }
            }
            assert_eq!(got, want, "start {start} len {len}");
        }
    }
}
