//! Snapshot settings: the snapshot commands (`--snapshot`, `--listSnapshots`,
//! `--deleteSnapshot`) as modes, and `--fromSnapshot` for mounts; names checked here, before
//! any request.

use super::Mode;
use crate::args::snap::SnapArgs;
use anyhow::{Result, bail};

/// Longest path a Unix socket can have (`sun_path` holds 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The checked snapshot flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapSettings {
    /// The snapshot `--snapshot` takes or `--deleteSnapshot` deletes.
    pub name: Option<String>,
    /// `--fromSnapshot`: the snapshot a read-only mount shows.
    pub from: Option<String>,
    /// `--controlSocket`: the daemon's control socket, if not the default one.
    pub control_socket: Option<std::path::PathBuf>,
}

/// Settles the mode with the snapshot commands: at most one mode flag in all.
pub(super) fn check_mode(a: &SnapArgs, mode: Mode) -> Result<Mode> {
    let given: Vec<(Mode, &str)> = [
        (a.snapshot.is_some(), Mode::Snapshot, "--snapshot"),
        (a.list_snapshots, Mode::ListSnapshots, "--listSnapshots"),
        (a.delete_snapshot.is_some(), Mode::DeleteSnapshot, "--deleteSnapshot"),
    ]
    .into_iter()
    .filter(|g| g.0)
    .map(|(_, m, f)| (m, f))
    .collect();
    match (given.as_slice(), mode) {
        ([], _) => Ok(mode),
        ([(m, _)], Mode::Mount) => Ok(*m),
        ([(_, f)], other) => bail!("{f} cannot be used with {}", other.flag()),
        ([(_, a), (_, b), ..], _) => bail!("{a} and {b} cannot be used together"),
    }
}

/// Checks the snapshot flags of `mode`.
pub(super) fn settings(a: &SnapArgs, mode: Mode, test: bool, read_only: bool) -> Result<SnapSettings> {
    let name = a.snapshot.clone().or_else(|| a.delete_snapshot.clone());
    for n in name.iter().chain(a.from_snapshot.iter()) {
        s3b_snap::format::check_name(n)?;
    }
    let snapshot_mode = matches!(mode, Mode::Snapshot | Mode::ListSnapshots | Mode::DeleteSnapshot);
    if test && (snapshot_mode || a.from_snapshot.is_some()) {
        bail!("snapshots need a bucket: --test volumes cannot have snapshots");
    }
    if read_only && matches!(mode, Mode::Snapshot | Mode::DeleteSnapshot) {
        bail!("{} cannot be used with --readOnly", mode.flag());
    }
    if a.from_snapshot.is_some() {
        if snapshot_mode {
            bail!("--fromSnapshot cannot be used with {}", mode.flag());
        }
        if !read_only {
            bail!("--fromSnapshot needs --readOnly (a snapshot cannot be written)");
        }
    }
    if let Some(p) = &a.control_socket
        && p.as_os_str().len() > MAX_SOCKET_PATH
    {
        bail!("--controlSocket {}: longer than {} bytes, too long for a Unix socket", p.display(), MAX_SOCKET_PATH);
    }
    Ok(SnapSettings { name, from: a.from_snapshot.clone(), control_socket: a.control_socket.clone() })
}

#[cfg(test)]
mod tests {
    use crate::config::{Mode, assert_refused, validated as v};

    #[test]
    fn modes_and_names() {
        let c = v(&["--snapshot=mon", "bkt/sub"]).unwrap();
        assert_eq!((c.mode, c.snap.name.as_deref(), c.prefix.as_str()), (Mode::Snapshot, Some("mon"), "sub/"));
        assert_eq!(v(&["-o", "listSnapshots", "bkt"]).unwrap().mode, Mode::ListSnapshots);
        assert_eq!(v(&["--deleteSnapshot=mon", "bkt"]).unwrap().mode, Mode::DeleteSnapshot);
        let c = v(&["--readOnly", "--fromSnapshot=mon", "bkt", "/mnt"]).unwrap();
        assert_eq!((c.mode, c.snap.from.as_deref()), (Mode::Mount, Some("mon")));
        assert_eq!(
            v(&["--nbd", "--nbdListen=/tmp/s", "--readOnly", "--fromSnapshot=mon", "bkt"]).unwrap().mode,
            Mode::Nbd
        );
    }

    #[test]
    fn bad_combinations_get_one_line() {
        assert_refused(
            v,
            &[
                ("--snapshot=a bkt /mnt", "mount point cannot be given with --snapshot"),
                ("--snapshot=a --listSnapshots bkt", "cannot be used together"),
                ("--snapshot=a --erase bkt", "--snapshot cannot be used with --erase"),
                ("--snapshot=a/b bkt", "invalid snapshot name"),
                ("--snapshot=a --test dir", "--test volumes cannot have snapshots"),
                ("--readOnly --fromSnapshot=a --test dir /mnt", "--test volumes cannot have snapshots"),
                ("--fromSnapshot=a bkt /mnt", "needs --readOnly"),
                ("--snapshot=a --readOnly bkt", "--snapshot cannot be used with --readOnly"),
                ("--nbd --snapshot=a bkt", "--nbd cannot be used with --snapshot"),
            ],
        );
    }
}
