//! `s3b-ceph [OSDS]`: starts s3b-testkit's throw-away Ceph cluster for the benchmarks
//! (benches/ceph.py), prints one JSON line (RGW's port, the configuration file, the daemons'
//! pids, the startup time and RSS) and keeps the cluster until its stdin closes, then stops it
//! and deletes its files. The same cluster the tests use, so the two never drift apart.

use std::io::Read;

fn main() {
    let osds = std::env::args().nth(1).map_or(1, |a| a.parse().expect("OSDS: a number from 1 to 3"));
    let c = s3b_testkit::ceph::Ceph::start(osds);
    let pids: Vec<String> = c.pids().iter().map(|(n, p)| format!("\"{n}\":{p}")).collect();
    let rss: u64 = c.rss_kib().iter().map(|(_, k)| k).sum();
    println!(
        "{{\"port\":{},\"conf\":\"{}\",\"startup_s\":{:.2},\"rss_mib\":{},\"pids\":{{{}}}}}",
        c.port,
        c.conf().display(),
        c.startup.as_secs_f64(),
        rss >> 10,
        pids.join(",")
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
