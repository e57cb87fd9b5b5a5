//! A latency-adding TCP proxy, for benchmarks and tests against a local S3 server.
//!
//! The kernel on our machines has no `netem`, so a round trip to a server on 127.0.0.1 costs
//! microseconds where a real S3 request costs tens of milliseconds. This proxy listens on
//! 127.0.0.1, forwards each connection to a target, and holds every chunk of bytes for `delay`
//! before passing it on, in both directions — so a request/response pays twice the delay.
//! Chunks are timestamped on arrival and released in order when their time comes, so the link
//! is delayed but not throttled: throughput stays close to the direct connection.
//!
//! It only ever binds and connects to addresses it is given; the binary refuses anything but
//! loopback.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Forwards `from` to `to`, delaying each chunk by `delay`.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Serves connections on `listener`, forwarding each to `target` with `delay` each way.
pub async fn serve(listener: TcpListener, target: SocketAddr, delay: Duration) -> std::io::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pump(cr, sw, delay), pump(sr, cw, delay));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adds_delay_both_ways_and_keeps_bytes() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(serve(proxy, echo_addr, Duration::from_millis(30)));
        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        let t0 = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(t0.elapsed() >= Duration::from_millis(60), "round trip pays the delay twice");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        c.write_all(&big).await.unwrap();
        let mut back = vec![0u8; big.len()];
        c.read_exact(&mut back).await.unwrap();
        assert!(back == big);
    }
}
