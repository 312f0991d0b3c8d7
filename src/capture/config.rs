//! `[capture]`: on-site capture of per-track windows into a local dataset folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve};

/// `[capture]` (absent: nothing is captured).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The dataset folder (created if missing). Relative paths are resolved against the
    /// config file's folder. A folder holding a dataset of another input size, window length
    /// or crop policy is refused at start-up: nothing is ever mixed or deleted to make room.
    pub dir: PathBuf,
    /// Disk quota of the samples in MiB; beyond it the oldest samples are deleted.
    #[serde(default = "default_quota_mb")]
    pub quota_mb: u64,
    /// Capture one window of a track every this many sampled frames of that track
    /// (`8` with 8-frame windows: consecutive captures do not overlap).
    #[serde(default = "default_every")]
    pub every: usize,
    /// Windows waiting for the writer; beyond it new windows are dropped and counted (the
    /// encoder never waits for the disk).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// `false` keeps the section configured but captures nothing.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

impl CaptureConfig {
    /// A configuration for `dir` with every other key at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            quota_mb: default_quota_mb(),
            every: default_every(),
            queue: default_queue(),
            enabled: default_enabled(),
        }
    }

    /// The quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_mb.saturating_mul(1024 * 1024)
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.dir = resolve(base, &self.dir);
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.dir"), "is empty"));
        }
        check_range(
            &format!("{key}.quota_mb"),
            self.quota_mb,
            1,
            16 * 1024 * 1024,
        )?;
        check_range(&format!("{key}.every"), self.every, 1, 4096)?;
        check_range(&format!("{key}.queue"), self.queue, 1, 1024)?;
        Ok(())
    }
}

const fn default_quota_mb() -> u64 {
    2048
}
const fn default_every() -> usize {
    8
}
const fn default_queue() -> usize {
    16
}
const fn default_enabled() -> bool {
    true
}
