//! The running stages: started in dependency order, stopped in data-flow order.
//!
//! In: the config, the [`Health`] registry, the root stop token. Out: [`Stages`], every stage
//! started and registered in `health` (`mqtt`, `capture`, `encoder`, `ingest-<id>` per
//! camera, `analytics`). Owns: the stage handles until [`Stages::shutdown`], which waits for
//! each with a deadline and names in the log what did not finish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::analytics::{Analytics, Pipeline};
use crate::capture::{Capture, Manifest};
use crate::config::Config;
use crate::detect::Detector;
use crate::encode::{self, EncoderSender, EncoderStage, Settings, StageOptions, WindowTap};
use crate::health::Health;
use crate::ingest::Ingest;
use crate::observe::{
    self, CameraSource, LiveTracks, Metrics, Observed, Running, Server, Sources, View,
    ViewSettings, ViewTap,
};
use crate::publish::{self, Publisher, ResultPublisher};
use crate::results::ResultSink;
use crate::types::{CameraId, CameraState, CameraStatus};

/// Every stage of a running daemon.
pub(super) struct Stages {
    pub mqtt: Publisher,
    http: Option<Server>,
    capture: Option<Capture>,
    encoder: Option<EncoderStage>,
    ingest: Ingest,
    analytics: Analytics,
    status_task: JoinHandle<()>,
    pub statuses: Vec<(CameraId, watch::Receiver<CameraStatus>)>,
}

impl Stages {
    /// Binds the HTTP port and serves it (a taken one fails here, first; the endpoints say
    /// "starting" until the end), starts MQTT, loads the engines (a bad model file fails here,
    /// before any camera starts), then capture, the encoder, the cameras and the analytics,
    /// and attaches them to HTTP. Each stage gets its own child of `stop`.
    /// `watchdog` is how often systemd's watchdog is fed, if it asked for one.
    pub fn start(
        config: &Config,
        health: &Health,
        watchdog: Option<Duration>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let http = match observe::bind(&config.http)? {
            Some(listener) => Some(
                listener
                    .serve(stop.child_token())
                    .context("cannot start the HTTP server")?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::new(Running {
            analytics: config.detect.is_some(),
            encoder: config.model.is_some(),
        }));
        let mqtt = publish::start(&config.mqtt, &config.node.id, stop.child_token())
            .context("cannot start MQTT")?;
        health.watch("mqtt", mqtt.beat());
        let people = publish::home_assistant::start(
            &mqtt,
            &config.mqtt,
            &config.node.id,
            config
                .enabled_cameras()
                .map(|c| c.id.as_str().into())
                .collect(),
        );
        let publisher =
            ResultPublisher::new(mqtt.clone(), &config.node.id, metrics.results.clone())
                .with_people_in_view(people);
        // What the trackers can hold at once bounds the live track table.
        let capacity = config.enabled_cameras().count() * config.track.max_tracks;
        let tracks = Arc::new(LiveTracks::new(Arc::new(publisher), capacity));
        let results: Arc<dyn ResultSink> = Arc::clone(&tracks) as _;
        let (encoder, capture) = match &config.model {
            Some(model_cfg) => {
                let (encoder, capture) =
                    start_encoder(config, model_cfg, &results, &metrics, health, stop)?;
                (Some(encoder), capture)
            }
            None => (None, None),
        };
        let pipeline = match &config.detect {
            Some(detect) => Some(Pipeline {
                detector: Detector::new(detect).context("cannot start the detector")?,
                track: config.track.clone(),
                window: config.window.clone(),
                encoder: encoder.as_ref().map(EncoderStage::sender),
                results,
                metrics: metrics.analytics.clone(),
            }),
            None => None,
        };
        let ingest =
            Ingest::start_watched(&config.cameras, &config.ingest, stop.child_token(), health)
                .context("cannot start ingest")?;
        let statuses = ingest.statuses();
        let status_task = publish::spawn_camera_status(mqtt.clone(), statuses.clone());
        let view = Arc::new(ViewTap::new(
            config
                .enabled_cameras()
                .map(|c| CameraId::from(c.id.as_str())),
        ));
        let analytics = Analytics::spawn(
            ingest.hub(),
            pipeline,
            Arc::clone(&view),
            health.register("analytics"),
            stop.child_token(),
        )
        .context("cannot start the analytics thread")?;
        if let Some(http) = &http {
            http.attach(Observed {
                node: config.node.id.clone(),
                sources: Sources {
                    cameras: camera_sources(&ingest),
                    encoder: encoder.as_ref().map(|e| (e.sender(), e.stats())),
                    capture: capture.as_ref().map(Capture::stats),
                    mqtt: mqtt.clone(),
                    health: health.clone(),
                },
                view: Arc::new(View::new(
                    view,
                    Arc::clone(&tracks),
                    ViewSettings {
                        fps: config.http.view_fps,
                        max_viewers: config.http.max_viewers,
                        max_width: config.http.view_max_width,
                    },
                    metrics.view.clone(),
                    stop.clone(),
                )),
                metrics,
                tracks,
                model_configured: config.model.is_some(),
                stage_stall: Duration::from_secs_f64(config.service.stage_stall_s),
                watchdog,
            });
        }
        Ok(Self {
            mqtt,
            http,
            capture,
            encoder,
            ingest,
            analytics,
            status_task,
            statuses,
        })
    }

    /// The encoder's input, for reloads.
    pub fn encoder(&self) -> Option<EncoderSender> {
        self.encoder.as_ref().map(EncoderStage::sender)
    }

    /// One line for `systemctl status` (sd_notify `STATUS=`): cameras streaming, persons
    /// held, samples dropped, results waiting.
    pub fn status_line(&self) -> String {
        let streaming = self
            .statuses
            .iter()
            .filter(|(_, s)| s.borrow().state == CameraState::Streaming)
            .count();
        let mqtt = self.mqtt.stats();
        let mut line = format!("{streaming}/{} cameras streaming", self.statuses.len());
        if let Some(encoder) = &self.encoder {
            let stats = encoder.stats();
            line += &format!(
                "; persons {}, windows {}, samples dropped {}",
                stats.persons.load(Ordering::Relaxed),
                stats.windows.load(Ordering::Relaxed),
                encoder.sender().dropped()
            );
        }
        line + &format!(
            "; results queued {}, dropped {}",
            mqtt.queued + mqtt.in_flight,
            mqtt.dropped
        )
    }

    /// Stops the stages in data-flow order within `timeout`: HTTP first (it observes, nothing
    /// flows through it), the pipelines (EOS drains them), the analytics (ending every
    /// track), the encoder (encoding what is queued and finishing the tracks), capture, then
    /// MQTT is flushed.
    pub async fn shutdown(self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let share = |part: f64| {
            deadline
                .saturating_duration_since(Instant::now())
                .mul_f64(part)
        };
        let Stages {
            mqtt,
            http,
            capture,
            encoder,
            ingest,
            analytics,
            status_task,
            statuses: _,
        } = self;
        if let Some(http) = http {
            http.stop(share(0.1)).await;
        }
        let budget = share(0.5);
        blocking("ingest", move || ingest.stop(budget)).await?;
        let budget = share(0.3);
        blocking("analytics", move || analytics.stop(budget)).await?;
        if let Some(encoder) = encoder {
            let budget = share(0.5);
            blocking("encoder", move || encoder.stop(budget)).await?;
        }
        if let Some(capture) = capture {
            let budget = share(0.5);
            blocking("capture", move || capture.stop(budget)).await?;
        }
        let report = mqtt.shutdown(share(1.0)).await;
        // The status task ends with the publisher; it is not waited for past the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left.max(Duration::from_millis(100)), status_task)
            .await
            .is_err()
        {
            warn!("the camera status task did not stop in time");
        }
        info!(mqtt = %report, "stopped");
        Ok(())
    }
}

/// Each camera's status channel beside its frame queue.
fn camera_sources(ingest: &Ingest) -> Vec<CameraSource> {
    let queues = ingest.hub();
    ingest
        .statuses()
        .into_iter()
        .filter_map(|(id, status)| {
            let (_, queue) = queues.queues().iter().find(|(q, _)| *q == id)?;
            Some(CameraSource {
                queue: Arc::clone(queue),
                id,
                status,
            })
        })
        .collect()
}

async fn blocking(stage: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .with_context(|| format!("{stage} shutdown panicked"))
}

/// Loads the model, checks `[window] length` against it, starts capture (when configured)
/// and the encoder thread.
fn start_encoder(
    config: &Config,
    model_cfg: &encode::ModelConfig,
    results: &Arc<dyn ResultSink>,
    metrics: &Metrics,
    health: &Health,
    stop: &CancellationToken,
) -> anyhow::Result<(EncoderStage, Option<Capture>)> {
    let loaded = encode::load(model_cfg, &config.readout).context("cannot load the model")?;
    info!(model = %loaded.id.name, weights = %loaded.id.weights, "model ready");
    let video_len = loaded.encoder.model().video_len();
    if config.window.length != video_len {
        anyhow::bail!(
            "window.length: {} does not match the model's window of {video_len} frames \
             (set it to {video_len} or remove it)",
            config.window.length
        );
    }
    let capture = match config.capture.as_ref().filter(|c| c.enabled) {
        Some(capture_cfg) => {
            let model = loaded.encoder.model();
            let manifest = Manifest::new(
                model.config().vision_cfg.image_size,
                video_len,
                model_cfg.crop_policy(),
                &loaded.id.name,
            );
            Some(
                Capture::start_watched(
                    capture_cfg,
                    &manifest,
                    stop.child_token(),
                    health.register("capture"),
                )
                .context("cannot start [capture]")?,
            )
        }
        None => None,
    };
    let options = StageOptions {
        settings: settings(config, model_cfg),
        queue: model_cfg.queue,
        max_per_camera: config.window.max_tracks,
        metrics: metrics.encoder.clone(),
    };
    let tap = capture
        .as_ref()
        .map(|c| Box::new(c.sender()) as Box<dyn WindowTap>);
    let encoder = EncoderStage::spawn(
        loaded,
        options,
        Arc::clone(results),
        tap,
        health.register("encoder"),
        stop.child_token(),
    )
    .context("cannot start the encoder thread")?;
    Ok((encoder, capture))
}

/// The encoder settings a reload may change, from the config.
pub(crate) fn settings(config: &Config, model_cfg: &encode::ModelConfig) -> Settings {
    Settings {
        max_batch: model_cfg.max_batch,
        ema_alpha: config.readout.ema_alpha,
        include_embedding: model_cfg.include_embedding,
    }
}
