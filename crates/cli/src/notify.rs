//! systemd readiness notification (`sd_notify`), for units of `Type=notify`.
//!
//! The daemon sends `STATUS=` lines while it starts (opening the volume, auto-detecting its
//! size, reading the block cache file), `READY=1` once the volume is mounted (FUSE) or the NBD
//! server listens, `STOPPING=1` with a `STATUS=` line when the front end has stopped and the
//! dirty blocks are being flushed (then every second the dirty blocks left), and a last
//! `STATUS=` line once everything is flushed. With
//! `NOTIFY_SOCKET` unset (not under systemd) nothing is sent. The protocol itself is the
//! `sd-notify` crate's; a message that cannot be delivered is logged for debugging only, since
//! the volume works the same without a service manager listening.

use parking_lot::Mutex;
use sd_notify::NotifyState;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

/// How often the status tells the dirty blocks left while the shutdown flush runs.
const FLUSH_STATUS_EVERY: Duration = Duration::from_secs(1);

/// The thread reporting the flush's progress, and the way to stop it.
static FLUSH_STATUS: Mutex<Option<(Sender<()>, std::thread::JoinHandle<()>)>> = Mutex::new(None);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify: {}", crate::io_msg(&e));
    }
}

/// Tells the service manager what the daemon is doing (`STATUS=`). Ends the flush's progress
/// reports, if they run: this is the status that follows them.
pub fn status(what: &str) {
    end_flush_status();
    send(&[NotifyState::Status(what)]);
}

/// The volume is offered (mounted, or the NBD server listens): `READY=1`, the daemon's pid
/// (after a fork it is not the process systemd started) and `what` as the status.
pub fn ready(what: &str) {
    send(&[NotifyState::Ready, NotifyState::MainPid(std::process::id()), NotifyState::Status(what)]);
}

/// Shutdown has begun: `STOPPING=1` and `what` as the status; then, under a service manager,
/// every second while the flush runs, `STATUS=flushing: N dirty blocks left` (from the block
/// cache), until [`status`] reports how the flush ended.
pub fn stopping(what: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(what)]);
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let (stop, stopped) = channel::<()>();
    let spawned = std::thread::Builder::new().name("s3backer-notify".into()).spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_STATUS_EVERY) {
            if let Some(n) = crate::metrics::dirty_blocks().filter(|&n| n > 0) {
                send(&[NotifyState::Status(&format!("flushing: {n} dirty blocks left"))]);
            }
        }
    });
    if let Ok(handle) = spawned {
        *FLUSH_STATUS.lock() = Some((stop, handle));
    }
}

/// Stops the flush's progress reports (the flush has ended).
fn end_flush_status() {
    if let Some((stop, handle)) = FLUSH_STATUS.lock().take() {
        drop(stop);
        let _ = handle.join();
    }
}
