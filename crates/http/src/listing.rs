//! Listing the volume's block objects (`--listBlocks`, `--erase`): one LIST stream per leading
//! hex digit of the key, several at a time, each page bounded in size.

use crate::request::{LIST_PAGE_KEYS, Req};
use crate::stats::bump;
use crate::{S3Store, retry, xml};
use futures::future::join_all;
use http::Method;
use s3b_store::{BlockNum, ObjectStore, Result};

impl S3Store {
    /// Lists the keys under `prefix`, calling `each` with every key and its size, one page at a
    /// time.
    pub(crate) async fn list_prefix(
        &self,
        prefix: &str,
        each: &(dyn for<'k> Fn(&'k str, u64) + Send + Sync),
    ) -> Result<()> {
        let mut marker = String::new();
        loop {
            let mut req = Req::new(Method::GET, None);
            req.query = vec![
                ("marker", marker.clone()),
                ("max-keys", LIST_PAGE_KEYS.to_string()),
                ("prefix", prefix.to_string()),
            ];
            bump(&self.stats.http_lists);
            let resp = self.send_with(&req, retry::is_retryable_listing).await?;
            if resp.status == 404 {
                return Err(self.no_such_bucket());
            }
            let doc = String::from_utf8_lossy(&resp.body);
            let keys = xml::elements(&doc, "Key");
            for entry in xml::elements(&doc, "Contents") {
                if let Some(k) = xml::first(&entry, "Key") {
                    each(&k, xml::first(&entry, "Size").and_then(|s| s.trim().parse().ok()).unwrap_or(0));
                }
            }
            let truncated = xml::first(&doc, "IsTruncated").is_some_and(|t| t.trim() == "true");
            let next = xml::first(&doc, "NextMarker").filter(|m| !m.is_empty()).or_else(|| keys.last().cloned());
            match next {
                Some(m) if truncated && m > marker => marker = m,
                _ => return Ok(()),
            }
        }
    }

    /// Every key under the volume's prefix that names a block, in no particular order.
    pub async fn list_blocks(&self) -> Result<Vec<BlockNum>> {
        let found = parking_lot::Mutex::new(Vec::new());
        self.list_objects(&|n| found.lock().push(n)).await?;
        Ok(found.into_inner())
    }

    /// Lists every stored block object, calling `sink` with each block number found.
    pub(crate) async fn list_all(&self, sink: &(dyn Fn(BlockNum) + Send + Sync)) -> Result<()> {
        let keys = &self.cfg.keys;
        let each = |k: &str, _size: u64| {
            if let Some(n) = keys.parse_key(k) {
                sink(n)
            }
        };
        // Every block key continues the prefix with a hex digit: one LIST stream per digit.
        let threads = self.cfg.list_threads.clamp(1, 16);
        let digits: Vec<String> = "0123456789abcdef".chars().map(|c| format!("{}{c}", keys.prefix)).collect();
        for group in digits.chunks(threads) {
            for r in join_all(group.iter().map(|p| self.list_prefix(p, &each))).await {
                r?;
            }
        }
        Ok(())
    }
}
