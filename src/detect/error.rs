//! `detect::Error`: what can go wrong loading an engine, running it, or reading the input file
//! of `affectd detect`.

use std::path::{Path, PathBuf};

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
    /// The input file of `affectd detect`.
    #[error(transparent)]
    Input(#[from] crate::ingest::Error),
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
