//! Clone settings: `--cloneOf` and `--cloneBaseURL` for a mount, `--flatten` as a mode;
//! the source and the URL are checked here, before any request.

use super::Mode;
use crate::args::clone::CloneArgs;
use anyhow::{Result, bail};

/// Where a clone's base is, as `--cloneOf` and `--cloneBaseURL` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneSource {
    /// The base's bucket.
    pub bucket: String,
    /// The base's key prefix (empty or ending in `/`).
    pub prefix: String,
    /// The snapshot of the base (`None`: the base is a read-only volume).
    pub snapshot: Option<String>,
    /// The base's server when not this endpoint (read without credentials).
    pub url: Option<String>,
}

/// The checked clone flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloneSettings {
    /// `--cloneOf` (with `--cloneBaseURL`).
    pub of: Option<CloneSource>,
}

/// Settles the mode with `--flatten`.
pub(super) fn check_mode(a: &CloneArgs, mode: Mode) -> Result<Mode> {
    match (a.flatten, mode) {
        (false, _) => Ok(mode),
        (true, Mode::Mount) => Ok(Mode::Flatten),
        (true, other) => bail!("--flatten cannot be used with {}", other.flag()),
    }
}

/// Checks the clone flags of `mode`.
pub(super) fn settings(a: &CloneArgs, mode: Mode, test: bool) -> Result<CloneSettings> {
    if test && (a.clone_of.is_some() || mode == Mode::Flatten) {
        bail!("clones need a bucket: --test volumes cannot be clones");
    }
    let Some(of) = &a.clone_of else {
        if a.clone_base_url.is_some() {
            bail!("--cloneBaseURL needs --cloneOf");
        }
        return Ok(CloneSettings::default());
    };
    if !matches!(mode, Mode::Mount | Mode::Nbd) {
        bail!("--cloneOf cannot be used with {}", mode.flag());
    }
    let (source, snapshot) = match of.split_once('@') {
        Some((s, n)) => {
            s3b_snap::format::check_name(n)?;
            (s, Some(n.to_string()))
        }
        None => (of.as_str(), None),
    };
    let (bucket, prefix) = match super::split_bucket(source) {
        Ok((b, p)) if !b.is_empty() => (b, p.unwrap_or_default()),
        _ => bail!("invalid --cloneOf \"{of}\": give SOURCE[@NAME], SOURCE being bucket[/subdir]"),
    };
    let url = match &a.clone_base_url {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) || !u.ends_with('/') => {
            bail!("invalid --cloneBaseURL \"{u}\": give http://host[:port]/ or https://..., ending with '/'")
        }
        Some(_) if snapshot.is_some() => {
            bail!("--cloneBaseURL names a read-only volume, not a snapshot: give --cloneOf=SOURCE without @NAME")
        }
        u => u.clone(),
    };
    Ok(CloneSettings { of: Some(CloneSource { bucket, prefix, snapshot, url }) })
}

#[cfg(test)]
mod tests {
    use crate::config::{Mode, assert_refused, validated as v};

    #[test]
    fn sources_and_modes() {
        let c = v(&["--cloneOf=src/os/img@mon", "bkt/clone", "/mnt"]).unwrap();
        let of = c.clone.of.unwrap();
        assert_eq!((of.bucket.as_str(), of.prefix.as_str(), of.snapshot.as_deref()), ("src", "os/img/", Some("mon")));
        let c = v(&["-o", "cloneOf=pub,cloneBaseURL=http://127.0.0.1:9/", "bkt", "/mnt"]).unwrap();
        let of = c.clone.of.unwrap();
        assert_eq!((of.prefix.as_str(), of.snapshot, of.url.as_deref()), ("", None, Some("http://127.0.0.1:9/")));
        assert_eq!(v(&["--flatten", "bkt"]).unwrap().mode, Mode::Flatten);
        assert_eq!(v(&["--nbd", "--nbdListen=/tmp/s", "--cloneOf=a@b", "bkt"]).unwrap().mode, Mode::Nbd);
    }

    #[test]
    fn bad_combinations_get_one_line() {
        assert_refused(
            v,
            &[
                ("--flatten bkt /mnt", "mount point cannot be given with --flatten"),
                ("--flatten --erase bkt", "--flatten cannot be used with --erase"),
                ("--cloneOf=a --test dir /mnt", "--test volumes cannot be clones"),
                ("--cloneOf=a@b/c bkt /mnt", "invalid snapshot name"),
                ("--cloneOf=/x bkt /mnt", "invalid --cloneOf"),
                ("--cloneBaseURL=http://h/ bkt /mnt", "needs --cloneOf"),
                ("--cloneOf=a --cloneBaseURL=h bkt /mnt", "invalid --cloneBaseURL"),
                ("--cloneOf=a@s --cloneBaseURL=http://h/ bkt /mnt", "not a snapshot"),
                ("--cloneOf=a --snapshot=s bkt", "--cloneOf cannot be used with --snapshot"),
            ],
        );
    }
}
