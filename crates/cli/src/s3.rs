//! The bucket side of the program: opening the bucket as the transport, and the maintenance
//! modes that work on a bucket (`--erase`, `--reset-mounted-flag`). The S3 flags were checked
//! into an [`s3b_http::S3Config`] by [`crate::config::s3`], credentials included.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use s3b_http::S3Store;
use s3b_store::{ObjectStore, StatsRegistry, TokenOp};
use std::io::IsTerminal;
use std::sync::Arc;

/// The transport of a bucket volume (nothing is sent yet).
fn store(cfg: &Config) -> Result<S3Store> {
    let s3 = cfg.s3.clone().context("not a bucket")?;
    Ok(S3Store::new(s3)?)
}

/// Opens the bucket as the transport and registers its counters. Nothing is sent yet: the
/// first request of the mount (size detection or the mount token) reports a missing bucket or
/// refused keys.
pub async fn open_bucket(cfg: &Config, stats: &StatsRegistry) -> Result<Arc<dyn ObjectStore>> {
    let store = store(cfg)?;
    stats.register(store.stats());
    crate::metrics::observe_http(&store);
    Ok(Arc::new(store))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("can't start the runtime")
}

/// `--erase`: deletes every block object and the mount token.
pub fn erase(cfg: Config) -> Result<i32> {
    let store = store(&cfg)?;
    runtime()?.block_on(async {
        let token = store.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
        if token != 0 && !cfg.force {
            bail!("volume appears to be mounted (mount token {token:08x}); unmount it first, or use --force");
        }
        let what = cfg.describe();
        let snapshots = s3b_snap::book::read_index(&store).await?.map_or(0, |i| i.snaps.len());
        if snapshots > 0 {
            // Snapshots read the blocks they did not copy from the live volume.
            bail!("{what} has {snapshots} snapshot(s): delete them first (--deleteSnapshot), then --erase");
        }
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
        let listing = crate::progress::Progress::start("listing the blocks", None, cfg.quiet);
        let found = parking_lot::Mutex::new(Vec::new());
        store
            .list_objects(&|n| {
                found.lock().push(n);
                listing.inc(1);
            })
            .await
            .context("can't list the blocks")?;
        let blocks = found.into_inner();
        let total = blocks.len() as u64;
        let listed = listing.finish(total);
        let erasing = crate::progress::Progress::start("erasing", Some(total), cfg.quiet);
        for chunk in blocks.chunks(s3b_http::MAX_DELETE_KEYS) {
            store.delete_objects(chunk).await.context("can't delete blocks")?;
            erasing.inc(chunk.len() as u64);
        }
        // An erased clone is an empty plain volume, not its base again.
        if s3b_clone::read_record(&store).await?.is_some() {
            s3b_store::named::NamedObjects::delete_named(&store, s3b_clone::RECORD_NAME)
                .await
                .context("can't delete the clone record")?;
        }
        store.mount_token(TokenOp::Clear).await.context("can't clear the mount token")?;
        let erased = erasing.finish(total);
        if !cfg.quiet {
            eprintln!("s3backer: erased {total} blocks of {what} (listed {listed}; deleted {erased})");
        }
        Ok(0)
    })
}

/// `--reset-mounted-flag`: clears the mount token and exits.
pub fn reset_mounted_flag(cfg: Config) -> Result<i32> {
    let store = store(&cfg)?;
    let old = runtime()?.block_on(crate::token::reset(&cfg, &store))?;
    if !cfg.quiet {
        match old {
            0 => eprintln!("s3backer: volume {} is not marked as mounted", cfg.describe()),
            _ => eprintln!("s3backer: cleared the mounted flag of {} (was {old:08x})", cfg.describe()),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use s3b_http::S3Config;
    use std::time::Duration;

    fn s3(args: &[&str]) -> anyhow::Result<S3Config> {
        let mut a = vec!["--accessId=AK", "--accessKey=SK"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["bkt", "/mnt"]);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let cfg = crate::config::validate(crate::args::parse(&a)?)?;
        Ok(cfg.s3.expect("a bucket has S3 settings"))
    }

    #[test]
    fn ip_tos_values_as_upstream() {
        assert_eq!(s3(&["--ipTOS=lowdelay"]).unwrap().connection.ip_tos, Some(0x10));
        assert_eq!(s3(&[]).unwrap().connection.ip_tos, None);
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
        assert_eq!(c.retry.max_total, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_named() {
        crate::config::assert_refused(
            s3,
            &[
                ("--baseURL=http://x", "must end with '/'"),
                ("--baseURL=ftp://x/", "http://"),
                ("--authVersion=aws2", "not supported"),
                ("--vhost --no-vhost", "cannot be used together"),
                ("--accessType=bogus", "--accessType"),
                ("--storageClass=CHEAP", "--storageClass"),
                ("--sse=aws:kms", "--sse-key-id"),
                ("--sse=XYZ", "--sse"),
                ("--timeout=0", "--timeout"),
                ("--timeout=x", "--timeout"),
                ("--maxUploadSpeed=1 --blockSize=1m", "--maxUploadSpeed"),
                ("--maxDownloadSpeed=800 --blockSize=1m", "too slow"),
                ("--initialRetryPause=5000 --maxRetryPause=100", "--initialRetryPause"),
                ("--ssl --baseURL=http://h/", "--ssl"),
                ("--cacert=/nonexistent/ca.pem", "--cacert"),
            ],
        );
    }
}
