//! A hostile HTTP server on 127.0.0.1: a proxy in front of a real S3 server that, when armed,
//! answers chosen requests the way a broken or malicious server would, to show the client's
//! memory and time stay bounded:
//!
//! - [`Misbehaviour::Oversize`]: `200` with `Content-Length: 1 GiB`, then bytes as fast as the
//!   socket takes them;
//! - [`Misbehaviour::Endless`]: a chunked `200` body that never ends;
//! - [`Misbehaviour::HeaderFlood`]: a status line followed by headers without end;
//! - [`Misbehaviour::SlowLoris`]: a valid head, then the body one byte every 250 ms;
//! - [`Misbehaviour::EndlessListing`]: a LIST answer whose XML document never ends.
//!
//! Requests that are not armed are forwarded to the server (one upstream connection each, as
//! [`crate::fault_proxy`] does). A hostile answer goes on until the client hangs up (or 1 GiB);
//! the connection is then closed. [`HostileProxy::counts`] tells what was sent.

use crate::fault_proxy::{Head, forward, read_body, read_head};
use crate::listener::Listener;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A way to answer badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Announce 1 GiB and send it.
    Oversize,
    /// A chunked body without end.
    Endless,
    /// Headers without end.
    HeaderFlood,
    /// A valid head, then one body byte every 250 ms.
    SlowLoris,
    /// A LIST document without end.
    EndlessListing,
}

/// Which requests an armed misbehaviour answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// GET of an object (a key after the bucket), other than the mount token.
    ObjectGet,
    /// GET of the bucket itself (a LIST).
    List,
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileCounts {
    /// Requests received.
    pub requests: u64,
    /// Hostile answers started.
    pub hostile: u64,
    /// Bytes written in hostile answers before the client hung up.
    pub hostile_bytes: u64,
}

#[derive(Default)]
struct Shared {
    armed: parking_lot::Mutex<Option<(Misbehaviour, Target, u64)>>,
    requests: AtomicU64,
    hostile: AtomicU64,
    hostile_bytes: AtomicU64,
}

/// A running hostile proxy; stops accepting on drop.
pub struct HostileProxy {
    /// Port clients connect to on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    listener: Listener,
}

const GIB: u64 = 1 << 30;

impl HostileProxy {
    /// Starts a proxy in front of the server on 127.0.0.1:`upstream`, disarmed.
    pub fn start(upstream: u16) -> HostileProxy {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let listener = Listener::start(move |conn| serve(conn, upstream, &sh));
        HostileProxy { port: listener.port, shared, listener }
    }

    /// Base URL of the proxy, ending in `/`.
    pub fn base_url(&self) -> String {
        self.listener.base_url()
    }

    /// Answers the next `count` requests that match `target` with `m` (replacing what was armed).
    pub fn arm(&self, m: Misbehaviour, target: Target, count: u64) {
        *self.shared.armed.lock() = Some((m, target, count));
    }

    /// How many armed answers are still to be given.
    pub fn pending(&self) -> u64 {
        self.shared.armed.lock().map_or(0, |(_, _, n)| n)
    }

    /// What was done so far.
    pub fn counts(&self) -> HostileCounts {
        let s = &self.shared;
        HostileCounts {
            requests: s.requests.load(Ordering::SeqCst),
            hostile: s.hostile.load(Ordering::SeqCst),
            hostile_bytes: s.hostile_bytes.load(Ordering::SeqCst),
        }
    }
}

/// What a request is, from its first line (path-style URLs: `/bucket` or `/bucket/key`).
fn target_of(head: &Head) -> Option<Target> {
    let mut parts = head.first.split(' ');
    if parts.next() != Some("GET") {
        return None;
    }
    let path = parts.next()?.split('?').next()?;
    let rest = path.trim_start_matches('/');
    match rest.split_once('/') {
        None | Some((_, "")) => Some(Target::List),
        Some((_, key)) if key.ends_with("s3backer-mounted") => None,
        Some(_) => Some(Target::ObjectGet),
    }
}

/// Takes one armed answer for `head`, if any.
fn take(sh: &Shared, head: &Head) -> Option<Misbehaviour> {
    let t = target_of(head)?;
    let mut armed = sh.armed.lock();
    match armed.as_mut() {
        Some((m, target, n)) if *target == t && *n > 0 => {
            *n -= 1;
            Some(*m)
        }
        _ => None,
    }
}

fn serve(conn: TcpStream, upstream: u16, sh: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn.try_clone().unwrap();
    loop {
        let Ok(Some(head)) = read_head(&mut reader) else { return };
        sh.requests.fetch_add(1, Ordering::SeqCst);
        let Some(body) = read_body(&head, &mut reader, &mut out) else { return };
        if let Some(m) = take(sh, &head) {
            sh.hostile.fetch_add(1, Ordering::SeqCst);
            misbehave(&mut out, m, sh);
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        match forward(&head, &body, upstream) {
            Ok(answer) => {
                if out.write_all(&answer).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Writes `m`'s answer until the client hangs up or 1 GiB has gone.
fn misbehave(out: &mut TcpStream, m: Misbehaviour, sh: &Shared) {
    let _ = out.set_write_timeout(Some(Duration::from_secs(60)));
    let mut sent = 0u64;
    let mut send = |out: &mut TcpStream, b: &[u8]| -> bool {
        if sent > GIB || out.write_all(b).is_err() {
            return false;
        }
        sent += b.len() as u64;
        sh.hostile_bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
        true
    };
    let zeros = vec![0u8; 64 << 10];
    match m {
        Misbehaviour::Oversize => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {GIB}\r\n\r\n");
            if send(out, head.as_bytes()) {
                while send(out, &zeros) {}
            }
        }
        Misbehaviour::Endless => {
            if send(
                out,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            ) {
                let mut chunk = format!("{:x}\r\n", zeros.len()).into_bytes();
                chunk.extend_from_slice(&zeros);
                chunk.extend_from_slice(b"\r\n");
                while send(out, &chunk) {}
            }
        }
        Misbehaviour::HeaderFlood => {
            if send(out, b"HTTP/1.1 200 OK\r\n") {
                let filler = "a".repeat(1000);
                let mut i = 0u64;
                while send(out, format!("x-flood-{i}: {filler}\r\n").as_bytes()) {
                    i += 1;
                }
            }
        }
        Misbehaviour::SlowLoris => {
            if send(out, b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n") {
                for _ in 0..4096 {
                    std::thread::sleep(Duration::from_millis(250));
                    if !send(out, b"x") {
                        break;
                    }
                }
            }
        }
        Misbehaviour::EndlessListing => {
            let start = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>";
            if send(out, b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n")
                && send(out, format!("{:x}\r\n{start}\r\n", start.len()).as_bytes())
            {
                let mut i = 0u64;
                loop {
                    let mut page = String::new();
                    for _ in 0..256 {
                        page.push_str(&format!("<Contents><Key>zz/{i:016x}</Key><Size>1</Size></Contents>"));
                        i += 1;
                    }
                    if !send(out, format!("{:x}\r\n{page}\r\n", page.len()).as_bytes()) {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(first: &str) -> Head {
        Head { first: first.into(), headers: Vec::new() }
    }

    #[test]
    fn targets() {
        assert_eq!(target_of(&head("GET /blocks?max-keys=1000 HTTP/1.1")), Some(Target::List));
        assert_eq!(target_of(&head("GET /blocks/?prefix=a HTTP/1.1")), Some(Target::List));
        assert_eq!(target_of(&head("GET /blocks/00000001 HTTP/1.1")), Some(Target::ObjectGet));
        assert_eq!(target_of(&head("GET /blocks/v/s3backer-mounted HTTP/1.1")), None);
        assert_eq!(target_of(&head("PUT /blocks/00000001 HTTP/1.1")), None);
    }
}
