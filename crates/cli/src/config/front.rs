//! Front-end settings: the names and permissions of the exported files, FUSE `-o` options,
//! the statistics mirror, and how the process runs (foreground, debug).

use crate::args::cache::CacheArgs;
use crate::args::core::CoreArgs;
use crate::fuse_options::Effect;
use crate::stats_mirror::MirrorConfig;
use anyhow::{Result, bail};

/// The checked front-end flags.
#[derive(Clone, Debug)]
pub struct FrontEnd {
    /// Exported file name.
    pub filename: String,
    /// Stats file name.
    pub stats_filename: String,
    /// Exported file permissions.
    pub file_mode: u16,
    /// `--directIO` (forced on by `--sharedDiskMode`).
    pub direct_io: bool,
    /// One FUSE thread.
    pub single_thread: bool,
    /// FUSE `-o` options (allow_other, uid=…, …).
    pub fuse_options: Vec<String>,
    /// `--statsFileMirror` / `--statsFileMirrorInterval`.
    pub stats_mirror: Option<MirrorConfig>,
}

/// The front end and how the process runs.
pub(super) struct Process {
    pub(super) front: FrontEnd,
    pub(super) foreground: bool,
    pub(super) debug: bool,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        bail!("invalid {what} \"{name}\": must be a plain file name");
    }
    Ok(())
}

/// Checks the front-end flags (`k`: `--sharedDiskMode` and the stats mirror).
pub(super) fn settings(c: &CoreArgs, k: &CacheArgs) -> Result<Process> {
    let filename = c.filename.clone().unwrap_or_else(|| "file".into());
    let stats_filename = c.stats_filename.clone().unwrap_or_else(|| "stats".into());
    check_name("--filename", &filename)?;
    check_name("--statsFilename", &stats_filename)?;
    if filename == stats_filename {
        bail!("--filename and --statsFilename must differ (both are \"{filename}\")");
    }
    let file_mode = c.file_mode.unwrap_or(if c.read_only { 0o400 } else { 0o600 });

    let mut fuse_options = Vec::new();
    let mut debug = c.debug || c.fuse_debug;
    let mut foreground = c.foreground || c.fuse_debug;
    let mut direct_io = c.direct_io || k.shared_disk_mode;
    for o in &c.options {
        let (name, _) = crate::fuse_options::split(o);
        match crate::fuse_options::find(name).map(|f| &f.effect) {
            Some(Effect::Debug) => {
                debug = true;
                foreground = true;
            }
            Some(Effect::DirectIo) => direct_io = true,
            _ => fuse_options.push(o.clone()),
        }
    }
    let stats_mirror = crate::stats_mirror::settings(k.stats_file_mirror.as_deref(), k.stats_file_mirror_interval)?;
    let front = FrontEnd {
        filename,
        stats_filename,
        file_mode,
        direct_io,
        single_thread: c.single_thread,
        fuse_options,
        stats_mirror,
    };
    Ok(Process { front, foreground, debug })
}
