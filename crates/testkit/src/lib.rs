//! Helpers shared by the tests of every crate. Test-only: nothing here ships in the binary.
//!
//! - [`garage`]: a throw-away single-node Garage S3 server on 127.0.0.1, the real S3 server
//!   the S3 tests run against (never a mock of our own).
//! - [`garage_cluster`]: a 3-node Garage cluster (replication factor 3) whose nodes tests kill.
//! - [`s3s_fs`]: a throw-away s3s-fs, a second S3 implementation with other quirks.
//! - [`ceph`]: a throw-away single-host Ceph cluster (monitor, manager, OSDs, RADOS Gateway):
//!   RGW is the S3 server people self-host, and the cluster also serves RBD for comparison.
//! - [`fault_proxy`]: a failure-injecting HTTP proxy (5xx, resets, stalls) in front of it,
//!   which can also refuse every listing, as a least-privilege key's bucket policy does.
//! - [`public_http`]: a plain web server publishing a read-only image's block objects.
//! - [`hostile`]: a proxy that answers chosen requests as a hostile server would (endless or
//!   oversized bodies, header floods, trickled answers).
//! - [`listener`]: the accept-a-connection-per-thread skeleton those three servers share.
//!
//! And [`stdout_of_success`], how every helper that runs a command checks that it worked.

pub mod ceph;
pub mod fault_proxy;
pub mod garage;
pub mod garage_cluster;
pub mod hostile;
pub mod listener;
pub mod public_http;
pub mod s3s_fs;

/// The stdout of a finished command `what`, panicking with its status and both outputs unless
/// it succeeded: a failed set-up step stops the test with everything needed to see why.
pub fn stdout_of_success(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
