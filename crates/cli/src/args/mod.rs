//! Command-line parsing with upstream's spellings.
//!
//! Upstream parses with libfuse's option parser, so every `--flag=value` may also be written as
//! `-o flag=value` (the form /etc/fstab uses), and `-F FILE`/`--configFile=FILE` splices in more
//! arguments from a file. We keep clap for the definitions, help and value checks, and run a
//! small pre-pass ([`expand`]) that rewrites the other forms into plain `--flag=value` words:
//! config files are spliced in place, `-o` lists are split, our own flags become long flags,
//! FUSE mount options are kept as `-o name`, and mount-helper words such as `noauto` or `_netdev`
//! are dropped. Anything else is an error that names the option.
//!
//! The flag definitions are split by the layer that owns them ([`core`], [`s3`], [`cache`],
//! [`codec`], [`nbd`]), so each layer's flags sit in one file.

pub mod cache;
pub mod clone;
pub mod codec;
pub mod core;
pub mod metrics;
pub mod nbd;
pub mod s3;
pub mod snap;
pub mod values;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use std::collections::HashSet;

/// Everything the command line can say.
#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "s3backer",
    version = crate::VERSION,
    about = "FUSE-based single file backing store via Amazon S3",
    override_usage = "s3backer [options] bucket[/subdir] /mount/point\n       \
                      s3backer --test [options] directory /mount/point\n       \
                      s3backer --erase [options] bucket[/subdir]\n       \
                      s3backer --reset-mounted-flag [options] bucket[/subdir]\n       \
                      s3backer --nbd --nbdListen=ADDR [options] bucket[/subdir]\n       \
                      s3backer --nbd [options] bucket[/subdir] /dev/nbdN\n       \
                      s3backer --snapshot=NAME|--listSnapshots|--deleteSnapshot=NAME [options] bucket[/subdir]\n       \
                      s3backer --cloneOf=SOURCE[@NAME] [--cloneBaseURL=URL] [options] bucket[/subdir] /mount/point\n       \
                      s3backer --flatten [options] bucket[/subdir]",
    disable_version_flag = true,
    disable_help_flag = true,
    // As with upstream's libfuse option parser, a later flag overrides an earlier one (fstab
    // options followed by command-line ones, config files, ...).
    args_override_self = true
)]
pub struct Cli {
    /// `bucket[/subdir]` (or the directory with --test), then the mount point.
    #[arg(value_name = "ARGS")]
    pub positional: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub core: core::CoreArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub s3: s3::S3Args,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cache: cache::CacheArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub codec: codec::CodecArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub nbd: nbd::NbdArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metrics: metrics::MetricsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub snap: snap::SnapArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub clone: clone::CloneArgs,
    /// Print the version and exit.
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version, help_heading = "Process")]
    pub version: Option<bool>,
    /// Print this help and exit (also -?).
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help, help_heading = "Process")]
    pub help: Option<bool>,
}

/// Long flag names the command line accepts (without the leading `--`).
pub fn long_flags() -> Vec<String> {
    Cli::command().get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect()
}

/// Short flag letters the command line accepts.
pub fn short_flags() -> Vec<char> {
    Cli::command().get_arguments().filter_map(|a| a.get_short()).collect()
}

/// Words mount(8) and fstab add that are not for the file system; dropped silently.
const MOUNT_HELPER_WORDS: &[&str] =
    &["defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner", "group", "comment"];

/// Upstream's limit on config-file substitutions (guards against a file including itself).
const MAX_CONFIG_SUBSTITUTIONS: usize = 100;

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Cli> {
    let expanded = expand(args)?;
    let argv = std::iter::once("s3backer".to_string()).chain(expanded);
    Cli::try_parse_from(argv).map_err(|e| {
        // A value our parsers refused: their message is the whole story (it names the flag).
        match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<crate::bad_value::BadValue>()) {
            Some(bad) => anyhow::Error::new(bad.clone()),
            None => e.into(),
        }
    })
}

/// Rewrites config files, `-o` lists and `-?` into plain words clap understands.
pub fn expand(args: &[String]) -> Result<Vec<String>> {
    let ours: HashSet<String> = long_flags().into_iter().collect();
    let mut out = Vec::new();
    let mut substitutions = 0usize;
    expand_into(args, &ours, &mut out, &mut substitutions)?;
    Ok(out)
}

fn read_config_file(path: &str, substitutions: &mut usize) -> Result<Vec<String>> {
    *substitutions += 1;
    if *substitutions > MAX_CONFIG_SUBSTITUTIONS {
        bail!("too many config file substitutions (more than {MAX_CONFIG_SUBSTITUTIONS}; does a file include itself?)");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("can't read config file {path}"))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

fn expand_into(args: &[String], ours: &HashSet<String>, out: &mut Vec<String>, subs: &mut usize) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        // Config files: -F FILE, -FFILE, --configFile=FILE, --configFile FILE.
        let config = if a == "-F" || a == "--configFile" {
            let Some(f) = args.get(i) else { bail!("option {a} needs a file name") };
            i += 1;
            Some(f.clone())
        } else if let Some(f) = a.strip_prefix("--configFile=") {
            Some(f.to_string())
        } else {
            a.strip_prefix("-F").filter(|f| !f.is_empty() && !a.starts_with("--")).map(|f| f.to_string())
        };
        if let Some(file) = config {
            let words = read_config_file(&file, subs)?;
            expand_into(&words, ours, out, subs)?;
            continue;
        }
        // -o lists: -o a=b,c or -oa=b,c.
        let opts = if a == "-o" {
            let Some(o) = args.get(i) else { bail!("option -o needs a value") };
            i += 1;
            Some(o.clone())
        } else {
            a.strip_prefix("-o").filter(|o| !o.is_empty()).map(|o| o.to_string())
        };
        if let Some(opts) = opts {
            for opt in opts.split(',').filter(|o| !o.is_empty()) {
                let name = opt.split_once('=').map_or(opt, |(n, _)| n);
                if name == "configFile" {
                    let file = opt.split_once('=').map(|(_, v)| v).unwrap_or_default();
                    let words = read_config_file(file, subs)?;
                    expand_into(&words, ours, out, subs)?;
                } else if ours.contains(name) {
                    out.push(format!("--{opt}"));
                } else if crate::fuse_options::find(name).is_some() {
                    out.push("-o".into());
                    out.push(opt.to_string());
                } else if MOUNT_HELPER_WORDS.contains(&name) || name.starts_with("x-") {
                    // For mount(8), not for us.
                } else {
                    bail!("unknown mount option \"{opt}\"");
                }
            }
            continue;
        }
        if a == "-?" {
            out.push("--help".into());
            continue;
        }
        out.push(a.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn o_options_become_flags() {
        let e = expand(&s(&["-o", "blockSize=1m,readOnly,allow_other,noauto,_netdev", "b", "/m"])).unwrap();
        assert_eq!(e, s(&["--blockSize=1m", "--readOnly", "-o", "allow_other", "b", "/m"]));
        let e = expand(&s(&["-osize=1g"])).unwrap();
        assert_eq!(e, s(&["--size=1g"]));
        let err = expand(&s(&["-o", "bogus=1"])).unwrap_err().to_string();
        assert_eq!(err, "unknown mount option \"bogus=1\"");
    }

    #[test]
    fn config_files_are_spliced() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("inner");
        std::fs::write(&inner, "--size=1m\n").unwrap();
        let outer = d.path().join("outer");
        std::fs::write(&outer, format!("# comment\n  --blockSize=4k  \n\n-F\n{}\n", inner.display())).unwrap();
        let e = expand(&s(&["--configFile", outer.to_str().unwrap(), "x"])).unwrap();
        assert_eq!(e, s(&["--blockSize=4k", "--size=1m", "x"]));
        let e = expand(&s(&["-o", &format!("configFile={}", inner.display())])).unwrap();
        assert_eq!(e, s(&["--size=1m"]));
        // A file that includes itself stops with an error, not a stack overflow.
        let selfref = d.path().join("self");
        std::fs::write(&selfref, format!("-F{}\n", selfref.display())).unwrap();
        assert!(expand(&s(&["-F", selfref.to_str().unwrap()])).unwrap_err().to_string().contains("too many"));
        assert!(expand(&s(&["-F", "/nonexistent/x"])).unwrap_err().to_string().contains("can't read config file"));
    }

    #[test]
    fn clap_accepts_upstream_spellings() {
        let c = parse(&s(&["--test", "--size=1m", "--blockSize=4k", "-f", "--compress", "dir", "/mnt"])).unwrap();
        assert!(c.core.test && c.core.foreground);
        assert_eq!(c.core.size, Some(1 << 20));
        assert_eq!(c.codec.compress, Some(s3b_codec::Compression::Deflate(None)));
        assert_eq!(c.positional, s(&["dir", "/mnt"]));
        let c = parse(&s(&["--size=1m", "-o", "size=2m", "b"])).unwrap();
        assert_eq!(c.core.size, Some(2 << 20), "the later flag wins");
        let c = parse(&s(&["--encrypt=AES-256-CBC", "b"])).unwrap();
        assert_eq!(c.codec.encrypt, Some(s3b_codec::Cipher::Aes256Cbc));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary argument words and config-file bytes never panic the parser: they parse
        /// or give an error.
        #[test]
        fn arbitrary_words_never_panic(words in prop::collection::vec("[-=,a-zA-Z0-9/_ ?]{0,24}", 0..12),
                                       file in prop::collection::vec(any::<u8>(), 0..400)) {
            let d = tempfile::tempdir().unwrap();
            let f = d.path().join("cfg");
            std::fs::write(&f, &file).unwrap();
            let mut args = words.clone();
            args.push("-F".into());
            args.push(f.to_string_lossy().into_owned());
            let _ = parse(&args);
            let _ = parse(&words).map(crate::config::validate);
        }
    }
}
