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
use affectd::onnx::{AttentionForm, ExportManifest, Precision, WeightsSource, session};
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
            assert_eq!(count(&frame, "com.microsoft.Attention"), vl);
            assert_eq!(count(&temporal, "com.microsoft.Attention"), tl);
            assert_eq!(count(&frame, "Softmax"), 0);
        }
    }
}

#[test]
fn export_refuses_unimplemented_precisions() {
    let model = EmotionClip::random(&tiny_config(), 1, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for p in [Precision::Fp16, Precision::Int8] {
        let e = affectd::onnx::export(
            &model,
            &WeightsSource::Seeded(1),
            p,
            AttentionForm::Contrib,
            dir.path(),
        )
        .unwrap_err();
        assert!(e.is_usage(), "{e}");
        assert!(e.to_string().contains("not implemented"), "{e}");
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
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

    // An unimplemented precision is a usage error (exit 2), and writes nothing.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args(["export-onnx", "--precision", "int8", "--model"])
        .arg(&weights)
        .arg("--out")
        .arg(dir.path().join("int8"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not implemented"), "{stderr}");
    assert!(!dir.path().join("int8").exists());
}
