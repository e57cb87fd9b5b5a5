//! The S3 transport: an [`ObjectStore`](s3b_store::ObjectStore) that keeps each block as one object in an S3 bucket,
//! byte-for-byte as C s3backer does, so volumes move between the two implementations.
//!
//! Requests go over hyper ([`client`]: rustls, HTTP/1.1 or HTTP/2, our own sockets for
//! `--ipTOS`) and are signed with AWS Signature V4 by
//! the `aws-sigv4` crate — signing is not hand-rolled. Every attempt recomputes the date and the
//! signature and resends the whole body. Failures are retried as upstream does (see [`retry`]):
//! everything but 404 and 304, with a doubling pause whose total is capped by `--maxRetryPause`.
//!
//! Object layout, as upstream's: block keys from [`BlockKeys`](s3b_store::keys::BlockKeys);
//! PUTs carry `Content-Type: application/x-s3backer-block`, `x-amz-acl`, the codec's `Content-Encoding` and
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
//! second check of the same bytes, and MD5 has no CPU support, so it costs several times what
//! SHA-256 does (the measurement is in docs/design-notes.md). So `Content-MD5` is sent only on
//! unsigned (anonymous) uploads, where it is the only check, and on multi-object DELETE, which
//! S3 requires it for.
//!
//! Bounded answers: every request knows how long a successful answer's body can be
//! ([`object_size_limit`] for an object GET once the block size is known, [`LIST_PAGE_LIMIT`] for
//! a LIST page or a multi-object DELETE, 64 KiB otherwise), and [`client`] refuses a longer one
//! as soon as it is announced or received; so a broken or hostile server costs bounded memory,
//! and (with the whole-exchange `--timeout`) bounded time, on every attempt.

//! Modules: [`config`] (what the command line settles), `request` (building one request: URL,
//! headers, body limits), `send` (one attempt, and the retry loop around it), `objects` (the
//! [`ObjectStore`](s3b_store::ObjectStore) operations), `listing` (LIST streams), `token` (the mount-token protocol),
//! [`client`] (the HTTP client), [`creds`] and [`sign`] (credentials and signing), [`retry`]
//! (the retry policy, decided in one place), [`stats`], [`xml`].

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod creds;
pub mod error;
mod listing;
mod named;
mod objects;
pub mod observe;
mod request;
pub mod retry;
mod send;
pub mod sign;
pub mod stats;
mod token;
pub mod xml;

pub use client::ConnectionOptions;
pub use config::{ObjectOptions, S3Config, SpeedLimits};
pub use creds::{Credentials, Keys};
pub use error::{HttpError, ServiceError, SetupError, SignError, Subject};
pub use request::{LIST_PAGE_LIMIT, object_size_limit};
pub use retry::RetryPauses;
pub use stats::HttpStats;
pub use token::{SETTLE_BOUND, SETTLE_WAIT};

use client::{ClientOptions, HttpClient};
use s3b_store::Result;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
/// Longest wait for a TCP connection (shorter if `--timeout` is): a server that takes longer
/// to accept is down or unreachable, and the request is better retried on a new connection
/// than left to use up the request's whole timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Monitoring of each attempt ([`observe`]).
    observer: observe::Slot,
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
            .ok_or_else(|| SetupError::BaseUrl(cfg.base_url.clone()))?;
        let client = HttpClient::new(&ClientOptions {
            timeout: cfg.timeout,
            connect_timeout: cfg.timeout.min(MAX_CONNECT_TIMEOUT),
            connection: cfg.connection.clone(),
        })
        .map_err(SetupError::from)?;
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
            object_limit: std::sync::atomic::AtomicUsize::new(request::DEFAULT_OBJECT_LIMIT),
            observer: observe::Slot::default(),
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
}
