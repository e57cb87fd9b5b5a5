//! The S3 side of the command line: validating the S3 flags into an [`S3Config`], finding the
//! credentials, opening the bucket as the transport, and the maintenance modes that work on a
//! bucket (`--erase`, `--reset-mounted-flag`).
//!
//! Credentials are searched in this order, first match wins: `--accessId`/`--accessKey`
//! (`--accessKeyEnv`), `--accessEC2IAM`, the access file (`--accessFile`, default
//! `~/.s3backer_passwd`), then — beyond upstream — `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN` and `~/.aws/credentials` (`AWS_PROFILE`); with none, requests go unsigned.

use crate::config::{Config, Location};
use crate::size::{parse_num, parse_size};
use anyhow::{Context, Result, anyhow, bail};
use s3b_http::{Credentials, Keys, S3Config, S3Store};
use s3b_store::keys::BlockKeys;
use s3b_store::{ObjectStore, StatsRegistry, TokenOp};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Canned ACLs accepted by `--accessType`.
const ACCESS_TYPES: &[&str] = &["private", "public-read", "public-read-write", "authenticated-read"];
/// Storage classes accepted by `--storageClass`.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "REDUCED_REDUNDANCY",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "EXPRESS_ONEZONE",
];
/// Region used when `--region` is not given.
const DEFAULT_REGION: &str = "us-east-1";

/// Parses `--ipTOS` as upstream: a name (`lowdelay`, `throughput`, `reliability`, `lowcost`,
/// `mincost`) or a number 0..=255 in C notation (decimal, `0x` hex, leading-`0` octal).
pub(crate) fn parse_ip_tos(v: &str) -> Result<u8> {
    let named = match v {
        "lowdelay" => Some(0x10),
        "throughput" => Some(0x08),
        "reliability" => Some(0x04),
        "lowcost" | "mincost" => Some(0x02),
        _ => None,
    };
    let num = || {
        let (digits, radix) = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            (h, 16)
        } else if v.len() > 1 && v.starts_with('0') {
            (&v[1..], 8)
        } else {
            (v, 10)
        };
        u8::from_str_radix(digits, radix).ok().filter(|_| !digits.starts_with(['+', '-']))
    };
    named.or_else(num).ok_or_else(|| {
        anyhow!("invalid --ipTOS value \"{v}\": expected 0..255 or lowdelay, throughput, reliability, lowcost, mincost")
    })
}

fn millis(v: &Option<String>, what: &str, default: u64) -> Result<Duration> {
    Ok(Duration::from_millis(
        v.as_deref().map(|s| parse_num::<u64>(s, what)).transpose().map_err(|e| anyhow!(e))?.unwrap_or(default),
    ))
}

/// Validates the S3 flags into the transport's configuration (credentials included). Checks
/// only: nothing is sent.
pub fn s3_config(cfg: &Config) -> Result<S3Config> {
    let Location::Bucket(bucket) = &cfg.location else { bail!("not a bucket") };
    let s = &cfg.cli.s3;
    if bucket.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        bail!("invalid bucket name \"{bucket}\"");
    }
    match s.auth_version.as_deref().map(str::trim) {
        None | Some("aws4") => {}
        Some("aws2") => bail!("--authVersion=aws2 is not supported (AWS signature version 2 is deprecated); use aws4"),
        Some(v) => bail!("invalid --authVersion \"{v}\": must be aws4"),
    }
    if s.vhost && s.no_vhost {
        bail!("--vhost and --no-vhost cannot be used together");
    }
    let region = s.region.clone().unwrap_or_else(|| DEFAULT_REGION.into());
    if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("invalid --region \"{region}\"");
    }
    let custom_region = region != DEFAULT_REGION;
    let base_url = match &s.base_url {
        Some(u) => {
            let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
            if !scheme_ok || u.len() <= u.find("://").unwrap_or(0) + 3 {
                bail!("invalid --baseURL \"{u}\": must start with http:// or https://");
            }
            if !u.ends_with('/') {
                bail!("invalid --baseURL \"{u}\": must end with '/'");
            }
            if s.ssl && !u.starts_with("https://") {
                bail!("--ssl conflicts with the non-https --baseURL \"{u}\"");
            }
            u.clone()
        }
        None => {
            let scheme = if s.ssl { "https" } else { "http" };
            if custom_region {
                format!("{scheme}://s3.{region}.amazonaws.com/")
            } else {
                format!("{scheme}://s3.amazonaws.com/")
            }
        }
    };
    // As upstream 2.x: a non-default region implies virtual-hosted URLs unless --no-vhost.
    let vhost = s.vhost || (custom_region && s.base_url.is_none() && !s.no_vhost);
    if vhost && (bucket.contains('.') && base_url.starts_with("https://")) {
        log::warn!(
            "bucket names with dots do not match the TLS certificate in virtual-hosted style; consider --no-vhost"
        );
    }
    let access_type = match &s.access_type {
        Some(t) if !ACCESS_TYPES.contains(&t.as_str()) => {
            bail!("invalid --accessType \"{t}\": must be one of {}", ACCESS_TYPES.join(", "))
        }
        Some(t) => t.clone(),
        None => "private".into(),
    };
    let storage_class = match (&s.storage_class, s.rrs) {
        (Some(_), true) => bail!("--rrs and --storageClass cannot be used together"),
        (None, true) => Some("REDUCED_REDUNDANCY".to_string()),
        (Some(c), false) if !STORAGE_CLASSES.contains(&c.as_str()) => {
            bail!("invalid --storageClass \"{c}\": must be one of {}", STORAGE_CLASSES.join(", "))
        }
        (c, false) => c.clone(),
    };
    let sse = match s.sse.as_deref() {
        None => None,
        Some(v @ ("AES256" | "aws:kms")) => Some(v.to_string()),
        Some(v) => bail!("invalid --sse \"{v}\": must be AES256 or aws:kms"),
    };
    match (sse.as_deref(), &s.sse_key_id) {
        (Some("aws:kms"), None) => bail!("--sse=aws:kms requires --sse-key-id"),
        (Some("AES256") | None, Some(_)) => bail!("--sse-key-id requires --sse=aws:kms"),
        _ => {}
    }
    let timeout = match &s.timeout {
        None => Duration::from_secs(30),
        Some(t) => match parse_num::<u64>(t, "--timeout") {
            Ok(0) => bail!("invalid --timeout \"{t}\": must be at least 1 second"),
            Ok(v) => Duration::from_secs(v),
            Err(e) => bail!(e),
        },
    };
    let initial_retry_pause = millis(&s.initial_retry_pause, "--initialRetryPause", 200)?;
    let max_retry_pause = millis(&s.max_retry_pause, "--maxRetryPause", 30_000)?;
    if initial_retry_pause > max_retry_pause {
        bail!("--initialRetryPause must not exceed --maxRetryPause");
    }
    let speed = |v: &Option<String>, what: &str| -> Result<Option<u64>> {
        let Some(v) = v else { return Ok(None) };
        let bits = parse_size(v, what).map_err(|e| anyhow!(e))?;
        let bytes = bits / 8;
        if bytes == 0 {
            bail!("invalid {what} \"{v}\": must be at least 8 bits per second");
        }
        if let Some(bs) = cfg.block_size
            && Duration::from_secs_f64(bs as f64 / bytes as f64) >= timeout
        {
            bail!("{what} \"{v}\" is too slow: one {bs}-byte block would take longer than --timeout");
        }
        Ok(Some(bytes))
    };
    let max_upload_speed = speed(&s.max_upload_speed, "--maxUploadSpeed")?;
    let max_download_speed = speed(&s.max_download_speed, "--maxDownloadSpeed")?;
    let list_threads = match &s.list_blocks_threads {
        None => 16,
        Some(v) => match parse_num::<usize>(v, "--listBlocksThreads") {
            Ok(n @ 1..=16) => n,
            Ok(_) => bail!("invalid --listBlocksThreads \"{v}\": must be between 1 and 16"),
            Err(e) => bail!(e),
        },
    };
    let cacert = match &s.cacert {
        Some(p) => {
            let p = PathBuf::from(p);
            std::fs::metadata(&p).map_err(|e| anyhow!("--cacert {}: {}", p.display(), crate::io_msg(&e)))?;
            Some(p)
        }
        None => None,
    };
    if s.insecure {
        log::warn!("--insecure: the server's TLS certificate will not be verified");
    }
    if s.no_curl_cache {
        log::warn!("--noCurlCache has no effect (connections are pooled by the HTTP client)");
    }
    let credentials = credentials(cfg)?;
    if matches!(credentials, Credentials::Anonymous) && !cfg.read_only && !cfg.quiet {
        log::warn!(
            "no S3 credentials found: requests will be unsigned (only public buckets work; consider --readOnly)"
        );
    }
    Ok(S3Config {
        base_url,
        bucket: bucket.clone(),
        vhost,
        region,
        credentials,
        keys: BlockKeys::new(cfg.prefix.clone(), cfg.hash_prefix),
        access_type,
        storage_class,
        sse,
        sse_key_id: s.sse_key_id.clone(),
        timeout,
        initial_retry_pause,
        max_retry_pause,
        max_upload_speed,
        max_download_speed,
        http11: s.http11,
        insecure: s.insecure,
        cacert,
        ip_tos: s.ip_tos.as_deref().map(parse_ip_tos).transpose()?,
        debug_http: s.debug_http,
        list_threads,
    })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// Finds the credentials (see the module documentation for the order).
fn credentials(cfg: &Config) -> Result<Credentials> {
    let s = &cfg.cli.s3;
    if s.access_key.is_some() && s.access_key_env.is_some() {
        bail!("--accessKey and --accessKeyEnv cannot be used together");
    }
    if s.access_ec2_iam_imdsv2 && s.access_ec2_iam.is_none() {
        bail!("--accessEC2IAM-IMDSv2 requires --accessEC2IAM");
    }
    if let Some(role) = &s.access_ec2_iam {
        if s.access_id.is_some() || s.access_key.is_some() || s.access_key_env.is_some() {
            bail!("--accessEC2IAM cannot be combined with --accessId, --accessKey or --accessKeyEnv");
        }
        if role.is_empty() || role.contains('/') {
            bail!("invalid --accessEC2IAM role \"{role}\"");
        }
        return Ok(Credentials::Ec2Iam { role: role.clone(), imdsv2: s.access_ec2_iam_imdsv2 });
    }
    let env_key = match &s.access_key_env {
        Some(var) => {
            Some(std::env::var(var).map_err(|_| anyhow!("--accessKeyEnv: environment variable {var} is not set"))?)
        }
        None => None,
    };
    if s.access_key.is_some() {
        log::warn!(
            "--accessKey on the command line is visible to other users in ps; prefer --accessFile or --accessKeyEnv"
        );
    }
    match (&s.access_id, s.access_key.clone().or(env_key)) {
        (Some(id), _) if id.is_empty() => return Ok(Credentials::Anonymous),
        (Some(id), Some(secret)) => return Ok(Credentials::Static(Keys { id: id.clone(), secret, token: None })),
        (None, Some(_)) => bail!("--accessKey (or --accessKeyEnv) requires --accessId"),
        _ => {}
    }
    // The access file: explicit (must exist) or the default (optional).
    let (file, explicit) = match &s.access_file {
        Some(f) => (Some(PathBuf::from(f)), true),
        None => (home().map(|h| h.join(".s3backer_passwd")), false),
    };
    if let Some(file) = file.filter(|f| explicit || f.exists()) {
        if let Some(k) = read_access_file(&file, s.access_id.as_deref())? {
            return Ok(Credentials::Static(k));
        }
        if explicit || s.access_id.is_some() {
            match &s.access_id {
                Some(id) => bail!("no secret key for access id \"{id}\" in {}", file.display()),
                None => bail!("no credentials in {}", file.display()),
            }
        }
    }
    if let Some(id) = &s.access_id {
        bail!("no secret key for access id \"{id}\": give --accessKey, --accessKeyEnv or an --accessFile entry");
    }
    if let (Ok(id), Ok(secret)) = (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY"))
        && !id.is_empty()
        && !secret.is_empty()
    {
        let token = std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty());
        return Ok(Credentials::Static(Keys { id, secret, token }));
    }
    let aws_file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    if let Some(f) = aws_file.filter(|f| f.exists()) {
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        if let Some(k) = read_aws_credentials(&f, &profile)? {
            return Ok(Credentials::Static(k));
        }
    }
    Ok(Credentials::Anonymous)
}

/// Reads `id:key` lines; returns the entry for `id`, or the first one when no id is given.
fn read_access_file(path: &Path, id: Option<&str>) -> Result<Option<Keys>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("can't read access file {}: {}", path.display(), crate::io_msg(&e)))?;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!("access file {} is readable by other users; chmod 600 it", path.display());
    }
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') || line.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((lid, key)) = line.split_once(':') else {
            bail!("{} line {}: expected accessId:accessKey", path.display(), i + 1);
        };
        if id.is_none_or(|id| id == lid) {
            return Ok(Some(Keys { id: lid.to_string(), secret: key.trim_end().to_string(), token: None }));
        }
    }
    Ok(None)
}

/// Reads one profile of an AWS shared credentials file.
fn read_aws_credentials(path: &Path, profile: &str) -> Result<Option<Keys>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow!("can't read {}: {}", path.display(), crate::io_msg(&e)))?;
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            in_profile = line[1..line.len() - 1].trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Ok(match (id, secret) {
        (Some(id), Some(secret)) => Some(Keys { id, secret, token }),
        _ => None,
    })
}

/// Opens the bucket as the transport and registers its counters. Nothing is sent yet: the
/// first request of the mount (size detection or the mount token) reports a missing bucket or
/// refused keys.
pub async fn open_bucket(cfg: &Config, stats: &StatsRegistry) -> Result<Arc<dyn ObjectStore>> {
    let store = S3Store::new(s3_config(cfg)?)?;
    stats.register(store.stats());
    Ok(Arc::new(store))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("can't start the runtime")
}

/// `--erase`: deletes every block object and the mount token.
pub fn erase(cfg: Config) -> Result<i32> {
    let store = S3Store::new(s3_config(&cfg)?)?;
    if cfg.read_only {
        bail!("--erase cannot be used with --readOnly");
    }
    runtime()?.block_on(async {
        let token = store.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
        if token != 0 && !cfg.force {
            bail!("volume appears to be mounted (mount token {token:08x}); unmount it first, or use --force");
        }
        let what = cfg.describe();
        if !cfg.force {
            if !std::io::stdin().is_terminal() {
                bail!("--erase needs confirmation on a terminal; use --force to erase without asking");
            }
            eprint!("s3backer: erase ALL blocks of {what}? This cannot be undone. Type \"y\" to confirm: ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).context("can't read the answer")?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                eprintln!("s3backer: not confirmed; nothing erased");
                return Ok(1);
            }
        }
        let blocks = store.list_blocks().await.context("can't list the blocks")?;
        let total = blocks.len();
        let show = std::io::stderr().is_terminal() && !cfg.quiet;
        let mut done = 0usize;
        for chunk in blocks.chunks(s3b_http::MAX_DELETE_KEYS) {
            store.delete_objects(chunk).await.context("can't delete blocks")?;
            done += chunk.len();
            if show {
                eprint!("\rs3backer: erasing: {done}/{total} blocks ({}%)", done * 100 / total.max(1));
            }
        }
        if show {
            eprintln!();
        }
        store.mount_token(TokenOp::Clear).await.context("can't clear the mount token")?;
        if !cfg.quiet {
            eprintln!("s3backer: erased {total} blocks of {what}");
        }
        Ok(0)
    })
}

/// `--reset-mounted-flag`: clears the mount token and exits.
pub fn reset_mounted_flag(cfg: Config) -> Result<i32> {
    let store = S3Store::new(s3_config(&cfg)?)?;
    runtime()?.block_on(async {
        let old = store.mount_token(TokenOp::Read).await?;
        if old == 0 {
            if !cfg.quiet {
                eprintln!("s3backer: volume {} is not marked as mounted", cfg.describe());
            }
            return Ok(0);
        }
        if cfg.read_only {
            bail!("--reset-mounted-flag cannot clear the flag with --readOnly");
        }
        store.mount_token(TokenOp::Clear).await?;
        if !cfg.quiet {
            eprintln!("s3backer: cleared the mounted flag of {} (was {old:08x})", cfg.describe());
        }
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config> {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        crate::config::validate(crate::args::parse(&a)?)
    }

    fn s3(args: &[&str]) -> Result<S3Config> {
        let mut a = vec!["--accessId=AK", "--accessKey=SK"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["bkt", "/mnt"]);
        s3_config(&cfg(&a)?)
    }

    #[test]
    fn ip_tos_values_as_upstream() {
        for (v, want) in [
            ("lowdelay", 0x10),
            ("throughput", 8),
            ("reliability", 4),
            ("lowcost", 2),
            ("mincost", 2),
            ("0", 0),
            ("184", 184),
            ("0xb8", 0xb8),
            ("0XFF", 255),
            ("070", 0o70),
        ] {
            assert_eq!(parse_ip_tos(v).unwrap(), want, "{v}");
        }
        for v in ["256", "-1", "+5", "", "0x", "09", "low", "1.5", "0x100"] {
            let e = parse_ip_tos(v).unwrap_err().to_string();
            assert!(e.starts_with("invalid --ipTOS value"), "{v}: {e}");
        }
        assert_eq!(s3(&["--ipTOS=lowdelay"]).unwrap().ip_tos, Some(0x10));
        assert_eq!(s3(&[]).unwrap().ip_tos, None);
        assert!(s3(&["--ipTOS=300"]).is_err());
    }

    #[test]
    fn defaults_and_region_urls() {
        let c = s3(&[]).unwrap();
        assert_eq!((c.base_url.as_str(), c.vhost, c.region.as_str()), ("http://s3.amazonaws.com/", false, "us-east-1"));
        let c = s3(&["--region=eu-west-1", "--ssl"]).unwrap();
        assert_eq!((c.base_url.as_str(), c.vhost), ("https://s3.eu-west-1.amazonaws.com/", true));
        let c = s3(&["--region=eu-west-1", "--no-vhost"]).unwrap();
        assert!(!c.vhost);
        let c = s3(&["--baseURL=http://127.0.0.1:3900/", "--region=garage"]).unwrap();
        assert!(!c.vhost);
        assert_eq!(c.max_retry_pause, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_named() {
        for (args, needle) in [
            (&["--baseURL=http://x"][..], "must end with '/'"),
            (&["--baseURL=ftp://x/"], "http://"),
            (&["--authVersion=aws2"], "not supported"),
            (&["--vhost", "--no-vhost"], "cannot be used together"),
            (&["--accessType=bogus"], "--accessType"),
            (&["--storageClass=CHEAP"], "--storageClass"),
            (&["--sse=aws:kms"], "--sse-key-id"),
            (&["--sse=XYZ"], "--sse"),
            (&["--timeout=0"], "--timeout"),
            (&["--timeout=x"], "--timeout"),
            (&["--maxUploadSpeed=1", "--blockSize=1m"], "--maxUploadSpeed"),
            (&["--maxDownloadSpeed=800", "--blockSize=1m"], "too slow"),
            (&["--initialRetryPause=5000", "--maxRetryPause=100"], "--initialRetryPause"),
            (&["--ssl", "--baseURL=http://h/"], "--ssl"),
            (&["--cacert=/nonexistent/ca.pem"], "--cacert"),
        ] {
            let e = s3(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn access_file_lookup() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "# comment\n\n  indented:ignored\nid1:key1\nid2:key2\n").unwrap();
        assert_eq!(read_access_file(&f, None).unwrap().unwrap().secret, "key1");
        assert_eq!(read_access_file(&f, Some("id2")).unwrap().unwrap().secret, "key2");
        assert!(read_access_file(&f, Some("id3")).unwrap().is_none());
        std::fs::write(&f, "no colon here\n").unwrap();
        assert!(read_access_file(&f, None).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn aws_credentials_profiles() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("credentials");
        std::fs::write(&f, "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n").unwrap();
        assert_eq!(read_aws_credentials(&f, "default").unwrap().unwrap().id, "A");
        let o = read_aws_credentials(&f, "other").unwrap().unwrap();
        assert_eq!((o.secret.as_str(), o.token.as_deref()), ("D", Some("T")));
        assert!(read_aws_credentials(&f, "none").unwrap().is_none());
    }
}
