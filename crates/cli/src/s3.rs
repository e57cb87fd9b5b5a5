//! The S3 side of the command line: opening a bucket as the transport and the maintenance
//! modes that work on a bucket (`--erase`, `--reset-mounted-flag`).
//!
//! The S3 transport is not built yet, so everything here refuses with "not supported yet".

use crate::args::Cli;
use crate::config::Config;
use anyhow::{Result, bail};
use s3b_store::ObjectStore;
use s3b_store::keys::BlockKeys;
use std::sync::Arc;

/// Refuses a bucket location while the S3 transport is missing.
pub(crate) fn check_supported(cli: &Cli) -> Result<()> {
    if !cli.core.test && !cli.positional.is_empty() {
        bail!("S3 buckets are not supported yet; use --test DIRECTORY to store blocks in a local directory");
    }
    Ok(())
}

/// Opens the bucket named by the configuration as the transport.
pub fn open_bucket(_cfg: &Config, _keys: BlockKeys) -> Result<Arc<dyn ObjectStore>> {
    bail!("S3 buckets are not supported yet")
}

/// `--erase`: deletes every block object and the mount token.
pub fn erase(_cfg: Config) -> Result<i32> {
    bail!("--erase is not supported yet")
}

/// `--reset-mounted-flag`: clears the mount token and exits.
pub fn reset_mounted_flag(_cfg: Config) -> Result<i32> {
    bail!("--reset-mounted-flag is not supported yet")
}

/// Flags of the S3 transport that are not handled yet (see [`crate::unsupported`]).
pub(crate) fn unsupported_flags(cli: &Cli) -> Vec<(&'static str, bool)> {
    let s = &cli.s3;
    vec![
        ("--baseURL", s.base_url.is_some()),
        ("--region", s.region.is_some()),
        ("--vhost", s.vhost),
        ("--no-vhost", s.no_vhost),
        ("--ssl", s.ssl),
        ("--insecure", s.insecure),
        ("--cacert", s.cacert.is_some()),
        ("--accessId", s.access_id.is_some()),
        ("--accessKey", s.access_key.is_some()),
        ("--accessFile", s.access_file.is_some()),
        ("--accessKeyEnv", s.access_key_env.is_some()),
        ("--accessEC2IAM", s.access_ec2_iam.is_some()),
        ("--accessEC2IAM-IMDSv2", s.access_ec2_iam_imdsv2),
        ("--authVersion", s.auth_version.is_some()),
        ("--accessType", s.access_type.is_some()),
        ("--storageClass", s.storage_class.is_some()),
        ("--rrs", s.rrs),
        ("--sse", s.sse.is_some()),
        ("--sse-key-id", s.sse_key_id.is_some()),
        ("--timeout", s.timeout.is_some()),
        ("--initialRetryPause", s.initial_retry_pause.is_some()),
        ("--maxRetryPause", s.max_retry_pause.is_some()),
        ("--maxUploadSpeed", s.max_upload_speed.is_some()),
        ("--maxDownloadSpeed", s.max_download_speed.is_some()),
        ("--http11", s.http11),
        ("--noCurlCache", s.no_curl_cache),
        ("--ipTOS", s.ip_tos.is_some()),
        ("--debug-http", s.debug_http),
        ("--noAutoDetect", s.no_auto_detect),
        ("--listBlocks", s.list_blocks),
        ("--listBlocksThreads", s.list_blocks_threads.is_some()),
    ]
}
