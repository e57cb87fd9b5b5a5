//! Records the commit the binary is built from, for `--version`: `S3BACKER_COMMIT` is the
//! short hash of `HEAD`, or `unknown` outside a git checkout (a source tarball). A packager may
//! set `S3BACKER_COMMIT` to override it. Local changes not yet committed are not marked: the
//! script reruns when `HEAD` moves, not on every edit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=S3BACKER_COMMIT");
    let commit = match std::env::var("S3BACKER_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Rerun when HEAD moves (a commit, a checkout, a pull).
            for (flag, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
                if let Some(dir) = git(&["rev-parse", flag]) {
                    println!("cargo:rerun-if-changed={dir}/{file}");
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(dir) = git(&["rev-parse", "--git-common-dir"])
            {
                println!("cargo:rerun-if-changed={dir}/{r}");
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=S3BACKER_COMMIT={commit}");
}
