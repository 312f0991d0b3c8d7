//! Detect: an ONNX Runtime person detector (letterbox -> model -> decode -> NMS -> frame pixels).
//!
//! The decoders and the letterbox are pure functions, tested on hand-built tensors; the
//! [`Detector`] owns the session and is driven by one thread.

pub mod cli;
mod config;
pub mod decode;
mod engine;
pub mod input;
pub mod letterbox;
pub mod manifest;

use std::path::{Path, PathBuf};

pub use cli::DetectArgs;
pub use config::{DetectConfig, Provider};
pub use engine::{Detector, ProbeReport, find_library, library_search_list, sha256_file};
pub use manifest::{Layout, Manifest};

/// Everything that can go wrong in detection; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX Runtime library: {problem}")]
    Library { problem: String },
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("engine manifest {path}: {problem}")]
    Manifest { path: PathBuf, problem: String },
    #[error("{path}: sha256 is {actual}, the manifest expects {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model shape: {problem}")]
    Shape { problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("input {path}: {problem}")]
    Input { path: PathBuf, problem: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
