//! How a mounted volume names itself in the mount table (`/proc/mounts`, `findmnt`, `df`):
//! the type `fuse.s3backer` (FUSE's `subtype` option) and, as the source (`fsname`), the
//! volume as the command line named it — `bucket`, `bucket/prefix`, or the `--test` directory
//! (with `/prefix` when `--prefix` is given) — without the trailing slash of the object-name
//! prefix, so it reads as other FUSE file systems' sources do. `-o fsname=…` and
//! `-o subtype=…` still override both.

use crate::config::{Config, Location};

/// The FUSE subtype: the mount table shows the type `fuse.s3backer` (set with
/// [`crate::fuse_options::subtype`]).
pub const SUBTYPE: &str = "s3backer";

/// The mount's source as the mount table shows it.
pub fn mount_source(cfg: &Config) -> String {
    let prefix = cfg.prefix.trim_end_matches('/');
    let volume = match &cfg.location {
        Location::Dir(d) => d.display().to_string(),
        Location::Bucket(b) => b.clone(),
    };
    if prefix.is_empty() { volume } else { format!("{}/{prefix}", volume.trim_end_matches('/')) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(args: &[&str]) -> String {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        mount_source(&crate::config::validate(crate::args::parse(&a).unwrap()).unwrap())
    }

    #[test]
    fn sources_name_the_volume() {
        let keys = ["--accessId=AK", "--accessKey=SK"];
        assert_eq!(source(&[keys[0], keys[1], "bkt", "/mnt"]), "bkt");
        assert_eq!(source(&[keys[0], keys[1], "bkt/vol/a", "/mnt"]), "bkt/vol/a");
        assert_eq!(source(&[keys[0], keys[1], "--prefix=p-", "bkt", "/mnt"]), "bkt/p-");
        assert_eq!(source(&["--test", "/srv/blocks", "/mnt"]), "/srv/blocks");
        assert_eq!(source(&["--test", "--prefix=v1/", "/srv/blocks/", "/mnt"]), "/srv/blocks/v1");
    }
}
