//! Metrics settings: `--metricsListen` (a loopback address or a Unix socket; other addresses
//! only with `--metricsAllowRemote`, since the endpoint has no authentication), checked with
//! the other flags. Serving them is [`crate::metrics`]'s job.

use super::Mode;
use super::listen::ListenFlag;
use anyhow::{Result, bail};

/// Where the metrics are served.
pub type MetricsAddr = super::listen::ListenAddr;

/// `--metricsListen` for [`parse_listen`].
const METRICS_LISTEN: ListenFlag = ListenFlag {
    name: "--metricsListen",
    allow_remote: "--metricsAllowRemote",
    exposure: "the metrics endpoint has no authentication",
};

/// Checks `--metricsListen` and `--metricsAllowRemote` (only serving modes serve metrics).
pub fn settings(a: &crate::args::metrics::MetricsArgs, mode: Mode) -> Result<Option<MetricsAddr>> {
    let Some(listen) = a.metrics_listen.as_deref() else {
        if a.metrics_allow_remote {
            bail!("--metricsAllowRemote requires --metricsListen");
        }
        return Ok(None);
    };
    if !matches!(mode, Mode::Mount | Mode::Nbd) {
        bail!("--metricsListen only applies to a mount or an NBD server");
    }
    parse_listen(listen, a.metrics_allow_remote).map(Some)
}

/// Parses `--metricsListen` (the grammar is [`super::listen`]'s).
pub fn parse_listen(s: &str, allow_remote: bool) -> Result<MetricsAddr> {
    super::listen::parse_listen(&METRICS_LISTEN, s, allow_remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_errors_name_the_metrics_flags() {
        let e = parse_listen("0.0.0.0:9100", false).unwrap_err().to_string();
        assert!(e.starts_with("--metricsListen=") && e.contains("--metricsAllowRemote"), "{e}");
        assert!(e.contains("no authentication"), "{e}");
        assert!(parse_listen("9100", false).unwrap_err().to_string().contains("expected HOST:PORT"));
    }

    #[test]
    fn flags_are_checked() {
        let v = |args: &[&str]| {
            let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            crate::config::validate(crate::args::parse(&a)?)
        };
        let c = v(&["--test", "--metricsListen=127.0.0.1:9100", "d", "m"]).unwrap();
        assert_eq!(c.metrics, Some(MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap())));
        crate::config::assert_refused(
            |a| v(a),
            &[
                ("--test --metricsAllowRemote d m", "requires --metricsListen"),
                ("--test --metricsListen=10.1.2.3:9100 d m", "--metricsAllowRemote"),
                ("--erase --metricsListen=127.0.0.1:9100 b", "only applies"),
            ],
        );
    }
}
