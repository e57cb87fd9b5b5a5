//! The snapshot commands (`--snapshot`, `--listSnapshots`, `--deleteSnapshot`) and the snapshot
//! layer of a mount's stack (copy-on-first-write on the live volume, or the read-only view of
//! `--fromSnapshot`). The format and the crash-safety argument are [`s3b_snap`]'s.
//!
//! Taking and deleting a snapshot first ask the daemon that has the volume mounted, through its
//! control socket ([`crate::control`]): it flushes and switches in one step, with no mount-token
//! handover. When no daemon answers there, the command holds the volume itself the way a mount
//! does (its mount token), so no writer runs meanwhile; a volume whose token is held although no
//! daemon answers (another host, C s3backer, another `--controlSocket`) is refused with one
//! line. Listing only reads.

use crate::config::{Config, Mode};
use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use s3b_snap::book::{self, SnapInfo};
use s3b_store::StoreError;
use s3b_store::{ObjectStore, StatsRegistry, TokenOp};
use std::collections::BTreeSet;
use std::future::Future;

/// Runs a snapshot command.
pub fn run(cfg: Config) -> Result<i32> {
    let rt = crate::daemon::runtime().context("can't start the runtime")?;
    rt.block_on(async {
        let stats = StatsRegistry::new();
        let transport = crate::stack::open_transport(&cfg, &stats).await?;
        let Some(named) = transport.named() else {
            bail!("snapshots need a bucket: this volume cannot have snapshots")
        };
        let what = cfg.describe();
        let name = cfg.snap.name.clone().unwrap_or_default();
        let socket = crate::control::socket_path(&cfg);
        let request = match cfg.mode {
            Mode::Snapshot => Some(format!("snapshot {name}")),
            Mode::DeleteSnapshot => Some(format!("delete {name}")),
            _ => None,
        };
        if let Some(request) = request
            && let Some(done) = crate::control::ask(&socket, &request).await?
        {
            if !cfg.quiet {
                eprintln!("s3backer: {done} (through its daemon)");
            }
            return Ok(0);
        }
        match cfg.mode {
            Mode::ListSnapshots => {
                let list = book::list(named).await.context("can't list the snapshots")?;
                if list.is_empty() && !cfg.quiet {
                    eprintln!("s3backer: {what} has no snapshots");
                }
                print!("{}", render_list(&list));
            }
            Mode::Snapshot => {
                if s3b_clone::read_record(named).await?.is_some() {
                    bail!("{what} is a clone: it cannot have snapshots until it is flattened (--flatten)");
                }
                let (block_size, num_blocks) = crate::stack::resolve_geometry(&cfg, transport.as_ref()).await?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let size = num_blocks * u64::from(block_size);
                let op = book::create(named, &name, block_size, size, now);
                hold(&cfg, transport.as_ref(), &socket, "taking a snapshot", op).await?;
                if !cfg.quiet {
                    eprintln!("s3backer: took snapshot \"{name}\" of {what}");
                }
            }
            Mode::DeleteSnapshot => {
                hold(&cfg, transport.as_ref(), &socket, "deleting a snapshot", book::delete(named, &name)).await?;
                if !cfg.quiet {
                    eprintln!("s3backer: deleted snapshot \"{name}\" of {what}");
                }
            }
            other => bail!("{} is not a snapshot command", other.flag()),
        }
        Ok(0)
    })
}

/// Runs `op` holding the volume (its mount token), as a mount would; refuses a volume mounted
/// by a daemon that did not answer on `socket`.
async fn hold<T>(
    cfg: &Config,
    transport: &dyn ObjectStore,
    socket: &std::path::Path,
    what: &str,
    op: impl Future<Output = std::result::Result<T, s3b_snap::SnapError>>,
) -> Result<T> {
    let old = transport.mount_token(TokenOp::Read).await.context("can't read the mount token")?;
    if old != 0 && !cfg.force {
        bail!(
            "{what}: the volume is mounted (mount token {old:08x}) but no daemon answers on {}: it is mounted on \
             another host or by C s3backer (or its daemon has another --controlSocket); if no mount is running, \
             use --reset-mounted-flag",
            socket.display()
        );
    }
    let token = crate::token::acquire(cfg, transport, None).await?;
    let result = op.await;
    let released = crate::token::release(transport, token, None).await;
    let value = result?;
    released?;
    Ok(value)
}

/// The live volume's snapshots as the NBD export's changed-block bitmaps
/// (`qemu:dirty-bitmap:NAME`: the blocks written since snapshot NAME).
pub struct SnapBitmaps {
    /// The live volume's snapshot layer.
    pub live: std::sync::Arc<s3b_snap::LiveStore>,
}

impl std::fmt::Debug for SnapBitmaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapBitmaps")
    }
}

impl s3b_nbd::DirtyBitmaps for SnapBitmaps {
    fn names(&self) -> BoxFuture<'_, std::result::Result<Vec<String>, StoreError>> {
        Box::pin(async { Ok(self.live.snapshot_names().await?) })
    }

    fn dirty<'a>(&'a self, name: &'a str) -> BoxFuture<'a, std::result::Result<BTreeSet<u64>, StoreError>> {
        Box::pin(async move { Ok(self.live.changed_since(name).await?.into_iter().map(u64::from).collect()) })
    }
}

/// The `--listSnapshots` table.
fn render_list(list: &[SnapInfo]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let width = list.iter().map(|i| i.snap.name.len()).max().unwrap_or(0).max(4);
    let mut out =
        format!("{:<width$}  {:<20}  {:>12}  {:>13}\n", "NAME", "TAKEN (UTC)", "BLOCKS HELD", "CHANGED SINCE");
    for i in list {
        out.push_str(&format!(
            "{:<width$}  {:<20}  {:>12}  {:>13}\n",
            i.snap.name,
            utc(i.snap.time),
            i.held,
            i.changed
        ));
    }
    out
}

/// `YYYY-mm-dd HH:MM:SS` of `secs` since 1970 (UTC).
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar, 400-year eras).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_825_599), "2000-02-29 11:59:59");
        assert_eq!(utc(1_893_553_445), "2030-01-02 03:04:05");
    }

    #[test]
    fn list_table() {
        let snap = s3b_snap::format::Snap {
            id: 1,
            name: "monday".into(),
            time: 0,
            deleting: false,
            block_size: 4096,
            file_size: 1 << 20,
        };
        let t = render_list(&[SnapInfo { snap, held: 3, changed: 7 }]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME  "), "{t}");
        assert!(lines[1].starts_with("monday  1970-01-01 00:00:00") && lines[1].ends_with(" 3              7"), "{t}");
    }
}
