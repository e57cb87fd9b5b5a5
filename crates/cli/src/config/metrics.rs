//! Metrics settings: `--metricsListen` (a loopback address or a Unix socket; other addresses
//! only with `--metricsAllowRemote`, since the endpoint has no authentication), checked with
//! the other flags. Serving them is [`crate::metrics`]'s job.

use super::Mode;
use anyhow::{Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// TCP (loopback unless `--metricsAllowRemote`).
    Tcp(SocketAddr),
    /// A Unix-domain socket at this path.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "http://{a}/metrics"),
            MetricsAddr::Unix(p) => write!(f, "{} (/metrics)", p.display()),
        }
    }
}

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

/// Parses `--metricsListen`: an IP address and port (`127.0.0.1:9100`, `[::1]:9100`,
/// `localhost:9100`), or a Unix socket path (anything with a `/`).
pub fn parse_listen(s: &str, allow_remote: bool) -> Result<MetricsAddr> {
    if s.contains('/') {
        return Ok(MetricsAddr::Unix(std::path::absolute(s).unwrap_or_else(|_| PathBuf::from(s))));
    }
    let addr = match s.strip_prefix("localhost:") {
        Some(port) => port.parse::<u16>().ok().map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        None => s.parse::<SocketAddr>().ok(),
    };
    let Some(addr) = addr else {
        bail!("invalid --metricsListen \"{s}\": expected IP:PORT (e.g. 127.0.0.1:9100) or a socket path");
    };
    if !addr.ip().is_loopback() && !allow_remote {
        bail!(
            "--metricsListen={s} is not a loopback address and the metrics endpoint has no authentication; add --metricsAllowRemote to listen there anyway"
        );
    }
    Ok(MetricsAddr::Tcp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("127.0.0.1:9100", false).unwrap(), MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:9100", false).unwrap(), MetricsAddr::Tcp("[::1]:9100".parse().unwrap()));
        assert_eq!(parse_listen("localhost:9100", false).unwrap(), MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(parse_listen("/run/m.sock", false).unwrap(), MetricsAddr::Unix("/run/m.sock".into()));
        assert!(matches!(parse_listen("./m.sock", false).unwrap(), MetricsAddr::Unix(p) if p.is_absolute()));
        let e = parse_listen("0.0.0.0:9100", false).unwrap_err().to_string();
        assert!(e.contains("--metricsAllowRemote") && e.contains("no authentication"), "{e}");
        assert!(parse_listen("0.0.0.0:9100", true).is_ok());
        assert!(parse_listen("9100", false).unwrap_err().to_string().contains("expected IP:PORT"));
        assert!(parse_listen("", false).is_err());
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
