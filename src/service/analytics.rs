//! The analytics thread: the one consumer of every camera's frame queue.
//!
//! Per wake-up it takes every frame waiting (from all cameras), runs the detector over them,
//! advances each camera's tracker, publishes track begin/end events, samples the tracks'
//! windows and hands each sampled person to the encoder stage. Without a `[detect]` section
//! it only drains the queues (ingest and status only).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::health::Beat;
use crate::detect::Detector;
use crate::ingest::FrameHub;
use crate::model::{EncoderSender, PersonSample};
use crate::publish::{Publisher, TRACK_SCHEMA, TrackEvent, TrackEventKind, normalised_box};
use crate::track::{EndedTrack, TrackConfig, TrackId, Tracker};
use crate::types::{BBox, CameraId, Detection, Frame, rfc3339};
use crate::window::{WindowConfig, Windows};

/// How long the thread sleeps waiting for frames before it beats and looks at the stop flag.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What the analytics thread runs besides draining frames.
pub struct Pipeline {
    pub detector: Detector,
    pub track: TrackConfig,
    pub window: WindowConfig,
    /// Where sampled persons go; `None` runs detection and tracking only.
    pub encoder: Option<EncoderSender>,
    pub publisher: Publisher,
    pub node: String,
}

pub struct Analytics {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Analytics {
    pub fn spawn(hub: FrameHub, pipeline: Option<Pipeline>, beat: Beat) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("analytics".into())
            .spawn(move || {
                let mut worker = pipeline.map(Worker::new);
                let mut frames = 0u64;
                while !flag.load(Ordering::Relaxed) {
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
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// What a track event says about a track.
struct Span {
    id: TrackId,
    bbox: BBox,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

impl From<&EndedTrack> for Span {
    fn from(t: &EndedTrack) -> Self {
        Span {
            id: t.id,
            bbox: t.bbox,
            first_seen: t.first_seen,
            last_seen: t.last_seen,
        }
    }
}

struct CameraState {
    tracker: Tracker,
    windows: Windows,
    /// The camera's frame size, for normalising boxes.
    size: (u32, u32),
}

struct Worker {
    pipeline: Pipeline,
    cameras: HashMap<CameraId, CameraState>,
    failures: u64,
}

impl Worker {
    fn new(pipeline: Pipeline) -> Self {
        Self {
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
        let detections = match self.pipeline.detector.run(&refs) {
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
        let (track, window) = (&self.pipeline.track, &self.pipeline.window);
        let state = self
            .cameras
            .entry(frame.camera.clone())
            .or_insert_with(|| CameraState {
                tracker: Tracker::new(track.clone()),
                windows: Windows::new(window.clone()),
                size: (frame.width, frame.height),
            });
        state.size = (frame.width, frame.height);
        let update = state.tracker.update(dets, frame.wall);
        let sampled = state.windows.update(frame, &update, dets);
        // The box each sampled track contributes is the one its window entry just stored.
        let samples: Vec<(TrackId, BBox)> = sampled
            .into_iter()
            .filter_map(|id| {
                let newest = state.windows.entries(id)?.last()?;
                Some((id, newest.bbox))
            })
            .collect();
        let size = state.size;

        for t in update
            .active
            .iter()
            .filter(|t| update.started.contains(&t.id))
        {
            let span = Span {
                id: t.id,
                bbox: t.bbox,
                first_seen: t.first_seen,
                last_seen: frame.wall,
            };
            self.publish_event(&frame.camera, TrackEventKind::Begin, &span, size);
        }
        for ended in &update.ended {
            self.publish_event(&frame.camera, TrackEventKind::End, &ended.into(), size);
            if let Some(encoder) = &self.pipeline.encoder {
                encoder.track_ended((frame.camera.clone(), ended.id));
            }
        }
        if let Some(encoder) = &self.pipeline.encoder {
            for (track_id, bbox) in samples {
                encoder.sample(PersonSample {
                    frame: frame.clone(),
                    track_id,
                    bbox,
                });
            }
        }
    }

    /// Ends every open track (shutdown): their `end` events go out before MQTT is flushed.
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
            self.publish_event(&camera, TrackEventKind::End, &(&track).into(), size);
        }
    }

    fn publish_event(
        &self,
        camera: &CameraId,
        kind: TrackEventKind,
        span: &Span,
        size: (u32, u32),
    ) {
        let event = TrackEvent {
            schema: TRACK_SCHEMA,
            node: self.pipeline.node.clone(),
            camera: camera.to_string(),
            track_id: span.id,
            event: kind,
            time: rfc3339(SystemTime::now()),
            first_seen: rfc3339(span.first_seen),
            last_seen: rfc3339(span.last_seen),
            bbox: normalised_box(&span.bbox, size.0, size.1),
        };
        let publisher = &self.pipeline.publisher;
        let topic = publisher.topics().under(&format!("{camera}/tracks"));
        match serde_json::to_vec(&event) {
            Ok(payload) => {
                if let Err(e) = publisher.publish(topic, payload) {
                    debug!(error = %e, "track event not queued");
                }
            }
            Err(e) => debug!(error = %e, "track event not serialisable"),
        }
    }
}
