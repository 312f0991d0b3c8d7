//! The daemon serving EmotionCLIP through ONNX Runtime (`[model] runtime`), with the real ONNX
//! Runtime on the CPU and the tiny model: the live encoder through ONNX against candle (fresh
//! windows, incremental updates, a model swap), the incremental update against a full
//! recompute, `affectd embed --runtime onnx` against the official goldens, the engine choice
//! of `encode::load` (`onnx`, `auto`'s fallback), and a daemon serving through ONNX that
//! re-exports a corrupt cache entry.
//!
//! ONNX Runtime is found the way the daemon finds it: `ORT_DYLIB_PATH` (scripts/env.sh), else
//! the search list (which includes `./.venv/lib/python3*/site-packages/onnxruntime/capi/`).

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use affectd::detect::{Provider, SessionSpec};
use affectd::encode::{
    CandleEngine, Engine, LiveEncoder, ModelConfig, ModelRuntime, OnnxEngine, WindowUpdate,
};
use affectd::model::preprocess::{self, CropPolicy, FrameInput};
use affectd::model::{EmotionClip, EmotionClipConfig};
use affectd::onnx::serve::{OnnxEncoder, ServeOptions};
use affectd::onnx::{AttentionForm, Precision, WeightsSource};
use affectd::readout::ReadoutConfig;
use affectd::types::{BBox, CameraId, Frame, PersonSample};
use candle_core::{DType, Device, Tensor};

use daemon::{Daemon, NODE, TINY_ONNX_CACHE, config, detect_sections, fixture, tiny_model_section};
use mosquitto::{Mosquitto, Subscriber};

fn golden(rel: &str) -> PathBuf {
    fixture("golden").join(rel)
}

fn tiny_config() -> EmotionClipConfig {
    EmotionClipConfig::from_json_file(&golden("emotionclip-tiny/config.json")).unwrap()
}

/// The tiny golden model (trained weights).
fn tiny() -> EmotionClip {
    EmotionClip::load(
        &golden("emotionclip-tiny/weights.safetensors"),
        &tiny_config(),
        &Device::Cpu,
    )
    .unwrap()
}

/// `model` exported into `cache` and served by ONNX Runtime on the CPU, 2 threads.
fn onnx_engine(model: &EmotionClip, seed: u64, cache: &Path) -> Box<dyn Engine> {
    let trt = cache.join("trt");
    let opts = ServeOptions {
        cache_dir: cache,
        precision: Precision::F32,
        attention: AttentionForm::default(),
        session: SessionSpec {
            section: "model",
            ort_library: None,
            providers: &[Provider::Cpu],
            threads: 2,
            trt_fp16: false,
            trt_cache_dir: &trt,
        },
    };
    let (encoder, _) = OnnxEncoder::serve(model, &WeightsSource::Seeded(seed), &opts).unwrap();
    Box::new(OnnxEngine(encoder))
}

/// A 96x80 frame with a deterministic texture that changes with `n`.
fn frame(camera: &CameraId, n: u64) -> Frame {
    let (w, h) = (96u32, 80u32);
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i as u64 * 31 + n * 17) % 251) as u8)
        .collect();
    Frame {
        camera: camera.clone(),
        seq: n,
        pts: Some(Duration::from_millis(125 * n)),
        wall: SystemTime::UNIX_EPOCH + Duration::from_millis(125 * n),
        width: w,
        height: h,
        rgb: Arc::from(rgb),
    }
}

fn sample(camera: &CameraId, n: u64, track_id: u64) -> PersonSample {
    let x = 10.0 + n as f32 * 2.0;
    PersonSample {
        frame: frame(camera, n),
        track_id,
        bbox: BBox::new(x, 12.0 + track_id as f32, x + 30.0, 70.0),
    }
}

fn last_frame(u: &WindowUpdate) -> u64 {
    u.end
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 125
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Two persons, frames `from..to`, one batch per frame holding both.
fn run(live: &mut LiveEncoder, camera: &CameraId, from: u64, to: u64) -> Vec<WindowUpdate> {
    let mut updates = Vec::new();
    for n in from..to {
        updates.extend(
            live.push(&[sample(camera, n, 1), sample(camera, n, 2)])
                .unwrap(),
        );
    }
    updates
}

#[test]
fn the_live_encoder_through_onnx_equals_candle_across_updates_and_a_swap() {
    let camera: CameraId = Arc::from("cam");
    let cache = tempfile::tempdir().unwrap();
    let model = tiny();
    let mut candle = LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 2);
    let mut onnx = LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 2)
        .with_engine(onnx_engine(&model, 0, cache.path()));
    assert_eq!(
        (candle.engine_name(), onnx.engine_name()),
        ("candle", "onnx")
    );

    let (a, b) = (
        run(&mut candle, &camera, 0, 12),
        run(&mut onnx, &camera, 0, 12),
    );
    // Full at frame 7, then every 2 frames: frames 7, 9, 11 for each person.
    assert_eq!((a.len(), b.len()), (6, 6));
    let mut worst = 0.0f32;
    for (c, o) in a.iter().zip(&b) {
        assert_eq!((c.track_id, c.end, c.frames), (o.track_id, o.end, o.frames));
        let d = max_abs(&c.embedding, &o.embedding);
        assert!(
            d <= 1e-4,
            "track {} frame {}: {d:e}",
            c.track_id,
            last_frame(c)
        );
        worst = worst.max(d);
    }
    eprintln!("6 windows: ONNX vs candle max abs diff {worst:.3e} (tolerance 1e-4)");

    // A reload: both swap to other weights (ONNX with their own export) and re-encode the
    // windows they hold; the next updates still agree.
    let other = EmotionClip::random(&tiny_config(), 3, &Device::Cpu).unwrap();
    candle
        .swap_model(other.clone(), Box::new(CandleEngine), 3, &mut || {})
        .unwrap();
    let (_, old) = onnx
        .swap_model(
            other.clone(),
            onnx_engine(&other, 3, cache.path()),
            3,
            &mut || {},
        )
        .unwrap();
    assert_eq!(old.name(), "onnx");
    assert_eq!(onnx.tracks(), 2, "the tracks survive the swap");
    let (a, b) = (
        run(&mut candle, &camera, 12, 14),
        run(&mut onnx, &camera, 12, 14),
    );
    assert_eq!((a.len(), b.len()), (2, 2));
    let mut worst = 0.0f32;
    for (c, o) in a.iter().zip(&b) {
        let d = max_abs(&c.embedding, &o.embedding);
        assert!(d <= 1e-4, "after the swap, track {}: {d:e}", c.track_id);
        worst = worst.max(d);
    }
    eprintln!("after a swap: ONNX vs candle max abs diff {worst:.3e} (tolerance 1e-4)");
}

#[test]
fn incremental_window_updates_through_onnx_equal_a_full_recompute() {
    let camera: CameraId = Arc::from("cam");
    let cache = tempfile::tempdir().unwrap();
    let model = tiny();
    let mut live = LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 2)
        .with_engine(onnx_engine(&model, 0, cache.path()));
    // A second session of the same export recomputes whole windows.
    let mut full = onnx_engine(&model, 0, cache.path());
    let updates = run(&mut live, &camera, 0, 14);
    assert_eq!(updates.len(), 8);
    let s = model.config().vision_cfg.image_size;
    let mut worst = 0.0f32;
    for u in &updates {
        let last = last_frame(u);
        let inputs: Vec<FrameInput> = (last - 7..=last)
            .map(|n| live.prepare(&sample(&camera, n, u.track_id)).unwrap())
            .collect();
        let (pixels, masks) = preprocess::stack(&inputs, &Device::Cpu).unwrap();
        assert_eq!(pixels.dims(), [8, 3, s, s]);
        let features = full.frames(&model, &pixels, &masks).unwrap();
        let video = full
            .video(&model, &features.unsqueeze(0).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let d = max_abs(&video[0], &u.embedding);
        assert!(d <= 1e-5, "track {} frame {last}: {d:e}", u.track_id);
        worst = worst.max(d);
    }
    eprintln!(
        "{} incremental updates through ONNX vs full ONNX recomputes: max abs diff {worst:.3e} \
         (tolerance 1e-5)",
        updates.len()
    );
}

#[test]
fn embed_cli_runtime_onnx_reproduces_the_golden_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_affectd"))
        .arg("embed")
        .arg("--model")
        .arg(golden("emotionclip-tiny/release_format.pt"))
        .arg("--model-config")
        .arg(golden("emotionclip-tiny/config.json"))
        .arg("--input")
        .arg(golden("emotionclip-tiny/io.safetensors"))
        .arg("--output")
        .arg(&out)
        .args(["--runtime", "onnx"])
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let io =
        candle_core::safetensors::load(golden("emotionclip-tiny/io.safetensors"), &Device::Cpu)
            .unwrap();
    let f32s = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    for (k, dims, tol) in [
        ("frame_features", vec![2, 8, 32], 1e-4),
        ("hmn_token", vec![16, 64], 1e-5),
        ("video_embedding", vec![2, 32], 1e-4),
        ("text_embedding", vec![2, 32], 1e-4),
    ] {
        assert_eq!(got[k].dims(), dims, "{k}");
        let d = max_abs(&f32s(&got[k]), &f32s(&io[&format!("ref_f64.{k}")]));
        eprintln!("embed --runtime onnx {k}: max abs diff {d:.3e} (tolerance {tol:.0e})");
        assert!(f64::from(d) <= tol, "{k}: {d:e}");
    }
}

/// `[model]` of the tiny teacher architecture (its text tower embeds the class descriptions),
/// seeded, exporting into `cache`.
fn tiny_teacher(runtime: ModelRuntime, cache: &Path) -> ModelConfig {
    ModelConfig {
        allow_untrained: true,
        seed: 7,
        config: Some(fixture("tiny-teacher.json")),
        runtime,
        onnx_cache_dir: cache.to_owned(),
        threads: 1,
        ..ModelConfig::default()
    }
}

fn entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("emotionclip-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn load_serves_onnx_from_the_cache_and_auto_falls_back_to_candle() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("onnx");
    let readout = ReadoutConfig::default();
    let loaded =
        affectd::encode::load(&tiny_teacher(ModelRuntime::Onnx, &cache), &readout).unwrap();
    assert_eq!(loaded.encoder.engine_name(), "onnx");
    // Serving through ONNX Runtime, the process keeps none of the weights it no longer runs:
    // the text tower and candle's encoders are released, and say so if called.
    let model = loaded.encoder.model();
    let cfg = model.config().clone();
    let s = cfg.vision_cfg.image_size;
    let pixels = Tensor::zeros((1, 3, s, s), DType::F32, &Device::Cpu).unwrap();
    let masks = Tensor::ones((1, s, s), DType::U8, &Device::Cpu).unwrap();
    let tokens = Tensor::zeros((1, cfg.text_cfg.context_length), DType::I64, &Device::Cpu).unwrap();
    for e in [
        model.encode_text(&tokens).unwrap_err(),
        model.encode_frames(&pixels, &masks).unwrap_err(),
        model
            .encode_video_from_features(
                &Tensor::zeros(
                    (1, cfg.temporal.video_len, cfg.embed_dim),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap_err(),
    ] {
        assert!(e.to_string().contains("weights were released"), "{e}");
    }
    let e = affectd::onnx::export::frame_encoder(model, AttentionForm::default()).unwrap_err();
    assert!(e.to_string().contains("released"), "{e}");
    // What the live path still asks of it works.
    assert_eq!(
        model.backbone.visual.patch_weights(&masks).unwrap().dims(),
        &[1, cfg.vision_cfg.grid_size() * cfg.vision_cfg.grid_size()]
    );
    let first = entries(&cache);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("emotionclip-f32-"), "{first:?}");
    // A reload of the same model reuses the entry.
    let again = affectd::encode::load(&tiny_teacher(ModelRuntime::Auto, &cache), &readout).unwrap();
    assert_eq!(again.encoder.engine_name(), "onnx");
    assert_eq!(entries(&cache), first);
    // Another seed: another entry beside it.
    let mut other = tiny_teacher(ModelRuntime::Auto, &cache);
    other.seed = 8;
    affectd::encode::load(&other, &readout).unwrap();
    assert_eq!(entries(&cache).len(), 2);

    // A cache that cannot be created: `auto` serves candle, `onnx` refuses, saying why.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let unusable = blocker.join("onnx");
    let auto =
        affectd::encode::load(&tiny_teacher(ModelRuntime::Auto, &unusable), &readout).unwrap();
    assert_eq!(auto.encoder.engine_name(), "candle");
    let e = affectd::encode::load(&tiny_teacher(ModelRuntime::Onnx, &unusable), &readout)
        .err()
        .expect("runtime = onnx fails without its cache");
    let e = e.to_string();
    assert!(
        e.contains("runtime = \"onnx\"") && e.contains("a-file"),
        "{e}"
    );
    // `candle` never touches the cache.
    let candle =
        affectd::encode::load(&tiny_teacher(ModelRuntime::Candle, &unusable), &readout).unwrap();
    assert_eq!(candle.encoder.engine_name(), "candle");
    // candle keeps its encoders (it runs them) but not the text tower.
    let model = candle.encoder.model();
    assert!(model.encode_frames(&pixels, &masks).is_ok());
    assert!(model.encode_text(&tokens).is_err());
}

#[test]
fn a_daemon_serving_through_onnx_publishes_and_re_exports_a_corrupt_cache_entry() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(&broker, &format!("affectd/{NODE}/walkway/person/#"));
    let cache = tempfile::tempdir().unwrap();
    let model = tiny_model_section().replace(
        TINY_ONNX_CACHE,
        &format!(
            "runtime = \"onnx\"\nthreads = 1\nonnx_cache_dir = \"{}\"",
            cache.path().display()
        ),
    );
    assert!(model.contains("runtime = \"onnx\""));
    let cameras = format!(
        "[[camera]]\nid = \"walkway\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    );
    let config = config(&broker, &cameras, &(detect_sections() + &model));
    let person = |m: &mosquitto::Msg| {
        serde_json::from_slice::<serde_json::Value>(&m.payload)
            .is_ok_and(|v| v["model"]["name"] == "tiny-teacher")
    };

    // `affectd check` says what `run` will do with the cache, and writes nothing.
    let config_dir = tempfile::tempdir().unwrap();
    let config_path = config_dir.path().join("affectd.toml");
    std::fs::write(&config_path, &config).unwrap();
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_affectd"))
            .args(["check", "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        report
            .lines()
            .find(|l| l.starts_with("encoder "))
            .unwrap_or_else(|| panic!("no encoder line:\n{report}"))
            .to_owned()
    };
    let line = check();
    eprintln!("check before the first start: {line}");
    assert!(
        line.starts_with("encoder  ok    onnx f32: ONNX Runtime loads; nothing cached at")
            && line.contains("`affectd run` exports there at start"),
        "{line}"
    );
    assert!(entries(cache.path()).is_empty(), "check wrote to the cache");

    let mut first = Daemon::start(&config);
    let got = sub.wait_for(Duration::from_secs(25), person);
    let (status, _) = first.terminate(Duration::from_secs(10));
    let log = first.log();
    assert!(got.is_some(), "no person message:\n{log}");
    assert!(status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("encoder runtime:"))
        .unwrap_or_else(|| panic!("no runtime line:\n{log}"));
    eprintln!("first start: {line}");
    assert!(
        line.contains("encoder runtime: onnx") && line.contains("exported"),
        "{line}"
    );
    let entry = entries(cache.path());
    assert_eq!(entry.len(), 1, "{entry:?}");
    let line = check();
    eprintln!("check after it: {line}");
    assert!(
        line.starts_with("encoder  ok    onnx f32 on cpu: the cached export")
            && line.contains(&entry[0])
            && line.ends_with("is verified and opens"),
        "{line}"
    );

    // Corrupt the frame encoder in place: the next start must not trust it.
    let graph = cache.path().join(&entry[0]).join("frame_encoder.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&graph, &bytes).unwrap();
    let line = check();
    eprintln!("check of the corrupt entry: {line}");
    assert!(
        line.contains("is not trusted (frame_encoder.onnx: sha256")
            && line.ends_with("`affectd run` exports it again at start"),
        "{line}"
    );

    let mark = sub.mark();
    let mut second = Daemon::start(&config);
    let got = sub.wait_for_after(mark, Duration::from_secs(25), person);
    let (status, _) = second.terminate(Duration::from_secs(10));
    let log = second.log();
    assert!(
        got.is_some(),
        "no person message after the re-export:\n{log}"
    );
    assert!(status.success(), "{log}");
    let warned = log
        .lines()
        .find(|l| l.contains("not trusted"))
        .unwrap_or_else(|| panic!("the corrupt entry was trusted:\n{log}"));
    eprintln!("second start: {warned}");
    assert!(warned.contains("sha256"), "{warned}");
    let line = log
        .lines()
        .find(|l| l.contains("encoder runtime:"))
        .unwrap();
    eprintln!("second start: {line}");
    assert!(
        line.contains("encoder runtime: onnx") && line.contains("re-exported"),
        "{line}"
    );
    assert_eq!(
        entries(cache.path()),
        entry,
        "re-exported under the same name"
    );
}
