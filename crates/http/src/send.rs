//! Sending a request: one attempt (sign, send, pace, classify the answer), and the retry loop
//! around it with upstream's backoff. Which failures are retried is decided in [`crate::retry`].

use crate::client;
use crate::error::{HttpError, Subject};
use crate::request::{Req, Resp, content_md5};
use crate::retry;
use crate::stats::{add_time, bump};
use crate::{S3Config, S3Store, sign, xml};
use s3b_store::{Result, StoreError};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

impl S3Store {
    /// Sends one attempt and reads the whole answer; the metrics observer (if any) sees its
    /// method, outcome, duration and bytes. Every request, the mount token's too, goes through
    /// here.
    pub(crate) async fn attempt(&self, req: &Req) -> Result<Resp> {
        let started = Instant::now();
        let result = self.attempt_unobserved(req).await;
        let received = result.as_ref().map(|r| r.body.len() as u64);
        self.observed(req.method.as_str(), &received, started.elapsed(), req.body.len() as u64);
        result
    }

    /// One attempt: sign, send, pace, classify the answer.
    async fn attempt_unobserved(&self, req: &Req) -> Result<Resp> {
        let url = self.url(req.key.as_deref(), &req.query);
        let mut headers: Vec<(String, String)> = req.headers.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        let keys = self.creds.keys(&self.client).await?;
        if keys.is_none() && !req.body.is_empty() && !req.headers.iter().any(|(n, _)| *n == "content-md5") {
            // Unsigned: no payload hash protects the body, so let the server check an MD5.
            headers.push(("content-md5".into(), content_md5(&req.body)));
        }
        if let Some(keys) = keys {
            let signed = sign::sigv4_headers_off_runtime(
                &keys,
                &self.cfg.region,
                req.method.as_str(),
                &url,
                &headers,
                &req.body,
                SystemTime::now(),
            )
            .await?;
            headers.extend(signed);
        }
        headers.push(("user-agent".into(), self.user_agent.clone()));
        let started = Instant::now();
        let client::Response { status, headers: resp_headers, body } = self
            .client
            .send_limited(req.method.clone(), &url, &headers, req.body.clone(), self.body_limit(req))
            .await?;
        let elapsed = started.elapsed();
        if self.cfg.debug_http {
            log::info!("HTTP {} {url} -> {status} ({} ms)", req.method, elapsed.as_millis());
        }
        let limit = if req.body.is_empty() { self.cfg.speed.download } else { self.cfg.speed.upload };
        let moved = req.body.len().max(body.len()) as u64;
        if let Some(rate) = limit.filter(|&r| r > 0) {
            let want = Duration::from_secs_f64(moved as f64 / rate as f64);
            if want > elapsed {
                tokio::time::sleep(want - elapsed).await;
            }
        }
        let resp = Resp { status, headers: resp_headers, body };
        match status {
            // A 404 is an answer about the key, unless the bucket itself is missing (only an
            // answer with a body can say so; a HEAD's cannot).
            404 if error_code(&resp.body).as_deref() == Some("NoSuchBucket") => Err(self.no_such_bucket()),
            200..=299 | 304 | 404 => Ok(resp),
            _ => {
                let err = status_error(&resp, &self.cfg, req.key.as_deref());
                if self.cfg.debug_http && !resp.body.is_empty() {
                    log::info!("HTTP error body: {}", String::from_utf8_lossy(&resp.body[..resp.body.len().min(2000)]));
                }
                Err(err)
            }
        }
    }

    /// Sends a request, retrying failures as upstream does (`retries = false`: one attempt).
    pub(crate) async fn send(&self, req: &Req, retries: bool) -> Result<Resp> {
        self.send_with(req, if retries { retry::is_retryable } else { |_| false }).await
    }

    /// Sends a request, retrying the failures `retry_if` accepts with the configured backoff.
    /// Until the server has answered once, only passing trouble is retried (see
    /// [`retry::is_transient`]), so a wrong setting fails at once.
    pub(crate) async fn send_with(&self, req: &Req, retry_if: fn(&StoreError) -> bool) -> Result<Resp> {
        self.send_retrying(req, |e, first_contact| retry_if(e) && (!first_contact || retry::is_transient(e))).await
    }

    /// The retry loop of every request but the mount token's (see [`crate::token`]): attempts
    /// until one succeeds or `retry_if(error, first contact)` declines or the pause budget is
    /// spent; counts and logs each retry.
    async fn send_retrying(&self, req: &Req, retry_if: impl Fn(&StoreError, bool) -> bool) -> Result<Resp> {
        let mut backoff = self.cfg.retry.backoff();
        loop {
            match self.attempt(req).await {
                Ok(r) => {
                    self.contacted.store(true, Relaxed);
                    return Ok(r);
                }
                Err(e) => {
                    self.stats.count_error(&e);
                    let retry = retry_if(&e, !self.contacted.load(Relaxed));
                    let Some(pause) = (if retry { backoff.next_pause() } else { None }) else {
                        return Err(e);
                    };
                    self.observed_retry(&e);
                    log::warn!(
                        "{} {}: {}; retrying in {} ms",
                        req.method,
                        req.key.as_deref().unwrap_or("bucket"),
                        s3b_store::Chain(&e),
                        pause.as_millis()
                    );
                    bump(&self.stats.http_num_retries);
                    add_time(&self.stats.retry_delay_micros, pause);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The error for a bucket the server says does not exist.
    pub(crate) fn no_such_bucket(&self) -> StoreError {
        HttpError::NoSuchBucket { bucket: self.cfg.bucket.clone(), endpoint: self.cfg.base_url.clone() }.into()
    }
}

/// The `<Code>` of an S3 error document.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    xml::first(&String::from_utf8_lossy(body), "Code")
}

/// The error for a status that is neither success nor an answer (404, 304), with a hint where
/// the fix is known.
fn status_error(resp: &Resp, cfg: &S3Config, key: Option<&str>) -> StoreError {
    let code = error_code(&resp.body);
    let subject = Subject { bucket: cfg.bucket.clone(), key: key.map(str::to_string) };
    match resp.status {
        401 => HttpError::Unauthorized { subject, code }.into(),
        403 => HttpError::Forbidden { subject, code }.into(),
        412 => StoreError::Stale(key.and_then(|k| cfg.keys.parse_key(k)).unwrap_or(0)),
        status @ (301 | 302 | 307 | 308) => {
            let bucket_region = resp
                .header("x-amz-bucket-region")
                .map(str::to_string)
                .or_else(|| xml::first(&String::from_utf8_lossy(&resp.body), "Region"))
                .filter(|r| *r != cfg.region);
            HttpError::Redirect { subject, status, code, bucket_region }.into()
        }
        status => HttpError::Status { status, subject, code }.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;

    #[test]
    fn status_errors_carry_hints() {
        let cfg = S3Config::new("http://h/", "bkt");
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-bucket-region", "eu-west-1".parse().unwrap());
        let r = Resp { status: 301, headers, body: Bytes::new() };
        let e = status_error(&r, &cfg, None).to_string();
        assert!(e.contains("--region=eu-west-1"), "{e}");
        let r = Resp {
            status: 403,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"<Error><Code>AccessDenied</Code></Error>"),
        };
        let e = status_error(&r, &cfg, Some("00000001"));
        assert!(matches!(e, StoreError::Forbidden(_)) && e.to_string().contains("AccessDenied"), "{e}");
        let r = Resp { status: 503, headers: HeaderMap::new(), body: Bytes::new() };
        let e = status_error(&r, &cfg, None);
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        assert!(matches!(HttpError::of(&e), Some(HttpError::Status { status: 503, .. })), "{e}");
        let r = Resp { status: 412, headers: HeaderMap::new(), body: Bytes::new() };
        assert!(matches!(status_error(&r, &cfg, Some("00000007")), StoreError::Stale(7)));
    }
}
