//! The HTTP client under the S3 transport: hyper over rustls, with our own TCP connector.
//!
//! We open the sockets ourselves (rather than through a higher-level client) because upstream's
//! `--ipTOS` sets the IP type-of-service byte on every connection, which needs the socket before
//! it connects. The connector also sets TCP_NODELAY and keep-alive and bounds the connect time.
//! TLS: the system's root certificates, plus `--cacert` ones; `--insecure` turns verification
//! off. HTTP/2 is offered by ALPN unless `--http11`.

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// How to build the client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Limit for a whole request, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Limit for opening a connection.
    pub connect_timeout: Duration,
    /// How connections are made.
    pub connection: ConnectionOptions,
}

/// How connections are made: HTTP version, certificate checks, IP type of service.
#[derive(Clone, Debug, Default)]
pub struct ConnectionOptions {
    /// HTTP/1.1 only (no HTTP/2 by ALPN).
    pub http11: bool,
    /// Do not verify the server's certificate.
    pub insecure: bool,
    /// Extra trusted root certificates (a PEM file).
    pub cacert: Option<PathBuf>,
    /// IP type-of-service byte for every connection (IPv4 TOS, IPv6 traffic class).
    pub ip_tos: Option<u8>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, read to its end.
    pub body: Bytes,
}

/// Why an exchange did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The request could not be built (a header value the HTTP library refuses).
    #[error("{url}: bad request")]
    BadRequest {
        /// The request's URL.
        url: String,
        /// The HTTP library's objection.
        #[source]
        source: http::Error,
    },
    /// The request ran past its time limit.
    #[error("{url}: no complete answer within {limit_ms} ms")]
    Timeout {
        /// The request's URL.
        url: String,
        /// The limit.
        limit_ms: u128,
    },
    /// No connection could be opened.
    #[error("{url}")]
    Connect {
        /// The request's URL.
        url: String,
        /// Why (resolution, refusal, timeout; see [`ConnectError`]).
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The exchange broke off (reset connection, TLS failure, malformed answer).
    #[error("{url}")]
    Exchange {
        /// The request's URL.
        url: String,
        /// The HTTP library's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body could not be read to its end.
    #[error("{url}: reading the answer")]
    Body {
        /// The request's URL.
        url: String,
        /// The HTTP library's error.
        #[source]
        source: hyper::Error,
    },
    /// The answer's body is longer than any answer to the request can be.
    #[error(
        "{url}: HTTP {status} answer body {size} bytes, more than the {limit} bytes any answer to this request can have"
    )]
    TooLarge {
        /// The request's URL.
        url: String,
        /// The answer's status.
        status: u16,
        /// The announced size, or `over N` when it was streamed.
        size: String,
        /// The limit.
        limit: usize,
    },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the protocol versions.
    #[error("can't set up TLS")]
    Tls(#[source] rustls::Error),
    /// The `--cacert` file could not be read.
    #[error("can't read {}", path.display())]
    ReadCaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `--cacert` file is not PEM.
    #[error("{}: not a PEM certificate file", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate in the `--cacert` file is unusable.
    #[error("{}: unusable certificate", path.display())]
    BadCert {
        /// The file.
        path: PathBuf,
        /// rustls's objection.
        #[source]
        source: rustls::Error,
    },
    /// The `--cacert` file holds no certificate.
    #[error("{}: no certificates found", path.display())]
    NoCerts {
        /// The file.
        path: PathBuf,
    },
}

/// Why a TCP connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL has no host.
    #[error("URL without a host")]
    NoHost,
    /// The host name could not be resolved.
    #[error("can't resolve \"{host}\"")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The host name resolved to nothing.
    #[error("\"{0}\" has no address")]
    NoAddress(String),
    /// Connecting to the last address tried failed.
    #[error("connect to {addr}")]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the last address tried took too long.
    #[error("connect to {0}: timed out")]
    TimedOut(SocketAddr),
}

impl ConnectError {
    /// True when `e`, or one of its causes, is a host name that does not resolve.
    pub fn is_unknown_host(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(ConnectError::Resolve { .. } | ConnectError::NoAddress(_)) = c.downcast_ref::<ConnectError>() {
                return true;
            }
            cause = c.source();
        }
        false
    }
}

/// How long a pooled connection may sit idle before it is closed: below the 60 s idle timeout
/// common in front of S3 servers (load balancers), so the pool drops a connection before the
/// server does and a request never goes out on one the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle time before TCP keepalive probes start, as C s3backer sets it (200 s): a connection
/// whose server vanished without a word is found dead while it waits in the pool.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(200);

/// An HTTP(S) client with a connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<TcpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("timeout", &self.timeout).finish()
    }
}

impl HttpClient {
    /// Builds the client; errors name the problem (unreadable or empty `--cacert`, …).
    pub fn new(opts: &ClientOptions) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?;
        let tls = if opts.connection.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(root_store(opts.connection.cacert.as_deref())?).with_no_client_auth()
        };
        let tcp = TcpConnector { connect_timeout: opts.connect_timeout, ip_tos: opts.connection.ip_tos };
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let https = if opts.connection.http11 {
            https.enable_http1().wrap_connector(tcp)
        } else {
            https.enable_http1().enable_http2().wrap_connector(tcp)
        };
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(https);
        Ok(HttpClient { inner, timeout: opts.timeout })
    }

    /// Sends one request and reads the whole answer, within the time limit, refusing a
    /// successful answer's body over [`SMALL_ANSWER_LIMIT`] (see [`HttpClient::send_limited`]).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response, TransportError> {
        self.send_limited(method, url, headers, body, SMALL_ANSWER_LIMIT).await
    }

    /// Sends one request and reads the whole answer, within the time limit. The body of a
    /// successful (2xx) answer may be at most `max_body` bytes: a longer one, announced or
    /// streamed, is [`TransportError::TooLarge`] as soon as it is known, and the connection is
    /// dropped. Error answers keep at most [`ERROR_BODY_LIMIT`] bytes (enough for the S3 error
    /// document) and the rest is not read. Headers are bounded by hyper (at most 100 of them,
    /// about 400 KiB in all), and the whole exchange by the client's timeout, so a server that
    /// sends forever, or trickles, costs bounded memory and time.
    pub async fn send_limited(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        max_body: usize,
    ) -> Result<Response, TransportError> {
        // A HEAD answer's Content-Length is the object's size; it has no body.
        let is_head = method == Method::HEAD;
        let mut rb = Request::builder().method(method).uri(url);
        for (n, v) in headers {
            rb = rb.header(n.as_str(), v.as_str());
        }
        let req = rb.body(Full::new(body)).map_err(|source| TransportError::BadRequest { url: url.into(), source })?;
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(|source| {
                let url = url.to_string();
                if source.is_connect() {
                    TransportError::Connect { url, source }
                } else {
                    TransportError::Exchange { url, source }
                }
            })?;
            let (parts, mut body) = resp.into_parts();
            let success = parts.status.is_success();
            let limit = if success { max_body } else { max_body.min(ERROR_BODY_LIMIT) };
            let too_large = |size: String| TransportError::TooLarge {
                url: url.to_string(),
                status: parts.status.as_u16(),
                size,
                limit,
            };
            // Gathered into one buffer sized from Content-Length (bounded by the limit, in case
            // the server lies), so a block is copied once rather than through a growing buffer.
            let expected = if is_head {
                0
            } else {
                parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if success && expected > limit as u64 {
                return Err(too_large(expected.to_string()));
            }
            let mut buf = bytes::BytesMut::with_capacity(usize::try_from(expected).unwrap_or(usize::MAX).min(limit));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|source| TransportError::Body { url: url.to_string(), source })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        if success {
                            return Err(too_large(format!("over {}", buf.len() + data.len())));
                        }
                        // An error answer: keep its start, which names the error; drop the rest.
                        buf.extend_from_slice(&data[..limit - buf.len()]);
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body: buf.freeze() })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { url: url.to_string(), limit_ms: self.timeout.as_millis() }),
        }
    }
}

/// Body limit of [`HttpClient::send`]: answers that carry no data (PUT, DELETE, HEAD, the
/// instance metadata service's small documents).
pub const SMALL_ANSWER_LIMIT: usize = 64 << 10;
/// Most bytes kept of an error answer's body.
pub const ERROR_BODY_LIMIT: usize = 64 << 10;

/// The system's trusted roots plus those in `cacert`.
fn root_store(cacert: Option<&std::path::Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls can't parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = cacert {
        let path = path.to_path_buf();
        let pem = std::fs::read(&path).map_err(|source| ClientError::ReadCaCert { path: path.clone(), source })?;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|source| ClientError::NotPem { path: path.clone(), source })?;
            roots.add(cert).map_err(|source| ClientError::BadCert { path: path.clone(), source })?;
            found += 1;
        }
        if found == 0 {
            return Err(ClientError::NoCerts { path });
        }
    }
    Ok(roots)
}

/// `--insecure`: accepts any server certificate (signatures are still checked for form).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

/// The handshake signature's form, as the verifier trait spells it.
type Dss = DigitallySignedStruct;
/// The verdict on a handshake signature.
type Signature = Result<HandshakeSignatureValid, rustls::Error>;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, msg: &[u8], cert: &CertificateDer<'_>, dss: &Dss) -> Signature {
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, msg: &[u8], cert: &CertificateDer<'_>, dss: &Dss) -> Signature {
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens TCP connections: resolves the host, then tries its addresses in order, each socket
/// set up (TOS, no delay, keep-alive) before it connects.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    connect_timeout: Duration,
    ip_tos: Option<u8>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?.trim_matches(|c| c == '[' || c == ']').to_string();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|source| ConnectError::Resolve { host: host.clone(), source })?
                .collect();
            let mut last = ConnectError::NoAddress(host);
            for addr in addrs {
                match tokio::time::timeout(me.connect_timeout, me.connect(addr)).await {
                    Ok(Ok(s)) => return Ok(TokioIo::new(s)),
                    Ok(Err(source)) => last = ConnectError::Refused { addr, source },
                    Err(_) => last = ConnectError::TimedOut(addr),
                }
            }
            Err(last.into())
        })
    }
}

impl TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE))?;
        if let Some(tos) = self.ip_tos {
            if addr.is_ipv4() {
                sock.set_tos_v4(u32::from(tos))?;
            } else {
                sock.set_tclass_v6(u32::from(tos))?;
            }
        }
        let std_stream: std::net::TcpStream = sock.into();
        tokio::net::TcpSocket::from_std_stream(std_stream).connect(addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot server on 127.0.0.1 that reads a request head and answers with `answer`
    /// (head and body as given), then, if `endless`, zeros until the client hangs up.
    fn server(answer: Vec<u8>, endless: Option<Vec<u8>>) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if c.write_all(&answer).is_err() {
                return;
            }
            if let Some(more) = endless {
                while c.write_all(&more).is_ok() {}
            }
        });
        port
    }

    fn client() -> HttpClient {
        HttpClient::new(&ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connection: ConnectionOptions { http11: true, ..Default::default() },
        })
        .unwrap()
    }

    async fn get(port: u16, limit: usize) -> Result<Response, TransportError> {
        client().send_limited(Method::GET, &format!("http://127.0.0.1:{port}/b/k"), &[], Bytes::new(), limit).await
    }

    #[tokio::test]
    async fn bodies_up_to_the_limit_pass() {
        let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        a.extend(std::iter::repeat_n(7u8, 1000));
        let r = get(server(a, None), 1000).await.unwrap();
        assert_eq!(r.body.len(), 1000);
    }

    /// A HEAD answer announces the object's size and has no body: never "too large".
    #[tokio::test]
    async fn a_head_answer_announcing_a_large_object_passes() {
        let a =
            b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nx-amz-meta-s3backer-blocksize: 1048576\r\n\r\n".to_vec();
        let port = server(a, None);
        let r = client()
            .send_limited(Method::HEAD, &format!("http://127.0.0.1:{port}/b/k"), &[], Bytes::new(), 1000)
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(r.headers.get("x-amz-meta-s3backer-blocksize").unwrap(), "1048576");
    }

    #[tokio::test]
    async fn an_announced_body_over_the_limit_is_refused_before_reading_it() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n".to_vec();
        let e = get(server(a, Some(vec![0u8; 65536])), 1 << 20).await.unwrap_err();
        assert!(matches!(e, TransportError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_refused_at_the_limit() {
        let a = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(vec![0u8; 0x10000]);
        chunk.extend_from_slice(b"\r\n");
        let e = get(server(a, Some(chunk)), 1 << 20).await.unwrap_err();
        assert!(matches!(e, TransportError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_header_flood_is_an_error() {
        let flood = format!("x-flood: {}\r\n", "a".repeat(1000)).into_bytes();
        let e = get(server(b"HTTP/1.1 200 OK\r\n".to_vec(), Some(flood)), 1 << 20).await.unwrap_err();
        assert!(matches!(e, TransportError::Exchange { .. } | TransportError::Body { .. }), "{e}");
    }

    #[tokio::test]
    async fn an_error_answer_keeps_only_the_start_of_its_body() {
        let mut a = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 1073741824\r\n\r\n<Error><Code>SlowDown</Code></Error>"
            .to_vec();
        a.extend(vec![b' '; 1000]);
        let r = get(server(a, Some(vec![b' '; 65536])), 1 << 30).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body.len(), ERROR_BODY_LIMIT);
        assert!(r.body.starts_with(b"<Error><Code>SlowDown"));
    }

    #[tokio::test]
    async fn a_trickled_answer_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(100));
                if c.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let c = HttpClient::new(&ClientOptions {
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            connection: ConnectionOptions { http11: true, ..Default::default() },
        })
        .unwrap();
        let e = c
            .send_limited(Method::GET, &format!("http://127.0.0.1:{port}/b/k"), &[], Bytes::new(), 1000)
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    }
}
