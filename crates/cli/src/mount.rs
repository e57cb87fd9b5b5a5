//! Mount mode: checks, daemonizing, the FUSE session, and a clean shutdown.
//!
//! Shutdown is the same whichever way it starts (`umount`, `fusermount3 -u`, SIGINT, SIGTERM):
//! the FUSE session ends, outstanding requests finish, the stack is shut down — which writes
//! every dirty block — and only then is the mount token cleared and the process exits 0. A
//! failed flush is reported and the exit code is 1, so data loss is never silent.

use crate::config::Config;
use crate::daemon::{self, ReadyPipe, ServeError};
use crate::fuse_options::MountSettings;
use crate::stack;
use anyhow::{Context, Result, bail};
use fuser::{MountOption, SessionACL};
use s3b_fuse::{FuseConfig, FuseTuning, VolumeFs};
use s3b_volume::Volume;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checks the mount point before anything else happens.
fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(p).with_context(|| format!("mount point {}", p.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", p.display());
    }
    let canon = p.canonicalize().with_context(|| format!("mount point {}", p.display()))?;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let target = canon.to_string_lossy();
        if info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| unescape_mount(m) == target)) {
            bail!("mount point {} is already mounted", p.display());
        }
    }
    Ok(canon)
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for space, …).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fewest FUSE session threads of a multi-threaded mount: one request doing the work of its
/// first poll on its thread (a cache-file write and sync, see s3b_fuse) must not hold up the
/// cache hits behind it.
const MIN_FUSE_THREADS: usize = 2;
/// Most FUSE session threads: one per core up to here bounds threads and stacks; what waits
/// (S3, uploads) runs on the runtime, not on these threads, so more would not add throughput.
const MAX_FUSE_THREADS: usize = 8;

/// The FUSE mount options and file-system settings from the configuration.
fn fuse_settings(cfg: &Config) -> Result<(fuser::Config, FuseConfig)> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = vec![
        MountOption::FSName(crate::identity::mount_source(cfg)),
        crate::fuse_options::subtype(crate::identity::SUBTYPE),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // Upstream mounts with allow_other by default.
    let mut m = MountSettings { options, acl: SessionACL::All, uid, gid, tuning: FuseTuning::default() };
    for o in &cfg.front.fuse_options {
        m.apply(o)?;
    }
    if cfg.read_only {
        m.read_only();
    }
    let MountSettings { options: opts, acl, uid, gid, tuning } = m;
    // Requests that hit the cache are answered on these threads (see s3b_fuse), so there is
    // one per core within the bounds; `-s` keeps upstream's single thread.
    let cores = std::thread::available_parallelism().map_or(MIN_FUSE_THREADS, |n| n.get());
    let threads = if cfg.front.single_thread { 1 } else { cores.clamp(MIN_FUSE_THREADS, MAX_FUSE_THREADS) };
    let mut fc = fuser::Config::default();
    fc.mount_options = opts;
    fc.acl = acl;
    fc.n_threads = Some(threads);
    fc.clone_fd = threads > 1;
    let fs = FuseConfig {
        filename: cfg.front.filename.clone(),
        stats_filename: cfg.front.stats_filename.clone(),
        file_mode: cfg.front.file_mode,
        read_only: cfg.read_only,
        direct_io: cfg.front.direct_io,
        uid,
        gid,
        tuning,
    };
    Ok((fc, fs))
}

/// Runs a mount to completion. Returns the process exit code.
pub fn run(mut cfg: Config) -> Result<i32> {
    let mountpoint = check_mountpoint(cfg.mountpoint.as_deref().context("no mount point")?)?;
    cfg.mountpoint = Some(mountpoint.clone());
    if let crate::config::Location::Dir(d) = &cfg.location {
        // Absolute, so the daemon can leave the working directory.
        let abs = d.canonicalize().with_context(|| format!("test directory {}", d.display()))?;
        cfg.location = crate::config::Location::Dir(abs);
    }
    let (fuse_cfg, fs_cfg) = fuse_settings(&cfg)?;
    let codec = crate::encoding::codec_config(&cfg)?;

    daemon::run_serving(cfg.foreground, |pipe, flusher| {
        serve(&cfg, codec, &mountpoint, fuse_cfg, fs_cfg, pipe, flusher)
    })
}

fn serve(
    cfg: &Config,
    codec: s3b_codec::CodecConfig,
    mountpoint: &Path,
    fuse_cfg: fuser::Config,
    fs_cfg: FuseConfig,
    pipe: Option<ReadyPipe>,
    flusher: std::io::Result<()>,
) -> std::result::Result<i32, ServeError> {
    // From here on `started` owns "the volume is started": every return below gives it back
    // (flushed, token cleared) when `started` is dropped, after the session it is declared
    // before.
    let started = match stack::start(cfg, codec) {
        Ok(s) => s,
        Err(e) => return Err((e, pipe)),
    };
    let (rt, stack) = (&started.rt, &started.stack);
    let volume = Arc::new(Volume::new(stack.top.clone(), cfg.read_only));
    crate::metrics::observe_volume(&volume, "fuse");
    let fs = VolumeFs::new(volume, stack.stats.clone(), fs_cfg, rt.handle().clone());
    let in_flight = fs.in_flight();
    let mut session = match fuser::Session::new(fs, mountpoint, &fuse_cfg) {
        Ok(s) => s,
        Err(e) => {
            return Err((anyhow::Error::new(e).context(format!("can't mount on {}", mountpoint.display())), pipe));
        }
    };
    if !cfg.quiet {
        log::info!(
            "mounted {} on {} ({} blocks of {} bytes)",
            cfg.describe(),
            mountpoint.display(),
            stack.num_blocks,
            stack.block_size
        );
    }

    if let Err(e) = &flusher {
        daemon::io_flusher_warning(e);
    }

    // Signals end the session the way umount does.
    let signals = match signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => return Err((anyhow::Error::new(e).context("can't install signal handlers"), pipe)),
    };
    let sig_handle = signals.handle();
    spawn_unmounter(signals, session.unmount_callable(), mountpoint.to_path_buf());

    let mirror = daemon::now_serving(pipe, cfg.front.stats_mirror.clone(), stack.stats.clone());
    let run_result = session.run();
    crate::notify::stopping("unmounted; flushing dirty blocks");
    sig_handle.close();
    if let Err(e) = &run_result {
        log::error!("FUSE session ended with an error: {e}");
    }
    if !cfg.quiet {
        log::info!("unmounted; flushing dirty data");
    }
    rt.block_on(in_flight.wait_idle());
    let shutdown = started.finish();
    Ok(daemon::finished(shutdown, mirror, cfg.quiet, if run_result.is_ok() { 0 } else { 1 }))
}

/// Ends the session the way umount does on SIGINT, SIGTERM or SIGHUP (a busy mount point is
/// detached instead, and the session ends once its last user lets go).
fn spawn_unmounter(
    mut signals: signal_hook::iterator::Signals,
    mut unmounter: fuser::SessionUnmounter,
    detach_path: PathBuf,
) {
    std::thread::spawn(move || {
        for sig in signals.forever() {
            log::info!("caught signal {sig}, unmounting");
            match unmounter.unmount() {
                Ok(()) => break,
                // Still in use (a loop device or an open file): detach it from the namespace
                // and keep serving the remaining users; the session ends, and everything is
                // flushed, once the last of them lets go. Ending the session now, as libfuse
                // does, would fail their writes.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    log::warn!(
                        "{} is busy; detached it (lazy unmount): exiting once the last user closes the file",
                        detach_path.display()
                    );
                    if let Err(e) = lazy_unmount(&detach_path) {
                        log::error!("lazy unmount failed: {e}");
                    }
                    break;
                }
                Err(e) => log::error!("unmount failed: {e}"),
            }
        }
    });
}

/// Detaches a busy mount point (`umount -l`).
fn lazy_unmount(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse_options::Value;

    fn settings(o: &str) -> Result<(fuser::Config, FuseConfig)> {
        let a: Vec<String> = ["--test", "--size=1m", "-o", o, "dir", "mnt"].iter().map(|s| s.to_string()).collect();
        fuse_settings(&crate::config::validate(crate::args::parse(&a)?)?)
    }

    #[test]
    fn fstab_options_from_libfuse_2_and_3_are_accepted() {
        // Every option of the table, with a value of its kind, goes through the whole parse.
        for opt in crate::fuse_options::TABLE.iter() {
            let o = match opt.value {
                Value::None => opt.name.to_string(),
                Value::Number => format!("{}=7", opt.name),
                Value::Seconds => format!("{}=0.5", opt.name),
                Value::Text => format!("{}=x", opt.name),
            };
            settings(&o).unwrap_or_else(|e| panic!("{o}: {e:#}"));
        }
        let (_, fs) = settings(
            "entry_timeout=2.5,attr_timeout=1,max_background=100,congestion_threshold=75,max_readahead=131072",
        )
        .unwrap();
        let t = fs.tuning;
        assert_eq!(t.entry_ttl, std::time::Duration::from_millis(2500));
        assert_eq!(t.attr_ttl, std::time::Duration::from_secs(1));
        assert_eq!((t.max_background, t.congestion_threshold, t.max_readahead), (100, 75, Some(131072)));
        let (_, fs) = settings("kernel_cache,auto_cache,sync_read").unwrap();
        assert_eq!(fs.tuning.entry_ttl, FuseTuning::default().entry_ttl);
    }

    #[test]
    fn opposite_mount_words_last_one_counts() {
        // What mount.fuse3 passes for an fstab entry: its own words first.
        let (fc, _) = settings("rw,dev,suid,nodev,noexec,exec").unwrap();
        let o = &fc.mount_options;
        assert!(o.contains(&MountOption::NoDev) && !o.contains(&MountOption::Dev), "{o:?}");
        assert!(o.contains(&MountOption::Suid) && !o.contains(&MountOption::NoSuid), "{o:?}");
        assert!(o.contains(&MountOption::Exec) && !o.contains(&MountOption::NoExec), "{o:?}");
        assert!(o.contains(&MountOption::RW) && !o.contains(&MountOption::RO), "{o:?}");
        let (fc, _) = settings("rw,ro").unwrap();
        assert!(fc.mount_options.contains(&MountOption::RO) && !fc.mount_options.contains(&MountOption::RW));
    }

    #[test]
    fn bad_fuse_option_values_are_named() {
        for (o, want) in [
            ("entry_timeout=soon", "invalid mount option \"entry_timeout=soon\": expected a number of seconds"),
            ("attr_timeout=-1", "invalid mount option \"attr_timeout=-1\""),
            ("max_background=70000", "invalid mount option \"max_background=70000\": expected a number up to 65535"),
            ("congestion_threshold", "invalid mount option \"congestion_threshold\""),
            ("max_readahead=lots", "invalid mount option \"max_readahead=lots\": expected a number"),
        ] {
            let e = format!("{:#}", settings(o).unwrap_err());
            assert!(e.starts_with(want), "{o}: {e}");
        }
        // A misspelt word that is no option at all stays an error.
        let e = format!("{:#}", settings("auto_cach").unwrap_err());
        assert_eq!(e, "unknown mount option \"auto_cach\"");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }
}
