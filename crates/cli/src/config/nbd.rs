//! NBD settings: `--nbd` with the other modes, where the server listens (`--nbdListen`, with
//! `--nbdAllowRemote` for addresses beyond loopback) or the NBD device it attaches, and TLS.

use super::Mode;
use super::listen::ListenFlag;
use crate::args::nbd::NbdArgs;
use anyhow::{Result, bail};
use std::path::Path;

/// The checked NBD flags (all empty outside `--nbd`).
#[derive(Clone, Debug, Default)]
pub struct NbdSettings {
    /// `--nbdListen`; `None` with an NBD device (the mount point argument).
    pub listen: Option<ListenAddr>,
    /// `--nbdTlsCert` and `--nbdTlsKey`.
    pub tls: Option<(String, String)>,
    /// `--nbd-flag` or `--nbd-param` given (accepted and ignored, as upstream's nbdkit flags).
    pub nbdkit_flags: bool,
}

pub use super::listen::ListenAddr;

/// `--nbdListen` for [`parse_listen`].
const NBD_LISTEN: ListenFlag = ListenFlag {
    name: "--nbdListen",
    allow_remote: "--nbdAllowRemote",
    exposure: "NBD has no authentication: anyone who can reach it can read and write the volume",
};

/// Settles the mode with `--nbd`: NBD flags without `--nbd`, or `--nbd` with a maintenance
/// mode, are errors.
pub fn check_mode(a: &NbdArgs, mode: Mode) -> Result<Mode> {
    if !a.nbd {
        for (given, flag) in [
            (a.nbd_listen.is_some(), "--nbdListen"),
            (a.nbd_allow_remote, "--nbdAllowRemote"),
            (a.nbd_tls_cert.is_some(), "--nbdTlsCert"),
            (a.nbd_tls_key.is_some(), "--nbdTlsKey"),
            (!a.nbd_flag.is_empty(), "--nbd-flag"),
            (!a.nbd_param.is_empty(), "--nbd-param"),
        ] {
            if given {
                bail!("{flag} requires --nbd");
            }
        }
        return Ok(mode);
    }
    match mode {
        Mode::Mount | Mode::Nbd => Ok(Mode::Nbd),
        Mode::Erase => bail!("--nbd cannot be used with --erase"),
        Mode::ResetMountedFlag => bail!("--nbd cannot be used with --reset-mounted-flag"),
        other => bail!("--nbd cannot be used with {}", other.flag()),
    }
}

/// Checks the NBD flags of `mode` (the NBD device, if any, is `device`).
pub(super) fn settings(a: &NbdArgs, mode: Mode, device: Option<&Path>) -> Result<NbdSettings> {
    if mode != Mode::Nbd {
        return Ok(NbdSettings::default());
    }
    check_target(a, device)?;
    Ok(NbdSettings {
        listen: a.nbd_listen.as_deref().map(|l| parse_listen(l, a.nbd_allow_remote)).transpose()?,
        tls: a.nbd_tls_cert.clone().zip(a.nbd_tls_key.clone()),
        nbdkit_flags: !a.nbd_flag.is_empty() || !a.nbd_param.is_empty(),
    })
}

/// Checks that `--nbd` has exactly one place to serve: `--nbdListen` or a device; and that
/// the TLS flags come in pairs (and not with a device: the kernel client has no TLS here).
pub fn check_target(a: &NbdArgs, device: Option<&Path>) -> Result<()> {
    match (&a.nbd_tls_cert, &a.nbd_tls_key) {
        (Some(_), None) => bail!("--nbdTlsCert requires --nbdTlsKey"),
        (None, Some(_)) => bail!("--nbdTlsKey requires --nbdTlsCert"),
        (Some(_), Some(_)) if device.is_some() => {
            bail!("--nbdTlsCert cannot be used with an NBD device (nbd-client is started without TLS)")
        }
        _ => {}
    }
    match (&a.nbd_listen, device) {
        (None, None) => {
            bail!("--nbd needs --nbdListen=ADDR (a socket path or HOST:PORT) or an NBD device such as /dev/nbd0")
        }
        (Some(_), Some(d)) => bail!("--nbdListen and an NBD device ({}) cannot be given together", d.display()),
        (Some(l), None) => parse_listen(l, a.nbd_allow_remote).map(|_| ()),
        (None, Some(_)) => {
            if a.nbd_allow_remote {
                bail!("--nbdAllowRemote only applies to --nbdListen=HOST:PORT");
            }
            Ok(())
        }
    }
}

/// Parses `--nbdListen` (the grammar is [`super::listen`]'s).
pub fn parse_listen(s: &str, allow_remote: bool) -> Result<ListenAddr> {
    super::listen::parse_listen(&NBD_LISTEN, s, allow_remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: Option<&str>, remote: bool) -> NbdArgs {
        NbdArgs { nbd: true, nbd_listen: listen.map(String::from), nbd_allow_remote: remote, ..Default::default() }
    }

    #[test]
    fn listen_errors_name_the_nbd_flags() {
        let e = parse_listen("0.0.0.0:10809", false).unwrap_err().to_string();
        assert!(
            e.starts_with("--nbdListen=") && e.contains("--nbdAllowRemote") && e.contains("no authentication"),
            "{e}"
        );
        assert!(parse_listen("0.0.0.0:10809", true).is_ok());
        assert!(matches!(parse_listen("x.sock", false).unwrap(), ListenAddr::Unix(p) if p.is_absolute()));
    }

    #[test]
    fn modes_and_targets() {
        assert_eq!(check_mode(&args(None, false), Mode::Mount).unwrap(), Mode::Nbd);
        assert!(check_mode(&args(None, false), Mode::Erase).unwrap_err().to_string().contains("--erase"));
        let no = NbdArgs { nbd_listen: Some("/x".into()), ..Default::default() };
        assert_eq!(check_mode(&no, Mode::Mount).unwrap_err().to_string(), "--nbdListen requires --nbd");
        assert!(check_target(&args(None, false), None).unwrap_err().to_string().contains("needs --nbdListen"));
        assert!(check_target(&args(Some("/s"), false), Some(Path::new("/dev/nbd0"))).is_err());
        assert!(check_target(&args(None, false), Some(Path::new("/dev/nbd0"))).is_ok());
    }
}
