//! NBD test helpers shared by the NBD end-to-end tests: our server in the foreground on a
//! Unix socket or TCP (stopped with SIGTERM on drop), client commands, random images.
#![allow(dead_code)]

use super::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `s3backer --nbd -f` on a Unix socket (or TCP). Dropping it sends SIGTERM and waits.
pub struct NbdServer {
    child: Option<Child>,
    pub sock: PathBuf,
    stderr_path: PathBuf,
    tcp: Option<String>,
}

/// Libnbd URI of a Unix socket.
pub fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

impl NbdServer {
    /// Starts `s3backer --nbd -f --nbdListen=SOCK ARGS` and waits until the socket answers.
    pub fn start(args: &[String], sock: &Path) -> NbdServer {
        let mut a = vec!["--nbd".to_string(), "-f".to_string(), format!("--nbdListen={}", sock.display())];
        a.extend(args.iter().cloned());
        Self::spawn(a, sock.to_path_buf(), None)
    }

    pub fn spawn(a: Vec<String>, sock: PathBuf, tcp: Option<String>) -> NbdServer {
        let stderr_path = sock.with_extension(format!("stderr.{}", rand::random::<u32>()));
        let errf = std::fs::File::create(&stderr_path).unwrap();
        let child =
            Command::new(bin()).args(&a).stdin(Stdio::null()).stdout(Stdio::null()).stderr(errf).spawn().unwrap();
        let mut s = NbdServer { child: Some(child), sock, stderr_path, tcp };
        let uri = s.uri();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("s3backer exited with {st} before serving: {}", s.stderr());
            }
            let up =
                Command::new("nbdinfo").arg("--size").arg(&uri).stdout(Stdio::null()).stderr(Stdio::null()).status();
            if up.unwrap().success() {
                break;
            }
            assert!(std::time::Instant::now() < end, "timed out waiting for the NBD server to answer: {}", s.stderr());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        s
    }

    /// The URI to reach it; `tcp` empty means "only probe with a TLS URI" (see `spawn`).
    pub fn uri(&self) -> String {
        match self.tcp.as_deref() {
            Some("") => format!("nbds+unix:///?socket={}&tls-verify-peer=false", self.sock.display()),
            Some(a) => format!("nbd://{a}/"),
            None => unix_uri(&self.sock),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, then waits; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.finish()
    }

    fn finish(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else { return 0 };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut code = None;
        for _ in 0..3000 {
            if let Some(st) = child.try_wait().unwrap() {
                code = Some(st.code().unwrap_or(-1));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(code) = code else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("s3backer did not exit after SIGTERM: {}", self.stderr());
        };
        let _ = std::fs::remove_file(&self.stderr_path);
        code
    }

    /// SIGKILL (a crash).
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.finish();
        }
    }
}

/// A random image of `len` bytes with some all-zero 64 KiB stretches, written to `path`.
pub fn random_image(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = random_bytes(seed, len);
    for (i, chunk) in data.chunks_mut(64 * 1024).enumerate() {
        if i % 5 == 2 {
            chunk.fill(0);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}
