//! The NBD wire format: constants, the request decoder and checker, option payload parsers and
//! reply encoders. Everything here is a pure function over bytes, so it can be tested (and
//! property-tested) without a socket.
//!
//! Numbers follow the protocol specification (NetworkBlockDevice/nbd, `doc/proto.md`); all
//! integers on the wire are big-endian.

use bytes::{BufMut, Bytes, BytesMut};

/// `NBDMAGIC`, the first word the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended request (extended headers).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of an extended reply chunk (extended headers).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the 124 zero bytes after `OPT_EXPORT_NAME` may be left out.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `CMD_FLUSH` is understood.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `CMD_FLAG_FUA` is understood.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `CMD_TRIM` is understood.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `CMD_WRITE_ZEROES` (and `NO_HOLE`) is understood.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `CMD_FLAG_DF` is understood on reads.
    pub const SEND_DF: u16 = 1 << 7;
    /// Flush and FUA cover every connection.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `CMD_CACHE` is understood.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `CMD_FLAG_FAST_ZERO` is understood.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option numbers.
pub mod opt {
    /// Choose the export and end negotiation (old clients).
    pub const EXPORT_NAME: u32 = 1;
    /// End negotiation without transmission.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Start TLS.
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and start transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Use extended (32-byte) headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// Success, or the end of a list.
    pub const ACK: u32 = 1;
    /// One export of a list.
    pub const SERVER: u32 = 2;
    /// One piece of information about an export.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Refused by policy.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// Malformed option.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// TLS is required first.
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// Request or reply too large.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// Information types of `OPT_INFO`/`OPT_GO`.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard.
    pub const TRIM: u16 = 4;
    /// Prefetch hint.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status query.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflags {
    /// Forced unit access.
    pub const FUA: u16 = 1 << 0;
    /// Write zeroes without punching a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Don't fragment a read reply.
    pub const DF: u16 = 1 << 2;
    /// One extent per block-status reply.
    pub const REQ_ONE: u16 = 1 << 3;
    /// Write zeroes only if fast.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the length is a payload length and the payload follows.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types.
pub mod chunk {
    /// Nothing (final chunk).
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// Zeros at an offset.
    pub const OFFSET_HOLE: u16 = 2;
    /// Block-status descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// Block-status descriptors with 64-bit lengths (extended headers).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// An error.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// Structured reply flag: last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1;

/// Error values of the transmission phase.
pub mod err {
    /// Operation not permitted (read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request.
    pub const EINVAL: u32 = 22;
    /// Beyond the end of the export.
    pub const ENOSPC: u32 = 28;
    /// Too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported (a fast zero that would not be fast).
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// `base:allocation` flag: not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// The only metadata context we offer.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id we give it when selected.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Size of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an extended request header.
pub const EXT_REQUEST_LEN: usize = 32;

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length: the payload length of a write (or any request with `PAYLOAD_LEN`), else the
    /// effect length. 32 bits on the wire unless extended headers are in use.
    pub length: u64,
}

/// A request header that cannot be decoded: the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadMagic(pub u32);

impl Request {
    /// Decodes a request header.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
        Self::decode_fields(b, REQUEST_MAGIC, u32::from_be_bytes(be(b, 24)).into())
    }

    /// Decodes an extended request header.
    pub fn decode_extended(b: &[u8; EXT_REQUEST_LEN]) -> Result<Request, BadMagic> {
        Self::decode_fields(b, EXTENDED_REQUEST_MAGIC, u64::from_be_bytes(be(b, 24)))
    }

    /// The fields both header forms share (they differ in magic and in the length's width).
    fn decode_fields(b: &[u8], want: u32, length: u64) -> Result<Request, BadMagic> {
        let magic = u32::from_be_bytes(be(b, 0));
        if magic != want {
            return Err(BadMagic(magic));
        }
        Ok(Request {
            flags: u16::from_be_bytes(be(b, 4)),
            kind: u16::from_be_bytes(be(b, 6)),
            cookie: u64::from_be_bytes(be(b, 8)),
            offset: u64::from_be_bytes(be(b, 16)),
            length,
        })
    }

    /// Encodes an extended request header (the client side; used by tests).
    pub fn encode_extended(&self) -> [u8; EXT_REQUEST_LEN] {
        let mut b = [0u8; EXT_REQUEST_LEN];
        b[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Encodes a request header (the client side; used by tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&(self.length as u32).to_be_bytes());
        b
    }
}

/// What the connection negotiated, as far as checking requests is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Export size in bytes.
    pub size: u64,
    /// Largest read or write payload accepted.
    pub max_payload: u32,
    /// The export is read-only.
    pub read_only: bool,
    /// Structured replies (or extended headers) were negotiated.
    pub structured: bool,
    /// Extended headers were negotiated.
    pub extended: bool,
    /// `base:allocation` was selected.
    pub block_status: bool,
}

/// A checked request: what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `offset` (`df`: one data chunk).
    Read {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Don't fragment.
        df: bool,
    },
    /// Write the payload at `offset`.
    Write {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Forced unit access.
        fua: bool,
    },
    /// Flush everything.
    Flush,
    /// Discard a range (reads back as zeros here).
    Trim {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Forced unit access.
        fua: bool,
    },
    /// Prefetch hint.
    Cache {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Forced unit access.
        fua: bool,
        /// Fail with `ENOTSUP` unless fast.
        fast: bool,
    },
    /// Block status of a range.
    BlockStatus {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// One extent only.
        req_one: bool,
    },
    /// End the connection after the outstanding requests.
    Disconnect,
}

/// Why a request is refused: the error value to reply with. A write's payload must still be
/// read (or the connection closed) by the caller.
pub type Refusal = u32;

/// True when the request carries a payload of `length` bytes after its header: a write, or
/// with extended headers any request flagged `PAYLOAD_LEN`. (The extension says a write must
/// carry the flag, but qemu 10's client leaves it off, so a write always has its payload.)
pub fn has_payload(r: &Request, extended: bool) -> bool {
    r.kind == cmd::WRITE || (extended && r.flags & cflags::PAYLOAD_LEN != 0)
}

/// Checks a request against what was negotiated. Never panics, whatever the fields.
pub fn check(r: &Request, l: &Limits) -> Result<Command, Refusal> {
    let allowed = |mask: u16| r.flags & !mask == 0;
    let end = r.offset as u128 + r.length as u128;
    let in_range = end <= l.size as u128;
    let (offset, len) = (r.offset, r.length);
    let fua = r.flags & cflags::FUA != 0;
    if l.extended && r.kind != cmd::WRITE && r.flags & cflags::PAYLOAD_LEN != 0 {
        // No other command takes a payload here (it has been read and is discarded).
        return Err(err::EINVAL);
    }
    match r.kind {
        cmd::READ => {
            let mask = cflags::FUA | if l.structured { cflags::DF } else { 0 };
            if !allowed(mask) || !in_range {
                return Err(err::EINVAL);
            }
            if len > l.max_payload as u64 {
                return Err(if l.structured { err::EOVERFLOW } else { err::EINVAL });
            }
            Ok(Command::Read { offset, len, df: r.flags & cflags::DF != 0 })
        }
        cmd::WRITE => {
            let payload = if l.extended { cflags::PAYLOAD_LEN } else { 0 };
            if !allowed(cflags::FUA | payload) {
                return Err(err::EINVAL);
            }
            if len > l.max_payload as u64 {
                return Err(err::EINVAL);
            }
            if l.read_only {
                return Err(err::EPERM);
            }
            if !in_range {
                return Err(err::ENOSPC);
            }
            Ok(Command::Write { offset, len, fua })
        }
        cmd::DISC => Ok(Command::Disconnect),
        cmd::FLUSH => {
            if !allowed(cflags::FUA) || offset != 0 || len != 0 {
                return Err(err::EINVAL);
            }
            Ok(Command::Flush)
        }
        cmd::TRIM => {
            if !allowed(cflags::FUA) {
                return Err(err::EINVAL);
            }
            if l.read_only {
                return Err(err::EPERM);
            }
            if !in_range {
                return Err(err::EINVAL);
            }
            Ok(Command::Trim { offset, len, fua })
        }
        cmd::CACHE => {
            if !allowed(cflags::FUA) || !in_range {
                return Err(err::EINVAL);
            }
            Ok(Command::Cache { offset, len })
        }
        cmd::WRITE_ZEROES => {
            if !allowed(cflags::FUA | cflags::NO_HOLE | cflags::FAST_ZERO) {
                return Err(err::EINVAL);
            }
            if l.read_only {
                return Err(err::EPERM);
            }
            if !in_range {
                return Err(err::ENOSPC);
            }
            Ok(Command::WriteZeroes { offset, len, fua, fast: r.flags & cflags::FAST_ZERO != 0 })
        }
        cmd::BLOCK_STATUS => {
            if !allowed(cflags::FUA | cflags::REQ_ONE) || !l.structured || !l.block_status || !in_range || len == 0 {
                return Err(err::EINVAL);
            }
            Ok(Command::BlockStatus { offset, len, req_one: r.flags & cflags::REQ_ONE != 0 })
        }
        _ => Err(err::EINVAL),
    }
}

/// An option reply: header plus data.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(option);
    b.put_u32(kind);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

/// Builds the reply messages of one request, in the format the connection negotiated: simple
/// replies, structured reply chunks, or extended reply chunks (which also carry the request's
/// offset and a 64-bit length).
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    /// Structured replies (or extended headers) are on.
    pub structured: bool,
    /// Extended headers are on.
    pub extended: bool,
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset (echoed in extended replies).
    pub offset: u64,
}

impl Framer {
    /// A chunk header for a payload of `len` bytes (which follows separately).
    fn header(&self, flags: u16, kind: u16, len: u64, extra: usize) -> BytesMut {
        let mut b = BytesMut::with_capacity(32 + extra);
        if self.extended {
            b.put_u32(EXTENDED_REPLY_MAGIC);
            b.put_u16(flags);
            b.put_u16(kind);
            b.put_u64(self.cookie);
            b.put_u64(self.offset);
            b.put_u64(len);
        } else {
            b.put_u32(STRUCTURED_REPLY_MAGIC);
            b.put_u16(flags);
            b.put_u16(kind);
            b.put_u64(self.cookie);
            b.put_u32(len as u32);
        }
        b
    }

    /// Success without data: a simple reply, or a final `NONE` chunk with extended headers.
    pub fn ok(&self) -> Bytes {
        if self.extended { self.none() } else { self.simple(0) }
    }

    /// A simple reply header (read data, if any, follows separately).
    pub fn simple(&self, error: u32) -> Bytes {
        let mut b = BytesMut::with_capacity(16);
        b.put_u32(SIMPLE_REPLY_MAGIC);
        b.put_u32(error);
        b.put_u64(self.cookie);
        b.freeze()
    }

    /// A failure: a final `ERROR` chunk with a message (cut to 4096 bytes), or a simple reply
    /// with the error when structured replies are off.
    pub fn error(&self, error: u32, msg: &str) -> Bytes {
        if !self.structured {
            return self.simple(error);
        }
        let mut m = msg.as_bytes();
        if m.len() > 4096 {
            let mut cut = 4096;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            m = &m[..cut];
        }
        let mut b = self.header(REPLY_FLAG_DONE, chunk::ERROR, 6 + m.len() as u64, 6 + m.len());
        b.put_u32(error);
        b.put_u16(m.len() as u16);
        b.put_slice(m);
        b.freeze()
    }

    /// An `OFFSET_DATA` chunk header (header and offset; `len` data bytes follow).
    pub fn data_header(&self, done: bool, offset: u64, len: u32) -> Bytes {
        let mut b = self.header(if done { REPLY_FLAG_DONE } else { 0 }, chunk::OFFSET_DATA, len as u64 + 8, 8);
        b.put_u64(offset);
        b.freeze()
    }

    /// An `OFFSET_HOLE` chunk.
    pub fn hole(&self, done: bool, offset: u64, len: u32) -> Bytes {
        let mut b = self.header(if done { REPLY_FLAG_DONE } else { 0 }, chunk::OFFSET_HOLE, 12, 12);
        b.put_u64(offset);
        b.put_u32(len);
        b.freeze()
    }

    /// The final empty chunk.
    pub fn none(&self) -> Bytes {
        self.header(REPLY_FLAG_DONE, chunk::NONE, 0, 0).freeze()
    }

    /// A final block-status chunk for context `id` with `(length, flags)` descriptors:
    /// `BLOCK_STATUS` (lengths must fit 32 bits), or `BLOCK_STATUS_EXT` with extended headers.
    pub fn block_status(&self, id: u32, extents: &[(u64, u32)]) -> Bytes {
        if self.extended {
            let len = 8 + 16 * extents.len();
            let mut b = self.header(REPLY_FLAG_DONE, chunk::BLOCK_STATUS_EXT, len as u64, len);
            b.put_u32(id);
            b.put_u32(extents.len() as u32);
            for &(l, f) in extents {
                b.put_u64(l);
                b.put_u64(f as u64);
            }
            b.freeze()
        } else {
            let len = 4 + 8 * extents.len();
            let mut b = self.header(REPLY_FLAG_DONE, chunk::BLOCK_STATUS, len as u64, len);
            b.put_u32(id);
            for &(l, f) in extents {
                b.put_u32(l as u32);
                b.put_u32(f);
            }
            b.freeze()
        }
    }
}

/// A malformed option payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed option data")]
pub struct Malformed;

/// A big-endian reader over an option's data that never reads past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(be(self.take(2)?, 0)))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(be(self.take(4)?, 0)))
    }
    fn string(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| Malformed)
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() { Ok(()) } else { Err(Malformed) }
    }
}

/// The data of `OPT_INFO`/`OPT_GO`: export name and requested information types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name.
    pub name: String,
    /// Requested information types.
    pub requests: Vec<u16>,
}

/// Parses `OPT_INFO`/`OPT_GO` data.
pub fn parse_info(data: &[u8]) -> Result<InfoRequest, Malformed> {
    let mut c = Cursor(data);
    let name = c.string()?;
    let n = c.u16()? as usize;
    let requests = (0..n).map(|_| c.u16()).collect::<Result<Vec<_>, _>>()?;
    c.end()?;
    Ok(InfoRequest { name, requests })
}

/// The data of `OPT_LIST_META_CONTEXT`/`OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export name.
    pub name: String,
    /// Queries.
    pub queries: Vec<String>,
}

/// Parses meta-context option data.
pub fn parse_meta(data: &[u8]) -> Result<MetaRequest, Malformed> {
    let mut c = Cursor(data);
    let name = c.string()?;
    let n = c.u32()? as usize;
    // Each query takes at least 4 bytes: refuse counts the data cannot hold before allocating.
    if n > data.len() / 4 {
        return Err(Malformed);
    }
    let queries = (0..n).map(|_| c.string()).collect::<Result<Vec<_>, _>>()?;
    c.end()?;
    Ok(MetaRequest { name, queries })
}

/// Whether a query selects `base:allocation`: when listing (`list`), `base:` is a wildcard too.
pub fn query_matches(query: &str, list: bool) -> bool {
    query == BASE_ALLOCATION || (list && query == "base:")
}

/// `NBD_INFO_EXPORT` payload.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&info::EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_NAME` / `NBD_INFO_DESCRIPTION` payload.
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` payload.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_REP_META_CONTEXT` payload.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_REP_SERVER` payload: name, then a description.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len() + description.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(description.as_bytes());
    b
}

/// `N` bytes of `b` from `at`, as an array; callers pass fixed-size headers or exact takes, so
/// the range is always in bounds.
fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            size: 1 << 20,
            max_payload: 1 << 16,
            read_only: false,
            structured: true,
            extended: false,
            block_status: true,
        }
    }

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request { flags: 1, kind: cmd::WRITE, cookie: 0xdead_beef, offset: 4096, length: 512 };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let big = Request { length: 1 << 40, ..r };
        assert_eq!(Request::decode_extended(&big.encode_extended()), Ok(big));
        assert!(Request::decode_extended(&[0; EXT_REQUEST_LEN]).is_err());
        let mut b = r.encode();
        b[0] = 0;
        assert_eq!(Request::decode(&b), Err(BadMagic(0x0060_9513)));
    }

    #[test]
    fn checks() {
        let l = limits();
        let req = |kind, flags, offset, length| Request { flags, kind, cookie: 1, offset, length };
        assert_eq!(check(&req(cmd::READ, 0, 0, 512), &l), Ok(Command::Read { offset: 0, len: 512, df: false }));
        assert_eq!(check(&req(cmd::READ, 0, (1 << 20) - 1, 2), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::READ, 0, u64::MAX, 2), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::READ, cflags::NO_HOLE, 0, 2), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::READ, 0, 0, 1 << 17), &l), Err(err::EOVERFLOW));
        assert_eq!(check(&req(cmd::WRITE, 0, 1 << 20, 1), &l), Err(err::ENOSPC));
        assert_eq!(check(&req(cmd::WRITE, 0, 0, 1), &Limits { read_only: true, ..l }), Err(err::EPERM));
        assert_eq!(check(&req(cmd::TRIM, 0, 0, 1), &Limits { read_only: true, ..l }), Err(err::EPERM));
        assert_eq!(check(&req(cmd::FLUSH, 0, 1, 0), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::FLUSH, cflags::FUA, 0, 0), &l), Ok(Command::Flush));
        assert_eq!(check(&req(cmd::BLOCK_STATUS, 0, 0, 1), &Limits { block_status: false, ..l }), Err(err::EINVAL));
        assert_eq!(
            check(&req(cmd::WRITE_ZEROES, cflags::FAST_ZERO | cflags::NO_HOLE, 0, 4096), &l),
            Ok(Command::WriteZeroes { offset: 0, len: 4096, fua: false, fast: true })
        );
        assert_eq!(check(&req(99, 0, 0, 0), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::CACHE, cflags::DF, 0, 1), &l), Err(err::EINVAL));
        // Extended headers: writes may say PAYLOAD_LEN, other commands must not.
        let x = Limits { extended: true, ..l };
        assert_eq!(check(&req(cmd::WRITE, 0, 0, 4), &x), Ok(Command::Write { offset: 0, len: 4, fua: false }));
        assert_eq!(
            check(&req(cmd::WRITE, cflags::PAYLOAD_LEN, 0, 4), &x),
            Ok(Command::Write { offset: 0, len: 4, fua: false })
        );
        assert_eq!(check(&req(cmd::WRITE, cflags::PAYLOAD_LEN, 0, 4), &l), Err(err::EINVAL));
        assert_eq!(check(&req(cmd::READ, cflags::PAYLOAD_LEN, 0, 4), &x), Err(err::EINVAL));
        assert_eq!(
            check(&req(cmd::TRIM, 0, 0, 1 << 20), &x),
            Ok(Command::Trim { offset: 0, len: 1 << 20, fua: false })
        );
        assert!(has_payload(&req(cmd::BLOCK_STATUS, cflags::PAYLOAD_LEN, 0, 4), true));
        assert!(has_payload(&req(cmd::WRITE, 0, 0, 4), true));
        assert!(!has_payload(&req(cmd::TRIM, 0, 0, 4), true));
        assert!(has_payload(&req(cmd::WRITE, 0, 0, 4), false));
    }

    #[test]
    fn option_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        assert_eq!(parse_info(&d), Ok(InfoRequest { name: "abc".into(), requests: vec![1, 3] }));
        assert_eq!(parse_info(&d[..d.len() - 1]), Err(Malformed));
        let mut long = d.clone();
        long.push(0);
        assert_eq!(parse_info(&long), Err(Malformed));

        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta(&m), Ok(MetaRequest { name: String::new(), queries: vec![BASE_ALLOCATION.into()] }));
        // A count the data cannot hold.
        let mut huge = Vec::new();
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta(&huge), Err(Malformed));
    }

    #[test]
    fn error_chunk_cuts_long_messages_on_a_char_boundary() {
        let msg = "é".repeat(3000);
        let c = Framer { structured: true, extended: false, cookie: 7, offset: 0 }.error(err::EIO, &msg);
        let mlen = u16::from_be_bytes([c[24], c[25]]) as usize;
        assert!(mlen <= 4096);
        assert!(std::str::from_utf8(&c[26..26 + mlen]).is_ok());
        assert_eq!(u32::from_be_bytes(c[16..20].try_into().unwrap()) as usize, 6 + mlen);
    }

    proptest! {
        /// Any 28 bytes either fail on the magic or decode to a header that re-encodes to the
        /// same bytes; checking any decoded header never panics, and an accepted data command
        /// always lies inside the export and within the payload limit.
        #[test]
        fn decoder_and_checker_never_panic(bytes in prop::array::uniform32(any::<u8>()),
                                           force_magic in any::<bool>(),
                                           size in 0u64..(1 << 40),
                                           ro in any::<bool>(), st in any::<bool>(), bs in any::<bool>(), ext in any::<bool>()) {
            let mut b = bytes;
            if force_magic {
                let m = if ext { EXTENDED_REQUEST_MAGIC } else { REQUEST_MAGIC };
                b[0..4].copy_from_slice(&m.to_be_bytes());
            }
            let decoded = if ext {
                Request::decode_extended(&b).map(|r| (r, r.encode_extended().to_vec()))
            } else {
                Request::decode(b[..REQUEST_LEN].try_into().unwrap()).map(|r| (r, r.encode().to_vec()))
            };
            match decoded {
                Err(BadMagic(m)) => prop_assert_ne!(m, if ext { EXTENDED_REQUEST_MAGIC } else { REQUEST_MAGIC }),
                Ok((r, re)) => {
                    prop_assert_eq!(&re[..], &b[..re.len()]);
                    let l = Limits { size, max_payload: 1 << 25, read_only: ro, structured: st || ext, extended: ext, block_status: bs };
                    if let Ok(c) = check(&r, &l) {
                        let range = match c {
                            Command::Read { offset, len, .. } => { prop_assert!(len <= l.max_payload as u64); Some((offset, len)) }
                            Command::Write { offset, len, .. } | Command::Trim { offset, len, .. } | Command::WriteZeroes { offset, len, .. } => {
                                prop_assert!(!ro);
                                if matches!(c, Command::Write { .. }) {
                                    prop_assert!(len <= l.max_payload as u64);
                                    prop_assert!(has_payload(&r, ext));
                                }
                                Some((offset, len))
                            }
                            Command::Cache { offset, len } | Command::BlockStatus { offset, len, .. } => Some((offset, len)),
                            Command::Flush | Command::Disconnect => None,
                        };
                        if let Some((o, n)) = range {
                            prop_assert!(o as u128 + n as u128 <= size as u128);
                        }
                    }
                }
            }
        }

        /// Option payload parsers accept or refuse arbitrary bytes without panicking.
        #[test]
        fn option_parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_info(&data);
            let _ = parse_meta(&data);
        }

        /// Well-formed info requests parse back to what was encoded.
        #[test]
        fn info_round_trip(name in "[a-z/]{0,20}", reqs in prop::collection::vec(any::<u16>(), 0..8)) {
            let mut d = Vec::new();
            d.extend_from_slice(&(name.len() as u32).to_be_bytes());
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
            for r in &reqs { d.extend_from_slice(&r.to_be_bytes()); }
            prop_assert_eq!(parse_info(&d), Ok(InfoRequest { name, requests: reqs }));
        }
    }
}
