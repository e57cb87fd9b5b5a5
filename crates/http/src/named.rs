//! Named objects beside the blocks ([`NamedObjects`]): plain GET, PUT and DELETE of
//! `<prefix><name>`, server-side copies (CopyObject), and a LIST by name prefix.
//!
//! A copy is `PUT <to>` with `x-amz-copy-source: /<bucket>/<from>` and
//! `x-amz-metadata-directive: COPY`, so the server keeps the source's `Content-Encoding` and
//! `x-amz-meta-*` headers (the HMAC of an encrypted block) and no data passes through us. A
//! missing source is a 404 (`NoSuchKey`); a copy that fails after the server has begun its
//! answer comes back as 200 with an `<Error>` document, which is an error here too.

use crate::error::HttpError;
use crate::request::{PATH_SET, Req};
use crate::stats::bump;
use crate::{BLOCK_CONTENT_TYPE, HMAC_HEADER, S3Store, xml};
use async_trait::async_trait;
use http::Method;
use percent_encoding::utf8_percent_encode;
use s3b_store::named::{NamedObject, NamedObjects};
use s3b_store::{BlockNum, Etag, ObjectBody, Result};

/// Most bytes of a named object's body we accept (bookkeeping maps of large volumes).
pub const NAMED_OBJECT_LIMIT: usize = 256 << 20;

impl S3Store {
    fn named_key(&self, name: &str) -> String {
        format!("{}{name}", self.cfg.keys.prefix)
    }

    /// Server-side copy of the object `from_key` of `from_bucket` (on this endpoint, readable
    /// with these credentials) to the key of this volume's block `n`; false when the source is
    /// missing. A clone's flatten copies its base's blocks this way.
    pub async fn copy_into_block(&self, from_bucket: &str, from_key: &str, n: BlockNum) -> Result<bool> {
        self.copy_key_from(from_bucket, from_key, &self.cfg.keys.block_key(n)).await
    }

    /// Server-side copy of the object `from_key` of `from_bucket` (on this endpoint) to this
    /// volume's object `to` (a name after its prefix); false when the source is missing.
    pub async fn copy_into_named(&self, from_bucket: &str, from_key: &str, to: &str) -> Result<bool> {
        self.copy_key_from(from_bucket, from_key, &self.named_key(to)).await
    }

    /// Server-side copy of the object `from_key` to `to_key`; false when `from_key` is missing.
    async fn copy_key(&self, from_key: &str, to_key: &str) -> Result<bool> {
        self.copy_key_from(&self.cfg.bucket, from_key, to_key).await
    }

    /// Server-side copy of `from_key` in `from_bucket` to `to_key`; false when it is missing.
    async fn copy_key_from(&self, from_bucket: &str, from_key: &str, to_key: &str) -> Result<bool> {
        let mut req = Req::new(Method::PUT, Some(to_key.to_string()));
        self.put_headers(&mut req, BLOCK_CONTENT_TYPE);
        // The copy keeps the source's Content-Type along with its other headers.
        req.headers.retain(|(n, _)| *n != "content-type");
        let source = format!("/{from_bucket}/{}", utf8_percent_encode(from_key, PATH_SET));
        req.headers.push(("x-amz-copy-source", source));
        req.headers.push(("x-amz-metadata-directive", "COPY".into()));
        let resp = self.send(&req, true).await?;
        if resp.status == 404 {
            return Ok(false);
        }
        bump(&self.stats.http_puts);
        let text = String::from_utf8_lossy(&resp.body);
        if let Some(err) = xml::elements(&text, "Error").first() {
            let code = xml::first(err, "Code").unwrap_or_default();
            return Err(HttpError::CopyFailed { key: from_key.to_string(), code }.into());
        }
        Ok(true)
    }
}

#[async_trait]
impl NamedObjects for S3Store {
    async fn get_named(&self, name: &str) -> Result<Option<NamedObject>> {
        let mut req = Req::new(Method::GET, Some(self.named_key(name)));
        req.max_body = Some(NAMED_OBJECT_LIMIT);
        let resp = self.send(&req, true).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        bump(&self.stats.http_gets);
        let body = ObjectBody {
            content_encoding: resp.header("content-encoding").map(str::to_string),
            hmac: resp.header(HMAC_HEADER).map(str::to_string),
            data: resp.body.clone(),
        };
        Ok(Some(NamedObject { body, etag: resp.header("etag").and_then(Etag::parse) }))
    }

    async fn put_named(&self, name: &str, body: ObjectBody) -> Result<()> {
        let mut req = Req::new(Method::PUT, Some(self.named_key(name)));
        req.body = body.data;
        self.put_headers(&mut req, BLOCK_CONTENT_TYPE);
        if let Some(enc) = body.content_encoding {
            req.headers.push(("content-encoding", enc));
        }
        if let Some(h) = body.hmac {
            req.headers.push((HMAC_HEADER, h));
        }
        let resp = self.send(&req, true).await?;
        if resp.status == 404 {
            return Err(self.no_such_bucket());
        }
        bump(&self.stats.http_puts);
        Ok(())
    }

    async fn delete_named(&self, name: &str) -> Result<()> {
        self.send(&Req::new(Method::DELETE, Some(self.named_key(name))), true).await?;
        bump(&self.stats.http_deletes);
        Ok(())
    }

    async fn copy_block(&self, n: BlockNum, to: &str) -> Result<bool> {
        self.copy_key(&self.cfg.keys.block_key(n), &self.named_key(to)).await
    }

    async fn copy_named(&self, from: &str, to: &str) -> Result<bool> {
        self.copy_key(&self.named_key(from), &self.named_key(to)).await
    }

    async fn list_named(&self, prefix: &str, sink: &(dyn for<'k> Fn(&'k str, u64) + Send + Sync)) -> Result<()> {
        let base = &self.cfg.keys.prefix;
        self.list_prefix(&self.named_key(prefix), &|k, size| {
            if let Some(name) = k.strip_prefix(base.as_str()) {
                sink(name, size)
            }
        })
        .await
    }
}
