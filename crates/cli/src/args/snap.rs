//! Snapshot flags: the snapshot commands and mounting a snapshot. Owned by the snapshot layer.

use clap::Args;

/// Flags of snapshots.
#[derive(Args, Debug, Clone, Default)]
pub struct SnapArgs {
    /// Take a snapshot called NAME of the volume (through its daemon when it is mounted), then exit.
    #[arg(long = "snapshot", value_name = "NAME", help_heading = "Snapshots")]
    pub snapshot: Option<String>,
    /// List the volume's snapshots (name, time, blocks held, blocks changed since), then exit.
    #[arg(long = "listSnapshots", help_heading = "Snapshots")]
    pub list_snapshots: bool,
    /// Delete the snapshot called NAME (what older snapshots still need is kept), then exit.
    #[arg(long = "deleteSnapshot", value_name = "NAME", help_heading = "Snapshots")]
    pub delete_snapshot: Option<String>,
    /// Mount (or serve with --nbd) snapshot NAME instead of the live volume; needs --readOnly.
    #[arg(long = "fromSnapshot", value_name = "NAME", help_heading = "Snapshots")]
    pub from_snapshot: Option<String>,
    /// The daemon's control socket (snapshots of the mounted volume go through it).
    #[arg(long = "controlSocket", value_name = "PATH", help_heading = "Snapshots")]
    pub control_socket: Option<std::path::PathBuf>,
}
