//! The S3 transport: an [`ObjectStore`] that keeps each block as one object in an S3 bucket,
//! byte-for-byte as C s3backer does, so volumes move between the two implementations.
//!
//! Requests go over hyper ([`client`]: rustls, HTTP/1.1 or HTTP/2, our own sockets for
//! `--ipTOS`) and are signed with AWS Signature V4 by
//! the `aws-sigv4` crate — signing is not hand-rolled. Every attempt recomputes the date and the
//! signature and resends the whole body. Failures are retried as upstream does (see [`retry`]):
//! everything but 404 and 304, with a doubling pause whose total is capped by `--maxRetryPause`.
//!
//! Object layout (reference §3): block keys from [`BlockKeys`]; PUTs carry `Content-Type:
//! application/x-s3backer-block`, `x-amz-acl`, the codec's `Content-Encoding` and
//! HMAC headers, and for block 0 the volume geometry headers that size auto-detection reads back;
//! an all-zero block is a DELETE and a missing object reads as zeros. The mount token is the
//! object `<prefix>s3backer-mounted`. Listing (for `--listBlocks` and `--erase`) runs one LIST
//! stream per leading hex digit of the key, in parallel. Nothing else lists the bucket: a mount
//! sends only HEAD, GET, PUT and DELETE (as upstream), so least-privilege keys without
//! `s3:ListBucket` and read-only public images served by a plain web server work.
//!
//! Integrity of uploads: a signed request carries the SHA-256 of its body in the signature
//! (`x-amz-content-sha256`), which the server checks before storing anything, so a body damaged
//! on the way is refused. Upstream also sends `Content-MD5`; with the signed hash that is a
//! second check of the same bytes, and MD5 (no CPU support) cost about three times what
//! SHA-256 does — 43 % of the daemon's CPU on a sequential write. So `Content-MD5` is sent only
//! on unsigned (anonymous) uploads, where it is the only check, and on multi-object DELETE,
//! which S3 requires it for.
//!
//! Bounded answers: every request knows how long a successful answer's body can be
//! ([`object_size_limit`] for an object GET once the block size is known, [`LIST_PAGE_LIMIT`] for
//! a LIST page or a multi-object DELETE, 64 KiB otherwise), and [`client`] refuses a longer one
//! as soon as it is announced or received; so a broken or hostile server costs bounded memory,
//! and (with the whole-exchange `--timeout`) bounded time, on every attempt.

#![deny(missing_docs)]

pub mod client;
pub mod creds;
pub mod retry;
pub mod sign;
pub mod stats;
mod token;
pub use token::{SETTLE_BOUND, SETTLE_WAIT};
pub mod xml;

pub use creds::{Credentials, Keys};
pub use stats::HttpStats;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use client::{ClientOptions, HttpClient, TransportError};
use http::{HeaderMap, Method};
use md5::{Digest as _, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use retry::Backoff;
use s3b_store::keys::BlockKeys;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, TokenSwap,
    VolumeMeta,
};
use stats::{add_time, bump};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

/// Header carrying the block size on block 0.
pub const BLOCK_SIZE_HEADER: &str = "x-amz-meta-s3backer-blocksize";
/// Header carrying the volume size in bytes on block 0.
pub const FILE_SIZE_HEADER: &str = "x-amz-meta-s3backer-filesize";
/// Header carrying the HMAC of an encrypted block.
pub const HMAC_HEADER: &str = "x-amz-meta-s3backer-hmac";
/// Header carrying the mount token on the mount-token object.
pub const MOUNT_TOKEN_HEADER: &str = "x-amz-meta-s3backer-mount-token";
/// Content-Type of block objects.
pub const BLOCK_CONTENT_TYPE: &str = "application/x-s3backer-block";
/// Most keys in one multi-object DELETE (the S3 limit).
pub const MAX_DELETE_KEYS: usize = 1000;

/// Characters escaped in URL paths: everything but RFC 3986 unreserved characters and `/`.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
/// Characters escaped in query values: everything but RFC 3986 unreserved characters.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Everything the transport needs to know, validated by the command line.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// Endpoint, ending in `/` (e.g. `https://s3.amazonaws.com/`).
    pub base_url: String,
    /// Bucket name.
    pub bucket: String,
    /// Virtual-hosted-style URLs (`bucket.host/key`) instead of path style (`host/bucket/key`).
    pub vhost: bool,
    /// Signing region.
    pub region: String,
    /// Where the signing keys come from.
    pub credentials: Credentials,
    /// Key naming (prefix, hash prefix).
    pub keys: BlockKeys,
    /// `x-amz-acl` of new objects.
    pub access_type: String,
    /// `x-amz-storage-class` of new objects.
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption`.
    pub sse: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id`.
    pub sse_key_id: Option<String>,
    /// Time limit of one attempt (connect + transfer).
    pub timeout: Duration,
    /// First pause before a retry.
    pub initial_retry_pause: Duration,
    /// Total pause across the retries of one operation.
    pub max_retry_pause: Duration,
    /// Per-transfer upload limit, bytes per second.
    pub max_upload_speed: Option<u64>,
    /// Per-transfer download limit, bytes per second.
    pub max_download_speed: Option<u64>,
    /// HTTP/1.1 only.
    pub http11: bool,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust.
    pub cacert: Option<PathBuf>,
    /// IP type-of-service byte of every connection (`--ipTOS`).
    pub ip_tos: Option<u8>,
    /// Log every request and error body.
    pub debug_http: bool,
    /// Parallel LIST streams.
    pub list_threads: usize,
}

impl S3Config {
    /// A configuration with upstream's defaults for everything but the endpoint and bucket.
    pub fn new(base_url: impl Into<String>, bucket: impl Into<String>) -> Self {
        S3Config {
            base_url: base_url.into(),
            bucket: bucket.into(),
            vhost: false,
            region: "us-east-1".into(),
            credentials: Credentials::Anonymous,
            keys: BlockKeys::default(),
            access_type: "private".into(),
            storage_class: None,
            sse: None,
            sse_key_id: None,
            timeout: Duration::from_secs(30),
            initial_retry_pause: Duration::from_millis(200),
            max_retry_pause: Duration::from_millis(30_000),
            max_upload_speed: None,
            max_download_speed: None,
            http11: false,
            insecure: false,
            cacert: None,
            ip_tos: None,
            debug_http: false,
            list_threads: 16,
        }
    }
}

/// One HTTP request, described independently of any attempt.
struct Req {
    method: Method,
    /// Object key, or `None` for the bucket itself.
    key: Option<String>,
    /// Query parameters (values unescaped).
    query: Vec<(&'static str, String)>,
    /// Headers to send and sign.
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    /// Most bytes a successful answer's body may have; `None`: decided by [`S3Store::body_limit`].
    max_body: Option<usize>,
}

impl Req {
    fn new(method: Method, key: Option<String>) -> Self {
        Req { method, key, query: Vec::new(), headers: Vec::new(), body: Bytes::new(), max_body: None }
    }
}

/// Keys in one LIST page we ask for (`max-keys`).
const LIST_PAGE_KEYS: usize = 1000;

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
const DEFAULT_OBJECT_LIMIT: usize = 64 << 20;

/// A response whose body has been read in full.
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The S3 transport.
pub struct S3Store {
    cfg: S3Config,
    client: HttpClient,
    creds: creds::Provider,
    stats: Arc<HttpStats>,
    /// `scheme://` of the endpoint.
    scheme: String,
    /// `host[:port]/path/` of the endpoint (after the scheme).
    rest: String,
    user_agent: String,
    /// Set once the server has answered any request. Until then a refusal that asking again
    /// will not change (wrong keys, a redirect, a closed port) fails at once, so a mistyped
    /// command line gets its one-line error without waiting out the retry budget.
    contacted: AtomicBool,
    /// Whether mount-token writes carry preconditions (until the server refuses them with 501).
    cond: token::CondWrites,
    /// Most bytes of an object's body (from the block size, once known).
    object_limit: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("base_url", &self.cfg.base_url).field("bucket", &self.cfg.bucket).finish()
    }
}

impl S3Store {
    /// Builds the transport. No request is sent: as upstream, a mount sends only the requests it
    /// needs (HEAD of block 0 to detect the size, the mount token, then block GETs and PUTs), so
    /// keys that may not list the bucket, and public read-only images, work. A missing bucket or
    /// refused keys surface as the first of those requests' errors.
    pub fn new(cfg: S3Config) -> Result<Self> {
        let (scheme, rest) = cfg
            .base_url
            .split_once("://")
            .map(|(s, r)| (format!("{s}://"), r.to_string()))
            .ok_or_else(|| StoreError::Other(format!("invalid base URL \"{}\"", cfg.base_url)))?;
        let client = HttpClient::new(&ClientOptions {
            timeout: cfg.timeout,
            connect_timeout: cfg.timeout.min(Duration::from_secs(15)),
            http11: cfg.http11,
            insecure: cfg.insecure,
            cacert: cfg.cacert.clone(),
            ip_tos: cfg.ip_tos,
        })
        .map_err(StoreError::Other)?;
        Ok(S3Store {
            creds: creds::Provider::new(cfg.credentials.clone()),
            cfg,
            client,
            stats: Arc::new(HttpStats::default()),
            scheme,
            rest,
            user_agent: format!("s3backer-rs/{}", env!("CARGO_PKG_VERSION")),
            contacted: AtomicBool::new(false),
            cond: token::CondWrites::default(),
            object_limit: std::sync::atomic::AtomicUsize::new(DEFAULT_OBJECT_LIMIT),
        })
    }

    /// The transport's counters, to register in the stats registry.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Most bytes the body of a successful answer to `req` may have: an object's size for an
    /// object GET, a page for a LIST or a multi-object DELETE, a small document otherwise.
    fn body_limit(&self, req: &Req) -> usize {
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
    fn url(&self, key: Option<&str>, query: &[(&'static str, String)]) -> String {
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

    /// Sends one attempt and reads the whole answer.
    async fn attempt(&self, req: &Req) -> Result<Resp> {
        let url = self.url(req.key.as_deref(), &req.query);
        let mut headers: Vec<(String, String)> = req.headers.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        let keys = self.creds.keys(&self.client).await?;
        if keys.is_none() && !req.body.is_empty() && !req.headers.iter().any(|(n, _)| *n == "content-md5") {
            // Unsigned: no payload hash protects the body, so let the server check an MD5.
            headers.push(("content-md5".into(), content_md5(&req.body)));
        }
        if let Some(keys) = keys {
            let signed = sign::sigv4_headers_off_runtime(
                &keys,
                &self.cfg.region,
                req.method.as_str(),
                &url,
                &headers,
                &req.body,
                SystemTime::now(),
            )
            .await?;
            headers.extend(signed);
        }
        headers.push(("user-agent".into(), self.user_agent.clone()));
        let started = Instant::now();
        let client::Response { status, headers: resp_headers, body } = self
            .client
            .send_limited(req.method.clone(), &url, &headers, req.body.clone(), self.body_limit(req))
            .await
            .map_err(transport_error)?;
        let elapsed = started.elapsed();
        if self.cfg.debug_http {
            log::info!("HTTP {} {url} -> {status} ({} ms)", req.method, elapsed.as_millis());
        }
        let limit = if req.body.is_empty() { self.cfg.max_download_speed } else { self.cfg.max_upload_speed };
        let moved = req.body.len().max(body.len()) as u64;
        if let Some(rate) = limit.filter(|&r| r > 0) {
            let want = Duration::from_secs_f64(moved as f64 / rate as f64);
            if want > elapsed {
                tokio::time::sleep(want - elapsed).await;
            }
        }
        let resp = Resp { status, headers: resp_headers, body };
        match status {
            // A 404 is an answer about the key, unless the bucket itself is missing (only an
            // answer with a body can say so; a HEAD's cannot).
            404 if error_code(&resp.body).as_deref() == Some("NoSuchBucket") => Err(self.no_such_bucket()),
            200..=299 | 304 | 404 => Ok(resp),
            _ => {
                let err = status_error(&resp, &self.cfg, req.key.as_deref());
                if self.cfg.debug_http && !resp.body.is_empty() {
                    log::info!("HTTP error body: {}", String::from_utf8_lossy(&resp.body[..resp.body.len().min(2000)]));
                }
                Err(err)
            }
        }
    }

    /// Sends a request, retrying failures as upstream does (`retries = false`: one attempt).
    async fn send(&self, req: &Req, retries: bool) -> Result<Resp> {
        self.send_with(req, if retries { retry::is_retryable } else { |_| false }).await
    }

    /// Sends a request, retrying the failures `retry_if` accepts with the configured backoff.
    async fn send_with(&self, req: &Req, retry_if: fn(&StoreError) -> bool) -> Result<Resp> {
        let mut backoff = Backoff::new(self.cfg.initial_retry_pause, self.cfg.max_retry_pause);
        loop {
            match self.attempt(req).await {
                Ok(r) => {
                    self.contacted.store(true, Relaxed);
                    return Ok(r);
                }
                Err(e) => {
                    self.stats.count_error(&e);
                    let first_contact = !self.contacted.load(Relaxed);
                    let retry = retry_if(&e) && (!first_contact || retry::is_transient(&e));
                    let pause = if retry { backoff.next_pause() } else { None };
                    let Some(pause) = pause else { return Err(e) };
                    log::warn!(
                        "{} {}: {e}; retrying in {} ms",
                        req.method,
                        req.key.as_deref().unwrap_or("bucket"),
                        pause.as_millis()
                    );
                    bump(&self.stats.http_num_retries);
                    add_time(&self.stats.retry_delay_micros, pause);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Headers every object PUT carries (ACL, storage class, server-side encryption).
    fn put_headers(&self, req: &mut Req, content_type: &str) {
        req.headers.push(("content-type", content_type.to_string()));
        req.headers.push(("x-amz-acl", self.cfg.access_type.clone()));
        if let Some(sc) = &self.cfg.storage_class {
            req.headers.push(("x-amz-storage-class", sc.clone()));
        }
        if let Some(sse) = &self.cfg.sse {
            req.headers.push(("x-amz-server-side-encryption", sse.clone()));
        }
        if let Some(id) = &self.cfg.sse_key_id {
            req.headers.push(("x-amz-server-side-encryption-aws-kms-key-id", id.clone()));
        }
    }

    /// The error for a bucket the server says does not exist.
    fn no_such_bucket(&self) -> StoreError {
        StoreError::NoSuchBucket { bucket: self.cfg.bucket.clone(), endpoint: self.cfg.base_url.clone() }
    }

    /// Lists the keys under `prefix`, calling `each` with every key, one page at a time.
    async fn list_prefix(&self, prefix: &str, each: &(dyn Fn(&str) + Send + Sync)) -> Result<()> {
        let mut marker = String::new();
        loop {
            let mut req = Req::new(Method::GET, None);
            req.query = vec![
                ("marker", marker.clone()),
                ("max-keys", LIST_PAGE_KEYS.to_string()),
                ("prefix", prefix.to_string()),
            ];
            bump(&self.stats.http_lists);
            let resp = self.send_with(&req, retry::is_retryable_listing).await?;
            if resp.status == 404 {
                return Err(self.no_such_bucket());
            }
            let doc = String::from_utf8_lossy(&resp.body);
            let keys = xml::elements(&doc, "Key");
            for k in &keys {
                each(k);
            }
            let truncated = xml::first(&doc, "IsTruncated").is_some_and(|t| t.trim() == "true");
            let next = xml::first(&doc, "NextMarker").filter(|m| !m.is_empty()).or_else(|| keys.last().cloned());
            match next {
                Some(m) if truncated && m > marker => marker = m,
                _ => return Ok(()),
            }
        }
    }

    /// Every key under the volume's prefix that names a block, in no particular order.
    pub async fn list_blocks(&self) -> Result<Vec<BlockNum>> {
        let found = parking_lot::Mutex::new(Vec::new());
        self.list_objects(&|n| found.lock().push(n)).await?;
        Ok(found.into_inner())
    }
}

/// The `Content-MD5` header value of `body`.
fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// The `<Code>` of an S3 error document.
fn error_code(body: &[u8]) -> Option<String> {
    xml::first(&String::from_utf8_lossy(body), "Code")
}

/// Turns a failed transport-level attempt into the error upstream would count it as.
fn transport_error(e: TransportError) -> StoreError {
    match e {
        TransportError::Timeout(m) => StoreError::Timeout(m),
        TransportError::Connect(m) => StoreError::Connect(m),
        TransportError::TooLarge(m) | TransportError::Other(m) => StoreError::Other(m),
    }
}

/// The error for a status that is neither success nor an answer (404, 304), with a hint where
/// the fix is known.
fn status_error(resp: &Resp, cfg: &S3Config, key: Option<&str>) -> StoreError {
    let code = error_code(&resp.body);
    let what = match key {
        Some(k) => format!("object \"{k}\" in bucket \"{}\"", cfg.bucket),
        None => format!("bucket \"{}\"", cfg.bucket),
    };
    let detail = code.map(|c| format!(" ({c})")).unwrap_or_default();
    match resp.status {
        401 => StoreError::Unauthorized(format!("{what}{detail}: check the access key id and secret")),
        403 => StoreError::Forbidden(format!("{what}{detail}: check the credentials and the bucket's permissions")),
        412 => StoreError::Stale(key.and_then(|k| cfg.keys.parse_key(k)).unwrap_or(0)),
        301 | 302 | 307 | 308 => {
            let region = resp
                .header("x-amz-bucket-region")
                .map(str::to_string)
                .or_else(|| xml::first(&String::from_utf8_lossy(&resp.body), "Region"));
            let hint = match region {
                Some(r) if r != cfg.region => format!("the bucket is in region {r}: use --region={r}"),
                _ => "try --vhost, or --region with the bucket's region".to_string(),
            };
            StoreError::Redirect(format!("{what} answered HTTP {}{detail}; {hint}", resp.status))
        }
        status => StoreError::Http { status, message: format!("{what}{detail}") },
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        let mut req = Req::new(Method::GET, Some(self.cfg.keys.block_key(n)));
        match cond {
            ReadCondition::None => {}
            ReadCondition::IfMatch(e) => req.headers.push(("if-match", e.quoted())),
            ReadCondition::IfNoneMatch(e) => req.headers.push(("if-none-match", e.quoted())),
        }
        let started = Instant::now();
        let resp = self.send(&req, true).await?;
        // As upstream, only successful transfers count (not 304 or 404 answers).
        if (200..300).contains(&resp.status) {
            bump(&self.stats.http_gets);
            add_time(&self.stats.get_micros, started.elapsed());
        }
        match resp.status {
            304 => {
                bump(&self.stats.http_verified);
                Ok(GetOutcome::NotModified)
            }
            404 => {
                bump(&self.stats.http_zero_blocks_read);
                Ok(GetOutcome::NotFound)
            }
            _ => {
                if matches!(cond, ReadCondition::IfNoneMatch(_)) {
                    bump(&self.stats.http_mismatch);
                }
                bump(&self.stats.http_normal_blocks_read);
                let etag = resp.header("etag").and_then(Etag::parse);
                let body = ObjectBody {
                    content_encoding: resp.header("content-encoding").map(str::to_string),
                    hmac: resp.header(HMAC_HEADER).map(str::to_string),
                    data: resp.body,
                };
                Ok(GetOutcome::Found { body, etag })
            }
        }
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        let mut req = Req::new(Method::PUT, Some(self.cfg.keys.block_key(n)));
        req.body = body.data;
        self.put_headers(&mut req, BLOCK_CONTENT_TYPE);
        if let Some(enc) = body.content_encoding {
            req.headers.push(("content-encoding", enc));
        }
        if let Some(v) = volume {
            req.headers.push((BLOCK_SIZE_HEADER, v.block_size.to_string()));
            req.headers.push((FILE_SIZE_HEADER, v.file_size.to_string()));
        }
        if let Some(h) = body.hmac {
            req.headers.push((HMAC_HEADER, h));
        }
        let started = Instant::now();
        let resp = self.send(&req, true).await?;
        if (200..300).contains(&resp.status) {
            bump(&self.stats.http_puts);
            add_time(&self.stats.put_micros, started.elapsed());
        }
        if resp.status == 404 {
            // Only a missing bucket makes a PUT answer 404.
            return Err(self.no_such_bucket());
        }
        bump(&self.stats.http_normal_blocks_written);
        Ok(resp.header("etag").and_then(Etag::parse))
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        let req = Req::new(Method::DELETE, Some(self.cfg.keys.block_key(n)));
        let started = Instant::now();
        self.send(&req, true).await?;
        // A DELETE of a missing object counts as a success, as upstream.
        bump(&self.stats.http_deletes);
        add_time(&self.stats.delete_micros, started.elapsed());
        bump(&self.stats.http_zero_blocks_written);
        Ok(())
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        for chunk in blocks.chunks(MAX_DELETE_KEYS) {
            if chunk.len() == 1 {
                self.delete_object(chunk[0]).await?;
                continue;
            }
            let mut doc = String::from("<Delete>");
            for &n in chunk {
                doc.push_str("<Object><Key>");
                doc.push_str(&xml::escape(&self.cfg.keys.block_key(n)));
                doc.push_str("</Key></Object>");
            }
            doc.push_str("</Delete>");
            let mut req = Req::new(Method::POST, None);
            req.query = vec![("delete", String::new())];
            req.body = Bytes::from(doc);
            req.headers.push(("content-type", "application/xml".into()));
            req.headers.push(("content-md5", content_md5(&req.body)));
            let started = Instant::now();
            let result = self.send(&req, true).await;
            if result.as_ref().is_ok_and(|r| (200..300).contains(&r.status)) {
                bump(&self.stats.http_deletes);
                add_time(&self.stats.delete_micros, started.elapsed());
            }
            match result {
                Ok(resp) if resp.status == 404 => return Err(self.no_such_bucket()),
                Ok(resp) => {
                    let text = String::from_utf8_lossy(&resp.body);
                    let errors = xml::elements(&text, "Error");
                    if let Some(first) = errors.first() {
                        return Err(StoreError::Other(format!(
                            "multi-object DELETE failed for {} of {} keys: {}",
                            errors.len(),
                            chunk.len(),
                            xml::first(first, "Message").or_else(|| xml::first(first, "Code")).unwrap_or_default()
                        )));
                    }
                    self.stats.http_zero_blocks_written.fetch_add(chunk.len() as u64, Relaxed);
                }
                // Servers without multi-object DELETE: one request per object.
                Err(StoreError::Http { status: 501 | 405, .. }) => {
                    for &n in chunk {
                        self.delete_object(n).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let keys = &self.cfg.keys;
        let each = |k: &str| {
            if let Some(n) = keys.parse_key(k) {
                sink(n)
            }
        };
        // Every block key continues the prefix with a hex digit: one LIST stream per digit.
        let threads = self.cfg.list_threads.clamp(1, 16);
        let digits: Vec<String> = "0123456789abcdef".chars().map(|c| format!("{}{c}", keys.prefix)).collect();
        for group in digits.chunks(threads) {
            let results = futures_join_all(group.iter().map(|p| self.list_prefix(p, &each)).collect::<Vec<_>>()).await;
            for r in results {
                r?;
            }
        }
        Ok(())
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        let req = Req::new(Method::HEAD, Some(self.cfg.keys.block_key(0)));
        bump(&self.stats.http_heads);
        let resp = self.send(&req, true).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        let num = |h: &str| resp.header(h).and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0);
        match (num(BLOCK_SIZE_HEADER), num(FILE_SIZE_HEADER)) {
            (Some(bs), Some(fs)) => {
                let block_size = u32::try_from(bs).map_err(|_| StoreError::Corrupt {
                    block: 0,
                    reason: format!("block size header {bs} is too large"),
                })?;
                Ok(Some(VolumeMeta { block_size, file_size: fs }))
            }
            _ => Ok(None),
        }
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        let key = self.cfg.keys.mount_token_key();
        let head = Req::new(Method::HEAD, Some(key.clone()));
        bump(&self.stats.http_heads);
        let resp = self.send(&head, true).await?;
        let old = if resp.status == 404 {
            0
        } else {
            match resp.header(MOUNT_TOKEN_HEADER) {
                Some(v) => u32::from_str_radix(v.trim(), 16).unwrap_or(1),
                None => 1,
            }
        };
        match op {
            TokenOp::Read => {}
            TokenOp::Clear => {
                self.send(&Req::new(Method::DELETE, Some(key)), true).await?;
            }
            TokenOp::Set(token) => {
                self.send(&self.token_put(token), true).await?;
            }
        }
        Ok(old)
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.swap_token(expected, new).await
    }

    fn set_block_size(&self, block_size: u32) {
        self.object_limit.store(object_size_limit(block_size), Relaxed);
    }

    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }
}

/// Runs futures concurrently on the current task and returns their results in order.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// This machine's host name, for the mount-token object's body.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `YYYYmmddTHHMMSSZ` (UTC), as upstream writes in the mount-token body.
fn httpdate_compact(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn status_errors_carry_hints() {
        let cfg = S3Config::new("http://h/", "bkt");
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-bucket-region", "eu-west-1".parse().unwrap());
        let r = Resp { status: 301, headers, body: Bytes::new() };
        let e = status_error(&r, &cfg, None).to_string();
        assert!(e.contains("--region=eu-west-1"), "{e}");
        let r = Resp {
            status: 403,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"<Error><Code>AccessDenied</Code></Error>"),
        };
        let e = status_error(&r, &cfg, Some("00000001"));
        assert!(matches!(e, StoreError::Forbidden(_)) && e.to_string().contains("AccessDenied"), "{e}");
        let r = Resp { status: 503, headers: HeaderMap::new(), body: Bytes::new() };
        assert!(matches!(status_error(&r, &cfg, None), StoreError::Http { status: 503, .. }));
    }

    #[tokio::test]
    async fn join_all_keeps_order() {
        let out = futures_join_all(vec![
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>,
            Box::pin(async { 2 }),
        ])
        .await;
        assert_eq!(out, vec![1, 2]);
    }
}
