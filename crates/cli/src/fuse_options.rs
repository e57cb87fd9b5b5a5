//! The FUSE mount options `-o` accepts: one table (name, kind of value, what it does) from
//! which the command-line pre-pass, the `-o` help text, the front-end settings, the FUSE mount
//! settings and the man-page test all derive.
//!
//! It promises that an option is either in [`TABLE`] and means the same everywhere, or is
//! refused with one line naming it; what an option does is an [`Effect`], so adding an option
//! with a new kind of effect does not compile until [`MountSettings::apply`] (or the front end)
//! handles it.
//! Options come from libfuse 3 and libfuse 2 (command lines and fstab entries written for
//! s3backer 1.x keep working): those that are already what this implementation does need
//! nothing, and those it cannot honour are accepted with a one-line warning.
//!
//! It is a leaf module (nothing else of this crate is imported), so the argument parser and the
//! mount code can both use it without importing each other.

use anyhow::{Result, anyhow, bail};
use fuser::{MountOption, SessionACL};
use s3b_fuse::FuseTuning;
use std::sync::LazyLock;
use std::time::Duration;

/// What follows an option's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Nothing: the word alone.
    None,
    /// `=N`, a whole number.
    Number,
    /// `=S`, seconds (a fraction is fine).
    Seconds,
    /// `=TEXT`.
    Text,
}

/// What an option does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Who may use the mount.
    Access(SessionACL),
    /// Owner of the exported files.
    Uid,
    /// Group of the exported files.
    Gid,
    /// Sets a mount flag; of it and its `opposite`, the last one given counts, as with mount(8)
    /// (which puts `rw`, `dev` and `suid` in front of what an fstab entry says).
    Flag {
        /// The flag set.
        on: MountOption,
        /// The flag it clears, if it has an opposite.
        opposite: Option<MountOption>,
    },
    /// The file system's name in the mount table.
    FsName,
    /// The file system's subtype in the mount table.
    Subtype,
    /// How long the kernel caches a name lookup.
    EntryTimeout,
    /// How long the kernel caches attributes.
    AttrTimeout,
    /// Requests the kernel keeps in flight.
    MaxBackground,
    /// In-flight requests at which the kernel marks the mount congested.
    CongestionThreshold,
    /// Largest kernel read-ahead.
    MaxReadahead,
    /// Debug mode (the front end: implies `-f` and `--debug`).
    Debug,
    /// FUSE direct I/O on the exported file (the front end: as `--directIO`).
    DirectIo,
    /// Already what this implementation does: nothing to do.
    AlreadySo,
    /// Cannot be honoured here: accepted with a warning.
    NoEffect,
}

/// One FUSE option.
#[derive(Debug, Clone)]
pub struct FuseOption {
    /// Its name in a `-o` list.
    pub name: &'static str,
    /// What follows the name.
    pub value: Value,
    /// What it does.
    pub effect: Effect,
    /// One line for the help text.
    pub what: &'static str,
}

const fn opt(name: &'static str, value: Value, effect: Effect, what: &'static str) -> FuseOption {
    FuseOption { name, value, effect, what }
}

/// A mount flag without an opposite.
const fn flag(on: MountOption) -> Effect {
    Effect::Flag { on, opposite: None }
}

use Effect as E;
use MountOption as M;
use Value as V;

/// One half of an opposite pair: the option's name, the flag it sets, one line for the help.
type Half = (&'static str, MountOption, &'static str);

/// The mount flags that come in opposite pairs: each half is an option that sets its flag
/// and clears the other half's (of the two, the last one given counts).
const OPPOSITES: &[[Half; 2]] = &[
    [("ro", M::RO, "mount read-only"), ("rw", M::RW, "mount read-write")],
    [("dev", M::Dev, "allow device files"), ("nodev", M::NoDev, "no device files (the default)")],
    [("suid", M::Suid, "honour set-user-id bits"), ("nosuid", M::NoSuid, "ignore set-user-id bits (the default)")],
    [("exec", M::Exec, "allow running programs"), ("noexec", M::NoExec, "no running programs")],
    [("atime", M::Atime, "update access times"), ("noatime", M::NoAtime, "no access times")],
    [("sync", M::Sync, "synchronous I/O"), ("async", M::Async, "asynchronous I/O")],
];

/// Every FUSE option `-o` accepts: the options that stand alone, then both halves of every
/// pair of opposite mount flags (`ro`/`rw`, `dev`/`nodev`, …), each written once.
pub static TABLE: LazyLock<Vec<FuseOption>> = LazyLock::new(|| {
    let half = |(name, on, what): &Half, (_, off, _): &Half| {
        opt(name, V::None, Effect::Flag { on: on.clone(), opposite: Some(off.clone()) }, what)
    };
    let pairs = OPPOSITES.iter().flat_map(|[a, b]| [half(a, b), half(b, a)]);
    SINGLES.iter().cloned().chain(pairs).collect()
});

/// The FUSE options that are not one of [`OPPOSITES`].
static SINGLES: &[FuseOption] = &[
    opt("allow_other", V::None, E::Access(SessionACL::All), "every user may use the mount (the default)"),
    opt("allow_root", V::None, E::Access(SessionACL::RootAndOwner), "only root and the owner may use the mount"),
    opt("default_permissions", V::None, flag(M::DefaultPermissions), "the kernel checks permissions (always on)"),
    opt("uid", V::Number, E::Uid, "owner of the exported files"),
    opt("gid", V::Number, E::Gid, "group of the exported files"),
    opt("dirsync", V::None, flag(M::DirSync), "synchronous directory changes"),
    opt("auto_unmount", V::None, flag(M::AutoUnmount), "unmount when the process ends"),
    opt("fsname", V::Text, E::FsName, "name in the mount table"),
    opt("subtype", V::Text, E::Subtype, "subtype in the mount table"),
    opt("direct_io", V::None, E::DirectIo, "FUSE direct I/O on the file (as --directIO)"),
    opt("debug", V::None, E::Debug, "debug mode (as -d)"),
    opt("entry_timeout", V::Seconds, E::EntryTimeout, "kernel name cache time (default a year)"),
    opt("attr_timeout", V::Seconds, E::AttrTimeout, "kernel attribute cache time (default 0)"),
    opt("max_background", V::Number, E::MaxBackground, "kernel requests in flight (default 64)"),
    opt("congestion_threshold", V::Number, E::CongestionThreshold, "congestion mark (default 48)"),
    opt("max_readahead", V::Number, E::MaxReadahead, "largest kernel read-ahead in bytes"),
    // The page cache is kept across opens and stays valid, since the volume changes only
    // through this mount (--directIO bypasses it).
    opt("kernel_cache", V::None, E::AlreadySo, "keep the page cache (always so)"),
    opt("auto_cache", V::None, E::AlreadySo, "keep the page cache while valid (always so)"),
    opt("use_ino", V::None, E::AlreadySo, "fixed inode numbers (always so)"),
    opt("nonempty", V::None, E::AlreadySo, "mount over a non-empty directory (always so with FUSE 3)"),
    opt("big_writes", V::None, E::AlreadySo, "large writes (always so with FUSE 3)"),
    opt("large_read", V::None, E::AlreadySo, "large reads (always so with FUSE 3)"),
    opt("sync_read", V::None, E::NoEffect, "libfuse 2: no effect here"),
    opt("negative_timeout", V::Seconds, E::NoEffect, "libfuse 2: no effect here"),
    opt("max_read", V::Number, E::NoEffect, "libfuse 2: no effect here"),
    opt("max_write", V::Number, E::NoEffect, "libfuse 2: no effect here"),
];

/// The option called `name`.
pub fn find(name: &str) -> Option<&'static FuseOption> {
    TABLE.iter().find(|o| o.name == name)
}

/// The name of a `-o` word (`uid=5` → `uid`) and its value, if any.
pub fn split(word: &str) -> (&str, Option<&str>) {
    word.split_once('=').map_or((word, None), |(n, v)| (n, Some(v)))
}

/// The `-o` help text's list of FUSE options.
pub fn help() -> String {
    let mut h = String::from("Mount option(s), comma separated: any --flag as name=value, or a FUSE option:");
    for o in TABLE.iter() {
        let value = match o.value {
            Value::None => "",
            Value::Number => "=N",
            Value::Seconds => "=S",
            Value::Text => "=TEXT",
        };
        h.push_str(&format!("\n  {}{value}: {}", o.name, o.what));
    }
    h
}

/// What the FUSE options given set for the mount.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Mount options.
    pub options: Vec<MountOption>,
    /// Who may use the mount.
    pub acl: SessionACL,
    /// Owner of the exported files.
    pub uid: u32,
    /// Group of the exported files.
    pub gid: u32,
    /// The kernel's side of the mount.
    pub tuning: FuseTuning,
}

impl MountSettings {
    /// Applies one `-o` word (`name` or `name=value`); an unknown name or a bad value is an
    /// error naming the word. The front end's options ([`Effect::Debug`], [`Effect::DirectIo`])
    /// change nothing here.
    pub fn apply(&mut self, word: &str) -> Result<()> {
        let (name, value) = split(word);
        let Some(o) = find(name) else { bail!("unknown mount option \"{word}\"") };
        match &o.effect {
            E::Access(acl) => self.acl = *acl,
            E::Uid => self.uid = number(word, value)?,
            E::Gid => self.gid = number(word, value)?,
            E::Flag { on, opposite } => {
                self.options.retain(|m| m != on && Some(m) != opposite.as_ref());
                self.options.push(on.clone());
            }
            E::FsName => {
                self.options.retain(|m| !matches!(m, M::FSName(_)));
                self.options.push(M::FSName(value.unwrap_or_default().to_string()));
            }
            E::Subtype => {
                self.options.retain(|m| !is_subtype(m));
                self.options.push(subtype(value.unwrap_or_default()));
            }
            E::EntryTimeout => self.tuning.entry_ttl = seconds(word, value)?,
            E::AttrTimeout => self.tuning.attr_ttl = seconds(word, value)?,
            E::MaxBackground => self.tuning.max_background = small(word, value)?,
            E::CongestionThreshold => self.tuning.congestion_threshold = small(word, value)?,
            E::MaxReadahead => self.tuning.max_readahead = Some(number(word, value)?),
            E::Debug | E::DirectIo => {}
            E::AlreadySo => log::debug!("mount option {word}: already the behaviour"),
            E::NoEffect => log::warn!("mount option {word} has no effect here; ignored"),
        }
        Ok(())
    }

    /// Mounts read-only: as a last `ro`.
    pub fn read_only(&mut self) {
        self.options.retain(|m| *m != M::RO && *m != M::RW);
        self.options.push(M::RO);
    }
}

fn number(word: &str, v: Option<&str>) -> Result<u32> {
    v.and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("invalid mount option \"{word}\": expected a number"))
}

fn small(word: &str, v: Option<&str>) -> Result<u16> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("invalid mount option \"{word}\": expected a number up to 65535"))
}

fn seconds(word: &str, v: Option<&str>) -> Result<Duration> {
    v.and_then(|v| v.parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| anyhow!("invalid mount option \"{word}\": expected a number of seconds"))
}

/// The mount option that sets the FUSE subtype. fuser's own `MountOption::Subtype` reaches only
/// fusermount3: when fuser mounts by itself (as root, with mount(2)) it drops it, and the type
/// stays plain `fuse`. Passed as a kernel option (`subtype=NAME` in the mount data), the kernel
/// records it either way, and fusermount3 accepts it too.
pub fn subtype(name: &str) -> MountOption {
    MountOption::CUSTOM(format!("subtype={name}"))
}

/// Whether `o` sets the subtype (as [`subtype`] does, or fuser's own option).
pub fn is_subtype(o: &MountOption) -> bool {
    match o {
        MountOption::Subtype(_) => true,
        MountOption::CUSTOM(c) => c.starts_with("subtype="),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_opposites_are_mutual() {
        for (i, o) in TABLE.iter().enumerate() {
            assert!(TABLE[..i].iter().all(|p| p.name != o.name), "{} twice", o.name);
            if let E::Flag { on, opposite: Some(off) } = &o.effect {
                let back = TABLE.iter().find(|p| matches!(&p.effect, E::Flag { on: x, .. } if x == off));
                assert!(
                    matches!(back.map(|p| &p.effect), Some(E::Flag { opposite: Some(y), .. }) if y == on),
                    "{}: its opposite does not name it back",
                    o.name
                );
            }
        }
    }

    #[test]
    fn the_help_lists_every_option() {
        let h = help();
        for o in TABLE.iter() {
            assert!(h.contains(&format!("\n  {}", o.name)), "{}", o.name);
        }
    }
}
