//! The [`ObjectStore`] operations of the S3 transport: object GET, PUT, DELETE (one and many),
//! the volume geometry HEAD, and the mount token.

use crate::request::{Req, content_md5, object_size_limit};
use crate::stats::{add_time, bump};
use crate::{
    BLOCK_CONTENT_TYPE, BLOCK_SIZE_HEADER, FILE_SIZE_HEADER, HMAC_HEADER, MAX_DELETE_KEYS, MOUNT_TOKEN_HEADER,
};
use crate::{S3Store, ServiceError, xml};
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use s3b_store::{
    BlockNum, Etag, GetOutcome, ObjectBody, ObjectStore, ReadCondition, Result, StoreError, TokenOp, TokenSwap,
    VolumeMeta, VolumeProbe,
};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

#[async_trait]
impl ObjectStore for S3Store {
    async fn get_object(&self, n: BlockNum, cond: ReadCondition) -> Result<GetOutcome> {
        let mut req = Req::new(Method::GET, Some(self.cfg.keys.block_key(n)));
        match cond {
            ReadCondition::None => {}
            ReadCondition::IfMatch(e) => req.headers.push(("if-match", e.quoted())),
            ReadCondition::IfNoneMatch(e) => req.headers.push(("if-none-match", e.quoted())),
        }
        let started = Instant::now();
        let resp = self.send(&req, true).await?;
        // As upstream, only successful transfers count (not 304 or 404 answers).
        if (200..300).contains(&resp.status) {
            bump(&self.stats.http_gets);
            add_time(&self.stats.get_micros, started.elapsed());
        }
        match resp.status {
            304 => {
                bump(&self.stats.http_verified);
                Ok(GetOutcome::NotModified)
            }
            404 => {
                bump(&self.stats.http_zero_blocks_read);
                Ok(GetOutcome::NotFound)
            }
            _ => {
                if matches!(cond, ReadCondition::IfNoneMatch(_)) {
                    bump(&self.stats.http_mismatch);
                }
                bump(&self.stats.http_normal_blocks_read);
                let etag = resp.header("etag").and_then(Etag::parse);
                let body = ObjectBody {
                    content_encoding: resp.header("content-encoding").map(str::to_string),
                    hmac: resp.header(HMAC_HEADER).map(str::to_string),
                    data: resp.body,
                };
                Ok(GetOutcome::Found { body, etag })
            }
        }
    }

    async fn put_object(&self, n: BlockNum, body: ObjectBody, volume: Option<VolumeMeta>) -> Result<Option<Etag>> {
        let mut req = Req::new(Method::PUT, Some(self.cfg.keys.block_key(n)));
        req.body = body.data;
        self.put_headers(&mut req, BLOCK_CONTENT_TYPE);
        if let Some(enc) = body.content_encoding {
            req.headers.push(("content-encoding", enc));
        }
        if let Some(v) = volume {
            req.headers.push((BLOCK_SIZE_HEADER, v.block_size.to_string()));
            req.headers.push((FILE_SIZE_HEADER, v.file_size.to_string()));
        }
        if let Some(h) = body.hmac {
            req.headers.push((HMAC_HEADER, h));
        }
        let started = Instant::now();
        let resp = self.send(&req, true).await?;
        if (200..300).contains(&resp.status) {
            bump(&self.stats.http_puts);
            add_time(&self.stats.put_micros, started.elapsed());
        }
        if resp.status == 404 {
            // Only a missing bucket makes a PUT answer 404.
            return Err(self.no_such_bucket());
        }
        bump(&self.stats.http_normal_blocks_written);
        Ok(resp.header("etag").and_then(Etag::parse))
    }

    async fn delete_object(&self, n: BlockNum) -> Result<()> {
        let req = Req::new(Method::DELETE, Some(self.cfg.keys.block_key(n)));
        let started = Instant::now();
        self.send(&req, true).await?;
        // A DELETE of a missing object counts as a success, as upstream.
        bump(&self.stats.http_deletes);
        add_time(&self.stats.delete_micros, started.elapsed());
        bump(&self.stats.http_zero_blocks_written);
        Ok(())
    }

    async fn delete_objects(&self, blocks: &[BlockNum]) -> Result<()> {
        for chunk in blocks.chunks(MAX_DELETE_KEYS) {
            if chunk.len() == 1 {
                self.delete_object(chunk[0]).await?;
                continue;
            }
            let mut doc = String::from("<Delete>");
            for &n in chunk {
                doc.push_str("<Object><Key>");
                doc.push_str(&xml::escape(&self.cfg.keys.block_key(n)));
                doc.push_str("</Key></Object>");
            }
            doc.push_str("</Delete>");
            let mut req = Req::new(Method::POST, None);
            req.query = vec![("delete", String::new())];
            req.body = Bytes::from(doc);
            req.headers.push(("content-type", "application/xml".into()));
            req.headers.push(("content-md5", content_md5(&req.body)));
            let started = Instant::now();
            let result = self.send(&req, true).await;
            if result.as_ref().is_ok_and(|r| (200..300).contains(&r.status)) {
                bump(&self.stats.http_deletes);
                add_time(&self.stats.delete_micros, started.elapsed());
            }
            match result {
                Ok(resp) if resp.status == 404 => return Err(self.no_such_bucket()),
                Ok(resp) => {
                    let text = String::from_utf8_lossy(&resp.body);
                    let errors = xml::elements(&text, "Error");
                    if let Some(first) = errors.first() {
                        return Err(ServiceError::MultiDelete {
                            failed: errors.len(),
                            total: chunk.len(),
                            message: xml::first(first, "Message")
                                .or_else(|| xml::first(first, "Code"))
                                .unwrap_or_default(),
                        }
                        .into());
                    }
                    self.stats.http_zero_blocks_written.fetch_add(chunk.len() as u64, Relaxed);
                }
                // Servers without multi-object DELETE: one request per object.
                Err(StoreError::Unsupported(_)) => {
                    for &n in chunk {
                        self.delete_object(n).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn list_objects(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        self.list_all(sink).await
    }

    async fn read_volume_meta(&self) -> Result<Option<VolumeMeta>> {
        Ok(match self.probe_volume().await? {
            VolumeProbe::Meta(meta) => Some(meta),
            VolumeProbe::Bare(_) | VolumeProbe::Nothing => None,
        })
    }

    async fn probe_volume(&self) -> Result<VolumeProbe> {
        let req = Req::new(Method::HEAD, Some(self.cfg.keys.block_key(0)));
        bump(&self.stats.http_heads);
        let resp = self.send(&req, true).await?;
        if resp.status == 404 {
            return Ok(VolumeProbe::Nothing);
        }
        let num = |h: &str| resp.header(h).and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0);
        match (num(BLOCK_SIZE_HEADER), num(FILE_SIZE_HEADER)) {
            (Some(bs), Some(fs)) => {
                let block_size = u32::try_from(bs).map_err(|_| ServiceError::BlockSizeHeader(bs))?;
                Ok(VolumeProbe::Meta(VolumeMeta { block_size, file_size: fs }))
            }
            _ => Ok(VolumeProbe::Bare(resp.header("content-length").and_then(|v| v.trim().parse::<u64>().ok()))),
        }
    }

    async fn mount_token(&self, op: TokenOp) -> Result<u32> {
        let key = self.cfg.keys.mount_token_key();
        let head = Req::new(Method::HEAD, Some(key.clone()));
        bump(&self.stats.http_heads);
        let resp = self.send(&head, true).await?;
        let old = if resp.status == 404 {
            0
        } else {
            match resp.header(MOUNT_TOKEN_HEADER) {
                Some(v) => u32::from_str_radix(v.trim(), 16).unwrap_or(1),
                None => 1,
            }
        };
        match op {
            TokenOp::Read => {}
            TokenOp::Clear => {
                self.send(&Req::new(Method::DELETE, Some(key)), true).await?;
            }
            TokenOp::Set(token) => {
                self.send(&self.token_put(token), true).await?;
            }
        }
        Ok(old)
    }

    async fn swap_mount_token(&self, expected: u32, new: u32) -> Result<TokenSwap> {
        self.swap_token(expected, new).await
    }

    fn set_block_size(&self, block_size: u32) {
        self.object_limit.store(object_size_limit(block_size), Relaxed);
    }

    async fn flush(&self, _blocks: Option<&[BlockNum]>) -> Result<()> {
        Ok(())
    }

    fn named(&self) -> Option<&dyn s3b_store::named::NamedObjects> {
        Some(self)
    }
}
