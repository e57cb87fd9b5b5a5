//! Building one request: the URL (path or virtual-host style), the headers every object PUT
//! carries, and how long a successful answer's body may be.

use crate::{S3Store, client};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method};
use md5::{Digest as _, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

/// Characters escaped in URL paths: everything but RFC 3986 unreserved characters and `/`.
pub(crate) const PATH_SET: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
/// Characters escaped in query values: everything but RFC 3986 unreserved characters.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// One HTTP request, described independently of any attempt.
pub(crate) struct Req {
    pub(crate) method: Method,
    /// Object key, or `None` for the bucket itself.
    pub(crate) key: Option<String>,
    /// Query parameters (values unescaped).
    pub(crate) query: Vec<(&'static str, String)>,
    /// Headers to send and sign.
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
    /// Most bytes a successful answer's body may have; `None`: decided by [`S3Store::body_limit`].
    pub(crate) max_body: Option<usize>,
}

impl Req {
    pub(crate) fn new(method: Method, key: Option<String>) -> Self {
        Req { method, key, query: Vec::new(), headers: Vec::new(), body: Bytes::new(), max_body: None }
    }
}

/// Keys in one LIST page we ask for (`max-keys`).
pub(crate) const LIST_PAGE_KEYS: usize = 1000;

/// Most bytes of one LIST page, or of a multi-object DELETE answer: per key at most 1024 bytes
/// of key, as much again of escaping, and the entry's other fields, plus the document around.
pub const LIST_PAGE_LIMIT: usize = LIST_PAGE_KEYS * 4096 + (64 << 10);

/// Most bytes a stored object of a volume with `block_size`-byte blocks can have: the block,
/// plus what compression can add to incompressible data (deflate and zstd add well under 1/64),
/// plus encryption's padding, IV, nonce and tag (under 4 KiB with everything).
pub fn object_size_limit(block_size: u32) -> usize {
    block_size as usize + block_size as usize / 64 + 4096
}

/// Object answers accepted before the block size is known ([`ObjectStore::set_block_size`]).
pub(crate) const DEFAULT_OBJECT_LIMIT: usize = 64 << 20;

/// A response whose body has been read in full.
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl S3Store {
    /// Most bytes the body of a successful answer to `req` may have: an object's size for an
    /// object GET, a page for a LIST or a multi-object DELETE, a small document otherwise.
    pub(crate) fn body_limit(&self, req: &Req) -> usize {
        if let Some(n) = req.max_body {
            return n;
        }
        match (&req.method, &req.key) {
            (&Method::GET, Some(_)) => self.object_limit.load(Relaxed),
            (&Method::GET | &Method::POST, None) => LIST_PAGE_LIMIT,
            _ => client::SMALL_ANSWER_LIMIT,
        }
    }

    /// URL of the bucket (`key = None`) or of an object.
    pub(crate) fn url(&self, key: Option<&str>, query: &[(&'static str, String)]) -> String {
        let mut url = if self.cfg.vhost {
            format!("{}{}.{}", self.scheme, self.cfg.bucket, self.rest)
        } else {
            format!("{}{}{}", self.scheme, self.rest, self.cfg.bucket)
        };
        match key {
            Some(k) => {
                if !self.cfg.vhost {
                    url.push('/');
                }
                url.extend(utf8_percent_encode(k, PATH_SET));
            }
            None if !self.cfg.vhost => url.push('/'),
            None => {}
        }
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            if !value.is_empty() || *name != "delete" {
                url.push('=');
                url.extend(utf8_percent_encode(value, QUERY_SET));
            }
        }
        url
    }

    /// Headers every object PUT carries (ACL, storage class, server-side encryption).
    pub(crate) fn put_headers(&self, req: &mut Req, content_type: &str) {
        req.headers.push(("content-type", content_type.to_string()));
        let o = &self.cfg.new_objects;
        req.headers.push(("x-amz-acl", o.access_type.clone()));
        if let Some(sc) = &o.storage_class {
            req.headers.push(("x-amz-storage-class", sc.clone()));
        }
        if let Some(sse) = &o.sse {
            req.headers.push(("x-amz-server-side-encryption", sse.clone()));
        }
        if let Some(id) = &o.sse_key_id {
            req.headers.push(("x-amz-server-side-encryption-aws-kms-key-id", id.clone()));
        }
    }
}

/// The `Content-MD5` header value of `body`.
pub(crate) fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// This machine's host name, for the mount-token object's body.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `YYYYmmddTHHMMSSZ` (UTC), as upstream writes in the mount-token body: the fields of the
/// HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) that [`httpdate`] formats, rearranged.
pub(crate) fn httpdate_compact(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let text = httpdate::fmt_http_date(t);
    let f: Vec<&str> = text.split([' ', ':']).collect();
    let month = MONTHS.iter().position(|m| *m == f[2]).map_or(0, |i| i + 1);
    format!("{}{month:02}{}T{}{}{}Z", f[3], f[1], f[4], f[5], f[6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::S3Config;
    use s3b_store::keys::BlockKeys;
    use std::time::Duration;

    fn store(base: &str, vhost: bool, prefix: &str) -> S3Store {
        let mut cfg = S3Config::new(base, "bkt");
        cfg.vhost = vhost;
        cfg.keys = BlockKeys::new(prefix, false);
        S3Store::new(cfg).unwrap()
    }

    #[test]
    fn urls_path_and_vhost() {
        let s = store("http://127.0.0.1:3900/", false, "a b/");
        assert_eq!(s.url(Some("a b/00000001"), &[]), "http://127.0.0.1:3900/bkt/a%20b/00000001");
        assert_eq!(
            s.url(None, &[("marker", "x/y".into()), ("max-keys", "1000".into())]),
            "http://127.0.0.1:3900/bkt/?marker=x%2Fy&max-keys=1000"
        );
        assert_eq!(s.url(None, &[("delete", String::new())]), "http://127.0.0.1:3900/bkt/?delete");
        let v = store("https://s3.example.com/", true, "");
        assert_eq!(v.url(Some("00000001"), &[]), "https://bkt.s3.example.com/00000001");
        assert_eq!(v.url(None, &[("max-keys", "1".into())]), "https://bkt.s3.example.com/?max-keys=1");
    }

    #[test]
    fn compact_date() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445);
        assert_eq!(httpdate_compact(t), "20300102T030405Z");
        assert_eq!(httpdate_compact(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_825_599);
        assert_eq!(httpdate_compact(leap), "20000229T115959Z");
    }
}
