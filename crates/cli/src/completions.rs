//! Shell completions for bash, zsh and fish, generated from the clap definition of the command
//! line ([`crate::args::Cli`]) by `clap_complete`, so they always offer exactly the flags the
//! program accepts. The Debian package ships them; `cargo run -p s3b-cli --example completions
//! -- DIR` writes them for an installation from source.

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Each shell's completion file name, as its vendor directory expects it.
pub const FILES: [(Shell, &str); 3] =
    [(Shell::Bash, "s3backer"), (Shell::Zsh, "_s3backer"), (Shell::Fish, "s3backer.fish")];

/// Writes the three completion files into `dir` (created if missing); returns their paths.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = crate::args::Cli::command();
    let mut written = Vec::new();
    for (shell, name) in FILES {
        let path = dir.join(name);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, "s3backer", &mut text);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn completions_offer_the_flags() {
        let d = tempfile::tempdir().unwrap();
        let files = super::write_all(d.path()).unwrap();
        assert_eq!(files.len(), 3);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for flag in ["blockSize", "metricsListen", "nbdListen"] {
                assert!(text.contains(flag), "{}: no {flag}", f.display());
            }
        }
    }
}
