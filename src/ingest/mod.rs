//! Ingest: GStreamer sources -> RGB [`Frame`](crate::types::Frame)s at a set rate.
//!
//! Each enabled camera gets a pipeline built from a template in `pipelines/` (user values set
//! as element properties, never pasted into launch text) and a supervisor thread that restarts
//! it with exponential backoff when it errors, stalls or ends. Frames go into a bounded
//! drop-oldest queue per camera; one consumer waits on all of them through a [`FrameHub`].
//! Status goes out on a `tokio::sync::watch` channel per camera (the supervisor's doc says
//! why it restarts pipelines itself rather than using `fallbacksrc`).
//! [`FileFrames`] reads every frame of an image or video file, unpaced, for `affectd detect`,
//! tests and benchmarks.

mod cameras;
mod config;
mod error;
mod file_frames;
mod pipeline;
mod queue;
mod supervisor;

pub use cameras::Ingest;
pub use config::{CameraConfig, Decoder, IngestConfig, RtspTransport, Source, redact_userinfo};
pub use error::Error;
pub use file_frames::{FileFrames, VideoFile, read_image};
pub use pipeline::{Built, Template, build as build_pipeline, check_pipeline, init};
pub use queue::{FrameHub, FrameQueue};
