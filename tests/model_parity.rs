//! Parity of the candle EmotionCLIP with the official PyTorch implementation, on the golden
//! vectors in `tests/fixtures/golden` (see its README for what each tensor is).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use affectd::model::preprocess::{
    self, ImageView, RgbImage, centre_crop_input, detector_to_image, resize_bicubic, resized_size,
    subject_mask,
};
use affectd::model::{ClipTokenizer, EmotionClip, EmotionClipConfig, Error};
use affectd::types::{BBox, Detection};
use candle_core::{DType, Device, IndexOp, Tensor};

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(rel)
}

fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(rel), &Device::Cpu).unwrap()
}

fn tiny_config() -> EmotionClipConfig {
    EmotionClipConfig::from_json_file(&golden("emotionclip-tiny/config.json")).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[track_caller]
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_abs_diff(got, want);
    eprintln!("{name}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{name}: max abs diff {d:e} > {tol:e}");
}

/// Runs every stage on the golden inputs and compares every stored intermediate.
fn check_against_golden(weights: &str) {
    let cfg = tiny_config();
    let model = EmotionClip::load(&golden(weights), &cfg, &Device::Cpu).unwrap();
    let io = load("emotionclip-tiny/io.safetensors");
    let r = |k: &str| &io[&format!("ref_f64.{k}")];
    let video = &io["input.video"];
    let (b, t, c, h, w) = video.dims5().unwrap();
    let frames = video.reshape((b * t, c, h, w)).unwrap();
    let masks = io["input.mask"].reshape((b * t, h, w)).unwrap();

    let tr = model.trace_frames(&frames, &masks).unwrap();
    assert_close("patch_weights", &tr.patch_weights, r("patch_weights"), 1e-7);
    assert_close("hmn_token", &tr.hmn_token, r("hmn_token"), 1e-5);
    assert_close("tokens_pre_ln", &tr.tokens_pre_ln, r("tokens_pre_ln"), 1e-5);
    assert_close(
        "tokens_post_ln_pre",
        &tr.tokens_post_ln_pre,
        r("tokens_post_ln_pre"),
        1e-4,
    );
    for (i, out) in tr.block_outputs.iter().enumerate() {
        assert_close(
            &format!("vit_block{i}_out"),
            out,
            r(&format!("vit_block{i}_out")),
            1e-4,
        );
    }
    assert_close("cls_post_ln", &tr.cls_post_ln, r("cls_post_ln"), 1e-4);
    let features = tr.features.reshape((b, t, ())).unwrap();
    assert_close("frame_features", &features, r("frame_features"), 1e-4);
    // An empty mask (video 0, frame 0) gives a zero subject token, not NaN.
    assert_eq!(
        max_abs_diff(
            &tr.hmn_token.i(0).unwrap(),
            &tr.hmn_token.i(0).unwrap().zeros_like().unwrap()
        ),
        0.0
    );

    let tt = model.trace_temporal(&features).unwrap();
    assert_close("temporal_in", &tt.temporal_in, r("temporal_in"), 1e-4);
    for (i, out) in tt.layer_outputs.iter().enumerate() {
        let k = format!("temporal_layer{i}_out");
        assert_close(&k, out, r(&k), 1e-4);
    }
    assert_close("temporal_out", &tt.temporal_out, r("temporal_out"), 1e-4);
    assert_close(
        "video_embedding",
        &tt.video_embedding,
        r("video_embedding"),
        1e-4,
    );
    let normalized = affectd::model::l2_normalize(&tt.video_embedding).unwrap();
    assert_close(
        "video_embedding_normalized",
        &normalized,
        r("video_embedding_normalized"),
        1e-4,
    );

    // The one-call path gives the same as frame + temporal.
    let direct = model.encode_video(video, &io["input.mask"]).unwrap();
    assert_close("encode_video vs staged", &direct, &tt.video_embedding, 1e-6);

    let text = model.encode_text(&io["input.text_tokens"]).unwrap();
    assert_close("text_embedding", &text, r("text_embedding"), 1e-4);
    let logits = model.similarity_logits(&tt.video_embedding, &text).unwrap();
    let want = (r("video_embedding_normalized")
        .matmul(&r("text_embedding_normalized").t().unwrap())
        .unwrap()
        * f64::from(model.logit_scale_exp().unwrap()))
    .unwrap();
    assert_close("similarity_logits", &logits, &want, 1e-3);
    let scale = model.logit_scale().unwrap();
    assert!(
        (scale - (1.0f32 / 0.07).ln()).abs() < 1e-3,
        "logit_scale {scale}"
    );
}

#[test]
fn golden_parity_with_safetensors_weights() {
    check_against_golden("emotionclip-tiny/weights.safetensors");
}

#[test]
fn golden_parity_with_release_format_pt() {
    check_against_golden("emotionclip-tiny/release_format.pt");
}

#[test]
fn frame_mask_is_the_union_of_boxes_above_half() {
    let io = load("emotionclip-tiny/io.safetensors");
    let boxes = io["input.boxes"].to_dtype(DType::F32).unwrap();
    let counts = io["input.box_count"].to_vec2::<i64>().unwrap();
    let masks = io["input.mask"].to_dtype(DType::U8).unwrap();
    let (b, t, _, _) = masks.dims4().unwrap();
    for v in 0..b {
        for f in 0..t {
            let rows = boxes.i((v, f)).unwrap().to_vec2::<f32>().unwrap();
            let dets: Vec<Detection> = rows[..counts[v][f] as usize]
                .iter()
                .map(|r| Detection {
                    bbox: BBox::new(r[0], r[1], r[2], r[3]),
                    score: r[4],
                })
                .collect();
            let want = masks
                .i((v, f))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap();
            assert_eq!(subject_mask(&dets, 64, 64), want, "video {v} frame {f}");
        }
    }
}

#[test]
fn tokenizer_matches_the_official_one() {
    let path = golden("tokenizer_io.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let texts: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["texts"]).unwrap();
    assert_eq!(texts.len(), 6);
    let want = load("tokenizer_io.safetensors")["tokens"]
        .to_vec2::<i64>()
        .unwrap();
    let tok = ClipTokenizer::new();
    let got = tok
        .tokenize_batch(&texts, &Device::Cpu)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(got[i], want[i], "text {i}: {text:?}");
    }
}

#[test]
fn preprocessing_matches_the_official_evaluation() {
    let g = load("preprocess_io.safetensors");
    let raw = g["raw_u8"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (h, w, _) = g["raw_u8"].dims3().unwrap();
    let frame = ImageView::new(w, h, &raw).unwrap();

    let (rw, rh) = resized_size(w, h, 256);
    let resized = resize_bicubic(frame, [0.0, 0.0, w as f64, h as f64], rw, rh);
    let want_resized = &g["resized_u8"];
    assert_eq!(want_resized.dims(), [rh, rw, 3]);
    let want = want_resized.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let worst = resized
        .rgb
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let differing = resized
        .rgb
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "resized_u8: {differing} of {} values differ, worst by {worst}",
        want.len()
    );
    assert_eq!(worst, 0, "PIL bicubic is reproduced exactly");

    let raw_boxes: Vec<Detection> = g["raw_boxes"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|r| Detection {
            bbox: BBox::new(r[0], r[1], r[2], r[3]),
            score: r[4],
        })
        .collect();
    let boxes = detector_to_image(&raw_boxes, rw, rh, 640, 640);
    let want_boxes = g["resized_boxes"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (got, want) in boxes.iter().zip(&want_boxes) {
        let b = got.bbox;
        assert_eq!([b.x1, b.y1, b.x2, b.y2, got.score], want[..]);
    }
    let mask = subject_mask(&boxes, rw, rh);
    let want_mask = g["resized_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert_eq!(mask, want_mask, "resized mask");

    let input = centre_crop_input(&resized, &mask, 224);
    let want_crop_mask = g["mask"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(input.mask, want_crop_mask, "cropped mask");
    let want_frame = g["video_frame"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = input
        .pixels
        .iter()
        .zip(&want_frame)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("video_frame: max abs diff {worst:e}");
    assert!(worst <= 1e-6, "normalised pixels differ by {worst}");

    // The crop itself, and the one-call policy path give the same.
    let crop = RgbImage {
        width: 224,
        height: 224,
        rgb: g["crop_u8"].flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    };
    assert_eq!(preprocess::normalize(crop.view()), input.pixels);
}

#[test]
fn embed_cli_reproduces_the_golden_vectors() {
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
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let io = load("emotionclip-tiny/io.safetensors");
    for (k, dims, tol) in [
        ("frame_features", vec![2, 8, 32], 1e-4),
        ("hmn_token", vec![16, 64], 1e-5),
        ("video_embedding", vec![2, 32], 1e-4),
        ("text_embedding", vec![2, 32], 1e-4),
    ] {
        assert_eq!(got[k].dtype(), DType::F32, "{k}");
        assert_eq!(got[k].dims(), dims, "{k}");
        assert_close(
            &format!("embed {k}"),
            &got[k],
            &io[&format!("ref_f64.{k}")],
            tol,
        );
    }

    // A missing input is a usage error: exit code 2.
    let status = Command::new(env!("CARGO_BIN_EXE_affectd"))
        .arg("embed")
        .arg("--model")
        .arg(golden("emotionclip-tiny/weights.safetensors"))
        .arg("--model-config")
        .arg(golden("emotionclip-tiny/config.json"))
        .arg("--input")
        .arg(dir.path().join("absent.safetensors"))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn partial_or_renamed_checkpoint_names_the_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = load("emotionclip-tiny/weights.safetensors");
    tensors.remove("backbone.visual.proj").unwrap();
    let pos = tensors
        .remove("visual_head.frame_position_embedding.weight")
        .unwrap();
    tensors.insert("visual_head.frame_pos_embedding.weight".into(), pos);
    let bad_shape = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
    tensors.insert("backbone.ln_final.weight".into(), bad_shape);
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let err = EmotionClip::load(&path, &tiny_config(), &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, Error::CheckpointMismatch { .. }), "{msg}");
    assert!(msg.contains("2 missing key(s)"), "{msg}");
    assert!(msg.contains("backbone.visual.proj [64, 32]"), "{msg}");
    assert!(
        msg.contains("visual_head.frame_position_embedding.weight [8, 32]"),
        "{msg}"
    );
    assert!(
        msg.contains("backbone.ln_final.weight expected [32] got [3, 3]"),
        "{msg}"
    );

    // A config with fewer layers than the checkpoint would silently drop layers: the
    // unread keys are an error, as in the official strict load.
    let mut shallow = tiny_config();
    shallow.text_cfg.layers = 1;
    let err = EmotionClip::load(
        &golden("emotionclip-tiny/release_format.pt"),
        &shallow,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("12 unexpected key(s)"), "{err}");
    assert!(
        err.contains("backbone.transformer.resblocks.1.attn.in_proj_bias"),
        "{err}"
    );

    // A checkpoint for another size fails the same way, listing mis-shaped keys.
    let err = EmotionClip::load(
        &golden("emotionclip-tiny/weights.safetensors"),
        &EmotionClipConfig::vit_b32(),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("mis-shaped key(s)"), "{err}");
}

#[test]
fn random_vit_b32_runs_one_frame() {
    let cfg = EmotionClipConfig::vit_b32();
    let t0 = Instant::now();
    let model = EmotionClip::random(&cfg, 42, &Device::Cpu).unwrap();
    eprintln!("random ViT-B/32 built in {:?}", t0.elapsed());
    let pixels = Tensor::randn(0f32, 1., (1, 3, 224, 224), &Device::Cpu).unwrap();
    let mut mask = vec![0u8; 224 * 224];
    for y in 40..200 {
        mask[y * 224 + 60..y * 224 + 140].fill(1);
    }
    let mask = Tensor::from_vec(mask, (1, 224, 224), &Device::Cpu).unwrap();
    let t0 = Instant::now();
    let (features, hmn) = model.encode_frames(&pixels, &mask).unwrap();
    eprintln!("one frame in {:?}", t0.elapsed());
    assert_eq!(features.dims(), [1, 512]);
    assert_eq!(hmn.dims(), [1, 768]);
    let v = features.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0));
    let video = model
        .encode_video_from_features(&features.unsqueeze(1).unwrap().repeat((1, 8, 1)).unwrap())
        .unwrap();
    assert_eq!(video.dims(), [1, 512]);
}

#[test]
fn random_weights_are_deterministic() {
    let cfg = tiny_config();
    let a = EmotionClip::random(&cfg, 7, &Device::Cpu).unwrap();
    let b = EmotionClip::random(&cfg, 7, &Device::Cpu).unwrap();
    let c = EmotionClip::random(&cfg, 8, &Device::Cpu).unwrap();
    let io = load("emotionclip-tiny/io.safetensors");
    let x = a
        .encode_video(&io["input.video"], &io["input.mask"])
        .unwrap();
    let y = b
        .encode_video(&io["input.video"], &io["input.mask"])
        .unwrap();
    let z = c
        .encode_video(&io["input.video"], &io["input.mask"])
        .unwrap();
    assert_eq!(max_abs_diff(&x, &y), 0.0);
    assert!(max_abs_diff(&x, &z) > 1e-3);
}

/// Not a benchmark: a quick look at the f32 CPU frame encoder (`--ignored --nocapture`).
#[test]
#[ignore]
fn vit_b32_frame_encoder_timing() {
    let model = EmotionClip::random(&EmotionClipConfig::vit_b32(), 1, &Device::Cpu).unwrap();
    for batch in [1usize, 8] {
        let pixels = Tensor::randn(0f32, 1., (batch, 3, 224, 224), &Device::Cpu).unwrap();
        let mask = Tensor::ones((batch, 224, 224), DType::U8, &Device::Cpu).unwrap();
        model.encode_frames(&pixels, &mask).unwrap();
        let runs = 5;
        let mut times = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            model.encode_frames(&pixels, &mask).unwrap();
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[runs / 2];
        eprintln!(
            "batch {batch}: median {:.1} ms, min {:.1} ms, {:.1} frames/s",
            median * 1e3,
            times[0] * 1e3,
            batch as f64 / median
        );
    }
    let features = Tensor::randn(0f32, 1., (1, 8, 512), &Device::Cpu).unwrap();
    model.encode_video_from_features(&features).unwrap();
    let t0 = Instant::now();
    for _ in 0..20 {
        model.encode_video_from_features(&features).unwrap();
    }
    eprintln!(
        "temporal encoder, 1 window: {:.2} ms",
        t0.elapsed().as_secs_f64() * 50.0
    );
}

#[test]
fn half_precision_loading_runs_close_to_the_reference() {
    let cfg = tiny_config();
    let path = golden("emotionclip-tiny/weights.safetensors");
    let model = EmotionClip::load_as(&path, &cfg, &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let io = load("emotionclip-tiny/io.safetensors");
    let video = model
        .encode_video(&io["input.video"], &io["input.mask"])
        .unwrap();
    assert_eq!(video.dtype(), DType::BF16);
    let d = max_abs_diff(&video, &io["ref_f64.video_embedding"]);
    eprintln!("bf16 video_embedding: max abs diff {d:.3e}");
    assert!(d < 0.1, "bf16 drifted by {d}");
}

#[test]
fn prepared_frames_stack_into_encoder_inputs() {
    let rgb = vec![90u8; 320 * 240 * 3];
    let frame = ImageView::new(320, 240, &rgb).unwrap();
    let person = Detection {
        bbox: BBox::new(100., 40., 160., 200.),
        score: 0.9,
    };
    let a = preprocess::prepare(
        frame,
        &[person],
        preprocess::CropPolicy::SUBJECT_DEFAULT,
        64,
    );
    let b = preprocess::prepare(frame, &[person], preprocess::CropPolicy::OFFICIAL_EVAL, 64);
    let (pixels, masks) = preprocess::stack(&[a, b], &Device::Cpu).unwrap();
    assert_eq!(pixels.dims(), [2, 3, 64, 64]);
    assert_eq!(masks.dims(), [2, 64, 64]);
    let model = EmotionClip::load(
        &golden("emotionclip-tiny/weights.safetensors"),
        &tiny_config(),
        &Device::Cpu,
    )
    .unwrap();
    let (features, hmn) = model.encode_frames(&pixels, &masks).unwrap();
    assert_eq!(features.dims(), [2, 32]);
    // Both crops contain the subject, so both subject tokens are non-zero.
    let norms = hmn.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(norms.iter().all(|&n| n > 0.0), "{norms:?}");
}

#[test]
fn text_pools_at_the_first_largest_id_under_the_causal_mask() {
    let model = EmotionClip::load(
        &golden("emotionclip-tiny/weights.safetensors"),
        &tiny_config(),
        &Device::Cpu,
    )
    .unwrap();
    // Truncated texts have no end token and may repeat their largest id: torch's argmax takes
    // the first one, and with the causal mask later tokens cannot change that row.
    let mut a = vec![0i64; 77];
    let mut b = vec![0i64; 77];
    a[..5].copy_from_slice(&[998, 5, 900, 7, 900]);
    b[..5].copy_from_slice(&[998, 5, 900, 8, 8]);
    let tokens = Tensor::from_vec([a, b].concat(), (2, 77), &Device::Cpu).unwrap();
    let e = model.encode_text(&tokens).unwrap();
    assert_eq!(max_abs_diff(&e.i(0).unwrap(), &e.i(1).unwrap()), 0.0);
}
