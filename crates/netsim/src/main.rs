//! `s3b-netsim LISTEN_PORT TARGET_PORT DELAY_MS`: proxy 127.0.0.1:LISTEN_PORT to
//! 127.0.0.1:TARGET_PORT, adding DELAY_MS each way. Loopback only, by construction.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let [l, t, d] = args.as_slice() else { return None };
        Some((l.parse::<u16>().ok()?, t.parse::<u16>().ok()?, d.parse::<u64>().ok()?))
    })();
    let Some((listen, target, delay)) = parsed else {
        eprintln!("usage: s3b-netsim LISTEN_PORT TARGET_PORT DELAY_MS   (127.0.0.1 only)");
        std::process::exit(2);
    };
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, listen)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("s3b-netsim: can't listen on 127.0.0.1:{listen}: {e}");
            std::process::exit(1);
        }
    };
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, target));
    if let Err(e) = s3b_netsim::serve(listener, target, Duration::from_millis(delay)).await {
        eprintln!("s3b-netsim: {e}");
        std::process::exit(1);
    }
}
