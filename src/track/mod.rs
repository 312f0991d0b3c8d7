//! Track: ByteTrack-style multi-person tracking, one [`Tracker`] per camera.
//!
//! Written here rather than taken from `similari` (0.26.2): its crates.io release dates from
//! 2023, always pulls pyo3 0.18 into the build, and brings a general tracking framework
//! (SORT/Visual SORT, its own box types, thread pools) when this daemon needs one small,
//! allocation-light loop over a few dozen boxes per frame. ByteTrack itself (Zhang et al., ECCV
//! 2022) is short: a Kalman constant-velocity filter, IoU costs, optimal assignment of high-score
//! detections first and of low-score ones to the remaining tracks second.

mod assign;
mod config;
mod kalman;
mod tracker;

pub use assign::{FORBIDDEN, assign};
pub use config::TrackConfig;
pub use kalman::Kalman;
pub use tracker::{EndedTrack, Track, TrackId, TrackUpdate, Tracker};
