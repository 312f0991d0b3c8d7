//! `[window]`: how per-track clips are sampled and how many are kept.

use serde::Deserialize;

use crate::config::{ConfigError, check_range};

/// `[window]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Frames per person window: must equal the model's `video_len` (8 for EmotionCLIP).
    #[serde(default = "default_length")]
    pub length: usize,
    /// Sample every n-th frame in which the track is seen (1 = every one).
    #[serde(default = "default_stride")]
    pub stride: u32,
    /// Frames a track must have existed before its window starts filling.
    #[serde(default = "default_min_track_age")]
    pub min_track_age: u32,
    /// Most person windows per camera (bounds the encoder's memory); samples of tracks beyond
    /// it are dropped (counted) until a window frees.
    #[serde(default = "default_max_tracks")]
    pub max_tracks: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            length: default_length(),
            stride: default_stride(),
            min_track_age: default_min_track_age(),
            max_tracks: default_max_tracks(),
        }
    }
}

impl WindowConfig {
    /// Checks values; `key` is the section's name (`window`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_range(&format!("{key}.length"), self.length, 1, 256)?;
        check_range(&format!("{key}.stride"), self.stride, 1, 1000)?;
        check_range(
            &format!("{key}.min_track_age"),
            self.min_track_age,
            0,
            100_000,
        )?;
        check_range(&format!("{key}.max_tracks"), self.max_tracks, 1, 1000)?;
        Ok(())
    }
}

const fn default_length() -> usize {
    8
}
const fn default_stride() -> u32 {
    1
}
const fn default_min_track_age() -> u32 {
    0
}
const fn default_max_tracks() -> usize {
    16
}
