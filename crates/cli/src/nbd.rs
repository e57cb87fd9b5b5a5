//! NBD mode: serves the volume with the built-in NBD server (crate `s3b-nbd`) instead of FUSE.
//!
//! `--nbd --nbdListen=ADDR BUCKET` listens on a Unix socket (created mode 0600, removed at exit)
//! or on `HOST:PORT`; TCP on anything but loopback needs `--nbdAllowRemote`, since NBD has no
//! authentication. Upstream's form `--nbd BUCKET /dev/nbdN` serves on a private Unix socket and
//! attaches the device with `nbd-client -unix SOCK /dev/nbdN -b 4096`, detaching it at exit.
//!
//! The life cycle is the mount mode's: checks first, then (without `-f`) daemonize, build the
//! stack, take the mount token, listen, and only then report success (exit 0 in the parent).
//! SIGTERM, SIGINT or SIGHUP stop accepting, answer outstanding requests, close connections,
//! flush every dirty block, clear the mount token and exit 0 (1 if the flush failed).

use crate::config::nbd::ListenAddr;
use crate::config::{Config, Location};
use crate::daemon::{self, ReadyPipe, ServeError};
use crate::stack;
use anyhow::{Context, Result, anyhow, bail};
use s3b_nbd::{ExportConfig, Listener, Server};
use s3b_volume::Volume;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Logical block size given to the kernel by `nbd-client` (upstream's choice).
const DEVICE_BLOCK_SIZE: &str = "4096";

/// Checks a Unix socket path before anything else happens: its directory must exist, and an
/// existing file there must be a stale socket (removed at bind), not a live server or a file.
fn check_socket_path(p: &Path) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        bail!("--nbdListen {}: directory {} does not exist", p.display(), dir.display());
    }
    match std::fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                bail!("--nbdListen {}: exists and is not a socket", p.display());
            }
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                bail!("--nbdListen {}: another server is listening there", p.display());
            }
            Ok(())
        }
    }
}

/// Loads the TLS certificate chain and key (PEM) into a server configuration.
pub fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .with_context(|| format!("--nbdTlsCert {cert}"))?;
    if certs.is_empty() {
        bail!("--nbdTlsCert {cert}: no certificate in the file");
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("--nbdTlsKey {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("--nbdTlsCert/--nbdTlsKey")?;
    Ok(Arc::new(cfg))
}

/// Where to serve, settled before daemonizing.
enum Target {
    Listen(ListenAddr),
    /// Serve on `socket`, attach `device` with nbd-client.
    Device {
        device: PathBuf,
        socket: PathBuf,
    },
}

/// Finds `prog` in PATH.
fn in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// Runs NBD mode to completion. Returns the process exit code.
pub fn run(mut cfg: Config) -> Result<i32> {
    if cfg.nbd.nbdkit_flags {
        log::warn!("--nbd-flag and --nbd-param are ignored: the built-in NBD server does not run nbdkit");
    }
    let target = match (cfg.nbd.listen.clone(), cfg.mountpoint.clone()) {
        (Some(addr), _) => {
            match &addr {
                ListenAddr::Unix(p) => check_socket_path(p)?,
                ListenAddr::Tcp(t) if !t.ip().is_loopback() => {
                    log::warn!(
                        "listening on {t}: NBD has no authentication, anyone who can reach it can read and write the volume"
                    )
                }
                ListenAddr::Tcp(_) => {}
            }
            Target::Listen(addr)
        }
        (None, Some(device)) => {
            if !device.exists() {
                bail!(
                    "NBD device {} does not exist (is the nbd kernel module loaded? try modprobe nbd), or serve with --nbdListen=ADDR instead",
                    device.display()
                );
            }
            if in_path("nbd-client").is_none() {
                bail!(
                    "nbd-client not found in PATH (Debian: apt-get install nbd-client), or serve with --nbdListen=ADDR instead"
                );
            }
            let device = std::path::absolute(&device).unwrap_or(device);
            let socket = std::env::temp_dir().join(format!("s3backer-nbd-{}.sock", std::process::id()));
            Target::Device { device, socket }
        }
        (None, None) => bail!("--nbd needs --nbdListen=ADDR or an NBD device"),
    };
    if let Location::Dir(d) = &cfg.location {
        let abs = d.canonicalize().with_context(|| format!("test directory {}", d.display()))?;
        cfg.location = Location::Dir(abs);
    }
    // Read before daemonizing: relative paths, and errors on the terminal.
    let tls = match &cfg.nbd.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let codec = crate::encoding::codec_config(&cfg)?;
    daemon::run_serving(cfg.foreground, |pipe, flusher| serve(&cfg, codec, target, tls, pipe, flusher))
}

/// Binds the listening socket; a Unix socket is created mode 0600 (a stale one is replaced).
fn bind(addr: &ListenAddr) -> Result<Listener> {
    match addr {
        ListenAddr::Unix(p) => {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
            // SAFETY: umask only changes the process's file-creation mask; restored below.
            let old = unsafe { libc::umask(0o177) };
            let l = tokio::net::UnixListener::bind(p);
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            let l = l.with_context(|| format!("can't listen on {}", p.display()))?;
            Ok(Listener::Unix(l))
        }
        ListenAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).with_context(|| format!("can't listen on {a}"))?;
            l.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(l)?))
        }
    }
}

/// Runs `nbd-client` with `args`; an error carries its own message.
fn nbd_client(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = std::process::Command::new("nbd-client")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("can't run nbd-client")?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let why = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
    bail!("nbd-client failed ({}): {why}", out.status)
}

fn serve(
    cfg: &Config,
    codec: s3b_codec::CodecConfig,
    target: Target,
    tls: Option<Arc<rustls::ServerConfig>>,
    pipe: Option<ReadyPipe>,
    flusher: std::io::Result<()>,
) -> std::result::Result<i32, ServeError> {
    let addr = match &target {
        Target::Listen(a) => a.clone(),
        Target::Device { socket, .. } => ListenAddr::Unix(socket.clone()),
    };
    // From here on `started` owns "the volume is started": every return below gives it back
    // (flushed, token cleared) when `started` is dropped.
    let started = match stack::start(cfg, codec) {
        Ok(s) => s,
        Err(e) => return Err((e, pipe)),
    };
    let (rt, stack) = (&started.rt, &started.stack);
    let listener = match rt.block_on(async { bind(&addr) }) {
        Ok(l) => l,
        Err(e) => return Err((e, pipe)),
    };
    let volume = Arc::new(Volume::new(stack.top.clone(), cfg.read_only));
    crate::metrics::observe_volume(&volume, "nbd");
    let description =
        format!("s3backer volume {}: {} blocks of {} bytes", cfg.describe(), stack.num_blocks, stack.block_size);
    let mut export = ExportConfig::new(cfg.describe(), description, cfg.read_only);
    export.tls = tls;
    let server = Server::new(volume, export);
    let server_tls = cfg.nbd.tls.is_some();
    let serving = rt.spawn(server.clone().run(listener));
    if let Err(e) = &flusher {
        daemon::io_flusher_warning(e);
    }
    if !cfg.quiet {
        log::info!(
            "serving {} over NBD on {addr} ({} blocks of {} bytes{}{})",
            cfg.describe(),
            stack.num_blocks,
            stack.block_size,
            if cfg.read_only { ", read-only" } else { "" },
            if server_tls { ", TLS required" } else { "" }
        );
    }

    let device = match &target {
        Target::Device { device, .. } => Some(device.clone()),
        Target::Listen(_) => None,
    };
    let attach = device.as_ref().map(|dev| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-unix".as_ref(),
            addr_path(&addr).as_os_str(),
            dev.as_os_str(),
            "-b".as_ref(),
            DEVICE_BLOCK_SIZE.as_ref(),
        ];
        if cfg.read_only {
            args.push("-readonly".as_ref());
        }
        nbd_client(&args)
    });
    let startup_error = match (attach, &device) {
        (Some(Err(e)), Some(dev)) => Some(e.context(format!("can't attach {}", dev.display()))),
        _ => None,
    };
    if let Some(dev) = &device
        && startup_error.is_none()
        && !cfg.quiet
    {
        log::info!("attached {}", dev.display());
    }

    // Signals: detach the device (the kernel flushes through us), then stop serving.
    // Installed here, before success is reported, so an early SIGTERM is never fatal.
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        let _ctx = rt.enter();
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    };
    let (mut int, mut term, mut hup) = match handlers {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            server.shutdown();
            let _ = rt.block_on(serving);
            remove_socket(&addr);
            return Err((anyhow!("can't install signal handlers"), pipe));
        }
    };
    let signals = {
        let server = server.clone();
        let device = device.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = int.recv() => log::info!("caught SIGINT, shutting down"),
                _ = term.recv() => log::info!("caught SIGTERM, shutting down"),
                _ = hup.recv() => log::info!("caught SIGHUP, shutting down"),
            }
            if let Some(dev) = device {
                let r = tokio::task::spawn_blocking(move || nbd_client(&[std::ffi::OsStr::new("-d"), dev.as_os_str()]))
                    .await;
                if let Ok(Err(e)) = r {
                    log::warn!("detaching the NBD device: {}", crate::one_line(&e));
                }
            }
            server.shutdown();
        })
    };

    let pipe = match (startup_error, pipe) {
        (Some(e), pipe) => {
            server.shutdown();
            let _ = rt.block_on(serving);
            remove_socket(&addr);
            return Err((e, pipe));
        }
        (None, pipe) => pipe,
    };
    let mirror = daemon::now_serving(pipe, cfg.front.stats_mirror.clone(), stack.stats.clone());
    let _ = rt.block_on(serving);
    crate::notify::stopping("NBD server stopped; flushing dirty blocks");
    signals.abort();
    remove_socket(&addr);
    if !cfg.quiet {
        log::info!("NBD server stopped; flushing dirty data");
    }
    let shutdown = started.finish();
    Ok(daemon::finished(shutdown, mirror, cfg.quiet, 0))
}

fn addr_path(a: &ListenAddr) -> &Path {
    match a {
        ListenAddr::Unix(p) => p,
        ListenAddr::Tcp(_) => Path::new(""),
    }
}

fn remove_socket(a: &ListenAddr) {
    if let ListenAddr::Unix(p) = a {
        let _ = std::fs::remove_file(p);
    }
}
