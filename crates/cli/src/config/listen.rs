//! Listening addresses of the daemon's servers (`--nbdListen`, `--metricsListen`): one grammar
//! for both, so the two flags accept the same forms and refuse the same mistakes alike.
//!
//! `HOST:PORT` (an IP address, `[::1]:PORT`, or a name that resolves) is TCP; anything with a
//! `/`, or a bare name, is a Unix socket path (made absolute against the working directory). A
//! port alone is refused rather than taken for a socket file called, say, `9100`. Neither
//! server authenticates anyone, so a TCP address other than loopback is refused unless the
//! flag's "allow remote" companion is given.

use anyhow::{Context, Result, anyhow, bail};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix-domain socket at this path.
    Unix(PathBuf),
    /// TCP.
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// A listen flag, as its errors name it.
#[derive(Clone, Copy, Debug)]
pub struct ListenFlag {
    /// The flag (`--nbdListen`).
    pub name: &'static str,
    /// The flag that allows a TCP address other than loopback (`--nbdAllowRemote`).
    pub allow_remote: &'static str,
    /// What anyone who can reach a remote address gets, for the refusal.
    pub exposure: &'static str,
}

/// Parses the value `s` of `flag`; a TCP address other than loopback needs `allow_remote`.
pub fn parse_listen(flag: &ListenFlag, s: &str, allow_remote: bool) -> Result<ListenAddr> {
    let name = flag.name;
    let tcp = if s.is_empty() {
        bail!("invalid {name} \"\": expected a socket path or HOST:PORT");
    } else if s.contains('/') {
        None
    } else if let Ok(a) = s.parse::<SocketAddr>() {
        Some(a)
    } else if let Some((host, port)) = s.rsplit_once(':') {
        let port: u16 = port.parse().map_err(|_| anyhow!("invalid {name} \"{s}\": bad port \"{port}\""))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let a = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("invalid {name} \"{s}\": can't resolve \"{host}\""))?
            .next()
            .ok_or_else(|| anyhow!("invalid {name} \"{s}\": \"{host}\" has no address"))?;
        Some(a)
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("invalid {name} \"{s}\": a port alone; expected HOST:PORT (e.g. 127.0.0.1:{s}) or a socket path");
    } else {
        None
    };
    match tcp {
        Some(a) if !a.ip().is_loopback() && !allow_remote => bail!(
            "{name}={s} is not a loopback address and {}; add {} to listen there anyway",
            flag.exposure,
            flag.allow_remote
        ),
        Some(a) => Ok(ListenAddr::Tcp(a)),
        None => Ok(ListenAddr::Unix(std::path::absolute(s).unwrap_or_else(|_| PathBuf::from(s)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: ListenFlag = ListenFlag { name: "--xListen", allow_remote: "--xAllowRemote", exposure: "x is open" };

    fn parse(s: &str, allow_remote: bool) -> Result<ListenAddr> {
        parse_listen(&FLAG, s, allow_remote)
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse("127.0.0.1:10809", false).unwrap(), ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(parse("[::1]:10809", false).unwrap(), ListenAddr::Tcp("[::1]:10809".parse().unwrap()));
        assert!(matches!(parse("localhost:10809", false).unwrap(), ListenAddr::Tcp(a) if a.ip().is_loopback()));
        assert_eq!(parse("/run/x.sock", false).unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert!(matches!(parse("x.sock", false).unwrap(), ListenAddr::Unix(p) if p.is_absolute()));
        assert!(matches!(parse("./x.sock", false).unwrap(), ListenAddr::Unix(p) if p.is_absolute()));
        let e = parse("0.0.0.0:10809", false).unwrap_err().to_string();
        assert!(e.contains("--xAllowRemote") && e.contains("x is open"), "{e}");
        assert!(parse("0.0.0.0:10809", true).is_ok());
        assert!(parse("127.0.0.1:notaport", false).unwrap_err().to_string().contains("bad port"));
        let e = parse("9100", false).unwrap_err().to_string();
        assert!(e.contains("a port alone") && e.contains("127.0.0.1:9100"), "{e}");
        assert!(parse("", false).unwrap_err().to_string().starts_with("invalid --xListen"));
    }
}
