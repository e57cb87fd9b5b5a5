//! The daemon's control socket: how `--snapshot` and `--deleteSnapshot` reach a daemon that has
//! the volume mounted (FUSE or NBD), so that a snapshot of a mounted volume is taken by the one
//! process that writes it, with no mount-token handover.
//!
//! A Unix stream socket, created mode 0600 (only its owner — root for a system mount — may ask),
//! removed when the daemon exits; a stale one left by a killed daemon is replaced. Its default
//! path is derived from the volume ([`socket_path`]), so the command finds the daemon of the
//! volume it names; `--controlSocket=PATH` chooses another.
//!
//! The protocol is one request line per connection and one reply line:
//!
//! ```text
//! snapshot NAME      →  ok took snapshot "NAME" of bucket/subdir/   |  error <one line>
//! delete NAME        →  ok deleted snapshot "NAME" of bucket/subdir/ |  error <one line>
//! ```
//!
//! A snapshot request flushes everything the caches hold dirty (so every write acknowledged
//! before the request is in the snapshot: "fsync means in S3"), then switches to the new
//! snapshot in one step with writes held at the snapshot layer's gate (see
//! [`s3b_snap::LiveStore::snapshot`]): point-in-time and crash-consistent, in a few requests
//! whatever the volume's size.

use crate::config::{Config, Location};
use anyhow::{Context, Result, bail};
use s3b_snap::LiveStore;
use s3b_store::BlockStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Longest request line accepted: a verb and a snapshot name fit many times over.
const MAX_REQUEST: u64 = 4096;

/// Pause after a failed accept (out of descriptors, say): the failure is not retried at once.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Directory of root's default control sockets.
const SYSTEM_DIR: &str = "/run/s3backer";

/// The control socket of the volume `cfg` names: `--controlSocket`, or
/// `/run/s3backer/<volume>.sock` for root (`$XDG_RUNTIME_DIR/s3backer/…`, else
/// `/tmp/s3backer-<uid>/…`, for other users), where `<volume>` is a 16-digit hash of the
/// server's URL, the bucket and the prefix: the same volume gives the same path in the daemon
/// and in the command, and the path stays short enough for a socket whatever the names.
pub fn socket_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.snap.control_socket {
        return p.clone();
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = if uid == 0 {
        PathBuf::from(SYSTEM_DIR)
    } else if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|r| !r.is_empty()) {
        PathBuf::from(run).join("s3backer")
    } else {
        PathBuf::from(format!("/tmp/s3backer-{uid}"))
    };
    dir.join(format!("{:016x}.sock", fnv1a(volume_identity(cfg).as_bytes())))
}

/// What names the volume: the server's URL, the bucket (or `--test` directory) and the prefix.
fn volume_identity(cfg: &Config) -> String {
    let base = cfg.s3.as_ref().map_or("", |s| s.base_url.as_str());
    let place = match &cfg.location {
        Location::Bucket(b) => b.clone(),
        Location::Dir(d) => d.display().to_string(),
    };
    format!("{}\n{place}\n{}", base.trim_end_matches('/'), cfg.prefix)
}

/// FNV-1a, 64 bits: a stable hash (the daemon and the command must agree across builds).
fn fnv1a(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    data.iter().fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What the daemon serves requests with.
pub struct Handler {
    /// The top of the stack: flushed before a snapshot.
    pub top: Arc<dyn BlockStore>,
    /// The snapshot layer of the live volume.
    pub live: Arc<LiveStore>,
    /// Block size in bytes.
    pub block_size: u32,
    /// Volume size in bytes.
    pub file_size: u64,
    /// The volume, for replies.
    pub what: String,
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Snapshot(String),
    Delete(String),
}

fn parse(line: &str) -> Result<Request> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (verb, name) = line.split_once(' ').unwrap_or((line, ""));
    s3b_snap::format::check_name(name)?;
    match verb {
        "snapshot" => Ok(Request::Snapshot(name.to_string())),
        "delete" => Ok(Request::Delete(name.to_string())),
        other => bail!("unknown control request \"{}\"", other.escape_default()),
    }
}

impl Handler {
    /// Answers one request line with one reply line (`ok …` or `error …`).
    pub async fn answer(&self, line: &str) -> String {
        match self.serve(line).await {
            Ok(msg) => format!("ok {msg}\n"),
            Err(e) => format!("error {}\n", crate::one_line(&e)),
        }
    }

    async fn serve(&self, line: &str) -> Result<String> {
        match parse(line)? {
            Request::Snapshot(name) => {
                self.top.flush(None).await.context("flushing the volume before the snapshot failed")?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.live.snapshot(&name, self.block_size, self.file_size, now).await?;
                log::info!("took snapshot \"{name}\" of {}", self.what);
                Ok(format!("took snapshot \"{name}\" of {}", self.what))
            }
            Request::Delete(name) => {
                self.top.flush(None).await.context("flushing the volume failed")?;
                self.live.delete_snapshot(&name).await?;
                log::info!("deleted snapshot \"{name}\" of {}", self.what);
                Ok(format!("deleted snapshot \"{name}\" of {}", self.what))
            }
        }
    }
}

/// The listening control socket; dropping it stops serving and removes the socket file, unless
/// another daemon (a `--force` mount that took it over) has bound a new one at the path since.
pub struct ControlSocket {
    path: PathBuf,
    /// Device and inode of the socket file this daemon bound.
    bound: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

/// Device and inode of the file at `path`, if any.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        if self.bound.is_some() && file_id(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Listens on `path` (mode 0600; its directory is created mode 0700 if missing; a stale socket
/// is replaced, a live one refused unless `take_over`: `--force` mounts over a daemon it
/// fences out) and serves `handler` on the current runtime.
pub fn listen(path: &Path, handler: Arc<Handler>, take_over: bool) -> Result<ControlSocket> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("control socket {shown}: can't create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => bail!("control socket {shown}: exists and is not a socket"),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                if !take_over {
                    bail!(
                        "control socket {shown}: another daemon answers there (give this mount its own --controlSocket)"
                    );
                }
                log::warn!("control socket {shown}: another daemon answers there; taking it over (--force)");
            }
            std::fs::remove_file(path).with_context(|| format!("control socket {shown}: can't replace it"))?
        }
        Err(_) => {}
    }
    // SAFETY: umask only changes the process's file-creation mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("can't listen on control socket {shown}"))?;
    let bound = file_id(path);
    let task = tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    log::warn!("accepting on the control socket failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = conn.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
                if rd.read_line(&mut line).await.is_err() || line.is_empty() {
                    return;
                }
                let reply = handler.answer(&line).await;
                let _ = wr.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(ControlSocket { path: path.to_path_buf(), bound, task })
}

/// Sends `request` (one line, no newline) to the daemon on `path`. `Ok(None)`: no daemon
/// listens there (no socket, or a stale one); `Ok(Some(message))`: it did it; an error: it
/// refused (its one line) or could not be asked.
pub async fn ask(path: &Path, request: &str) -> Result<Option<String>> {
    let conn = match tokio::net::UnixStream::connect(path).await {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("can't reach the daemon's control socket {}", path.display())),
    };
    let (rd, mut wr) = conn.into_split();
    wr.write_all(format!("{request}\n").as_bytes()).await.context("can't send to the daemon's control socket")?;
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await.context("can't read the daemon's answer")?;
    let line = line.trim_end();
    if let Some(msg) = line.strip_prefix("ok ") {
        return Ok(Some(msg.to_string()));
    }
    match line.strip_prefix("error ") {
        Some(msg) => bail!("{msg}"),
        None if line.is_empty() => bail!("the daemon closed its control socket {} without answering", path.display()),
        None => bail!("unexpected answer from the daemon's control socket: {}", line.escape_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        crate::config::validate(crate::args::parse(&a).unwrap()).unwrap()
    }

    #[test]
    fn requests_parse_and_bad_ones_are_named() {
        assert_eq!(parse("snapshot mon\n").unwrap(), Request::Snapshot("mon".into()));
        assert_eq!(parse("delete a.b-c\r\n").unwrap(), Request::Delete("a.b-c".into()));
        for (line, want) in [
            ("snapshot\n", "invalid snapshot name \"\""),
            ("snapshot a/b\n", "invalid snapshot name \"a/b\""),
            ("snapshot -x\n", "invalid snapshot name \"-x\""),
            ("erase all\n", "unknown control request \"erase\""),
            ("\u{1b}[0m x\n", "unknown control request \"\\u{1b}[0m\""),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.starts_with(want), "{line:?}: {e}");
        }
    }

    #[test]
    fn the_default_path_names_the_volume() {
        let keys = ["--accessId=AK", "--accessKey=SK"];
        let a = socket_path(&cfg(&[keys[0], keys[1], "bkt/vol", "/mnt"]));
        let b = socket_path(&cfg(&[keys[0], keys[1], "--snapshot=x", "bkt/vol"]));
        let c = socket_path(&cfg(&[keys[0], keys[1], "bkt/other", "/mnt"]));
        let d = socket_path(&cfg(&[keys[0], keys[1], "--baseURL=http://127.0.0.1:9/", "bkt/vol", "/mnt"]));
        assert_eq!(a, b, "the mount and the command agree");
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(
            a.as_os_str().len() <= crate::config::snap::MAX_SOCKET_PATH
                || std::env::var_os("XDG_RUNTIME_DIR").is_some()
        );
        let e = socket_path(&cfg(&[keys[0], keys[1], "--controlSocket=/tmp/x.sock", "bkt/vol", "/mnt"]));
        assert_eq!(e, Path::new("/tmp/x.sock"));
        let f = socket_path(&cfg(&[keys[0], keys[1], "-o", "controlSocket=/tmp/y.sock", "bkt/vol", "/mnt"]));
        assert_eq!(f, Path::new("/tmp/y.sock"));
    }

    #[tokio::test]
    async fn nobody_listening_is_none_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        assert!(ask(&p, "snapshot a").await.unwrap().is_none());
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        assert!(ask(&p, "snapshot a").await.unwrap().is_none(), "a stale socket: nobody answers");
    }

    #[tokio::test]
    async fn a_daemon_removes_only_the_socket_it_bound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        let first = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let ours = ControlSocket { path: p.clone(), bound: file_id(&p), task: tokio::spawn(async {}) };
        // A --force mount took the path over: the fenced daemon's exit leaves its socket.
        std::fs::remove_file(&p).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&p).unwrap();
        drop(ours);
        assert!(p.exists(), "the new daemon's socket was removed");
        drop(first);
        let again = ControlSocket { path: p.clone(), bound: file_id(&p), task: tokio::spawn(async {}) };
        drop(again);
        assert!(!p.exists(), "a daemon's own socket is removed at exit");
    }
}
