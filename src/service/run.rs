//! `affectd run`: start every stage, tell systemd when ready, feed its watchdog while the
//! stages live, reload the model on SIGHUP, and shut down in order on SIGTERM.
//!
//! Threads own the heavy stages (one per camera in ingest, one for the analytics, one for the
//! encoder, one for capture; see `stages.rs`); the tokio runtime only runs MQTT, HTTP, signals
//! and timers.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::reload::Reloader;
use super::signals::{Signal, Signals};
use super::stages::Stages;
use super::systemd::Systemd;
use crate::config::Config;
use crate::health::Health;
use crate::types::{CameraId, CameraState, CameraStatus};

/// Runs the daemon until SIGTERM or SIGINT. `path` is the file `config` was read from: SIGHUP
/// re-reads it.
pub fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("affectd-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(supervise(config, path));
    // A reload cut short by shutdown may still be loading a model: do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn supervise(config: Config, path: &Path) -> anyhow::Result<()> {
    let systemd = Systemd::from_env();
    let mut reloader = Some(Reloader::new(path).context("cannot keep the config for reloads")?);
    let health = Health::new();
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let shutdown_timeout = Duration::from_secs_f64(config.service.shutdown_timeout_s);
    let stage_stall = Duration::from_secs_f64(config.service.stage_stall_s);

    info!(
        node = %config.node.id,
        cameras = config.enabled_cameras().count(),
        version = env!("CARGO_PKG_VERSION"),
        "affectd starting"
    );
    // One token; each stage gets a child and stops in data-flow order at shutdown.
    let stop = CancellationToken::new();
    let stages = Stages::start(&config, &health, systemd.watchdog_interval(), &stop)?;

    let mut ready = Box::pin(wait_ready(
        stages.statuses.clone(),
        stages.mqtt.ever_connected(),
    ));
    let mut ready_sent = false;
    let mut watchdog = tokio::time::interval(
        systemd
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(5)),
    );
    let mut stalled_before = Vec::new();
    let reload_encoder = stages.encoder();
    let mut reloading: Option<JoinHandle<Reloader>> = None;
    let mut reload_again = false;
    loop {
        tokio::select! {
            () = &mut ready, if !ready_sent => {
                ready_sent = true;
                systemd.ready();
                info!("all cameras started and the broker was reached: ready");
            }
            _ = watchdog.tick() => {
                let stalled = health.stalled(stage_stall);
                if stalled.is_empty() {
                    systemd.feed_watchdog();
                    if !stalled_before.is_empty() {
                        info!("every stage is making progress again; the watchdog is fed");
                    }
                } else if stalled != stalled_before {
                    warn!(stages = ?stalled, "stages stopped making progress; the systemd watchdog is no longer fed");
                }
                stalled_before = stalled;
                systemd.status(&stages.status_line());
            }
            done = async { reloading.as_mut().expect("guarded by the select condition").await }, if reloading.is_some() => {
                reloading = None;
                match done {
                    Ok(r) => reloader = Some(r),
                    Err(e) => error!(error = %e, "the reload task failed; further reloads are disabled"),
                }
                if ready_sent {
                    systemd.ready();
                }
                if std::mem::take(&mut reload_again) {
                    reloading = start_reload(&mut reloader, reload_encoder.clone(), systemd, ready_sent);
                }
            }
            signal = signals.next() => match signal {
                Signal::Shutdown => break,
                Signal::Reload if reloading.is_some() => {
                    reload_again = true;
                    info!("SIGHUP during a reload: another reload follows this one");
                }
                Signal::Reload => {
                    reloading = start_reload(&mut reloader, reload_encoder.clone(), systemd, ready_sent);
                }
            },
        }
    }
    if let Some(task) = reloading {
        task.abort();
    }
    info!(timeout_s = shutdown_timeout.as_secs_f64(), "shutting down");
    systemd.stopping();
    stages.shutdown(shutdown_timeout).await
}

/// Starts a reload in its own task (the watchdog keeps being fed while a model loads), and
/// tells systemd it is reloading once the service is up.
fn start_reload(
    reloader: &mut Option<Reloader>,
    encoder: Option<crate::encode::EncoderSender>,
    systemd: Systemd,
    ready_sent: bool,
) -> Option<JoinHandle<Reloader>> {
    let Some(mut r) = reloader.take() else {
        warn!("SIGHUP ignored: reloads are disabled after a failed reload task");
        return None;
    };
    if ready_sent {
        systemd.reloading();
    }
    Some(tokio::spawn(async move {
        r.reload(encoder.as_ref()).await;
        r
    }))
}

/// Resolves once every camera has left `starting` (streaming, or retrying after a failure)
/// and the broker has been reached once.
async fn wait_ready(
    statuses: Vec<(CameraId, watch::Receiver<CameraStatus>)>,
    mut connected: watch::Receiver<bool>,
) {
    for (_, mut status) in statuses {
        // An error means ingest is gone, which shutdown handles.
        let _ = status.wait_for(|s| s.state != CameraState::Starting).await;
    }
    let _ = connected.wait_for(|c| *c).await;
}
