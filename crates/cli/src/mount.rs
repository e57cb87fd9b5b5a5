//! Mount mode: checks, daemonizing, the FUSE session, and a clean shutdown.
//!
//! Shutdown is the same whichever way it starts (`umount`, `fusermount3 -u`, SIGINT, SIGTERM):
//! the FUSE session ends, outstanding requests finish, the stack is shut down — which writes
//! every dirty block — and only then is the mount token cleared and the process exits 0. A
//! failed flush is reported and the exit code is 1, so data loss is never silent.

use crate::config::Config;
use crate::daemon::{self, ReadyPipe, ServeError};
use crate::stack;
use anyhow::{Context, Result, anyhow, bail};
use fuser::{MountOption, SessionACL};
use s3b_fuse::{FuseConfig, FuseTuning, VolumeFs};
use s3b_volume::Volume;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// FUSE options (libfuse 3, and libfuse 2 for command lines and fstab entries written for
/// s3backer 1.x) that are already what we do, so they need nothing: `kernel_cache` and
/// `auto_cache` (the page cache is kept across opens and stays valid, since the volume changes
/// only through this mount; `--directIO` bypasses it), `use_ino` (our inode numbers are fixed),
/// `nonempty` (FUSE 3 mounts over non-empty directories anyway), `big_writes` and `large_read`
/// (always on in FUSE 3).
const ALREADY_SO_OPTIONS: &[&str] = &["kernel_cache", "auto_cache", "use_ino", "nonempty", "big_writes", "large_read"];

/// FUSE options accepted so that existing command lines and fstab entries keep working, but
/// that this implementation cannot honour: each gives a one-line warning.
const NO_EFFECT_OPTIONS: &[&str] = &["sync_read", "negative_timeout", "max_read", "max_write"];

/// Every FUSE option name the `-o` lists accept (with or without `=value`); the command-line
/// expansion and `fuse_settings` use this one list.
pub const FUSE_OPTION_NAMES: &[&str] = &[
    "allow_other",
    "allow_root",
    "default_permissions",
    "uid",
    "gid",
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "sync",
    "async",
    "dirsync",
    "fsname",
    "subtype",
    "auto_unmount",
    "direct_io",
    "debug",
    "entry_timeout",
    "attr_timeout",
    "max_background",
    "congestion_threshold",
    "max_readahead",
    "kernel_cache",
    "auto_cache",
    "use_ino",
    "nonempty",
    "big_writes",
    "large_read",
    "sync_read",
    "negative_timeout",
    "max_read",
    "max_write",
];

/// Mount options that come in opposite pairs: (word, its opposite, option, opposite option).
const OPPOSITES: [(&str, &str, MountOption, MountOption); 6] = [
    ("ro", "rw", MountOption::RO, MountOption::RW),
    ("dev", "nodev", MountOption::Dev, MountOption::NoDev),
    ("suid", "nosuid", MountOption::Suid, MountOption::NoSuid),
    ("exec", "noexec", MountOption::Exec, MountOption::NoExec),
    ("atime", "noatime", MountOption::Atime, MountOption::NoAtime),
    ("sync", "async", MountOption::Sync, MountOption::Async),
];

/// The option a word of [`OPPOSITES`] sets and the one it clears.
fn opposite(word: &str) -> Option<(MountOption, MountOption)> {
    OPPOSITES.iter().find_map(|(yes, no, a, b)| match word {
        w if w == *yes => Some((a.clone(), b.clone())),
        w if w == *no => Some((b.clone(), a.clone())),
        _ => None,
    })
}

/// Sets mount flag `on`, dropping its opposite `off` (and any earlier `on`).
fn either(opts: &mut Vec<MountOption>, on: MountOption, off: MountOption) {
    opts.retain(|o| *o != on && *o != off);
    opts.push(on);
}

/// Parses a FUSE timeout in seconds (`entry_timeout=1.5`).
fn parse_timeout(o: &str, v: Option<&str>) -> Result<std::time::Duration> {
    v.and_then(|v| v.parse::<f64>().ok())
        .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| anyhow!("invalid mount option \"{o}\": expected a number of seconds"))
}

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

/// The FUSE mount options and file-system settings from the configuration.
fn fuse_settings(cfg: &Config) -> Result<(fuser::Config, FuseConfig)> {
    // SAFETY: getuid/getgid cannot fail.
    let (mut uid, mut gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut opts = vec![
        MountOption::FSName(crate::identity::mount_source(cfg)),
        crate::identity::subtype(crate::identity::SUBTYPE),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // Upstream mounts with allow_other by default.
    let mut acl = SessionACL::All;
    let mut tuning = FuseTuning::default();
    for o in &cfg.front.fuse_options {
        let (name, value) = o.split_once('=').map_or((o.as_str(), None), |(n, v)| (n, Some(v)));
        let num = |v: Option<&str>| -> Result<u32> {
            v.and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("invalid mount option \"{o}\": expected a number"))
        };
        let small = |v: Option<&str>| -> Result<u16> {
            v.and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("invalid mount option \"{o}\": expected a number up to 65535"))
        };
        match name {
            "allow_other" => acl = SessionACL::All,
            "allow_root" => acl = SessionACL::RootAndOwner,
            "uid" => uid = num(value)?,
            "gid" => gid = num(value)?,
            // Of two opposite words the last one counts, as with mount(8) (which puts `rw`,
            // `dev` and `suid` in front of what an fstab entry says).
            n if let Some((on, off)) = opposite(n) => either(&mut opts, on, off),
            "dirsync" => opts.push(MountOption::DirSync),
            "default_permissions" => {}
            "auto_unmount" => opts.push(MountOption::AutoUnmount),
            "fsname" => {
                opts.retain(|m| !matches!(m, MountOption::FSName(_)));
                opts.push(MountOption::FSName(value.unwrap_or_default().to_string()));
            }
            "subtype" => {
                opts.retain(|m| !crate::identity::is_subtype(m));
                opts.push(crate::identity::subtype(value.unwrap_or_default()));
            }
            "entry_timeout" => tuning.entry_ttl = parse_timeout(o, value)?,
            "attr_timeout" => tuning.attr_ttl = parse_timeout(o, value)?,
            "max_background" => tuning.max_background = small(value)?,
            "congestion_threshold" => tuning.congestion_threshold = small(value)?,
            "max_readahead" => tuning.max_readahead = Some(num(value)?),
            n if ALREADY_SO_OPTIONS.contains(&n) => log::debug!("mount option {o}: already the behaviour"),
            n if NO_EFFECT_OPTIONS.contains(&n) => log::warn!("mount option {o} has no effect here; ignored"),
            _ => bail!("unknown mount option \"{o}\""),
        }
    }
    if cfg.read_only {
        either(&mut opts, MountOption::RO, MountOption::RW);
    }
    // Requests that hit the cache are answered on these threads (see s3b_fuse), so there is
    // one per core, at least two and at most eight; `-s` keeps upstream's single thread.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = if cfg.front.single_thread { 1 } else { cores.clamp(2, 8) };
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
            // Undo the token we just set: nothing was mounted.
            started.release_token();
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
    let mut unmounter = session.unmount_callable();
    let mut signals = match signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => return Err((anyhow::Error::new(e).context("can't install signal handlers"), pipe)),
    };
    let sig_handle = signals.handle();
    let detach_path = mountpoint.to_path_buf();
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

    let mirror = daemon::now_serving(pipe, cfg.front.stats_mirror.clone(), stack.stats.clone());
    let run_result = session.run();
    crate::notify::stopping("unmounted; flushing dirty blocks", stack.stats.clone());
    sig_handle.close();
    if let Err(e) = &run_result {
        log::error!("FUSE session ended with an error: {e}");
    }
    if !cfg.quiet {
        log::info!("unmounted; flushing dirty data");
    }
    let shutdown = rt.block_on(async {
        in_flight.wait_idle().await;
        stack.shutdown(started.token).await
    });
    Ok(daemon::finished(shutdown, mirror, cfg.quiet, if run_result.is_ok() { 0 } else { 1 }))
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

    fn settings(o: &str) -> Result<(fuser::Config, FuseConfig)> {
        let a: Vec<String> = ["--test", "--size=1m", "-o", o, "dir", "mnt"].iter().map(|s| s.to_string()).collect();
        fuse_settings(&crate::config::validate(crate::args::parse(&a)?)?)
    }

    #[test]
    fn fstab_options_from_libfuse_2_and_3_are_accepted() {
        // Every option the -o lists accept is understood here too.
        for name in FUSE_OPTION_NAMES.iter().filter(|n| !["debug", "direct_io", "fsname", "subtype"].contains(n)) {
            let o = match *name {
                "uid"
                | "gid"
                | "max_background"
                | "congestion_threshold"
                | "max_readahead"
                | "max_read"
                | "max_write" => {
                    format!("{name}=7")
                }
                "entry_timeout" | "attr_timeout" | "negative_timeout" => format!("{name}=0.5"),
                n => n.to_string(),
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
