//! The GPU checks of `scripts/gpu-check.sh`: ONNX Runtime's CUDA (and, where TensorRT 10 is
//! installed, TensorRT) provider against its CPU provider on the exported EmotionCLIP and the
//! detector, and the throughput rows for `BENCHMARKS.md`.
//!
//! Every test here is `#[ignore]`d: it needs an NVIDIA GPU, the GPU build of ONNX Runtime
//! (`scripts/install-deps.sh --gpu`, whose `affectd-gpu.env` names the library and the CUDA
//! libraries) and affectd built with `--features cuda,tensorrt`. `scripts/gpu-check.sh` runs
//! them with `-- --ignored`; on a machine without a GPU they fail, naming what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use affectd::detect::{Detector, Provider, SessionSpec};
use affectd::model::{EmotionClip, EmotionClipConfig};
use affectd::onnx::cache::{ExportCache, ExportKey};
use affectd::onnx::export::{FRAME_ENCODER_FILE, TEMPORAL_ENCODER_FILE};
use affectd::onnx::serve::OnnxEncoder;
use affectd::onnx::{AttentionForm, Precision, WeightsSource};
use candle_core::Device;

/// The seeded full-size model every row uses.
const SEED: u64 = 7;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A spec opening sessions on `providers` only (no fallback: a GPU row must run on the GPU).
fn spec<'a>(providers: &'a [Provider], trt_cache: &'a Path, fp16: bool) -> SessionSpec<'a> {
    SessionSpec {
        section: "model",
        ort_library: None,
        providers,
        threads: 0,
        trt_fp16: fp16,
        trt_cache_dir: trt_cache,
    }
}

/// Exports the seeded ViT-B/32 at `precision` into `dir` and opens it on `providers`.
fn open(
    model: &EmotionClip,
    precision: Precision,
    form: AttentionForm,
    dir: &Path,
    providers: &[Provider],
) -> Result<OnnxEncoder, String> {
    // The daemon's own path: the export cache (exported once, verified when reused).
    let key = ExportKey::new(
        &WeightsSource::Seeded(SEED),
        model.config(),
        precision,
        form,
    );
    let entry = ExportCache::new(dir)
        .get(model, &key)
        .map_err(|e| format!("export {}: {e}", precision.name()))?;
    assert!(entry.frame_encoder().ends_with(FRAME_ENCODER_FILE));
    assert!(entry.temporal_encoder().ends_with(TEMPORAL_ENCODER_FILE));
    let trt = entry.dir.join("trt");
    let fp16 = precision == Precision::Fp16;
    let encoder = OnnxEncoder::open(&entry, &spec(providers, &trt, fp16))
        .map_err(|e| format!("{providers:?}: {e}"))?;
    Ok(encoder)
}

/// `n` deterministic person crops: pixels in ImageNet-normalised range, and patch weights of a
/// centred box (what the daemon's masks give for a person filling the crop's middle).
fn inputs(n: usize, size: usize, grid: usize) -> (Vec<f32>, Vec<f32>) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    };
    let pixels = (0..n * 3 * size * size).map(|_| next()).collect();
    let weights = (0..n)
        .flat_map(|_| {
            (0..grid * grid).map(move |i| {
                let (r, c) = (i / grid, i % grid);
                let inside = (1..grid - 1).contains(&r) && (2..grid - 2).contains(&c);
                if inside { 1.0 } else { 0.0 }
            })
        })
        .collect();
    (pixels, weights)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The smallest cosine similarity over rows of `dim`.
fn min_cosine(a: &[f32], b: &[f32], dim: usize) -> f32 {
    a.chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .fold(1.0, f32::min)
}

#[test]
#[ignore = "needs an NVIDIA GPU and the GPU ONNX Runtime: scripts/gpu-check.sh"]
fn the_encoder_on_the_gpu_matches_the_cpu() {
    let cfg = EmotionClipConfig::vit_b32();
    let model = EmotionClip::random(&cfg, SEED, &Device::Cpu).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (size, grid) = (cfg.vision_cfg.image_size, cfg.vision_cfg.grid_size());
    let (e, t) = (cfg.embed_dim, cfg.temporal.video_len);
    let n = 8;
    let (pixels, weights) = inputs(n, size, grid);

    let f32_dir = work.path().join("f32");
    let mut cpu = open(
        &model,
        Precision::F32,
        AttentionForm::Contrib,
        &f32_dir,
        &[Provider::Cpu],
    )
    .unwrap();
    let want = cpu.frames(&pixels, &weights, n).unwrap();
    let want_video = cpu.video(&want, 1).unwrap();

    let mut cuda = open(
        &model,
        Precision::F32,
        AttentionForm::Contrib,
        &f32_dir,
        &[Provider::Cuda],
    )
    .unwrap();
    assert_eq!(cuda.provider(), Provider::Cuda);
    let got = cuda.frames(&pixels, &weights, n).unwrap();
    let got_video = cuda.video(&got, 1).unwrap();
    let (df, dv) = (
        max_abs_diff(&got, &want),
        max_abs_diff(&got_video, &want_video),
    );
    println!("| CUDA f32 vs CPU f32 | frame features max abs {df:.2e} | video {dv:.2e} |");
    assert!(df <= 1e-3 && dv <= 1e-3, "CUDA f32: {df:e}, {dv:e}");
    assert_eq!(want.len(), n * e);
    assert_eq!(want_video.len(), e);
    assert!(n >= t, "one window of {t} frames from the {n} crops");

    let fp16_dir = work.path().join("fp16");
    let mut half = open(
        &model,
        Precision::Fp16,
        AttentionForm::Contrib,
        &fp16_dir,
        &[Provider::Cuda],
    )
    .unwrap();
    let got = half.frames(&pixels, &weights, n).unwrap();
    let got_video = half.video(&got, 1).unwrap();
    let (cf, cv) = (
        min_cosine(&got, &want, e),
        min_cosine(&got_video, &want_video, e),
    );
    println!("| CUDA fp16 vs CPU f32 | frame features min cosine {cf:.5} | video {cv:.5} |");
    assert!(cf >= 0.999 && cv >= 0.999, "CUDA fp16 cosine {cf}, {cv}");

    // TensorRT is optional (not on PyPI proper): compared when it opens.
    let std_dir = work.path().join("standard");
    match open(
        &model,
        Precision::F32,
        AttentionForm::Standard,
        &std_dir,
        &[Provider::Tensorrt],
    ) {
        Ok(mut trt) => {
            let got = trt.frames(&pixels, &weights, n).unwrap();
            let d = max_abs_diff(&got, &want);
            println!("| TensorRT f32 vs CPU f32 | frame features max abs {d:.2e} | |");
            assert!(d <= 1e-3, "TensorRT f32: {d:e}");
        }
        Err(why) => println!("| TensorRT | not available: {why} | |"),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and the GPU ONNX Runtime: scripts/gpu-check.sh"]
fn gpu_throughput_rows() {
    let cfg = EmotionClipConfig::vit_b32();
    let model = EmotionClip::random(&cfg, SEED, &Device::Cpu).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (size, grid) = (cfg.vision_cfg.image_size, cfg.vision_cfg.grid_size());
    println!("| frame encoder, ViT-B/32 | provider | batch 1 | batch 8 | batch 32 | batch 128 |");
    println!("|---|---|---|---|---|---|");
    for precision in [Precision::F32, Precision::Fp16] {
        let dir = work.path().join(precision.name());
        let mut enc = open(
            &model,
            precision,
            AttentionForm::Contrib,
            &dir,
            &[Provider::Cuda],
        )
        .unwrap();
        let mut row = format!("| {} | CUDA |", precision.name());
        for n in [1, 8, 32, 128] {
            let (pixels, weights) = inputs(n, size, grid);
            for _ in 0..3 {
                enc.frames(&pixels, &weights, n).unwrap();
            }
            let (t0, mut runs) = (Instant::now(), 0);
            while t0.elapsed().as_secs_f64() < 3.0 {
                enc.frames(&pixels, &weights, n).unwrap();
                runs += 1;
            }
            let rate = (runs * n) as f64 / t0.elapsed().as_secs_f64();
            row += &format!(" {rate:.0} person-frames/s |");
        }
        println!("{row}");
    }

    // The detector on the bundled engine: frames per second at batch 1 and 8.
    let engine = repo("engines/nanodet-g-416-dynamic.toml");
    let text = format!(
        "engine = {engine:?}\nproviders = [\"cuda\"]\n",
        engine = engine.display().to_string()
    );
    let cfg: affectd::detect::DetectConfig = toml::from_str(&text).unwrap();
    let mut detector = Detector::new(&cfg).unwrap();
    assert_eq!(detector.provider(), Provider::Cuda);
    let n = detector.input_len();
    let input = vec![0.5f32; n * 8];
    let mut row = "| detector, NanoDet-g 416 | CUDA |".to_owned();
    for batch in [1, 8] {
        for _ in 0..3 {
            detector.infer(&input[..n * batch], batch).unwrap();
        }
        let (t0, mut runs) = (Instant::now(), 0);
        while t0.elapsed().as_secs_f64() < 3.0 {
            detector.infer(&input[..n * batch], batch).unwrap();
            runs += 1;
        }
        let rate = (runs * batch) as f64 / t0.elapsed().as_secs_f64();
        row += &format!(" batch {batch}: {rate:.0} frames/s |");
    }
    println!("{row}");
}
