//! NBD option negotiation (fixed newstyle) as a pure state machine: an option in, the replies
//! and what the connection does next out.
//!
//! [`Negotiation::option`] takes one option (its number and data) and returns a [`Step`]: the
//! bytes to write, and whether to read another option, run the TLS handshake, start the
//! transmission phase with the negotiated [`Session`], or close. A protocol violation the
//! specification answers only by closing the connection is an `Err(`[`Violation`]`)`.
//!
//! It promises the specification's rules: every option gets replies carrying its number, ending
//! in `ACK` or an error (`OPT_EXPORT_NAME` and a successful `OPT_GO` end negotiation instead);
//! an error reply changes nothing (except that a failed `OPT_SET_META_CONTEXT` still clears the
//! selection, as it replaces it); on a TLS-only server nothing but `OPT_STARTTLS` and
//! `OPT_ABORT` is answered before TLS is on, and nothing negotiated before TLS survives it;
//! while the server shuts down, every option but `OPT_ABORT` gets `ERR_SHUTDOWN` and the
//! connection closes.
//!
//! It is built without I/O so that every option in every state can be tested without a socket
//! (and a model of the rules checked against random option sequences); the connection's loop
//! in the crate root only reads options and writes what comes back.

use crate::proto::{self, InfoType, OptionType, ReplyType, TransmissionFlag};
use bytes::BufMut;

/// Largest option payload accepted during negotiation; a longer one closes the connection.
/// Options carry names and short lists, so 64 KiB is generous, and it bounds what one client
/// can make the server allocate before it is even connected to an export.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// Length of the server's greeting: magic, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;

/// Zero bytes after the export data of `OPT_EXPORT_NAME`, unless the client negotiated
/// `NO_ZEROES`.
const EXPORT_NAME_PADDING: usize = 124;

/// What the export offers, as far as negotiation needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Canonical export name (the empty name, the default export, is accepted too).
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Read-only export.
    pub read_only: bool,
    /// Minimum, preferred and maximum block sizes (`NBD_INFO_BLOCK_SIZE`).
    pub block_sizes: [u32; 3],
    /// TLS is configured: the server is TLS-only.
    pub tls: bool,
    /// The changed-block bitmaps offered as `qemu:dirty-bitmap:NAME` contexts (their names,
    /// without the prefix; context ids follow their order from [`proto::FIRST_BITMAP_ID`]).
    pub bitmaps: Vec<String>,
}

impl Offer {
    fn known_name(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    /// Transmission flags for a session.
    pub fn transmission_flags(&self, s: &Session) -> u16 {
        use TransmissionFlag::{
            CanMultiConn, HasFlags, ReadOnly, SendCache, SendDf, SendFastZero, SendFlush, SendFua, SendTrim,
            SendWriteZeroes,
        };
        let mut f = TransmissionFlag::mask(&[HasFlags, SendFlush, SendFua, CanMultiConn, SendCache]);
        if self.read_only {
            f |= ReadOnly.bit();
        } else {
            f |= TransmissionFlag::mask(&[SendTrim, SendWriteZeroes, SendFastZero]);
        }
        if s.structured {
            f |= SendDf.bit();
        }
        f
    }
}

/// What one connection negotiated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Structured replies (also on with extended headers).
    pub structured: bool,
    /// Extended headers: 32-byte requests, extended reply chunks.
    pub extended: bool,
    /// `base:allocation` is selected.
    pub block_status: bool,
    /// The `qemu:dirty-bitmap:NAME` contexts selected: (context id, NAME), in id order.
    pub bitmaps: Vec<(u32, String)>,
}

impl Session {
    /// Some metadata context is selected: block-status requests are answered.
    pub fn any_context(&self) -> bool {
        self.block_status || !self.bitmaps.is_empty()
    }
}

/// What the connection does once the step's replies are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read the next option.
    Option,
    /// Flush, then run the TLS handshake; negotiation goes on over TLS.
    StartTls,
    /// Flush, then start the transmission phase with this session.
    Transmission(Session),
    /// Flush if the client still listens (failing to is fine), then close: the client ended
    /// negotiation, or the server is shutting down.
    Close,
}

/// The outcome of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes to write to the client (option replies, or the export data of `OPT_EXPORT_NAME`).
    pub out: Vec<u8>,
    /// What comes after.
    pub next: Next,
}

/// A protocol violation the specification answers by closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(String);

/// The greeting the server opens with: fixed newstyle, `NO_ZEROES` offered.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Checks an option header: its magic and data length. Returns the length to read.
pub fn option_header(magic: u64, option: u32, len: u32) -> Result<usize, Violation> {
    if magic != proto::IHAVEOPT {
        return Err(Violation(format!("bad option magic {magic:#x}")));
    }
    if len > MAX_OPTION_LEN {
        return Err(Violation(format!("option {option} with {len} bytes of data")));
    }
    usize::try_from(len).map_err(|_| Violation(format!("option {option} with {len} bytes of data")))
}

/// The spec's name of an option, for messages.
fn option_name(kind: OptionType) -> &'static str {
    match kind {
        OptionType::ExportName => "OPT_EXPORT_NAME",
        OptionType::Abort => "OPT_ABORT",
        OptionType::List => "OPT_LIST",
        OptionType::StartTls => "OPT_STARTTLS",
        OptionType::Info => "OPT_INFO",
        OptionType::Go => "OPT_GO",
        OptionType::StructuredReply => "OPT_STRUCTURED_REPLY",
        OptionType::ListMetaContext => "OPT_LIST_META_CONTEXT",
        OptionType::SetMetaContext => "OPT_SET_META_CONTEXT",
        OptionType::ExtendedHeaders => "OPT_EXTENDED_HEADERS",
    }
}

/// Options whose data must be empty (`OPT_ABORT`'s data is ignored: the client is leaving).
fn takes_no_data(kind: OptionType) -> bool {
    matches!(kind, OptionType::List | OptionType::StartTls | OptionType::StructuredReply | OptionType::ExtendedHeaders)
}

/// The replies to one option, built in order.
struct Replies {
    option: u32,
    out: Vec<u8>,
}

impl Replies {
    fn add(mut self, kind: ReplyType, data: &[u8]) -> Self {
        self.out.put_slice(&proto::option_reply(self.option, kind, data));
        self
    }

    fn then(self, next: Next) -> Step {
        Step { out: self.out, next }
    }

    /// One reply, then the next option.
    fn only(self, kind: ReplyType, data: &[u8]) -> Step {
        self.add(kind, data).then(Next::Option)
    }
}

/// Where one connection's negotiation stands.
#[derive(Debug, Clone)]
pub struct Negotiation {
    offer: Offer,
    no_zeroes: bool,
    tls_on: bool,
    session: Session,
    /// A step ended negotiation: any further option is a violation.
    over: bool,
}

impl Negotiation {
    /// Negotiation after the client answered the greeting with `client_flags`.
    pub fn new(offer: Offer, client_flags: u32) -> Result<Negotiation, Violation> {
        if client_flags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
            return Err(Violation(format!("unknown client flags {client_flags:#x}")));
        }
        let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
        Ok(Negotiation { offer, no_zeroes, tls_on: false, session: Session::default(), over: false })
    }

    /// What has been negotiated so far.
    pub fn session(&self) -> Session {
        self.session.clone()
    }

    /// Whether TLS is on.
    pub fn tls_on(&self) -> bool {
        self.tls_on
    }

    /// Answers one option; `shutting_down` when the server is being stopped.
    pub fn option(&mut self, option: u32, data: &[u8], shutting_down: bool) -> Result<Step, Violation> {
        if self.over {
            return Err(Violation(format!("option {option} after the end of negotiation")));
        }
        let step = self.answer(option, data, shutting_down)?;
        if matches!(step.next, Next::Transmission(_) | Next::Close) {
            self.over = true;
        }
        Ok(step)
    }

    fn answer(&mut self, option: u32, data: &[u8], shutting_down: bool) -> Result<Step, Violation> {
        let r = Replies { option, out: Vec::new() };
        let kind = OptionType::from_wire(option);
        if kind == Some(OptionType::Abort) {
            // Data, state and shutdown aside: the client is leaving.
            return Ok(r.add(ReplyType::Ack, &[]).then(Next::Close));
        }
        if shutting_down {
            return Ok(r.add(ReplyType::ErrShutdown, b"the server is shutting down").then(Next::Close));
        }
        if self.offer.tls && !self.tls_on && kind != Some(OptionType::StartTls) {
            if kind == Some(OptionType::ExportName) {
                return Err(Violation("OPT_EXPORT_NAME without TLS on a TLS-only server".into()));
            }
            return Ok(r.only(ReplyType::ErrTlsReqd, b"this server requires TLS: send OPT_STARTTLS first"));
        }
        let Some(kind) = kind else {
            let msg = format!("option {option} is not supported");
            return Ok(r.only(ReplyType::ErrUnsup, msg.as_bytes()));
        };
        if takes_no_data(kind) && !data.is_empty() {
            let msg = format!("{} takes no data", option_name(kind));
            return Ok(r.only(ReplyType::ErrInvalid, msg.as_bytes()));
        }
        Ok(match kind {
            OptionType::ExportName => return self.export_name(data),
            OptionType::Abort => r.add(ReplyType::Ack, &[]).then(Next::Close),
            OptionType::List => r
                .add(ReplyType::Server, &proto::rep_server(&self.offer.name, &self.offer.description))
                .only(ReplyType::Ack, &[]),
            OptionType::StartTls => self.start_tls(r),
            OptionType::Info | OptionType::Go => self.info(r, kind == OptionType::Go, data),
            OptionType::StructuredReply if self.session.structured => {
                r.only(ReplyType::ErrInvalid, b"structured replies (or extended headers) are already on")
            }
            OptionType::StructuredReply => {
                self.session.structured = true;
                r.only(ReplyType::Ack, &[])
            }
            OptionType::ExtendedHeaders if self.session.extended => {
                r.only(ReplyType::ErrInvalid, b"extended headers are already on")
            }
            OptionType::ExtendedHeaders => {
                self.session.extended = true;
                self.session.structured = true;
                r.only(ReplyType::Ack, &[])
            }
            OptionType::ListMetaContext => self.meta_context(r, true, data),
            OptionType::SetMetaContext => self.meta_context(r, false, data),
        })
    }

    /// `OPT_EXPORT_NAME`: the export data and straight to transmission; an unknown name can
    /// only be refused by closing.
    fn export_name(&mut self, data: &[u8]) -> Result<Step, Violation> {
        if self.session.extended {
            return Err(Violation("OPT_EXPORT_NAME after extended headers".into()));
        }
        let name = String::from_utf8_lossy(data);
        if !self.offer.known_name(&name) {
            return Err(Violation(format!("unknown export \"{name}\"")));
        }
        let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
        out.put_u64(self.offer.size);
        out.put_u16(self.offer.transmission_flags(&self.session));
        if !self.no_zeroes {
            out.put_bytes(0, EXPORT_NAME_PADDING);
        }
        Ok(Step { out, next: Next::Transmission(self.session.clone()) })
    }

    fn start_tls(&mut self, r: Replies) -> Step {
        if !self.offer.tls {
            return r.only(ReplyType::ErrPolicy, b"TLS is not configured on this server");
        }
        if self.tls_on {
            return r.only(ReplyType::ErrInvalid, b"TLS is already on");
        }
        self.tls_on = true;
        // Nothing negotiated before TLS survives it.
        self.session = Session::default();
        r.add(ReplyType::Ack, &[]).then(Next::StartTls)
    }

    /// Option data naming an export (`what` option's), parsed: the query, or the step refusing
    /// it (malformed, or another export's name).
    fn query<T>(
        &self,
        r: Replies,
        parsed: Result<proto::ExportQuery<T>, proto::Malformed>,
        what: &str,
    ) -> Result<(Replies, proto::ExportQuery<T>), Step> {
        match parsed {
            Err(_) => Err(r.only(ReplyType::ErrInvalid, format!("malformed {what} data").as_bytes())),
            Ok(q) if !self.offer.known_name(&q.name) => {
                Err(r.only(ReplyType::ErrUnknown, format!("no export named \"{}\"", q.name).as_bytes()))
            }
            Ok(q) => Ok((r, q)),
        }
    }

    /// `OPT_INFO`, or with `go` `OPT_GO`: the export's information, then (`go`) transmission.
    fn info(&mut self, r: Replies, go: bool, data: &[u8]) -> Step {
        let (r, req) = match self.query(r, proto::parse_info(data), "OPT_INFO/OPT_GO") {
            Ok(v) => v,
            Err(refused) => return refused,
        };
        let o = &self.offer;
        let mut r = r.add(ReplyType::Info, &proto::info_export(o.size, o.transmission_flags(&self.session)));
        if req.wants(InfoType::Name) {
            r = r.add(ReplyType::Info, &proto::info_string(InfoType::Name, &o.name));
        }
        if req.wants(InfoType::Description) {
            r = r.add(ReplyType::Info, &proto::info_string(InfoType::Description, &o.description));
        }
        let [min, preferred, max] = o.block_sizes;
        let r = r.add(ReplyType::Info, &proto::info_block_size(min, preferred, max)).add(ReplyType::Ack, &[]);
        r.then(if go { Next::Transmission(self.session.clone()) } else { Next::Option })
    }

    /// `OPT_LIST_META_CONTEXT` (`list`) or `OPT_SET_META_CONTEXT`: `base:allocation`, and a
    /// `qemu:dirty-bitmap:NAME` for each offered bitmap. A query names a context exactly; when
    /// listing, `base:`, `qemu:` and `qemu:dirty-bitmap:` stand for all of theirs, and no query
    /// at all for every context. Queries for contexts there are not get no reply (the
    /// specification's rule), so a client learns which exist.
    fn meta_context(&mut self, r: Replies, list: bool, data: &[u8]) -> Step {
        if !list {
            // Replaces the selection, even when it fails.
            self.session.block_status = false;
            self.session.bitmaps.clear();
        }
        if !self.session.structured {
            return r.only(ReplyType::ErrInvalid, b"negotiate structured replies first");
        }
        let (mut r, m) = match self.query(r, proto::parse_meta(data), "meta context") {
            Ok(v) => v,
            Err(refused) => return refused,
        };
        let all = list && m.items.is_empty();
        if all || m.items.iter().any(|q| proto::query_matches(q, list)) {
            let id = if list { 0 } else { proto::BASE_ALLOCATION_ID };
            self.session.block_status |= !list;
            r = r.add(ReplyType::MetaContext, &proto::meta_context(id, proto::BASE_ALLOCATION));
        }
        for (id, name) in (proto::FIRST_BITMAP_ID..).zip(&self.offer.bitmaps) {
            let context = proto::bitmap_context(name);
            if !(all || m.items.iter().any(|q| proto::bitmap_query_matches(q, &context, list))) {
                continue;
            }
            if !list {
                self.session.bitmaps.push((id, name.clone()));
            }
            r = r.add(ReplyType::MetaContext, &proto::meta_context(if list { 0 } else { id }, &context));
        }
        r.only(ReplyType::Ack, &[])
    }
}

#[cfg(test)]
mod tests;
