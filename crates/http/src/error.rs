//! What can go wrong in the S3 transport, as typed values, and the one place where each is
//! given the kind of failure the layers above decide on.
//!
//! [`HttpError`] is what one request met: an error status (with the bucket, the key, the
//! server's error code, where a redirect points), a bucket that does not exist, or an exchange
//! that gave no answer ([`TransportError`]). The other enums here are the failures around a
//! request: setting the transport up, getting credentials, signing, and answers the protocol
//! does not allow. Each
//! becomes a [`StoreError`] through a `From` impl below, which says what kind of failure it is
//! ([`HttpError::kind`] holds the table); the transport's own error travels inside it, so
//! its counters and metrics read the details back with [`HttpError::of`] and nothing is decided
//! by reading a message.

use crate::client::{ClientError, TransportError};
use s3b_store::StoreError;

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The endpoint is not `scheme://host…`.
    #[error("invalid base URL \"{0}\"")]
    BaseUrl(String),
    /// The HTTP client could not be built (TLS set-up, `--cacert`).
    #[error("can't set up the HTTP client")]
    Client(#[from] ClientError),
}

/// A request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("can't sign the request")]
pub struct SignError(#[source] pub s3b_store::BoxError);

/// An answer the protocol does not allow.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A multi-object DELETE answered with per-key errors.
    #[error("multi-object DELETE failed for {failed} of {total} keys: {message}")]
    MultiDelete {
        /// Keys that failed.
        failed: usize,
        /// Keys sent.
        total: usize,
        /// The first error's message or code.
        message: String,
    },
    /// Block 0's block-size header does not fit a block size.
    #[error("block size header {0} is too large")]
    BlockSizeHeader(u64),
}

/// Why the EC2 instance metadata service gave no keys.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The IMDSv2 token request failed.
    #[error("EC2 instance metadata: token request failed")]
    TokenRequest(#[source] crate::client::TransportError),
    /// The IMDSv2 token request was refused.
    #[error("EC2 instance metadata: token request answered HTTP {0}")]
    TokenStatus(u16),
    /// The credentials request failed.
    #[error("EC2 instance metadata: request failed")]
    Request(#[source] crate::client::TransportError),
    /// The role's credentials were refused.
    #[error("EC2 instance metadata: role \"{role}\" answered HTTP {status}")]
    RoleStatus {
        /// The role.
        role: String,
        /// The answer's status.
        status: u16,
    },
    /// The answer lacks a field.
    #[error("EC2 instance metadata: no {0} in the answer")]
    Missing(&'static str),
}

/// What a request was about: an object of the bucket, or the bucket itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The bucket.
    pub bucket: String,
    /// The object's key, for a request about one object.
    pub key: Option<String>,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "object \"{k}\" in bucket \"{}\"", self.bucket),
            None => write!(f, "bucket \"{}\"", self.bucket),
        }
    }
}

/// What one request to the S3 server met instead of an answer it can use.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// HTTP 401: the server refused the keys.
    #[error("unauthorized: {subject}{}: check the access key id and secret", code_suffix(.code))]
    Unauthorized {
        /// What was asked for.
        subject: Subject,
        /// The S3 error code of the answer, if it had one.
        code: Option<String>,
    },
    /// HTTP 403: the keys may not do this.
    #[error(
        "access denied: {subject}{}: check the credentials and the bucket's permissions",
        code_suffix(.code)
    )]
    Forbidden {
        /// What was asked for.
        subject: Subject,
        /// The S3 error code of the answer, if it had one.
        code: Option<String>,
    },
    /// A redirect (301, 302, 307, 308): the bucket is in another region or wants another
    /// addressing style.
    #[error(
        "redirected: {subject} answered HTTP {status}{}; {}",
        code_suffix(.code),
        redirect_hint(.bucket_region)
    )]
    Redirect {
        /// What was asked for.
        subject: Subject,
        /// The status.
        status: u16,
        /// The S3 error code of the answer, if it had one.
        code: Option<String>,
        /// The bucket's region, when the answer names one other than `--region`.
        bucket_region: Option<String>,
    },
    /// The bucket does not exist (404 `NoSuchBucket`).
    #[error("bucket \"{bucket}\" does not exist at {endpoint}")]
    NoSuchBucket {
        /// The bucket's name.
        bucket: String,
        /// The endpoint that said so.
        endpoint: String,
    },
    /// Another status that is neither a success nor an answer about the key (404, 304).
    #[error("HTTP {status}: {subject}{}", code_suffix(.code))]
    Status {
        /// The status.
        status: u16,
        /// What was asked for.
        subject: Subject,
        /// The S3 error code of the answer, if it had one.
        code: Option<String>,
    },
    /// A server-side copy answered 200 with an error document (S3 documents this for a copy
    /// that failed after the answer began).
    #[error("copy of \"{key}\" failed ({code})")]
    CopyFailed {
        /// The key copied from.
        key: String,
        /// The error document's code.
        code: String,
    },
    /// No answer: the exchange itself failed.
    #[error("{}", exchange_failure(.0))]
    Exchange(#[source] TransportError),
    /// The signing keys could not be obtained (EC2 instance metadata).
    #[error("can't get credentials")]
    Credentials(#[source] ImdsError),
}

/// ` (Code)`, or nothing.
fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

/// The fix for a redirect.
fn redirect_hint(bucket_region: &Option<String>) -> String {
    match bucket_region {
        Some(r) => format!("the bucket is in region {r}: use --region={r}"),
        None => "try --vhost, or --region with the bucket's region".to_string(),
    }
}

/// What kind of exchange failure `e` is, in a few words.
fn exchange_failure(e: &TransportError) -> &'static str {
    match e {
        TransportError::Timeout { .. } => "timed out",
        TransportError::Connect { .. } => "cannot connect",
        TransportError::BadRequest { .. } => "can't build the request",
        TransportError::Exchange { .. } | TransportError::Body { .. } | TransportError::TooLarge { .. } => {
            "transport failure"
        }
    }
}

/// A kind of failure: one of the [`StoreError`] variants that wrap a detail, as its
/// constructor.
pub type Kind = fn(s3b_store::BoxError) -> StoreError;

impl HttpError {
    /// The kind of failure this is, as the layers above decide on it. Upstream retries every
    /// status but 404 and 304, so most statuses stay retryable kinds; 408, 429 and the 5xx are
    /// passing trouble; 501 and 405 say the server lacks the request (the caller falls back).
    pub fn kind(&self) -> Kind {
        match self {
            HttpError::Unauthorized { .. } | HttpError::Credentials(_) => StoreError::Unauthenticated,
            HttpError::Forbidden { .. } => StoreError::Forbidden,
            HttpError::Redirect { .. } => StoreError::Misdirected,
            HttpError::NoSuchBucket { .. } => StoreError::NotFound,
            HttpError::Status { status: 501 | 405, .. } => StoreError::Unsupported,
            HttpError::Status { status: 408 | 429 | 500..=599, .. } | HttpError::CopyFailed { .. } => {
                StoreError::Unavailable
            }
            HttpError::Status { .. } => StoreError::Refused,
            HttpError::Exchange(e) => match e {
                TransportError::Timeout { .. } => StoreError::TimedOut,
                TransportError::Connect { .. } => StoreError::Unreachable,
                TransportError::BadRequest { .. } => StoreError::Setup,
                TransportError::Exchange { .. } | TransportError::Body { .. } | TransportError::TooLarge { .. } => {
                    StoreError::Unavailable
                }
            },
        }
    }

    /// The transport's detail of `e`, when the transport made it.
    pub fn of(e: &StoreError) -> Option<&HttpError> {
        e.detail().and_then(|d| d.downcast_ref::<HttpError>())
    }
}

impl From<HttpError> for StoreError {
    fn from(e: HttpError) -> Self {
        e.kind()(e.into())
    }
}

impl From<TransportError> for StoreError {
    fn from(e: TransportError) -> Self {
        HttpError::Exchange(e).into()
    }
}

impl From<SetupError> for StoreError {
    fn from(e: SetupError) -> Self {
        StoreError::Setup(e.into())
    }
}

impl From<SignError> for StoreError {
    fn from(e: SignError) -> Self {
        StoreError::Setup(e.into())
    }
}

impl From<ServiceError> for StoreError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BlockSizeHeader(_) => StoreError::corrupt(0, e),
            // Per-key errors of a multi-object DELETE are the server's passing trouble
            // (InternalError, SlowDown); the keys are deleted again.
            ServiceError::MultiDelete { .. } => StoreError::Unavailable(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_store::Chain;

    fn subject() -> Subject {
        Subject { bucket: "b".into(), key: Some("00000001".into()) }
    }

    fn status(status: u16) -> HttpError {
        HttpError::Status { status, subject: subject(), code: None }
    }

    /// Which kind a [`StoreError`] is, as a word (the variant's name).
    fn kind_name(e: &StoreError) -> &'static str {
        match e {
            StoreError::Unauthenticated(_) => "Unauthenticated",
            StoreError::Forbidden(_) => "Forbidden",
            StoreError::Misdirected(_) => "Misdirected",
            StoreError::NotFound(_) => "NotFound",
            StoreError::TimedOut(_) => "TimedOut",
            StoreError::Unreachable(_) => "Unreachable",
            StoreError::Unavailable(_) => "Unavailable",
            StoreError::Unsupported(_) => "Unsupported",
            StoreError::Refused(_) => "Refused",
            StoreError::Setup(_) => "Setup",
            StoreError::Corrupt { .. } => "Corrupt",
            _ => "other",
        }
    }

    #[test]
    fn each_answer_has_its_kind_and_keeps_its_detail() {
        let cases: Vec<(HttpError, &str)> = vec![
            (HttpError::Unauthorized { subject: subject(), code: None }, "Unauthenticated"),
            (HttpError::Credentials(ImdsError::Missing("AccessKeyId")), "Unauthenticated"),
            (HttpError::Forbidden { subject: subject(), code: None }, "Forbidden"),
            (HttpError::Redirect { subject: subject(), status: 301, code: None, bucket_region: None }, "Misdirected"),
            (HttpError::NoSuchBucket { bucket: "b".into(), endpoint: "http://h/".into() }, "NotFound"),
            (status(501), "Unsupported"),
            (status(405), "Unsupported"),
            (status(500), "Unavailable"),
            (status(503), "Unavailable"),
            (status(429), "Unavailable"),
            (status(408), "Unavailable"),
            (status(400), "Refused"),
            (status(409), "Refused"),
            (status(300), "Refused"),
            (HttpError::CopyFailed { key: "k".into(), code: "InternalError".into() }, "Unavailable"),
            (HttpError::Exchange(TransportError::Timeout { url: "u".into(), limit_ms: 5 }), "TimedOut"),
            (
                HttpError::Exchange(TransportError::TooLarge {
                    url: "u".into(),
                    status: 200,
                    size: "9".into(),
                    limit: 1,
                }),
                "Unavailable",
            ),
        ];
        for (detail, want) in cases {
            let (shown, chain) = (detail.to_string(), Chain(&detail).to_string());
            let e = StoreError::from(detail);
            assert_eq!(kind_name(&e), want, "{shown}");
            assert_eq!(HttpError::of(&e).map(ToString::to_string), Some(shown));
            assert_eq!(Chain(&e).to_string(), chain, "the kind adds nothing to the message");
        }
        let e = StoreError::from(SetupError::BaseUrl("x".into()));
        assert_eq!(kind_name(&e), "Setup");
        assert_eq!(kind_name(&StoreError::from(ServiceError::BlockSizeHeader(1 << 40))), "Corrupt");
        let multi = ServiceError::MultiDelete { failed: 1, total: 2, message: "InternalError".into() };
        assert_eq!(kind_name(&StoreError::from(multi)), "Unavailable");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        use crate::client::{ClientOptions, HttpClient};
        let limit = std::time::Duration::from_secs(5);
        let opts = ClientOptions { timeout: limit, connect_timeout: limit, connection: Default::default() };
        // Port 1 on the loopback: nothing listens there.
        let url = "http://127.0.0.1:1/b/k";
        let e = HttpClient::new(&opts).unwrap().send(http::Method::GET, url, &[], bytes::Bytes::new()).await;
        let e = StoreError::from(e.unwrap_err());
        assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
        assert!(Chain(&e).to_string().starts_with("cannot connect: http://127.0.0.1:1/b/k: "), "{}", Chain(&e));
        let stats = crate::HttpStats::default();
        stats.count_error(&e);
        assert_eq!(stats.curl_connect_failed.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(crate::observe::outcome(&e), "connect");
    }

    #[test]
    fn messages_name_the_subject_and_the_fix() {
        let e = StoreError::from(HttpError::Forbidden { subject: subject(), code: Some("AccessDenied".into()) });
        assert_eq!(
            e.to_string(),
            "access denied: object \"00000001\" in bucket \"b\" (AccessDenied): check the credentials and the \
             bucket's permissions"
        );
        let e = HttpError::Redirect {
            subject: Subject { bucket: "b".into(), key: None },
            status: 301,
            code: None,
            bucket_region: Some("eu-west-1".into()),
        };
        assert_eq!(
            e.to_string(),
            "redirected: bucket \"b\" answered HTTP 301; the bucket is in region eu-west-1: use --region=eu-west-1"
        );
        assert_eq!(
            HttpError::NoSuchBucket { bucket: "b".into(), endpoint: "http://h/".into() }.to_string(),
            "bucket \"b\" does not exist at http://h/"
        );
        assert_eq!(status(503).to_string(), "HTTP 503: object \"00000001\" in bucket \"b\"");
        let e = StoreError::from(TransportError::Timeout { url: "http://h/b/k".into(), limit_ms: 5 });
        assert_eq!(Chain(&e).to_string(), "timed out: http://h/b/k: no complete answer within 5 ms");
    }
}
