//! `[track]`: the multi-person tracker's thresholds and buffers.

use serde::Deserialize;

use crate::config::{ConfigError, check_range};

/// `[track]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackConfig {
    /// Detections scoring at least this are "high": they are matched first and may start tracks.
    #[serde(default = "default_high_score")]
    pub high_score: f32,
    /// Detections between this and `high_score` only keep existing tracks alive (second stage).
    /// Note that `[detect] confidence` already drops anything below it.
    #[serde(default = "default_low_score")]
    pub low_score: f32,
    /// A detection unmatched by any track starts a new one when it scores at least this.
    #[serde(default = "default_new_track_score")]
    pub new_track_score: f32,
    /// First stage: least IoU between a track's predicted box and a high detection.
    #[serde(default = "default_match_iou")]
    pub match_iou: f32,
    /// Second stage: least IoU between a track's predicted box and a low detection.
    #[serde(default = "default_low_match_iou")]
    pub low_match_iou: f32,
    /// Least IoU for a tentative track to take a detection.
    #[serde(default = "default_tentative_match_iou")]
    pub tentative_match_iou: f32,
    /// Consecutive matched frames before a tentative track is confirmed and gets an id.
    #[serde(default = "default_confirm_frames")]
    pub confirm_frames: u32,
    /// Frames a confirmed track may go unseen (occlusion) before it ends.
    #[serde(default = "default_lost_frames")]
    pub lost_frames: u32,
    /// Most live tracks per camera; further detections start no track.
    #[serde(default = "default_max_tracks")]
    pub max_tracks: usize,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self {
            high_score: default_high_score(),
            low_score: default_low_score(),
            new_track_score: default_new_track_score(),
            match_iou: default_match_iou(),
            low_match_iou: default_low_match_iou(),
            tentative_match_iou: default_tentative_match_iou(),
            confirm_frames: default_confirm_frames(),
            lost_frames: default_lost_frames(),
            max_tracks: default_max_tracks(),
        }
    }
}

impl TrackConfig {
    /// Checks values; `key` is the section's name (`track`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_range(&format!("{key}.high_score"), self.high_score, 0.0, 1.0)?;
        check_range(
            &format!("{key}.low_score"),
            self.low_score,
            0.0,
            self.high_score,
        )?;
        check_range(
            &format!("{key}.new_track_score"),
            self.new_track_score,
            0.0,
            1.0,
        )?;
        check_range(&format!("{key}.match_iou"), self.match_iou, 0.01, 1.0)?;
        check_range(
            &format!("{key}.low_match_iou"),
            self.low_match_iou,
            0.01,
            1.0,
        )?;
        check_range(
            &format!("{key}.tentative_match_iou"),
            self.tentative_match_iou,
            0.01,
            1.0,
        )?;
        check_range(
            &format!("{key}.confirm_frames"),
            self.confirm_frames,
            1,
            100,
        )?;
        check_range(&format!("{key}.lost_frames"), self.lost_frames, 0, 10_000)?;
        check_range(&format!("{key}.max_tracks"), self.max_tracks, 1, 10_000)?;
        Ok(())
    }
}

const fn default_high_score() -> f32 {
    0.5
}
const fn default_low_score() -> f32 {
    0.1
}
const fn default_new_track_score() -> f32 {
    0.6
}
const fn default_match_iou() -> f32 {
    0.2
}
const fn default_low_match_iou() -> f32 {
    0.5
}
const fn default_tentative_match_iou() -> f32 {
    0.3
}
const fn default_confirm_frames() -> u32 {
    3
}
const fn default_lost_frames() -> u32 {
    30
}
const fn default_max_tracks() -> usize {
    256
}
