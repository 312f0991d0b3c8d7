//! The systemd notify protocol: READY, RELOADING, STOPPING, WATCHDOG.

use std::time::Duration;

/// systemd's notify socket, when the service runs under `Type=notify`.
#[derive(Debug, Clone, Copy)]
pub struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often to feed the watchdog, when systemd asked for one: a third of its timeout,
    /// so that a late tick still lands within half of it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 3)
    }

    pub fn ready(&self) {
        notify(&[sd_notify::NotifyState::Ready]);
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ requires; `ready` ends it.
    pub fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        notify(&[sd_notify::NotifyState::Stopping]);
    }

    pub fn feed_watchdog(&self) {
        notify(&[sd_notify::NotifyState::Watchdog]);
    }

    pub fn status(&self, text: &str) {
        notify(&[sd_notify::NotifyState::Status(text)]);
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notify failed");
    }
}
