//! The errno a FUSE or NBD client sees for each answer of an S3 server and each way an exchange
//! fails: what the transport makes of it (its kind) through the one mapping the front ends use
//! (`s3b_volume::errno`). Upstream's mapping: refused keys `EACCES`, access denied `EPERM`, a
//! redirect `ELOOP`, a timeout `ETIMEDOUT`, an unreachable server `ENXIO`, the rest `EIO`.

use s3b_http::client::TransportError;
use s3b_http::error::ImdsError;
use s3b_http::{HttpError, Subject};
use s3b_store::StoreError;
use s3b_volume::errno;

fn subject() -> Subject {
    Subject { bucket: "b".into(), key: Some("00000001".into()) }
}

fn status(status: u16) -> HttpError {
    HttpError::Status { status, subject: subject(), code: None }
}

#[test]
fn each_answer_reaches_the_front_ends_as_upstreams_errno() {
    let cases = [
        (HttpError::Unauthorized { subject: subject(), code: Some("InvalidAccessKeyId".into()) }, libc::EACCES),
        (HttpError::Credentials(ImdsError::Missing("AccessKeyId")), libc::EACCES),
        (HttpError::Forbidden { subject: subject(), code: Some("AccessDenied".into()) }, libc::EPERM),
        (HttpError::Redirect { subject: subject(), status: 301, code: None, bucket_region: None }, libc::ELOOP),
        (HttpError::NoSuchBucket { bucket: "b".into(), endpoint: "http://h/".into() }, libc::EIO),
        (status(500), libc::EIO),
        (status(503), libc::EIO),
        (status(501), libc::EIO),
        (status(400), libc::EIO),
        (HttpError::Exchange(TransportError::Timeout { url: "http://h/".into(), limit_ms: 1 }), libc::ETIMEDOUT),
    ];
    // (A refused connection, `ENXIO`, is met for real in s3b-http's own tests.)
    for (answer, want) in cases {
        let shown = answer.to_string();
        assert_eq!(errno(&answer.into()), want, "{shown}");
    }
    // A stale conditional read is no HTTP detail: the transport says so directly.
    assert_eq!(errno(&StoreError::Stale(1)), libc::ESTALE);
}
