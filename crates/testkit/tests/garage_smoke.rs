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
