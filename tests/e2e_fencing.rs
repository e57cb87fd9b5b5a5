//! The mount token fences racing mounts: pairs of mounts of one volume, each pair started at the
//! same instant (two threads released by one barrier, each starting the real binary), over a
//! server with conditional writes (s3s-fs) and over one without (Garage). Exactly one mount of
//! each pair comes up; the other fails with "already mounted" and leaves the winner's token.
//! The same through the fault-injecting proxy (10 % 503, 2 % 500, 3 % resets): never both up.
//! Also: `--force` still overrides, a crashed mount is still recoverable, and C s3backer 1.5.4
//! and we still see each other's token. The same on Ceph's RGW, which honours the headers.

mod common;
use common::*;
use s3b_testkit::ceph::Ceph;
use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
use s3b_testkit::garage::{BUCKET, Garage};
use s3b_testkit::s3s_fs::S3sFs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const C_S3BACKER: &str = "/usr/bin/s3backer";
const GEOMETRY: [&str; 2] = ["--size=1m", "--blockSize=4k"];

/// One racing mount: its process and where it mounts.
struct Racer {
    child: Child,
    mnt: PathBuf,
    stderr: PathBuf,
}

/// How a racing mount ended up.
#[derive(Debug)]
enum Outcome {
    Mounted,
    /// Exited before mounting, with this code and stderr.
    Refused(i32, String),
}

impl Racer {
    fn outcome(&mut self) -> Option<Outcome> {
        if is_mounted(&self.mnt) {
            return Some(Outcome::Mounted);
        }
        let status = self.child.try_wait().unwrap()?;
        // The mount may have appeared just before the exit: look once more.
        if is_mounted(&self.mnt) {
            return Some(Outcome::Mounted);
        }
        Some(Outcome::Refused(status.code().unwrap_or(-1), std::fs::read_to_string(&self.stderr).unwrap_or_default()))
    }

    /// Unmounts a winner and returns its exit code.
    fn unmount(mut self) -> i32 {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "winner did not exit after unmount");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The program the races run: ours, or for a measurement by hand the one named by
/// `$S3BACKER_MEASURE` (see [`measure_racing_pairs_through_faults`]).
fn program() -> String {
    std::env::var("S3BACKER_MEASURE").unwrap_or_else(|_| bin().to_string())
}

/// Starts the binary with `args` + `-f` + `mnt` for each (args, mnt) at the same instant.
fn start_together(mounts: &[(Vec<String>, PathBuf)]) -> Vec<Racer> {
    let barrier = Arc::new(Barrier::new(mounts.len()));
    let threads: Vec<_> = mounts
        .iter()
        .map(|(args, mnt)| {
            let (barrier, mnt, mut a) = (barrier.clone(), mnt.clone(), args.to_vec());
            a.push("-f".into());
            a.push(mnt.to_string_lossy().into_owned());
            std::thread::spawn(move || {
                let stderr = mnt.with_extension("stderr");
                let f = std::fs::File::create(&stderr).unwrap();
                barrier.wait();
                let child = Command::new(program())
                    .args(&a)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(f)
                    .spawn()
                    .unwrap();
                Racer { child, mnt, stderr }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Counts of a series of races.
#[derive(Debug, Default)]
struct Tally {
    pairs: usize,
    one_up: usize,
    both_up: usize,
    none_up: usize,
}

/// What [`race_pairs`] does with each race besides counting it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Checks it: the loser refused with "already mounted", the token there while the winner
    /// is up and cleared at its unmount, which succeeds.
    Strict,
    /// Only counts (for measurements of other programs).
    CountOnly,
}

/// Runs `pairs` races, `batch` at a time (all mounts of a batch released together), each on
/// its own volume `BUCKET/<tag><i>`, and tallies how many mounts of each came up.
fn race_pairs(
    flags: &[String],
    list_keys: &dyn Fn() -> Vec<String>,
    tag: &str,
    (pairs, batch): (usize, usize),
    check: Check,
) -> Tally {
    let strict = check == Check::Strict;
    let s = Scratch::new();
    let mut tally = Tally::default();
    for first in (0..pairs).step_by(batch) {
        let ids: Vec<usize> = (first..pairs.min(first + batch)).collect();
        let mut all: Vec<(Vec<String>, PathBuf)> = Vec::new();
        for &i in &ids {
            let mut a = flags.to_vec();
            a.extend(GEOMETRY.iter().map(|x| x.to_string()));
            a.push(format!("{BUCKET}/{tag}{i}"));
            for k in 0..2 {
                let m = s.path(&format!("m{i}-{k}"));
                std::fs::create_dir(&m).unwrap();
                all.push((a.clone(), m));
            }
        }
        let mut racers = start_together(&all);
        let end = Instant::now() + Duration::from_secs(60);
        let mut outcomes: Vec<Option<Outcome>> = racers.iter().map(|_| None).collect();
        while outcomes.iter().any(Option::is_none) {
            for (r, o) in racers.iter_mut().zip(outcomes.iter_mut()) {
                if o.is_none() {
                    *o = r.outcome();
                }
            }
            if Instant::now() > end {
                for r in &mut racers {
                    let _ = r.child.kill();
                }
                panic!("no outcome in 60 s: {outcomes:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(Option::unwrap).collect();
        for (j, &i) in ids.iter().enumerate() {
            let pair = &outcomes[2 * j..2 * j + 2];
            let up = pair.iter().filter(|o| matches!(o, Outcome::Mounted)).count();
            tally.pairs += 1;
            match up {
                1 => tally.one_up += 1,
                2 => tally.both_up += 1,
                _ => tally.none_up += 1,
            }
            for o in pair.iter().filter(|_| strict) {
                if let Outcome::Refused(code, err) = o {
                    assert!(
                        *code != 0 && err.contains("already mounted"),
                        "pair {i}: the loser failed otherwise ({code}): {err}"
                    );
                }
            }
            if up > 0 && strict {
                assert!(
                    list_keys().contains(&format!("{tag}{i}/s3backer-mounted")),
                    "pair {i}: no token while mounted"
                );
            }
        }
        for (r, o) in racers.into_iter().zip(&outcomes) {
            if matches!(o, Outcome::Mounted) {
                let code = r.unmount();
                assert!(code == 0 || !strict, "a winner's unmount failed");
            }
        }
        for &i in ids.iter().filter(|_| strict) {
            assert!(
                !list_keys().contains(&format!("{tag}{i}/s3backer-mounted")),
                "pair {i}: token left after the winner's clean unmount"
            );
        }
    }
    tally
}

/// Twenty races (five at a time) on `server`, volumes named `<tag><i>`: every one has exactly
/// one winner.
fn one_winner_per_race(server: &str, tag: &str, flags: &[String], list_keys: &dyn Fn() -> Vec<String>) {
    let tally = race_pairs(flags, list_keys, tag, (20, 5), Check::Strict);
    eprintln!("{server}: {tally:?}");
    assert_eq!((tally.one_up, tally.both_up, tally.none_up), (20, 0, 0), "{tally:?}");
}

#[test]
fn racing_pairs_on_a_server_with_conditional_writes() {
    let srv = S3sFs::start();
    one_winner_per_race("s3s-fs, conditional writes", "cas", &srv.s3backer_flags(), &|| srv.list_keys(BUCKET));
}

#[test]
fn racing_pairs_on_a_server_without_conditional_writes() {
    let g = Garage::start();
    one_winner_per_race("Garage, no conditional writes", "wait", &g.s3backer_flags(), &|| g.list_keys(BUCKET));
}

/// The proxy of the fault tests: `e503` % 503, `e500` % 500, `resets` % resets (half after
/// forwarding), in front of 127.0.0.1:`port`.
fn faulty_proxy(port: u16, (e503, e500, resets): (u32, u32, u32)) -> FaultProxy {
    let p =
        FaultProxy::start(port, FaultConfig { error_percent: e503, reset_percent: resets, ..FaultConfig::default() });
    p.set_internal_error_percent(e500);
    p
}

/// [`one_winner_per_race`] on the server at 127.0.0.1:`port` through the fault tests' proxy
/// (10 % 503, 2 % 500, 3 % resets), which must have injected faults.
fn one_winner_per_race_through_faults(server: &str, tag: &str, port: u16, list_keys: &dyn Fn() -> Vec<String>) {
    let proxy = faulty_proxy(port, (10, 2, 3));
    one_winner_per_race(server, tag, &garage_flags_at(&proxy.base_url()), list_keys);
    assert!(proxy.counts().faults() > 0);
}

#[test]
fn racing_pairs_through_faults_on_a_server_with_conditional_writes() {
    let srv = S3sFs::start();
    one_winner_per_race_through_faults("s3s-fs through faults", "fcas", srv.port, &|| srv.list_keys(BUCKET));
}

#[test]
fn racing_pairs_through_faults_on_a_server_without_conditional_writes() {
    let g = Garage::start();
    one_winner_per_race_through_faults("Garage through faults", "fwait", g.port, &|| g.list_keys(BUCKET));
}

/// Figures for a report, not a check: 20 racing pairs through each fault rate on s3s-fs and on
/// Garage, run with `$S3BACKER_MEASURE` (default: ours), printed as "pairs / one up / both up /
/// none up". Run by hand: `cargo test --test e2e_fencing measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_racing_pairs_through_faults() {
    for rates in [(0, 0, 0), (10, 2, 3), (20, 5, 5)] {
        let srv = S3sFs::start();
        let proxy = faulty_proxy(srv.port, rates);
        let t =
            race_pairs(&garage_flags_at(&proxy.base_url()), &|| srv.list_keys(BUCKET), "m", (20, 5), Check::CountOnly);
        eprintln!("MEASURE races s3s-fs {rates:?}: {t:?}");
        let g = Garage::start();
        let proxy = faulty_proxy(g.port, rates);
        let t =
            race_pairs(&garage_flags_at(&proxy.base_url()), &|| g.list_keys(BUCKET), "m", (20, 5), Check::CountOnly);
        eprintln!("MEASURE races Garage {rates:?}: {t:?}");
    }
}

/// One RGW for the tests of this file that need it.
fn rgw() -> &'static Ceph {
    static RGW: std::sync::OnceLock<Ceph> = std::sync::OnceLock::new();
    RGW.get_or_init(|| Ceph::start(1))
}

/// RGW checks `If-None-Match: *` and writes atomically: of the token PUTs of each race exactly
/// one was stored (200); the others were answered 412, as its access log shows.
#[test]
fn racing_pairs_on_rgw_with_atomic_conditional_writes() {
    let c = rgw();
    one_winner_per_race("RGW, conditional writes", "rgw", &c.s3backer_flags(), &|| c.list_keys(BUCKET));
    let mut answers: std::collections::BTreeMap<(usize, String), usize> = Default::default();
    for line in c.rgw_log().lines() {
        let Some(rest) = line.split(&format!("\"PUT /{BUCKET}/rgw")).nth(1) else { continue };
        let Some((pair, after)) = rest.split_once("/s3backer-mounted HTTP/1.1\" ") else { continue };
        let code = after.split_whitespace().next().unwrap_or("").to_string();
        *answers.entry((pair.parse().unwrap(), code)).or_default() += 1;
    }
    let count = |code: &str| answers.iter().filter(|((_, c), _)| c == code).map(|(_, n)| n).sum::<usize>();
    eprintln!("RGW's answers to the racing token PUTs: {} × 200, {} × 412", count("200"), count("412"));
    for i in 0..20 {
        assert_eq!(answers.get(&(i, "200".to_string())), Some(&1), "race {i}: {answers:?}");
    }
}

/// RGW 16 compares a PUT's `If-Match` with the ETag it stores without quotes, so the quoted
/// ETag its own HEAD returns never matches (GET compares correctly). `--force` and crash
/// recovery replace a token under `If-Match`, and still work there.
#[test]
fn force_and_crash_recovery_on_rgw_whose_put_if_match_wants_an_unquoted_etag() {
    let c = rgw();
    assert_eq!(c.curl(&["-X", "PUT", "--data-binary", "a"], &format!("{BUCKET}/ifmatch")).0, 200);
    let etag = "0cc175b9c0f1b6a831c399e269772661"; // MD5 of "a"
    let put_if = |tag: String| {
        c.curl(&["-X", "PUT", "--data-binary", "a", "-H", &format!("If-Match: {tag}")], &format!("{BUCKET}/ifmatch")).0
    };
    assert_eq!(put_if(format!("\"{etag}\"")), 412, "RGW now matches a quoted If-Match on PUT");
    assert_eq!(put_if(etag.to_string()), 200);
    assert_eq!(c.curl(&["-H", &format!("If-Match: \"{etag}\"")], &format!("{BUCKET}/ifmatch")).0, 200);
    force_and_crash_recovery(&c.s3backer_flags(), &|| c.list_keys(BUCKET));
}

fn mount_vol(flags: &[String], vol: &str, extra: &[&str], mnt: &Path) -> Mount {
    let mut a: Vec<String> = flags.to_vec();
    a.extend(GEOMETRY.iter().chain(extra).map(|x| x.to_string()));
    a.push(format!("{BUCKET}/{vol}"));
    Mount::start_owned(a, mnt)
}

fn run_vol(flags: &[String], vol: &str, extra: &[&str], mnt: Option<&Path>) -> std::process::Output {
    let mut a: Vec<String> = flags.to_vec();
    a.extend(GEOMETRY.iter().chain(extra).map(|x| x.to_string()));
    a.push(format!("{BUCKET}/{vol}"));
    if let Some(m) = mnt {
        a.push("-f".into());
        a.push(m.to_string_lossy().into_owned());
    }
    Command::new(bin()).args(&a).stdin(Stdio::null()).output().unwrap()
}

/// `--force` over a live mount, a crash then `--reset-mounted-flag`, a crash then `--force`.
fn force_and_crash_recovery(flags: &[String], list_keys: &dyn Fn() -> Vec<String>) {
    let s = Scratch::new();
    let (m1p, m2p) = (s.path("a"), s.path("b"));
    std::fs::create_dir(&m1p).unwrap();
    std::fs::create_dir(&m2p).unwrap();
    let token = "v/s3backer-mounted".to_string();

    let m1 = mount_vol(flags, "v", &[], &m1p);
    let out = run_vol(flags, "v", &[], Some(&m2p));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already mounted"));
    // --force replaces the token; the overridden mount's unmount then leaves the new one alone.
    let m2 = mount_vol(flags, "v", &["--force"], &m2p);
    assert!(m2.stderr().contains("proceeding because of --force"), "{}", m2.stderr());
    assert_eq!(m1.unmount(), 0);
    assert!(list_keys().contains(&token), "the forced mount's token was removed by the overridden mount");
    assert_eq!(m2.unmount(), 0);
    assert!(!list_keys().contains(&token));

    // A crash leaves the token; the next mount is refused; --reset-mounted-flag clears it.
    let m = mount_vol(flags, "v", &[], &m1p);
    m.kill9();
    assert!(list_keys().contains(&token));
    let out = run_vol(flags, "v", &[], Some(&m1p));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reset-mounted-flag"));
    let out = run_vol(flags, "v", &["--reset-mounted-flag"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = mount_vol(flags, "v", &[], &m1p);
    m.kill9();
    // Or --force over the crashed mount's token.
    let m = mount_vol(flags, "v", &["--force"], &m1p);
    assert_eq!(m.unmount(), 0);
    assert!(!list_keys().contains(&token));
}

#[test]
fn force_and_crash_recovery_with_conditional_writes() {
    let srv = S3sFs::start();
    force_and_crash_recovery(&srv.s3backer_flags(), &|| srv.list_keys(BUCKET));
}

#[test]
fn force_and_crash_recovery_without_conditional_writes() {
    let g = Garage::start();
    force_and_crash_recovery(&g.s3backer_flags(), &|| g.list_keys(BUCKET));
}

/// C s3backer 1.5.4 refuses a volume we have mounted, and we refuse one it has mounted.
#[test]
fn c_s3backer_and_we_see_each_others_token() {
    assert!(Path::new(C_S3BACKER).exists(), "C s3backer missing: apt-get install s3backer");
    let g = Garage::start();
    let s = Scratch::new();
    let (m1p, m2p) = (s.path("a"), s.path("b"));
    std::fs::create_dir(&m1p).unwrap();
    std::fs::create_dir(&m2p).unwrap();
    let c_args = |mnt: &Path| -> Vec<String> {
        let mut a = g.s3backer_flags();
        a.extend(
            ["-f", "--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0", "--size=1m", "--blockSize=4k"]
                .iter()
                .map(|x| x.to_string()),
        );
        a.push(BUCKET.into());
        a.push(mnt.to_string_lossy().into_owned());
        a
    };
    // Ours up, C refused.
    let mut a = g.s3backer_flags();
    a.extend(GEOMETRY.iter().map(|x| x.to_string()));
    a.push(BUCKET.into());
    let ours = Mount::start_owned(a.to_vec(), &m1p);
    let out = Command::new(C_S3BACKER).args(c_args(&m2p)).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already mounted"), "C s3backer did not see our token: {err}");
    assert!(!is_mounted(&m2p));
    assert_eq!(ours.unmount(), 0);
    // C up, ours refused.
    let c = Mount::start_program(C_S3BACKER, &c_args(&m1p), &m1p);
    let mut a2 = a.clone();
    a2.extend(["-f".to_string(), m2p.to_string_lossy().into_owned()]);
    let out = Command::new(bin()).args(&a2).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already mounted"), "we did not see C's token: {err}");
    assert_eq!(c.unmount(), 0);
    assert!(!g.list_keys(BUCKET).iter().any(|k| k == "s3backer-mounted"));
}
