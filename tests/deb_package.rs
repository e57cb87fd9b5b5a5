//! The Debian package: built with cargo-deb from the binary under test (`--no-build`, the dev
//! profile, fast compression: the release build and its xz compression are `scripts/deb.sh`'s,
//! with the same asset list), checked with lintian (no errors), listed, and extracted into a
//! scratch root with `dpkg-deb -x` — never installed, so the machine keeps Debian's C
//! s3backer for the interop tests. The extracted binary then reports its version and commit,
//! and mounts through mount(8) in both fstab forms.

mod common;
mod fstab_common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Builds the package into `out`; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    s3b_cli::completions::write_all(&Path::new(ROOT).join("target/completions")).expect("write the completions");
    let built = checked_output(
        Command::new("cargo")
            .current_dir(ROOT)
            .args(["deb", "--no-build", "--strip", "--profile", "dev", "--fast", "-q", "-o"])
            .arg(out),
        "cargo deb (scripts/setup.sh installs cargo-deb)",
    );
    let deb = PathBuf::from(built.lines().last().expect("cargo deb prints the package path").trim());
    assert!(deb.is_file(), "{built}");
    deb
}

#[test]
fn debian_package_passes_lintian_and_its_binary_runs_from_a_scratch_root() {
    let s = Scratch::new();
    let deb = build_deb(s.dir.path());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("s3backer-rs_{}-", env!("CARGO_PKG_VERSION"))) && name.ends_with("_amd64.deb"));

    // It replaces Debian's C package: same name, same command.
    let fields =
        cmd("dpkg-deb", &["-f", deb.to_str().unwrap(), "Package", "Conflicts", "Replaces", "Provides", "Depends"]);
    for want in ["Package: s3backer-rs", "Conflicts: s3backer", "Replaces: s3backer", "Provides: s3backer"] {
        assert!(fields.lines().any(|l| l == want), "{want}:\n{fields}");
    }
    assert!(fields.contains("fuse3"), "{fields}");

    let listing = cmd("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    for path in [
        "./usr/bin/s3backer",
        "./usr/share/man/man1/s3backer.1.gz",
        "./usr/share/bash-completion/completions/s3backer",
        "./usr/share/zsh/vendor-completions/_s3backer",
        "./usr/share/fish/vendor_completions.d/s3backer.fish",
        "./usr/share/doc/s3backer-rs/README.md",
        "./usr/share/doc/s3backer-rs/changelog.gz",
        "./usr/share/doc/s3backer-rs/changelog.Debian.gz",
        "./usr/share/doc/s3backer-rs/copyright",
        "./usr/share/doc/s3backer-rs/examples/s3backer-mount.service",
        "./usr/share/doc/s3backer-rs/examples/s3backer-nbd.service",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(&format!(" {path}"))), "{path} not in the package:\n{listing}");
    }
    eprintln!("dpkg-deb -c {name}:\n{listing}");

    let out = Command::new("lintian").arg(&deb).output().expect("run lintian (scripts/setup.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("lintian {name}:\n{report}");

    // The binary from the package, in a scratch root.
    let root = s.path("root");
    cmd("dpkg-deb", &["-x", deb.to_str().unwrap(), root.to_str().unwrap()]);
    let program = root.join("usr/bin/s3backer");
    let version = cmd(program.to_str().unwrap(), &["--version"]);
    let commit = Command::new("git")
        .current_dir(ROOT)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(version.trim(), format!("s3backer {} (commit {commit})", env!("CARGO_PKG_VERSION")));
    let man = root.join("usr/share/man/man1/s3backer.1.gz");
    assert!(sh(&format!("zcat {} | head -c 200", man.display())).contains(".TH"), "the man page");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/s3backer")).unwrap();
    assert!(bash.contains("--metricsListen"), "bash completion");
    fstab_common::fstab_entries_in_both_forms(&program);
}
