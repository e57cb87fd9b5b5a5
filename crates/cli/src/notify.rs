//! systemd readiness notification (`sd_notify`), for units of `Type=notify`.
//!
//! The daemon sends `STATUS=` lines while it starts (opening the volume, auto-detecting its
//! size, reading the block cache file), `READY=1` once the volume is mounted (FUSE) or the NBD
//! server listens, `STOPPING=1` with a `STATUS=` line when the front end has stopped and the
//! dirty blocks are being flushed, and a last `STATUS=` line once everything is flushed. With
//! `NOTIFY_SOCKET` unset (not under systemd) nothing is sent. The protocol itself is the
//! `sd-notify` crate's; a message that cannot be delivered is logged for debugging only, since
//! the volume works the same without a service manager listening.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify: {}", crate::io_msg(&e));
    }
}

/// Tells the service manager what the daemon is doing (`STATUS=`).
pub fn status(what: &str) {
    send(&[NotifyState::Status(what)]);
}

/// The volume is offered (mounted, or the NBD server listens): `READY=1`, the daemon's pid
/// (after a fork it is not the process systemd started) and `what` as the status.
pub fn ready(what: &str) {
    send(&[NotifyState::Ready, NotifyState::MainPid(std::process::id()), NotifyState::Status(what)]);
}

/// Shutdown has begun: `STOPPING=1` and `what` as the status.
pub fn stopping(what: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(what)]);
}
