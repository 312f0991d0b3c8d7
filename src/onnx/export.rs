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

use super::graph::{Attr, Dim, Graph, OPSET, Value, to_bytes};
use super::proto::ModelProto;
use crate::model::transformer::{LayerNorm, MultiheadAttention};
use crate::model::{EmotionClip, EmotionClipConfig};

/// Bumped whenever the exported graphs change for the same weights: part of the export's
/// identity (the manifest records it; an export cache keys on it).
pub const EXPORTER_VERSION: u32 = 1;

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
}

impl Error {
    /// True when the fault is in what the user gave: the CLI exits with 2.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Usage(_) | Error::Io { .. } => true,
            Error::Model(e) => e.is_usage(),
            Error::Candle(_) => false,
        }
    }
}

/// A tensor's values as row-major f32.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Adds `t` as an f32 initializer with its own shape.
fn weight(g: &mut Graph, hint: &str, t: &Tensor) -> candle_core::Result<Value> {
    Ok(g.f32_tensor(hint, t.dims(), &values(t)?))
}

/// `x @ W^T + b` of a candle `Linear` ([out, in] weight): MatMul with the transposed weight,
/// then Add of the bias (the pair ONNX Runtime fuses with what follows).
fn linear(g: &mut Graph, hint: &str, x: &Value, l: &Linear) -> candle_core::Result<Value> {
    let w = weight(g, &format!("{hint}_w"), &l.weight().t()?.contiguous()?)?;
    let y = g.matmul(x, &w);
    match l.bias() {
        Some(b) => {
            let b = weight(g, &format!("{hint}_b"), b)?;
            Ok(g.add(&y, &b))
        }
        None => Ok(y),
    }
}

fn layer_norm(g: &mut Graph, hint: &str, x: &Value, ln: &LayerNorm) -> candle_core::Result<Value> {
    let gamma = weight(g, &format!("{hint}_g"), &ln.weight)?;
    let beta = weight(g, &format!("{hint}_b"), &ln.bias)?;
    Ok(g.layer_norm(x, &gamma, &beta, ln.eps as f32))
}

/// Self-attention over `x` [B, L, W] including the output projection.
fn attention(
    g: &mut Graph,
    hint: &str,
    x: &Value,
    mha: &MultiheadAttention,
    form: AttentionForm,
) -> candle_core::Result<Value> {
    let heads = mha.num_heads;
    let (three_w, w) = mha.in_proj.weight().dims2()?;
    let head_dim = w / heads;
    let in_w = mha.in_proj.weight();
    let in_b = mha
        .in_proj
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("attention without in_proj bias".into()))?;
    let y = match form {
        AttentionForm::Contrib => {
            // [W, 3W]: columns are Q, K, V, as in_proj's rows.
            let wqkv = weight(g, &format!("{hint}_qkv_w"), &in_w.t()?.contiguous()?)?;
            let bqkv = weight(g, &format!("{hint}_qkv_b"), in_b)?;
            debug_assert_eq!(three_w, 3 * w);
            g.ms_node(
                "Attention",
                &[x, &wqkv, &bqkv],
                &[("num_heads", Attr::Int(heads as i64))],
            )
        }
        AttentionForm::Standard => {
            let mut qkv = Vec::with_capacity(3);
            for (i, (name, perm)) in [
                ("q", [0, 2, 1, 3]),
                ("k", [0, 2, 3, 1]),
                ("v", [0, 2, 1, 3]),
            ]
            .into_iter()
            .enumerate()
            {
                let l = Linear::new(
                    in_w.narrow(0, i * w, w)?.contiguous()?,
                    Some(in_b.narrow(0, i * w, w)?.contiguous()?),
                );
                let p = linear(g, &format!("{hint}_{name}"), x, &l)?;
                let p = g.reshape(&p, &[0, 0, heads as i64, head_dim as i64]);
                qkv.push(g.transpose(&p, &perm));
            }
            let scores = g.matmul(&qkv[0], &qkv[1]);
            let scale = g.f32_scalar("attn_scale", (head_dim as f32).sqrt());
            let scores = g.div(&scores, &scale);
            let probs = g.softmax(&scores, 3);
            let y = g.matmul(&probs, &qkv[2]);
            let y = g.transpose(&y, &[0, 2, 1, 3]);
            g.reshape(&y, &[0, 0, w as i64])
        }
    };
    linear(g, &format!("{hint}_out"), &y, &mha.out_proj)
}

/// The frame encoder: `pixels` [B, 3, S, S] (ImageNet-normalised) and `patch_weights` [B, P]
/// (P = grid^2, the fraction of each patch covered by the subject mask) -> `features`
/// [B, embed_dim].
pub fn frame_encoder(model: &EmotionClip, form: AttentionForm) -> candle_core::Result<ModelProto> {
    let cfg = model.config();
    let v = &model.backbone.visual;
    let (s, p, grid) = (v.image_size(), v.patch_size, v.grid_size);
    let (w, patches) = (v.width(), grid * grid);
    let batch = Dim::symbolic(BATCH);
    let mut g = Graph::new("emotionclip_frame_encoder");
    let pixels = g.input(PIXELS, &[batch.clone(), 3.into(), s.into(), s.into()]);
    let weights = g.input(PATCH_WEIGHTS, &[batch.clone(), patches.into()]);

    // Patchify: kernel = stride = P, no bias; [B, W, G, G] -> [B, G*G, W].
    let conv_w = v.conv1.reshape((w, 3, p, p))?;
    let conv_w = weight(&mut g, "conv1", &conv_w)?;
    let pu = p as i64;
    let x = g.node(
        "Conv",
        &[&pixels, &conv_w],
        &[
            ("kernel_shape", Attr::Ints(vec![pu, pu])),
            ("strides", Attr::Ints(vec![pu, pu])),
        ],
    );
    let x = g.reshape(&x, &[0, w as i64, patches as i64]);
    let x = g.transpose(&x, &[0, 2, 1]);
    let pos_patches = v.positional_embedding.i(1..)?.contiguous()?;
    let pos_patches = weight(&mut g, "pos_patches", &pos_patches)?;
    let x = g.add(&x, &pos_patches);

    // Class token + its positional row, repeated over the batch.
    let cls = (&v.class_embedding + v.positional_embedding.i(0)?)?.reshape((1, 1, w))?;
    let cls = weight(&mut g, "cls_pos", &cls)?;
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

    x = layer_norm(&mut g, "ln_pre", &x, &v.ln_pre)?;
    for (i, block) in v.transformer.resblocks.iter().enumerate() {
        let h = layer_norm(&mut g, &format!("b{i}_ln1"), &x, &block.ln_1)?;
        let a = attention(&mut g, &format!("b{i}_attn"), &h, &block.attn, form)?;
        x = g.add(&x, &a);
        let h = layer_norm(&mut g, &format!("b{i}_ln2"), &x, &block.ln_2)?;
        let h = linear(&mut g, &format!("b{i}_fc"), &h, &block.mlp.c_fc)?;
        let h = g.gelu_erf(&h);
        let h = linear(&mut g, &format!("b{i}_proj"), &h, &block.mlp.c_proj)?;
        x = g.add(&x, &h);
    }
    let zero = g.i64_scalar("cls_index", 0);
    let cls = g.node("Gather", &[&x, &zero], &[("axis", Attr::Int(1))]);
    let cls = layer_norm(&mut g, "ln_post", &cls, &v.ln_post)?;
    let proj = weight(&mut g, "proj", &v.proj)?;
    let features = g.matmul(&cls, &proj);
    g.output(&features, FEATURES, &[batch, cfg.embed_dim.into()]);
    Ok(g.into_model(
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
    let (t, e) = (model.video_len(), model.embed_dim());
    let head = &model.visual_head;
    let batch = Dim::symbolic(BATCH);
    let mut g = Graph::new("emotionclip_temporal_encoder");
    let features = g.input(FRAME_FEATURES, &[batch.clone(), t.into(), e.into()]);
    let video = match (&head.frame_position_embedding, &head.fusion_layer) {
        (Some(pos), Some(fusion)) => {
            let pos = weight(&mut g, "frame_pos", pos)?;
            let mut x = g.add(&features, &pos);
            for (i, layer) in fusion.layers.iter().enumerate() {
                // Post-LN: norm1(x + attn(x)), norm2(x + ff(x)).
                let a = attention(&mut g, &format!("t{i}_attn"), &x, &layer.self_attn, form)?;
                let s = g.add(&x, &a);
                x = layer_norm(&mut g, &format!("t{i}_norm1"), &s, &layer.norm1)?;
                let h = linear(&mut g, &format!("t{i}_ff1"), &x, &layer.linear1)?;
                let h = g.gelu_erf(&h);
                let h = linear(&mut g, &format!("t{i}_ff2"), &h, &layer.linear2)?;
                let s = g.add(&x, &h);
                x = layer_norm(&mut g, &format!("t{i}_norm2"), &s, &layer.norm2)?;
            }
            let out = layer_norm(&mut g, "norm", &x, &fusion.norm)?;
            let sum = g.add(&out, &features);
            g.reduce_mean(&sum, &[1], false)
        }
        _ => g.reduce_mean(&features, &[1], false),
    };
    g.output(&video, VIDEO, &[batch, e.into()]);
    Ok(g.into_model(
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
/// its old version in one step (`durable`), so a reader never sees half a graph.
pub fn export(
    model: &EmotionClip,
    source: &WeightsSource,
    precision: Precision,
    form: AttentionForm,
    out: &Path,
) -> Result<ExportManifest, Error> {
    if precision != Precision::F32 {
        return Err(Error::Usage(format!(
            "--precision {}: not implemented yet (only f32 is; fp16 and int8 are planned, \
             issue 10)",
            precision.name()
        )));
    }
    if model.dtype() != DType::F32 {
        return Err(Error::Usage(format!(
            "the model is loaded as {:?}; export from f32 weights",
            model.dtype()
        )));
    }
    std::fs::create_dir_all(out).map_err(|error| Error::Io {
        path: out.to_owned(),
        error,
    })?;
    let cfg = model.config();
    let batch = Dim::symbolic(BATCH);
    let (s, grid) = (cfg.vision_cfg.image_size, cfg.vision_cfg.grid_size());
    let (t, e) = (model.video_len(), model.embed_dim());

    let frame = to_bytes(&frame_encoder(model, form)?);
    let frame_sha = write_atomic(&out.join(FRAME_ENCODER_FILE), &frame)?;
    drop(frame);
    let temporal = to_bytes(&temporal_encoder(model, form)?);
    let temporal_sha = write_atomic(&out.join(TEMPORAL_ENCODER_FILE), &temporal)?;

    let (weights_sha256, seed) = match source {
        WeightsSource::File { sha256 } => (Some(sha256.clone()), None),
        WeightsSource::Seeded(seed) => (None, Some(*seed)),
    };
    let manifest = ExportManifest {
        exporter: "affectd export-onnx".into(),
        exporter_version: EXPORTER_VERSION,
        affectd_version: env!("CARGO_PKG_VERSION").into(),
        precision,
        attention: form,
        opset: OPSET,
        weights_sha256,
        seed,
        model_config: cfg.clone(),
        frame_encoder: GraphEntry {
            file: FRAME_ENCODER_FILE.into(),
            sha256: frame_sha,
            inputs: vec![
                spec(PIXELS, &[batch.clone(), 3.into(), s.into(), s.into()]),
                spec(PATCH_WEIGHTS, &[batch.clone(), (grid * grid).into()]),
            ],
            outputs: vec![spec(FEATURES, &[batch.clone(), e.into()])],
        },
        temporal_encoder: GraphEntry {
            file: TEMPORAL_ENCODER_FILE.into(),
            sha256: temporal_sha,
            inputs: vec![spec(FRAME_FEATURES, &[batch.clone(), t.into(), e.into()])],
            outputs: vec![spec(VIDEO, &[batch, e.into()])],
        },
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    write_atomic(&out.join(MANIFEST_FILE), &json)?;
    Ok(manifest)
}

/// Writes `bytes` to `path` crash-safely, mode 0640 as model weights (`durable`); returns
/// their sha256.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    crate::durable::replace_bytes(path, crate::durable::PRIVATE_MODE, bytes).map_err(|error| {
        Error::Io {
            path: path.to_owned(),
            error,
        }
    })?;
    Ok(hex::encode(Sha256::digest(bytes)))
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
    /// Weight precision (only f32 is implemented so far).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Spell attention out in plain opset-17 ops instead of ONNX Runtime's fused
    /// `com.microsoft.Attention` (for runtimes without contrib ops).
    #[arg(long)]
    pub standard_attention: bool,
}

/// Runs `affectd export-onnx`.
pub fn run(args: &ExportArgs) -> Result<(), Error> {
    if args.precision != Precision::F32 {
        return Err(Error::Usage(format!(
            "--precision {}: not implemented yet (only f32 is; fp16 and int8 are planned, \
             issue 10)",
            args.precision.name()
        )));
    }
    let cfg = match &args.model_config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    let sha256 = crate::digest::sha256_file(&args.model).map_err(|error| Error::Io {
        path: args.model.clone(),
        error,
    })?;
    let model = EmotionClip::load(&args.model, &cfg, &candle_core::Device::Cpu)?;
    let form = if args.standard_attention {
        AttentionForm::Standard
    } else {
        AttentionForm::Contrib
    };
    let m = export(
        &model,
        &WeightsSource::File { sha256 },
        args.precision,
        form,
        &args.out,
    )?;
    println!(
        "wrote {} ({}), {} ({}) and {} to {}",
        m.frame_encoder.file,
        &m.frame_encoder.sha256[..12],
        m.temporal_encoder.file,
        &m.temporal_encoder.sha256[..12],
        MANIFEST_FILE,
        args.out.display()
    );
    Ok(())
}
