//! A failure-injecting HTTP proxy on 127.0.0.1, put between an S3 client and the real server.
//!
//! Each request read from the client is, at random (with the configured percentages):
//! - answered with `503 SlowDown` without reaching the server (a 5xx), or with `500
//!   InternalError` ([`FaultProxy::set_internal_error_percent`]),
//! - forwarded, and then the client connection is reset before any answer (the server did
//!   the work but the client cannot know), or reset without forwarding,
//! - stalled: held for [`FaultConfig::stall`] (longer than the client's timeout), then dropped,
//! - corrupted: forwarded with one byte of its body changed (requests with a body only), as a
//!   bad link would, to show the server refuses what the client did not send,
//! - or forwarded normally.
//!
//! Requests are forwarded one per upstream connection (`Connection: close`); the answer is read
//! whole and re-sent to the client with a `Content-Length`, so client connections stay usable
//! (keep-alive) whatever framing the server used. `Expect: 100-continue` is answered by the proxy.
//! Faults can be switched off and on while running ([`FaultProxy::set_faults`]), and what was
//! injected is counted ([`FaultProxy::counts`]), as are requests by method
//! ([`FaultProxy::method_counts`]; with faults off the proxy is a request counter).
//! [`FaultProxy::set_deny_listing`] makes it answer every bucket listing with `403
//! AccessDenied` and forward the rest, as S3 does for a key without `s3:ListBucket`.

use crate::listener::Listener;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often each fault happens, in percent of requests (the default: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultConfig {
    /// Answer 503 without forwarding.
    pub error_percent: u32,
    /// Reset the client connection (half of them after forwarding the request).
    pub reset_percent: u32,
    /// Hold the request for `stall`, then drop the connection.
    pub stall_percent: u32,
    /// How long a stall lasts.
    pub stall: Duration,
    /// Forward requests that have a body with one byte of it flipped.
    pub corrupt_percent: u32,
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received from clients.
    pub requests: u64,
    /// 503 answers injected.
    pub errors: u64,
    /// 500 answers injected.
    pub internal_errors: u64,
    /// Connections reset.
    pub resets: u64,
    /// Requests stalled.
    pub stalls: u64,
    /// Request bodies corrupted on the way.
    pub corrupts: u64,
}

impl FaultCounts {
    /// All injected faults.
    pub fn faults(&self) -> u64 {
        self.errors + self.internal_errors + self.resets + self.stalls + self.corrupts
    }
}

#[derive(Default)]
struct Shared {
    enabled: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    internal_percent: std::sync::atomic::AtomicU32,
    internal_errors: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    corrupts: AtomicU64,
    deny_listing: AtomicBool,
    listings_denied: AtomicU64,
    seq: AtomicU64,
    methods: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A running proxy; stops accepting on drop.
pub struct FaultProxy {
    /// Port clients connect to on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    listener: Listener,
}

impl FaultProxy {
    /// Starts a proxy in front of the server on 127.0.0.1:`upstream`, faults enabled.
    pub fn start(upstream: u16, cfg: FaultConfig) -> FaultProxy {
        let shared = Arc::new(Shared::default());
        shared.enabled.store(true, Ordering::SeqCst);
        let sh = shared.clone();
        let listener = Listener::start(move |conn| serve(conn, upstream, cfg, &sh));
        FaultProxy { port: listener.port, shared, listener }
    }

    /// A proxy that injects no faults: it forwards and counts (see [`FaultProxy::method_counts`]).
    pub fn counting(upstream: u16) -> FaultProxy {
        let p = FaultProxy::start(upstream, FaultConfig::default());
        p.set_faults(false);
        p
    }

    /// Base URL of the proxy, ending in `/`.
    pub fn base_url(&self) -> String {
        self.listener.base_url()
    }

    /// Turns fault injection on or off (requests are always forwarded when off).
    pub fn set_faults(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::SeqCst);
    }

    /// Answers this percentage of requests (rolled after the 503s) with `500 InternalError`
    /// without forwarding them.
    pub fn set_internal_error_percent(&self, percent: u32) {
        self.shared.internal_percent.store(percent, Ordering::SeqCst);
    }

    /// Refuses (or, with `false`, forwards again) every listing of a bucket with `403
    /// AccessDenied`, whatever the fault settings.
    pub fn set_deny_listing(&self, on: bool) {
        self.shared.deny_listing.store(on, Ordering::SeqCst);
    }

    /// Listings refused so far.
    pub fn listings_denied(&self) -> u64 {
        self.shared.listings_denied.load(Ordering::SeqCst)
    }

    /// Requests received so far, by HTTP method (`GET`, `PUT`, ...).
    pub fn method_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.methods.lock().clone()
    }

    /// What was done so far.
    pub fn counts(&self) -> FaultCounts {
        let s = &self.shared;
        FaultCounts {
            requests: s.requests.load(Ordering::SeqCst),
            errors: s.errors.load(Ordering::SeqCst),
            internal_errors: s.internal_errors.load(Ordering::SeqCst),
            resets: s.resets.load(Ordering::SeqCst),
            stalls: s.stalls.load(Ordering::SeqCst),
            corrupts: s.corrupts.load(Ordering::SeqCst),
        }
    }
}

/// Answers with an S3 error document; false when the client is gone.
fn s3_error(out: &mut TcpStream, status: &str, code: &str, message: &str) -> bool {
    let msg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let h = format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n", msg.len());
    out.write_all(h.as_bytes()).and_then(|_| out.write_all(msg.as_bytes())).is_ok()
}

/// Reads the body of a request whose head is `head` (answering `Expect: 100-continue` first);
/// `None` when the client is gone.
pub(crate) fn read_body(head: &Head, reader: &mut impl Read, out: &mut impl Write) -> Option<Vec<u8>> {
    if head.get("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
    {
        return None;
    }
    let len: usize = head.get("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// A parsed request or response head: the first line and the header lines.
pub(crate) struct Head {
    pub(crate) first: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name` (case-insensitive).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one request or response head; `None` at a clean end of the stream.
pub(crate) fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { first: first.trim_end().to_string(), headers }))
}

/// A small deterministic pseudo-random number per request (splitmix64 of a counter).
fn roll(sh: &Shared) -> u32 {
    let mut z = sh.seq.fetch_add(1, Ordering::SeqCst).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    u32::try_from((z ^ (z >> 31)) % 100).expect("below 100")
}

fn reset(conn: &TcpStream) {
    // SO_LINGER 0 turns the close into a TCP reset.
    let _ = socket_linger_zero(conn);
    let _ = conn.shutdown(Shutdown::Both);
}

fn socket_linger_zero(conn: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a correctly sized SO_LINGER struct on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("linger fits a socklen_t"),
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn serve(conn: TcpStream, upstream: u16, cfg: FaultConfig, sh: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn.try_clone().unwrap();
    loop {
        let Ok(Some(head)) = read_head(&mut reader) else { return };
        sh.requests.fetch_add(1, Ordering::SeqCst);
        let method = head.first.split(' ').next().unwrap_or("").to_string();
        *sh.methods.lock().entry(method).or_default() += 1;
        let Some(mut body) = read_body(&head, &mut reader, &mut out) else { return };
        if sh.deny_listing.load(Ordering::SeqCst) && is_listing(&head.first) {
            sh.listings_denied.fetch_add(1, Ordering::SeqCst);
            if !s3_error(&mut out, "403 Forbidden", "AccessDenied", "Access Denied") {
                return;
            }
            continue;
        }
        let r = if sh.enabled.load(Ordering::SeqCst) { roll(sh) } else { 100 };
        let (e5, rs, st) = (cfg.error_percent, cfg.reset_percent, cfg.stall_percent);
        if r < e5 {
            sh.errors.fetch_add(1, Ordering::SeqCst);
            if !s3_error(&mut out, "503 Service Unavailable", "SlowDown", "injected") {
                return;
            }
            continue;
        }
        let e = e5 + sh.internal_percent.load(Ordering::SeqCst);
        if r < e {
            sh.internal_errors.fetch_add(1, Ordering::SeqCst);
            if !s3_error(&mut out, "500 Internal Server Error", "InternalError", "injected") {
                return;
            }
            continue;
        }
        if r < e + rs {
            sh.resets.fetch_add(1, Ordering::SeqCst);
            if r % 2 == 0 {
                let _ = forward(&head, &body, upstream);
            }
            reset(&conn);
            return;
        }
        if r < e + rs + st {
            sh.stalls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(cfg.stall);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        if r < e + rs + st + cfg.corrupt_percent && !body.is_empty() {
            sh.corrupts.fetch_add(1, Ordering::SeqCst);
            let i = body.len() / 2;
            body[i] ^= 0x5a;
        }
        match forward(&head, &body, upstream) {
            Ok(answer) => {
                if out.write_all(&answer).is_err() {
                    return;
                }
            }
            Err(_) => {
                // Server down (e.g. being restarted): the client sees a dropped connection.
                reset(&conn);
                return;
            }
        }
    }
}

/// Whether a request line is a listing of a bucket: a GET of the bucket itself (path style,
/// `/bucket` or `/bucket/`, with any query) other than a multi-object operation.
fn is_listing(first: &str) -> bool {
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    method == "GET" && path.trim_matches('/').split('/').filter(|s| !s.is_empty()).count() <= 1
}

/// Sends one request to the server and returns the answer re-framed with a Content-Length.
pub(crate) fn forward(head: &Head, body: &[u8], upstream: u16) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{}\r\n", head.first);
    for (n, v) in &head.headers {
        if n.eq_ignore_ascii_case("Connection") || n.eq_ignore_ascii_case("Expect") {
            continue;
        }
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(body)?;
    let mut r = BufReader::new(up);
    let resp = read_head(&mut r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let is_head = head.first.starts_with("HEAD ");
    let status: u16 = resp.first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let no_body = is_head || status == 204 || status == 304 || (100..200).contains(&status);
    let mut data = Vec::new();
    if !no_body {
        if resp.get("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut line = String::new();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| std::io::Error::other("bad chunk"))?;
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = resp.get("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
            data.resize(n, 0);
            r.read_exact(&mut data)?;
        } else {
            r.read_to_end(&mut data)?;
        }
    }
    let mut answer = format!("{}\r\n", resp.first);
    for (n, v) in &resp.headers {
        if n.eq_ignore_ascii_case("Connection") || n.eq_ignore_ascii_case("Transfer-Encoding") {
            continue;
        }
        if n.eq_ignore_ascii_case("Content-Length") && !no_body {
            continue;
        }
        answer.push_str(&format!("{n}: {v}\r\n"));
    }
    if !no_body {
        answer.push_str(&format!("Content-Length: {}\r\n", data.len()));
    }
    answer.push_str("\r\n");
    let mut bytes = answer.into_bytes();
    bytes.extend_from_slice(&data);
    Ok(bytes)
}
