//! Monitoring flags: where the Prometheus metrics are served.

use clap::Args;

/// Flags of the metrics endpoint.
#[derive(Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics: 127.0.0.1:PORT, localhost:PORT, an IPv6
    /// loopback address and port, or a Unix socket path.
    #[arg(long = "metricsListen", value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_listen: Option<String>,
    /// Allow --metricsListen on a TCP address other than loopback (the endpoint has no
    /// authentication).
    #[arg(long = "metricsAllowRemote", help_heading = "Monitoring")]
    pub metrics_allow_remote: bool,
}
