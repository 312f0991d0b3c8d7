//! `[model]`: which EmotionCLIP weights the live path runs and how it feeds them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve};
use crate::detect::Provider;
use crate::model::preprocess::CropPolicy;
use crate::onnx::Precision;

/// `[model]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Weights: `.safetensors` or the official EmotionCLIP release `.pt` (official key names).
    pub weights: Option<PathBuf>,
    /// Hyperparameters in the official layout (`embed_dim`, `vision_cfg`, `text_cfg`,
    /// `temporal`) as JSON; absent means the ViT-B/32 preset of the released model.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// When `weights` is absent or missing on disk, run seeded random ViT-B/32 weights instead
    /// of failing. Every message then says `untrained`. For demos and tests only.
    #[serde(default)]
    pub allow_untrained: bool,
    /// Seed of the random weights used with `allow_untrained`.
    #[serde(default)]
    pub seed: u64,
    /// Name reported in messages (`model.name`).
    #[serde(default = "default_name")]
    pub name: String,
    /// How the person is cropped to the encoder's square input: `subject` (a square around the
    /// person with context, kept inside the frame, so the person is never cut off) or
    /// `centre` (short side to 256, centre crop: the official evaluation).
    #[serde(default)]
    pub crop: Crop,
    /// With `crop = "subject"`: side of the square as a multiple of the person box's longer side.
    #[serde(default = "default_context")]
    pub context: f32,
    /// Run the temporal encoder and publish after this many new frames of a track (1 = every
    /// sampled frame). Frame features are computed once per frame either way.
    #[serde(default = "default_update_every")]
    pub update_every: usize,
    /// Most person-frames in one frame-encoder batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Person-frames waiting for the encoder; beyond it the oldest are dropped and counted.
    /// Small on purpose: a long queue only adds latency when the encoder cannot keep up.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Also publish the video embedding in each message.
    #[serde(default)]
    pub include_embedding: bool,
    /// `cpu`, or `cuda` (needs the `cuda` cargo feature).
    #[serde(default)]
    pub device: ModelDevice,
    /// Parameter and activation precision: `f32`, or `f16` / `bf16` on `cuda` (faster, not
    /// covered by the parity tolerances).
    #[serde(default)]
    pub dtype: ModelDtype,
    /// What runs the frame and temporal encoders: `auto` (ONNX Runtime when it loads and the
    /// export works, else candle; one log line says which and why), `onnx` (ONNX Runtime or
    /// fail) or `candle` (the in-process reference implementation).
    #[serde(default)]
    pub runtime: ModelRuntime,
    /// Precision of the ONNX export ONNX Runtime serves: `f32`, `int8` (weights quantised per
    /// output channel; CPU) or `fp16` (GPU providers). A precision the exporter cannot write
    /// yet falls back to `f32` with a log line.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// ONNX Runtime execution providers for the encoder, in order (`tensorrt`, `cuda`, `cpu`):
    /// the first that works serves; an unavailable one is logged once and skipped.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// ONNX Runtime intra-op threads of the encoder's sessions; 0 lets ONNX Runtime choose.
    #[serde(default)]
    pub threads: usize,
    /// Where the exported ONNX graphs are cached, one folder per weights digest (or seed),
    /// model config, exporter version, precision and attention form; the last few are kept.
    #[serde(default = "default_onnx_cache_dir")]
    pub onnx_cache_dir: PathBuf,
    /// `[detect] ort_library`: the one ONNX Runtime library of the process (not a key here).
    #[serde(skip)]
    pub ort_library: Option<PathBuf>,
}

/// `[model] runtime`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRuntime {
    #[default]
    Auto,
    Onnx,
    Candle,
}

impl ModelRuntime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Onnx => "onnx",
            Self::Candle => "candle",
        }
    }
}

/// `[model] dtype`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl ModelDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::F16 => candle_core::DType::F16,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// `[model] crop`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    #[default]
    Subject,
    Centre,
}

/// `[model] device`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDevice {
    #[default]
    Cpu,
    Cuda,
}

impl ModelConfig {
    pub fn crop_policy(&self) -> CropPolicy {
        match self.crop {
            Crop::Subject => CropPolicy::SubjectCentred {
                context: self.context,
                min_side: 224.0,
            },
            Crop::Centre => CropPolicy::OFFICIAL_EVAL,
        }
    }

    /// The weights file to load, or `None` when the seeded random weights will run.
    pub fn weights_to_load(&self) -> Option<&Path> {
        match &self.weights {
            Some(p) if !self.allow_untrained || p.exists() => Some(p),
            _ => None,
        }
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.weights, &mut self.config].into_iter().flatten() {
            *p = resolve(base, p);
        }
        self.onnx_cache_dir = resolve(base, &self.onnx_cache_dir);
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.weights.is_none() && !self.allow_untrained {
            return Err(ConfigError::invalid(
                format!("{key}.weights"),
                "is required (or set allow_untrained = true to run seeded random weights)",
            ));
        }
        if self.name.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.name"), "is empty"));
        }
        check_range(&format!("{key}.context"), self.context, 1.0, 8.0)?;
        check_range(&format!("{key}.update_every"), self.update_every, 1, 64)?;
        check_range(&format!("{key}.max_batch"), self.max_batch, 1, 256)?;
        check_range(&format!("{key}.queue"), self.queue, 1, 4096)?;
        if self.dtype != ModelDtype::F32 && self.device != ModelDevice::Cuda {
            return Err(ConfigError::invalid(
                format!("{key}.dtype"),
                "f16 and bf16 run on device = \"cuda\" only; the CPU path is f32",
            ));
        }
        if self.device == ModelDevice::Cuda && !cfg!(feature = "candle-cuda") {
            return Err(ConfigError::invalid(
                format!("{key}.device"),
                "\"cuda\" (candle on the GPU) needs a build with the `candle-cuda` feature",
            ));
        }
        if self.providers.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.providers"),
                "is empty; list at least \"cpu\"",
            ));
        }
        check_range(&format!("{key}.threads"), self.threads, 0, 256)?;
        if self.runtime == ModelRuntime::Onnx && self.dtype != ModelDtype::F32 {
            return Err(ConfigError::invalid(
                format!("{key}.runtime"),
                "\"onnx\" serves an export of f32 weights; dtype f16/bf16 is candle's (for ONNX \
                 Runtime's half precision set precision = \"fp16\")",
            ));
        }
        if self.precision != Precision::F32 && self.runtime == ModelRuntime::Candle {
            return Err(ConfigError::invalid(
                format!("{key}.precision"),
                format!(
                    "\"{}\" is ONNX Runtime's; runtime = \"candle\" runs dtype",
                    self.precision.name()
                ),
            ));
        }
        if self.precision == Precision::Fp16 && self.providers.iter().all(|p| *p == Provider::Cpu) {
            return Err(ConfigError::invalid(
                format!("{key}.precision"),
                "\"fp16\" is for the GPU providers (providers = [\"cuda\", ...]); on the CPU use \
                 \"f32\" or \"int8\"",
            ));
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            weights: None,
            config: None,
            allow_untrained: false,
            seed: 0,
            name: default_name(),
            crop: Crop::default(),
            context: default_context(),
            update_every: default_update_every(),
            max_batch: default_max_batch(),
            queue: default_queue(),
            include_embedding: false,
            device: ModelDevice::default(),
            dtype: ModelDtype::default(),
            runtime: ModelRuntime::default(),
            precision: default_precision(),
            providers: default_providers(),
            threads: 0,
            onnx_cache_dir: default_onnx_cache_dir(),
            ort_library: None,
        }
    }
}

fn default_name() -> String {
    "emotionclip-vitb32".to_owned()
}
const fn default_context() -> f32 {
    2.0
}
const fn default_update_every() -> usize {
    4
}
const fn default_max_batch() -> usize {
    8
}
const fn default_queue() -> usize {
    16
}
const fn default_precision() -> Precision {
    Precision::F32
}
fn default_providers() -> Vec<Provider> {
    vec![Provider::Cpu]
}
fn default_onnx_cache_dir() -> PathBuf {
    // systemd's CacheDirectory=affectd, beside the TensorRT engines ([detect] trt_cache_dir).
    PathBuf::from("/var/cache/affectd/onnx")
}
