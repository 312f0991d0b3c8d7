//! Building blocks shared by the three towers: PyTorch's `nn.MultiheadAttention` (packed
//! `in_proj_*` weights) and OpenCLIP's pre-LN `ResidualAttentionBlock` / `Transformer`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, LayerNorm, Linear, VarBuilder, init, layer_norm, linear};

/// LayerNorm epsilon everywhere in the official model (PyTorch's default).
pub(crate) const LN_EPS: f64 = 1e-5;

/// `nn.MultiheadAttention` without dropout: keys `in_proj_weight`, `in_proj_bias`, `out_proj.*`.
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    in_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
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
        let (b, l, d) = x.dims3()?;
        let qkv = self
            .in_proj
            .forward(x)?
            .reshape((b, l, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&y)
    }
}

/// `mlp`: `c_fc` -> exact (erf) GELU -> `c_proj`.
#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
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
    attn: MultiheadAttention,
    ln_1: LayerNorm,
    mlp: Mlp,
    ln_2: LayerNorm,
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
}

/// OpenCLIP `Transformer`: a stack of `resblocks`, batch-first here ([B, L, D]).
#[derive(Debug, Clone)]
pub struct Transformer {
    pub(crate) resblocks: Vec<ResidualAttentionBlock>,
}

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
        Ok(Self { resblocks })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resblocks {
            x = block.forward(&x, mask)?;
        }
        Ok(x)
    }
}
