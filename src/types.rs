//! What flows between the pipeline's stages.
//!
//! Stages own their internals; only the values here cross a stage boundary.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A camera's id as written in the config (`[[camera]] id`). Cheap to clone.
pub type CameraId = Arc<str>;

/// One decoded RGB frame, as ingest hands it to the analytics.
///
/// Pixels are packed RGB, 3 bytes per pixel, rows `width * 3` bytes apart (ingest removes any
/// GStreamer stride padding). The pixel buffer is shared: a frame referenced by the detector,
/// several track windows and the encoder is stored once.
#[derive(Clone)]
pub struct Frame {
    pub camera: CameraId,
    /// Per-camera sequence number of delivered frames, starting at 0 for each pipeline start.
    pub seq: u64,
    /// Stream running time of the buffer (GStreamer PTS), when the source gave one.
    pub pts: Option<Duration>,
    /// Wall-clock time at which the frame left the decoder.
    pub wall: SystemTime,
    pub width: u32,
    pub height: u32,
    pub rgb: Arc<[u8]>,
}

impl Frame {
    /// The RGB triple at (x, y); `None` outside the frame.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera", &self.camera)
            .field("seq", &self.seq)
            .field("pts", &self.pts)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// An axis-aligned box in pixel coordinates of some image: (x1, y1) top-left, (x2, y2)
/// bottom-right, x2 >= x1 and y2 >= y1.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub const fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union; 0 when either box is empty.
    pub fn iou(&self, other: &BBox) -> f32 {
        let ix = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let iy = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// The box clamped into a `width` x `height` image.
    pub fn clamped(&self, width: f32, height: f32) -> BBox {
        BBox {
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
            x2: self.x2.clamp(0.0, width),
            y2: self.y2.clamp(0.0, height),
        }
    }
}

/// One detected person in frame pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub bbox: BBox,
    pub score: f32,
}

/// A tracked person is known by its camera and its per-camera track id (never reused).
pub type TrackKey = (CameraId, u64);

/// One person in one sampled frame: what the analytics hand the encoder.
#[derive(Debug, Clone)]
pub struct PersonSample {
    pub frame: Frame,
    pub track_id: u64,
    /// The person's box in frame pixels.
    pub bbox: BBox,
}

/// Where a camera's pipeline stands, as published on `affectd/<node>/<camera>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Pipeline built, not yet delivering frames.
    Starting,
    /// Frames are arriving.
    Streaming,
    /// The source died or stalled; a restart is scheduled with backoff.
    Reconnecting,
    /// The camera cannot run (bad pipeline, missing plugin, finished file without looping).
    Failed,
}

/// A camera's health, updated by ingest and read by the status publisher.
#[derive(Clone, Debug, Serialize)]
pub struct CameraStatus {
    pub state: CameraState,
    /// Frames delivered per second over the last measurement interval.
    pub fps: f32,
    /// Frames dropped because the analytics were slower than the camera (oldest first).
    pub frames_dropped: u64,
    /// Pipeline restarts since the daemon started.
    pub restarts: u64,
    /// The last error seen on this camera, if any.
    pub last_error: Option<String>,
    /// When `state` last changed (RFC 3339, UTC).
    pub since: String,
}

impl CameraStatus {
    pub fn starting() -> Self {
        Self {
            state: CameraState::Starting,
            fps: 0.0,
            frames_dropped: 0,
            restarts: 0,
            last_error: None,
            since: now_rfc3339(),
        }
    }
}

/// The current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-22T10:00:00.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A wall-clock time as RFC 3339 with milliseconds (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(BBox::default().iou(&BBox::default()), 0.0);
    }

    #[test]
    fn clamping_keeps_boxes_inside_the_image() {
        let b = BBox::new(-5.0, 3.0, 700.0, 900.0).clamped(640.0, 480.0);
        assert_eq!(b, BBox::new(0.0, 3.0, 640.0, 480.0));
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
    }
}
