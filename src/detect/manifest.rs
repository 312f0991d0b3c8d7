//! Engine manifests: the TOML file beside an ONNX model that says how to feed and read it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Error;

/// How a model's outputs are laid out; picks the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// NanoDet GFL head: per stride a `[B, cells, classes]` score tensor (sigmoid applied) and a
    /// `[B, cells, 4 * reg_bins]` distance-distribution tensor.
    Nanodet,
    /// Ultralytics YOLOv5 raw export: `[B, N, 5 + classes]` of (cx, cy, w, h, objectness, scores).
    Yolov5,
    /// Ultralytics YOLOv8 / YOLO11 raw export: `[B, 4 + classes, N]` (or transposed).
    Yolov8,
    /// End-to-end export with NMS inside: `[B, N, 6]` of (x1, y1, x2, y2, score, class).
    End2end,
}

/// Channel order of the network input planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// An engine manifest (`engines/<name>.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The ONNX file, relative to the manifest's folder.
    pub model: PathBuf,
    /// Hex sha256 of the ONNX file.
    pub sha256: String,
    /// Output decoder.
    pub layout: Layout,
    /// Network input width in pixels.
    pub input_width: u32,
    /// Network input height in pixels.
    pub input_height: u32,
    /// Order of the three input planes.
    pub channel_order: ChannelOrder,
    /// Per-plane mean subtracted from 0..255 pixel values, in `channel_order`.
    pub mean: [f32; 3],
    /// Per-plane divisor applied after the mean, in `channel_order`.
    pub std: [f32; 3],
    /// Letterbox border value (0..255, before normalisation).
    #[serde(default = "default_pad_value")]
    pub pad_value: u8,
    /// Classes the model scores.
    pub num_classes: usize,
    /// Index of the person class.
    pub person_class: usize,
    /// NanoDet: the head's strides, one per output level.
    #[serde(default)]
    pub strides: Vec<u32>,
    /// NanoDet: distribution bins per box side.
    #[serde(default)]
    pub reg_bins: usize,
    /// NanoDet: anchor point of grid cell (col, row) is ((col + offset) * stride, ...).
    #[serde(default = "default_centre_offset")]
    pub centre_offset: f32,
    /// Output shapes the model must produce, in any order (batch dimension included).
    #[serde(default)]
    pub outputs: Vec<Vec<i64>>,
    /// The manifest's folder (set by [`Manifest::load`]).
    #[serde(skip)]
    pub dir: PathBuf,
}

const fn default_pad_value() -> u8 {
    114
}
const fn default_centre_offset() -> f32 {
    0.5
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    crate::digest::sha256_file(path).map_err(|e| Error::io(path, e))
}

impl Manifest {
    /// Reads and checks a manifest.
    pub fn load(path: &Path) -> Result<Manifest, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            problem: format!("cannot read: {e}"),
        })?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            problem: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        m.dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        m.check().map_err(|problem| Error::Manifest {
            path: path.to_owned(),
            problem,
        })?;
        Ok(m)
    }

    /// The ONNX file's path.
    pub fn model_path(&self) -> PathBuf {
        crate::config::resolve(&self.dir, &self.model)
    }

    /// Hashes the ONNX file and checks it against `sha256`; returns its path and digest.
    pub fn verify_model(&self) -> Result<(PathBuf, String), Error> {
        let model = self.model_path();
        let sha256 = sha256_file(&model)?;
        if !sha256.eq_ignore_ascii_case(&self.sha256) {
            return Err(Error::Checksum {
                path: model,
                expected: self.sha256.clone(),
                actual: sha256,
            });
        }
        Ok((model, sha256))
    }

    fn check(&self) -> Result<(), String> {
        if !(16..=4096).contains(&self.input_width) || !(16..=4096).contains(&self.input_height) {
            return Err("input_width/input_height: must be 16..=4096".into());
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err("std: must be non-zero".into());
        }
        if self.person_class >= self.num_classes {
            return Err(format!(
                "person_class: {} is not below num_classes {}",
                self.person_class, self.num_classes
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("sha256: must be 64 hex digits".into());
        }
        if self.layout == Layout::Nanodet {
            if self.strides.is_empty() || self.strides.contains(&0) {
                return Err("strides: NanoDet needs its non-zero head strides".into());
            }
            if self.reg_bins < 2 {
                return Err("reg_bins: NanoDet needs at least 2 bins".into());
            }
        }
        Ok(())
    }
}
