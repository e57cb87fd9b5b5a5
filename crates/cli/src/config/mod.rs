//! The configuration: the parsed command line checked once, in one pass, into typed settings
//! per layer, before anything else happens (before the process daemonizes, before any request).
//!
//! Every check gives one line that names the problem (the caller prefixes `s3backer: `). Nothing
//! here writes to the store, so a bad invocation never writes to a bucket. Each layer's flags are
//! checked in its own module ([`s3`], [`cache`], [`codec`], [`nbd`], [`front`]); geometry that
//! may be auto-detected (block size, size) stays optional here and is settled in
//! [`crate::stack`].

pub mod cache;
pub mod clone;
pub mod codec;
pub mod front;
pub mod listen;
pub mod metrics;
pub mod nbd;
pub mod s3;
pub mod snap;

use crate::args::Cli;
use crate::args::core::CoreArgs;
use crate::size::unparse_size;
use anyhow::{Result, bail};
use std::path::PathBuf;

/// Default block size when neither given nor detected.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// What the invocation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Mount the volume.
    Mount,
    /// `--erase`.
    Erase,
    /// `--reset-mounted-flag`.
    ResetMountedFlag,
    /// `--nbd`: serve the volume over NBD.
    Nbd,
    /// `--snapshot=NAME`.
    Snapshot,
    /// `--listSnapshots`.
    ListSnapshots,
    /// `--deleteSnapshot=NAME`.
    DeleteSnapshot,
    /// `--flatten`.
    Flatten,
}

impl Mode {
    /// The flag that asks for the mode (`--nbd` for NBD, nothing for a mount).
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Mount => "a mount",
            Mode::Erase => "--erase",
            Mode::ResetMountedFlag => "--reset-mounted-flag",
            Mode::Nbd => "--nbd",
            Mode::Snapshot => "--snapshot",
            Mode::ListSnapshots => "--listSnapshots",
            Mode::DeleteSnapshot => "--deleteSnapshot",
            Mode::Flatten => "--flatten",
        }
    }
}

/// Where the blocks live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `--test DIR`.
    Dir(PathBuf),
    /// A bucket, with the prefix from `bucket/subdir` or `--prefix` already in [`Config::prefix`].
    Bucket(String),
}

/// Fault injection for testing (`--test-delays`, `--test-discard`, `--test-errors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Random delays of 0-199 ms.
    pub delays: bool,
    /// Drop writes, read zeros.
    pub discard: bool,
    /// Fail 1% of operations.
    pub errors: bool,
}

/// The volume's geometry as the command line gives it; the rest is read from block 0 of a
/// bucket or defaulted (see [`crate::stack::resolve_geometry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GivenGeometry {
    /// `--blockSize`.
    pub block_size: Option<u32>,
    /// `--size`.
    pub size: Option<u64>,
    /// Read the geometry from block 0 of a bucket (not `--noAutoDetect`).
    pub auto_detect: bool,
}

/// A checked configuration: the volume, then one typed part per layer.
#[derive(Clone, Debug)]
pub struct Config {
    /// What to do.
    pub mode: Mode,
    /// Where the blocks live.
    pub location: Location,
    /// Mount point (mount mode), or the NBD device of `--nbd BUCKET /dev/nbdN`.
    pub mountpoint: Option<PathBuf>,
    /// Object name prefix (from `--prefix` or `bucket/subdir`).
    pub prefix: String,
    /// `--blockHashPrefix`.
    pub hash_prefix: bool,
    /// What the command line says of the volume's geometry.
    pub geometry: GivenGeometry,
    /// `--force`.
    pub force: bool,
    /// `--readOnly`.
    pub read_only: bool,
    /// `--sharedDiskMode`: no caching layers, the shared mount token.
    pub shared_disk: bool,
    /// Fault injection.
    pub faults: Faults,
    /// Stay in the foreground, log to stderr.
    pub foreground: bool,
    /// Debug logging.
    pub debug: bool,
    /// No progress messages.
    pub quiet: bool,
    /// The front end: exported files, FUSE options, statistics mirror.
    pub front: front::FrontEnd,
    /// The S3 transport (credentials included); `None` for a `--test` directory.
    pub s3: Option<s3b_http::S3Config>,
    /// Compression and encryption (the password is read later, see [`crate::encoding`]).
    pub codec: codec::CodecSettings,
    /// Block cache, consistency layer and zero cache.
    pub cache: cache::CacheSettings,
    /// The NBD front end.
    pub nbd: nbd::NbdSettings,
    /// `--metricsListen`: where the Prometheus metrics are served, if anywhere.
    pub metrics: Option<metrics::MetricsAddr>,
    /// Snapshot commands and `--fromSnapshot`.
    pub snap: snap::SnapSettings,
    /// `--cloneOf` and `--cloneBaseURL`.
    pub clone: clone::CloneSettings,
}

impl Config {
    /// True for `--test` volumes.
    pub fn is_test(&self) -> bool {
        matches!(self.location, Location::Dir(_))
    }

    /// A short description of the volume for logs and the mount table.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Dir(d) => format!("{}/{}", d.display(), self.prefix),
            Location::Bucket(b) => format!("{b}/{}", self.prefix),
        }
    }
}

/// Checks a volume size against a block size and returns the number of blocks.
pub fn check_geometry(size: u64, block_size: u32) -> Result<u64> {
    if size == 0 {
        bail!("file size must be greater than zero");
    }
    if !size.is_multiple_of(block_size as u64) {
        bail!("file size {} must be a multiple of block size {}", size, unparse_size(block_size as u64));
    }
    let blocks = size / block_size as u64;
    if blocks >= 1u64 << 32 {
        bail!("more than 2^32 blocks: decrease file size or increase block size");
    }
    Ok(blocks)
}

/// Splits `bucket[/subdir]` into the bucket and the prefix `subdir/`.
pub(super) fn split_bucket(arg: &str) -> Result<(String, Option<String>)> {
    let Some((bucket, sub)) = arg.split_once('/') else {
        return Ok((arg.to_string(), None));
    };
    if bucket.is_empty() || sub.is_empty() || sub.starts_with('/') || sub.ends_with('/') || sub.contains("//") {
        bail!("invalid bucket[/subdir] \"{arg}\": empty, leading, trailing or double slashes are not allowed");
    }
    Ok((bucket.to_string(), Some(format!("{sub}/"))))
}

/// Makes the file names given on the command line absolute: the daemon changes to `/` before
/// the layers that open them are built.
fn absolute_paths(cli: &mut Cli) {
    for f in [
        &mut cli.cache.block_cache_file,
        &mut cli.cache.stats_file_mirror,
        &mut cli.codec.password_file,
        &mut cli.s3.cacert,
        &mut cli.s3.access_file,
        &mut cli.nbd.nbd_tls_cert,
        &mut cli.nbd.nbd_tls_key,
    ]
    .into_iter()
    .flatten()
    {
        if !f.is_empty()
            && let Ok(abs) = std::path::absolute(&*f)
        {
            *f = abs.to_string_lossy().into_owned();
        }
    }
}

/// The mode from `--erase`, `--reset-mounted-flag` (and `--nbd`, see [`nbd::check_mode`]).
fn mode(c: &CoreArgs) -> Result<Mode> {
    Ok(match (c.erase, c.reset_mounted_flag) {
        (true, true) => bail!("--erase and --reset-mounted-flag cannot be used together"),
        (true, false) => Mode::Erase,
        (false, true) => Mode::ResetMountedFlag,
        (false, false) => Mode::Mount,
    })
}

/// The volume the positional arguments name: where it lives, its prefix, and the mount point
/// (or NBD device).
fn target(mode: Mode, c: &CoreArgs, pos: &[String]) -> Result<(Location, String, Option<PathBuf>)> {
    let what = if c.test { "directory" } else { "bucket" };
    let (target, mountpoint) = match (mode, pos.len()) {
        (_, 0) => bail!("no {what} specified (see --help)"),
        (Mode::Nbd, 1 | 2) => (&pos[0], pos.get(1).map(PathBuf::from)),
        (Mode::Nbd, _) => bail!("too many arguments: \"{}\"", pos[2..].join(" ")),
        (Mode::Mount, 1) => bail!("no mount point specified"),
        (Mode::Mount, 2) => (&pos[0], Some(PathBuf::from(&pos[1]))),
        (Mode::Mount, _) => bail!("too many arguments: \"{}\"", pos[2..].join(" ")),
        (_, 1) => (&pos[0], None),
        (_, _) => bail!("too many arguments: a mount point cannot be given with {}", mode.flag()),
    };
    if target.is_empty() {
        bail!("empty {what} name");
    }
    let (location, sub_prefix) = if c.test {
        (Location::Dir(PathBuf::from(target)), None)
    } else {
        let (bucket, sub) = split_bucket(target)?;
        (Location::Bucket(bucket), sub)
    };
    let prefix = match (sub_prefix, &c.prefix) {
        (Some(_), Some(_)) => bail!("--prefix cannot be combined with a bucket/subdir argument"),
        (Some(p), None) => p,
        (None, p) => p.clone().unwrap_or_default(),
    };
    if mode == Mode::Erase && c.read_only {
        bail!("--erase cannot be used with --readOnly");
    }
    if matches!(mode, Mode::Erase | Mode::ResetMountedFlag) && c.test {
        bail!(
            "--{} needs a bucket; a --test directory can simply be emptied",
            if mode == Mode::Erase { "erase" } else { "reset-mounted-flag" }
        );
    }
    Ok((location, prefix, mountpoint))
}

/// Checks the parsed command line, layer by layer, into a [`Config`].
pub fn validate(mut cli: Cli) -> Result<Config> {
    absolute_paths(&mut cli);
    let c = &cli.core;
    let mode = nbd::check_mode(&cli.nbd, clone::check_mode(&cli.clone, snap::check_mode(&cli.snap, mode(c)?)?)?)?;
    let (location, prefix, mountpoint) = target(mode, c, &cli.positional)?;
    if let Some(size) = c.size {
        check_geometry(size, c.block_size.unwrap_or(DEFAULT_BLOCK_SIZE))?;
    }
    let front = front::settings(c, &cli.cache)?;
    let nbd = nbd::settings(&cli.nbd, mode, mountpoint.as_deref())?;
    let snap = snap::settings(&cli.snap, mode, c.test, c.read_only)?;
    let clone = clone::settings(&cli.clone, mode, c.test)?;
    crate::shared::check(&cli.cache, &cli.s3)?;
    let shared_disk = cli.cache.shared_disk_mode;
    let cache = cache::settings(&cli.cache, cli.s3.list_blocks, c.read_only)?;
    let codec = codec::settings(&cli.codec)?;
    let s3 = match &location {
        Location::Bucket(bucket) => {
            let volume = s3::Volume {
                bucket,
                keys: s3b_store::keys::BlockKeys::new(prefix.clone(), c.block_hash_prefix),
                block_size: c.block_size,
                read_only: c.read_only,
                quiet: c.quiet,
            };
            Some(s3::settings(&cli.s3, volume)?)
        }
        Location::Dir(_) => None,
    };
    Ok(Config {
        mode,
        location,
        mountpoint,
        prefix,
        hash_prefix: c.block_hash_prefix,
        geometry: GivenGeometry { block_size: c.block_size, size: c.size, auto_detect: !cli.s3.no_auto_detect },
        force: c.force,
        read_only: c.read_only,
        shared_disk,
        faults: Faults { delays: c.test_delays, discard: c.test_discard, errors: c.test_errors },
        foreground: front.foreground,
        debug: front.debug,
        quiet: c.quiet,
        front: front.front,
        s3,
        codec,
        cache,
        nbd,
        metrics: metrics::settings(&cli.metrics, mode)?,
        snap,
        clone,
    })
}

/// Checks that each of `cases` (flags separated by spaces; a word the error must contain) is
/// refused by `settle` with a one-line error naming it.
#[cfg(test)]
pub(crate) fn assert_refused<T>(settle: impl Fn(&[&str]) -> Result<T>, cases: &[(&str, &str)]) {
    for (args, needle) in cases {
        let Err(e) = settle(&args.split(' ').collect::<Vec<_>>()) else { panic!("{args:?} was accepted") };
        let e = e.to_string();
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// Parses and validates a command line given as words (the config tests' entry point).
#[cfg(test)]
pub(crate) fn validated(args: &[&str]) -> Result<Config> {
    let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    validate(crate::args::parse(&a)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use validated as v;

    #[test]
    fn geometry_checks() {
        use crate::args::values::check_block_size;
        assert_eq!(check_block_size(4096).unwrap(), 4096);
        assert_eq!(check_block_size(3000).unwrap_err().to_string(), "block size must be a power of 2");
        assert!(check_block_size(1 << 32).unwrap_err().to_string().contains("too big"));
        assert_eq!(check_geometry(1 << 20, 4096).unwrap(), 256);
        assert!(check_geometry(4097, 4096).unwrap_err().to_string().contains("multiple of block size 4k"));
        assert!(check_geometry(1 << 44, 4096).unwrap_err().to_string().contains("2^32 blocks"));
        assert!(check_geometry(0, 4096).is_err());
    }

    #[test]
    fn bucket_subdir() {
        assert_eq!(split_bucket("bkt/a/b").unwrap(), ("bkt".into(), Some("a/b/".into())));
        assert_eq!(split_bucket("bkt").unwrap(), ("bkt".into(), None));
        for bad in ["bkt/", "bkt//a", "bkt/a/", "/a"] {
            assert!(split_bucket(bad).unwrap_err().to_string().contains("slashes"), "{bad}");
        }
    }

    #[test]
    fn modes_and_positionals() {
        assert_eq!(v(&["--test", "--size=1m", "d", "m"]).unwrap().mode, Mode::Mount);
        assert!(v(&["--test", "d"]).unwrap_err().to_string().contains("no mount point"));
        assert!(v(&[]).unwrap_err().to_string().contains("no bucket"));
        assert!(v(&["--erase", "b", "m"]).unwrap_err().to_string().contains("mount point cannot be given"));
        assert!(v(&["--erase", "--reset-mounted-flag", "b"]).is_err());
        assert!(v(&["--test", "d", "m", "x"]).unwrap_err().to_string().contains("too many arguments"));
    }

    #[test]
    fn file_names_and_modes() {
        let c = v(&["--test", "--readOnly", "d", "m"]).unwrap();
        assert_eq!(c.front.file_mode, 0o400);
        let c = v(&["--test", "--fileMode=0644", "d", "m"]).unwrap();
        assert_eq!(c.front.file_mode, 0o644);
        assert!(v(&["--test", "--fileMode=999", "d", "m"]).unwrap_err().to_string().contains("--fileMode"));
        assert!(v(&["--test", "--filename=a/b", "d", "m"]).is_err());
        assert!(v(&["--test", "--filename=stats", "d", "m"]).unwrap_err().to_string().contains("must differ"));
    }

    #[test]
    fn fuse_options_pass_through() {
        let c = v(&["--test", "-o", "allow_other,uid=5,direct_io", "d", "m"]).unwrap();
        assert_eq!(c.front.fuse_options, vec!["allow_other".to_string(), "uid=5".to_string()]);
        assert!(c.front.direct_io);
        assert!(v(&["--test", "-d", "d", "m"]).unwrap().foreground);
    }
}
