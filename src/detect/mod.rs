//! Detect: RGB [`Frame`](crate::types::Frame)s in, persons
//! ([`Detection`](crate::types::Detection)s in frame pixels) out, through an ONNX Runtime model
//! described by an engine manifest: letterbox -> model -> decode -> NMS -> frame pixels.
//!
//! The letterbox and the decoders are pure functions, tested on hand-built tensors; the
//! [`Detector`] owns the session and is driven by one thread.

pub mod cli;
mod config;
pub mod decode;
mod error;
pub mod letterbox;
pub mod manifest;
mod runtime;
mod session;

pub use cli::DetectArgs;
pub use config::{DetectConfig, Provider};
pub use error::Error;
pub use manifest::{Layout, Manifest, sha256_file};
pub(crate) use runtime::environment as ort_environment;
pub use runtime::{SYSTEM_LIBRARY_DIR, SessionSpec, find_library, library_search_list, open_with};
pub use session::{Detector, ProbeReport};
