//! Where request-signing credentials come from: fixed keys, the EC2 instance metadata service
//! (`--accessEC2IAM`, refreshed before they expire, IMDSv1 or v2), or none (unsigned requests,
//! for public buckets). Secrets never appear in `Debug` output. Which of them a command line
//! asks for is found by [`discover`].

pub mod discover;

use crate::error::{HttpError, ImdsError};
use parking_lot::Mutex;
use s3b_store::{Result, StoreError};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

/// Environment variable that replaces the EC2 metadata endpoint (tests serve it on 127.0.0.1).
pub const METADATA_URL_ENV: &str = "S3BACKER_EC2_METADATA_URL";
/// The EC2 instance metadata endpoint.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254/";
/// How long credentials fetched from instance metadata are used at most (upstream: 300 s).
const IAM_REFRESH: Duration = Duration::from_secs(300);
/// Credentials are replaced this long before they expire, so that no request is signed with
/// keys that run out while it is on its way (or retried).
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A set of keys used to sign requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// Access key id.
    pub id: String,
    /// Secret access key.
    pub secret: String,
    /// Session token (temporary credentials), sent as `x-amz-security-token`.
    pub token: Option<String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("id", &self.id).field("secret", &"<hidden>").finish_non_exhaustive()
    }
}

/// The configured source of credentials.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Fixed keys.
    Static(Keys),
    /// Fetched from the EC2 instance metadata service for this IAM role.
    Ec2Iam {
        /// The role name.
        role: String,
        /// Use IMDSv2 session tokens.
        imdsv2: bool,
    },
    /// No credentials: requests are sent unsigned.
    Anonymous,
}

/// Hands out current keys, fetching and refreshing them when the source needs it.
pub(crate) struct Provider {
    source: Credentials,
    cached: Mutex<Option<(Keys, Instant)>>,
}

impl Provider {
    pub(crate) fn new(source: Credentials) -> Self {
        Provider { source, cached: Mutex::new(None) }
    }

    /// Current keys, or `None` for unsigned requests.
    pub(crate) async fn keys(&self, client: &crate::client::HttpClient) -> Result<Option<Keys>> {
        match &self.source {
            Credentials::Anonymous => Ok(None),
            Credentials::Static(k) => Ok(Some(k.clone())),
            Credentials::Ec2Iam { role, imdsv2 } => {
                if let Some((k, until)) = self.cached.lock().as_ref()
                    && Instant::now() < *until
                {
                    return Ok(Some(k.clone()));
                }
                let (keys, lifetime) = fetch_iam(client, role, *imdsv2).await?;
                *self.cached.lock() = Some((keys.clone(), Instant::now() + lifetime));
                Ok(Some(keys))
            }
        }
    }
}

fn metadata_base() -> String {
    let mut url = std::env::var(METADATA_URL_ENV).unwrap_or_else(|_| DEFAULT_METADATA_URL.to_string());
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

/// Fetches the role's credentials from instance metadata; returns them with how long to use them.
async fn fetch_iam(client: &crate::client::HttpClient, role: &str, imdsv2: bool) -> Result<(Keys, Duration)> {
    let base = metadata_base();
    let fail = |e: ImdsError| StoreError::from(HttpError::Credentials(e));
    let mut headers = Vec::new();
    if imdsv2 {
        let tok = client
            .send(
                http::Method::PUT,
                &format!("{base}latest/api/token"),
                &[("X-aws-ec2-metadata-token-ttl-seconds".into(), "21600".into())],
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| fail(ImdsError::TokenRequest(e)))?;
        if !(200..300).contains(&tok.status) {
            return Err(fail(ImdsError::TokenStatus(tok.status)));
        }
        let token = String::from_utf8_lossy(&tok.body).trim().to_string();
        headers.push(("X-aws-ec2-metadata-token".to_string(), token));
    }
    let url = format!("{base}latest/meta-data/iam/security-credentials/{role}");
    let resp = client
        .send(http::Method::GET, &url, &headers, bytes::Bytes::new())
        .await
        .map_err(|e| fail(ImdsError::Request(e)))?;
    if !(200..300).contains(&resp.status) {
        return Err(fail(ImdsError::RoleStatus { role: role.to_string(), status: resp.status }));
    }
    let doc = String::from_utf8_lossy(&resp.body).into_owned();
    let keys = Keys {
        id: json_string(&doc, "AccessKeyId").ok_or_else(|| fail(ImdsError::Missing("AccessKeyId")))?,
        secret: json_string(&doc, "SecretAccessKey").ok_or_else(|| fail(ImdsError::Missing("SecretAccessKey")))?,
        token: json_string(&doc, "Token"),
    };
    let lifetime = json_string(&doc, "Expiration")
        .and_then(|e| httpdate::parse_http_date(&e).ok().or_else(|| parse_iso8601(&e)))
        .and_then(|exp| exp.duration_since(SystemTime::now()).ok())
        .map(|left| left.saturating_sub(EXPIRY_MARGIN).min(IAM_REFRESH))
        .unwrap_or(IAM_REFRESH);
    Ok((keys, lifetime))
}

/// The string value of `"key": "value"` in a flat JSON object (the metadata answer is flat).
fn json_string(doc: &str, key: &str) -> Option<String> {
    let at = doc.find(&format!("\"{key}\""))?;
    let rest = &doc[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret() {
        let k = Keys { id: "AKID".into(), secret: "sekrit".into(), token: Some("tok".into()) };
        let s = format!("{:?}", Credentials::Static(k));
        assert!(s.contains("AKID") && !s.contains("sekrit") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn metadata_answer_parsing() {
        let doc = r#"{ "Code" : "Success", "AccessKeyId" : "ASIA1", "SecretAccessKey" : "s/2", "Token" : "t3", "Expiration" : "2030-01-02T03:04:05Z" }"#;
        assert_eq!(json_string(doc, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(json_string(doc, "Token").as_deref(), Some("t3"));
        assert_eq!(json_string(doc, "Nope"), None);
        let t = parse_iso8601("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_893_553_445);
        assert_eq!(parse_iso8601("garbage"), None);
    }
}
