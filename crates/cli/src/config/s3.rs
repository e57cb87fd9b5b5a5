//! S3 settings: the S3 flags checked into the transport's configuration ([`S3Config`]),
//! credentials included, before the process daemonizes. Checks only: nothing is sent. Defaults
//! are the transport's own ([`S3Config::new`]).

use crate::args::s3::S3Args;
use crate::size::unparse_size;
use anyhow::{Context, Result, bail};
use s3b_http::creds::discover::{CredentialFlags, discover};
use s3b_http::{Credentials, S3Config};
use s3b_store::keys::BlockKeys;
use std::path::PathBuf;
use std::time::Duration;

/// What the S3 settings need to know of the volume.
pub(super) struct Volume<'a> {
    pub(super) bucket: &'a str,
    pub(super) keys: BlockKeys,
    pub(super) block_size: Option<u32>,
    pub(super) read_only: bool,
    pub(super) quiet: bool,
}

/// Checks the S3 flags of a volume into the transport's configuration.
pub(super) fn settings(s: &S3Args, v: Volume) -> Result<S3Config> {
    let bucket = v.bucket;
    if bucket.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        bail!("invalid bucket name \"{bucket}\"");
    }
    let mut c = S3Config::new(String::new(), bucket);
    c.keys = v.keys;
    endpoint(s, &mut c)?;
    object_options(s, &mut c)?;
    transfer(s, v.block_size, &mut c)?;
    tls(s, &mut c)?;
    c.credentials = discover(&credential_flags(s))?;
    if matches!(c.credentials, Credentials::Anonymous) && !v.read_only && !v.quiet {
        log::warn!(
            "no S3 credentials found: requests will be unsigned (only public buckets work; consider --readOnly)"
        );
    }
    if s.no_curl_cache {
        log::warn!("--noCurlCache has no effect (connections are pooled by the HTTP client)");
    }
    c.debug_http = s.debug_http;
    Ok(c)
}

/// Region, base URL and addressing style.
fn endpoint(s: &S3Args, c: &mut S3Config) -> Result<()> {
    if s.vhost && s.no_vhost {
        bail!("--vhost and --no-vhost cannot be used together");
    }
    let default_region = c.region.clone();
    if let Some(r) = &s.region {
        c.region = r.clone();
    }
    let custom_region = c.region != default_region;
    c.base_url = match &s.base_url {
        Some(u) => {
            if s.ssl && !u.starts_with("https://") {
                bail!("--ssl conflicts with the non-https --baseURL \"{u}\"");
            }
            u.clone()
        }
        None => {
            let scheme = if s.ssl { "https" } else { "http" };
            if custom_region {
                format!("{scheme}://s3.{}.amazonaws.com/", c.region)
            } else {
                format!("{scheme}://s3.amazonaws.com/")
            }
        }
    };
    // As upstream 2.x: a non-default region implies virtual-hosted URLs unless --no-vhost.
    c.vhost = s.vhost || (custom_region && s.base_url.is_none() && !s.no_vhost);
    if c.vhost && c.bucket.contains('.') && c.base_url.starts_with("https://") {
        log::warn!(
            "bucket names with dots do not match the TLS certificate in virtual-hosted style; consider --no-vhost"
        );
    }
    Ok(())
}

/// What new objects are stored with: ACL, storage class, server-side encryption.
fn object_options(s: &S3Args, c: &mut S3Config) -> Result<()> {
    if let Some(t) = &s.access_type {
        c.new_objects.access_type = t.clone();
    }
    c.new_objects.storage_class = match (&s.storage_class, s.rrs) {
        (Some(_), true) => bail!("--rrs and --storageClass cannot be used together"),
        (None, true) => Some("REDUCED_REDUNDANCY".to_string()),
        (class, false) => class.clone(),
    };
    match (s.sse.as_deref(), &s.sse_key_id) {
        (Some("aws:kms"), None) => bail!("--sse=aws:kms requires --sse-key-id"),
        (Some("AES256") | None, Some(_)) => bail!("--sse-key-id requires --sse=aws:kms"),
        _ => {}
    }
    c.new_objects.sse = s.sse.clone();
    c.new_objects.sse_key_id = s.sse_key_id.clone();
    Ok(())
}

/// Time limits, retry pauses, speed limits, parallel listing, HTTP version and IP TOS.
fn transfer(s: &S3Args, block_size: Option<u32>, c: &mut S3Config) -> Result<()> {
    c.timeout = s.timeout.unwrap_or(c.timeout);
    c.retry.initial = s.initial_retry_pause.unwrap_or(c.retry.initial);
    c.retry.max_total = s.max_retry_pause.unwrap_or(c.retry.max_total);
    if c.retry.initial > c.retry.max_total {
        bail!("--initialRetryPause must not exceed --maxRetryPause");
    }
    let speed = |bits: Option<u64>, flag: &str| -> Result<Option<u64>> {
        let Some(bits) = bits else { return Ok(None) };
        let bytes = bits / 8;
        if let Some(bs) = block_size
            && Duration::from_secs_f64(bs as f64 / bytes as f64) >= c.timeout
        {
            bail!(
                "{flag} \"{}\" is too slow: one {bs}-byte block would take longer than --timeout",
                unparse_size(bits)
            );
        }
        Ok(Some(bytes))
    };
    c.speed.upload = speed(s.max_upload_speed, "--maxUploadSpeed")?;
    c.speed.download = speed(s.max_download_speed, "--maxDownloadSpeed")?;
    c.list_threads = s.list_blocks_threads.unwrap_or(c.list_threads);
    c.connection.http11 = s.http11;
    c.connection.ip_tos = s.ip_tos;
    Ok(())
}

/// Certificate checks: `--insecure`, `--cacert`.
fn tls(s: &S3Args, c: &mut S3Config) -> Result<()> {
    if let Some(p) = &s.cacert {
        let p = PathBuf::from(p);
        std::fs::metadata(&p).with_context(|| format!("--cacert {}", p.display()))?;
        c.connection.cacert = Some(p);
    }
    if s.insecure {
        log::warn!("--insecure: the server's TLS certificate will not be verified");
    }
    c.connection.insecure = s.insecure;
    Ok(())
}

/// The credential flags, for [`discover`].
fn credential_flags(s: &S3Args) -> CredentialFlags {
    CredentialFlags {
        access_id: s.access_id.clone(),
        access_key: s.access_key.clone(),
        access_key_env: s.access_key_env.clone(),
        access_file: s.access_file.as_ref().map(PathBuf::from),
        ec2_iam_role: s.access_ec2_iam.clone(),
        imdsv2: s.access_ec2_iam_imdsv2,
    }
}
