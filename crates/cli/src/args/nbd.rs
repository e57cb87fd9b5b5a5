//! NBD flags: the `--nbd` mode, where it listens, and upstream's nbdkit pass-through flags
//! (accepted so that existing command lines work; what they mean here is checked in
//! `config::nbd`).

use clap::Args;

/// Flags of the NBD front end.
#[derive(Args, Debug, Clone, Default)]
pub struct NbdArgs {
    /// Export the volume as a network block device (NBD server) instead of a FUSE file.
    #[arg(long = "nbd", help_heading = "NBD")]
    pub nbd: bool,
    /// Where the NBD server listens: a Unix socket path, or HOST:PORT for TCP.
    #[arg(long = "nbdListen", value_name = "ADDR", help_heading = "NBD")]
    pub nbd_listen: Option<String>,
    /// Allow --nbdListen on a TCP address other than loopback (NBD has no authentication).
    #[arg(long = "nbdAllowRemote", help_heading = "NBD")]
    pub nbd_allow_remote: bool,
    /// TLS certificate chain (PEM) for the NBD server: clients must then use TLS (STARTTLS).
    #[arg(long = "nbdTlsCert", value_name = "FILE", help_heading = "NBD")]
    pub nbd_tls_cert: Option<String>,
    /// Private key (PEM) of --nbdTlsCert.
    #[arg(long = "nbdTlsKey", value_name = "FILE", help_heading = "NBD")]
    pub nbd_tls_key: Option<String>,
    /// nbdkit flag (upstream passes it to nbdkit); accepted and ignored, with a warning.
    #[arg(long = "nbd-flag", value_name = "FLAG", help_heading = "NBD")]
    pub nbd_flag: Vec<String>,
    /// nbdkit parameter (upstream passes it to nbdkit); accepted and ignored, with a warning.
    #[arg(long = "nbd-param", value_name = "PARAM", help_heading = "NBD")]
    pub nbd_param: Vec<String>,
}
