//! The test server itself works: starts, stores and lists objects, survives a restart.

use s3b_testkit::garage::{BUCKET, Garage};

#[test]
fn garage_starts_stores_lists_and_restarts() {
    let mut g = Garage::start();
    let tmp = g.dir().join("obj");
    std::fs::write(&tmp, b"hello").unwrap();
    let (code, _) = g.curl(&["-X", "PUT", "--data-binary", &format!("@{}", tmp.display())], &format!("{BUCKET}/a/b"));
    assert_eq!(code, 200);
    assert_eq!(g.list_keys(BUCKET), vec!["a/b".to_string()]);
    g.restart();
    let (code, body) = g.curl(&[], &format!("{BUCKET}/a/b"));
    assert_eq!((code, body.as_slice()), (200, &b"hello"[..]));
    g.create_bucket("second");
    assert!(g.list_keys("second").is_empty());
}

#[test]
fn fault_proxy_forwards_and_injects() {
    use s3b_testkit::fault_proxy::{FaultConfig, FaultProxy};
    use std::time::Duration;
    let g = Garage::start();
    let body = g.dir().join("body");
    std::fs::write(&body, vec![7u8; 100_000]).unwrap();
    let put = ["-X", "PUT", "--data-binary", &format!("@{}", body.display())];
    // Faults off: everything passes, including a body large enough for Expect: 100-continue.
    let all = FaultConfig {
        error_percent: 34,
        reset_percent: 33,
        stall_percent: 33,
        stall: Duration::from_millis(300),
        corrupt_percent: 0,
    };
    let p = FaultProxy::start(g.port, all);
    p.set_faults(false);
    assert_eq!(g.curl_port(p.port, &put, &format!("{BUCKET}/x")).0, 200);
    let (code, got) = g.curl_port(p.port, &[], &format!("{BUCKET}/x"));
    assert_eq!((code, got.len()), (200, 100_000));
    assert_eq!(g.curl_port(p.port, &["-I"], &format!("{BUCKET}/x")).0, 200);
    assert_eq!(g.curl_port(p.port, &[], &format!("{BUCKET}/missing")).0, 404);
    assert_eq!(g.curl_port(p.port, &["-X", "DELETE"], &format!("{BUCKET}/x")).0, 204);
    assert_eq!(p.counts().faults(), 0);
    // Faults on at 100 %: no request gets a 2xx, and each kind is injected.
    p.set_faults(true);
    for i in 0..30 {
        let (code, _) = g.curl_port(p.port, &[], &format!("{BUCKET}?list-type=2&i={i}"));
        assert!(code == 503 || code == 0, "got {code}");
    }
    let c = p.counts();
    assert!(c.errors > 0 && c.resets > 0 && c.stalls > 0, "{c:?}");
    assert_eq!(c.faults(), 30);
}
