//! Flags of layers that are not built yet are refused, never silently ignored.
//!
//! Each entry names a flag and says whether the command line set it. When a layer lands, its
//! entries are removed from its module's `unsupported_flags` (`caching`, `encoding`)
//! and its flags are handled there.

use crate::args::Cli;
use anyhow::{Result, bail};

/// Fails with "not supported yet" for the first flag of a missing layer that was given.
pub fn check(cli: &Cli) -> Result<()> {
    let mut given = crate::caching::unsupported_flags(cli);
    given.extend(crate::encoding::unsupported_flags(cli));
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        bail!("{flag} is not supported yet");
    }
    Ok(())
}
