//! A throw-away single-node Garage S3 server on 127.0.0.1 for tests.
//!
//! [`Garage::start`] picks free ports, writes a config into a temporary directory, starts
//! `garage server --single-node --default-bucket` with fixed credentials, and waits until a
//! signed ListObjectsV2 on the bucket answers 200. The server runs with region `us-east-1`
//! because C s3backer 1.5.4 signs for that region when `--region` is not given (its `--region`
//! forces virtual-host addressing, which cannot work on 127.0.0.1). Dropping the handle stops
//! the server and removes its files.
//!
//! The binary is `$GARAGE`, else `garage` on `PATH`, else `~/.cargo/bin/garage`
//! (`scripts/setup.sh --with-s3` installs it). Without it, starting panics: S3 tests must run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key id of every test server.
pub const ACCESS_KEY_ID: &str = "GKs3backertest01";
/// Secret key of every test server.
pub const SECRET_KEY: &str = "s3backer-test-secret-0123456789abcdef";
/// Region the test servers sign for.
pub const REGION: &str = "us-east-1";
/// Bucket created at start-up.
pub const BUCKET: &str = "blocks";

/// A running Garage server; stopped and deleted on drop.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Port of the S3 API on 127.0.0.1.
    pub port: u16,
}

/// Path of the Garage binary, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("garage");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let p = home.join(".cargo/bin/garage");
    p.is_file().then_some(p)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Writes `garage.toml` into `dir` for a node with its data under `dir`, serving S3 on
/// 127.0.0.1:`s3_port` and RPC on `rpc`; returns its path.
pub(crate) fn write_config(dir: &Path, replication_factor: u32, s3_port: u16, rpc: u16, secret: &str) -> PathBuf {
    let cfg = format!(
        "metadata_dir = \"{m}\"\ndata_dir = \"{dd}\"\ndb_engine = \"lmdb\"\nreplication_factor = {replication_factor}\n\
         rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
         [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n",
        m = dir.join("meta").display(),
        dd = dir.join("data").display(),
    );
    let path = dir.join("garage.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl Garage {
    /// Starts a fresh server with bucket [`BUCKET`] and panics if it is not ready in 20 s.
    pub fn start() -> Garage {
        let bin = binary().expect("the Garage S3 server is not installed; run scripts/setup.sh --with-s3");
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new().prefix("s3b-garage-").tempdir_in("/tmp").expect("tempdir");
            let (port, rpc) = (free_port(), free_port());
            let d = dir.path();
            let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + port as usize) % 251)).collect();
            write_config(d, 1, port, rpc, &secret);
            let child = spawn(&bin, d);
            let mut g = Garage { child: Some(child), dir, port };
            if g.wait_ready(Duration::from_secs(20)) {
                return g;
            }
            eprintln!("garage on port {port} did not become ready; log:\n{}", g.log());
            g.stop();
        }
        panic!("could not start Garage");
    }

    /// Base URL of the S3 API, ending in `/` (as `--baseURL` wants).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The server's directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Command-line flags that point s3backer (ours or C 1.5.4) at this server with its credentials.
    pub fn s3backer_flags(&self) -> Vec<String> {
        self.s3backer_flags_at(&self.base_url())
    }

    /// Like [`Garage::s3backer_flags`], with requests sent to `base_url` (a proxy in front).
    pub fn s3backer_flags_at(&self, base_url: &str) -> Vec<String> {
        vec![
            format!("--baseURL={base_url}"),
            format!("--accessId={ACCESS_KEY_ID}"),
            format!("--accessKey={SECRET_KEY}"),
        ]
    }

    /// Runs `curl` signed for this server (`extra` are more curl arguments, `path` is after the
    /// host, e.g. `blocks?list-type=2`); returns (HTTP status, body).
    pub fn curl(&self, extra: &[&str], path: &str) -> (u16, Vec<u8>) {
        self.curl_port(self.port, extra, path)
    }

    /// Like [`Garage::curl`], but connecting to `port` on 127.0.0.1 (e.g. a proxy in front).
    pub fn curl_port(&self, port: u16, extra: &[&str], path: &str) -> (u16, Vec<u8>) {
        signed_curl(port, extra, path)
    }

    /// Keys of every object in `bucket`, in key order (ListObjects v1, following markers).
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        list_keys_at(self.port, bucket)
    }

    /// Creates another bucket owned by the test key.
    pub fn create_bucket(&self, name: &str) {
        let (code, body) = self.curl(&["-X", "PUT"], name);
        assert_eq!(code, 200, "create bucket {name}: {}", String::from_utf8_lossy(&body));
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            if self.curl(&["--max-time", "1"], &format!("{BUCKET}?list-type=2")).0 == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server and starts it again on the same port and data (a server restart).
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(&binary().unwrap(), self.dir.path()));
        assert!(self.wait_ready(Duration::from_secs(20)), "garage did not come back:\n{}", self.log());
    }
}

/// Runs `curl` against 127.0.0.1:`port`, signed with the test credentials (`extra` are more curl
/// arguments, `path` is after the host); returns (HTTP status, body).
pub fn signed_curl(port: u16, extra: &[&str], path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3"), "--user", &format!("{ACCESS_KEY_ID}:{SECRET_KEY}")])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}/{path}"))
        .output()
        .expect("run curl");
    let mut body = out.stdout;
    let pos = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[pos..]).trim().parse().unwrap_or(0);
    body.truncate(pos);
    (code, body)
}

/// Keys of every object in `bucket` of the server on 127.0.0.1:`port`, in key order
/// (ListObjects v1, following markers).
pub fn list_keys_at(port: u16, bucket: &str) -> Vec<String> {
    try_list_keys_at(port, bucket).unwrap_or_else(|(code, body)| panic!("list {bucket}: {code} {body}"))
}

/// [`list_keys_at`], or the status and body of a failed page (s3s-fs answers 500 when an
/// object goes away while it walks the directory).
pub fn try_list_keys_at(port: u16, bucket: &str) -> Result<Vec<String>, (u16, String)> {
    let mut keys: Vec<String> = Vec::new();
    loop {
        // Parameters in sorted order: curl signs the query as written.
        let mut path = format!("{bucket}?");
        if let Some(last) = keys.last() {
            path.push_str("marker=");
            for b in last.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    path.push(b as char);
                } else {
                    path.push_str(&format!("%{b:02X}"));
                }
            }
            path.push('&');
        }
        path.push_str("max-keys=1000");
        let (code, body) = signed_curl(port, &[], &path);
        let text = String::from_utf8_lossy(&body).into_owned();
        if code != 200 {
            return Err((code, text));
        }
        let page = tag_values(&text, "Key");
        let truncated = tag_values(&text, "IsTruncated").first().is_some_and(|t| t == "true");
        let empty = page.is_empty();
        keys.extend(page);
        if !truncated || empty {
            return Ok(keys);
        }
    }
}

/// Starts the server in `dir` (config already written), appending to `dir/server.log`.
fn spawn(bin: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(dir.join("garage.toml"))
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY_ID)
        .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start garage")
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Text of every `<tag>…</tag>` in `xml`, XML entities decoded.
fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}
