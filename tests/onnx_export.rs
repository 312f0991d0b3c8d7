//! The ONNX export (`affectd::onnx`) run by the real ONNX Runtime on the CPU: the graph
//! builder on a hand-checked graph, the exported EmotionCLIP against the official goldens in
//! `tests/fixtures/golden` and against the candle model on the same seeded weights, and what
//! ONNX Runtime's optimiser fuses in the exported graphs.
//!
//! ONNX Runtime is found the way the daemon finds it: `ORT_DYLIB_PATH` (scripts/env.sh), else
//! the search list (which includes `./.venv/lib/python3*/site-packages/onnxruntime/capi/`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use affectd::model::{EmotionClip, EmotionClipConfig};
use affectd::onnx::export::{
    self, FEATURES, FRAME_ENCODER_FILE, FRAME_FEATURES, PATCH_WEIGHTS, PIXELS,
    TEMPORAL_ENCODER_FILE, VIDEO,
};
use affectd::onnx::graph::{self, Dim, Graph};
use affectd::onnx::{
    AttentionForm, ExportManifest, ExportOptions, Int8Attention, Int8MatMul, Precision,
    WeightsSource, session,
};
use candle_core::{DType, Device, Tensor};
use ort::session::Session;
use ort::value::TensorRef;

const THREADS: usize = 2;

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(rel)
}

fn tiny_config() -> EmotionClipConfig {
    EmotionClipConfig::from_json_file(&golden("emotionclip-tiny/config.json")).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

#[track_caller]
fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let d = max_abs_diff(got, want);
    eprintln!("{name}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{name}: max abs diff {d:e} > {tol:e}");
}

/// Runs `session` on named f32 inputs; the one output's shape and values.
fn run(session: &mut Session, inputs: &[(&str, Vec<usize>, &[f32])]) -> (Vec<i64>, Vec<f32>) {
    let values: Vec<(String, ort::session::SessionInputValue<'_>)> = inputs
        .iter()
        .map(|(name, shape, data)| {
            let t = TensorRef::from_array_view((shape.clone(), *data)).unwrap();
            (name.to_string(), t.into())
        })
        .collect();
    let outputs = session.run(values).unwrap();
    assert_eq!(outputs.len(), 1);
    let (shape, data) = outputs[0].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), data.to_vec())
}

/// Exports `model` into a fresh temp folder; the folder and the manifest.
fn exported(model: &EmotionClip, form: AttentionForm) -> (tempfile::TempDir, ExportManifest) {
    let dir = tempfile::tempdir().unwrap();
    let m = affectd::onnx::export(
        model,
        &WeightsSource::Seeded(0),
        Precision::F32,
        form,
        dir.path(),
    )
    .unwrap();
    (dir, m)
}

/// Op types of the graph ONNX Runtime runs after optimisation (domain-qualified for contrib
/// ops), and the session.
fn optimised(model: &Path) -> (Session, BTreeMap<String, usize>) {
    let out = model.with_extension("optimised.onnx");
    let s = session::open_cpu(model, THREADS, Some(&out)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let m = graph::from_bytes(&bytes).unwrap();
    (s, graph::op_counts(&m.graph.unwrap().node))
}

#[test]
fn a_built_graph_runs_in_onnx_runtime_as_computed_by_hand() {
    // y = mean over the last axis of LayerNorm(x @ W + b), with a symbolic batch.
    let w = [1.0f32, -2.0, 0.5, 3.0, 0.25, -1.0];
    let b = [0.1f32, -0.2, 0.3];
    let mut g = Graph::new("hand");
    let x = g.input("x", &[Dim::symbolic("batch"), 2.into()]);
    let wv = g.f32_tensor("w", &[2, 3], &w);
    let bv = g.f32_tensor("b", &[3], &b);
    let gamma = g.f32_tensor("gamma", &[3], &[1.0, 2.0, 0.5]);
    let beta = g.f32_tensor("beta", &[3], &[0.0, 1.0, -1.0]);
    let h = g.matmul(&x, &wv);
    let h = g.add(&h, &bv);
    let h = g.layer_norm(&h, &gamma, &beta, 1e-5);
    let y = g.gelu_erf(&h);
    g.output(&y, "y", &[Dim::symbolic("batch"), 3.into()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.onnx");
    std::fs::write(&path, graph::to_bytes(&g.into_model("test", ""))).unwrap();
    let mut s = session::open_cpu(&path, 1, None).unwrap();

    let xs = [0.5f32, -1.5, 2.0, 0.0, -0.25, 1.0];
    for batch in [1usize, 3] {
        let (shape, got) = run(&mut s, &[("x", vec![batch, 2], &xs[..2 * batch])]);
        assert_eq!(shape, [batch as i64, 3]);
        // By hand, in f64; GELU through candle's erf GELU on the hand-normalised values.
        let mut normed = Vec::new();
        for r in 0..batch {
            let row: Vec<f64> = (0..3)
                .map(|j| {
                    f64::from(xs[2 * r]) * f64::from(w[j])
                        + f64::from(xs[2 * r + 1]) * f64::from(w[3 + j])
                        + f64::from(b[j])
                })
                .collect();
            let mean = row.iter().sum::<f64>() / 3.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
            let (gm, bt) = ([1.0, 2.0, 0.5], [0.0, 1.0, -1.0]);
            for j in 0..3 {
                normed.push(((row[j] - mean) / (var + 1e-5).sqrt() * gm[j] + bt[j]) as f32);
            }
        }
        let want = f32s(
            &Tensor::from_vec(normed, (batch, 3), &Device::Cpu)
                .unwrap()
                .gelu_erf()
                .unwrap(),
        );
        assert_close(&format!("hand graph, batch {batch}"), &got, &want, 1e-5);
    }
}

/// The exported tiny model on the golden inputs, against the official float64 reference.
fn check_golden(weights: &str, form: AttentionForm) {
    let model = EmotionClip::load(&golden(weights), &tiny_config(), &Device::Cpu).unwrap();
    let (dir, manifest) = exported(&model, form);
    assert_eq!(manifest.frame_encoder.inputs[0].name, PIXELS);
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(golden("emotionclip-tiny/io.safetensors"), &Device::Cpu)
            .unwrap();
    let video = &io["input.video"];
    let (b, t, c, h, w) = video.dims5().unwrap();
    let n = b * t;
    // The golden patch weights: the graph starts from them, not from the mask.
    let patch_weights = &io["ref_f64.patch_weights"];
    let p = patch_weights.elem_count() / n;

    let mut frame = session::open_cpu(&dir.path().join(FRAME_ENCODER_FILE), THREADS, None).unwrap();
    let (shape, features) = run(
        &mut frame,
        &[
            (PIXELS, vec![n, c, h, w], &f32s(video)),
            (PATCH_WEIGHTS, vec![n, p], &f32s(patch_weights)),
        ],
    );
    let e = model.embed_dim();
    assert_eq!(shape, [n as i64, e as i64]);
    assert_close(
        &format!("{weights} {form:?}: frame_features"),
        &features,
        &f32s(&io["ref_f64.frame_features"]),
        1e-4,
    );

    let mut temporal =
        session::open_cpu(&dir.path().join(TEMPORAL_ENCODER_FILE), THREADS, None).unwrap();
    let (shape, video_emb) = run(&mut temporal, &[(FRAME_FEATURES, vec![b, t, e], &features)]);
    assert_eq!(shape, [b as i64, e as i64]);
    assert_close(
        &format!("{weights} {form:?}: video_embedding (ONNX frames -> ONNX temporal)"),
        &video_emb,
        &f32s(&io["ref_f64.video_embedding"]),
        1e-4,
    );
    // Batch 1 gives the same as the batch it was part of.
    let (_, one) = run(
        &mut temporal,
        &[(FRAME_FEATURES, vec![1, t, e], &features[t * e..])],
    );
    assert_close("temporal batch 1 vs 2", &one, &video_emb[e..], 1e-6);
}

#[test]
fn golden_parity_safetensors_contrib_attention() {
    check_golden(
        "emotionclip-tiny/weights.safetensors",
        AttentionForm::Contrib,
    );
}

#[test]
fn golden_parity_release_format_pt_contrib_attention() {
    check_golden("emotionclip-tiny/release_format.pt", AttentionForm::Contrib);
}

#[test]
fn golden_parity_safetensors_standard_attention() {
    check_golden(
        "emotionclip-tiny/weights.safetensors",
        AttentionForm::Standard,
    );
}

/// ONNX against candle on the same seeded weights: random pixels, random masks.
fn check_against_candle(cfg: &EmotionClipConfig, seed: u64, batch: usize, tol: f64) {
    let dev = Device::Cpu;
    let model = EmotionClip::random(cfg, seed, &dev).unwrap();
    let (dir, _) = exported(&model, AttentionForm::Contrib);
    let s = cfg.vision_cfg.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &dev).unwrap();
    let mask = Tensor::rand(0f32, 1.0, (batch, s, s), &dev)
        .unwrap()
        .ge(0.5)
        .unwrap();
    let (want, _) = model.encode_frames(&pixels, &mask).unwrap();
    let pw = model.backbone.visual.patch_weights(&mask).unwrap();
    let (_, p) = pw.dims2().unwrap();
    let mut frame = session::open_cpu(&dir.path().join(FRAME_ENCODER_FILE), THREADS, None).unwrap();
    let (_, got) = run(
        &mut frame,
        &[
            (PIXELS, vec![batch, 3, s, s], &f32s(&pixels)),
            (PATCH_WEIGHTS, vec![batch, p], &f32s(&pw)),
        ],
    );
    let name = format!("seed {seed} width {}", cfg.vision_cfg.width);
    assert_close(&format!("{name}: frame features"), &got, &f32s(&want), tol);

    let (t, e) = (model.video_len(), model.embed_dim());
    let windows = 2;
    let features = Tensor::randn(0f32, 1.0, (windows, t, e), &dev).unwrap();
    let want = model.encode_video_from_features(&features).unwrap();
    let mut temporal =
        session::open_cpu(&dir.path().join(TEMPORAL_ENCODER_FILE), THREADS, None).unwrap();
    let (_, got) = run(
        &mut temporal,
        &[(FRAME_FEATURES, vec![windows, t, e], &f32s(&features))],
    );
    assert_close(&format!("{name}: video embedding"), &got, &f32s(&want), tol);
}

#[test]
fn onnx_matches_candle_on_seeded_tiny_weights() {
    check_against_candle(&tiny_config(), 7, 5, 1e-5);
}

#[test]
fn onnx_matches_candle_on_seeded_vit_b32() {
    check_against_candle(&EmotionClipConfig::vit_b32(), 0, 2, 1e-4);
}

#[test]
fn onnx_runtime_fuses_gelu_and_runs_fused_attention() {
    let cfg = tiny_config();
    let model = EmotionClip::random(&cfg, 1, &Device::Cpu).unwrap();
    for form in [AttentionForm::Contrib, AttentionForm::Standard] {
        let (dir, _) = exported(&model, form);
        let (_, frame) = optimised(&dir.path().join(FRAME_ENCODER_FILE));
        let (_, temporal) = optimised(&dir.path().join(TEMPORAL_ENCODER_FILE));
        eprintln!("{form:?}: frame encoder after optimisation: {frame:?}");
        eprintln!("{form:?}: temporal encoder after optimisation: {temporal:?}");
        let count = |m: &BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
        let (vl, tl) = (cfg.vision_cfg.layers, cfg.temporal.layers);
        // Every exact GELU fused (with its bias): no Erf left.
        assert_eq!(count(&frame, "Erf") + count(&temporal, "Erf"), 0);
        assert_eq!(
            count(&frame, "com.microsoft.BiasGelu") + count(&frame, "com.microsoft.Gelu"),
            vl
        );
        assert_eq!(
            count(&temporal, "com.microsoft.BiasGelu") + count(&temporal, "com.microsoft.Gelu"),
            tl
        );
        if form == AttentionForm::Contrib {
            // The frame encoder's last block attends from the class token alone, in
            // standard ops (one Softmax); every other layer is one fused node.
            assert_eq!(count(&frame, "com.microsoft.Attention"), vl - 1);
            assert_eq!(count(&temporal, "com.microsoft.Attention"), tl);
            assert_eq!(count(&frame, "Softmax"), 1);
        }
    }
}

#[test]
fn the_cli_writes_both_graphs_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx");
    let weights = golden("emotionclip-tiny/weights.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args(["export-onnx", "--model"])
        .arg(&weights)
        .arg("--model-config")
        .arg(golden("emotionclip-tiny/config.json"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let m: ExportManifest =
        serde_json::from_slice(&std::fs::read(out.join(export::MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(
        m.weights_sha256.as_deref(),
        Some(affectd::digest::sha256_file(&weights).unwrap().as_str())
    );
    assert_eq!(m.precision, Precision::F32);
    assert_eq!(m.exporter_version, export::EXPORTER_VERSION);
    assert_eq!(m.model_config, tiny_config());
    for g in [&m.frame_encoder, &m.temporal_encoder] {
        let bytes = std::fs::read(out.join(&g.file)).unwrap();
        assert_eq!(
            affectd::digest::sha256_file(&out.join(&g.file)).unwrap(),
            g.sha256
        );
        assert!(graph::from_bytes(&bytes).is_ok());
    }
    assert_eq!(m.frame_encoder.outputs[0].name, FEATURES);
    assert_eq!(m.temporal_encoder.outputs[0].name, VIDEO);
    assert_eq!(
        m.frame_encoder.inputs[1].shape,
        [serde_json::json!("batch"), serde_json::json!(16)]
    );

    // int8 without windows to check it on (and without --force) is a usage error (exit 2),
    // and writes nothing.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args(["export-onnx", "--precision", "int8", "--model"])
        .arg(&weights)
        .arg("--out")
        .arg(dir.path().join("int8"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--check-windows DIR"), "{stderr}");
    assert!(!dir.path().join("int8").exists());
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    affectd::train::zero_shot::cosine(a, b).into()
}

/// Mean and min cosine of matching rows of width `e`.
fn row_cosines(a: &[f32], b: &[f32], e: usize) -> (f64, f64) {
    let c: Vec<f64> = a
        .chunks_exact(e)
        .zip(b.chunks_exact(e))
        .map(|(x, y)| cosine(x, y))
        .collect();
    (
        c.iter().sum::<f64>() / c.len() as f64,
        c.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

/// Frame features [n, e] and video embeddings [n / t, e] of an export in `dir` on `pixels`
/// and `patch_weights` of `n` frames.
fn run_export(
    dir: &Path,
    pixels: &[f32],
    pw: &[f32],
    n: usize,
    s: usize,
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let p = pw.len() / n;
    let mut frame = session::open_cpu(&dir.join(FRAME_ENCODER_FILE), THREADS, None).unwrap();
    let (_, features) = run(
        &mut frame,
        &[
            (PIXELS, vec![n, 3, s, s], pixels),
            (PATCH_WEIGHTS, vec![n, p], pw),
        ],
    );
    let e = features.len() / n;
    let mut temporal = session::open_cpu(&dir.join(TEMPORAL_ENCODER_FILE), THREADS, None).unwrap();
    let (_, video) = run(
        &mut temporal,
        &[(FRAME_FEATURES, vec![n / t, t, e], &features)],
    );
    (features, video)
}

/// Random pixels and subject masks for `n` frames of the model's size; their patch weights.
fn random_inputs(model: &EmotionClip, n: usize) -> (Vec<f32>, Vec<f32>) {
    let s = model.config().vision_cfg.image_size;
    let dev = Device::Cpu;
    let pixels = Tensor::randn(0f32, 1.0, (n, 3, s, s), &dev).unwrap();
    let mask = Tensor::rand(0f32, 1.0, (n, s, s), &dev)
        .unwrap()
        .ge(0.5)
        .unwrap();
    let pw = model.backbone.visual.patch_weights(&mask).unwrap();
    (f32s(&pixels), f32s(&pw))
}

#[test]
fn int8_exports_run_in_onnx_runtime_close_to_f32() {
    let cfg = tiny_config();
    let model = EmotionClip::random(&cfg, 3, &Device::Cpu).unwrap();
    let (s, t, e) = (
        cfg.vision_cfg.image_size,
        model.video_len(),
        model.embed_dim(),
    );
    let n = 2 * t;
    let (pixels, pw) = random_inputs(&model, n);
    let (reference, _) = exported(&model, AttentionForm::Contrib);
    let (f_ref, v_ref) = run_export(reference.path(), &pixels, &pw, n, s, t);
    let forms = [
        (
            Int8MatMul::DynamicQuantizeMatMul,
            Int8Attention::QAttention,
            AttentionForm::Contrib,
        ),
        (
            Int8MatMul::MatMulIntegerToFloat,
            Int8Attention::QAttention,
            AttentionForm::Contrib,
        ),
        (
            Int8MatMul::MatMulInteger,
            Int8Attention::F32,
            AttentionForm::Contrib,
        ),
        (
            Int8MatMul::DynamicQuantizeMatMul,
            Int8Attention::Standard,
            AttentionForm::Standard,
        ),
    ];
    for (matmul, attention, form) in forms {
        for temporal in [false, true] {
            let opts = ExportOptions {
                int8_matmul: matmul,
                int8_attention: attention,
                int8_temporal: temporal,
                ..ExportOptions::new(Precision::Int8, form)
            };
            let dir = tempfile::tempdir().unwrap();
            let m =
                affectd::onnx::export_with(&model, &WeightsSource::Seeded(3), &opts, dir.path())
                    .unwrap();
            let info = m.int8.as_ref().expect("int8 info");
            assert_eq!(info.matmul, matmul);
            assert_eq!(info.quantized.len(), 1 + usize::from(temporal));
            assert!(info.check.is_none());
            // The weights are int8 in the file: the frame graph is far smaller than f32.
            let size = |d: &Path| std::fs::metadata(d.join(FRAME_ENCODER_FILE)).unwrap().len();
            let ratio = size(dir.path()) as f64 / size(reference.path()) as f64;
            let (f_q, v_q) = run_export(dir.path(), &pixels, &pw, n, s, t);
            let (fm, fmin) = row_cosines(&f_ref, &f_q, e);
            let (vm, vmin) = row_cosines(&v_ref, &v_q, e);
            eprintln!(
                "{matmul:?} + {attention:?} ({form:?}), temporal int8 {temporal}: frame graph \
                 {ratio:.2}x f32 size; frame cosine mean {fm:.5} min {fmin:.5}; video cosine \
                 mean {vm:.5} min {vmin:.5}"
            );
            // (The tiny model's conv and embeddings are a larger share than ViT-B/32's.)
            assert!(ratio < 0.7, "{ratio}");
            // Measured on this tiny random model (width 64): >= 0.999 frame, >= 0.9995 video.
            assert!(fmin >= 0.995, "frame cosine {fmin}");
            assert!(vmin >= 0.995, "video cosine {vmin}");
        }
    }
}

#[test]
fn int8_graphs_hold_the_quantised_ops_onnx_runtime_keeps() {
    let cfg = tiny_config();
    let model = EmotionClip::random(&cfg, 4, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    affectd::onnx::export(
        &model,
        &WeightsSource::Seeded(4),
        Precision::Int8,
        AttentionForm::Contrib,
        dir.path(),
    )
    .unwrap();
    let (_, frame) = optimised(&dir.path().join(FRAME_ENCODER_FILE));
    eprintln!("int8 frame encoder after optimisation: {frame:?}");
    let count = |k: &str| frame.get(k).copied().unwrap_or(0);
    let layers = cfg.vision_cfg.layers;
    // Per layer: QAttention for the packed QKV, DynamicQuantizeMatMul for the attention
    // output, c_fc and c_proj. The last layer (class token only) quantises its Q, K and V
    // projections as three more; one more for the final projection. No f32 MatMul but the
    // subject token's and the last layer's two over activations (scores, probs @ V).
    assert_eq!(count("com.microsoft.QAttention"), layers - 1);
    assert_eq!(count("com.microsoft.DynamicQuantizeMatMul"), 3 * layers + 4);
    assert_eq!(count("com.microsoft.Attention"), 0);
    // (ONNX Runtime folds the scores' K transpose and scale into a FusedMatMul.)
    assert_eq!(count("MatMul") + count("com.microsoft.FusedMatMul"), 3);
}

/// Not a test: writes the seeded ViT-B/32 in every int8 form (and f32, fp16) into
/// `$AFFECTD_EXPORT_FORMS` for timing them side by side (BENCHMARKS.md).
#[test]
#[ignore = "a tool: AFFECTD_EXPORT_FORMS=DIR cargo test --test onnx_export -- --ignored forms"]
fn write_vit_b32_export_forms() {
    let Some(out) = std::env::var_os("AFFECTD_EXPORT_FORMS") else {
        return;
    };
    let out = PathBuf::from(out);
    let model = EmotionClip::random(&EmotionClipConfig::vit_b32(), 0, &Device::Cpu).unwrap();
    let int8 = |matmul, attention, form| ExportOptions {
        int8_matmul: matmul,
        int8_attention: attention,
        ..ExportOptions::new(Precision::Int8, form)
    };
    let forms = [
        (
            "f32",
            ExportOptions::new(Precision::F32, AttentionForm::Contrib),
        ),
        (
            "fp16",
            ExportOptions::new(Precision::Fp16, AttentionForm::Contrib),
        ),
        (
            "dqmm_qattn",
            int8(
                Int8MatMul::DynamicQuantizeMatMul,
                Int8Attention::QAttention,
                AttentionForm::Contrib,
            ),
        ),
        (
            "mmitf_qattn",
            int8(
                Int8MatMul::MatMulIntegerToFloat,
                Int8Attention::QAttention,
                AttentionForm::Contrib,
            ),
        ),
        (
            "mmi_qattn",
            int8(
                Int8MatMul::MatMulInteger,
                Int8Attention::QAttention,
                AttentionForm::Contrib,
            ),
        ),
        (
            "dqmm_f32attn",
            int8(
                Int8MatMul::DynamicQuantizeMatMul,
                Int8Attention::F32,
                AttentionForm::Contrib,
            ),
        ),
        (
            "dqmm_standard",
            int8(
                Int8MatMul::DynamicQuantizeMatMul,
                Int8Attention::Standard,
                AttentionForm::Standard,
            ),
        ),
    ];
    for (name, opts) in forms {
        affectd::onnx::export_with(&model, &WeightsSource::Seeded(0), &opts, &out.join(name))
            .unwrap();
    }
}

/// A capture dataset of `windows` 8-frame windows of the demo clip at `size` px, cropped
/// around a box that walks across the frame, written by the daemon's own writer.
fn capture_dataset(dir: &Path, size: usize, windows: usize) {
    use affectd::capture::{DatasetWriter, Manifest, WindowRecord};
    use affectd::model::preprocess::{self, CropPolicy, ImageView};
    use affectd::types::{BBox, Detection};
    let t = 8;
    let frames: Vec<_> = affectd::ingest::FileFrames::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vtest.mp4"),
        "check",
    )
    .unwrap()
    .step_by(3)
    .take(windows * t)
    .map(Result::unwrap)
    .collect();
    assert_eq!(frames.len(), windows * t);
    let manifest = Manifest::new(size, t, CropPolicy::SUBJECT_DEFAULT, "tiny");
    let mut writer = DatasetWriter::open(dir, &manifest, u64::MAX).unwrap();
    for (w, window) in frames.chunks_exact(t).enumerate() {
        let bboxes: Vec<BBox> = (0..t)
            .map(|f| {
                let x = 100.0 + 40.0 * w as f32 + 4.0 * f as f32;
                BBox::new(x, 150.0, x + 90.0, 400.0)
            })
            .collect();
        let crops: Vec<_> = window
            .iter()
            .zip(&bboxes)
            .map(|(frame, &bbox)| {
                let subject = [Detection { bbox, score: 1.0 }];
                let view = ImageView::from_frame(frame).unwrap();
                preprocess::prepare_crop(view, &subject, CropPolicy::SUBJECT_DEFAULT, size)
            })
            .collect();
        let walls: Vec<_> = window.iter().map(|f| f.wall).collect();
        let seqs: Vec<_> = window.iter().map(|f| f.seq).collect();
        writer
            .write(&WindowRecord {
                camera: "check",
                track_id: w as u64 + 1,
                model: "tiny",
                crops: crops.iter().collect(),
                walls: &walls,
                frame_seqs: &seqs,
                bboxes: &bboxes,
                frame_size: (window[0].width, window[0].height),
            })
            .unwrap();
    }
}

#[test]
fn the_cli_checks_int8_against_f32_on_captured_windows_and_refuses_below_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("capture");
    capture_dataset(&windows, tiny_config().vision_cfg.image_size, 4);
    let weights = golden("emotionclip-tiny/weights.safetensors");
    let export = |out: &Path, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_affectd"))
            .args(["export-onnx", "--precision", "int8", "--model"])
            .arg(&weights)
            .arg("--model-config")
            .arg(golden("emotionclip-tiny/config.json"))
            .arg("--check-windows")
            .arg(&windows)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };

    let out = dir.path().join("int8");
    let ok = export(&out, &[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(ok.status.success());
    assert!(stdout.contains("video embedding cosine: mean"), "{stdout}");
    assert!(stdout.contains("top-1 zero-shot agreement"), "{stdout}");
    let m: ExportManifest =
        serde_json::from_slice(&std::fs::read(out.join(export::MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(m.precision, Precision::Int8);
    let info = m.int8.expect("int8 info");
    assert_eq!(info.matmul, Int8MatMul::DynamicQuantizeMatMul);
    assert_eq!(info.attention, Int8Attention::QAttention);
    let check = info.check.expect("the check is recorded");
    assert_eq!((check.windows, check.frames), (4, 32));
    assert!(check.passed && !check.forced);
    assert!(check.video_cosine_mean >= 0.99, "{check:?}");
    assert!(check.video_cosine_min <= check.video_cosine_mean);
    assert!(check.frame_cosine_min <= check.frame_cosine_mean);
    // The golden tiny text tower has a 1000-token vocabulary: no zero-shot classes.
    assert_eq!(check.top1_agreement, None);
    assert!(check.top1_unavailable.is_some());
    for g in [&m.frame_encoder, &m.temporal_encoder] {
        assert_eq!(
            affectd::digest::sha256_file(&out.join(&g.file)).unwrap(),
            g.sha256
        );
    }

    // Above the bar: refused with exit 1, nothing written, no scratch folder left.
    let scratch = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("affectd-export-")
                    && name.contains(&format!("-{}-", std::process::id()))
            })
            .count()
    };
    let refused_out = dir.path().join("refused");
    let refused = export(&refused_out, &["--min-cosine", "1.01"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("int8 refused"), "{stderr}");
    assert!(!refused_out.exists());
    assert_eq!(scratch(), 0);

    // --force writes it anyway and says so in the manifest.
    let forced = export(&refused_out, &["--min-cosine", "1.01", "--force"]);
    assert!(forced.status.success());
    let m: ExportManifest =
        serde_json::from_slice(&std::fs::read(refused_out.join(export::MANIFEST_FILE)).unwrap())
            .unwrap();
    let check = m.int8.unwrap().check.unwrap();
    assert!(!check.passed && check.forced);
}

#[test]
fn fp16_export_is_f16_inside_with_f32_inputs_and_outputs() {
    use affectd::onnx::proto::tensor_proto::DataType;
    let cfg = tiny_config();
    let model = EmotionClip::random(&cfg, 5, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    affectd::onnx::export(
        &model,
        &WeightsSource::Seeded(5),
        Precision::Fp16,
        AttentionForm::Contrib,
        dir.path(),
    )
    .unwrap();
    for file in [FRAME_ENCODER_FILE, TEMPORAL_ENCODER_FILE] {
        let m = graph::from_bytes(&std::fs::read(dir.path().join(file)).unwrap()).unwrap();
        let g = m.graph.unwrap();
        let types: BTreeMap<i32, usize> = g.initializer.iter().fold(BTreeMap::new(), |mut c, t| {
            *c.entry(t.data_type.unwrap()).or_default() += 1;
            c
        });
        eprintln!("{file}: initializer types {types:?}");
        // Only shapes, axes and indices (int64) besides f16.
        assert!(
            types
                .keys()
                .all(|t| *t == DataType::Float16 as i32 || *t == DataType::Int64 as i32)
        );
        for v in g.input.iter().chain(&g.output) {
            let Some(affectd::onnx::proto::type_proto::Value::TensorType(t)) =
                v.r#type.as_ref().unwrap().value.as_ref()
            else {
                panic!("{v:?}")
            };
            assert_eq!(t.elem_type, Some(DataType::Float as i32), "{v:?}");
        }
        let casts = g
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Cast"))
            .count();
        assert_eq!(casts, g.input.len() + g.output.len(), "{file}");
    }
    // ONNX Runtime's CPU EP runs it (casting to f32 around ops it has no f16 kernel for):
    // close to the f32 export. (Speed on the CPU is not the point: fp16 is for CUDA/TensorRT.)
    let (s, t, e) = (
        cfg.vision_cfg.image_size,
        model.video_len(),
        model.embed_dim(),
    );
    let n = t;
    let (pixels, pw) = random_inputs(&model, n);
    let (reference, _) = exported(&model, AttentionForm::Contrib);
    let (f_ref, v_ref) = run_export(reference.path(), &pixels, &pw, n, s, t);
    let (f_h, v_h) = run_export(dir.path(), &pixels, &pw, n, s, t);
    let (fm, fmin) = row_cosines(&f_ref, &f_h, e);
    let (vm, vmin) = row_cosines(&v_ref, &v_h, e);
    eprintln!(
        "fp16 on the CPU EP: frame cosine mean {fm:.6} min {fmin:.6}; video {vm:.6} {vmin:.6}"
    );
    assert!(fmin >= 0.999 && vmin >= 0.999, "{fmin} {vmin}");
}

#[test]
fn the_int8_check_measures_cosine_and_zero_shot_agreement() {
    // The tiny teacher has the full CLIP vocabulary, so the default read-out's classes embed.
    let cfg = EmotionClipConfig::from_json_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-teacher.json"),
    )
    .unwrap();
    let model = EmotionClip::random(&cfg, 8, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("capture");
    capture_dataset(&windows, cfg.vision_cfg.image_size, 3);
    let (f32_dir, int8_dir) = (dir.path().join("f32"), dir.path().join("int8"));
    for (p, d) in [(Precision::F32, &f32_dir), (Precision::Int8, &int8_dir)] {
        affectd::onnx::export(
            &model,
            &WeightsSource::Seeded(8),
            p,
            AttentionForm::Contrib,
            d,
        )
        .unwrap();
    }
    let source = affectd::train::data::CapturedWindows::open(&windows).unwrap();
    let check =
        affectd::onnx::quantize::compare(&model, &f32_dir, &int8_dir, &source, "test", 2, 0.99)
            .unwrap();
    eprintln!("{}", check.report());
    // At most 2 of the 3 windows.
    assert_eq!((check.windows, check.frames), (2, 16));
    assert!(check.passed, "{check:?}");
    assert!(check.top1_unavailable.is_none(), "{check:?}");
    assert!(check.top1_agreement.unwrap() >= 0.5, "{check:?}");
    // The same export compared with itself: cosine 1, full agreement.
    let same =
        affectd::onnx::quantize::compare(&model, &f32_dir, &f32_dir, &source, "test", 3, 0.99)
            .unwrap();
    assert!(
        same.video_cosine_min > 0.99999 && same.frame_cosine_min > 0.99999,
        "{same:?}"
    );
    assert_eq!(same.top1_agreement, Some(1.0));
}
