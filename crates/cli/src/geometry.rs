//! The volume's geometry: given on the command line, detected from block 0, or both (then
//! they must agree unless `--force`). Used by mounts, the snapshot commands and the making of a
//! clone (whose geometry is its base's).

use crate::config::{Config, DEFAULT_BLOCK_SIZE, check_geometry};
use crate::size::unparse_size;
use anyhow::{Context, Result, bail};
use s3b_store::{ObjectStore, VolumeProbe};

/// Settles block size and block count: given on the command line, detected from block 0, or both
/// (then they must agree unless `--force`). A block 0 without size metadata (a disk image on a
/// plain web server) still tells the block size by its length, unless compressed or encrypted
/// (see `bare_block_size`).
pub async fn resolve_geometry(cfg: &Config, objects: &dyn ObjectStore) -> Result<(u32, u64)> {
    let detect = !cfg.is_test() && cfg.geometry.auto_detect;
    if detect {
        crate::notify::status("auto-detecting the volume's size");
    }
    let probe = if detect {
        objects.probe_volume().await.context("can't auto-detect the volume size")?
    } else {
        VolumeProbe::Nothing
    };
    let (block_size, size) = match probe {
        VolumeProbe::Meta(meta) => {
            if !cfg.quiet {
                log::info!(
                    "auto-detected block size={} and total size={}",
                    unparse_size(u64::from(meta.block_size)),
                    unparse_size(meta.file_size)
                );
            }
            for (what, given, found) in [
                ("block size", cfg.geometry.block_size.map(u64::from), u64::from(meta.block_size)),
                ("file size", cfg.geometry.size, meta.file_size),
            ] {
                if let Some(given) = given.filter(|&g| g != found) {
                    let msg = format!(
                        "configured {what} {} != the volume's {what} {}",
                        unparse_size(given),
                        unparse_size(found)
                    );
                    if !cfg.force {
                        bail!("{msg}; use --force to override");
                    }
                    log::warn!("{msg} (proceeding because of --force)");
                }
            }
            (cfg.geometry.block_size.unwrap_or(meta.block_size), cfg.geometry.size.unwrap_or(meta.file_size))
        }
        VolumeProbe::Bare(len) => {
            let Some(size) = cfg.geometry.size else {
                bail!("--size is required: the volume's size could not be auto-detected (no block 0 metadata)");
            };
            (bare_block_size(cfg, len)?, size)
        }
        VolumeProbe::Nothing => {
            let Some(size) = cfg.geometry.size else {
                if cfg.is_test() {
                    bail!("--size is required with --test (a test directory has no size metadata)");
                }
                bail!("--size is required: the volume's size could not be auto-detected (no block 0 metadata)");
            };
            (cfg.geometry.block_size.unwrap_or(DEFAULT_BLOCK_SIZE), size)
        }
    };
    let num_blocks = check_geometry(size, block_size)?;
    Ok((block_size, num_blocks))
}

/// The block size of a volume whose block 0 is `len` bytes and has no size metadata. Without
/// compression or encryption every block object is exactly one block long, so a power of two
/// is the block size (logged, as auto-detection is), and a `--blockSize` that differs would
/// only fail every read: refused, naming the size found. Compressed or encrypted objects are
/// of any length: `--blockSize` is needed then.
fn bare_block_size(cfg: &Config, len: Option<u64>) -> Result<u32> {
    let coded = cfg.codec.compress.is_some() || cfg.codec.encrypt.is_some();
    let given = cfg.geometry.block_size;
    let Some(len) = len else {
        return Ok(given.unwrap_or(DEFAULT_BLOCK_SIZE));
    };
    if coded {
        return given.with_context(|| {
            format!(
                "can't tell the block size: block 0 ({len} bytes) has no size metadata and the volume is \
                 compressed or encrypted; give --blockSize"
            )
        });
    }
    let found = u32::try_from(len).ok().filter(|n| n.is_power_of_two());
    match (found, given) {
        (Some(found), None) => {
            if !cfg.quiet {
                log::info!(
                    "auto-detected block size={} from the size of block 0 (it has no size metadata)",
                    unparse_size(u64::from(found))
                );
            }
            Ok(found)
        }
        (Some(found), Some(given)) if found == given => Ok(given),
        (Some(found), Some(given)) => bail!(
            "block 0 is {} bytes, but the block size is {}: give --blockSize={}",
            len,
            unparse_size(u64::from(given)),
            unparse_size(u64::from(found))
        ),
        (None, None) => bail!(
            "block 0 is {len} bytes, which is not a power of two, and it has no size metadata: give --blockSize \
             (and --compress or --encrypt if the image was made with them)"
        ),
        (None, Some(given)) => bail!(
            "block 0 is {len} bytes, but the block size is {}: give the volume's --blockSize (and --compress or \
             --encrypt if the image was made with them)",
            unparse_size(u64::from(given))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> Config {
        let mut a = vec!["--test", "--size=1m", "dir", "mnt"];
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        crate::config::validate(crate::args::parse(&a).unwrap()).unwrap()
    }

    #[test]
    fn a_bare_block_0_gives_the_block_size_unless_coded_or_contradicted() {
        assert_eq!(bare_block_size(&cfg(&[]), Some(65536)).unwrap(), 65536);
        assert_eq!(bare_block_size(&cfg(&["--blockSize=64k"]), Some(65536)).unwrap(), 65536);
        assert_eq!(bare_block_size(&cfg(&[]), None).unwrap(), DEFAULT_BLOCK_SIZE, "no length: as before");
        let e = bare_block_size(&cfg(&["--blockSize=4k"]), Some(65536)).unwrap_err().to_string();
        assert_eq!(e, "block 0 is 65536 bytes, but the block size is 4k: give --blockSize=64k");
        let e = bare_block_size(&cfg(&[]), Some(1000)).unwrap_err().to_string();
        assert!(e.starts_with("block 0 is 1000 bytes, which is not a power of two"), "{e}");
        let e = bare_block_size(&cfg(&["--compress"]), Some(1234)).unwrap_err().to_string();
        assert!(e.contains("compressed or encrypted; give --blockSize"), "{e}");
        assert_eq!(bare_block_size(&cfg(&["--compress", "--blockSize=8k"]), Some(1234)).unwrap(), 8192);
    }
}
