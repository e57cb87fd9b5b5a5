//! S3 transport flags, with upstream's names and defaults. Owned by the S3 transport
//! (crates/http); they are checked, credentials included, before the process daemonizes
//! (`config::s3`), so a bad one is reported on the terminal.

use super::values::{self, Flag};
use clap::Args;
use std::time::Duration;

/// Flags of the S3 transport.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// Base URL of the S3 endpoint; must end in '/'.
    #[arg(long = "baseURL", value_name = "URL", help_heading = "S3", value_parser = Flag(values::base_url))]
    pub base_url: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long = "region", value_name = "REGION", help_heading = "S3", value_parser = Flag(values::region))]
    pub region: Option<String>,
    /// Use virtual-hosted-style URLs (bucket.host/key).
    #[arg(long = "vhost", help_heading = "S3")]
    pub vhost: bool,
    /// Use path-style URLs even with --region.
    #[arg(long = "no-vhost", help_heading = "S3")]
    pub no_vhost: bool,
    /// Use https:// in the default base URL.
    #[arg(long = "ssl", help_heading = "S3")]
    pub ssl: bool,
    /// Do not verify the server's TLS certificate.
    #[arg(long = "insecure", help_heading = "S3")]
    pub insecure: bool,
    /// File of CA certificates to verify the server with.
    #[arg(long = "cacert", value_name = "FILE", help_heading = "S3")]
    pub cacert: Option<String>,
    /// Access key ID.
    #[arg(long = "accessId", value_name = "ID", help_heading = "Credentials")]
    pub access_id: Option<String>,
    /// Secret access key.
    #[arg(long = "accessKey", value_name = "KEY", help_heading = "Credentials")]
    pub access_key: Option<String>,
    /// File of id:key lines [default: ~/.s3backer_passwd].
    #[arg(long = "accessFile", value_name = "FILE", help_heading = "Credentials")]
    pub access_file: Option<String>,
    /// Read the secret access key from this environment variable.
    #[arg(long = "accessKeyEnv", value_name = "VAR", help_heading = "Credentials")]
    pub access_key_env: Option<String>,
    /// Get credentials from the EC2 instance metadata for this IAM role.
    #[arg(long = "accessEC2IAM", value_name = "ROLE", help_heading = "Credentials")]
    pub access_ec2_iam: Option<String>,
    /// Use IMDSv2 tokens with --accessEC2IAM.
    #[arg(long = "accessEC2IAM-IMDSv2", help_heading = "Credentials")]
    pub access_ec2_iam_imdsv2: bool,
    /// Request signing: aws4 [default: aws4].
    #[arg(long = "authVersion", value_name = "VERSION", help_heading = "Credentials",
          value_parser = Flag(values::auth_version))]
    pub auth_version: Option<String>,
    /// Canned ACL for new objects [default: private].
    #[arg(long = "accessType", value_name = "TYPE", help_heading = "S3", value_parser = Flag(values::access_type))]
    pub access_type: Option<String>,
    /// Storage class for new objects.
    #[arg(long = "storageClass", value_name = "CLASS", help_heading = "S3", value_parser = Flag(values::storage_class))]
    pub storage_class: Option<String>,
    /// Reduced redundancy storage (removed upstream; use --storageClass=REDUCED_REDUNDANCY).
    #[arg(long = "rrs", help_heading = "S3")]
    pub rrs: bool,
    /// Server-side encryption: AES256 or aws:kms.
    #[arg(long = "sse", value_name = "ALG", help_heading = "S3", value_parser = Flag(values::sse))]
    pub sse: Option<String>,
    /// KMS key ID for --sse=aws:kms.
    #[arg(long = "sse-key-id", value_name = "ID", help_heading = "S3")]
    pub sse_key_id: Option<String>,
    /// Time limit for one HTTP attempt, in seconds [default: 30].
    #[arg(long = "timeout", value_name = "SECONDS", help_heading = "S3", value_parser = Flag(values::seconds))]
    pub timeout: Option<Duration>,
    /// First pause before a retry, in milliseconds [default: 200].
    #[arg(long = "initialRetryPause", value_name = "MILLIS", help_heading = "S3", value_parser = Flag(values::millis))]
    pub initial_retry_pause: Option<Duration>,
    /// Total pause across the retries of one operation, in milliseconds [default: 30000].
    #[arg(long = "maxRetryPause", value_name = "MILLIS", help_heading = "S3", value_parser = Flag(values::millis))]
    pub max_retry_pause: Option<Duration>,
    /// Upload speed limit in bits per second (k/m/g suffixes).
    #[arg(long = "maxUploadSpeed", value_name = "BITSPERSEC", help_heading = "S3",
          value_parser = Flag(values::bits_per_second))]
    pub max_upload_speed: Option<u64>,
    /// Download speed limit in bits per second (k/m/g suffixes).
    #[arg(long = "maxDownloadSpeed", value_name = "BITSPERSEC", help_heading = "S3",
          value_parser = Flag(values::bits_per_second))]
    pub max_download_speed: Option<u64>,
    /// Use HTTP/1.1 only.
    #[arg(long = "http11", help_heading = "S3")]
    pub http11: bool,
    /// Accepted for compatibility; has no effect.
    #[arg(long = "noCurlCache", help_heading = "S3")]
    pub no_curl_cache: bool,
    /// IP type-of-service for HTTP connections (0-255 or a name).
    #[arg(long = "ipTOS", value_name = "TOS", help_heading = "S3", value_parser = Flag(values::ip_tos))]
    pub ip_tos: Option<u8>,
    /// Log HTTP requests and error bodies.
    #[arg(long = "debug-http", help_heading = "S3")]
    pub debug_http: bool,
    /// Do not auto-detect the block size and volume size.
    #[arg(long = "noAutoDetect", help_heading = "S3")]
    pub no_auto_detect: bool,
    /// Survey existing blocks at startup so reads of empty blocks need no request.
    #[arg(long = "listBlocks", help_heading = "S3")]
    pub list_blocks: bool,
    /// Parallel listing threads for --listBlocks [default: 16].
    #[arg(long = "listBlocksThreads", value_name = "NUM", help_heading = "S3",
          value_parser = Flag(values::list_threads))]
    pub list_blocks_threads: Option<usize>,
}
