//! Flags of layers that are not built yet are refused, never silently ignored.
//!
//! Each entry names a flag and says whether the command line set it. When a layer lands, its
//! entries are removed here and its flags are handled in [`crate::stack`].

use crate::args::Cli;
use anyhow::{Result, bail};

/// Fails with "not supported yet" for the first flag of a missing layer that was given.
pub fn check(cli: &Cli) -> Result<()> {
    let s = &cli.s3;
    let k = &cli.cache;
    let d = &cli.codec;
    let given: &[(&str, bool)] = &[
        // S3 transport (crates/http).
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
        // Block cache, zero cache, read-ahead, consistency layer (crates/cache, crates/ec).
        ("--blockCacheSize", k.block_cache_size.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--blockCacheThreads", k.block_cache_threads.is_some()),
        ("--blockCacheWriteDelay", k.block_cache_write_delay.is_some()),
        ("--blockCacheTimeout", k.block_cache_timeout.is_some()),
        ("--blockCacheMaxDirty", k.block_cache_max_dirty.is_some()),
        ("--blockCacheSync", k.block_cache_sync),
        ("--blockCacheFile", k.block_cache_file.is_some()),
        ("--blockCacheNoVerify", k.block_cache_no_verify),
        ("--blockCacheRecoverDirtyBlocks", k.block_cache_recover_dirty_blocks),
        ("--blockCacheNumProtected", k.block_cache_num_protected.is_some()),
        ("--blockCacheFileAdvise", k.block_cache_file_advise),
        ("--readAhead", k.read_ahead.is_some()),
        ("--readAheadTrigger", k.read_ahead_trigger.is_some()),
        ("--md5CacheSize", k.md5_cache_size.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--md5CacheTime", k.md5_cache_time.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--minWriteDelay", k.min_write_delay.as_deref().is_some_and(|v| v.trim() != "0")),
        ("--sharedDiskMode", k.shared_disk_mode),
        ("--statsFileMirror", k.stats_file_mirror.is_some()),
        ("--statsFileMirrorInterval", k.stats_file_mirror_interval.is_some()),
        // Codec (crates/codec).
        ("--compress", d.compress.is_some()),
        ("--compress-level", d.compress_level.is_some()),
        ("--encrypt", d.encrypt.is_some()),
        ("--password", d.password.is_some()),
        ("--passwordFile", d.password_file.is_some()),
        ("--keyLength", d.key_length.is_some()),
        ("--defaultContentEncoding", d.default_content_encoding.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        bail!("{flag} is not supported yet");
    }
    if !cli.core.test && !cli.positional.is_empty() {
        bail!("S3 buckets are not supported yet; use --test DIRECTORY to store blocks in a local directory");
    }
    Ok(())
}
