//! Clone flags: making a writable clone of a snapshot or a read-only volume, and flattening it.

use clap::Args;

/// Flags of clones.
#[derive(Args, Debug, Clone, Default)]
pub struct CloneArgs {
    /// At the first mount, make the (empty) volume a writable clone of SOURCE's snapshot NAME,
    /// or of the read-only volume SOURCE (bucket[/subdir], on this endpoint unless
    /// --cloneBaseURL); later mounts need no flag.
    #[arg(long = "cloneOf", value_name = "SOURCE[@NAME]", help_heading = "Clones")]
    pub clone_of: Option<String>,
    /// The base of --cloneOf is a read-only volume on this server, read without credentials
    /// (only GET and HEAD are sent to it), e.g. a public image on a plain web server.
    #[arg(long = "cloneBaseURL", value_name = "URL", help_heading = "Clones")]
    pub clone_base_url: Option<String>,
    /// Copy every base block the (unmounted) clone still uses into it, making it a plain volume,
    /// then exit.
    #[arg(long = "flatten", help_heading = "Clones")]
    pub flatten: bool,
}
