//! The temporal encoder (upstream `VisualHead` with `temporal_fusion='transformer'`):
//! frame features + learned frame-position embedding -> PyTorch `nn.TransformerEncoder`
//! (post-LN layers, exact GELU, eps 1e-5, final LayerNorm) -> + the frame features without
//! the position embedding -> mean over frames.
//!
//! It only sees frame features, so a window update re-runs this part alone.

use candle_core::{Module, Result, Tensor, bail};
use candle_nn::{Init, Linear, VarBuilder, linear};

use super::transformer::{LN_EPS, LayerNorm, MultiheadAttention, RELEASED, layer_norm};
use super::{Fusion, TemporalConfig};

/// One `nn.TransformerEncoderLayer` (norm_first=False, activation='gelu', dropout off).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub(crate) self_attn: MultiheadAttention,
    pub(crate) linear1: Linear,
    pub(crate) linear2: Linear,
    pub(crate) norm1: LayerNorm,
    pub(crate) norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, ff_dim: usize) -> Result<Self> {
        Ok(Self {
            self_attn: MultiheadAttention::new(vb.pp("self_attn"), dim, heads)?,
            linear1: linear(dim, ff_dim, vb.pp("linear1"))?,
            linear2: linear(ff_dim, dim, vb.pp("linear2"))?,
            norm1: layer_norm(dim, LN_EPS, vb.pp("norm1"))?,
            norm2: layer_norm(dim, LN_EPS, vb.pp("norm2"))?,
        })
    }
}

impl Module for EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .norm1
            .forward(&(x + self.self_attn.forward(x, None)?)?)?;
        let ff = self
            .linear2
            .forward(&self.linear1.forward(&x)?.gelu_erf()?)?;
        self.norm2.forward(&(x + ff)?)
    }
}

/// `fusion_layer`: `nn.TransformerEncoder` with its final `norm`.
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    pub(crate) layers: Vec<EncoderLayer>,
    pub(crate) norm: LayerNorm,
    /// The layers were dropped (`VisualHead::release`): running it fails.
    released: bool,
}

impl TransformerEncoder {
    pub fn new(vb: VarBuilder, dim: usize, cfg: &TemporalConfig) -> Result<Self> {
        let lvb = vb.pp("layers");
        let layers = (0..cfg.layers)
            .map(|i| EncoderLayer::new(lvb.pp(i), dim, cfg.heads, cfg.ff_dim))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            norm: layer_norm(dim, LN_EPS, vb.pp("norm"))?,
            released: false,
        })
    }
}

/// Every intermediate of one temporal pass.
#[derive(Debug, Clone)]
pub struct TemporalTrace {
    /// [B, T, E]: frame features + frame-position embedding.
    pub temporal_in: Tensor,
    /// Output of each encoder layer, [B, T, E].
    pub layer_outputs: Vec<Tensor>,
    /// [B, T, E]: after the final LayerNorm.
    pub temporal_out: Tensor,
    /// [B, E]: mean over frames of (`temporal_out` + frame features).
    pub video_embedding: Tensor,
}

/// Keys under `visual_head`.
#[derive(Debug, Clone)]
pub struct VisualHead {
    /// `frame_position_embedding.weight` [video_len, E] (`None` for mean fusion).
    pub(crate) frame_position_embedding: Option<Tensor>,
    pub(crate) fusion_layer: Option<TransformerEncoder>,
    video_len: usize,
}

impl VisualHead {
    pub fn new(vb: VarBuilder, embed_dim: usize, cfg: &TemporalConfig) -> Result<Self> {
        let (frame_position_embedding, fusion_layer) = match cfg.fusion {
            Fusion::Mean => (None, None),
            Fusion::Transformer => (
                Some(vb.pp("frame_position_embedding").get_with_hints(
                    (cfg.video_len, embed_dim),
                    "weight",
                    Init::Randn {
                        mean: 0.,
                        stdev: 1.,
                    },
                )?),
                Some(TransformerEncoder::new(
                    vb.pp("fusion_layer"),
                    embed_dim,
                    cfg,
                )?),
            ),
        };
        Ok(Self {
            frame_position_embedding,
            fusion_layer,
            video_len: cfg.video_len,
        })
    }

    /// Same as `forward`, keeping every intermediate.
    pub fn trace(&self, features: &Tensor) -> Result<TemporalTrace> {
        let (_, t, _) = features.dims3()?;
        if t != self.video_len {
            bail!(
                "{t} frames, the temporal encoder takes exactly {}",
                self.video_len
            )
        }
        let (Some(pos), Some(fusion)) = (&self.frame_position_embedding, &self.fusion_layer) else {
            return Ok(TemporalTrace {
                temporal_in: features.clone(),
                layer_outputs: Vec::new(),
                temporal_out: features.zeros_like()?,
                video_embedding: features.mean(1)?,
            });
        };
        if fusion.released {
            bail!("{RELEASED}")
        }
        let temporal_in = features.broadcast_add(pos)?;
        let mut layer_outputs = Vec::with_capacity(fusion.layers.len());
        let mut x = temporal_in.clone();
        for layer in &fusion.layers {
            x = layer.forward(&x)?;
            layer_outputs.push(x.clone());
        }
        let temporal_out = fusion.norm.forward(&x)?;
        let video_embedding = (&temporal_out + features)?.mean(1)?;
        Ok(TemporalTrace {
            temporal_in,
            layer_outputs,
            temporal_out,
            video_embedding,
        })
    }

    /// Drops the fusion layers' weights; the temporal encoder fails from then on (mean fusion
    /// has none and keeps working).
    pub(crate) fn release(&mut self) {
        if let Some(fusion) = &mut self.fusion_layer {
            fusion.layers = Vec::new();
            fusion.released = true;
        }
    }

    /// Whether the fusion layers were released.
    pub fn is_released(&self) -> bool {
        self.fusion_layer.as_ref().is_some_and(|f| f.released)
    }

    /// Frames per window.
    pub fn video_len(&self) -> usize {
        self.video_len
    }
}

impl Module for VisualHead {
    /// Video embeddings [B, E] from frame features [B, video_len, E].
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.trace(features)?.video_embedding)
    }
}
