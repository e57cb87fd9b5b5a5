//! AWS Signature Version 4 for one request, through the `aws-sigv4` crate (signing is not
//! hand-rolled). Every attempt is signed afresh, so the date is always current.
//!
//! The payload hash is sent (`x-amz-content-sha256`), paths are encoded once and not
//! normalised, as S3 requires.

use crate::SignError;
use crate::creds::Keys;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use s3b_store::{Result, StoreError};
use std::time::SystemTime;

/// The headers to add to a request (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
/// and `x-amz-security-token` with temporary credentials) to sign it for `region` at `time`.
pub fn sigv4_headers(
    keys: &Keys,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>> {
    let identity = aws_credential_types::Credentials::new(
        keys.id.clone(),
        keys.secret.clone(),
        keys.token.clone(),
        None,
        "s3backer",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .map_err(fail)?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(fail)?;
    let (instructions, _) = sign(signable, &params).map_err(fail)?.into_parts();
    Ok(instructions.headers().map(|(n, v)| (n.to_string(), v.to_string())).collect())
}

/// The error for a signing step that failed.
fn fail<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    SignError(Box::new(e)).into()
}

/// Bodies at least this long are hashed off the runtime by [`sigv4_headers_off_runtime`].
pub const OFF_RUNTIME_BODY: usize = 64 << 10;

/// [`sigv4_headers`] for a request whose body may be large: a body of at least
/// [`OFF_RUNTIME_BODY`] bytes is hashed (the SHA-256 the signature covers) on tokio's blocking
/// pool rather than on a runtime worker. The hash of a block is the one piece of CPU work an
/// upload does on its way out; on a runtime worker, a burst of uploads starting at once (the
/// write-back of a full cache) would keep the workers busy hashing while a read's answer waits
/// for one of them to be polled. Off the runtime, the workers stay free for the reads'
/// requests and answers, and the operating system shares the CPU between the hashing threads
/// and them. Small bodies (every GET, HEAD and DELETE) are signed in place.
pub async fn sigv4_headers_off_runtime(
    keys: &Keys,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &bytes::Bytes,
    time: SystemTime,
) -> Result<Vec<(String, String)>> {
    if body.len() < OFF_RUNTIME_BODY || tokio::runtime::Handle::try_current().is_err() {
        return sigv4_headers(keys, region, method, url, headers, body, time);
    }
    let (keys, region, method, url, headers, body) =
        (keys.clone(), region.to_string(), method.to_string(), url.to_string(), headers.to_vec(), body.clone());
    tokio::task::spawn_blocking(move || sigv4_headers(&keys, &region, &method, &url, &headers, &body, time))
        .await
        .map_err(|e| StoreError::Task(e.into()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn signs_with_date_payload_hash_and_token() {
        let keys = Keys {
            id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token: Some("TOKEN".into()),
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let h =
            sigv4_headers(&keys, "us-east-1", "GET", "https://example.s3.amazonaws.com/bucket/00000001", &[], b"", t)
                .unwrap();
        let get =
            |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{n} in {h:?}"));
        assert_eq!(get("x-amz-date"), "20150830T123600Z");
        assert_eq!(get("x-amz-content-sha256"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(get("x-amz-security-token"), "TOKEN");
        let auth = get("authorization");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/s3/aws4_request, SignedHeaders="
            ),
            "{auth}"
        );
        assert!(!auth.contains(&keys.secret));
        // Deterministic for the same inputs; another body gives another signature.
        assert_eq!(
            h,
            sigv4_headers(&keys, "us-east-1", "GET", "https://example.s3.amazonaws.com/bucket/00000001", &[], b"", t)
                .unwrap()
        );
        let other =
            sigv4_headers(&keys, "us-east-1", "PUT", "https://example.s3.amazonaws.com/bucket/00000001", &[], b"x", t)
                .unwrap();
        assert_ne!(other.iter().find(|(k, _)| k == "authorization"), h.iter().find(|(k, _)| k == "authorization"));
    }

    /// A large body signed on the blocking pool gets exactly the headers the in-place signer
    /// gives; so does a small one (signed in place).
    #[tokio::test]
    async fn off_runtime_signing_matches_in_place_signing() {
        let keys = Keys { id: "AKIDEXAMPLE".into(), secret: "secret".into(), token: None };
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let url = "https://example.s3.amazonaws.com/bucket/00000001";
        let hdrs = vec![("content-type".to_string(), "application/x-s3backer-block".to_string())];
        for len in [0, 100, OFF_RUNTIME_BODY, 256 << 10] {
            let body = bytes::Bytes::from(vec![7u8; len]);
            let off = sigv4_headers_off_runtime(&keys, "us-east-1", "PUT", url, &hdrs, &body, t).await.unwrap();
            assert_eq!(off, sigv4_headers(&keys, "us-east-1", "PUT", url, &hdrs, &body, t).unwrap(), "{len} bytes");
        }
    }
}
