//! Results: what leaves the pipeline, as domain values, and the sink they go to. The encoder
//! stage reports each person's affect per window and each track's end; the analytics report
//! track begins; `publish` turns them into messages.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::ModelId;
use crate::readout::{Affect, ReadoutSource};
use crate::types::{BBox, CameraId, TrackKey};

/// A track begins (confirmed) or ends (removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanEvent {
    Begin,
    End,
}

/// What the analytics say about a track when it begins or ends.
#[derive(Debug, Clone)]
pub struct TrackSpan {
    pub camera: CameraId,
    pub track_id: u64,
    pub event: SpanEvent,
    /// The track's last box in frame pixels, and the frame's size.
    pub bbox: BBox,
    pub frame_size: (u32, u32),
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

impl TrackSpan {
    pub fn key(&self) -> TrackKey {
        (self.camera.clone(), self.track_id)
    }
}

/// A person's affect after a window update: what the encoder stage hands to publish.
#[derive(Debug, Clone)]
pub struct PersonAffect {
    pub camera: CameraId,
    pub track_id: u64,
    /// Wall time of the window's first and last frame, and its frame count.
    pub start: SystemTime,
    pub end: SystemTime,
    pub frames: usize,
    /// The person's box in the window's last frame, and that frame's size.
    pub bbox: BBox,
    pub frame_size: (u32, u32),
    /// Class names, in the order of `affect.scores`.
    pub classes: Arc<[String]>,
    /// Smoothed scores and valence/arousal.
    pub affect: Affect,
    pub source: ReadoutSource,
    pub model: ModelId,
    /// The un-normalised video embedding, when `[model] include_embedding`.
    pub embedding: Option<Vec<f32>>,
}

/// Where results leave the pipeline (publish implements it over MQTT). Never blocks.
pub trait ResultSink: Send + Sync {
    fn person(&self, affect: PersonAffect);
    fn track(&self, span: TrackSpan);
}
