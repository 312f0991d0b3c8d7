//! The Prometheus metrics.
//!
//! Two kinds, one exposition: events are counted and timed where they happen, by the stage's
//! thread, through the handles below ([`AnalyticsMetrics`], [`EncoderMetrics`],
//! [`ResultMetrics`]: prometheus-client atomics, cheap on a hot path, created once in
//! [`Metrics::new`]); values the stages already keep (camera status, queue lengths, publisher
//! and encoder counters, heartbeats) are read at scrape time by a collector
//! (`sources.rs`). This file imports no stage: stages depend on it, not the reverse.
//!
//! Names follow the Prometheus conventions: `affectd_` prefix, base units in the name
//! (`_seconds`), counters end in `_total` (the encoder appends it to the names registered
//! here). Exposition is the Prometheus text format 0.0.4, which `promtool check metrics`
//! reads (prometheus-client's OpenMetrics text names a counter's family without `_total`,
//! which promtool reports as a counter without help).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::ModelId;
use crate::types::CameraId;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets (seconds) of a person message: a window's last frame to MQTT.
const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraLabel {
    camera: CameraId,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    name: String,
    weights: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    features: &'static str,
}

/// Which stages run, so that only their metrics are exposed.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// `[detect]`: detector runs and tracks.
    pub analytics: bool,
    /// `[model]`: encoder batches, the model, person messages.
    pub encoder: bool,
}

/// Every event metric, registered once; shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    pub analytics: AnalyticsMetrics,
    pub encoder: EncoderMetrics,
    pub results: ResultMetrics,
    pub view: ViewMetrics,
}

impl Metrics {
    /// Registers `affectd_build_info` and the metrics of the stages that run. The handles of
    /// the others still count, unseen.
    pub fn new(running: Running) -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                features: FEATURES,
            })
            .set(1);
        registry.register(
            "affectd_build_info",
            "The running build: version and GPU cargo features (value 1)",
            build,
        );
        let (analytics, encoder, results) = Default::default();
        let view = ViewMetrics::default();
        view.register(&mut registry);
        if running.analytics {
            AnalyticsMetrics::register(&analytics, &mut registry);
        }
        if running.encoder {
            EncoderMetrics::register(&encoder, &mut registry);
            ResultMetrics::register(&results, &mut registry);
        }
        Self {
            registry,
            analytics,
            encoder,
            results,
            view,
        }
    }

    /// The exposition: every registered metric, then what `scraped` reads now.
    pub fn encode(&self, scraped: impl Collector) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::prometheus_text::encode;
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry)?;
        let mut now = Registry::default();
        now.register_collector(Box::new(scraped));
        encode(&mut out, &now)?;
        Ok(out)
    }

    /// The model the encoder serves now (`None` without `[model]`).
    pub fn model(&self) -> Option<ModelId> {
        self.encoder.current.lock().clone()
    }
}

/// The GPU cargo features this binary was built with, comma-separated (`none` without).
const FEATURES: &str = if cfg!(all(feature = "cuda", feature = "tensorrt")) {
    "cuda,tensorrt"
} else if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "tensorrt") {
    "tensorrt"
} else {
    "none"
};

/// The analytics thread's events: detector batches, track begins and ends.
#[derive(Clone)]
pub struct AnalyticsMetrics {
    detector_seconds: Histogram,
    detector_frames: Histogram,
    detector_failures: Counter,
    begun: Family<CameraLabel, Counter>,
    ended: Family<CameraLabel, Counter>,
    active: Family<CameraLabel, Gauge>,
}

impl Default for AnalyticsMetrics {
    fn default() -> Self {
        Self {
            detector_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            detector_frames: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            detector_failures: Counter::default(),
            begun: Family::default(),
            ended: Family::default(),
            active: Family::default(),
        }
    }
}

impl AnalyticsMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "affectd_detector_batch_duration_seconds",
            "Time of one detector run over the frames taken from every camera at once",
            self.detector_seconds.clone(),
        );
        r.register(
            "affectd_detector_batch_frames",
            "Frames per detector run",
            self.detector_frames.clone(),
        );
        r.register(
            "affectd_detector_failures",
            "Detector runs that failed (their frames are dropped)",
            self.detector_failures.clone(),
        );
        r.register(
            "affectd_tracks_begun",
            "Tracks confirmed (track begin events)",
            self.begun.clone(),
        );
        r.register(
            "affectd_tracks_ended",
            "Tracks ended (unseen for [track] lost_frames, or at shutdown)",
            self.ended.clone(),
        );
        r.register(
            "affectd_tracks_active",
            "Tracks begun and not yet ended",
            self.active.clone(),
        );
    }

    /// One detector run over `frames` frames that took `took` (failed or not).
    pub fn detector_run(&self, frames: usize, took: Duration, ok: bool) {
        self.detector_seconds.observe(took.as_secs_f64());
        self.detector_frames.observe(frames as f64);
        if !ok {
            self.detector_failures.inc();
        }
    }

    pub fn track_begun(&self, camera: &CameraId) {
        let label = CameraLabel {
            camera: camera.clone(),
        };
        self.begun.get_or_create(&label).inc();
        self.active.get_or_create(&label).inc();
    }

    pub fn track_ended(&self, camera: &CameraId) {
        let label = CameraLabel {
            camera: camera.clone(),
        };
        self.ended.get_or_create(&label).inc();
        self.active.get_or_create(&label).dec();
    }
}

/// The debug view's work: open streams, frames drawn and encoded (zero with no viewer).
#[derive(Clone)]
pub struct ViewMetrics {
    pub(super) streams: Gauge,
    frames: Counter,
    encode_seconds: Histogram,
}

impl Default for ViewMetrics {
    fn default() -> Self {
        Self {
            streams: Gauge::default(),
            frames: Counter::default(),
            encode_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 10)),
        }
    }
}

impl ViewMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "affectd_view_streams",
            "Open MJPEG streams of the debug view",
            self.streams.clone(),
        );
        r.register(
            "affectd_view_frames_encoded",
            "Frames the debug view drew and JPEG-encoded (snapshots and streams; one per frame however many viewers)",
            self.frames.clone(),
        );
        r.register(
            "affectd_view_encode_duration_seconds",
            "Time to draw and JPEG-encode one frame of the debug view",
            self.encode_seconds.clone(),
        );
    }

    /// One frame drawn and encoded in `took`.
    pub fn encoded(&self, took: Duration) {
        self.frames.inc();
        self.encode_seconds.observe(took.as_secs_f64());
    }
}

/// The encoder thread's events: batches, and the model it serves.
#[derive(Clone)]
pub struct EncoderMetrics {
    batch_seconds: Histogram,
    batch_samples: Histogram,
    model: Family<ModelLabels, Gauge>,
    current: Arc<Mutex<Option<ModelId>>>,
}

impl Default for EncoderMetrics {
    fn default() -> Self {
        Self {
            batch_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            batch_samples: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            model: Family::default(),
            current: Arc::default(),
        }
    }
}

impl EncoderMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "affectd_encoder_batch_duration_seconds",
            "Time of one encoder step over a batch of samples: crops, the frame encoder, and the temporal encoder over the windows it completes",
            self.batch_seconds.clone(),
        );
        r.register(
            "affectd_encoder_batch_samples",
            "Person samples taken from the queue per encoder step",
            self.batch_samples.clone(),
        );
        r.register(
            "affectd_model_info",
            "The model the encoder serves: name and weights digest (value 1)",
            self.model.clone(),
        );
    }

    /// One encoder step over `samples` person samples that took `took`.
    pub fn batch(&self, samples: usize, took: Duration) {
        self.batch_seconds.observe(took.as_secs_f64());
        self.batch_samples.observe(samples as f64);
    }

    /// The encoder serves `id` from now on (start, reload).
    pub fn serving(&self, id: &ModelId) {
        let mut current = self.current.lock();
        self.model.clear();
        self.model
            .get_or_create(&ModelLabels {
                name: id.name.clone(),
                weights: id.weights.clone(),
            })
            .set(1);
        *current = Some(id.clone());
    }
}

/// Results handed to MQTT.
#[derive(Clone)]
pub struct ResultMetrics {
    persons: Family<CameraLabel, Counter>,
    latency: Histogram,
}

impl Default for ResultMetrics {
    fn default() -> Self {
        Self {
            persons: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl ResultMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "affectd_person_messages",
            "Person messages handed to MQTT (queued in the outbox)",
            self.persons.clone(),
        );
        r.register(
            "affectd_person_latency_seconds",
            "From a window's last frame leaving the decoder to its person message being handed to MQTT",
            self.latency.clone(),
        );
    }

    /// A person message of `camera` was handed to MQTT, `latency` after its last frame.
    pub fn person_published(&self, camera: &CameraId, latency: Duration) {
        self.persons
            .get_or_create(&CameraLabel {
                camera: camera.clone(),
            })
            .inc();
        self.latency.observe(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(
            &self,
            _: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }

    #[test]
    fn events_appear_under_their_conventional_names() {
        let m = Metrics::new(Running {
            analytics: true,
            encoder: true,
        });
        let cam: CameraId = "walkway".into();
        m.analytics.detector_run(2, Duration::from_millis(40), true);
        m.analytics.track_begun(&cam);
        m.analytics.track_begun(&cam);
        m.analytics.track_ended(&cam);
        m.encoder.batch(8, Duration::from_millis(900));
        m.encoder.serving(&ModelId::new("a", None));
        m.encoder
            .serving(&ModelId::new("b", Some("00ff00ff00ff00ff")));
        m.results.person_published(&cam, Duration::from_millis(700));
        let text = m.encode(Nothing).unwrap();
        for line in [
            "# TYPE affectd_tracks_begun_total counter",
            "affectd_tracks_begun_total{camera=\"walkway\"} 2",
            "affectd_tracks_active{camera=\"walkway\"} 1",
            "affectd_detector_batch_duration_seconds_bucket{le=\"0.04\"} 1",
            "affectd_encoder_batch_samples_sum 8.0",
            "affectd_person_messages_total{camera=\"walkway\"} 1",
            "affectd_person_latency_seconds_bucket{le=\"1\"} 1",
            "affectd_model_info{name=\"b\",weights=\"sha256:00ff00ff00ff00ff\"} 1",
            "affectd_detector_failures_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(text.contains("affectd_build_info{version=\""), "{text}");
        assert!(
            !text.contains("name=\"a\""),
            "the replaced model is gone:\n{text}"
        );
        assert_eq!(m.model().unwrap().name, "b");

        let ingest_only = Metrics::new(Running {
            analytics: false,
            encoder: false,
        });
        ingest_only.analytics.track_begun(&cam);
        let text = ingest_only.encode(Nothing).unwrap();
        // The build, and the debug view's (which every HTTP server has).
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("affectd_view_"))
                .count(),
            1,
            "{text}"
        );
    }
}
