//! Model hyperparameters in the official layout: OpenCLIP's `embed_dim` / `vision_cfg` /
//! `text_cfg` (`src/models/model_configs/ViT-B-32.json` upstream) plus `temporal` for the
//! EmotionCLIP visual head. The file lives beside the weights, not in the daemon TOML.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Error;

/// The whole model: frame encoder, text encoder and temporal encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmotionClipConfig {
    /// Width of the joint video/text embedding space (512 for ViT-B/32).
    pub embed_dim: usize,
    /// The ViT frame encoder.
    pub vision_cfg: VisionConfig,
    /// The causal text transformer.
    pub text_cfg: TextConfig,
    /// The temporal encoder (`visual_head`) that fuses the frame features of one window.
    #[serde(default)]
    pub temporal: TemporalConfig,
}

/// `vision_cfg`: an OpenCLIP vision transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Square input size in pixels.
    pub image_size: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Token width.
    pub width: usize,
    /// Square patch size in pixels (convolution kernel and stride).
    pub patch_size: usize,
    /// Width of one attention head; heads = width / head_width.
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    /// Hidden width of the MLP as a multiple of `width`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

/// `text_cfg`: the CLIP text transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Tokens per text, start and end tokens included.
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// Rows of the token embedding.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Token width.
    #[serde(default = "default_text_width")]
    pub width: usize,
    /// Attention heads.
    #[serde(default = "default_text_heads")]
    pub heads: usize,
    /// Number of transformer blocks.
    #[serde(default = "default_text_layers")]
    pub layers: usize,
}

/// How the frame features of a window are fused into one video embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// Post-LN transformer over the frames, then the mean of (output + input).
    Transformer,
    /// Plain mean of the frame features (the paper's ablation).
    Mean,
}

/// `temporal`: the EmotionCLIP visual head (`VisualHead` upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalConfig {
    /// Fusion method.
    #[serde(default = "default_fusion")]
    pub fusion: Fusion,
    /// Transformer encoder layers.
    #[serde(default = "default_temporal_layers")]
    pub layers: usize,
    /// Attention heads.
    #[serde(default = "default_temporal_heads")]
    pub heads: usize,
    /// Feed-forward width.
    #[serde(default = "default_ff_dim")]
    pub ff_dim: usize,
    /// Frames per window (rows of the frame-position embedding); inputs must have exactly this many.
    #[serde(default = "default_video_len")]
    pub video_len: usize,
}

const fn default_head_width() -> usize {
    64
}
const fn default_mlp_ratio() -> f64 {
    4.0
}
const fn default_context_length() -> usize {
    77
}
const fn default_vocab_size() -> usize {
    49408
}
const fn default_text_width() -> usize {
    512
}
const fn default_text_heads() -> usize {
    8
}
const fn default_text_layers() -> usize {
    12
}
const fn default_fusion() -> Fusion {
    Fusion::Transformer
}
const fn default_temporal_layers() -> usize {
    6
}
const fn default_temporal_heads() -> usize {
    8
}
const fn default_ff_dim() -> usize {
    2048
}
const fn default_video_len() -> usize {
    8
}

impl Default for TemporalConfig {
    fn default() -> Self {
        Self {
            fusion: default_fusion(),
            layers: default_temporal_layers(),
            heads: default_temporal_heads(),
            ff_dim: default_ff_dim(),
            video_len: default_video_len(),
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            context_length: default_context_length(),
            vocab_size: default_vocab_size(),
            width: default_text_width(),
            heads: default_text_heads(),
            layers: default_text_layers(),
        }
    }
}

impl VisionConfig {
    /// Attention heads.
    pub fn heads(&self) -> usize {
        self.width / self.head_width
    }
    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Hidden width of the MLP (`int(width * mlp_ratio)` as upstream).
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

impl EmotionClipConfig {
    /// The released EmotionCLIP: OpenCLIP ViT-B/32 frame and text encoders, 6 temporal layers.
    pub fn vit_b32() -> Self {
        Self {
            embed_dim: 512,
            vision_cfg: VisionConfig {
                image_size: 224,
                layers: 12,
                width: 768,
                patch_size: 32,
                head_width: 64,
                mlp_ratio: 4.0,
            },
            text_cfg: TextConfig::default(),
            temporal: TemporalConfig::default(),
        }
    }

    /// Reads and validates a JSON config file.
    pub fn from_json_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the divisibility constraints the model relies on; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, problem: String| Err(Error::invalid_config(key, problem));
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let p = &self.temporal;
        let positive = [
            ("embed_dim", self.embed_dim),
            ("vision_cfg.image_size", v.image_size),
            ("vision_cfg.width", v.width),
            ("vision_cfg.patch_size", v.patch_size),
            ("vision_cfg.head_width", v.head_width),
            ("text_cfg.context_length", t.context_length),
            ("text_cfg.vocab_size", t.vocab_size),
            ("text_cfg.width", t.width),
            ("text_cfg.heads", t.heads),
            ("temporal.heads", p.heads),
            ("temporal.ff_dim", p.ff_dim),
            ("temporal.video_len", p.video_len),
        ];
        for (key, value) in positive {
            if value == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return bad(
                "vision_cfg.patch_size",
                format!(
                    "{} does not divide image_size {}",
                    v.patch_size, v.image_size
                ),
            );
        }
        if !v.width.is_multiple_of(v.head_width) {
            return bad(
                "vision_cfg.head_width",
                format!("{} does not divide width {}", v.head_width, v.width),
            );
        }
        if !(v.mlp_ratio > 0.0 && v.mlp_ratio.is_finite()) {
            return bad(
                "vision_cfg.mlp_ratio",
                format!("{} is not positive", v.mlp_ratio),
            );
        }
        if !t.width.is_multiple_of(t.heads) {
            return bad(
                "text_cfg.heads",
                format!("{} does not divide width {}", t.heads, t.width),
            );
        }
        if !self.embed_dim.is_multiple_of(p.heads) {
            return bad(
                "temporal.heads",
                format!("{} does not divide embed_dim {}", p.heads, self.embed_dim),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b32_preset_matches_the_paper() {
        let c = EmotionClipConfig::vit_b32();
        c.validate().unwrap();
        assert_eq!(c.vision_cfg.heads(), 12);
        assert_eq!(c.vision_cfg.grid_size(), 7);
        assert_eq!(c.vision_cfg.mlp_width(), 3072);
        assert_eq!(
            (c.text_cfg.width, c.text_cfg.heads, c.text_cfg.layers),
            (512, 8, 12)
        );
        assert_eq!(
            (c.temporal.layers, c.temporal.heads, c.temporal.video_len),
            (6, 8, 8)
        );
    }

    #[test]
    fn official_layout_parses_with_defaults() {
        let json = r#"{"embed_dim": 512,
            "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}"#;
        let c: EmotionClipConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c, EmotionClipConfig::vit_b32());
    }

    #[test]
    fn bad_divisibility_names_the_key() {
        let mut c = EmotionClipConfig::vit_b32();
        c.vision_cfg.patch_size = 30;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("vision_cfg.patch_size"), "{e}");
    }
}
