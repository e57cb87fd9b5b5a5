//! The s3backer command line: parses and checks the arguments, then runs the chosen mode.
//!
//! Errors end the process with one line `s3backer: <what went wrong>` on stderr and exit code 1;
//! nothing is written to the store before the configuration has been fully checked.
//!
//! The modules run in one direction: [`args`] (what the command line says) → [`config`] (the
//! checked settings, per layer) → [`stack`] (the layers built from them) → a mode ([`mount`],
//! [`nbd`], [`s3`] for the bucket commands). What both ends need sits at the bottom:
//! [`bad_value`] and [`fuse_options`] import nothing of this crate, [`size`] only
//! [`bad_value`]; so no module imports one that imports it (tests/no_import_cycles.rs checks).

pub mod args;
pub mod bad_value;
pub mod caching;
pub mod clone;
pub mod completions;
pub mod config;
pub mod control;
pub mod daemon;
pub mod encoding;
pub mod fuse_options;
pub mod geometry;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod nbd;
pub mod notify;
pub mod progress;
pub mod s3;
mod shared;
pub mod size;
pub mod snapshot;
pub mod stack;
pub mod stats_mirror;
pub mod token;

use config::Mode;

/// What `--version` prints after the program name: the version and the commit built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("S3BACKER_COMMIT"), ")");

/// An I/O error's message without Rust's "(os error N)" suffix.
pub(crate) fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// An error and its causes on one line, each cause once (`outer: cause: root cause`), with I/O
/// errors shown without Rust's "(os error N)" suffix.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| match c.downcast_ref::<std::io::Error>() {
            Some(io) => io_msg(io),
            None => c.to_string(),
        })
        .collect();
    parts.join(": ")
}

/// Runs the program with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

/// Runs the program with `args` (without the program name) and returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let cli = match args::parse(args) {
        Ok(c) => c,
        Err(e) => return report_parse_error(e),
    };
    // Installed before the checks, so their warnings are seen; debug messages once known.
    logging::init();
    let cfg = match config::validate(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3backer: {}", one_line(&e));
            return 1;
        }
    };
    logging::set_debug(cfg.debug);
    if let Err(e) = metrics::prepare(&cfg) {
        eprintln!("s3backer: {}", one_line(&e));
        return 1;
    }
    let result = match cfg.mode {
        Mode::Mount => mount::run(cfg),
        Mode::Nbd => nbd::run(cfg),
        Mode::Erase => s3::erase(cfg),
        Mode::ResetMountedFlag => s3::reset_mounted_flag(cfg),
        Mode::Snapshot | Mode::ListSnapshots | Mode::DeleteSnapshot => snapshot::run(cfg),
        Mode::Flatten => clone::flatten(cfg),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("s3backer: {}", one_line(&e));
            1
        }
    }
}

/// Prints help/version (exit 0) or a one-line parse error (exit 1).
fn report_parse_error(e: anyhow::Error) -> i32 {
    if let Some(ce) = e.downcast_ref::<clap::Error>() {
        use clap::error::ErrorKind;
        if matches!(ce.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = ce.print();
            return 0;
        }
        let text = ce.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        eprintln!("s3backer: {}", first.strip_prefix("error: ").unwrap_or(first));
        return 1;
    }
    eprintln!("s3backer: {}", one_line(&e));
    1
}
