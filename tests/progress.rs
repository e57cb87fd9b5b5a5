//! Progress of long work: on a terminal (a pty from script(1)) a bar or spinner is drawn and
//! cleared; off a terminal only one summary line is written. Covers the `--listBlocks` survey
//! at startup (a `--test` directory), the block cache file's recovery, and `--erase` (Garage on
//! 127.0.0.1).

mod common;
use common::*;
use s3b_testkit::garage::{BUCKET, Garage};
use std::path::Path;
use std::process::{Command, Stdio};

/// A command run on a terminal (script(1)); if a check fails, dropping it unmounts `mnt` (if
/// given and mounted), which ends our daemon, then waits for script(1).
struct OnTerminal(Supervised);

impl OnTerminal {
    fn wait_success(mut self) -> bool {
        self.0.child.wait().unwrap().success()
    }
}

/// Runs `args` (our binary first) on a pseudo-terminal with script(1); the typescript file
/// collects what the terminal showed. `mnt`: the mount point it mounts, if any.
fn on_a_terminal(args: &[String], typescript: &Path, mnt: Option<&Path>) -> OnTerminal {
    let line: Vec<String> = std::iter::once(bin().to_string()).chain(args.iter().cloned()).collect();
    let child = Command::new("script")
        .args(["-qefc", &line.join(" ")])
        .arg(typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script(1)");
    OnTerminal(Supervised { child, mnt: mnt.map(Path::to_path_buf), terminate: false })
}

/// A volume of 300 stored blocks in the scratch directory.
fn stored_blocks(s: &Scratch) {
    let m = Mount::test_dir(s, &["--size=64m", "--blockSize=64k"]);
    write_synced(&m.file(), 0, &random_bytes(1, 300 << 16));
    assert_eq!(m.unmount(), 0);
}

#[test]
fn list_blocks_survey_shows_a_spinner_on_a_terminal_and_one_line_off_it() {
    let s = Scratch::new();
    stored_blocks(&s);
    let mut args = test_args(&s, &["--size=64m", "--blockSize=64k", "--listBlocks"]);
    args.extend(strings(&["-f", s.mnt().to_str().unwrap()]));

    // On a terminal: the spinner, then the summary.
    let ts = s.path("typescript");
    let child = on_a_terminal(&args, &ts, Some(&s.mnt()));
    wait_for(30, "the mount", || is_mounted(&s.mnt()));
    let survey_done = || std::fs::read_to_string(&ts).unwrap_or_default().contains("block survey done");
    wait_for(30, "the survey", survey_done);
    cmd("umount", &[s.mnt().to_str().unwrap()]);
    assert!(child.wait_success());
    let screen = std::fs::read_to_string(&ts).unwrap();
    assert!(screen.contains("s3backer: surveying the stored blocks"), "no spinner:\n{screen}");
    assert!(screen.contains("\x1b[2K"), "the spinner was not cleared:\n{screen}");
    assert!(screen.contains("300 of 1024 blocks are non-zero"), "{screen}");

    // Off a terminal: one line.
    let m = Mount::start_owned(test_args(&s, &["--size=64m", "--blockSize=64k", "--listBlocks"]), &s.mnt());
    wait_for(30, "the survey", || m.stderr().contains("block survey done"));
    let err = m.stderr();
    assert!(!err.contains("surveying the stored blocks") && !err.contains('\r'), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("block survey")).count(), 1, "{err}");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn erase_shows_a_bar_on_a_terminal_and_one_line_off_it() {
    let g = Garage::start();
    let s = Scratch::new();
    let fill = |g: &Garage| {
        let mut a = g.s3backer_flags();
        a.extend(strings(&["--size=16m", "--blockSize=4k", BUCKET]));
        let m = Mount::start_owned(a, &s.mnt());
        write_synced(&m.file(), 0, &random_bytes(2, 1500 << 12));
        assert_eq!(m.unmount(), 0);
    };
    let mut erase = g.s3backer_flags();
    erase.extend(strings(&["--erase", "--force", BUCKET]));

    fill(&g);
    let ts = s.path("typescript");
    assert!(on_a_terminal(&erase, &ts, None).wait_success());
    let screen = std::fs::read_to_string(&ts).unwrap();
    assert!(screen.contains("s3backer: erasing ["), "no bar:\n{screen}");
    assert!(screen.contains("erased 1500 blocks of"), "{screen}");

    fill(&g);
    let out = Command::new(bin()).args(&erase).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("s3backer: erased 1500 blocks of") && !err.contains('\r'), "{err}");
}

#[test]
fn cache_file_recovery_shows_a_bar_on_a_terminal_and_one_line_off_it() {
    let s = Scratch::new();
    let (_, flag) = s.cache_file();
    let geometry = ["--size=64m", "--blockSize=64k", "--blockCacheSize=512", flag.as_str()];
    let m = Mount::test_dir(&s, &geometry);
    write_synced(&m.file(), 0, &random_bytes(3, 300 << 16));
    assert_eq!(m.unmount(), 0);

    // On a terminal: the bar, cleared, then the summary.
    let ts = s.path("typescript");
    let mut args = test_args(&s, &geometry);
    args.extend(strings(&["-f", s.mnt().to_str().unwrap()]));
    let child = on_a_terminal(&args, &ts, Some(&s.mnt()));
    wait_for(30, "the mount", || is_mounted(&s.mnt()));
    cmd("umount", &[s.mnt().to_str().unwrap()]);
    assert!(child.wait_success());
    let screen = std::fs::read_to_string(&ts).unwrap();
    assert!(screen.contains("s3backer: reading the block cache file ["), "no bar:\n{screen}");
    assert!(screen.contains("300 of 512 slots hold blocks, read in"), "{screen}");

    // Off a terminal: one line, no bar.
    let m = Mount::test_dir(&s, &geometry);
    let err = m.stderr();
    assert!(!err.contains("reading the block cache file [") && !err.contains('\r'), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("slots hold blocks")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("300 of 512 slots hold blocks, read in "), "{err}");
    assert_eq!(m.unmount(), 0);
}
