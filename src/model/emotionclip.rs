//! The whole model (upstream `EmotionCLIP`): `backbone` (frame + text encoders),
//! `visual_head` (temporal encoder) and `logit_scale`.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::{Init, VarBuilder};

use super::temporal::{TemporalTrace, VisualHead};
use super::text::TextTransformer;
use super::vision::{FrameTrace, VisionTransformer};
use super::weights::{Checkpoint, seeded_var_builder};
use super::{EmotionClipConfig, Error};

/// Keys under `backbone.`: `visual.*` and the text tower at the top level.
#[derive(Debug, Clone)]
pub struct Backbone {
    pub visual: VisionTransformer,
    pub text: TextTransformer,
}

impl Backbone {
    pub fn new(vb: VarBuilder, cfg: &EmotionClipConfig) -> Result<Self> {
        Ok(Self {
            visual: VisionTransformer::new(vb.pp("visual"), &cfg.vision_cfg, cfg.embed_dim)?,
            text: TextTransformer::new(vb.clone(), &cfg.text_cfg, cfg.embed_dim)?,
        })
    }
}

/// EmotionCLIP: subject-aware frame encoder, temporal encoder and text encoder.
///
/// Frame encoding and temporal fusion are separate calls so that a sliding window can keep
/// per-frame features and re-run only the temporal encoder on each update.
#[derive(Debug, Clone)]
pub struct EmotionClip {
    pub backbone: Backbone,
    pub visual_head: VisualHead,
    /// The log of the similarity multiplier (CLIP's learned temperature).
    logit_scale: Tensor,
    config: EmotionClipConfig,
    device: Device,
    dtype: DType,
}

impl EmotionClip {
    /// Builds the model from a `VarBuilder` rooted at the state dict's top level.
    pub fn new(vb: VarBuilder, cfg: &EmotionClipConfig) -> Result<Self> {
        let logit_scale =
            vb.get_with_hints((), "logit_scale", Init::Const((1.0f64 / 0.07).ln()))?;
        Ok(Self {
            backbone: Backbone::new(vb.pp("backbone"), cfg)?,
            visual_head: VisualHead::new(vb.pp("visual_head"), cfg.embed_dim, &cfg.temporal)?,
            logit_scale,
            config: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Loads f32 weights from `.safetensors` or the official release `.pt`, checking every key.
    pub fn load(
        weights: &Path,
        cfg: &EmotionClipConfig,
        device: &Device,
    ) -> std::result::Result<Self, Error> {
        Self::load_as(weights, cfg, device, DType::F32)
    }

    /// `load` with parameters and activations in `dtype` (f16/bf16 are meant for CUDA; the
    /// parity tolerances hold for f32 only).
    pub fn load_as(
        weights: &Path,
        cfg: &EmotionClipConfig,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, Error> {
        cfg.validate()?;
        Checkpoint::open(weights)?.build(dtype, device, |vb| Self::new(vb, cfg))
    }

    /// Deterministic random f32 weights (same `seed` -> same model on every machine): for
    /// running the pipeline when the official checkpoint is absent. The outputs mean nothing.
    pub fn random(cfg: &EmotionClipConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::new(seeded_var_builder(seed, DType::F32, device), cfg)
    }

    /// Frame features [N, embed_dim] and subject tokens [N, width] for `pixels` [N, 3, S, S]
    /// (ImageNet-normalised, S = `vision_cfg.image_size`) and subject masks [N, S, S] (0/1),
    /// in the model's dtype. `preprocess::stack` builds both from `FrameInput`s.
    pub fn encode_frames(&self, pixels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        self.backbone
            .visual
            .forward(&pixels.to_dtype(self.dtype)?, mask)
    }

    /// `encode_frames` keeping every intermediate.
    pub fn trace_frames(&self, pixels: &Tensor, mask: &Tensor) -> Result<FrameTrace> {
        self.backbone
            .visual
            .trace(&pixels.to_dtype(self.dtype)?, mask)
    }

    /// Video embeddings [B, embed_dim] (not normalised) from frame features
    /// [B, video_len, embed_dim]: the temporal encoder alone.
    pub fn encode_video_from_features(&self, features: &Tensor) -> Result<Tensor> {
        self.visual_head.forward(features)
    }

    /// `encode_video_from_features` keeping every intermediate.
    pub fn trace_temporal(&self, features: &Tensor) -> Result<TemporalTrace> {
        self.visual_head.trace(features)
    }

    /// Video embeddings [B, embed_dim] (not normalised) for `video` [B, T, 3, S, S] and
    /// `mask` [B, T, S, S] (upstream `encode_video`).
    pub fn encode_video(&self, video: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = video.dims5()?;
        let (mb, mt, mh, mw) = mask.dims4()?;
        if (mb, mt, mh, mw) != (b, t, h, w) {
            bail!("mask is [{mb}, {mt}, {mh}, {mw}] for a video [{b}, {t}, {c}, {h}, {w}]")
        }
        let (features, _) = self.encode_frames(
            &video.reshape((b * t, c, h, w))?,
            &mask.reshape((b * t, h, w))?,
        )?;
        self.encode_video_from_features(&features.reshape((b, t, ()))?)
    }

    /// Text embeddings [N, embed_dim] (not normalised) for tokens [N, context_length].
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor> {
        self.backbone.text.forward(tokens)
    }

    /// Drops weights a serving daemon no longer reads, giving their memory back: the text
    /// tower (the read-out computes its class embeddings once, at load) and, with `encoders`,
    /// the frame encoder's blocks and the temporal encoder's layers (ONNX Runtime serves
    /// them from the export). What stays answers the config and builds the masks' patch
    /// weights. A released part fails when run, saying so; the exporter refuses the model.
    pub fn release(&mut self, encoders: bool) -> Result<()> {
        self.backbone.text.release()?;
        if encoders {
            self.backbone.visual.transformer.release();
            self.visual_head.release();
        }
        Ok(())
    }

    /// The stored `logit_scale` parameter (log space, as in the checkpoint).
    pub fn logit_scale(&self) -> Result<f32> {
        self.logit_scale.to_dtype(DType::F32)?.to_scalar::<f32>()
    }

    /// The multiplier applied to cosine similarities: `exp(logit_scale)` (upstream `forward`).
    pub fn logit_scale_exp(&self) -> Result<f32> {
        Ok(self.logit_scale()?.exp())
    }

    /// Zero-shot logits [B, K]: `exp(logit_scale)` x cosine similarity of each video
    /// embedding [B, E] with each text embedding [K, E] (softmax over K gives class scores).
    pub fn similarity_logits(&self, video: &Tensor, text: &Tensor) -> Result<Tensor> {
        let v = l2_normalize(&video.to_dtype(DType::F32)?)?;
        let t = l2_normalize(&text.to_dtype(DType::F32)?)?;
        v.matmul(&t.t()?)? * f64::from(self.logit_scale_exp()?)
    }

    pub fn config(&self) -> &EmotionClipConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameter and activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Width of frame features, video and text embeddings.
    pub fn embed_dim(&self) -> usize {
        self.config.embed_dim
    }

    /// Frames per window for the temporal encoder.
    pub fn video_len(&self) -> usize {
        self.config.temporal.video_len
    }
}

/// L2-normalises the rows of `x` [N, E] (for cosine similarities; the encoders return
/// un-normalised embeddings, as upstream).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(1)?.sqrt()?)
}
