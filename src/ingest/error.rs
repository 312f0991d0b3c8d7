//! `ingest::Error`: what can go wrong building or running a camera's pipeline, or reading a
//! file frame by frame.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// A camera pipeline problem. Messages never contain RTSP credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error("camera config: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot read pipeline template {path}: {source}")]
    TemplateRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pipeline template {template} does not parse: {message}")]
    TemplateParse { template: String, message: String },
    #[error("pipeline template {template} has no element named \"{name}\"")]
    TemplateElement { template: String, name: String },
    /// A plugin the pipeline needs is not installed (the text says which).
    #[error("GStreamer plugin missing: {0}")]
    MissingElement(String),
    #[error("element {element}: cannot set {property} to \"{value}\": {message}")]
    Property {
        element: String,
        property: String,
        value: String,
        message: String,
    },
    #[error("the pipeline refused to start")]
    StateChange,
    /// An error posted on the pipeline's bus while it ran.
    #[error("{element}: {message}{}", debug.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Stream {
        /// Path of the element that posted the error, e.g. `/GstPipeline:pipeline0/GstRTSPSrc:src`.
        element: String,
        message: String,
        debug: Option<String>,
    },
    #[error("no frame for {:.1} s", .0.as_secs_f64())]
    Stalled(Duration),
    /// The change to PLAYING had not returned after `stall_timeout_s`: an element blocked in
    /// its start (a source's open, a device or decoder set-up).
    #[error("the pipeline did not finish starting in {:.1} s (an element blocked opening its source or device)", .0.as_secs_f64())]
    StartHung(Duration),
    /// The last start has still not returned: no other is tried until it does.
    #[error(
        "the last pipeline start is still blocked (an element waits opening its source or device); retrying once it returns"
    )]
    StartStillHung,
    #[error("the source ended (end of stream)")]
    Eos,
    /// A file read frame by frame ([`FileFrames`](super::FileFrames)) that cannot be opened or
    /// decoded; errors on its pipeline's bus are [`Error::Stream`].
    #[error("input {path}: {problem}")]
    Input { path: PathBuf, problem: String },
}
