//! A throw-away s3s-fs server on 127.0.0.1: the second, lighter S3 implementation the S3 tests
//! run against, because users run many (Garage is the main one, see [`crate::garage`]).
//!
//! s3s-fs 0.14.1 (`scripts/setup.sh --with-s3` installs it) checks SigV4 but, unlike Garage and
//! AWS, ignores `If-None-Match` (a conditional GET answers 200 with the data) and keeps an object
//! despite a wrong `Content-MD5`. It stores objects as files under its root directory, one
//! directory per bucket. It uses the same credentials and bucket name as the Garage helper.

use crate::garage::{ACCESS_KEY_ID, BUCKET, SECRET_KEY, free_port, list_keys_at, signed_curl};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running s3s-fs; stopped and deleted on drop.
pub struct S3sFs {
    child: Child,
    dir: tempfile::TempDir,
    /// Port of the S3 API on 127.0.0.1.
    pub port: u16,
}

/// Path of the s3s-fs binary, if there is one (`$S3S_FS`, `PATH`, `~/.cargo/bin`).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push(PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin"));
    dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

impl S3sFs {
    /// Starts a fresh server with the bucket [`BUCKET`]; panics if it is not ready in 10 s.
    pub fn start() -> S3sFs {
        let bin = binary().expect("s3s-fs is not installed; run scripts/setup.sh --with-s3");
        let dir = tempfile::Builder::new().prefix("s3b-s3sfs-").tempdir_in("/tmp").expect("tempdir");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::create_dir(dir.path().join("data").join(BUCKET)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY_ID, "--secret-key", SECRET_KEY])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let server = S3sFs { child, dir, port };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if signed_curl(port, &["--max-time", "1"], &format!("{BUCKET}?max-keys=1")).0 == 200 {
                return server;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!(
            "s3s-fs did not become ready; log:\n{}",
            std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Command-line flags that point s3backer at this server with its credentials.
    pub fn s3backer_flags(&self) -> Vec<String> {
        vec![
            format!("--baseURL=http://127.0.0.1:{}/", self.port),
            format!("--accessId={ACCESS_KEY_ID}"),
            format!("--accessKey={SECRET_KEY}"),
        ]
    }

    /// Keys of every object in `bucket`, in key order.
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        list_keys_at(self.port, bucket)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
