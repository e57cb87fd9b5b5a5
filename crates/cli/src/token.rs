//! The mount-token protocol, as the program runs it (the token object itself is the
//! transport's: `s3b_http` and `s3b_dir` store it, with compare-and-swap).
//!
//! A mount refuses a volume that appears mounted unless `--force`, sets its own random token
//! while mounted and clears it on clean unmount; read-only mounts write nothing at all.
//! Setting and clearing are compare-and-swaps ([`ObjectStore::swap_mount_token`]), so two
//! mounts that start at the same instant cannot both come up; the S3 transport retries the
//! errors S3 documents inside that swap and may leave another value of this mount's than the
//! one asked for, which is then the token (see `s3b_http::token`). A start that fails after the
//! token was set gives it back (the guard `crate::daemon::Started`). `--sharedDiskMode` volumes carry
//! the shared token [`SHARED_DISK_TOKEN`], which other shared mounts accept, plain mounts
//! refuse, and unmount leaves set. The block cache file remembers the token of its last mount,
//! so a crashed mount's dirty blocks can be recovered. `--reset-mounted-flag` clears the token
//! whoever set it ([`reset`]), as does `--erase` once every block is gone.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use s3b_cache::CacheFile;
use s3b_store::{ObjectStore, SHARED_DISK_TOKEN, TokenOp, TokenSwap};

/// Checks the volume is not mounted elsewhere and, unless read-only, marks it mounted by us
/// (in the store and in the block cache file, if any). Returns our token, 0 when there is
/// nothing to clear at unmount (read-only, or `--sharedDiskMode`, whose shared token 0x7fffffff
/// other hosts' mounts accept and which stays set).
///
/// A crashed mount leaves its token both in the store and in its cache file. When they match
/// and `--blockCacheRecoverDirtyBlocks` is given, the "already mounted" conflict is waived: the
/// volume was last mounted by this cache, whose dirty blocks are about to be recovered.
pub async fn acquire(cfg: &Config, objects: &dyn ObjectStore, cache_file: Option<&CacheFile>) -> Result<u32> {
    if cfg.snap.from.is_some() {
        // A snapshot never changes: it may be mounted beside the live volume's mount.
        return Ok(0);
    }
    let old = objects.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
    let cached = cache_file.map_or(0, |f| f.stored_token());
    let recover_dirty = cfg.cache.block_cache.as_ref().is_some_and(|b| b.file_options.recover_dirty);
    let recovering = old != 0 && cached == old && recover_dirty;
    if cached != 0 && cached != old {
        log::warn!("block cache file was last used by mount token {cached:08x}, but the volume has {old:08x}");
    }
    let shared_set = cfg.shared_disk && old == SHARED_DISK_TOKEN;
    if recovering {
        log::info!("volume was last mounted with this cache file (token {old:08x}): recovering after a crash");
    } else if old != 0 && !shared_set {
        let msg = if old == SHARED_DISK_TOKEN {
            "volume appears to be configured for --sharedDiskMode (mount token 7fffffff)".to_string()
        } else {
            format!("volume appears to be already mounted (mount token {old:08x})")
        };
        if !cfg.force {
            bail!("{msg}; if it is not, use --reset-mounted-flag, or --force to override");
        }
        log::warn!("{msg}; proceeding because of --force");
    }
    if cfg.read_only {
        return Ok(0);
    }
    if cfg.shared_disk {
        if !shared_set {
            objects.mount_token(TokenOp::Set(SHARED_DISK_TOKEN)).await.context("can't set the mount token")?;
            log::info!("established the mount token for shared disk mode");
        }
        // Never cleared by us: other hosts may still have the volume mounted.
        return Ok(0);
    }
    let token = loop {
        let t = rand::random::<u32>() & 0x7fff_ffff;
        if t != 0 && t != SHARED_DISK_TOKEN {
            break t;
        }
    };
    // A compare-and-swap from the token read above: of mounts starting at the same instant, at
    // most one gets past this line. The transport may have written another value of ours than
    // `token` (a fresh one per attempt): the one in place is ours from here on.
    let token = match objects.swap_mount_token(old, token).await.context("can't set the mount token")? {
        TokenSwap::Done(now) => now,
        TokenSwap::Changed(now) => bail!(
            "volume appears to be already mounted (mount token {now:08x}, set by another mount while this one was starting); \
             if it is not, use --reset-mounted-flag, or --force to override"
        ),
    };
    if let Some(f) = cache_file {
        if let Err(e) = f.set_token(token) {
            // Not started after all: give the volume back as it was.
            if let Err(r) = release(objects, token, None).await {
                log::debug!("releasing the mount token: {r:#}");
            }
            return Err(e.into());
        }
        f.allow_uploads();
    }
    Ok(token)
}

/// Clears the mount token on clean unmount (if we set one), in the store and the cache file.
pub async fn release(objects: &dyn ObjectStore, token: u32, cache_file: Option<&CacheFile>) -> Result<()> {
    if token != 0 {
        match objects.swap_mount_token(token, 0).await.context("can't clear the mount token")? {
            TokenSwap::Done(_) => {}
            // Someone replaced ours (--force, or --reset-mounted-flag and a new mount): theirs stays.
            TokenSwap::Changed(now) => log::warn!(
                "the volume's mount token is {now:08x}, not ours ({token:08x}): another mount took the volume over; left it in place"
            ),
        }
        if let Some(f) = cache_file {
            f.set_token(0)?;
        }
    }
    Ok(())
}

/// `--reset-mounted-flag`: clears the volume's mount token, whoever set it. Returns the token
/// that was set (0: none, nothing written). Refused with `--readOnly` when there is one to clear.
pub async fn reset(cfg: &Config, objects: &dyn ObjectStore) -> Result<u32> {
    let old = objects.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
    if old == 0 {
        return Ok(0);
    }
    if cfg.read_only {
        bail!("--reset-mounted-flag cannot clear the flag with --readOnly");
    }
    objects.mount_token(TokenOp::Clear).await.context("can't clear the mount token")?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_cache::FileOptions;
    use s3b_store::mock::{MemObjects, Op};

    fn cfg(extra: &[&str]) -> Config {
        let mut a = vec!["--test", "--size=1m", "--blockCacheFile=/unused", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        crate::config::validate(crate::args::parse(&a).unwrap()).unwrap()
    }

    /// Runs `acquire` while another mount sets its token (0x1234) on `objects` between our read
    /// of the token and our swap.
    async fn raced<T>(objects: &MemObjects, acquire: impl std::future::Future<Output = T>) -> T {
        let gate = objects.hold(Op::Token);
        gate.allow(1); // our read
        let other_mount = async {
            gate.arrived(2).await; // our swap waits at the gate
            objects.set_token(0x1234);
            gate.release();
        };
        tokio::join!(acquire, other_mount).0
    }

    #[tokio::test]
    async fn a_mount_that_loses_the_race_is_refused_and_leaves_the_winner_alone() {
        let objects = MemObjects::new();
        let err = raced(&objects, acquire(&cfg(&[]), &objects, None)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted (mount token 00001234"), "{err}");
        assert_eq!(objects.token(), 0x1234);
        // Same with --force: the token it was told to override is not the one there now.
        objects.set_token(0x77);
        let err = raced(&objects, acquire(&cfg(&["--force"]), &objects, None)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted"), "{err}");
        assert_eq!(objects.token(), 0x1234);
        // Unmounting after someone else took the volume over leaves their token.
        release(&objects, 0x99, None).await.unwrap();
        assert_eq!(objects.token(), 0x1234);
    }

    #[tokio::test]
    async fn crashed_mount_with_its_cache_file_recovers_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let objects = MemObjects::new();
        let file = CacheFile::open(&path, 4096, 8, FileOptions::default()).unwrap();
        // First mount: token set in both places; then a "crash" (no release).
        let t1 = acquire(&cfg(&[]), &objects, Some(&file)).await.unwrap();
        assert_eq!(file.stored_token(), t1);
        assert_eq!(objects.token(), t1);
        drop(file);

        let file = CacheFile::open(&path, 4096, 8, FileOptions { recover_dirty: true, ..Default::default() }).unwrap();
        // Without the recovery flag: the usual "already mounted" refusal.
        let err = acquire(&cfg(&[]), &objects, Some(&file)).await.unwrap_err().to_string();
        assert!(err.contains("already mounted"), "{err}");
        // With it, and the same token in the cache file: allowed.
        let t2 = acquire(&cfg(&["--blockCacheRecoverDirtyBlocks"]), &objects, Some(&file)).await.unwrap();
        assert_ne!(t2, t1);
        assert!(file.uploads_allowed());
        release(&objects, t2, Some(&file)).await.unwrap();
        assert_eq!((file.stored_token(), objects.token()), (0, 0));

        // Another mount's token (not ours): still refused.
        objects.set_token(0x55);
        let err = acquire(&cfg(&["--blockCacheRecoverDirtyBlocks"]), &objects, Some(&file)).await.unwrap_err();
        assert!(err.to_string().contains("already mounted"));
    }

    #[tokio::test]
    async fn reset_clears_any_token_but_not_read_only() {
        let objects = MemObjects::new();
        assert_eq!(reset(&cfg(&[]), &objects).await.unwrap(), 0, "nothing set, nothing to clear");
        objects.set_token(0x42);
        let err = reset(&cfg(&["--readOnly"]), &objects).await.unwrap_err().to_string();
        assert!(err.contains("--readOnly"), "{err}");
        assert_eq!(objects.token(), 0x42);
        assert_eq!(reset(&cfg(&[]), &objects).await.unwrap(), 0x42);
        assert_eq!(objects.token(), 0);
    }
}
