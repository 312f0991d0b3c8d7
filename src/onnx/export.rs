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

use candle_core::{DType, IndexOp};
use serde::{Deserialize, Serialize};

use super::graph::{Attr, Dim, OPSET, to_bytes};
use super::layers::Writer;
use super::proto::ModelProto;
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
