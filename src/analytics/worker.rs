//! The analytics thread: the one consumer of every camera's frame queue.
//!
//! Per wake-up it takes every frame waiting (from all cameras), runs the detector over them
//! in one batch, advances each camera's tracker, reports track begins and ends, and hands
//! each person the [`Sampler`] picks to the encoder stage. It keeps no per-person state of
//! its own: the trackers own the tracks, the encoder stage the windows. Without a `[detect]`
//! section it only drains the queues (ingest and status only). While someone watches a
//! camera's debug view it also offers that camera's frames with their tracks to the view
//! (a pointer copy; the drawing is done elsewhere).
//!
//! Liveness: the thread beats (stage `analytics`) after each wake-up that made progress: a
//! batch the detector ran, or an idle one (no frame waited `IDLE_WAKE`) while its last run
//! succeeded. A detector that fails on every batch never beats again, even between frames,
//! so the watchdog stops after `[service] stage_stall_s`;
//! consecutive failures are counted and logged at powers of two.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::detect::Detector;
use crate::encode::EncoderSender;
use crate::health::Beat;
use crate::ingest::FrameHub;
use crate::observe::{AnalyticsMetrics, Scene, ViewTap};
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
    /// Disconnected when the thread ends.
    done: crossbeam_channel::Receiver<()>,
}

impl Analytics {
    /// Starts the thread; it runs until `stop` is cancelled, then ends every open track.
    pub fn spawn(
        hub: FrameHub,
        pipeline: Option<Pipeline>,
        view: Arc<ViewTap>,
        beat: Beat,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let token = stop.clone();
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("analytics".into())
            .spawn(move || {
                let _done = done_tx;
                let mut worker = pipeline.map(|p| Worker::new(p, Arc::clone(&view)));
                let mut frames = 0u64;
                while !token.is_cancelled() {
                    let batch = hub.next_batch(IDLE_WAKE);
                    frames += batch.len() as u64;
                    let progress = match worker.as_mut() {
                        Some(w) => w.process(&batch),
                        None => {
                            offer_untracked(&view, &batch);
                            true
                        }
                    };
                    if progress {
                        beat.beat();
                    }
                }
                if let Some(w) = worker.as_mut() {
                    w.finish();
                }
                debug!(frames, "analytics stopped");
            })?;
        Ok(Analytics { stop, thread, done })
    }

    /// Asks the thread to finish (ending every track) and waits up to `timeout` for it; a
    /// thread still busy then (a detector run that does not return) is logged and left.
    pub fn stop(self, timeout: Duration) {
        self.stop.cancel();
        match self.done.recv_timeout(timeout) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => warn!(
                timeout_ms = timeout.as_millis() as u64,
                "the analytics thread did not stop in time; open tracks may not have ended"
            ),
        }
    }
}

/// Without a detector the view shows the frames as they are.
fn offer_untracked(view: &ViewTap, frames: &[Frame]) {
    for frame in frames.iter().filter(|f| view.watched(&f.camera)) {
        view.offer(Scene {
            frame: frame.clone(),
            boxes: Vec::new(),
        });
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
    /// Detector runs failed in a row.
    failures: u64,
    /// The debug view: offered each tracked frame while someone watches its camera.
    view: Arc<ViewTap>,
}

impl Worker {
    fn new(pipeline: Pipeline, view: Arc<ViewTap>) -> Self {
        Self {
            sampler: Sampler::new(&pipeline.window),
            pipeline,
            cameras: HashMap::new(),
            failures: 0,
            view,
        }
    }

    /// Detects and tracks one batch; false when the detector failed (no progress). An idle
    /// wake-up is progress only while the detector's last run succeeded: a detector failing
    /// every batch must not be kept alive by the pauses between frames (a low `fps`, a slow
    /// source).
    fn process(&mut self, frames: &[Frame]) -> bool {
        if frames.is_empty() {
            return self.failures == 0;
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
                    warn!(error = %e, failures_in_a_row = self.failures, "detector failed; frames dropped (the analytics stop beating while it fails)");
                }
                return false;
            }
        };
        if self.failures > 0 {
            info!(failed_before = self.failures, "detector runs again");
            self.failures = 0;
        }
        for (frame, dets) in frames.iter().zip(&detections) {
            self.track(frame, dets);
        }
        true
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
        if self.view.watched(&frame.camera) {
            self.view.offer(Scene {
                frame: frame.clone(),
                boxes: update.active.iter().map(|t| (t.id, t.bbox)).collect(),
            });
        }

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
