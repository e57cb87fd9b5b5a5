//! A throw-away 3-node Garage cluster on 127.0.0.1: three processes with their own ports and
//! data directories, one layout (one zone per node), replication factor 3, so every object is
//! on every node and a request needs two nodes of three (Garage's quorum).
//!
//! [`GarageCluster::start`] writes three configurations sharing one RPC secret, starts the
//! nodes, connects them, assigns and applies the layout, imports the test key
//! ([`crate::garage::ACCESS_KEY_ID`]) and creates the bucket [`crate::garage::BUCKET`] through the
//! `garage` command line, then waits until a signed LIST through node 0 answers 200. Clients
//! talk S3 to node 0 ([`GarageCluster::port`]); tests kill the others ([`GarageCluster::kill`],
//! SIGKILL: a crash) and start them again ([`GarageCluster::restart`], same data). Dropping the
//! handle stops every node and removes their files.

use crate::garage::{ACCESS_KEY_ID, BUCKET, SECRET_KEY, binary, free_port, list_keys_at, signed_curl, write_config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Number of nodes.
pub const NODES: usize = 3;

struct Node {
    child: Option<Child>,
    config: PathBuf,
    s3_port: u16,
}

/// A running cluster; every node stopped and deleted on drop.
pub struct GarageCluster {
    nodes: Vec<Node>,
    /// Node ids (`hex@127.0.0.1:port`), in node order.
    ids: Vec<String>,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl GarageCluster {
    /// Starts three fresh nodes as one cluster with the bucket [`BUCKET`]; panics if it is not
    /// serving within 60 s.
    pub fn start() -> GarageCluster {
        let bin = binary().expect("the Garage S3 server is not installed; run scripts/setup.sh --with-s3");
        let dir = tempfile::Builder::new().prefix("s3b-garage3-").tempdir_in("/tmp").expect("tempdir");
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 53 + std::process::id() as usize) % 251)).collect();
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let d = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let (s3_port, rpc) = (free_port(), free_port());
            let config = write_config(&d, 3, s3_port, rpc, &secret);
            nodes.push(Node { child: None, config, s3_port });
        }
        let mut c = GarageCluster { nodes, ids: Vec::new(), dir, bin };
        for i in 0..NODES {
            c.spawn(i);
        }
        let ids: Vec<String> = (0..NODES).map(|i| c.node_id(i)).collect();
        assert!(ids.iter().all(|id| id.contains('@')), "unexpected node ids {ids:?}");
        for id in &ids[1..] {
            c.cli_ok(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            c.cli_ok(0, &["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", short]);
        }
        c.cli_ok(0, &["layout", "apply", "--version", "1"]);
        c.ids = ids;
        c.cli_ok(0, &["key", "import", "--yes", ACCESS_KEY_ID, SECRET_KEY, "-n", "test"]);
        c.cli_ok(0, &["bucket", "create", BUCKET]);
        c.cli_ok(0, &["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", ACCESS_KEY_ID]);
        let end = Instant::now() + Duration::from_secs(60);
        while signed_curl(c.port(), &["--max-time", "2"], &format!("{BUCKET}?list-type=2")).0 != 200 {
            assert!(Instant::now() < end, "the cluster does not serve S3; logs:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Port of node 0's S3 API, the one clients use.
    pub fn port(&self) -> u16 {
        self.nodes[0].s3_port
    }

    /// Port of node `i`'s S3 API.
    pub fn node_port(&self, i: usize) -> u16 {
        self.nodes[i].s3_port
    }

    /// Command-line flags that point s3backer at node 0 with the test credentials.
    pub fn s3backer_flags(&self) -> Vec<String> {
        vec![
            format!("--baseURL=http://127.0.0.1:{}/", self.port()),
            format!("--accessId={ACCESS_KEY_ID}"),
            format!("--accessKey={SECRET_KEY}"),
        ]
    }

    /// Keys of every object in `bucket`, in key order (through node 0).
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        list_keys_at(self.port(), bucket)
    }

    /// Kills node `i` with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Starts node `i` again on its data and waits until it is connected to the cluster and
    /// the cluster serves S3 through node 0.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        // Ask for the connection at once rather than waiting for the peers' reconnection backoff.
        let other = if i == 0 { 1 } else { 0 };
        if self.nodes[other].child.is_some() {
            self.cli_ok(other, &["node", "connect", &self.ids[i]]);
        }
        let short: String = self.ids[i].chars().take(16).collect();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(0, &["status"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let healthy = text.split("FAILED NODES").next().unwrap_or("");
            if out.status.success()
                && healthy.contains(&short)
                && signed_curl(self.port(), &["--max-time", "2"], &format!("{BUCKET}?list-type=2")).0 == 200
            {
                return;
            }
            assert!(Instant::now() < end, "node {i} did not rejoin:\n{text}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log.
    pub fn logs(&self) -> String {
        (0..NODES)
            .map(|i| {
                format!(
                    "--- node {i}\n{}",
                    std::fs::read_to_string(self.node_dir(i).join("server.log")).unwrap_or_default()
                )
            })
            .collect()
    }

    fn node_dir(&self, i: usize) -> &Path {
        self.nodes[i].config.parent().unwrap()
    }

    fn spawn(&mut self, i: usize) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.node_dir(i).join("server.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.nodes[i].child = Some(child);
    }

    /// `garage -c <node i's config> args…`.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .expect("run garage")
    }

    /// Runs a command on node `i`, retrying for up to 30 s while the node is starting.
    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(i, args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < end,
                "garage {args:?} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `id@127.0.0.1:port` of node `i`, once it answers.
    fn node_id(&self, i: usize) -> String {
        self.cli_ok(i, &["node", "id", "-q"]).trim().to_string()
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = &self.dir;
    }
}
