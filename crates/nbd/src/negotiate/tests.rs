//! The negotiation state machine against a model of the specification's rules: every option in
//! every state (with valid, truncated, overlong and unexpected data, and meta-context queries
//! for `base:allocation` and the offered `qemu:dirty-bitmap:NAME` contexts, well-formed or not),
//! and random option sequences checked step by step and by what the final session must hold.

use super::*;
use proptest::prelude::*;

const SIZE: u64 = 1 << 30;
const BLOCK_SIZES: [u32; 3] = [1, 4096, 1 << 20];
/// The bitmaps the test export offers.
const BITMAPS: [&str; 2] = ["mon", "tue.1"];

fn offer(tls: bool, read_only: bool) -> Offer {
    Offer {
        name: "vol".into(),
        description: "test volume".into(),
        size: SIZE,
        read_only,
        block_sizes: BLOCK_SIZES,
        tls,
        bitmaps: BITMAPS.iter().map(|b| b.to_string()).collect(),
    }
}

/// The model's state: what the rules say has been negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct M {
    tls: bool,
    read_only: bool,
    no_zeroes: bool,
    tls_on: bool,
    structured: bool,
    extended: bool,
    block_status: bool,
    /// The selected bitmaps, bit `i` for `BITMAPS[i]`.
    bitmaps: u8,
}

impl M {
    fn machine(&self) -> Negotiation {
        Negotiation {
            offer: offer(self.tls, self.read_only),
            no_zeroes: self.no_zeroes,
            tls_on: self.tls_on,
            session: self.session(),
            over: false,
        }
    }

    fn session(&self) -> Session {
        Session {
            structured: self.structured,
            extended: self.extended,
            block_status: self.block_status,
            bitmaps: selected_bitmaps(self.bitmaps),
        }
    }

    fn reset(self) -> M {
        M { structured: false, extended: false, block_status: false, bitmaps: 0, ..self }
    }
}

/// The session's bitmaps for the model's selection `mask`: ids from the first bitmap id.
fn selected_bitmaps(mask: u8) -> Vec<(u32, String)> {
    (proto::FIRST_BITMAP_ID..)
        .zip(BITMAPS)
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (id, b))| (id, b.to_string()))
        .collect()
}

/// Every state negotiation can be in: extended headers imply structured replies, a selected
/// context implies structured replies, TLS can only be on where it is configured.
fn every_state() -> Vec<M> {
    let mut v = Vec::new();
    for bits in 0u32..512 {
        let b = |i: u32| bits & (1 << i) != 0;
        let m = M {
            tls: b(0),
            read_only: b(1),
            no_zeroes: b(2),
            tls_on: b(3),
            structured: b(4),
            extended: b(5),
            block_status: b(6),
            bitmaps: u8::from(b(7)) | u8::from(b(8)) << 1,
        };
        let selected = m.block_status || m.bitmaps != 0;
        if (m.tls_on && !m.tls) || (m.extended && !m.structured) || (selected && !m.structured) {
            continue;
        }
        v.push(m);
    }
    v
}

/// Option data with what it means, so the model never parses: `info` and `meta` are set when
/// the bytes are well-formed data of that kind (built by the encoder, whole).
#[derive(Debug, Clone)]
struct Case {
    bytes: Vec<u8>,
    info: Option<(String, Vec<u16>)>,
    meta: Option<(String, Vec<String>)>,
}

fn raw(bytes: &[u8]) -> Case {
    Case { bytes: bytes.to_vec(), info: None, meta: None }
}

/// Whole encodings plus every strict prefix and the encoding with a byte more: all malformed.
fn with_malformed(whole: Case) -> Vec<Case> {
    let mut v: Vec<Case> = (0..whole.bytes.len()).map(|n| raw(&whole.bytes[..n])).collect();
    v.push(raw(&[whole.bytes.as_slice(), &[0]].concat()));
    v.push(whole);
    v
}

fn info_case(name: &str, items: &[u16]) -> Vec<Case> {
    with_malformed(Case {
        bytes: proto::encode_info(name, items),
        info: Some((name.into(), items.to_vec())),
        meta: None,
    })
}

fn meta_case(name: &str, queries: &[&str]) -> Vec<Case> {
    with_malformed(Case {
        bytes: proto::encode_meta(name, queries),
        info: None,
        meta: Some((name.into(), queries.iter().map(|q| q.to_string()).collect())),
    })
}

/// Every option number worth sending: the known ones, the withdrawn `PEEK_EXPORT` (4), and
/// unknown ones.
fn every_option() -> Vec<u32> {
    let mut v: Vec<u32> = (1..=10).collect();
    v.extend([0, 11, 4242, u32::MAX]);
    v
}

/// Data to send with `option`.
fn cases(option: u32) -> Vec<Case> {
    let mut v = vec![raw(b""), raw(b"x"), raw(b"vol")];
    match OptionType::from_wire(option) {
        Some(OptionType::ExportName) => v.push(raw(b"nope")),
        Some(OptionType::Info | OptionType::Go) => {
            v.extend(info_case("", &[]));
            v.extend(info_case("vol", &[1, 2, 3, 77]));
            v.extend(info_case("", &[2]));
            v.extend(info_case("nope", &[1]));
        }
        Some(OptionType::ListMetaContext | OptionType::SetMetaContext) => {
            v.extend(meta_case("", &[]));
            v.extend(meta_case("vol", &[proto::BASE_ALLOCATION]));
            v.extend(meta_case("", &["base:"]));
            v.extend(meta_case("", &["qemu:dirty-bitmap:x", proto::BASE_ALLOCATION]));
            v.extend(meta_case("", &["other:x"]));
            v.extend(meta_case("nope", &[proto::BASE_ALLOCATION]));
            v.extend(meta_case("vol", &["qemu:dirty-bitmap:mon"]));
            v.extend(meta_case("", &["qemu:dirty-bitmap:tue.1", "qemu:dirty-bitmap:mon", "base:"]));
            v.extend(meta_case("", &["qemu:"]));
            v.extend(meta_case("", &["qemu:dirty-bitmap:"]));
            // Near misses name nothing: a prefix, a longer name, another case, a NUL.
            v.extend(meta_case("", &["qemu:dirty-bitmap:mo", "qemu:dirty-bitmap:mon2", "QEMU:dirty-bitmap:mon"]));
            v.extend(meta_case("", &["qemu:dirty-bitmap:mon\0", "qemu:dirty-bitmap", "qemu"]));
            // A query that is not UTF-8: malformed.
            v.push(raw(
                &[&proto::encode_meta("", &[])[..4], &1u32.to_be_bytes(), &2u32.to_be_bytes(), &[0xff, 0xfe]].concat()
            ));
        }
        _ => {}
    }
    v
}

/// What the rules say one option does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// The connection is closed without a reply.
    Violation,
    /// These replies, then `next` (a session for transmission is the model's), then state `m`.
    Step { replies: Vec<ReplyType>, next: Next, m: M },
}

fn known(name: &str) -> bool {
    name.is_empty() || name == "vol"
}

/// The specification's rules for one option, in the order this server applies them.
fn model(m: M, option: u32, c: &Case, shutting_down: bool) -> Expect {
    use ReplyType::*;
    let step = |replies: &[ReplyType], next, m| Expect::Step { replies: replies.to_vec(), next, m };
    let kind = OptionType::from_wire(option);
    if kind == Some(OptionType::Abort) {
        return step(&[Ack], Next::Close, m);
    }
    if shutting_down {
        return step(&[ErrShutdown], Next::Close, m);
    }
    if m.tls && !m.tls_on && kind != Some(OptionType::StartTls) {
        if kind == Some(OptionType::ExportName) {
            return Expect::Violation;
        }
        return step(&[ErrTlsReqd], Next::Option, m);
    }
    let empty = c.bytes.is_empty();
    let Some(kind) = kind else { return step(&[ErrUnsup], Next::Option, m) };
    match kind {
        OptionType::Abort => step(&[Ack], Next::Close, m),
        OptionType::ExportName if m.extended || !known(&String::from_utf8_lossy(&c.bytes)) => Expect::Violation,
        OptionType::ExportName => step(&[], Next::Transmission(m.session()), m),
        OptionType::List if !empty => step(&[ErrInvalid], Next::Option, m),
        OptionType::List => step(&[Server, Ack], Next::Option, m),
        OptionType::StartTls if !empty => step(&[ErrInvalid], Next::Option, m),
        OptionType::StartTls if !m.tls => step(&[ErrPolicy], Next::Option, m),
        OptionType::StartTls if m.tls_on => step(&[ErrInvalid], Next::Option, m),
        OptionType::StartTls => step(&[Ack], Next::StartTls, M { tls_on: true, ..m.reset() }),
        OptionType::Info | OptionType::Go => match &c.info {
            None => step(&[ErrInvalid], Next::Option, m),
            Some((name, _)) if !known(name) => step(&[ErrUnknown], Next::Option, m),
            Some((_, items)) => {
                let mut r = vec![Info];
                r.extend(items.iter().filter(|&&i| i == 1 || i == 2).map(|_| Info));
                r.extend([Info, Ack]);
                let next = if kind == OptionType::Go { Next::Transmission(m.session()) } else { Next::Option };
                step(&r, next, m)
            }
        },
        OptionType::StructuredReply if !empty || m.structured => step(&[ErrInvalid], Next::Option, m),
        OptionType::StructuredReply => step(&[Ack], Next::Option, M { structured: true, ..m }),
        OptionType::ExtendedHeaders if !empty || m.extended => step(&[ErrInvalid], Next::Option, m),
        OptionType::ExtendedHeaders => step(&[Ack], Next::Option, M { structured: true, extended: true, ..m }),
        OptionType::ListMetaContext | OptionType::SetMetaContext => {
            let set = kind == OptionType::SetMetaContext;
            let m = if set { M { block_status: false, bitmaps: 0, ..m } } else { m };
            match &c.meta {
                _ if !m.structured => step(&[ErrInvalid], Next::Option, m),
                None => step(&[ErrInvalid], Next::Option, m),
                Some((name, _)) if !known(name) => step(&[ErrUnknown], Next::Option, m),
                Some((_, queries)) => {
                    let all = !set && queries.is_empty();
                    let base = all || queries.iter().any(|q| q == proto::BASE_ALLOCATION || (!set && q == "base:"));
                    let mut mask = 0u8;
                    for (i, b) in BITMAPS.iter().enumerate() {
                        let wild = |q: &String| !set && (q == "qemu:" || q == "qemu:dirty-bitmap:");
                        if all || queries.iter().any(|q| *q == format!("qemu:dirty-bitmap:{b}") || wild(q)) {
                            mask |= 1 << i;
                        }
                    }
                    let mut r = vec![MetaContext; usize::from(base) + mask.count_ones() as usize];
                    r.push(Ack);
                    let after = if set { M { block_status: base, bitmaps: mask, ..m } } else { m };
                    step(&r, Next::Option, after)
                }
            }
        }
    }
}

/// Splits `out` into option replies, checking each header's magic and option number.
fn replies(option: u32, out: &[u8]) -> Vec<(ReplyType, Vec<u8>)> {
    let mut v = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "truncated reply header");
        assert_eq!(u64::from_be_bytes(rest[..8].try_into().unwrap()), proto::OPT_REPLY_MAGIC);
        assert_eq!(u32::from_be_bytes(rest[8..12].try_into().unwrap()), option, "reply to another option");
        let kind =
            ReplyType::from_wire(u32::from_be_bytes(rest[12..16].try_into().unwrap())).expect("known reply type");
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        v.push((kind, rest[20..20 + len].to_vec()));
        rest = &rest[20 + len..];
    }
    v
}

fn is_error(k: ReplyType) -> bool {
    k.wire() & (1 << 31) != 0
}

/// Runs one option on a machine in state `m` and checks it against the model; returns the
/// model's verdict.
fn check(m: M, option: u32, c: &Case, shutting_down: bool) -> Expect {
    let mut n = m.machine();
    let got = n.option(option, &c.bytes, shutting_down);
    let want = model(m, option, c, shutting_down);
    let ctx = format!("state {m:?}, option {option}, data {:?}, shutting down {shutting_down}", c.bytes);
    match (&want, got) {
        (Expect::Violation, Err(_)) => {}
        (Expect::Violation, Ok(s)) => panic!("{ctx}: expected a violation, got {s:?}"),
        (Expect::Step { .. }, Err(v)) => panic!("{ctx}: unexpected violation {v}"),
        (Expect::Step { replies: kinds, next, m: after }, Ok(step)) => {
            assert_eq!(step.next, *next, "{ctx}");
            assert_eq!((n.tls_on(), n.session()), (after.tls_on, after.session()), "{ctx}");
            if OptionType::from_wire(option) == Some(OptionType::ExportName) && !shutting_down && kinds.is_empty() {
                check_export_data(m, &step.out);
            } else {
                let r = replies(option, &step.out);
                assert_eq!(r.iter().map(|(k, _)| *k).collect::<Vec<_>>(), *kinds, "{ctx}");
                check_payloads(m, &r, &ctx);
            }
            // Once negotiation is over, nothing more is answered.
            if matches!(step.next, Next::Transmission(_) | Next::Close) {
                assert!(n.option(OptionType::List.wire(), &[], false).is_err(), "{ctx}");
            }
        }
    }
    want
}

fn flags(m: M) -> u16 {
    offer(m.tls, m.read_only).transmission_flags(&m.session())
}

/// `OPT_EXPORT_NAME`'s answer: size, flags, and 124 zeros unless `NO_ZEROES`.
fn check_export_data(m: M, out: &[u8]) {
    assert_eq!(out.len(), if m.no_zeroes { 10 } else { 134 });
    assert_eq!(u64::from_be_bytes(out[..8].try_into().unwrap()), SIZE);
    assert_eq!(u16::from_be_bytes([out[8], out[9]]), flags(m));
    assert!(out[10..].iter().all(|&b| b == 0));
}

/// What the replies carry: errors a message, INFO the export's facts, META_CONTEXT the one
/// context.
fn check_payloads(m: M, r: &[(ReplyType, Vec<u8>)], ctx: &str) {
    for (k, d) in r {
        match k {
            k if is_error(*k) => assert!(!d.is_empty() && std::str::from_utf8(d).is_ok(), "{ctx}: error message"),
            ReplyType::Ack => assert!(d.is_empty(), "{ctx}"),
            ReplyType::Server => assert_eq!(d.as_slice(), proto::rep_server("vol", "test volume"), "{ctx}"),
            ReplyType::MetaContext => {
                // Listed with id 0, selected with the context's own id.
                let id = u32::from_be_bytes(d[..4].try_into().unwrap());
                let name = std::str::from_utf8(&d[4..]).unwrap();
                let own = if name == proto::BASE_ALLOCATION {
                    proto::BASE_ALLOCATION_ID
                } else {
                    let i =
                        (proto::FIRST_BITMAP_ID..).zip(BITMAPS).find(|(_, b)| format!("qemu:dirty-bitmap:{b}") == name);
                    i.unwrap_or_else(|| panic!("{ctx}: unknown context {name}")).0
                };
                assert!(id == 0 || id == own, "{ctx}: {name} with id {id}");
            }
            ReplyType::Info => match InfoType::from_wire(u16::from_be_bytes([d[0], d[1]])) {
                Some(InfoType::Export) => assert_eq!(d.as_slice(), proto::info_export(SIZE, flags(m)), "{ctx}"),
                Some(InfoType::Name) => assert_eq!(&d[2..], b"vol", "{ctx}"),
                Some(InfoType::Description) => assert_eq!(&d[2..], b"test volume", "{ctx}"),
                Some(InfoType::BlockSize) => {
                    assert_eq!(d.as_slice(), proto::info_block_size(1, 4096, 1 << 20), "{ctx}")
                }
                None => panic!("{ctx}: unknown info type"),
            },
            _ => panic!("{ctx}: unexpected reply {k:?}"),
        }
    }
    // Replies end in ACK or an error, and an error is the only reply.
    if let Some((last, _)) = r.last() {
        assert!(*last == ReplyType::Ack || is_error(*last), "{ctx}");
        assert!(!r[..r.len() - 1].iter().any(|(k, _)| is_error(*k)), "{ctx}");
    }
}

#[test]
fn every_option_in_every_state() {
    let mut steps = 0;
    for m in every_state() {
        for option in every_option() {
            for c in cases(option) {
                for shutting_down in [false, true] {
                    check(m, option, &c, shutting_down);
                    steps += 1;
                }
            }
        }
    }
    // 160 states, 14 options, their data: a change in the enumeration shows here.
    assert!(steps > 100_000, "{steps} steps");
}

#[test]
fn the_greeting_and_client_flags() {
    let g = greeting();
    assert_eq!(&g[..8], &proto::NBD_MAGIC.to_be_bytes());
    assert_eq!(&g[8..16], &proto::IHAVEOPT.to_be_bytes());
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
    for flags in 0..4 {
        let n = Negotiation::new(offer(false, false), flags).unwrap();
        assert_eq!(n.no_zeroes, flags & proto::FLAG_C_NO_ZEROES != 0);
    }
    for bit in 2..32 {
        assert!(Negotiation::new(offer(false, false), 1 << bit).is_err(), "client flag bit {bit}");
    }
}

#[test]
fn option_headers_bad_magic_and_every_length_class() {
    assert!(option_header(proto::NBD_MAGIC, 1, 0).is_err());
    for len in [0, 1, MAX_OPTION_LEN - 1, MAX_OPTION_LEN] {
        assert_eq!(option_header(proto::IHAVEOPT, 7, len), Ok(len as usize));
    }
    for len in [MAX_OPTION_LEN + 1, u32::MAX / 2, u32::MAX] {
        assert!(option_header(proto::IHAVEOPT, 7, len).is_err(), "{len}");
    }
}

/// A pool of (option, data) pairs for sequences: every option with a handful of its cases.
fn pool() -> Vec<(u32, Case)> {
    every_option().into_iter().flat_map(|o| cases(o).into_iter().step_by(3).map(move |c| (o, c))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random option sequences: each step agrees with the model, and when transmission starts
    /// the session holds exactly what the transcript acknowledged since TLS last started:
    /// structured replies after an ACKed `STRUCTURED_REPLY` or `EXTENDED_HEADERS`, extended
    /// headers after an ACKed `EXTENDED_HEADERS`, block status after a `SET_META_CONTEXT` that
    /// answered `base:allocation` and no later `SET_META_CONTEXT`.
    #[test]
    fn option_sequences_follow_the_rules(
        tls in any::<bool>(),
        read_only in any::<bool>(),
        no_zeroes in any::<bool>(),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..24),
    ) {
        let pool = pool();
        let mut n = Negotiation::new(offer(tls, read_only), if no_zeroes { 3 } else { 1 }).unwrap();
        let mut m = M { tls, read_only, no_zeroes, tls_on: false, structured: false, extended: false, block_status: false, bitmaps: 0 };
        let (mut structured, mut extended, mut selected) = (false, false, Vec::new());
        for pick in picks {
            let (option, c) = &pool[pick.index(pool.len())];
            let want = model(m, *option, c, false);
            let got = n.option(*option, &c.bytes, false);
            let (Expect::Step { next, m: after, .. }, Ok(step)) = (&want, &got) else {
                prop_assert!(matches!((&want, &got), (Expect::Violation, Err(_))), "{want:?} vs {got:?}");
                break;
            };
            prop_assert_eq!(&step.next, next);
            // An accepted EXPORT_NAME answers with the export data, not option replies.
            let kinds: Vec<ReplyType> = if OptionType::from_wire(*option) == Some(OptionType::ExportName) {
                Vec::new()
            } else {
                replies(*option, &step.out).into_iter().map(|(k, _)| k).collect()
            };
            let acked = kinds.last() == Some(&ReplyType::Ack);
            match OptionType::from_wire(*option) {
                Some(OptionType::StartTls) if acked => (structured, extended, selected) = (false, false, Vec::new()),
                Some(OptionType::StructuredReply) if acked => structured = true,
                Some(OptionType::ExtendedHeaders) if acked => (structured, extended) = (true, true),
                Some(OptionType::SetMetaContext) if !kinds.contains(&ReplyType::ErrShutdown) && !kinds.contains(&ReplyType::ErrTlsReqd) => {
                    // The contexts the replies named, by id.
                    selected = replies(*option, &step.out)
                        .into_iter()
                        .filter(|(k, _)| *k == ReplyType::MetaContext)
                        .map(|(_, d)| (u32::from_be_bytes(d[..4].try_into().unwrap()), String::from_utf8(d[4..].to_vec()).unwrap()))
                        .collect()
                }
                _ => {}
            }
            m = *after;
            prop_assert_eq!(n.session(), m.session());
            if let Next::Transmission(s) = &step.next {
                let block_status = selected.iter().any(|(id, c)| *id == proto::BASE_ALLOCATION_ID && c == proto::BASE_ALLOCATION);
                let bitmaps: Vec<(u32, String)> = selected
                    .iter()
                    .filter_map(|(id, c)| c.strip_prefix(proto::DIRTY_BITMAP_PREFIX).map(|b| (*id, b.to_string())))
                    .collect();
                prop_assert_eq!(s, &Session { structured, extended, block_status, bitmaps });
                prop_assert!(!tls || n.tls_on(), "transmission without TLS on a TLS-only server");
                break;
            }
            if step.next == Next::Close {
                break;
            }
        }
    }
}
