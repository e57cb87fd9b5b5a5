//! The skeleton the test HTTP servers share ([`crate::fault_proxy`], [`crate::hostile`],
//! [`crate::public_http`]): a listener on 127.0.0.1 whose connections are each served on a
//! thread of their own, until the listener is dropped.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A running listener; stops accepting on drop.
pub struct Listener {
    /// Port clients connect to on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Listens on a free port of 127.0.0.1 and runs `serve` on a new thread for each connection.
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let serve = serve.clone();
                std::thread::spawn(move || serve(conn));
            }
        });
        Listener { port, stop }
    }

    /// Base URL, ending in `/`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
