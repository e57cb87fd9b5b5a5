//! In-process tests of the server with a minimal hand-written client over in-memory pipes:
//! negotiation, every command, and broken or hostile clients.

use super::*;
use proto::{cflags, chunk, cmd};
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
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::open(dir.path(), BlockKeys::default()).unwrap());
    let coded = Arc::new(CodecStore::new(store, Codec::new(BS, CodecConfig::default()), BLOCKS));
    let zero = Arc::new(ZeroTracking::new(coded));
    let volume = Arc::new(Volume::new(zero, read_only));
    let mut cfg = ExportConfig::new("vol", "test volume", read_only);
    cfg.max_payload = 1 << 20;
    cfg.max_bytes = 2 << 20;
    Fixture { _dir: dir, server: Server::new(volume, cfg) }
}

/// A pass-through store that remembers zero writes, standing in for the zero cache.
struct ZeroTracking {
    inner: Arc<dyn s3b_store::BlockStore>,
    zero: parking_lot::Mutex<std::collections::HashSet<u32>>,
}

impl ZeroTracking {
    fn new(inner: Arc<dyn s3b_store::BlockStore>) -> Self {
        ZeroTracking { inner, zero: Default::default() }
    }
}

#[async_trait::async_trait]
impl s3b_store::BlockStore for ZeroTracking {
    fn geometry(&self) -> s3b_store::Geometry {
        self.inner.geometry()
    }
    async fn read_block(&self, n: u32, c: s3b_store::ReadRequest) -> s3b_store::Result<s3b_store::ReadOutcome> {
        self.inner.read_block(n, c).await
    }
    async fn write_block(&self, n: u32, d: Option<s3b_store::BlockData>) -> s3b_store::Result<Option<s3b_store::Etag>> {
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

    async fn option(&mut self, option: u32, data: &[u8]) {
        self.s.write_u64(proto::IHAVEOPT).await.unwrap();
        self.s.write_u32(option).await.unwrap();
        self.s.write_u32(data.len() as u32).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    /// Reads one option reply: (type, data).
    async fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        assert_eq!(self.s.read_u64().await.unwrap(), proto::OPT_REPLY_MAGIC);
        assert_eq!(self.s.read_u32().await.unwrap(), option);
        let kind = self.s.read_u32().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (kind, d)
    }

    /// Structured replies, base:allocation, then GO; returns the transmission flags.
    async fn negotiate(&mut self) -> u16 {
        self.greet().await;
        self.option(opt::STRUCTURED_REPLY, &[]).await;
        assert_eq!(self.option_reply(opt::STRUCTURED_REPLY).await.0, rep::ACK);
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&(proto::BASE_ALLOCATION.len() as u32).to_be_bytes());
        m.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
        self.option(opt::SET_META_CONTEXT, &m).await;
        let (k, d) = self.option_reply(opt::SET_META_CONTEXT).await;
        assert_eq!(k, rep::META_CONTEXT);
        assert_eq!(&d[4..], proto::BASE_ALLOCATION.as_bytes());
        assert_eq!(self.option_reply(opt::SET_META_CONTEXT).await.0, rep::ACK);
        self.go().await
    }

    async fn go(&mut self) -> u16 {
        let mut g = Vec::new();
        g.extend_from_slice(&0u32.to_be_bytes());
        g.extend_from_slice(&2u16.to_be_bytes());
        g.extend_from_slice(&info::NAME.to_be_bytes());
        g.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        self.option(opt::GO, &g).await;
        let mut flags = None;
        loop {
            let (k, d) = self.option_reply(opt::GO).await;
            if k == rep::ACK {
                break;
            }
            assert_eq!(k, rep::INFO);
            match u16::from_be_bytes([d[0], d[1]]) {
                info::EXPORT => {
                    assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), BS as u64 * BLOCKS);
                    flags = Some(u16::from_be_bytes([d[10], d[11]]));
                }
                info::NAME => assert_eq!(&d[2..], b"vol"),
                info::BLOCK_SIZE => {
                    let v: Vec<u32> = d[2..].chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect();
                    assert_eq!(v, vec![1, BS, 1 << 20]);
                }
                other => panic!("unexpected info {other}"),
            }
        }
        flags.expect("no INFO_EXPORT")
    }

    async fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) {
        let r = Request { flags, kind, cookie, offset, length: length as u64 };
        self.s.write_all(&r.encode()).await.unwrap();
        self.s.write_all(payload).await.unwrap();
    }

    /// Reads one structured chunk: (flags, type, cookie, payload).
    async fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let magic = self.s.read_u32().await.unwrap();
        assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC, "expected a structured chunk");
        let flags = self.s.read_u16().await.unwrap();
        let kind = self.s.read_u16().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (flags, kind, cookie, d)
    }

    /// Reads one simple reply: (error, cookie).
    async fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.s.read_u32().await.unwrap(), proto::SIMPLE_REPLY_MAGIC);
        let e = self.s.read_u32().await.unwrap();
        (e, self.s.read_u64().await.unwrap())
    }

    /// A whole structured read reply reassembled: Ok(bytes) or Err(error value).
    async fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(cmd::READ, 0, cookie, offset, len, &[]).await;
        let mut out = vec![0xee; len as usize];
        let mut error = None;
        loop {
            let (flags, kind, c, d) = self.chunk().await;
            assert_eq!(c, cookie);
            match kind {
                chunk::OFFSET_DATA => {
                    let at = (u64::from_be_bytes(d[..8].try_into().unwrap()) - offset) as usize;
                    out[at..at + d.len() - 8].copy_from_slice(&d[8..]);
                }
                chunk::OFFSET_HOLE => {
                    let at = (u64::from_be_bytes(d[..8].try_into().unwrap()) - offset) as usize;
                    let n = u32::from_be_bytes(d[8..12].try_into().unwrap()) as usize;
                    out[at..at + n].fill(0);
                }
                chunk::ERROR => error = Some(u32::from_be_bytes(d[..4].try_into().unwrap())),
                chunk::NONE => {}
                other => panic!("unexpected chunk {other}"),
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
    for bit in [
        tflags::HAS_FLAGS,
        tflags::SEND_FLUSH,
        tflags::SEND_FUA,
        tflags::SEND_TRIM,
        tflags::SEND_WRITE_ZEROES,
        tflags::SEND_DF,
        tflags::CAN_MULTI_CONN,
        tflags::SEND_CACHE,
        tflags::SEND_FAST_ZERO,
    ] {
        assert!(flags & bit != 0, "flag {bit:#x} missing from {flags:#x}");
    }
    assert_eq!(flags & tflags::READ_ONLY, 0);

    // Unaligned write across blocks, with FUA.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    c.request(cmd::WRITE, cflags::FUA, 1, 1000, data.len() as u32, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    assert_eq!(c.read(2, 1000, data.len() as u32).await.unwrap(), data);
    // Zero whole blocks 1 and 2, fast: they read back as zeros, holes in block status.
    c.request(cmd::WRITE_ZEROES, cflags::FAST_ZERO, 3, BS as u64, 2 * BS, &[]).await;
    assert_eq!(c.simple().await, (0, 3));
    // A fast zero of a partial block is refused and changes nothing.
    c.request(cmd::WRITE_ZEROES, cflags::FAST_ZERO, 4, 1000, 10, &[]).await;
    let (fl, kind, cookie, d) = c.chunk().await;
    assert_eq!((fl & proto::REPLY_FLAG_DONE, kind, cookie), (1, chunk::ERROR, 4));
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), err::ENOTSUP);
    let got = c.read(5, 0, 3 * BS).await.unwrap();
    assert_eq!(&got[1000..BS as usize], &data[..BS as usize - 1000]);
    assert!(got[BS as usize..].iter().all(|&b| b == 0));
    // Block status: block 0 data, blocks 1-2 hole|zero, then unknown (data) to the end.
    c.request(cmd::BLOCK_STATUS, 0, 6, 0, (BS as u64 * BLOCKS) as u32, &[]).await;
    let (fl, kind, _, d) = c.chunk().await;
    assert_eq!((fl, kind), (proto::REPLY_FLAG_DONE, chunk::BLOCK_STATUS));
    let ext: Vec<(u32, u32)> = d[4..]
        .chunks(8)
        .map(|e| (u32::from_be_bytes(e[..4].try_into().unwrap()), u32::from_be_bytes(e[4..].try_into().unwrap())))
        .collect();
    assert_eq!(ext, vec![(BS, 0), (2 * BS, 3), ((BLOCKS as u32 - 3) * BS, 0)]);
    // REQ_ONE: one extent, no longer than asked.
    c.request(cmd::BLOCK_STATUS, cflags::REQ_ONE, 7, BS as u64, 100, &[]).await;
    let (_, _, _, d) = c.chunk().await;
    assert_eq!(d.len(), 12);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 100);
    // Trim with FUA, flush, cache.
    c.request(cmd::TRIM, cflags::FUA, 8, 0, BS, &[]).await;
    assert_eq!(c.simple().await, (0, 8));
    c.request(cmd::FLUSH, 0, 9, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (0, 9));
    c.request(cmd::CACHE, 0, 10, 0, BS, &[]).await;
    assert_eq!(c.simple().await, (0, 10));
    assert!(c.read(11, 0, 4 * BS).await.unwrap().iter().all(|&b| b == 0));
    // A whole-block zero read comes back as a hole chunk.
    c.request(cmd::READ, 0, 12, 0, BS, &[]).await;
    let (_, kind, _, _) = c.chunk().await;
    assert_eq!(kind, chunk::OFFSET_HOLE);
    // DF: one data chunk.
    c.request(cmd::READ, cflags::DF, 13, 0, 2 * BS, &[]).await;
    let (fl, kind, _, d) = c.chunk().await;
    assert_eq!((fl, kind, d.len()), (proto::REPLY_FLAG_DONE, chunk::OFFSET_DATA, 8 + 2 * BS as usize));
    // Disconnect: the server ends the connection cleanly.
    c.request(cmd::DISC, 0, 14, 0, 0, &[]).await;
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
    c.option(opt::LIST, &[]).await;
    let (k, d) = c.option_reply(opt::LIST).await;
    assert_eq!(k, rep::SERVER);
    assert_eq!(&d[4..7], b"vol");
    assert_eq!(&d[7..], b"test volume");
    assert_eq!(c.option_reply(opt::LIST).await.0, rep::ACK);
    c.option(opt::LIST, b"x").await;
    assert_eq!(c.option_reply(opt::LIST).await.0, rep::ERR_INVALID);
    c.option(opt::STARTTLS, &[]).await;
    assert_eq!(c.option_reply(opt::STARTTLS).await.0, rep::ERR_POLICY);
    c.option(4242, b"whatever").await;
    assert_eq!(c.option_reply(4242).await.0, rep::ERR_UNSUP);
    // Meta contexts before structured replies: invalid.
    c.option(opt::LIST_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(c.option_reply(opt::LIST_META_CONTEXT).await.0, rep::ERR_INVALID);
    // INFO for an unknown export, then malformed.
    let mut g = Vec::new();
    g.extend_from_slice(&4u32.to_be_bytes());
    g.extend_from_slice(b"nope");
    g.extend_from_slice(&0u16.to_be_bytes());
    c.option(opt::INFO, &g).await;
    assert_eq!(c.option_reply(opt::INFO).await.0, rep::ERR_UNKNOWN);
    c.option(opt::INFO, &[0, 0, 0, 9]).await;
    assert_eq!(c.option_reply(opt::INFO).await.0, rep::ERR_INVALID);
    // Then a normal GO still works, simple replies.
    let flags = c.go().await;
    assert_eq!(flags & tflags::SEND_DF, 0);
    c.request(cmd::READ, 0, 1, 0, 16, &[]).await;
    assert_eq!(c.simple().await, (0, 1));
    let mut d = [1u8; 16];
    c.s.read_exact(&mut d).await.unwrap();
    assert_eq!(d, [0; 16]);
    // Out of range and unknown commands: EINVAL, the connection goes on.
    c.request(cmd::READ, 0, 2, BS as u64 * BLOCKS, 1, &[]).await;
    assert_eq!(c.simple().await, (err::EINVAL, 2));
    c.request(77, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (err::EINVAL, 3));
    c.request(cmd::WRITE, 0, 4, BS as u64 * BLOCKS - 1, 2, b"ab").await;
    assert_eq!(c.simple().await, (err::ENOSPC, 4));
    c.request(cmd::BLOCK_STATUS, 0, 5, 0, 1, &[]).await;
    assert_eq!(c.simple().await, (err::EINVAL, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_and_abort() {
    let f = fixture(false);
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.option(opt::EXPORT_NAME, b"vol").await;
    assert_eq!(c.s.read_u64().await.unwrap(), BS as u64 * BLOCKS);
    let flags = c.s.read_u16().await.unwrap();
    assert!(flags & tflags::CAN_MULTI_CONN != 0);
    // NO_ZEROES was negotiated: the next bytes are a reply to our first request.
    c.request(cmd::FLUSH, 0, 9, 0, 0, &[]).await;
    assert_eq!(c.simple().await, (0, 9));
    drop(c);
    h.await.unwrap().unwrap();

    let (mut c, h) = connect(&f);
    c.greet().await;
    c.option(opt::ABORT, &[]).await;
    assert_eq!(c.option_reply(opt::ABORT).await.0, rep::ACK);
    h.await.unwrap().unwrap();

    // An unknown name with EXPORT_NAME closes the connection.
    let (mut c, h) = connect(&f);
    c.greet().await;
    c.option(opt::EXPORT_NAME, b"other").await;
    assert!(h.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export() {
    let f = fixture(true);
    let (mut c, _h) = connect(&f);
    let flags = c.negotiate().await;
    assert!(flags & tflags::READ_ONLY != 0);
    assert_eq!(flags & (tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES), 0);
    c.request(cmd::WRITE, 0, 1, 0, 4, b"abcd").await;
    let (_, kind, _, d) = c.chunk().await;
    assert_eq!(kind, chunk::ERROR);
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), err::EPERM);
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
    c.s.write_u32(opt::GO).await.unwrap();
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
    c.request(cmd::WRITE, 0, 1, 0, u32::MAX, &[]).await;
    assert!(h.await.unwrap().is_err());

    // A client that vanishes in the middle of a write payload: nothing is written.
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    let r = Request { flags: 0, kind: cmd::WRITE, cookie: 1, offset: 0, length: 8192 };
    c.s.write_all(&r.encode()).await.unwrap();
    c.s.write_all(&[0xab; 100]).await.unwrap();
    drop(c);
    h.await.unwrap().unwrap();

    // A client that sends many requests and never reads a reply stalls only itself.
    let (mut c, _h) = connect(&f);
    c.negotiate().await;
    let writer = tokio::spawn(async move {
        for i in 0..10_000u64 {
            if c.request_nowait(cmd::READ, i, 0, 64 * 1024).await.is_err() {
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
    good.request(cmd::WRITE, 0, 200, 3, 5000, &data).await;
    assert_eq!(good.simple().await, (0, 200));
    assert_eq!(good.read(201, 3, 5000).await.unwrap(), data);
    writer.abort();
}

impl Client {
    async fn request_nowait(&mut self, kind: u16, cookie: u64, offset: u64, length: u32) -> std::io::Result<()> {
        let r = Request { flags: 0, kind, cookie, offset, length: length as u64 };
        self.s.write_all(&r.encode()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_outstanding_requests_then_closes() {
    let f = fixture(false);
    let (mut c, h) = connect(&f);
    c.negotiate().await;
    let data = vec![3u8; 3 * BS as usize];
    c.request(cmd::WRITE, 0, 1, 0, data.len() as u32, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    f.server.shutdown();
    h.await.unwrap().unwrap();
    // A client arriving during shutdown gets the greeting, then the connection ends.
    let (mut c, h) = connect(&f);
    c.greet().await;
    h.await.unwrap().unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest).await;
    assert!(rest.is_empty() || u32::from_be_bytes(rest[12..16].try_into().unwrap()) == rep::ERR_SHUTDOWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_headers() {
    let f = fixture(false);
    let (mut c, _h) = connect(&f);
    c.greet().await;
    c.option(opt::EXTENDED_HEADERS, &[]).await;
    assert_eq!(c.option_reply(opt::EXTENDED_HEADERS).await.0, rep::ACK);
    c.option(opt::EXTENDED_HEADERS, &[]).await;
    assert_eq!(c.option_reply(opt::EXTENDED_HEADERS).await.0, rep::ERR_INVALID);
    let mut m = Vec::new();
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&(proto::BASE_ALLOCATION.len() as u32).to_be_bytes());
    m.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
    c.option(opt::SET_META_CONTEXT, &m).await;
    assert_eq!(c.option_reply(opt::SET_META_CONTEXT).await.0, rep::META_CONTEXT);
    assert_eq!(c.option_reply(opt::SET_META_CONTEXT).await.0, rep::ACK);
    let flags = c.go().await;
    assert!(flags & tflags::SEND_DF != 0);

    /// Reads one extended chunk: (flags, type, cookie, offset, payload).
    async fn ext_chunk(c: &mut Client) -> (u16, u16, u64, u64, Vec<u8>) {
        assert_eq!(c.s.read_u32().await.unwrap(), proto::EXTENDED_REPLY_MAGIC);
        let flags = c.s.read_u16().await.unwrap();
        let kind = c.s.read_u16().await.unwrap();
        let cookie = c.s.read_u64().await.unwrap();
        let offset = c.s.read_u64().await.unwrap();
        let len = c.s.read_u64().await.unwrap();
        let mut d = vec![0; len as usize];
        c.s.read_exact(&mut d).await.unwrap();
        (flags, kind, cookie, offset, d)
    }
    let send = |flags: u16, kind: u16, cookie: u64, offset: u64, length: u64| {
        Request { flags, kind, cookie, offset, length }.encode_extended()
    };
    // A write with PAYLOAD_LEN: answered with a NONE chunk echoing the offset.
    c.s.write_all(&send(cflags::PAYLOAD_LEN, cmd::WRITE, 1, 5000, 3)).await.unwrap();
    c.s.write_all(b"xyz").await.unwrap();
    assert_eq!(ext_chunk(&mut c).await, (proto::REPLY_FLAG_DONE, chunk::NONE, 1, 5000, vec![]));
    // A write without it (as qemu 10 sends them): the payload still follows.
    c.s.write_all(&send(0, cmd::WRITE, 2, 9000, 3)).await.unwrap();
    c.s.write_all(b"abc").await.unwrap();
    assert_eq!(ext_chunk(&mut c).await.1, chunk::NONE);
    // A read with an unexpected payload: the payload is consumed, EINVAL, the stream goes on.
    c.s.write_all(&send(cflags::PAYLOAD_LEN, cmd::READ, 3, 0, 4)).await.unwrap();
    c.s.write_all(b"junk").await.unwrap();
    let (_, kind, cookie, _, _) = ext_chunk(&mut c).await;
    assert_eq!((kind, cookie), (chunk::ERROR, 3));
    // Read it back: one data chunk.
    c.s.write_all(&send(cflags::DF, cmd::READ, 4, 5000, 3)).await.unwrap();
    let (fl, kind, cookie, off, d) = ext_chunk(&mut c).await;
    assert_eq!((fl, kind, cookie, off), (proto::REPLY_FLAG_DONE, chunk::OFFSET_DATA, 4, 5000));
    assert_eq!(&d[8..], b"xyz");
    // A trim with a 64-bit effect length over the whole export (and past 4 GiB is refused).
    c.s.write_all(&send(0, cmd::TRIM, 5, 0, BS as u64 * BLOCKS)).await.unwrap();
    assert_eq!(ext_chunk(&mut c).await.1, chunk::NONE);
    c.s.write_all(&send(0, cmd::TRIM, 6, 0, 1 << 33)).await.unwrap();
    assert_eq!(ext_chunk(&mut c).await.1, chunk::ERROR);
    // Block status: BLOCK_STATUS_EXT with 64-bit descriptors; all of it is known zero now.
    c.s.write_all(&send(0, cmd::BLOCK_STATUS, 7, 0, BS as u64 * BLOCKS)).await.unwrap();
    let (_, kind, _, _, d) = ext_chunk(&mut c).await;
    assert_eq!(kind, chunk::BLOCK_STATUS_EXT);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), BS as u64 * BLOCKS);
    assert_eq!(u64::from_be_bytes(d[16..24].try_into().unwrap()), 3);
    // Flush: a NONE chunk, never a simple reply.
    c.s.write_all(&send(0, cmd::FLUSH, 8, 0, 0)).await.unwrap();
    assert_eq!(ext_chunk(&mut c).await.1, chunk::NONE);
}
