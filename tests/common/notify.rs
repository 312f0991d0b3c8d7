//! A systemd notify socket for tests: what systemd offers a `Type=notify` service.
//!
//! systemd binds a Unix datagram socket and hands its path to the service in `NOTIFY_SOCKET`;
//! the service sends `KEY=VALUE` lines to it (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, ...), one
//! datagram per call of `sd_notify`. With `WatchdogSec=` systemd also sets `WATCHDOG_USEC`
//! (and `WATCHDOG_PID`), and restarts the service when no `WATCHDOG=1` arrives for that long.
//! [`NotifySocket`] binds such a socket in a temporary folder and records every datagram with
//! its arrival time, so a test can check what systemd would have seen, and when.
//!
//! Include with `#[path = "common/notify.rs"] mod notify;` and start the daemon with
//! `NOTIFY_SOCKET` set to [`NotifySocket::path`].
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One datagram: when it arrived and its `KEY=VALUE` lines.
pub type Notification = (Instant, Vec<String>);

type Inbox = Arc<(Mutex<Vec<Notification>>, Condvar)>;

/// A bound notify socket with a thread recording what arrives; unbound on drop.
pub struct NotifySocket {
    dir: tempfile::TempDir,
    path: PathBuf,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Sets `command`'s environment as systemd does for a `Type=notify` service with
    /// `WatchdogSec=watchdog`: this socket, and `WATCHDOG_USEC` without `WATCHDOG_PID` (so
    /// sd-notify takes the watchdog as meant for the process it starts).
    pub fn environ(&self, command: &mut std::process::Command, watchdog: Duration) {
        command
            .env("NOTIFY_SOCKET", self.path())
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM");
    }

    /// Binds a fresh socket (a short path under the temp folder: Unix socket paths are
    /// limited to 107 bytes) and starts recording.
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("affectd-notify-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        // Wakes the thread now and then to look at the stop flag.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        let inbox: Inbox = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::Builder::new()
                .name("test-notify".into())
                .spawn(move || {
                    // systemd accepts datagrams up to its pipe size; the states we send are short.
                    let mut buf = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        match socket.recv(&mut buf) {
                            Ok(n) => {
                                let at = Instant::now();
                                let lines = String::from_utf8_lossy(&buf[..n])
                                    .lines()
                                    .filter(|l| !l.is_empty())
                                    .map(str::to_owned)
                                    .collect();
                                inbox.0.lock().unwrap().push((at, lines));
                                inbox.1.notify_all();
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock
                                        | std::io::ErrorKind::TimedOut
                                        | std::io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => panic!("notify socket: {e}"),
                        }
                    }
                })
                .expect("spawn notify thread")
        };
        NotifySocket {
            dir,
            path,
            inbox,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket's path: the value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram so far, in arrival order.
    pub fn messages(&self) -> Vec<Notification> {
        self.inbox.0.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a datagram with the line `key_value` (e.g. `READY=1`);
    /// true once one arrived, now or before.
    pub fn wait_for(&self, key_value: &str, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.inbox;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |messages| {
                !messages
                    .iter()
                    .any(|(_, lines)| lines.iter().any(|l| l == key_value))
            })
            .unwrap();
        guard
            .iter()
            .any(|(_, lines)| lines.iter().any(|l| l == key_value))
    }

    /// When each datagram carrying the line `line` arrived, in order.
    pub fn times_of(&self, line: &str) -> Vec<Instant> {
        self.inbox
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, lines)| lines.iter().any(|l| l == line))
            .map(|(at, _)| *at)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
