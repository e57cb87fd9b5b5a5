//! The NBD wire format: magic numbers, the protocol's enumerations as typed enums, the request
//! decoder and checker, option payload parsers and reply encoders. Everything here is a pure
//! function over bytes, so it can be tested (and property-tested) without a socket.
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

/// Defines a protocol enumeration: a `#[repr]` enum whose discriminants are its values on the
/// wire. `values` enums get `wire` (the value to send) and `from_wire` (`None` for a value this
/// server does not know: the caller answers it as the specification says); `flags` enums name
/// the bits of a flag field by number and get `bit` and `mask`.
macro_rules! wire_enum {
    (@define $(#[$doc:meta])* $name:ident: $repr:ident { $($body:tt)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name { $($body)* }
    };
    ($(#[$doc:meta])* values $name:ident: $repr:ident { $($(#[$vdoc:meta])* $variant:ident $(= $value:expr)?,)+ }) => {
        wire_enum!(@define $(#[$doc])* $name: $repr { $($(#[$vdoc])* $variant $(= $value)?,)+ });

        impl $name {
            /// The value on the wire.
            pub const fn wire(self) -> $repr {
                self as $repr
            }

            /// The variant a wire value stands for, if it is one.
            pub fn from_wire(value: $repr) -> Option<Self> {
                [$(Self::$variant),+].into_iter().find(|v| v.wire() == value)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                v.wire()
            }
        }
    };
    ($(#[$doc:meta])* flags $name:ident: $field:ident { $($(#[$vdoc:meta])* $variant:ident $(= $value:expr)?,)+ }) => {
        wire_enum!(@define $(#[$doc])* $name: u8 { $($(#[$vdoc])* $variant $(= $value)?,)+ });

        impl $name {
            /// The flag's bit in the field.
            pub const fn bit(self) -> $field {
                1 << self as u8
            }

            /// The bits of `flags` together.
            pub fn mask(flags: &[Self]) -> $field {
                flags.iter().fold(0, |m, f| m | f.bit())
            }
        }
    };
}

wire_enum! {
    /// Transmission flags, by bit number.
    flags TransmissionFlag: u16 {
        /// Always set.
        HasFlags = 0,
        /// The export is read-only.
        ReadOnly,
        /// `CMD_FLUSH` is understood.
        SendFlush,
        /// `CMD_FLAG_FUA` is understood.
        SendFua,
        /// `CMD_TRIM` is understood (bit 4, rotational, is never set here).
        SendTrim = 5,
        /// `CMD_WRITE_ZEROES` (and `NO_HOLE`) is understood.
        SendWriteZeroes,
        /// `CMD_FLAG_DF` is understood on reads.
        SendDf,
        /// Flush and FUA cover every connection.
        CanMultiConn,
        /// `CMD_CACHE` is understood (bit 9, resize, is never set here).
        SendCache = 10,
        /// `CMD_FLAG_FAST_ZERO` is understood.
        SendFastZero,
    }
}

wire_enum! {
    /// Option types.
    values OptionType: u32 {
        /// Choose the export and end negotiation (old clients).
        ExportName = 1,
        /// End negotiation without transmission.
        Abort,
        /// List exports.
        List,
        /// Start TLS (4, `PEEK_EXPORT`, was withdrawn).
        StartTls = 5,
        /// Describe an export.
        Info,
        /// Describe an export and start transmission.
        Go,
        /// Use structured replies.
        StructuredReply,
        /// List metadata contexts.
        ListMetaContext,
        /// Select metadata contexts.
        SetMetaContext,
        /// Use extended (32-byte) headers.
        ExtendedHeaders,
    }
}

/// The bit that marks an option reply type as an error.
const REP_ERROR: u32 = 1 << 31;

wire_enum! {
    /// Option reply types.
    values ReplyType: u32 {
        /// Success, or the end of a list.
        Ack = 1,
        /// One export of a list.
        Server,
        /// One piece of information about an export.
        Info,
        /// One metadata context.
        MetaContext,
        /// Unknown option.
        ErrUnsup = REP_ERROR + 1,
        /// Refused by policy.
        ErrPolicy,
        /// Malformed option.
        ErrInvalid,
        /// TLS is required first (4, `ERR_PLATFORM`, is never sent here).
        ErrTlsReqd = REP_ERROR + 5,
        /// No such export.
        ErrUnknown,
        /// The server is shutting down.
        ErrShutdown,
        /// Request or reply too large (8, `ERR_BLOCK_SIZE_REQD`, is never sent here).
        ErrTooBig = REP_ERROR + 9,
    }
}

wire_enum! {
    /// Information types of `OPT_INFO`/`OPT_GO`.
    values InfoType: u16 {
        /// Size and transmission flags.
        Export = 0,
        /// Canonical name.
        Name,
        /// Human-readable description.
        Description,
        /// Minimum, preferred and maximum block sizes.
        BlockSize,
    }
}

wire_enum! {
    /// Command types of a request.
    values CommandType: u16 {
        /// Read.
        Read = 0,
        /// Write.
        Write,
        /// Disconnect.
        Disc,
        /// Flush.
        Flush,
        /// Discard.
        Trim,
        /// Prefetch hint.
        Cache,
        /// Write zeroes.
        WriteZeroes,
        /// Block status query.
        BlockStatus,
    }
}

wire_enum! {
    /// Command flags of a request, by bit number.
    flags CommandFlag: u16 {
        /// Forced unit access.
        Fua = 0,
        /// Write zeroes without punching a hole.
        NoHole,
        /// Don't fragment a read reply.
        Df,
        /// One extent per block-status reply.
        ReqOne,
        /// Write zeroes only if fast.
        FastZero,
        /// Extended headers: the length is a payload length and the payload follows.
        PayloadLen,
    }
}

wire_enum! {
    /// Structured reply chunk types.
    values ChunkType: u16 {
        /// Nothing (final chunk).
        None = 0,
        /// Data at an offset.
        OffsetData,
        /// Zeros at an offset.
        OffsetHole,
        /// Block-status descriptors.
        BlockStatus = 5,
        /// Block-status descriptors with 64-bit lengths (extended headers).
        BlockStatusExt,
        /// An error.
        Error = (1 << 15) + 1,
    }
}

/// Structured reply flag: last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1;

wire_enum! {
    /// Error values of the transmission phase.
    values Errno: u32 {
        /// Operation not permitted (read-only export).
        Perm = 1,
        /// I/O error.
        Io = 5,
        /// Out of memory.
        NoMem = 12,
        /// Invalid request.
        Inval = 22,
        /// Beyond the end of the export.
        NoSpc = 28,
        /// Too large.
        Overflow = 75,
        /// Not supported (a fast zero that would not be fast).
        NotSup = 95,
        /// The server is shutting down.
        Shutdown = 108,
    }
}

/// `base:allocation` flag: not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// The only metadata context we offer.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id we give it when selected.
pub const BASE_ALLOCATION_ID: u32 = 1;
/// The prefix of qemu's changed-block bitmap contexts, `qemu:dirty-bitmap:NAME`.
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
/// The context id of the first offered bitmap; the others follow in order.
pub const FIRST_BITMAP_ID: u32 = 2;
/// A bitmap context's flag: the extent was written since the bitmap began (qemu's convention).
pub const STATE_DIRTY: u32 = 1;

/// Size of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an extended request header.
pub const EXT_REQUEST_LEN: usize = 32;

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type, as sent: see [`Request::command_type`].
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
        self.encode_fields(EXTENDED_REQUEST_MAGIC, &self.length.to_be_bytes())
    }

    /// Encodes a request header (the client side; used by tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        self.encode_fields(REQUEST_MAGIC, &wire_len(self.length).to_be_bytes())
    }

    /// The fields both header forms share, then `length` (4 or 8 bytes) to fill `N` bytes.
    fn encode_fields<const N: usize>(&self, magic: u32, length: &[u8]) -> [u8; N] {
        let head = [
            &magic.to_be_bytes()[..],
            &self.flags.to_be_bytes(),
            &self.kind.to_be_bytes(),
            &self.cookie.to_be_bytes(),
            &self.offset.to_be_bytes(),
            length,
        ];
        be(&head.concat(), 0)
    }

    /// The command type, or `None` for one this server does not know.
    pub fn command_type(&self) -> Option<CommandType> {
        CommandType::from_wire(self.kind)
    }

    /// Whether the request carries command flag `f`.
    pub fn has(&self, f: CommandFlag) -> bool {
        self.flags & f.bit() != 0
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
    /// A metadata context (`base:allocation`, a bitmap) was selected.
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
pub type Refusal = Errno;

/// True when the request carries a payload of `length` bytes after its header: a write, or
/// with extended headers any request flagged `PAYLOAD_LEN`. (The extension says a write must
/// carry the flag, but qemu 10's client leaves it off, so a write always has its payload.)
pub fn has_payload(r: &Request, extended: bool) -> bool {
    r.command_type() == Some(CommandType::Write) || (extended && r.has(CommandFlag::PayloadLen))
}

/// Checks a request against what was negotiated. Never panics, whatever the fields.
pub fn check(r: &Request, l: &Limits) -> Result<Command, Refusal> {
    use CommandFlag::{Df, FastZero, Fua, NoHole, PayloadLen, ReqOne};
    let allowed = |ok: &[CommandFlag]| r.flags & !CommandFlag::mask(ok) == 0;
    let end = r.offset as u128 + r.length as u128;
    let in_range = end <= l.size as u128;
    let (offset, len) = (r.offset, r.length);
    let fua = r.has(Fua);
    // A change to the export: its flags, then read-only, then the range (`beyond_end` when it
    // runs past the end).
    let change = |ok: &[CommandFlag], beyond_end: Errno| {
        if !allowed(ok) {
            Err(Errno::Inval)
        } else if l.read_only {
            Err(Errno::Perm)
        } else if !in_range {
            Err(beyond_end)
        } else {
            Ok(())
        }
    };
    let Some(kind) = r.command_type() else {
        return Err(Errno::Inval);
    };
    if l.extended && kind != CommandType::Write && r.has(PayloadLen) {
        // No other command takes a payload here (it has been read and is discarded).
        return Err(Errno::Inval);
    }
    match kind {
        CommandType::Read => {
            if !allowed(if l.structured { &[Fua, Df] } else { &[Fua] }) || !in_range {
                return Err(Errno::Inval);
            }
            if len > l.max_payload as u64 {
                return Err(if l.structured { Errno::Overflow } else { Errno::Inval });
            }
            Ok(Command::Read { offset, len, df: r.has(Df) })
        }
        CommandType::Write => {
            if len > l.max_payload as u64 {
                return Err(Errno::Inval);
            }
            change(if l.extended { &[Fua, PayloadLen] } else { &[Fua] }, Errno::NoSpc)?;
            Ok(Command::Write { offset, len, fua })
        }
        CommandType::Disc => Ok(Command::Disconnect),
        CommandType::Flush => {
            if !allowed(&[Fua]) || offset != 0 || len != 0 {
                return Err(Errno::Inval);
            }
            Ok(Command::Flush)
        }
        CommandType::Trim => {
            change(&[Fua], Errno::Inval)?;
            Ok(Command::Trim { offset, len, fua })
        }
        CommandType::Cache => {
            if !allowed(&[Fua]) || !in_range {
                return Err(Errno::Inval);
            }
            Ok(Command::Cache { offset, len })
        }
        CommandType::WriteZeroes => {
            change(&[Fua, NoHole, FastZero], Errno::NoSpc)?;
            Ok(Command::WriteZeroes { offset, len, fua, fast: r.has(FastZero) })
        }
        CommandType::BlockStatus => {
            if !allowed(&[Fua, ReqOne]) || !l.structured || !l.block_status || !in_range || len == 0 {
                return Err(Errno::Inval);
            }
            Ok(Command::BlockStatus { offset, len, req_one: r.has(ReqOne) })
        }
    }
}

/// An option reply: header plus data.
pub fn option_reply(option: u32, kind: ReplyType, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(option);
    b.put_u32(kind.wire());
    b.put_u32(wire_len(data.len()));
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
    fn header(&self, flags: u16, kind: ChunkType, len: u64, extra: usize) -> BytesMut {
        let mut b = BytesMut::with_capacity(32 + extra);
        if self.extended {
            b.put_u32(EXTENDED_REPLY_MAGIC);
            b.put_u16(flags);
            b.put_u16(kind.wire());
            b.put_u64(self.cookie);
            b.put_u64(self.offset);
            b.put_u64(len);
        } else {
            b.put_u32(STRUCTURED_REPLY_MAGIC);
            b.put_u16(flags);
            b.put_u16(kind.wire());
            b.put_u64(self.cookie);
            b.put_u32(wire_len(len));
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
    pub fn error(&self, error: Errno, msg: &str) -> Bytes {
        if !self.structured {
            return self.simple(error.wire());
        }
        let mut m = msg.as_bytes();
        if m.len() > 4096 {
            let mut cut = 4096;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            m = &m[..cut];
        }
        let mut b = self.header(REPLY_FLAG_DONE, ChunkType::Error, 6 + m.len() as u64, 6 + m.len());
        b.put_u32(error.wire());
        b.put_u16(u16::try_from(m.len()).expect("cut to 4096 bytes above"));
        b.put_slice(m);
        b.freeze()
    }

    /// An `OFFSET_DATA` chunk header (header and offset; `len` data bytes follow).
    pub fn data_header(&self, done: bool, offset: u64, len: u32) -> Bytes {
        let mut b = self.header(if done { REPLY_FLAG_DONE } else { 0 }, ChunkType::OffsetData, len as u64 + 8, 8);
        b.put_u64(offset);
        b.freeze()
    }

    /// An `OFFSET_HOLE` chunk.
    pub fn hole(&self, done: bool, offset: u64, len: u32) -> Bytes {
        let mut b = self.header(if done { REPLY_FLAG_DONE } else { 0 }, ChunkType::OffsetHole, 12, 12);
        b.put_u64(offset);
        b.put_u32(len);
        b.freeze()
    }

    /// The final empty chunk.
    pub fn none(&self) -> Bytes {
        self.header(REPLY_FLAG_DONE, ChunkType::None, 0, 0).freeze()
    }

    /// A block-status chunk for context `id` with `(length, flags)` descriptors (the final
    /// chunk of the reply if `done`): `BLOCK_STATUS` (lengths must fit 32 bits), or
    /// `BLOCK_STATUS_EXT` with extended headers.
    pub fn block_status(&self, id: u32, extents: &[(u64, u32)], done: bool) -> Bytes {
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        if self.extended {
            let len = 8 + 16 * extents.len();
            let mut b = self.header(flags, ChunkType::BlockStatusExt, len as u64, len);
            b.put_u32(id);
            b.put_u32(wire_len(extents.len()));
            for &(l, f) in extents {
                b.put_u64(l);
                b.put_u64(f as u64);
            }
            b.freeze()
        } else {
            let len = 4 + 8 * extents.len();
            let mut b = self.header(flags, ChunkType::BlockStatus, len as u64, len);
            b.put_u32(id);
            for &(l, f) in extents {
                b.put_u32(wire_len(l));
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

/// The data of `OPT_INFO`/`OPT_GO` and of the meta-context options: an export name, then a
/// list of items (information types, or queries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery<T> {
    /// Export name.
    pub name: String,
    /// Requested information types, or meta-context queries.
    pub items: Vec<T>,
}

/// `OPT_INFO`/`OPT_GO` data: the information types are kept as sent (unknown ones are ignored).
pub type InfoRequest = ExportQuery<u16>;

/// `OPT_LIST_META_CONTEXT`/`OPT_SET_META_CONTEXT` data.
pub type MetaRequest = ExportQuery<String>;

impl InfoRequest {
    /// Whether the client asked for information type `t`.
    pub fn wants(&self, t: InfoType) -> bool {
        self.items.contains(&t.wire())
    }
}

/// Parses option data naming an export, then a count (read by `count`) of items (each read by
/// `item`), and nothing after them.
fn parse_query<'d, T>(
    data: &'d [u8],
    count: fn(&mut Cursor<'d>) -> Result<usize, Malformed>,
    item: fn(&mut Cursor<'d>) -> Result<T, Malformed>,
) -> Result<ExportQuery<T>, Malformed> {
    let mut c = Cursor(data);
    let name = c.string()?;
    let n = count(&mut c)?;
    // Each item takes at least 2 bytes: refuse counts the data cannot hold before allocating.
    if n > data.len() / 2 {
        return Err(Malformed);
    }
    let items = (0..n).map(|_| item(&mut c)).collect::<Result<Vec<_>, _>>()?;
    c.end()?;
    Ok(ExportQuery { name, items })
}

/// Parses `OPT_INFO`/`OPT_GO` data.
pub fn parse_info(data: &[u8]) -> Result<InfoRequest, Malformed> {
    parse_query(data, |c| c.u16().map(usize::from), Cursor::u16)
}

/// Parses meta-context option data.
pub fn parse_meta(data: &[u8]) -> Result<MetaRequest, Malformed> {
    parse_query(data, |c| c.u32().map(|n| n as usize), Cursor::string)
}

/// Encodes `OPT_INFO`/`OPT_GO` data (the client side; used by tests).
pub fn encode_info(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut b = wire_string(name);
    b.extend_from_slice(&u16::try_from(requests.len()).expect("at most 65535 information types").to_be_bytes());
    b.extend(requests.iter().flat_map(|r| r.to_be_bytes()));
    b
}

/// Encodes meta-context option data (the client side; used by tests).
pub fn encode_meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = wire_string(name);
    b.extend_from_slice(&wire_len(queries.len()).to_be_bytes());
    b.extend(queries.iter().flat_map(|q| wire_string(q)));
    b
}

/// Whether a query selects `base:allocation`: when listing (`list`), `base:` is a wildcard too.
pub fn query_matches(query: &str, list: bool) -> bool {
    query == BASE_ALLOCATION || (list && query == "base:")
}

/// The meta context of changed-block bitmap `name` (qemu's convention).
pub fn bitmap_context(name: &str) -> String {
    format!("{DIRTY_BITMAP_PREFIX}{name}")
}

/// Whether a query selects the bitmap context `context`: when listing (`list`), `qemu:` and
/// `qemu:dirty-bitmap:` are wildcards too.
pub fn bitmap_query_matches(query: &str, context: &str, list: bool) -> bool {
    query == context || (list && (query == "qemu:" || query == DIRTY_BITMAP_PREFIX))
}

/// A string as option data carries it: its 32-bit length, then its bytes.
fn wire_string(s: &str) -> Vec<u8> {
    [&wire_len(s.len()).to_be_bytes()[..], s.as_bytes()].concat()
}

/// `NBD_INFO_EXPORT` payload.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    [&InfoType::Export.wire().to_be_bytes()[..], &size.to_be_bytes(), &flags.to_be_bytes()].concat()
}

/// `NBD_INFO_NAME` / `NBD_INFO_DESCRIPTION` payload.
pub fn info_string(kind: InfoType, s: &str) -> Vec<u8> {
    [&kind.wire().to_be_bytes()[..], s.as_bytes()].concat()
}

/// `NBD_INFO_BLOCK_SIZE` payload.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let sizes = [min, preferred, max].map(u32::to_be_bytes);
    [&InfoType::BlockSize.wire().to_be_bytes()[..], sizes.as_flattened()].concat()
}

/// `NBD_REP_META_CONTEXT` payload.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    [&id.to_be_bytes()[..], name.as_bytes()].concat()
}

/// `NBD_REP_SERVER` payload: name, then a description.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    [wire_string(name).as_slice(), description.as_bytes()].concat()
}

/// A length as a 32-bit field of the wire carries it. Every caller bounds what it frames:
/// option data and strings (names and messages of this server, a client's within the option
/// limit), payloads (the maximum payload is a `u32`), extents (a bounded count per reply, each
/// within 32 bits in compact mode). One that does not fit is a bug here, and panics rather than
/// send a corrupt frame (a request's handler answers `EIO` for it).
fn wire_len<T: TryInto<u32> + Copy + std::fmt::Display>(n: T) -> u32 {
    n.try_into().unwrap_or_else(|_| panic!("length {n} does not fit a 32-bit field"))
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
        let r = Request { flags: 1, kind: CommandType::Write.wire(), cookie: 0xdead_beef, offset: 4096, length: 512 };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let big = Request { length: 1 << 40, ..r };
        assert_eq!(Request::decode_extended(&big.encode_extended()), Ok(big));
        assert!(Request::decode_extended(&[0; EXT_REQUEST_LEN]).is_err());
        let mut b = r.encode();
        b[0] = 0;
        assert_eq!(Request::decode(&b), Err(BadMagic(0x0060_9513)));
    }

    #[test]
    fn wire_values_follow_the_specification_and_unknown_ones_are_none() {
        assert_eq!(CommandType::from_wire(6), Some(CommandType::WriteZeroes));
        assert_eq!((CommandType::from_wire(8), OptionType::from_wire(4)), (None, None));
        assert_eq!((OptionType::StartTls.wire(), OptionType::ExtendedHeaders.wire()), (5, 11));
        assert_eq!(ReplyType::from_wire((1 << 31) + 7), Some(ReplyType::ErrShutdown));
        assert_eq!((ReplyType::MetaContext.wire(), ReplyType::ErrTooBig.wire()), (4, (1 << 31) + 9));
        assert_eq!((ChunkType::BlockStatusExt.wire(), ChunkType::Error.wire()), (6, (1 << 15) + 1));
        assert_eq!((InfoType::BlockSize.wire(), Errno::Shutdown.wire()), (3, 108));
        assert_eq!((TransmissionFlag::SendDf.bit(), TransmissionFlag::SendFastZero.bit()), (1 << 7, 1 << 11));
        assert_eq!(CommandFlag::mask(&[CommandFlag::Fua, CommandFlag::PayloadLen]), 0b10_0001);
    }

    #[test]
    fn checks() {
        let l = limits();
        use CommandFlag::{Df, FastZero, Fua, NoHole, PayloadLen};
        use CommandType::{BlockStatus, Cache, Flush, Read, Trim, Write, WriteZeroes};
        let req = |kind: CommandType, flags: &[CommandFlag], offset, length| Request {
            flags: CommandFlag::mask(flags),
            kind: kind.wire(),
            cookie: 1,
            offset,
            length,
        };
        assert_eq!(check(&req(Read, &[], 0, 512), &l), Ok(Command::Read { offset: 0, len: 512, df: false }));
        assert_eq!(check(&req(Read, &[], (1 << 20) - 1, 2), &l), Err(Errno::Inval));
        assert_eq!(check(&req(Read, &[], u64::MAX, 2), &l), Err(Errno::Inval));
        assert_eq!(check(&req(Read, &[NoHole], 0, 2), &l), Err(Errno::Inval));
        assert_eq!(check(&req(Read, &[], 0, 1 << 17), &l), Err(Errno::Overflow));
        assert_eq!(check(&req(Write, &[], 1 << 20, 1), &l), Err(Errno::NoSpc));
        assert_eq!(check(&req(Write, &[], 0, 1), &Limits { read_only: true, ..l }), Err(Errno::Perm));
        assert_eq!(check(&req(Trim, &[], 0, 1), &Limits { read_only: true, ..l }), Err(Errno::Perm));
        assert_eq!(check(&req(Flush, &[], 1, 0), &l), Err(Errno::Inval));
        assert_eq!(check(&req(Flush, &[Fua], 0, 0), &l), Ok(Command::Flush));
        assert_eq!(check(&req(BlockStatus, &[], 0, 1), &Limits { block_status: false, ..l }), Err(Errno::Inval));
        assert_eq!(
            check(&req(WriteZeroes, &[FastZero, NoHole], 0, 4096), &l),
            Ok(Command::WriteZeroes { offset: 0, len: 4096, fua: false, fast: true })
        );
        assert_eq!(check(&Request { kind: 99, ..req(Read, &[], 0, 0) }, &l), Err(Errno::Inval));
        assert_eq!(check(&req(Cache, &[Df], 0, 1), &l), Err(Errno::Inval));
        // Extended headers: writes may say PAYLOAD_LEN, other commands must not.
        let x = Limits { extended: true, ..l };
        assert_eq!(check(&req(Write, &[], 0, 4), &x), Ok(Command::Write { offset: 0, len: 4, fua: false }));
        assert_eq!(check(&req(Write, &[PayloadLen], 0, 4), &x), Ok(Command::Write { offset: 0, len: 4, fua: false }));
        assert_eq!(check(&req(Write, &[PayloadLen], 0, 4), &l), Err(Errno::Inval));
        assert_eq!(check(&req(Read, &[PayloadLen], 0, 4), &x), Err(Errno::Inval));
        assert_eq!(check(&req(Trim, &[], 0, 1 << 20), &x), Ok(Command::Trim { offset: 0, len: 1 << 20, fua: false }));
        assert!(has_payload(&req(BlockStatus, &[PayloadLen], 0, 4), true));
        assert!(has_payload(&req(Write, &[], 0, 4), true));
        assert!(!has_payload(&req(Trim, &[], 0, 4), true));
        assert!(has_payload(&req(Write, &[], 0, 4), false));
    }

    #[test]
    fn option_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&InfoType::Name.wire().to_be_bytes());
        d.extend_from_slice(&InfoType::BlockSize.wire().to_be_bytes());
        assert_eq!(parse_info(&d), Ok(InfoRequest { name: "abc".into(), items: vec![1, 3] }));
        assert_eq!(encode_info("abc", &[1, 3]), d);
        assert_eq!(parse_info(&d[..d.len() - 1]), Err(Malformed));
        let mut long = d.clone();
        long.push(0);
        assert_eq!(parse_info(&long), Err(Malformed));

        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta(&m), Ok(MetaRequest { name: String::new(), items: vec![BASE_ALLOCATION.into()] }));
        assert_eq!(encode_meta("", &[BASE_ALLOCATION]), m);
        // A count the data cannot hold.
        let mut huge = Vec::new();
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta(&huge), Err(Malformed));
    }

    #[test]
    fn error_chunk_cuts_long_messages_on_a_char_boundary() {
        let msg = "é".repeat(3000);
        let c = Framer { structured: true, extended: false, cookie: 7, offset: 0 }.error(Errno::Io, &msg);
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
            prop_assert_eq!(parse_info(&encode_info(&name, &reqs)), Ok(InfoRequest { name, items: reqs }));
        }
    }
}
