//! Prometheus metrics (`--metricsListen=ADDR`): `GET /metrics` in the Prometheus text format
//! (0.0.4), encoded by the `prometheus-client` crate.
//!
//! What is served:
//! - every line of the stats file, read from the same registry at each scrape, so the two
//!   always agree: counts as counters (`s3backer_http_gets_total`), block counts and ratios as
//!   gauges, average times as gauges and accumulated times as counters in seconds;
//! - the block cache's write-back, read from the cache itself at each scrape:
//!   `s3backer_block_cache_dirty_blocks` (written, not yet in S3),
//!   `s3backer_block_cache_uploads_in_flight` (uploads under way) and
//!   `s3backer_block_cache_upload_backlog_blocks` (dirty blocks no upload has started on);
//! - histograms of S3 attempts by method and outcome (`s3backer_s3_request_duration_seconds`),
//!   retries by cause, bytes up and down, and the front end's requests by operation and outcome
//!   (`s3backer_request_duration_seconds{frontend="fuse"|"nbd"}`).
//!
//! The endpoint is a loopback TCP address or a Unix socket; any other address needs
//! `--metricsAllowRemote`, as NBD's does, since it has no authentication. It is bound before
//! the daemon forks (a taken port is a one-line error on the terminal) and served from a thread
//! of its own once the volume is offered, so a slow scraper never holds up the volume's
//! runtime. The transport and the volume report to it through their observer hooks
//! ([`s3b_http::observe`], [`s3b_volume::observe`]).

use crate::config::metrics::MetricsAddr;
use anyhow::{Context, Result, anyhow};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use s3b_cache::{CacheStats, Fill};
use s3b_store::{StatsRegistry, StatsValue};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// `N` labels, each a fixed name and a fixed word.
type Labels<const N: usize> = [(&'static str, &'static str); N];
/// Histograms by `N` labels.
type HistogramFamily<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

/// The metrics recorded as things happen (the stats-file lines are read at each scrape).
struct Recorded {
    s3_duration: HistogramFamily<2>,
    s3_retries: Family<Labels<1>, Counter>,
    s3_bytes: Family<Labels<1>, Counter>,
    requests: HistogramFamily<3>,
}

/// Buckets of S3 attempts: 1 ms (a local server's fastest answer) doubling 16 times, to
/// about 33 s (past the default 30 s request timeout).
const S3_BUCKETS: (f64, u16) = (0.001, 16);
/// Buckets of front-end requests: 50 µs (a cache hit) doubling 17 times, to about 3.3 s (a
/// write that waits for room while uploads are slow).
const REQUEST_BUCKETS: (f64, u16) = (0.000_05, 17);
/// A failed accept (out of descriptors and the like) is retried after this pause, so the
/// loop does not spin while the process has none to give.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A scraper must send its request head within this time, or its connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn s3_histogram() -> Histogram {
    Histogram::new(exponential_buckets(S3_BUCKETS.0, 2.0, S3_BUCKETS.1))
}

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(REQUEST_BUCKETS.0, 2.0, REQUEST_BUCKETS.1))
}

/// The process's metrics state, set up by [`prepare`].
struct State {
    recorded: Arc<Recorded>,
    listener: Mutex<Option<Listener>>,
}

/// The block cache's counters (none without a block cache), for its write-back gauges.
static CACHE: Mutex<Option<Arc<CacheStats>>> = Mutex::new(None);

static STATE: OnceLock<State> = OnceLock::new();

enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds the metrics endpoint of `cfg`, if it has one, before the process forks: a taken port
/// or a bad socket path is an error on the terminal.
pub fn prepare(cfg: &crate::config::Config) -> Result<()> {
    let Some(addr) = &cfg.metrics else { return Ok(()) };
    let listener = match addr {
        MetricsAddr::Tcp(a) => {
            Listener::Tcp(std::net::TcpListener::bind(a).with_context(|| format!("can't listen on {a} for metrics"))?)
        }
        MetricsAddr::Unix(p) => {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
            let l = std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("can't listen on {} for metrics", p.display()))?;
            Listener::Unix(l)
        }
    };
    let recorded = Arc::new(Recorded {
        s3_duration: Family::new_with_constructor(s3_histogram),
        s3_retries: Family::default(),
        s3_bytes: Family::default(),
        requests: Family::new_with_constructor(request_histogram),
    });
    STATE
        .set(State { recorded, listener: Mutex::new(Some(listener)) })
        .map_err(|_| anyhow!("the metrics endpoint is already set up"))?;
    if !cfg.quiet {
        log::info!("serving metrics at /metrics on {addr}");
    }
    Ok(())
}

/// Records the S3 transport's attempts and retries (when metrics are served).
pub fn observe_http(store: &s3b_http::S3Store) {
    if let Some(st) = STATE.get() {
        store.observe(st.recorded.clone());
    }
}

/// Records the front end's requests (`frontend`: `fuse` or `nbd`) when metrics are served.
pub fn observe_volume(volume: &s3b_volume::Volume, frontend: &'static str) {
    if let Some(st) = STATE.get() {
        volume.observe(Arc::new(FrontEnd { recorded: st.recorded.clone(), frontend }));
    }
}

/// Notes the block cache (for its write-back gauges and [`dirty_blocks`]).
pub fn observe_cache(stats: Arc<CacheStats>) {
    *CACHE.lock() = Some(stats);
}

/// How full the block cache is now; `None` without a block cache.
fn cache_fill() -> Option<Fill> {
    CACHE.lock().as_ref().and_then(|c| c.fill())
}

/// The dirty blocks of the block cache (written, not yet in the store); `None` without a
/// block cache.
pub fn dirty_blocks() -> Option<u64> {
    cache_fill().map(|f| f.dirty)
}

impl s3b_http::observe::RequestObserver for Recorded {
    fn attempt(&self, a: &s3b_http::observe::Attempt<'_>) {
        let method = match a.method {
            "GET" => "GET",
            "PUT" => "PUT",
            "HEAD" => "HEAD",
            "DELETE" => "DELETE",
            "POST" => "POST",
            _ => "other",
        };
        self.s3_duration.get_or_create(&[("method", method), ("outcome", a.outcome)]).observe(a.elapsed.as_secs_f64());
        self.s3_bytes.get_or_create(&[("direction", "up")]).inc_by(a.sent);
        self.s3_bytes.get_or_create(&[("direction", "down")]).inc_by(a.received);
    }

    fn retry(&self, cause: &'static str) {
        self.s3_retries.get_or_create(&[("cause", cause)]).inc();
    }
}

struct FrontEnd {
    recorded: Arc<Recorded>,
    frontend: &'static str,
}

impl s3b_volume::VolumeObserver for FrontEnd {
    fn request(&self, op: s3b_volume::Op, elapsed: Duration, ok: bool) {
        let labels = [("frontend", self.frontend), ("op", op.as_str()), ("outcome", if ok { "ok" } else { "error" })];
        self.recorded.requests.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

/// The stats file's lines, read at each scrape.
struct StatsLines {
    stats: Arc<StatsRegistry>,
}

impl std::fmt::Debug for StatsLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsLines")
    }
}

impl Collector for StatsLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        for (name, value) in self.stats.entries() {
            let help = format!("The stats file's {name} line");
            match value {
                StatsValue::Count(v) => {
                    let c = ConstCounter::new(v);
                    c.encode(encoder.encode_descriptor(&name, &help, None, c.metric_type())?)?;
                }
                StatsValue::Blocks(v) => {
                    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                    let unit = Unit::Other("blocks".into());
                    g.encode(encoder.encode_descriptor(&name, &help, Some(&unit), g.metric_type())?)?;
                }
                StatsValue::Ratio(v) => {
                    let g = ConstGauge::new(v);
                    g.encode(encoder.encode_descriptor(&name, &help, None, g.metric_type())?)?;
                }
                // Averages go up and down; the other times only add up.
                StatsValue::Seconds(v) if name.contains("_avg_") => {
                    let g = ConstGauge::new(v);
                    g.encode(encoder.encode_descriptor(&name, &help, Some(&Unit::Seconds), g.metric_type())?)?;
                }
                StatsValue::Seconds(v) => {
                    let c = ConstCounter::new(v);
                    c.encode(encoder.encode_descriptor(&name, &help, Some(&Unit::Seconds), c.metric_type())?)?;
                }
            }
        }
        if let Some(f) = cache_fill() {
            let blocks = Unit::Other("blocks".into());
            let gauges = [
                (
                    "block_cache_dirty",
                    "Dirty blocks in the block cache: written, not yet in S3",
                    Some(&blocks),
                    f.dirty,
                ),
                ("block_cache_uploads_in_flight", "Uploads of dirty blocks under way", None, f.uploading),
                (
                    "block_cache_upload_backlog",
                    "Dirty blocks no upload has started on yet",
                    Some(&blocks),
                    f.dirty.saturating_sub(f.uploading),
                ),
            ];
            for (name, help, unit, v) in gauges {
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// The whole scrape for `stats`.
fn registry(recorded: &Recorded, stats: Arc<StatsRegistry>) -> Registry {
    let mut r = Registry::with_prefix("s3backer");
    r.register_with_unit(
        "s3_request_duration",
        "S3 request attempts by method and outcome",
        Unit::Seconds,
        recorded.s3_duration.clone(),
    );
    r.register("s3_retries", "S3 attempts retried, by the cause of the failure", recorded.s3_retries.clone());
    r.register_with_unit(
        "s3_transferred",
        "Body bytes sent to (up) and received from (down) S3",
        Unit::Bytes,
        recorded.s3_bytes.clone(),
    );
    r.register_with_unit(
        "request_duration",
        "Front-end requests (FUSE or NBD) by operation and outcome",
        Unit::Seconds,
        recorded.requests.clone(),
    );
    r.register_collector(Box::new(StatsLines { stats }));
    r
}

/// Renders the scrape: the Prometheus text format.
fn render(recorded: &Recorded, stats: &Arc<StatsRegistry>) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry(recorded, stats.clone())) {
        log::warn!("encoding the metrics failed: {e}");
    }
    out
}

/// Starts serving the endpoint bound by [`prepare`] (if any) on a thread of its own.
pub fn start(stats: Arc<StatsRegistry>) {
    let Some(st) = STATE.get() else { return };
    let Some(listener) = st.listener.lock().take() else { return };
    let recorded = st.recorded.clone();
    let spawned = std::thread::Builder::new().name("s3backer-metrics".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return log::error!("metrics: can't start the runtime: {e}"),
        };
        rt.block_on(serve(listener, recorded, stats));
    });
    if let Err(e) = spawned {
        log::error!("metrics: can't start the thread: {e}");
    }
}

async fn serve(listener: Listener, recorded: Arc<Recorded>, stats: Arc<StatsRegistry>) {
    enum L {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let l = match listener {
        Listener::Tcp(l) => l.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(l)).map(L::Tcp),
        Listener::Unix(l) => l.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(l)).map(L::Unix),
    };
    let l = match l {
        Ok(l) => l,
        Err(e) => return log::error!("metrics: {}", crate::io_msg(&e)),
    };
    loop {
        let accepted = match &l {
            L::Tcp(t) => t.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Conn>),
            L::Unix(u) => u.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Conn>),
        };
        match accepted {
            Ok(conn) => {
                let (recorded, stats) = (recorded.clone(), stats.clone());
                tokio::spawn(answer(conn, recorded, stats));
            }
            Err(e) => {
                log::warn!("metrics: accept: {}", crate::io_msg(&e));
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// Serves one connection over HTTP/1.1 (hyper): `GET /metrics`, 404 for any other path.
async fn answer(conn: Box<dyn Conn>, recorded: Arc<Recorded>, stats: Arc<StatsRegistry>) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, header};
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (recorded, stats) = (recorded.clone(), stats.clone());
        async move {
            if req.uri().path() == "/metrics" {
                Response::builder()
                    .header(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
                    .body(Full::new(Bytes::from(render(&recorded, &stats))))
            } else {
                Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from_static(b"see /metrics\n")))
            }
        }
    });
    let io = hyper_util::rt::TokioIo::new(conn);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        log::debug!("metrics: connection: {e}");
    }
}
