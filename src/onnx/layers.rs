//! How the model's layers are written as ONNX nodes ([`Writer`]): weights as initializers
//! (f32, f16, or int8 per output channel), linear layers, LayerNorm, attention in the form
//! [`ExportOptions`] asks for, and the pre-LN residual MLP. `export` assembles the two graphs
//! from them.

use candle_core::{DType, Tensor};
use candle_nn::Linear;

use super::export::{AttentionForm, ExportOptions, Int8Attention, Int8MatMul, Precision};
use super::graph::{Attr, Dim, Elem, Graph, Value};
use super::quantize::per_column_symmetric;
use crate::model::transformer::{LayerNorm, MultiheadAttention, ResidualAttentionBlock};

/// The packed Q, K, V bias of `mha` (the official model always has one).
fn in_proj_bias(mha: &MultiheadAttention) -> candle_core::Result<&Tensor> {
    mha.in_proj
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("attention without in_proj bias".into()))
}

/// A tensor's values as row-major f32.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The graph under construction and how its layers are written.
pub(super) struct Writer {
    pub(super) g: Graph,
    /// Quantise MatMul weights (int8) in this graph.
    int8: bool,
    opts: ExportOptions,
}

impl Writer {
    pub(super) fn new(name: &str, opts: ExportOptions, int8: bool) -> Self {
        let mut g = Graph::new(name);
        if opts.precision == Precision::Fp16 {
            g.set_float(Elem::F16);
        }
        Writer { g, int8, opts }
    }

    /// Adds `t` as an initializer of the graph's float type with its own shape.
    pub(super) fn weight(&mut self, hint: &str, t: &Tensor) -> candle_core::Result<Value> {
        Ok(self.g.float_tensor(hint, t.dims(), &values(t)?))
    }

    /// A graph input: f32, cast to f16 in a half-precision graph.
    pub(super) fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        let x = self.g.input(name, dims);
        match self.g.float() {
            Elem::F16 => self.g.cast(&x, Elem::F16),
            _ => x,
        }
    }

    /// A graph output: f32 (cast from f16 in a half-precision graph).
    pub(super) fn output(&mut self, x: &Value, name: &str, dims: &[Dim]) {
        let x = match self.g.float() {
            Elem::F16 => self.g.cast(x, Elem::F32),
            _ => x.clone(),
        };
        self.g.output(&x, name, dims);
    }

    /// `x @ b + bias` with `b` a `[K, N]` weight: f32 MatMul (+ Add), or int8 in the chosen
    /// form.
    pub(super) fn matmul_bias(
        &mut self,
        hint: &str,
        x: &Value,
        b: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Value> {
        if !self.int8 {
            let w = self.weight(&format!("{hint}_w"), b)?;
            let y = self.g.matmul(x, &w);
            return match bias {
                Some(bias) => {
                    let bias = self.weight(&format!("{hint}_b"), bias)?;
                    Ok(self.g.add(&y, &bias))
                }
                None => Ok(y),
            };
        }
        let (k, n) = b.dims2()?;
        let q = per_column_symmetric(&values(b)?, k, n);
        let g = &mut self.g;
        let wq = g.i8_tensor(&format!("{hint}_wq"), &[k, n], &q.q);
        let ws = g.f32_tensor(&format!("{hint}_ws"), &[n], &q.scale);
        let bias = match bias {
            Some(bias) => Some(g.f32_tensor(&format!("{hint}_b"), &[n], &values(bias)?)),
            None => None,
        };
        let none = Value::absent();
        Ok(match self.opts.int8_matmul {
            Int8MatMul::DynamicQuantizeMatMul => {
                let mut inputs = vec![x, &wq, &ws];
                if let Some(bias) = &bias {
                    inputs.extend([&none, bias]);
                }
                g.ms_node("DynamicQuantizeMatMul", &inputs, &[])
            }
            Int8MatMul::MatMulIntegerToFloat => {
                let xq = g.node_n("DynamicQuantizeLinear", "", &[x], &[], 3);
                let mut inputs = vec![&xq[0], &wq, &xq[1], &ws, &xq[2]];
                if let Some(bias) = &bias {
                    inputs.extend([&none, bias]);
                }
                g.ms_node("MatMulIntegerToFloat", &inputs, &[])
            }
            Int8MatMul::MatMulInteger => {
                let xq = g.node_n("DynamicQuantizeLinear", "", &[x], &[], 3);
                let acc = g.node("MatMulInteger", &[&xq[0], &wq, &xq[2]], &[]);
                let acc = g.cast(&acc, Elem::F32);
                let scale = g.mul(&xq[1], &ws);
                let y = g.mul(&acc, &scale);
                match &bias {
                    Some(bias) => g.add(&y, bias),
                    None => y,
                }
            }
        })
    }

    /// `x @ W^T + b` of a candle `Linear` ([out, in] weight).
    pub(super) fn linear(
        &mut self,
        hint: &str,
        x: &Value,
        l: &Linear,
    ) -> candle_core::Result<Value> {
        self.matmul_bias(hint, x, &l.weight().t()?.contiguous()?, l.bias())
    }

    pub(super) fn layer_norm(
        &mut self,
        hint: &str,
        x: &Value,
        ln: &LayerNorm,
    ) -> candle_core::Result<Value> {
        let gamma = self.weight(&format!("{hint}_g"), &ln.weight)?;
        let beta = self.weight(&format!("{hint}_b"), &ln.bias)?;
        Ok(self.g.layer_norm(x, &gamma, &beta, ln.eps as f32))
    }

    /// Self-attention over `x` [B, L, W] including the output projection.
    pub(super) fn attention(
        &mut self,
        hint: &str,
        x: &Value,
        mha: &MultiheadAttention,
    ) -> candle_core::Result<Value> {
        let heads = mha.num_heads;
        let (three_w, w) = mha.in_proj.weight().dims2()?;
        debug_assert_eq!(three_w, 3 * w);
        let in_w = mha.in_proj.weight();
        let in_b = in_proj_bias(mha)?;
        let num_heads = [("num_heads", Attr::Int(heads as i64))];
        let y = match self.opts.attention {
            AttentionForm::Contrib
                if self.int8 && self.opts.int8_attention == Int8Attention::QAttention =>
            {
                // [W, 3W] int8, per-column scales; the input quantised to uint8 at run time.
                let wqkv = in_w.t()?.contiguous()?;
                let q = per_column_symmetric(&values(&wqkv)?, w, three_w);
                let g = &mut self.g;
                let wq = g.i8_tensor(&format!("{hint}_qkv_wq"), &[w, three_w], &q.q);
                let ws = g.f32_tensor(&format!("{hint}_qkv_ws"), &[three_w], &q.scale);
                let b = g.f32_tensor(&format!("{hint}_qkv_b"), &[three_w], &values(in_b)?);
                let xq = g.node_n("DynamicQuantizeLinear", "", &[x], &[], 3);
                g.ms_node(
                    "QAttention",
                    &[&xq[0], &wq, &b, &xq[1], &ws, &Value::absent(), &xq[2]],
                    &num_heads,
                )
            }
            AttentionForm::Contrib => {
                // [W, 3W]: columns are Q, K, V, as in_proj's rows. Unquantised in int8 with
                // `Int8Attention::F32`.
                let wqkv = self.weight(&format!("{hint}_qkv_w"), &in_w.t()?.contiguous()?)?;
                let bqkv = self.weight(&format!("{hint}_qkv_b"), in_b)?;
                self.g.ms_node("Attention", &[x, &wqkv, &bqkv], &num_heads)
            }
            AttentionForm::Standard => self.standard_attention(hint, x, x, mha)?,
        };
        self.linear(&format!("{hint}_out"), &y, &mha.out_proj)
    }

    /// `x + c_proj(gelu(c_fc(ln_2(x))))`: the second half of a pre-LN residual block.
    pub(super) fn mlp_residual(
        &mut self,
        hint: &str,
        x: &Value,
        block: &ResidualAttentionBlock,
    ) -> candle_core::Result<Value> {
        let h = self.layer_norm(&format!("{hint}_ln2"), x, &block.ln_2)?;
        let h = self.linear(&format!("{hint}_fc"), &h, &block.mlp.c_fc)?;
        let h = self.g.gelu_erf(&h);
        let h = self.linear(&format!("{hint}_proj"), &h, &block.mlp.c_proj)?;
        Ok(self.g.add(x, &h))
    }

    /// The attention of the first token of `x` [B, L, W] over all of them, output-projected:
    /// [B, 1, W]. Written in standard ops (the query is one row: its cost is the K and V
    /// projections, which a fused `Attention` node would not save).
    pub(super) fn first_token_attention(
        &mut self,
        hint: &str,
        x: &Value,
        mha: &MultiheadAttention,
    ) -> candle_core::Result<Value> {
        let first = self.g.slice(x, 1, 0, 1);
        let y = self.standard_attention(hint, &first, x, mha)?;
        self.linear(&format!("{hint}_out"), &y, &mha.out_proj)
    }

    /// Multi-head attention of `queries` [B, Lq, W] over `keys` [B, L, W] in opset-17 ops,
    /// before the output projection: [B, Lq, W]. Q, K and V are three projections, so each
    /// is a MatMul the int8 export quantises like the others.
    pub(super) fn standard_attention(
        &mut self,
        hint: &str,
        queries: &Value,
        keys: &Value,
        mha: &MultiheadAttention,
    ) -> candle_core::Result<Value> {
        let heads = mha.num_heads;
        let (_, w) = mha.in_proj.weight().dims2()?;
        let head_dim = w / heads;
        let in_w = mha.in_proj.weight();
        let in_b = in_proj_bias(mha)?;
        let mut qkv = Vec::with_capacity(3);
        for (i, (name, perm, input)) in [
            ("q", [0, 2, 1, 3], queries),
            ("k", [0, 2, 3, 1], keys),
            ("v", [0, 2, 1, 3], keys),
        ]
        .into_iter()
        .enumerate()
        {
            let l = Linear::new(
                in_w.narrow(0, i * w, w)?.contiguous()?,
                Some(in_b.narrow(0, i * w, w)?.contiguous()?),
            );
            let p = self.linear(&format!("{hint}_{name}"), input, &l)?;
            let p = self.g.reshape(&p, &[0, 0, heads as i64, head_dim as i64]);
            qkv.push(self.g.transpose(&p, &perm));
        }
        let g = &mut self.g;
        let scores = g.matmul(&qkv[0], &qkv[1]);
        let scale = g.float_scalar("attn_scale", (head_dim as f32).sqrt());
        let scores = g.div(&scores, &scale);
        let probs = g.softmax(&scores, 3);
        let y = g.matmul(&probs, &qkv[2]);
        let y = g.transpose(&y, &[0, 2, 1, 3]);
        Ok(g.reshape(&y, &[0, 0, w as i64]))
    }
}
