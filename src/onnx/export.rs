//! EmotionCLIP as two ONNX graphs, written from the candle model's own tensors: the frame
//! encoder (`pixels` + `patch_weights` -> `features`) and the temporal encoder
//! (`frame_features` -> `video`), both with a symbolic batch.
//!
//! The graphs compute what `model::vision` and `model::temporal` compute, in the forms ONNX
//! Runtime's optimiser fuses: exact GELU as `Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul
//! 0.5` (fused to `Gelu`, then with its bias to `BiasGelu`), `LayerNormalization` of opset 17.
//! Attention is written directly as `com.microsoft.Attention` (packed QKV weight, no mask) by
//! default: ONNX Runtime 1.31's in-session `AttentionFusion` only matches BERT's masked
//! pattern, so spelled-out unmasked attention stays unfused there (checked on the optimised
//! graph). [`AttentionForm::Standard`] spells it out in plain opset-17 ops for runtimes
//! without the contrib ops (TensorRT's parser, say).

use std::path::{Path, PathBuf};

use candle_core::{DType, IndexOp, Tensor};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};

use super::graph::{Attr, Dim, Elem, Graph, OPSET, Value, to_bytes};
use super::proto::ModelProto;
use super::quantize::per_column_symmetric;
use crate::model::transformer::{LayerNorm, MultiheadAttention, ResidualAttentionBlock};
use crate::model::{EmotionClip, EmotionClipConfig};

/// Bumped whenever the exported graphs change for the same weights: part of the export's
/// identity (the manifest records it; an export cache keys on it).
pub const EXPORTER_VERSION: u32 = 2;

pub const FRAME_ENCODER_FILE: &str = "frame_encoder.onnx";
pub const TEMPORAL_ENCODER_FILE: &str = "temporal_encoder.onnx";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Graph input and output names.
pub const PIXELS: &str = "pixels";
pub const PATCH_WEIGHTS: &str = "patch_weights";
pub const FEATURES: &str = "features";
pub const FRAME_FEATURES: &str = "frame_features";
pub const VIDEO: &str = "video";

const BATCH: &str = "batch";

/// Numeric precision of the exported weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Fp16,
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

/// How attention is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionForm {
    /// One `com.microsoft.Attention` node per layer (ONNX Runtime's fused kernel).
    #[default]
    Contrib,
    /// MatMul/Add, Reshape/Transpose, MatMul, Div, Softmax, MatMul, Transpose/Reshape in
    /// plain opset-17 ops.
    Standard,
}

/// What can go wrong exporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    /// (`error` is not a `source`: the message already says it, once.)
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error("reading the model's tensors: {0}")]
    Candle(#[from] candle_core::Error),
    /// The int8 accuracy check could not run.
    #[error("checking the int8 export: {0}")]
    Check(String),
    /// The int8 export is too far from f32 (and was not forced): nothing was written.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// True when the fault is in what the user gave: the CLI exits with 2.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Usage(_) | Error::Io { .. } => true,
            Error::Model(e) => e.is_usage(),
            Error::Candle(_) | Error::Check(_) | Error::Refused(_) => false,
        }
    }
}

/// How an int8 graph writes each quantised `x @ W + b` (weights int8 per output channel,
/// activations quantised to uint8 at run time). All three run on ONNX Runtime's CPU EP; the
/// default is the one measured fastest here (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Int8MatMul {
    /// One `com.microsoft.DynamicQuantizeMatMul` (f32 in, int8 weight + per-column scale,
    /// bias, f32 out).
    #[default]
    DynamicQuantizeMatMul,
    /// `DynamicQuantizeLinear` -> `com.microsoft.MatMulIntegerToFloat` (with the bias).
    MatMulIntegerToFloat,
    /// `DynamicQuantizeLinear` -> `MatMulInteger` -> `Cast` -> `Mul` (scales) -> `Add` (bias),
    /// standard ops only (what ONNX Runtime's own `quantize_dynamic` writes).
    MatMulInteger,
}

/// How an int8 graph writes attention's packed QKV projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Int8Attention {
    /// `DynamicQuantizeLinear` -> `com.microsoft.QAttention` (int8 packed QKV weight,
    /// per-column scales).
    #[default]
    QAttention,
    /// Attention spelled out in standard ops with its Q, K, V projections quantised as the
    /// other MatMuls (`--standard-attention`).
    Standard,
    /// The f32 `com.microsoft.Attention` node, unquantised.
    F32,
}

/// Everything that shapes the exported graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOptions {
    pub precision: Precision,
    pub attention: AttentionForm,
    /// int8 only.
    pub int8_matmul: Int8MatMul,
    /// int8 with [`AttentionForm::Contrib`] only (standard attention always quantises its
    /// projections as MatMuls).
    pub int8_attention: Int8Attention,
    /// int8 only: quantise the temporal encoder too (by default it stays f32: it is a few
    /// per cent of the work and its error adds to the frames').
    pub int8_temporal: bool,
}

impl ExportOptions {
    pub fn new(precision: Precision, attention: AttentionForm) -> Self {
        Self {
            precision,
            attention,
            int8_matmul: Int8MatMul::default(),
            int8_attention: Int8Attention::default(),
            int8_temporal: false,
        }
    }
}

/// What the int8 graphs are made of (in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Info {
    pub matmul: Int8MatMul,
    pub attention: Int8Attention,
    /// The graphs whose weights are int8.
    pub quantized: Vec<String>,
    pub weights: String,
    pub activations: String,
    /// The check against the f32 export (`None`: not checked).
    pub check: Option<super::quantize::AccuracyCheck>,
}

/// A tensor's values as row-major f32.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The graph under construction and how its layers are written.
struct Writer {
    g: Graph,
    /// Quantise MatMul weights (int8) in this graph.
    int8: bool,
    opts: ExportOptions,
}

impl Writer {
    fn new(name: &str, opts: ExportOptions, int8: bool) -> Self {
        let mut g = Graph::new(name);
        if opts.precision == Precision::Fp16 {
            g.set_float(Elem::F16);
        }
        Writer { g, int8, opts }
    }

    /// Adds `t` as an initializer of the graph's float type with its own shape.
    fn weight(&mut self, hint: &str, t: &Tensor) -> candle_core::Result<Value> {
        Ok(self.g.float_tensor(hint, t.dims(), &values(t)?))
    }

    /// A graph input: f32, cast to f16 in a half-precision graph.
    fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        let x = self.g.input(name, dims);
        match self.g.float() {
            Elem::F16 => self.g.cast(&x, Elem::F16),
            _ => x,
        }
    }

    /// A graph output: f32 (cast from f16 in a half-precision graph).
    fn output(&mut self, x: &Value, name: &str, dims: &[Dim]) {
        let x = match self.g.float() {
            Elem::F16 => self.g.cast(x, Elem::F32),
            _ => x.clone(),
        };
        self.g.output(&x, name, dims);
    }

    /// `x @ b + bias` with `b` a `[K, N]` weight: f32 MatMul (+ Add), or int8 in the chosen
    /// form.
    fn matmul_bias(
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
    fn linear(&mut self, hint: &str, x: &Value, l: &Linear) -> candle_core::Result<Value> {
        self.matmul_bias(hint, x, &l.weight().t()?.contiguous()?, l.bias())
    }

    fn layer_norm(&mut self, hint: &str, x: &Value, ln: &LayerNorm) -> candle_core::Result<Value> {
        let gamma = self.weight(&format!("{hint}_g"), &ln.weight)?;
        let beta = self.weight(&format!("{hint}_b"), &ln.bias)?;
        Ok(self.g.layer_norm(x, &gamma, &beta, ln.eps as f32))
    }

    /// Self-attention over `x` [B, L, W] including the output projection.
    fn attention(
        &mut self,
        hint: &str,
        x: &Value,
        mha: &MultiheadAttention,
    ) -> candle_core::Result<Value> {
        let heads = mha.num_heads;
        let (three_w, w) = mha.in_proj.weight().dims2()?;
        debug_assert_eq!(three_w, 3 * w);
        let in_w = mha.in_proj.weight();
        let in_b = mha
            .in_proj
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("attention without in_proj bias".into()))?;
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
    fn mlp_residual(
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
    fn first_token_attention(
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
    fn standard_attention(
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
        let in_b = mha
            .in_proj
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("attention without in_proj bias".into()))?;
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

/// The frame encoder: `pixels` [B, 3, S, S] (ImageNet-normalised) and `patch_weights` [B, P]
/// (P = grid^2, the fraction of each patch covered by the subject mask) -> `features`
/// [B, embed_dim].
pub fn frame_encoder(model: &EmotionClip, form: AttentionForm) -> candle_core::Result<ModelProto> {
    frame_encoder_with(model, &ExportOptions::new(Precision::F32, form))
}

/// [`frame_encoder`] at any precision.
pub fn frame_encoder_with(
    model: &EmotionClip,
    opts: &ExportOptions,
) -> candle_core::Result<ModelProto> {
    let cfg = model.config();
    let v = &model.backbone.visual;
    if v.is_released() {
        candle_core::bail!("the frame encoder's weights were released: nothing to export");
    }
    let (s, p, grid) = (v.image_size(), v.patch_size, v.grid_size);
    let (w, patches) = (v.width(), grid * grid);
    let batch = Dim::symbolic(BATCH);
    let mut wr = Writer::new(
        "emotionclip_frame_encoder",
        *opts,
        opts.precision == Precision::Int8,
    );
    let pixels = wr.input(PIXELS, &[batch.clone(), 3.into(), s.into(), s.into()]);
    let weights = wr.input(PATCH_WEIGHTS, &[batch.clone(), patches.into()]);

    // Patchify: kernel = stride = P, no bias; [B, W, G, G] -> [B, G*G, W].
    let conv_w = v.conv1.reshape((w, 3, p, p))?;
    let conv_w = wr.weight("conv1", &conv_w)?;
    let pu = p as i64;
    let x = wr.g.node(
        "Conv",
        &[&pixels, &conv_w],
        &[
            ("kernel_shape", Attr::Ints(vec![pu, pu])),
            ("strides", Attr::Ints(vec![pu, pu])),
        ],
    );
    let x = wr.g.reshape(&x, &[0, w as i64, patches as i64]);
    let x = wr.g.transpose(&x, &[0, 2, 1]);
    let pos_patches = v.positional_embedding.i(1..)?.contiguous()?;
    let pos_patches = wr.weight("pos_patches", &pos_patches)?;
    let x = wr.g.add(&x, &pos_patches);

    // Class token + its positional row, repeated over the batch.
    let cls = (&v.class_embedding + v.positional_embedding.i(0)?)?.reshape((1, 1, w))?;
    let cls = wr.weight("cls_pos", &cls)?;
    let g = &mut wr.g;
    let n = g.node(
        "Shape",
        &[&pixels],
        &[("start", Attr::Int(0)), ("end", Attr::Int(1))],
    );
    let ones = g.i64_vector("ones", &[1, 1]);
    let expand_to = g.concat(&[&n, &ones], 0);
    let cls = g.node("Expand", &[&cls, &expand_to], &[]);

    // The subject token: patch weights @ the patch rows of the positional embedding.
    let hmn = g.matmul(&weights, &pos_patches);
    let hmn = g.unsqueeze(&hmn, &[1]);
    let mut x = g.concat(&[&cls, &x, &hmn], 1);

    x = wr.layer_norm("ln_pre", &x, &v.ln_pre)?;
    // Only the class token's output is read (`ln_post(x[:, 0]) @ proj`), so the last block
    // computes K and V for every token but its attention, residual and MLP for the class
    // token alone: the same numbers, about 1/14 fewer FLOPs in ViT-B/32 (12 blocks).
    let (last, blocks) = v
        .transformer
        .resblocks
        .split_last()
        .ok_or_else(|| candle_core::Error::Msg("a transformer without blocks".into()))?;
    for (i, block) in blocks.iter().enumerate() {
        let h = wr.layer_norm(&format!("b{i}_ln1"), &x, &block.ln_1)?;
        let a = wr.attention(&format!("b{i}_attn"), &h, &block.attn)?;
        x = wr.g.add(&x, &a);
        x = wr.mlp_residual(&format!("b{i}"), &x, block)?;
    }
    let i = blocks.len();
    let h = wr.layer_norm(&format!("b{i}_ln1"), &x, &last.ln_1)?;
    let a = wr.first_token_attention(&format!("b{i}_attn"), &h, &last.attn)?;
    let cls = wr.g.slice(&x, 1, 0, 1);
    let cls = wr.g.add(&cls, &a);
    let cls = wr.mlp_residual(&format!("b{i}"), &cls, last)?;
    let cls = wr.g.reshape(&cls, &[0, w as i64]);
    let cls = wr.layer_norm("ln_post", &cls, &v.ln_post)?;
    let features = wr.matmul_bias("proj", &cls, &v.proj, None)?;
    wr.output(&features, FEATURES, &[batch, cfg.embed_dim.into()]);
    Ok(wr.g.into_model(
        env!("CARGO_PKG_VERSION"),
        "EmotionCLIP frame encoder (affectd export-onnx)",
    ))
}

/// The temporal encoder: `frame_features` [B, video_len, embed_dim] -> `video` [B, embed_dim]
/// (not normalised), as `VisualHead`.
pub fn temporal_encoder(
    model: &EmotionClip,
    form: AttentionForm,
) -> candle_core::Result<ModelProto> {
    temporal_encoder_with(model, &ExportOptions::new(Precision::F32, form))
}

/// [`temporal_encoder`] at any precision.
pub fn temporal_encoder_with(
    model: &EmotionClip,
    opts: &ExportOptions,
) -> candle_core::Result<ModelProto> {
    let (t, e) = (model.video_len(), model.embed_dim());
    let head = &model.visual_head;
    if head.is_released() {
        candle_core::bail!("the temporal encoder's weights were released: nothing to export");
    }
    let batch = Dim::symbolic(BATCH);
    let mut wr = Writer::new(
        "emotionclip_temporal_encoder",
        *opts,
        opts.precision == Precision::Int8 && opts.int8_temporal,
    );
    let features = wr.input(FRAME_FEATURES, &[batch.clone(), t.into(), e.into()]);
    let video = match (&head.frame_position_embedding, &head.fusion_layer) {
        (Some(pos), Some(fusion)) => {
            let pos = wr.weight("frame_pos", pos)?;
            let mut x = wr.g.add(&features, &pos);
            for (i, layer) in fusion.layers.iter().enumerate() {
                // Post-LN: norm1(x + attn(x)), norm2(x + ff(x)).
                let a = wr.attention(&format!("t{i}_attn"), &x, &layer.self_attn)?;
                let s = wr.g.add(&x, &a);
                x = wr.layer_norm(&format!("t{i}_norm1"), &s, &layer.norm1)?;
                let h = wr.linear(&format!("t{i}_ff1"), &x, &layer.linear1)?;
                let h = wr.g.gelu_erf(&h);
                let h = wr.linear(&format!("t{i}_ff2"), &h, &layer.linear2)?;
                let s = wr.g.add(&x, &h);
                x = wr.layer_norm(&format!("t{i}_norm2"), &s, &layer.norm2)?;
            }
            let out = wr.layer_norm("norm", &x, &fusion.norm)?;
            let sum = wr.g.add(&out, &features);
            wr.g.reduce_mean(&sum, &[1], false)
        }
        _ => wr.g.reduce_mean(&features, &[1], false),
    };
    wr.output(&video, VIDEO, &[batch, e.into()]);
    Ok(wr.g.into_model(
        env!("CARGO_PKG_VERSION"),
        "EmotionCLIP temporal encoder (affectd export-onnx)",
    ))
}

/// One graph input or output in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// Dimensions: numbers, or a name for a dimension chosen at run time.
    pub shape: Vec<serde_json::Value>,
}

fn spec(name: &str, dims: &[Dim]) -> TensorSpec {
    TensorSpec {
        name: name.to_owned(),
        shape: dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => serde_json::Value::from(*n),
                Dim::Symbolic(s) => serde_json::Value::from(s.as_str()),
            })
            .collect(),
    }
}

/// One exported graph in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub file: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// `manifest.json` beside the graphs: what they were made from and how to feed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub exporter: String,
    pub exporter_version: u32,
    pub affectd_version: String,
    pub precision: Precision,
    pub attention: AttentionForm,
    pub opset: i64,
    /// The weights file's sha256, or `None` for seeded random weights.
    pub weights_sha256: Option<String>,
    /// The seed of random weights (`None` for a weights file).
    pub seed: Option<u64>,
    pub model_config: EmotionClipConfig,
    pub frame_encoder: GraphEntry,
    pub temporal_encoder: GraphEntry,
    /// int8 exports: the quantised op forms and the accuracy check against f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Info>,
}

/// Where the weights came from, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A weights file with its sha256.
    File { sha256: String },
    /// `EmotionClip::random` with this seed.
    Seeded(u64),
}

/// Writes both graphs and the manifest into `out` (created if needed); each file replaces
/// its old version in one step (`durable`), so a reader never sees half a graph. int8 is
/// written unchecked (`affectd export-onnx` checks it against f32 first).
pub fn export(
    model: &EmotionClip,
    source: &WeightsSource,
    precision: Precision,
    form: AttentionForm,
    out: &Path,
) -> Result<ExportManifest, Error> {
    export_with(model, source, &ExportOptions::new(precision, form), out)
}

/// [`export`] with every option.
pub fn export_with(
    model: &EmotionClip,
    source: &WeightsSource,
    opts: &ExportOptions,
    out: &Path,
) -> Result<ExportManifest, Error> {
    build(model, source, opts)?.write(out)
}

/// Both graphs serialised, and their manifest, not yet written.
pub struct Built {
    frame: Vec<u8>,
    temporal: Vec<u8>,
    pub manifest: ExportManifest,
}

/// Builds both graphs in memory.
pub fn build(
    model: &EmotionClip,
    source: &WeightsSource,
    opts: &ExportOptions,
) -> Result<Built, Error> {
    if model.dtype() != DType::F32 {
        return Err(Error::Usage(format!(
            "the model is loaded as {:?}; export from f32 weights",
            model.dtype()
        )));
    }
    let cfg = model.config();
    let batch = Dim::symbolic(BATCH);
    let (s, grid) = (cfg.vision_cfg.image_size, cfg.vision_cfg.grid_size());
    let (t, e) = (model.video_len(), model.embed_dim());

    let frame = to_bytes(&frame_encoder_with(model, opts)?);
    let temporal = to_bytes(&temporal_encoder_with(model, opts)?);
    let sha = |bytes: &[u8]| {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    };

    let (weights_sha256, seed) = match source {
        WeightsSource::File { sha256 } => (Some(sha256.clone()), None),
        WeightsSource::Seeded(seed) => (None, Some(*seed)),
    };
    let int8 = (opts.precision == Precision::Int8).then(|| {
        let mut quantized = vec![FRAME_ENCODER_FILE.to_owned()];
        if opts.int8_temporal {
            quantized.push(TEMPORAL_ENCODER_FILE.to_owned());
        }
        Int8Info {
            matmul: opts.int8_matmul,
            attention: match opts.attention {
                AttentionForm::Contrib => opts.int8_attention,
                AttentionForm::Standard => Int8Attention::Standard,
            },
            quantized,
            weights: "int8, symmetric, per output channel (MatMul weights; Conv, \
                      embeddings and LayerNorm stay f32)"
                .into(),
            activations: "uint8, per tensor, quantised at run time".into(),
            check: None,
        }
    });
    let manifest = ExportManifest {
        exporter: "affectd export-onnx".into(),
        exporter_version: EXPORTER_VERSION,
        affectd_version: env!("CARGO_PKG_VERSION").into(),
        precision: opts.precision,
        attention: opts.attention,
        opset: OPSET,
        weights_sha256,
        seed,
        model_config: cfg.clone(),
        frame_encoder: GraphEntry {
            file: FRAME_ENCODER_FILE.into(),
            sha256: sha(&frame),
            inputs: vec![
                spec(PIXELS, &[batch.clone(), 3.into(), s.into(), s.into()]),
                spec(PATCH_WEIGHTS, &[batch.clone(), (grid * grid).into()]),
            ],
            outputs: vec![spec(FEATURES, &[batch.clone(), e.into()])],
        },
        temporal_encoder: GraphEntry {
            file: TEMPORAL_ENCODER_FILE.into(),
            sha256: sha(&temporal),
            inputs: vec![spec(FRAME_FEATURES, &[batch.clone(), t.into(), e.into()])],
            outputs: vec![spec(VIDEO, &[batch, e.into()])],
        },
        int8,
    };
    Ok(Built {
        frame,
        temporal,
        manifest,
    })
}

impl Built {
    /// Writes both graphs, then the manifest, into `out` (created if needed).
    pub fn write(&self, out: &Path) -> Result<ExportManifest, Error> {
        std::fs::create_dir_all(out).map_err(|error| Error::Io {
            path: out.to_owned(),
            error,
        })?;
        write_atomic(&out.join(FRAME_ENCODER_FILE), &self.frame)?;
        write_atomic(&out.join(TEMPORAL_ENCODER_FILE), &self.temporal)?;
        let json = serde_json::to_vec_pretty(&self.manifest).expect("the manifest serialises");
        write_atomic(&out.join(MANIFEST_FILE), &json)?;
        Ok(self.manifest.clone())
    }
}

/// Writes `bytes` to `path` crash-safely, mode 0640 as model weights (`durable`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::durable::replace_bytes(path, crate::durable::PRIVATE_MODE, bytes).map_err(|error| {
        Error::Io {
            path: path.to_owned(),
            error,
        }
    })
}

/// Arguments of `affectd export-onnx`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Weights: `.safetensors` or the official release `.pt` (official key names).
    #[arg(long = "model", value_name = "W")]
    pub model: PathBuf,
    /// Model config JSON in the official layout; default: the ViT-B/32 preset.
    #[arg(long = "model-config", value_name = "C.json")]
    pub model_config: Option<PathBuf>,
    /// Output folder: frame_encoder.onnx, temporal_encoder.onnx, manifest.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// f32; fp16 (f16 weights and activations, f32 inputs and outputs: for the CUDA and
    /// TensorRT providers); int8 (int8 MatMul weights per output channel, activations
    /// quantised at run time: for the CPU; checked against f32 on --check-windows).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Spell attention out in plain opset-17 ops instead of ONNX Runtime's fused
    /// `com.microsoft.Attention` (for runtimes without contrib ops).
    #[arg(long)]
    pub standard_attention: bool,
    /// int8: a capture dataset (`[capture] dir`) whose windows the int8 graphs are compared
    /// on against the f32 graphs (video and frame cosine, top-1 zero-shot agreement).
    #[arg(long, value_name = "DIR")]
    pub check_windows: Option<PathBuf>,
    /// int8: compare on at most this many windows, evenly spaced through the dataset.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub check_limit: usize,
    /// int8: refuse below this mean video-embedding cosine to f32.
    #[arg(long, value_name = "C", default_value_t = super::quantize::MIN_COSINE)]
    pub min_cosine: f32,
    /// int8: write the export even below --min-cosine, or without --check-windows.
    #[arg(long)]
    pub force: bool,
    /// int8: how each quantised MatMul is written (default: the fastest measured here).
    #[arg(
        long,
        value_enum,
        hide = true,
        default_value = "dynamic-quantize-mat-mul"
    )]
    pub int8_matmul: Int8MatMulArg,
    /// int8: how attention's QKV projection is written.
    #[arg(long, value_enum, hide = true, default_value = "q-attention")]
    pub int8_attention: Int8AttentionArg,
    /// int8: quantise the temporal encoder too.
    #[arg(long, hide = true)]
    pub int8_temporal: bool,
}

/// [`Int8MatMul`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8MatMulArg {
    DynamicQuantizeMatMul,
    MatMulIntegerToFloat,
    MatMulInteger,
}

/// [`Int8Attention`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8AttentionArg {
    QAttention,
    Standard,
    F32,
}

impl ExportArgs {
    fn options(&self) -> ExportOptions {
        let form = if self.standard_attention {
            AttentionForm::Standard
        } else {
            AttentionForm::Contrib
        };
        ExportOptions {
            int8_matmul: match self.int8_matmul {
                Int8MatMulArg::DynamicQuantizeMatMul => Int8MatMul::DynamicQuantizeMatMul,
                Int8MatMulArg::MatMulIntegerToFloat => Int8MatMul::MatMulIntegerToFloat,
                Int8MatMulArg::MatMulInteger => Int8MatMul::MatMulInteger,
            },
            int8_attention: match self.int8_attention {
                Int8AttentionArg::QAttention => Int8Attention::QAttention,
                Int8AttentionArg::Standard => Int8Attention::Standard,
                Int8AttentionArg::F32 => Int8Attention::F32,
            },
            int8_temporal: self.int8_temporal,
            ..ExportOptions::new(self.precision, form)
        }
    }
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "affectd-export-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|error| Error::Io {
            path: dir.clone(),
            error,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `affectd export-onnx`.
pub fn run(args: &ExportArgs) -> Result<(), Error> {
    let opts = args.options();
    let int8 = opts.precision == Precision::Int8;
    if !int8 && (args.check_windows.is_some() || args.force) {
        return Err(Error::Usage(
            "--check-windows and --force are for --precision int8".into(),
        ));
    }
    if int8 && args.check_windows.is_none() && !args.force {
        return Err(Error::Usage(
            "--precision int8 is checked against f32 on captured windows: give \
             --check-windows DIR (a capture dataset, `[capture] dir`), or --force to write it \
             unchecked"
                .into(),
        ));
    }
    let windows = match &args.check_windows {
        Some(dir) => {
            let w = crate::train::data::CapturedWindows::open(dir)
                .map_err(|e| Error::Usage(format!("--check-windows {}: {e:#}", dir.display())))?;
            Some(w)
        }
        None => None,
    };
    let cfg = match &args.model_config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    if let (Some(w), Some(dir)) = (&windows, &args.check_windows) {
        w.check_fits(&cfg, "the model")
            .map_err(|e| Error::Usage(format!("--check-windows {}: {e:#}", dir.display())))?;
    }
    let sha256 = crate::digest::sha256_file(&args.model).map_err(|error| Error::Io {
        path: args.model.clone(),
        error,
    })?;
    let model = EmotionClip::load(&args.model, &cfg, &candle_core::Device::Cpu)?;
    let source = WeightsSource::File { sha256 };
    let mut built = build(&model, &source, &opts)?;
    if let (Some(windows), Some(dir)) = (&windows, &args.check_windows) {
        // Both exports to scratch folders, compared there; the int8 one reaches `out` only
        // when it passes (or is forced).
        let reference = Scratch::new("f32")?;
        build(
            &model,
            &source,
            &ExportOptions::new(Precision::F32, opts.attention),
        )?
        .write(&reference.0)?;
        let candidate = Scratch::new("int8")?;
        built.write(&candidate.0)?;
        let mut check = super::quantize::compare(
            &model,
            &reference.0,
            &candidate.0,
            windows,
            &dir.display().to_string(),
            args.check_limit,
            args.min_cosine,
        )?;
        println!("{}", check.report());
        if !check.passed {
            if !args.force {
                return Err(Error::Refused(format!(
                    "int8 refused: mean video-embedding cosine to f32 {:.5} is below {} \
                     (nothing written to {}; --force writes it anyway)",
                    check.video_cosine_mean,
                    args.min_cosine,
                    args.out.display()
                )));
            }
            check.forced = true;
            println!(
                "below --min-cosine {}, written because of --force",
                args.min_cosine
            );
        }
        if let Some(info) = &mut built.manifest.int8 {
            info.check = Some(check);
        }
    } else if int8 {
        println!("int8 written unchecked (--force without --check-windows)");
    }
    let m = built.write(&args.out)?;
    println!(
        "wrote {} ({}), {} ({}) and {} ({}) to {}",
        m.frame_encoder.file,
        &m.frame_encoder.sha256[..12],
        m.temporal_encoder.file,
        &m.temporal_encoder.sha256[..12],
        MANIFEST_FILE,
        m.precision.name(),
        args.out.display()
    );
    Ok(())
}
