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
}
