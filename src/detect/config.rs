//! `[detect]`: which engine runs, where ONNX Runtime lives, and the detection thresholds.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve};

/// `[detect]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Engine manifest (a TOML file beside the ONNX model: layout, input size, normalisation,
    /// class ids, sha256). Relative paths are resolved against the config file's folder.
    #[serde(default = "default_engine")]
    pub engine: PathBuf,
    /// The ONNX Runtime library (`libonnxruntime.so.1.31.1` or newer). When unset, affectd tries
    /// `ORT_DYLIB_PATH`, then `<exe dir>/../lib/affectd/`, `/opt/affectd/onnxruntime/lib/` and,
    /// unless root or under systemd, `./.venv/lib/python3*/site-packages/onnxruntime/capi/`.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Execution providers to try, in order: `tensorrt`, `cuda`, `cpu`. The first one that
    /// works is used for the whole run; an unavailable one is logged once and skipped.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// Minimum person score a detection must reach (0..1).
    #[serde(default = "default_confidence")]
    pub confidence: f32,
    /// Non-maximum suppression: a box overlapping a better one by more than this IoU is dropped.
    #[serde(default = "default_iou")]
    pub iou: f32,
    /// Most persons reported per frame (the best-scoring ones are kept).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose (one per core).
    #[serde(default)]
    pub threads: usize,
    /// Most frames (from different cameras) sent through one inference run, when the model's
    /// batch dimension is dynamic; fixed-batch models always run one frame at a time.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// TensorRT only: build fp16 engines (faster on GPUs with tensor cores).
    #[serde(default = "default_true")]
    pub trt_fp16: bool,
    /// TensorRT only: folder caching built engines, so that only the first start is slow.
    #[serde(default = "default_trt_cache_dir")]
    pub trt_cache_dir: PathBuf,
}

/// An ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// NVIDIA TensorRT through ONNX Runtime (cargo feature `tensorrt`, `onnxruntime-gpu`).
    Tensorrt,
    /// NVIDIA CUDA (cargo feature `cuda`, `onnxruntime-gpu`).
    Cuda,
    /// The CPU; always available.
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tensorrt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            engine: default_engine(),
            ort_library: None,
            providers: default_providers(),
            confidence: default_confidence(),
            iou: default_iou(),
            max_detections: default_max_detections(),
            threads: 0,
            max_batch: default_max_batch(),
            trt_fp16: default_true(),
            trt_cache_dir: default_trt_cache_dir(),
        }
    }
}

impl DetectConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.engine = resolve(base, &self.engine);
        if let Some(lib) = &mut self.ort_library {
            *lib = resolve(base, lib);
        }
        self.trt_cache_dir = resolve(base, &self.trt_cache_dir);
    }

    /// Checks values; `key` is the section's name (`detect`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        // Files are checked when the detector starts (and by `affectd check`), so that a config
        // can be validated on a machine without the engine.
        if self.providers.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.providers"),
                "is empty; list at least \"cpu\"",
            ));
        }
        check_range(&format!("{key}.confidence"), self.confidence, 0.0, 1.0)?;
        check_range(&format!("{key}.iou"), self.iou, 0.0, 1.0)?;
        check_range(
            &format!("{key}.max_detections"),
            self.max_detections,
            1,
            1000,
        )?;
        check_range(&format!("{key}.threads"), self.threads, 0, 256)?;
        check_range(&format!("{key}.max_batch"), self.max_batch, 1, 64)?;
        Ok(())
    }
}

fn default_engine() -> PathBuf {
    PathBuf::from("engines/nanodet-g-416-dynamic.toml")
}
fn default_providers() -> Vec<Provider> {
    vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
}
const fn default_confidence() -> f32 {
    0.25
}
const fn default_iou() -> f32 {
    0.45
}
const fn default_max_detections() -> usize {
    100
}
const fn default_max_batch() -> usize {
    8
}
const fn default_true() -> bool {
    true
}
fn default_trt_cache_dir() -> PathBuf {
    // systemd's CacheDirectory=affectd; /etc (the config's folder) is read-only there.
    PathBuf::from("/var/cache/affectd/trt")
}
