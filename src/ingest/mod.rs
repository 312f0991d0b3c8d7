//! Ingest: GStreamer sources -> RGB [`Frame`](crate::types::Frame)s at a set rate.
//!
//! Each enabled camera gets a pipeline built from a template in `pipelines/` (user values set
//! as element properties, never pasted into launch text) and a supervisor thread that restarts
//! it with exponential backoff when it errors, stalls or ends. Frames go into a bounded
//! drop-oldest queue per camera; one consumer waits on all of them through a [`FrameHub`].
//! Status goes out on a `tokio::sync::watch` channel per camera.
//! [`FileFrames`] reads every frame of an image or video file, unpaced, for `affectd detect`,
//! tests and benchmarks.
//!
//! Why the supervisor restarts pipelines itself instead of using gst-plugins-rs `fallbacksrc`
//! (which is registered, and works in a custom template in `[ingest] pipelines_dir`: its `uri`
//! is set like `rtspsrc`'s `location`):
//! - while its source is not (yet) up, `fallbacksrc` produces placeholder frames (in the test
//!   `a_custom_template_can_use_fallbacksrc`, 320x240 frames came before the camera's
//!   768x576) that the analytics would take for real pictures; a dead camera must yield none;
//! - its retry state is internal: the `starting | streaming | reconnecting | failed` status
//!   and the typed last error would have to be re-derived from its statistics;
//! - files, V4L2 devices and test sources need the same restart, stall and backoff logic,
//!   and a single mechanism keeps them alike; `rtspsrc` properties (transport, latency,
//!   credentials) stay plain properties of the `src` element.

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
