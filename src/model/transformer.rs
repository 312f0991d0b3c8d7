//! Building blocks shared by the three towers: PyTorch's `nn.MultiheadAttention` (packed
//! `in_proj_*` weights) and OpenCLIP's pre-LN `ResidualAttentionBlock` / `Transformer`.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder, init, linear};

/// LayerNorm epsilon everywhere in the official model (PyTorch's default).
pub(crate) const LN_EPS: f64 = 1e-5;

/// Whether any of `xs` is part of an autograd graph (a student being trained).
fn differentiable(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
}

/// Softmax over the last dimension: candle-nn's fused kernel for inference; its composite
/// form (which has a backward pass; the fused one has none) when gradients are tracked.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if differentiable(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `nn.LayerNorm` (keys `weight`, `bias`). Like `softmax_last_dim`, it runs candle-nn's
/// fused kernel for inference and the composite form when gradients are tracked.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(dim, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(dim, "bias", init::ZERO)?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !differentiable(&[x, &self.weight, &self.bias]) && x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        let dtype = x.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `nn.MultiheadAttention` without dropout: keys `in_proj_weight`, `in_proj_bias`, `out_proj.*`.
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    pub(crate) in_proj: Linear,
    pub(crate) out_proj: Linear,
    pub(crate) num_heads: usize,
    head_dim: usize,
}

impl MultiheadAttention {
    pub fn new(vb: VarBuilder, dim: usize, num_heads: usize) -> Result<Self> {
        let std = (dim as f64).powf(-0.5);
        let w = vb.get_with_hints(
            (3 * dim, dim),
            "in_proj_weight",
            Init::Randn {
                mean: 0.,
                stdev: std,
            },
        )?;
        let b = vb.get_with_hints(3 * dim, "in_proj_bias", init::ZERO)?;
        Ok(Self {
            in_proj: Linear::new(w, Some(b)),
            out_proj: linear(dim, dim, vb.pp("out_proj"))?,
            num_heads,
            head_dim: dim / num_heads,
        })
    }

    /// Self-attention over `x` [B, L, D]; `mask` is additive, [L, L] (`-inf` blocks).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let qkv = self
            .in_proj
            .forward(x)?
            .reshape((b, l, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        self.attend(&qkv.get(0)?, &qkv.get(1)?, &qkv.get(2)?, mask)
    }

    /// Scaled dot-product attention of heads `q` [B, H, Lq, hd] over `k`, `v` [B, H, L, hd]
    /// (`mask` additive, [Lq, L]), heads merged and output-projected: [B, Lq, D].
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, lq, _) = q.dims4()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (q.contiguous()? * scale)?;
        let mut att = q.matmul(&k.contiguous()?.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((
            b,
            lq,
            self.num_heads * self.head_dim,
        ))?;
        self.out_proj.forward(&y)
    }

    /// The output at the first position of unmasked self-attention over `x` [B, L, D]:
    /// [B, 1, D], equal to `forward(x, None).i((.., ..1))` at a fraction of the cost (Q for one
    /// row; K and V for all).
    pub fn forward_first(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (w, bias) = (self.in_proj.weight(), self.in_proj.bias());
        let rows = |from: usize, n: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, from, n)?,
                bias.map(|b| b.narrow(0, from, n)).transpose()?,
            ))
        };
        let heads = |t: Tensor, len: usize, parts: usize| {
            t.reshape((b, len, parts, self.num_heads, self.head_dim))?
                .permute((2, 0, 3, 1, 4))
        };
        let q = heads(rows(0, d)?.forward(&x.narrow(1, 0, 1)?)?, 1, 1)?;
        let kv = heads(rows(d, 2 * d)?.forward(x)?, l, 2)?;
        self.attend(&q.get(0)?, &kv.get(0)?, &kv.get(1)?, None)
    }
}

/// `mlp`: `c_fc` -> exact (erf) GELU -> `c_proj`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) c_fc: Linear,
    pub(crate) c_proj: Linear,
}

impl Mlp {
    pub fn new(vb: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            c_fc: linear(dim, hidden, vb.pp("c_fc"))?,
            c_proj: linear(hidden, dim, vb.pp("c_proj"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward(x)?.gelu_erf()?)
    }
}

/// OpenCLIP `ResidualAttentionBlock` (pre-LN).
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    pub(crate) attn: MultiheadAttention,
    pub(crate) ln_1: LayerNorm,
    pub(crate) mlp: Mlp,
    pub(crate) ln_2: LayerNorm,
}

impl ResidualAttentionBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, mlp_width: usize) -> Result<Self> {
        Ok(Self {
            attn: MultiheadAttention::new(vb.pp("attn"), dim, heads)?,
            ln_1: layer_norm(dim, LN_EPS, vb.pp("ln_1"))?,
            mlp: Mlp::new(vb.pp("mlp"), dim, mlp_width)?,
            ln_2: layer_norm(dim, LN_EPS, vb.pp("ln_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }

    /// `forward(x, None)` at the first position only: [B, 1, D].
    pub fn forward_first(&self, x: &Tensor) -> Result<Tensor> {
        let first = (x.narrow(1, 0, 1)? + self.attn.forward_first(&self.ln_1.forward(x)?)?)?;
        &first + self.mlp.forward(&self.ln_2.forward(&first)?)?
    }
}

/// OpenCLIP `Transformer`: a stack of `resblocks`, batch-first here ([B, L, D]).
#[derive(Debug, Clone)]
pub struct Transformer {
    pub(crate) resblocks: Vec<ResidualAttentionBlock>,
    /// The blocks were dropped ([`Transformer::release`]): running it fails.
    released: bool,
}

/// Why a released part of the model cannot run.
pub(crate) const RELEASED: &str = "these weights were released after loading (the daemon \
    serves them from elsewhere: the read-out's text embeddings, or ONNX Runtime's export)";

impl Transformer {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        layers: usize,
        heads: usize,
        mlp_width: usize,
    ) -> Result<Self> {
        let vb = vb.pp("resblocks");
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(vb.pp(i), dim, heads, mlp_width))
            .collect::<Result<_>>()?;
        Ok(Self {
            resblocks,
            released: false,
        })
    }

    /// Drops the blocks' weights; [`forward`](Self::forward) fails from then on.
    pub(crate) fn release(&mut self) {
        self.resblocks = Vec::new();
        self.released = true;
    }

    /// Whether [`release`](Self::release) dropped the blocks.
    pub(crate) fn is_released(&self) -> bool {
        self.released
    }

    /// An error when the blocks were released.
    pub(crate) fn held(&self) -> Result<()> {
        if self.released {
            candle_core::bail!("{RELEASED}")
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.held()?;
        let mut x = x.clone();
        for block in &self.resblocks {
            x = block.forward(&x, mask)?;
        }
        Ok(x)
    }

    /// The first position of `forward(x, None)`: [B, D]. The last block runs for that
    /// position alone (it reads K and V of all of them), the same numbers for less work: what
    /// a class-token readout needs.
    pub fn forward_first(&self, x: &Tensor) -> Result<Tensor> {
        self.held()?;
        let Some((last, blocks)) = self.resblocks.split_last() else {
            return x.narrow(1, 0, 1)?.squeeze(1);
        };
        let mut x = x.clone();
        for block in blocks {
            x = block.forward(&x, None)?;
        }
        last.forward_first(&x)?.squeeze(1)
    }
}
