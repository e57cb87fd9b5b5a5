//! A plain web server on 127.0.0.1 that serves a disk image's block objects the way a public
//! read-only image is published: behind a CDN or a bucket's website endpoint. It answers GET
//! and HEAD of keys (404 for a missing one) and refuses everything else with 403 — any listing
//! of the bucket, any PUT, POST or DELETE — and it checks no credentials. Every request is
//! recorded, so a test can assert what a client sent.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use crate::fault_proxy::read_head;
use crate::listener::Listener;

/// One stored object: its body and the extra headers sent with it (e.g. s3backer's size
/// metadata on block 0).
#[derive(Clone, Debug, Default)]
pub struct Object {
    /// The body.
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

struct Shared {
    bucket: String,
    objects: BTreeMap<String, Object>,
    requests: parking_lot::Mutex<Vec<String>>,
}

/// A running server; stops accepting on drop.
pub struct PublicServer {
    /// Port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    listener: Listener,
}

/// The files under `dir` as objects keyed by their path relative to `dir` (a `--test` store
/// directory names its files exactly like the S3 keys of the same blocks).
pub fn objects_from_dir(dir: &Path) -> BTreeMap<String, Object> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Object>) {
        for e in std::fs::read_dir(dir).expect("read store dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let key = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(key, Object { body: std::fs::read(&p).expect("read object"), headers: Vec::new() });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

impl PublicServer {
    /// Serves `objects` as the contents of `bucket` (path-style URLs: `/bucket/key`).
    pub fn start(bucket: &str, objects: BTreeMap<String, Object>) -> PublicServer {
        let shared =
            Arc::new(Shared { bucket: bucket.to_string(), objects, requests: parking_lot::Mutex::new(Vec::new()) });
        let sh = shared.clone();
        let listener = Listener::start(move |conn| serve(conn, &sh));
        PublicServer { port: listener.port, shared, listener }
    }

    /// Base URL, ending in `/`.
    pub fn base_url(&self) -> String {
        self.listener.base_url()
    }

    /// Every request so far, as `METHOD target` (target = path and query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().clone()
    }

    /// Requests so far, counted by method.
    pub fn method_counts(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.requests() {
            *m.entry(r.split(' ').next().unwrap_or_default().to_string()).or_default() += 1;
        }
        m
    }
}

fn answer(out: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], send_body: bool) -> bool {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (n, v) in headers {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes()).is_ok() && (!send_body || out.write_all(body).is_ok())
}

fn serve(conn: TcpStream, sh: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    let forbidden = b"<html><body><h1>403 Forbidden</h1></body></html>".as_slice();
    let not_found = b"<html><body><h1>404 Not Found</h1></body></html>".as_slice();
    loop {
        let Ok(Some(head)) = read_head(&mut reader) else { return };
        let mut parts = head.first.split(' ');
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        sh.requests.lock().push(format!("{method} {target}"));
        // Drain any body so the connection stays usable (nothing is stored).
        let len: usize = head.get("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if head.get("Expect").is_none()
            && std::io::copy(&mut (&mut reader).take(len as u64), &mut std::io::sink()).is_err()
        {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let key = path.strip_prefix(&format!("/{}/", sh.bucket)).filter(|k| !k.is_empty());
        let html = [("Content-Type".to_string(), "text/html".to_string())];
        let ok = match (method.as_str(), key) {
            ("GET" | "HEAD", Some(key)) if query.is_empty() => {
                let head_only = method == "HEAD";
                match sh.objects.get(key) {
                    Some(o) => {
                        let mut hs = o.headers.clone();
                        hs.push(("ETag".into(), format!("\"{}\"", hex_md5(&o.body))));
                        hs.push(("Content-Type".into(), "application/octet-stream".into()));
                        answer(&mut out, "200 OK", &hs, &o.body, !head_only)
                    }
                    None => answer(&mut out, "404 Not Found", &html, not_found, !head_only),
                }
            }
            // Listings, writes, anything else: refused, as a website endpoint does.
            _ => {
                let ok = answer(&mut out, "403 Forbidden", &html, forbidden, method != "HEAD");
                if head.get("Expect").is_some() {
                    // The client waits for 100-continue; we refused instead, so close.
                    return;
                }
                ok
            }
        };
        if !ok {
            return;
        }
    }
}

/// The hex MD5 of `data` (the ETag S3 gives a simple object).
fn hex_md5(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
