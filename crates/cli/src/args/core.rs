//! Core flags: volume geometry, the exported files, modes, the process and logging. Owned by the
//! front end; every flag has upstream's spelling (a test keeps each in the man page), and its
//! value is typed by its parser ([`super::values`]), so a bad one is refused before anything
//! starts.

use super::values::{self, Flag};
use clap::Args;

/// Flags every mount has, whatever the layers below.
#[derive(Args, Debug, Clone, Default)]
pub struct CoreArgs {
    /// Store blocks as files in the local directory given instead of a bucket.
    #[arg(long = "test", help_heading = "Modes")]
    pub test: bool,
    /// Delete every block and the mount token of the volume, then exit.
    #[arg(long = "erase", help_heading = "Modes")]
    pub erase: bool,
    /// Clear the "already mounted" flag of the volume, then exit.
    #[arg(long = "reset-mounted-flag", help_heading = "Modes")]
    pub reset_mounted_flag: bool,

    /// Total size of the exported file, with an optional k/m/g/t/p/e suffix (powers of 2).
    #[arg(long = "size", value_name = "SIZE", help_heading = "Volume", value_parser = Flag(values::file_size))]
    pub size: Option<u64>,
    /// Block size (a power of 2), with an optional k/m/g suffix [default: auto-detect, else 4k].
    #[arg(long = "blockSize", value_name = "SIZE", help_heading = "Volume", value_parser = Flag(values::block_size))]
    pub block_size: Option<u32>,
    /// Prefix prepended to every object name.
    #[arg(long = "prefix", value_name = "STRING", help_heading = "Volume")]
    pub prefix: Option<String>,
    /// Prepend a hash of the block number to block object names.
    #[arg(long = "blockHashPrefix", help_heading = "Volume")]
    pub block_hash_prefix: bool,
    /// Proceed despite a size mismatch or a volume that appears mounted; no --erase prompt.
    #[arg(long = "force", help_heading = "Volume")]
    pub force: bool,
    /// Refuse all writes; nothing is written to the store.
    #[arg(long = "readOnly", help_heading = "Volume")]
    pub read_only: bool,

    /// Name of the exported file [default: file].
    #[arg(long = "filename", value_name = "NAME", help_heading = "Files")]
    pub filename: Option<String>,
    /// Name of the statistics file [default: stats].
    #[arg(long = "statsFilename", value_name = "NAME", help_heading = "Files")]
    pub stats_filename: Option<String>,
    /// Permissions of the exported file, in octal [default: 0600, 0400 with --readOnly].
    #[arg(long = "fileMode", value_name = "MODE", help_heading = "Files", value_parser = Flag(values::file_mode))]
    pub file_mode: Option<u16>,
    /// Open the exported file with FUSE direct I/O (no kernel page cache).
    #[arg(long = "directIO", help_heading = "Files")]
    pub direct_io: bool,

    /// Random delays of 0-199 ms on every block operation (testing).
    #[arg(long = "test-delays", help_heading = "Testing")]
    pub test_delays: bool,
    /// Discard writes and read zeros (testing).
    #[arg(long = "test-discard", help_heading = "Testing")]
    pub test_discard: bool,
    /// Fail 1% of block operations with an I/O error (testing).
    #[arg(long = "test-errors", help_heading = "Testing")]
    pub test_errors: bool,

    /// Run in the foreground and log to stderr.
    #[arg(short = 'f', help_heading = "Process")]
    pub foreground: bool,
    /// Debug mode: implies -f and --debug.
    #[arg(short = 'd', help_heading = "Process")]
    pub fuse_debug: bool,
    /// Serve FUSE requests from a single thread.
    #[arg(short = 's', help_heading = "Process")]
    pub single_thread: bool,
    /// Log debug messages.
    #[arg(long = "debug", help_heading = "Process")]
    pub debug: bool,
    /// No progress messages at startup.
    #[arg(long = "quiet", help_heading = "Process")]
    pub quiet: bool,
    /// Read more arguments from FILE, one per line (also -F FILE).
    #[arg(long = "configFile", short = 'F', value_name = "FILE", help_heading = "Process")]
    pub config_file: Vec<String>,
    /// Mount option(s), comma separated: any --flag as name=value, or a FUSE option.
    #[arg(short = 'o', value_name = "OPTIONS", help_heading = "Process", long_help = crate::fuse_options::help())]
    pub options: Vec<String>,
}
