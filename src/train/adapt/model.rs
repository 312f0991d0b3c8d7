//! The model being adapted: the served EmotionCLIP with its last `blocks` frame-encoder
//! blocks (and `ln_post`, `proj` after them) and its temporal encoder trainable, every other
//! tensor (the earlier blocks, the patch and position embeddings, the text tower,
//! `logit_scale`) frozen and shared with the served model. Exported whole, it is an ordinary
//! EmotionCLIP checkpoint of the served config.
//!
//! With no frame-encoder block trained the frame encoder is fixed, so its outputs per window
//! come from the served model's cached outputs (the class token after `ln_post`, times the
//! frozen `proj`) and a step runs the temporal encoder only.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use crate::model::preprocess::EncoderCrop;
use crate::model::{EmotionClip, EmotionClipConfig};
use crate::train::cache::{Targets, video_and_hint};
use crate::train::params::{self, Layout, Params};

const BLOCKS: &str = "backbone.visual.transformer.resblocks.";

/// Which tensors train.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// Frame-encoder blocks in the model.
    pub layers: usize,
    /// Trained blocks, counted from the last.
    pub blocks: usize,
    pub temporal: bool,
}

impl Trainable {
    /// Whether the tensor `name` trains.
    pub fn trains(&self, name: &str) -> bool {
        if self.temporal && name.starts_with("visual_head.") {
            return true;
        }
        if self.blocks == 0 {
            return false;
        }
        if name.starts_with("backbone.visual.ln_post.") || name == "backbone.visual.proj" {
            return true;
        }
        name.strip_prefix(BLOCKS)
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(index, _)| index.parse::<usize>().ok())
            .is_some_and(|i| i + self.blocks >= self.layers)
    }
}

impl Layout for Trainable {
    fn source_name(&self, name: &str) -> String {
        name.to_owned()
    }

    fn is_frozen(&self, name: &str) -> bool {
        !self.trains(name)
    }
}

/// The served model with trainable `Var`s where [`Trainable`] says.
pub struct Adapted {
    pub model: EmotionClip,
    pub params: Params,
    /// The frozen `backbone.visual.proj` [width, embed_dim], for windows whose frame
    /// encoder is fixed.
    proj: Tensor,
    cached_frames: bool,
}

impl Adapted {
    /// The model of `cfg` from the served tensors `served`, trainable as `trainable` says.
    pub fn new(
        cfg: &EmotionClipConfig,
        served: Arc<BTreeMap<String, Tensor>>,
        trainable: Trainable,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let cached_frames = trainable.blocks == 0;
        let Some(proj) = served.get("backbone.visual.proj").cloned() else {
            anyhow::bail!("the served model has no backbone.visual.proj")
        };
        let (model, params) = params::build(served, Box::new(trainable), 0, device, |vb| {
            EmotionClip::new(vb, cfg)
        })?;
        if params.trainable.is_empty() {
            anyhow::bail!(
                "nothing to train: no frame-encoder block (--blocks 0) and no temporal \
                 encoder (--freeze-temporal, or a mean-fusion model)"
            )
        }
        Ok(Self {
            model,
            params,
            proj: proj.to_device(device)?,
            cached_frames,
        })
    }

    /// Whether a forward needs the windows' pixels (a frame-encoder block trains) or only
    /// the served model's cached outputs.
    pub fn needs_pixels(&self) -> bool {
        !self.cached_frames
    }

    /// Video embeddings [B, E]: from the windows' crops through the whole model, or, with the
    /// frame encoder fixed, from their cached outputs through the temporal encoder.
    pub fn forward(&self, windows: &[Vec<EncoderCrop>], cached: &[&Targets]) -> Result<Tensor> {
        if self.cached_frames {
            let hints: Vec<&Tensor> = cached.iter().map(|t| &t.hint).collect();
            let features = Tensor::stack(&hints, 0)?.broadcast_matmul(&self.proj)?;
            return self.model.encode_video_from_features(&features);
        }
        Ok(video_and_hint(&self.model, windows)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_blocks_the_head_and_the_temporal_encoder_train() {
        let t = Trainable {
            layers: 12,
            blocks: 2,
            temporal: true,
        };
        for name in [
            "backbone.visual.transformer.resblocks.10.attn.in_proj_weight",
            "backbone.visual.transformer.resblocks.11.ln_2.bias",
            "backbone.visual.ln_post.weight",
            "backbone.visual.proj",
            "visual_head.fusion_layer.layers.0.linear1.weight",
        ] {
            assert!(t.trains(name), "{name}");
        }
        for name in [
            "backbone.visual.transformer.resblocks.9.attn.in_proj_weight",
            "backbone.visual.transformer.resblocks.1.ln_1.weight",
            "backbone.visual.conv1.weight",
            "backbone.visual.positional_embedding",
            "backbone.transformer.resblocks.11.ln_1.weight",
            "backbone.text_projection",
            "logit_scale",
        ] {
            assert!(!t.trains(name), "{name}");
        }
        let head_only = Trainable {
            blocks: 0,
            ..t.clone()
        };
        assert!(!head_only.trains("backbone.visual.proj"));
        assert!(head_only.trains("visual_head.frame_position_embedding.weight"));
    }

    #[test]
    fn cached_frame_outputs_give_the_models_video_embedding() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-teacher.json"
        );
        let cfg = EmotionClipConfig::from_json_file(std::path::Path::new(path)).unwrap();
        let dev = Device::Cpu;
        let (served, tensors) =
            crate::model::weights::build_seeded(4, candle_core::DType::F32, &dev, |vb| {
                EmotionClip::new(vb, &cfg)
            })
            .unwrap();
        let s = cfg.vision_cfg.image_size;
        let window: Vec<EncoderCrop> = (0..cfg.temporal.video_len)
            .map(|f| EncoderCrop {
                size: s,
                rgb: (0..s * s * 3)
                    .map(|k| ((k * 7 + f * 13) % 256) as u8)
                    .collect(),
                mask: (0..s * s).map(|k| u8::from(k % s > s / 3)).collect(),
            })
            .collect();
        let windows = vec![window];
        let targets = crate::train::cache::compute(&served, &windows).unwrap();
        let trainable = Trainable {
            layers: cfg.vision_cfg.layers,
            blocks: 0,
            temporal: true,
        };
        let adapted = Adapted::new(&cfg, Arc::new(tensors), trainable, &dev).unwrap();
        assert!(!adapted.needs_pixels());
        let cached = adapted.forward(&[], &[&targets[0]]).unwrap();
        let full = video_and_hint(&served, &windows).unwrap().0;
        let diff = (cached - full)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
