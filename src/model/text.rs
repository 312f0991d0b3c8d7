//! The CLIP text encoder (upstream `CLIP.encode_text`): token + positional embedding, causal
//! pre-LN transformer, `ln_final`, the row of the largest token id (the end token), `@
//! text_projection`.

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::{Embedding, Init, VarBuilder};

use super::TextConfig;
use super::transformer::{LN_EPS, LayerNorm, Transformer, layer_norm};

/// Keys directly under `backbone.` (the text tower is not a sub-module upstream).
#[derive(Debug, Clone)]
pub struct TextTransformer {
    token_embedding: Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
    /// Additive causal mask [ctx, ctx]: `-inf` above the diagonal.
    attn_mask: Tensor,
    context_length: usize,
}

impl TextTransformer {
    pub fn new(vb: VarBuilder, cfg: &TextConfig, embed_dim: usize) -> Result<Self> {
        let (w, ctx) = (cfg.width, cfg.context_length);
        let token_embedding = Embedding::new(
            vb.pp("token_embedding").get_with_hints(
                (cfg.vocab_size, w),
                "weight",
                Init::Randn {
                    mean: 0.,
                    stdev: 0.02,
                },
            )?,
            w,
        );
        let positional_embedding = vb.get_with_hints(
            (ctx, w),
            "positional_embedding",
            Init::Randn {
                mean: 0.,
                stdev: 0.01,
            },
        )?;
        let text_projection = vb.get_with_hints(
            (w, embed_dim),
            "text_projection",
            Init::Randn {
                mean: 0.,
                stdev: (w as f64).powf(-0.5),
            },
        )?;
        Ok(Self {
            token_embedding,
            positional_embedding,
            transformer: Transformer::new(vb.pp("transformer"), w, cfg.layers, cfg.heads, 4 * w)?,
            ln_final: layer_norm(w, LN_EPS, vb.pp("ln_final"))?,
            text_projection,
            attn_mask: causal_mask(ctx, vb.device())?.to_dtype(vb.dtype())?,
            context_length: ctx,
        })
    }

    /// Drops the token embedding and the blocks (most of the tower's weights); encoding text
    /// fails from then on.
    pub(crate) fn release(&mut self) -> Result<()> {
        let w = self.positional_embedding.dim(1)?;
        let e = self.token_embedding.embeddings();
        self.token_embedding = Embedding::new(Tensor::zeros((1, w), e.dtype(), e.device())?, w);
        self.transformer.release();
        Ok(())
    }

    /// Tokens per text.
    pub fn context_length(&self) -> usize {
        self.context_length
    }
}

impl Module for TextTransformer {
    /// Text embeddings [N, embed_dim] (not normalised) for `tokens` [N, context_length]
    /// (integer ids; `ClipTokenizer` makes them).
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.transformer.held()?;
        let (n, l) = tokens.dims2()?;
        if l != self.context_length {
            bail!(
                "text tokens have {l} positions, the text encoder needs {}",
                self.context_length
            )
        }
        // The pooled position is the first largest id of each row, as torch's argmax.
        let ids = tokens.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let vocab = self.token_embedding.embeddings().dim(0)? as i64;
        let mut rows = Vec::with_capacity(n);
        for (i, row) in ids.iter().enumerate() {
            if let Some(bad) = row.iter().find(|&&t| t < 0 || t >= vocab) {
                bail!("text {i}: token id {bad} outside the vocabulary of {vocab}")
            }
            let mut best = 0;
            for (j, &t) in row.iter().enumerate() {
                if t > row[best] {
                    best = j;
                }
            }
            rows.push((i * l + best) as u32);
        }
        let ids = tokens.to_dtype(DType::U32)?;
        let x = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.positional_embedding)?;
        let x = self.transformer.forward(&x, Some(&self.attn_mask))?;
        let x = self.ln_final.forward(&x)?;
        let rows = Tensor::from_vec(rows, n, x.device())?;
        let width = x.dim(2)?;
        x.reshape((n * l, width))?
            .index_select(&rows, 0)?
            .matmul(&self.text_projection)
    }
}

/// Upstream `build_attention_mask`: `-inf` strictly above the diagonal, 0 elsewhere.
fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. }))
        .collect();
    Tensor::from_vec(values, (n, n), device)
}
