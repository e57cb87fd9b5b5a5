//! [`S3Config`]: everything the S3 transport needs to know, settled by the command line. Plain
//! data with every value already checked, so the transport never parses or refuses a setting
//! itself, and tests can build one directly.

use crate::client::ConnectionOptions;
use crate::creds::Credentials;
use crate::retry::RetryPauses;
use s3b_store::keys::BlockKeys;
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
    /// What new objects are stored with.
    pub new_objects: ObjectOptions,
    /// Time limit of one attempt (connect + transfer).
    pub timeout: Duration,
    /// The pauses between the attempts of one operation.
    pub retry: RetryPauses,
    /// Per-transfer speed limits.
    pub speed: SpeedLimits,
    /// How connections are made.
    pub connection: ConnectionOptions,
    /// Log every request and error body.
    pub debug_http: bool,
    /// Parallel LIST streams.
    pub list_threads: usize,
}

/// The headers every new object is stored with.
#[derive(Clone, Debug)]
pub struct ObjectOptions {
    /// `x-amz-acl`.
    pub access_type: String,
    /// `x-amz-storage-class`.
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption`.
    pub sse: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id`.
    pub sse_key_id: Option<String>,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions { access_type: "private".into(), storage_class: None, sse: None, sse_key_id: None }
    }
}

/// Per-transfer speed limits in bytes per second; `None` = unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeedLimits {
    /// Uploads (PUT bodies).
    pub upload: Option<u64>,
    /// Downloads (GET bodies).
    pub download: Option<u64>,
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
            new_objects: ObjectOptions::default(),
            timeout: Duration::from_secs(30),
            retry: RetryPauses::default(),
            speed: SpeedLimits::default(),
            connection: ConnectionOptions::default(),
            debug_http: false,
            list_threads: 16,
        }
    }
}
