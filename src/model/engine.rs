//! [`Engine`]: what runs the model's frame and temporal encoders. The model itself runs them
//! ([`CandleEngine`], the reference); the encoder stage can also run them through ONNX
//! Runtime on the model's export (`encode::OnnxEngine`). `embed` and the encoder stage call
//! the networks only through it.

use candle_core::{DType, Result, Tensor};

use super::EmotionClip;

/// Runs EmotionCLIP's frame and temporal encoders for the model it was made for.
pub trait Engine: Send {
    /// `candle` or `onnx`.
    fn name(&self) -> &'static str;

    /// Frame features [N, embed_dim] for `pixels` [N, 3, S, S] (ImageNet-normalised) and
    /// subject masks `masks` [N, S, S] (0/1, u8).
    fn frames(&mut self, model: &EmotionClip, pixels: &Tensor, masks: &Tensor) -> Result<Tensor>;

    /// Video embeddings [B, embed_dim] (not normalised, f32) for frame features
    /// [B, video_len, embed_dim].
    fn video(&mut self, model: &EmotionClip, features: &Tensor) -> Result<Tensor>;
}

/// The candle model itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleEngine;

impl Engine for CandleEngine {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn frames(&mut self, model: &EmotionClip, pixels: &Tensor, masks: &Tensor) -> Result<Tensor> {
        Ok(model.encode_frames(pixels, masks)?.0)
    }

    fn video(&mut self, model: &EmotionClip, features: &Tensor) -> Result<Tensor> {
        model
            .encode_video_from_features(&features.to_dtype(model.dtype())?)?
            .to_dtype(DType::F32)
    }
}
