//! What can go wrong with a capture dataset: always names the file or folder at fault.

use std::path::PathBuf;

/// A capture dataset problem.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `manifest.json` is missing, unreadable, or of another format.
    #[error("{path}: {problem}")]
    Manifest { path: PathBuf, problem: String },
    /// A sample's files do not hold what the index and the manifest say.
    #[error("{path}: corrupt sample: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    /// The folder holds a dataset the running model cannot add to.
    #[error(
        "{dir}: the dataset holds {found}, the running model needs {wanted}; point [capture] dir at a new folder (or move this one away)"
    )]
    Mismatch {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    /// Another process writes this dataset.
    #[error("{dir}: another process is capturing into this folder (lock file {dir}/.lock)")]
    Locked { dir: PathBuf },
    /// A window handed to the writer is not of the dataset's shape.
    #[error("window not stored: {0}")]
    BadWindow(String),
}

impl CaptureError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CaptureError {
        let path = path.into();
        move |source| CaptureError::Io { path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> Self {
        CaptureError::Corrupt {
            path: path.into(),
            problem: problem.to_string(),
        }
    }
}
