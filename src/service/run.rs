//! `affectd run`: start every stage, tell systemd when ready, feed its watchdog while the
//! stages live, reload the model on SIGHUP, and shut down in order on SIGTERM.
//!
//! Threads own the heavy stages (one per camera in ingest, one for the analytics); the tokio
//! runtime only runs MQTT, signals and timers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::reload::Reloader;
use super::signals::{Signal, Signals};
use super::systemd::Systemd;
use crate::analytics::{Analytics, Pipeline};
use crate::capture::{Capture, Manifest};
use crate::config::Config;
use crate::detect::Detector;
use crate::encode::{self, EncoderStage, Settings, StageOptions, WindowTap};
use crate::health::Health;
use crate::ingest::Ingest;
use crate::publish::{self, ResultPublisher};
use crate::types::{CameraId, CameraState, CameraStatus, ResultSink};

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
    // One token per stage, cancelled in data-flow order at shutdown.
    let stop = CancellationToken::new();
    let (analytics_stop, encoder_stop) = (stop.child_token(), stop.child_token());
    let (ingest_stop, capture_stop, mqtt_stop) =
        (stop.child_token(), stop.child_token(), stop.child_token());
    let mqtt =
        publish::start(&config.mqtt, &config.node.id, mqtt_stop).context("cannot start MQTT")?;
    let results: Arc<dyn ResultSink> =
        Arc::new(ResultPublisher::new(mqtt.clone(), &config.node.id));
    // Engines load before any camera starts: a bad model file fails here, not mid-stream.
    let mut capture = None;
    let encoder = match &config.model {
        Some(model_cfg) => {
            let loaded =
                encode::load(model_cfg, &config.readout).context("cannot load the model")?;
            info!(model = %loaded.id.name, weights = %loaded.id.weights, "model ready");
            let video_len = loaded.encoder.model().video_len();
            if config.window.length != video_len {
                anyhow::bail!(
                    "window.length: {} does not match the model's window of {video_len} frames \
                     (set it to {video_len} or remove it)",
                    config.window.length
                );
            }
            if let Some(capture_cfg) = config.capture.as_ref().filter(|c| c.enabled) {
                let model = loaded.encoder.model();
                let manifest = Manifest::new(
                    model.config().vision_cfg.image_size,
                    model.video_len(),
                    model_cfg.crop_policy(),
                    &loaded.id.name,
                );
                capture = Some(
                    Capture::start(capture_cfg, &manifest, capture_stop)
                        .context("cannot start [capture]")?,
                );
            }
            let options = StageOptions {
                settings: settings(&config, model_cfg),
                queue: model_cfg.queue,
                max_per_camera: config.window.max_tracks,
            };
            let tap = capture
                .as_ref()
                .map(|c| Box::new(c.sender()) as Box<dyn WindowTap>);
            Some(
                EncoderStage::spawn(
                    loaded,
                    options,
                    Arc::clone(&results),
                    tap,
                    health.register("encoder"),
                    encoder_stop,
                )
                .context("cannot start the encoder thread")?,
            )
        }
        None => None,
    };
    let pipeline = match &config.detect {
        Some(detect) => Some(Pipeline {
            detector: Detector::new(detect).context("cannot start the detector")?,
            track: config.track.clone(),
            window: config.window.clone(),
            encoder: encoder.as_ref().map(EncoderStage::sender),
            results: Arc::clone(&results),
        }),
        None => None,
    };
    let ingest = Ingest::start(&config.cameras, &config.ingest, ingest_stop)
        .context("cannot start ingest")?;
    let statuses = ingest.statuses();
    let status_task = publish::spawn_camera_status(mqtt.clone(), statuses.clone());
    let analytics = Analytics::spawn(
        ingest.hub(),
        pipeline,
        health.register("analytics"),
        analytics_stop,
    )
    .context("cannot start the analytics thread")?;

    let mut ready = Box::pin(wait_ready(statuses, mqtt.ever_connected()));
    let mut ready_sent = false;
    let mut watchdog = tokio::time::interval(
        systemd
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(5)),
    );
    let mut stalled_before = Vec::new();
    let reload_encoder = encoder.as_ref().map(EncoderStage::sender);
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
                } else if stalled != stalled_before {
                    warn!(stages = ?stalled, "stages stopped making progress; the systemd watchdog is no longer fed");
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

    let deadline = Instant::now() + shutdown_timeout;
    info!(timeout_s = shutdown_timeout.as_secs_f64(), "shutting down");
    systemd.stopping();
    let left = |deadline: Instant| deadline.saturating_duration_since(Instant::now());
    // Pipelines first (EOS drains them), then the analytics, then flush MQTT.
    let ingest_budget = left(deadline).mul_f64(0.5);
    tokio::task::spawn_blocking(move || ingest.stop(ingest_budget))
        .await
        .context("ingest shutdown panicked")?;
    tokio::task::spawn_blocking(move || analytics.stop())
        .await
        .context("analytics shutdown panicked")?;
    if let Some(encoder) = encoder {
        let budget = left(deadline).mul_f64(0.5);
        tokio::task::spawn_blocking(move || encoder.stop(budget))
            .await
            .context("encoder shutdown panicked")?;
    }
    if let Some(capture) = capture {
        let budget = left(deadline).mul_f64(0.5);
        tokio::task::spawn_blocking(move || capture.stop(budget))
            .await
            .context("capture shutdown panicked")?;
    }
    let report = mqtt.shutdown(left(deadline)).await;
    let _ = status_task.await;
    info!(mqtt = %report, "stopped");
    Ok(())
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

/// The encoder settings a reload may change, from the config.
pub(crate) fn settings(config: &Config, model_cfg: &crate::encode::ModelConfig) -> Settings {
    Settings {
        max_batch: model_cfg.max_batch,
        ema_alpha: config.readout.ema_alpha,
        include_embedding: model_cfg.include_embedding,
    }
}
