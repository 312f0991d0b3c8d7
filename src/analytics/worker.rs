//! The analytics thread: the one consumer of every camera's frame queue.
//!
//! Per wake-up it takes every frame waiting (from all cameras), runs the detector over them
//! in one batch, advances each camera's tracker, reports track begins and ends, and hands
//! each person the [`Sampler`] picks to the encoder stage. It keeps no per-person state of
//! its own: the trackers own the tracks, the encoder stage the windows. Without a `[detect]`
//! section it only drains the queues (ingest and status only).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::detect::Detector;
use crate::encode::EncoderSender;
use crate::health::Beat;
use crate::ingest::FrameHub;
use crate::observe::AnalyticsMetrics;
use crate::results::{ResultSink, SpanEvent, TrackSpan};
use crate::track::{EndedTrack, TrackConfig, Tracker};
use crate::types::{CameraId, Detection, Frame, PersonSample};
use crate::window::{Sampler, WindowConfig};

/// How long the thread sleeps waiting for frames before it beats and looks at the stop token.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What the analytics thread runs besides draining frames.
pub struct Pipeline {
    pub detector: Detector,
    pub track: TrackConfig,
    pub window: WindowConfig,
    /// Where sampled persons and track endings go; `None` runs detection and tracking only.
    pub encoder: Option<EncoderSender>,
    pub results: Arc<dyn ResultSink>,
    /// Detector runs, track begins and ends.
    pub metrics: AnalyticsMetrics,
}

pub struct Analytics {
    stop: CancellationToken,
    thread: JoinHandle<()>,
}

impl Analytics {
    /// Starts the thread; it runs until `stop` is cancelled, then ends every open track.
    pub fn spawn(
        hub: FrameHub,
        pipeline: Option<Pipeline>,
        beat: Beat,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("analytics".into())
            .spawn(move || {
                let mut worker = pipeline.map(Worker::new);
                let mut frames = 0u64;
                while !token.is_cancelled() {
                    let batch = hub.next_batch(IDLE_WAKE);
                    beat.beat();
                    frames += batch.len() as u64;
                    if let Some(w) = worker.as_mut() {
                        w.process(&batch);
                    }
                }
                if let Some(w) = worker.as_mut() {
                    w.finish();
                }
                debug!(frames, "analytics stopped");
            })?;
        Ok(Analytics { stop, thread })
    }

    /// Asks the thread to finish (ending every track) and waits for it.
    pub fn stop(self) {
        self.stop.cancel();
        let _ = self.thread.join();
    }
}

struct CameraState {
    tracker: Tracker,
    /// The camera's frame size, for the boxes of track events.
    size: (u32, u32),
}

struct Worker {
    pipeline: Pipeline,
    sampler: Sampler,
    cameras: HashMap<CameraId, CameraState>,
    failures: u64,
}

impl Worker {
    fn new(pipeline: Pipeline) -> Self {
        Self {
            sampler: Sampler::new(&pipeline.window),
            pipeline,
            cameras: HashMap::new(),
            failures: 0,
        }
    }

    fn process(&mut self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        let refs: Vec<&Frame> = frames.iter().collect();
        let t0 = Instant::now();
        let run = self.pipeline.detector.run(&refs);
        let metrics = &self.pipeline.metrics;
        metrics.detector_run(frames.len(), t0.elapsed(), run.is_ok());
        let detections = match run {
            Ok(d) => d,
            Err(e) => {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    warn!(error = %e, failures = self.failures, "detector failed; frames dropped");
                }
                return;
            }
        };
        for (frame, dets) in frames.iter().zip(&detections) {
            self.track(frame, dets);
        }
    }

    fn track(&mut self, frame: &Frame, dets: &[Detection]) {
        let track = &self.pipeline.track;
        let state = self
            .cameras
            .entry(frame.camera.clone())
            .or_insert_with(|| CameraState {
                tracker: Tracker::new(track.clone()),
                size: (frame.width, frame.height),
            });
        state.size = (frame.width, frame.height);
        let update = state.tracker.update(dets, frame.wall);
        let size = state.size;

        for t in update
            .active
            .iter()
            .filter(|t| update.started.contains(&t.id))
        {
            self.pipeline.metrics.track_begun(&frame.camera);
            self.pipeline.results.track(TrackSpan {
                camera: frame.camera.clone(),
                track_id: t.id,
                event: SpanEvent::Begin,
                bbox: t.bbox,
                frame_size: size,
                first_seen: t.first_seen,
                last_seen: frame.wall,
            });
        }
        // Samples before endings: a track's samples all precede its end.
        if let Some(encoder) = &self.pipeline.encoder {
            for (track_id, bbox) in self.sampler.pick(&update, dets) {
                encoder.sample(PersonSample {
                    frame: frame.clone(),
                    track_id,
                    bbox,
                });
            }
        }
        for ended in &update.ended {
            self.end(&frame.camera, ended, size);
        }
    }

    /// A track ended: the encoder finishes it (its last window, then the `end` event), or,
    /// without one, the event goes out at once.
    fn end(&self, camera: &CameraId, track: &EndedTrack, size: (u32, u32)) {
        let span = TrackSpan {
            camera: camera.clone(),
            track_id: track.id,
            event: SpanEvent::End,
            bbox: track.bbox,
            frame_size: size,
            first_seen: track.first_seen,
            last_seen: track.last_seen,
        };
        self.pipeline.metrics.track_ended(camera);
        match &self.pipeline.encoder {
            Some(encoder) => encoder.track_ended(span),
            None => self.pipeline.results.track(span),
        }
    }

    /// Ends every open track (shutdown), before the encoder and MQTT are stopped.
    fn finish(&mut self) {
        let ended: Vec<(CameraId, EndedTrack, (u32, u32))> = self
            .cameras
            .iter_mut()
            .flat_map(|(camera, state)| {
                let size = state.size;
                state
                    .tracker
                    .finish()
                    .into_iter()
                    .map(move |t| (camera.clone(), t, size))
            })
            .collect();
        for (camera, track, size) in ended {
            self.end(&camera, &track, size);
        }
    }
}
