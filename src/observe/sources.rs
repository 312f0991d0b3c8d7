//! What the endpoints read from the running stages, and a [`Snapshot`] of it: the
//! scrape-time half of `/metrics` (encoded by the [`Collector`] below) and the facts behind
//! `/api/cameras`, `/healthz` and `/readyz`. Taking one reads atomics and `watch` values and
//! copies the publisher's counters under its lock: it never waits on a stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::capture::CaptureStats;
use crate::encode::{EncoderSender, EncoderStats};
use crate::health::Health;
use crate::ingest::FrameQueue;
use crate::publish::{Publisher, Stats};
use crate::types::{CameraId, CameraState, CameraStatus};

/// Handles on the stages' own state, held by the HTTP server.
pub struct Sources {
    pub cameras: Vec<CameraSource>,
    /// The encoder's input and counters; `None` without `[model]`.
    pub encoder: Option<(EncoderSender, Arc<EncoderStats>)>,
    /// Capture's counters; `None` without `[capture]`.
    pub capture: Option<Arc<CaptureStats>>,
    pub mqtt: Publisher,
    pub health: Health,
}

/// One camera: its status channel and its frame queue.
pub struct CameraSource {
    pub id: CameraId,
    pub status: watch::Receiver<CameraStatus>,
    pub queue: Arc<FrameQueue>,
}

/// The stages' state at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cameras: Vec<CameraSnapshot>,
    pub encoder: Option<EncoderSnapshot>,
    pub capture: Option<CaptureSnapshot>,
    pub mqtt: Stats,
    pub mqtt_connected: bool,
    /// The broker was reached at least once.
    pub mqtt_reached: bool,
    /// Every watched stage and the time since its last heartbeat.
    pub beats: Vec<(String, Duration)>,
}

#[derive(Debug, Clone)]
pub struct CameraSnapshot {
    pub id: CameraId,
    pub status: CameraStatus,
    /// Frames that left the decoder, every pipeline run together.
    pub frames_decoded: u64,
    /// Frames waiting for the analytics now.
    pub queued_frames: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct EncoderSnapshot {
    pub received: u64,
    pub dropped: u64,
    pub refused: u64,
    pub queued: usize,
    pub persons: u64,
    pub windows: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct CaptureSnapshot {
    pub written: u64,
    pub dropped: u64,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Sources {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            cameras: self
                .cameras
                .iter()
                .map(|c| CameraSnapshot {
                    id: c.id.clone(),
                    status: c.status.borrow().clone(),
                    frames_decoded: c.queue.delivered(),
                    queued_frames: c.queue.len(),
                })
                .collect(),
            encoder: self
                .encoder
                .as_ref()
                .map(|(sender, stats)| EncoderSnapshot {
                    received: sender.received(),
                    dropped: sender.dropped(),
                    refused: load(&stats.refused),
                    queued: sender.queued(),
                    persons: load(&stats.persons),
                    windows: load(&stats.windows),
                    failures: load(&stats.failures),
                }),
            capture: self.capture.as_ref().map(|s| CaptureSnapshot {
                written: load(&s.written),
                dropped: load(&s.dropped),
            }),
            mqtt: self.mqtt.stats(),
            mqtt_connected: *self.mqtt.connected().borrow(),
            mqtt_reached: *self.mqtt.ever_connected().borrow(),
            beats: self.health.beats(),
        }
    }
}

impl Snapshot {
    /// Every camera left `starting` (streaming, or retrying after a failure).
    pub fn cameras_started(&self) -> bool {
        self.cameras
            .iter()
            .all(|c| c.status.state != CameraState::Starting)
    }
}

const STATES: [(CameraState, &str); 4] = [
    (CameraState::Starting, "starting"),
    (CameraState::Streaming, "streaming"),
    (CameraState::Reconnecting, "reconnecting"),
    (CameraState::Failed, "failed"),
];

/// Writes one metric family: `name` (counters without `_total`, the encoder adds it) with
/// one sample per label set.
fn family<'a, V: 'a>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
    ConstGauge<V>: EncodeMetric,
{
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

fn one<V>(value: V) -> [(Vec<(&'static str, &'static str)>, V); 1] {
    [(Vec::new(), value)]
}

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let per_camera = |f: fn(&CameraSnapshot) -> u64| {
            self.cameras
                .iter()
                .map(move |c| (vec![("camera", &*c.id)], f(c)))
        };
        let o = &mut out;
        if !self.cameras.is_empty() {
            family(
                o,
                "affectd_camera_frames_decoded",
                "Frames that left the camera's decoder into its queue (at [ingest] fps)",
                Counter,
                per_camera(|c| c.frames_decoded),
            )?;
            family(
                o,
                "affectd_camera_frames_dropped",
                "Frames dropped from the camera's queue (oldest first) because the analytics were behind",
                Counter,
                per_camera(|c| c.status.frames_dropped),
            )?;
            family(
                o,
                "affectd_camera_restarts",
                "Pipeline restarts of the camera",
                Counter,
                per_camera(|c| c.status.restarts),
            )?;
            family(
                o,
                "affectd_camera_queued_frames",
                "Frames waiting in the camera's queue for the analytics",
                Gauge,
                per_camera(|c| c.queued_frames as u64),
            )?;
            family(
                o,
                "affectd_camera_state",
                "The camera pipeline's state: 1 for the current one",
                Gauge,
                self.cameras.iter().flat_map(|c| {
                    STATES.iter().map(|(state, name)| {
                        let labels = vec![("camera", &*c.id), ("state", *name)];
                        (labels, u64::from(c.status.state == *state))
                    })
                }),
            )?;
        }
        // Series of one sample each: (name, help, type, value).
        let mut scalars: Vec<(&str, &str, MetricType, u64)> = Vec::new();
        if let Some(e) = &self.encoder {
            scalars.extend([
                (
                    "affectd_encoder_samples_received",
                    "Person samples the analytics handed to the encoder's queue",
                    Counter,
                    e.received,
                ),
                (
                    "affectd_encoder_samples_dropped",
                    "Samples dropped from the encoder's queue (oldest first) because the encoder was behind",
                    Counter,
                    e.dropped,
                ),
                (
                    "affectd_encoder_samples_refused",
                    "Samples refused because their camera held [window] max_tracks persons",
                    Counter,
                    e.refused,
                ),
                (
                    "affectd_encoder_queued_samples",
                    "Samples waiting in the encoder's queue",
                    Gauge,
                    e.queued as u64,
                ),
                (
                    "affectd_encoder_persons",
                    "Persons (track windows) the encoder holds",
                    Gauge,
                    e.persons,
                ),
                (
                    "affectd_encoder_windows",
                    "Windows embedded and read out (one person result each)",
                    Counter,
                    e.windows,
                ),
                (
                    "affectd_encoder_failures",
                    "Encoder batches whose forward failed (their samples are dropped)",
                    Counter,
                    e.failures,
                ),
            ]);
        }
        if let Some(c) = &self.capture {
            scalars.extend([
                (
                    "affectd_capture_windows_written",
                    "Windows stored in the capture dataset",
                    Counter,
                    c.written,
                ),
                (
                    "affectd_capture_windows_dropped",
                    "Windows dropped because the capture writer was behind",
                    Counter,
                    c.dropped,
                ),
            ]);
        }
        let m = &self.mqtt;
        scalars.extend([
            (
                "affectd_mqtt_connected",
                "1 while connected to the broker",
                Gauge,
                u64::from(self.mqtt_connected),
            ),
            (
                "affectd_mqtt_reconnects",
                "Connections to the broker after the first one",
                Counter,
                m.connects.saturating_sub(1),
            ),
            (
                "affectd_mqtt_connection_errors",
                "Failed connection attempts and broken connections",
                Counter,
                m.connection_errors,
            ),
            (
                "affectd_mqtt_outbox_messages",
                "Messages waiting in the outbox to be handed to the broker",
                Gauge,
                m.queued as u64,
            ),
            (
                "affectd_mqtt_outbox_dropped",
                "Results dropped from the full outbox (oldest first)",
                Counter,
                m.dropped,
            ),
            (
                "affectd_mqtt_messages_acknowledged",
                "Messages the broker acknowledged (QoS 0: written to the socket)",
                Counter,
                m.acked,
            ),
        ]);
        for (name, help, kind, value) in scalars {
            family(o, name, help, kind, one(value))?;
        }
        family(
            o,
            "affectd_stage_heartbeat_age_seconds",
            "Time since the stage's last heartbeat (the watchdog wants it below [service] stage_stall_s)",
            Gauge,
            self.beats
                .iter()
                .map(|(stage, age)| (vec![("stage", stage.as_str())], age.as_secs_f64())),
        )
    }
}
