//! [`S3Config`]: everything the S3 transport needs to know, settled by the command line.

use crate::creds::Credentials;
use s3b_store::keys::BlockKeys;
use std::path::PathBuf;
use std::time::Duration;

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
