//! `affectd run`: start every stage, tell systemd when ready, feed its watchdog while the
//! stages live, reload the model on SIGHUP, and shut down in order on SIGTERM.
//!
//! In: the config and its path, signals, systemd's environment. Out: `READY=1` once every
//! camera left `starting` and the model is loaded (the broker may be down: results wait in
//! the outbox, and a box whose broker is down at boot must not be killed by
//! `TimeoutStartSec`), `WATCHDOG=1` while every heartbeat is fresh, `RELOADING=1`/`READY=1`
//! around a reload, `STOPPING=1`, the exit status. Owns: the tokio runtime, the stages.
//!
//! The stages (the model above all) start on a blocking thread while signals are watched: a
//! SIGTERM during a long model load exits at once (status 0, a log line) instead of waiting
//! for the load.
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
    let shutdown_timeout = Duration::from_secs_f64(config.service.shutdown_timeout_s);
    let result = runtime.block_on(supervise(config, path));
    // A start-up or reload cut short by shutdown may still be loading a model: do not wait
    // for it past the reserve the stages left for this.
    runtime.shutdown_timeout(exit_reserve(shutdown_timeout));
    result
}

/// The part of `shutdown_timeout_s` kept for leaving the runtime (abandoned blocking work)
/// and the process: the stages get the rest, so SIGTERM to exit stays within
/// `shutdown_timeout_s` (at least 0.5 s, see the config's range). An eighth, 0.5 s at the
/// shipped 4 s; the process takes about 0.05 s to exit once the stages stopped.
fn exit_reserve(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 8).clamp(Duration::from_millis(60), Duration::from_millis(500))
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
    let mut reload_again = false;
    let starting = {
        let (health, stop) = (health.clone(), stop.clone());
        let watchdog = systemd.watchdog_interval();
        tokio::task::spawn_blocking(move || Stages::start(&config, &health, watchdog, &stop))
    };
    tokio::pin!(starting);
    let stages = loop {
        tokio::select! {
            started = &mut starting => break started.context("start-up panicked")??,
            signal = signals.next() => match signal {
                Signal::Shutdown => {
                    // Whatever started stops with the token; the load itself is not waited
                    // for (the runtime gives its thread a second, then the process exits).
                    info!("SIGTERM during start-up (loading the model): exiting without waiting for it");
                    systemd.stopping();
                    stop.cancel();
                    return Ok(());
                }
                Signal::Reload => {
                    reload_again = true;
                    info!("SIGHUP during start-up: the reload follows once started");
                }
            },
        }
    };

    let mut ready = Box::pin(wait_ready(stages.statuses.clone()));
    let mut ready_sent = false;
    let mut watchdog = tokio::time::interval(
        systemd
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(5)),
    );
    let mut stalled_before = Vec::new();
    let mut slow_at_start = Vec::new();
    let reload_encoder = stages.encoder();
    let mut reloading: Option<JoinHandle<Reloader>> = None;
    loop {
        tokio::select! {
            () = &mut ready, if !ready_sent => {
                ready_sent = true;
                systemd.ready();
                let broker_connected = *stages.mqtt.connected().borrow();
                info!(broker_connected, "all cameras started and the model is loaded: ready");
                if std::mem::take(&mut reload_again) && reloading.is_none() {
                    reloading = start_reload(&mut reloader, reload_encoder.clone(), systemd, ready_sent);
                }
            }
            _ = watchdog.tick() => {
                systemd.status(&stages.status_line());
                let stalled = health.stalled(stage_stall);
                // How long each has gone without a beat, for whoever reads the log later.
                let silent = || -> Vec<String> {
                    health
                        .beats()
                        .into_iter()
                        .filter(|(stage, _)| stalled.contains(stage))
                        .map(|(stage, age)| format!("{stage} for {:.1} s", age.as_secs_f64()))
                        .collect()
                };
                if !ready_sent {
                    // systemd arms the watchdog only once start-up completed (READY=1); until
                    // then TimeoutStartSec bounds the start, and READY waits for every camera
                    // to leave `starting`. A first pipeline start slowed by a cold disk is not
                    // a hang: it is logged, and stages are judged from READY on.
                    if !stalled.is_empty() && stalled != slow_at_start {
                        info!(stages = ?stalled, silent = ?silent(), "still starting: stages slow to make progress (judged from READY on)");
                    }
                    slow_at_start = stalled;
                    systemd.feed_watchdog();
                    continue;
                }
                if stalled.is_empty() {
                    systemd.feed_watchdog();
                    if !stalled_before.is_empty() {
                        info!("every stage is making progress again; the watchdog is fed");
                    }
                } else if stalled != stalled_before {
                    warn!(stages = ?stalled, silent = ?silent(), "stages stopped making progress; the systemd watchdog is no longer fed");
                }
                stalled_before = stalled;
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
    stages
        .shutdown(shutdown_timeout.saturating_sub(exit_reserve(shutdown_timeout)))
        .await
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

/// Resolves once every camera has left `starting` (streaming, or retrying after a failure).
/// The model is loaded before (the stages start with it); the broker is not waited for.
async fn wait_ready(statuses: Vec<(CameraId, watch::Receiver<CameraStatus>)>) {
    for (_, mut status) in statuses {
        // An error means ingest is gone, which shutdown handles.
        let _ = status.wait_for(|s| s.state != CameraState::Starting).await;
    }
}
