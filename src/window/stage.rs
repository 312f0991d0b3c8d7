//! The person stage as the analytics thread drives it: one detector run per batch of frames
//! (from any cameras), then each camera's tracker and windows.

use std::collections::HashMap;

use crate::detect::{self, DetectConfig, Detector};
use crate::track::{EndedTrack, TrackConfig, TrackId, TrackUpdate, Tracker};
use crate::types::{CameraId, Detection, Frame};

use super::config::WindowConfig;
use super::store::Windows;

/// What one frame produced.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub camera: CameraId,
    pub seq: u64,
    /// Persons in frame pixels, best first.
    pub detections: Vec<Detection>,
    /// Confirmed tracks seen in this frame, tracks confirmed now, tracks that ended now.
    pub tracks: TrackUpdate,
    /// Tracks whose window got this frame.
    pub sampled: Vec<TrackId>,
}

struct Camera<F> {
    tracker: Tracker,
    windows: Windows<F>,
}

/// Detector + per-camera trackers + per-camera windows. `F` is the encoder's per-entry
/// feature type (see [`super::Entry::features`]).
pub struct PersonStage<F = ()> {
    detector: Detector,
    track: TrackConfig,
    window: WindowConfig,
    cameras: HashMap<CameraId, Camera<F>>,
}

impl<F> PersonStage<F> {
    /// Opens the detector (seconds; minutes for a first TensorRT build).
    pub fn new(
        detect: &DetectConfig,
        track: TrackConfig,
        window: WindowConfig,
    ) -> Result<Self, detect::Error> {
        Ok(Self {
            detector: Detector::new(detect)?,
            track,
            window,
            cameras: HashMap::new(),
        })
    }

    /// Runs a batch of frames (several cameras may share it) through detection, tracking and
    /// windowing; results come back in the frames' order. Frames of one camera must arrive in
    /// order.
    pub fn process(&mut self, frames: &[Frame]) -> Result<Vec<FrameResult>, detect::Error> {
        let refs: Vec<&Frame> = frames.iter().collect();
        let dets = self.detector.run(&refs)?;
        let mut out = Vec::with_capacity(frames.len());
        for (frame, detections) in frames.iter().zip(dets) {
            let cam = self
                .cameras
                .entry(frame.camera.clone())
                .or_insert_with(|| Camera {
                    tracker: Tracker::new(self.track.clone()),
                    windows: Windows::new(self.window.clone()),
                });
            let tracks = cam.tracker.update(&detections, frame.wall);
            let sampled = cam.windows.update(frame, &tracks, &detections);
            out.push(FrameResult {
                camera: frame.camera.clone(),
                seq: frame.seq,
                detections,
                tracks,
                sampled,
            });
        }
        Ok(out)
    }

    /// A camera's windows, for the encoder.
    pub fn windows(&mut self, camera: &str) -> Option<&mut Windows<F>> {
        self.cameras.get_mut(camera).map(|c| &mut c.windows)
    }

    /// Ends a camera's tracks (its stream ended or restarted) and frees their windows.
    pub fn finish(&mut self, camera: &str) -> Vec<EndedTrack> {
        self.cameras
            .remove(camera)
            .map(|mut c| c.tracker.finish())
            .unwrap_or_default()
    }

    /// The detector, for its counters and manifest.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }
}
