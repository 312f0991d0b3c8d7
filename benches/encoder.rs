//! EmotionCLIP encoder throughput: affectd's candle frame encoder (seeded random ViT-B/32, f32,
//! CPU) and the same weights exported by `affectd export-onnx` run in ONNX Runtime
//! (affectd-ONNX f32, and int8 as `--precision int8` writes it), against the same
//! architecture in PyTorch (open_clip `ViT-B-32`) and in ONNX Runtime (that tower exported to
//! ONNX by PyTorch), on the same pixels with the same thread count, side by side in one run
//! (affectd's f32 graph also runs in the Python process, beside open_clip's export in the same
//! ONNX Runtime set-up, so that the two graphs are compared with nothing else different);
//! then the temporal encoder (candle and affectd-ONNX), incremental vs naive window updates,
//! and the resident memory of `affectd run` with ViT-B/32 loaded.
//!
//! Run: `cargo bench --config 'profile.dev.package.affectd.opt-level=3' --profile dev
//! --bench encoder`, adding `--config profile.dev.package.P.debug-assertions=false` and
//! `...overflow-checks=false` for P in gemm*, candle-core, candle-nn and affectd to measure what
//! a release build runs (BENCHMARKS.md has the full command; the checks cost candle 1.5-1.9x).
//! Python comes from `./.venv-bench` (or `AFFECTD_BENCH_PYTHON`), ONNX
//! Runtime for `affectd run` from `./.venv` (or `ORT_DYLIB_PATH`). `AFFECTD_BENCH_THREADS`
//! sets the thread count of all three runtimes (default 2), `AFFECTD_BENCH_ROUNDS` the rounds
//! per batch size (default 5) and `AFFECTD_BENCH_SLICE` the least seconds of each slice
//! (default 4): in every round candle, PyTorch and ONNX Runtime run in turn, so that load from
//! elsewhere on the machine hits all three alike. `AFFECTD_BENCH_CACHE` is where the ONNX
//! export is kept between runs (default: a folder in the system temp dir).
//!
//! `AFFECTD_BENCH_REFERENCE=none` runs without the Python references (no `.venv-bench`: their
//! columns print as NaN); the temporal, window-update and memory figures are affectd's alone.
//! `AFFECTD_BENCH_ONLY=encoders` stops after the frame and temporal encoders. affectd-ONNX
//! loads ONNX Runtime from `ORT_DYLIB_PATH` (scripts/env.sh) or the daemon's search list; the
//! fused node counts of its optimised frame graph are printed too.
//!
//! `AFFECTD_BENCH_PROFILE=B,N` runs only N candle forwards at batch B (random pixels) and exits:
//! a steady loop to put under `perf record` (see BENCHMARKS.md).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use affectd::encode::LiveEncoder;
use affectd::ingest::FileFrames;
use affectd::model::preprocess::{self, CropPolicy, FrameInput};
use affectd::model::{EmotionClip, EmotionClipConfig};
use affectd::onnx::export::{
    FEATURES, FRAME_ENCODER_FILE, FRAME_FEATURES, PATCH_WEIGHTS, PIXELS, TEMPORAL_ENCODER_FILE,
};
use affectd::onnx::{AttentionForm, Precision, WeightsSource};
use affectd::types::{BBox, Frame, PersonSample};
use candle_core::{Device, IndexOp, Tensor};
use ort::session::Session;
use ort::value::TensorRef;

mod common;
use common::env_or;

const FRAMES: usize = 32;
const BATCHES: [usize; 3] = [1, 8, 32];
const SEED: u64 = 0;
/// A person-sized box in the clip's 768x576 frames.
const PERSON: BBox = BBox::new(330.0, 160.0, 420.0, 420.0);

fn main() {
    let threads: usize = env_or("AFFECTD_BENCH_THREADS", 2);
    let rounds: usize = env_or("AFFECTD_BENCH_ROUNDS", 5);
    let slice: f64 = env_or("AFFECTD_BENCH_SLICE", 4.0);
    let python: String = env_or("AFFECTD_BENCH_PYTHON", ".venv-bench/bin/python".to_string());
    let cache: PathBuf = env_or(
        "AFFECTD_BENCH_CACHE",
        std::env::temp_dir().join("affectd-bench"),
    );
    // candle's CPU kernels (gemm and its own pool) size themselves from RAYON_NUM_THREADS /
    // CANDLE_NUM_THREADS (`candle_core::utils::get_num_threads`); pin it before any tensor op.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: still single-threaded here; nothing else reads the environment yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let candle_threads = candle_core::utils::get_num_threads();
    assert_eq!(
        candle_threads, threads,
        "set CANDLE_NUM_THREADS/RAYON_NUM_THREADS alike"
    );

    if let Ok(spec) = std::env::var("AFFECTD_BENCH_PROFILE") {
        profile_loop(&spec);
        return;
    }
    let rss_before = vm_status("VmRSS").unwrap_or(0);
    let t = Instant::now();
    let model =
        EmotionClip::random(&EmotionClipConfig::vit_b32(), SEED, &Device::Cpu).expect("ViT-B/32");
    let load_s = t.elapsed().as_secs_f64();
    let rss_model = vm_status("VmRSS").unwrap_or(0);

    // Real frames of the clip, cropped around one person box as the live path does, prepared
    // once: the same normalised pixels go to all three runtimes.
    let frames: Vec<Frame> = FileFrames::open(Path::new("tests/fixtures/vtest.mp4"), "bench")
        .expect("vtest")
        .step_by(5)
        .take(FRAMES)
        .map(|f| f.expect("frame"))
        .collect();
    assert_eq!(frames.len(), FRAMES);
    let samples: Vec<PersonSample> = frames
        .iter()
        .map(|frame| PersonSample {
            frame: frame.clone(),
            track_id: 1,
            bbox: PERSON,
        })
        .collect();
    let live = LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 1);
    let inputs: Vec<FrameInput> = samples
        .iter()
        .map(|s| live.prepare(s).expect("prepare"))
        .collect();
    let (pixels, masks) = preprocess::stack(&inputs, &Device::Cpu).expect("stack");

    std::fs::create_dir_all(&cache).expect("cache dir");
    let raw = cache.join("pixels.f32");
    let bytes: Vec<u8> = pixels
        .flatten_all()
        .and_then(|p| p.to_vec1::<f32>())
        .expect("pixels")
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&raw, bytes).expect("write pixels");

    // affectd-ONNX: the same seeded weights through `affectd export-onnx`'s exporter.
    let mut onnx = AffectdOnnx::open(&model, &cache.join("affectd-onnx"), threads, Precision::F32);
    // int8: the same weights quantised by the exporter (its default op forms).
    let mut int8 = AffectdOnnx::open(
        &model,
        &cache.join("affectd-onnx-int8"),
        threads,
        Precision::Int8,
    );
    let pixel_data = pixels
        .flatten_all()
        .and_then(|p| p.to_vec1::<f32>())
        .expect("pixels");
    let patch_weights = model
        .backbone
        .visual
        .patch_weights(&masks)
        .and_then(|w| w.flatten_all())
        .and_then(|w| w.to_vec1::<f32>())
        .expect("patch weights");
    let check = onnx.frames(&pixel_data, &patch_weights, 2);
    let (want, _) = model
        .encode_frames(&pixels.i(..2).expect("2"), &masks.i(..2).expect("2"))
        .expect("encode");
    let want = want
        .flatten_all()
        .and_then(|w| w.to_vec1::<f32>())
        .expect("features");
    let onnx_vs_candle = check
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let int8_check = int8.frames(&pixel_data, &patch_weights, FRAMES);
    let f32_check = onnx.frames(&pixel_data, &patch_weights, FRAMES);
    let embed = model.embed_dim();
    let int8_cosines: Vec<f32> = int8_check
        .chunks_exact(embed)
        .zip(f32_check.chunks_exact(embed))
        .map(|(a, b)| affectd::train::zero_shot::cosine(a, b))
        .collect();

    let weights_raw = cache.join("patch_weights.f32");
    let bytes: Vec<u8> = patch_weights.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&weights_raw, bytes).expect("write patch weights");
    let graph = cache.join("affectd-onnx").join(FRAME_ENCODER_FILE);
    let mut py = (std::env::var("AFFECTD_BENCH_REFERENCE").as_deref() != Ok("none"))
        .then(|| Python::start(&python, &[&raw, &graph, &weights_raw], threads, &cache));
    println!(
        "threads {threads} (candle get_num_threads {candle_threads}); {rounds} rounds of \
         >= {slice} s slices per batch size; {FRAMES} person crops of vtest; ViT-B/32 random \
         init in {load_s:.2} s; affectd-ONNX export in {:.2} s, max |ONNX - candle| = \
         {onnx_vs_candle:.2e} on 2 frames; int8 export in {:.2} s, frame cosine int8 vs f32 \
         mean {:.5} min {:.5} on the {FRAMES} crops\npython: {}",
        onnx.export_s,
        int8.export_s,
        int8_cosines.iter().sum::<f32>() / FRAMES as f32,
        int8_cosines.iter().copied().fold(f32::INFINITY, f32::min),
        py.as_ref()
            .map_or("none (AFFECTD_BENCH_REFERENCE=none)", |p| p.hello.as_str())
    );
    let mut reference = |runtime: &str, b: usize, seconds: f64| {
        py.as_mut().map_or(f64::NAN, |p| p.run(runtime, b, seconds))
    };

    // Frame encoder: every round runs candle, PyTorch and ORT in turn on the same batch.
    let mut frame_rows = Vec::new();
    for &b in &BATCHES {
        let x = pixels.i(..b).expect("batch");
        let m = masks.i(..b).expect("batch");
        let candle = || {
            timed(slice, b, || {
                std::hint::black_box(model.encode_frames(&x, &m).expect("encode"));
            })
        };
        // Warm-up: one pass of each.
        timed(0.0, b, || {
            model.encode_frames(&x, &m).expect("encode");
        });
        reference("torch", b, 0.0);
        reference("ort", b, 0.0);
        reference("ort-affectd", b, 0.0);
        timed(0.0, b, || {
            onnx.frames(&pixel_data, &patch_weights, b);
        });
        timed(0.0, b, || {
            int8.frames(&pixel_data, &patch_weights, b);
        });
        let mut row = FrameRow::new(b);
        for round in 0..rounds {
            let c = candle();
            let a = timed(slice, b, || {
                std::hint::black_box(onnx.frames(&pixel_data, &patch_weights, b));
            });
            let q = timed(slice, b, || {
                std::hint::black_box(int8.frames(&pixel_data, &patch_weights, b));
            });
            let t = reference("torch", b, slice);
            // The two graphs in Python ONNX Runtime, in alternating order.
            let (o, g) = if round % 2 == 0 {
                let o = reference("ort", b, slice);
                (o, reference("ort-affectd", b, slice))
            } else {
                let g = reference("ort-affectd", b, slice);
                (reference("ort", b, slice), g)
            };
            eprintln!(
                "batch {b}: candle {c:.2}, affectd-onnx {a:.2}, affectd-onnx int8 {q:.2}, \
                 torch {t:.2}, ort {o:.2}, affectd graph in python ort {g:.2} frames/s"
            );
            row.push(c, a, t, o);
            row.int8.push(q);
            row.int8_vs_onnx.push(q / a);
            row.graph.push(g);
            row.graph_vs_ort.push(g / o);
        }
        frame_rows.push(row);
    }
    if let Some(mut py) = py.take() {
        py.stop();
    }

    drop(int8);
    // Temporal encoder alone: windows of 8 frame features.
    let video_len = model.video_len();
    let mut temporal = Vec::new();
    for windows in [1usize, 16] {
        let features =
            Tensor::randn(0f32, 1.0, (windows, video_len, embed), &Device::Cpu).expect("features");
        let data = features
            .flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .expect("features");
        model.encode_video_from_features(&features).expect("warm");
        onnx.video(&data, windows, video_len, embed);
        let (mut rates, mut onnx_rates) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            rates.push(timed(slice, windows, || {
                std::hint::black_box(
                    model
                        .encode_video_from_features(&features)
                        .expect("temporal"),
                );
            }));
            onnx_rates.push(timed(slice, windows, || {
                std::hint::black_box(onnx.video(&data, windows, video_len, embed));
            }));
        }
        temporal.push((
            windows,
            mean(&rates),
            best(&rates),
            mean(&onnx_rates),
            best(&onnx_rates),
        ));
    }
    if std::env::var("AFFECTD_BENCH_ONLY").as_deref() == Ok("encoders") {
        print_encoders(threads, rounds, &onnx, &mut frame_rows, embed, &temporal);
        return;
    }

    // One person, one new frame per window update: the live path encodes that frame and runs
    // the temporal encoder over the ring; the naive path re-encodes all 8 frames of the window.
    let mut live = LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 1);
    for s in &samples[..video_len - 1] {
        assert!(live.push(std::slice::from_ref(s)).expect("fill").is_empty());
    }
    let mut next = video_len - 1;
    let mut incremental_update = || {
        let s = &samples[next % FRAMES];
        next += 1;
        let up = live.push(std::slice::from_ref(s)).expect("push");
        assert_eq!(up.len(), 1);
    };
    let s = model.config().vision_cfg.image_size;
    let mut last = video_len - 1;
    let mut naive_update = || {
        let window: Vec<FrameInput> = (last + 1 - video_len..=last)
            .map(|i| live_prepare(&model, &samples[i % FRAMES]))
            .collect();
        last += 1;
        let (p, m) = preprocess::stack(&window, &Device::Cpu).expect("stack");
        std::hint::black_box(
            model
                .encode_video(
                    &p.reshape((1, video_len, 3, s, s)).expect("video"),
                    &m.reshape((1, video_len, s, s)).expect("mask"),
                )
                .expect("naive"),
        );
    };
    incremental_update();
    naive_update();
    let (mut inc, mut naive) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        inc.push(timed(slice, 1, &mut incremental_update));
        naive.push(timed(slice, 1, &mut naive_update));
    }
    drop(live);

    let rss_run = affectd_run_rss(threads);

    print_encoders(threads, rounds, &onnx, &mut frame_rows, embed, &temporal);
    println!("\n| Window update, 1 person, 1 new frame | updates/s, mean of 3 | best |");
    println!("|---|---|---|");
    println!(
        "| incremental (`LiveEncoder::push`: crop 1 frame, encode it, temporal over the ring) \
         | {:.2} | {:.2} |",
        mean(&inc),
        best(&inc)
    );
    println!(
        "| naive (crop and encode all 8 frames, then temporal) | {:.2} | {:.2} |",
        mean(&naive),
        best(&naive)
    );
    println!(
        "| ratio incremental / naive | {:.2} | |",
        mean(&inc) / mean(&naive)
    );
    println!("\n| Resident memory | MiB |");
    println!("|---|---|");
    println!(
        "| this bench process before / after building ViT-B/32 (VmRSS) | {:.0} / {:.0} |",
        kib_to_mib(rss_before),
        kib_to_mib(rss_model)
    );
    match rss_run {
        Ok(r) => {
            println!(
                "| `affectd run` (demo config), VmRSS at 'model ready' | {:.0} |",
                kib_to_mib(r.at_model_ready)
            );
            println!(
                "| `affectd run`, VmRSS after {:.0} s running (max sampled) | {:.0} ({:.0}) |",
                r.seconds,
                kib_to_mib(r.last),
                kib_to_mib(r.max)
            );
            println!("| `affectd run`, VmHWM (peak) | {:.0} |", kib_to_mib(r.hwm));
        }
        Err(e) => println!("| `affectd run` | not measured: {e} |"),
    }
}

/// (windows per call, candle mean, candle best, affectd-ONNX mean, affectd-ONNX best).
type TemporalRow = (usize, f64, f64, f64, f64);

/// The frame and temporal encoder tables.
fn print_encoders(
    threads: usize,
    rounds: usize,
    onnx: &AffectdOnnx,
    frame_rows: &mut [FrameRow],
    embed: usize,
    temporal: &[TemporalRow],
) {
    println!("\n## EmotionCLIP encoder ({threads} threads)\n");
    println!(
        "| Frame encoder, ViT-B/32 f32 (person-frames/s, mean of {rounds} slices; best) | \
         affectd (candle) | affectd-ONNX | PyTorch | ONNX Runtime (open_clip export) | \
         affectd-ONNX / candle | affectd-ONNX / ORT | candle / PyTorch | median paired ratios \
         affectd-ONNX / candle, / ORT |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in frame_rows.iter_mut() {
        let (c, a, t, o) = (
            mean(&row.candle),
            mean(&row.onnx),
            mean(&row.torch),
            mean(&row.ort),
        );
        println!(
            "| batch {} | {c:.2} ({:.2}) | {a:.2} ({:.2}) | {t:.2} ({:.2}) | {o:.2} ({:.2}) | \
             **{:.3}** | **{:.3}** | {:.3} | {:.3} / {:.3} |",
            row.batch,
            best(&row.candle),
            best(&row.onnx),
            best(&row.torch),
            best(&row.ort),
            a / c,
            a / o,
            c / t,
            median(&mut row.onnx_vs_candle),
            median(&mut row.onnx_vs_ort),
        );
    }
    println!(
        "\n| Frame encoder int8 (person-frames/s, mean of {rounds}; best) | affectd-ONNX f32 | \
         affectd-ONNX int8 | **int8 / f32** | int8 / candle | median paired int8 / f32 |"
    );
    println!("|---|---|---|---|---|---|");
    for row in frame_rows.iter_mut() {
        let (c, a, q) = (mean(&row.candle), mean(&row.onnx), mean(&row.int8));
        println!(
            "| batch {} | {a:.2} ({:.2}) | {q:.2} ({:.2}) | **{:.2}** | {:.2} | {:.2} |",
            row.batch,
            best(&row.onnx),
            best(&row.int8),
            q / a,
            q / c,
            median(&mut row.int8_vs_onnx),
        );
    }
    println!(
        "\n| Same runtime, same process (Python ONNX Runtime), person-frames/s, mean of \
         {rounds}; best | affectd's f32 graph | open_clip's export | **affectd / open_clip** | \
         median paired |"
    );
    println!("|---|---|---|---|---|");
    for row in frame_rows.iter_mut() {
        let (g, o) = (mean(&row.graph), mean(&row.ort));
        println!(
            "| batch {} | {g:.2} ({:.2}) | {o:.2} ({:.2}) | **{:.3}** | {:.3} |",
            row.batch,
            best(&row.graph),
            best(&row.ort),
            g / o,
            median(&mut row.graph_vs_ort),
        );
    }
    println!(
        "\naffectd-ONNX frame graph after ONNX Runtime's optimisation: {:?}",
        onnx.frame_ops
    );
    println!(
        "\n| Temporal encoder (6 layers over 8x{embed}), windows/s, mean of 3 (best) | candle | \
         affectd-ONNX |"
    );
    println!("|---|---|---|");
    for (windows, m, b, om, ob) in temporal {
        println!("| {windows} window(s) per call | {m:.1} ({b:.1}) | {om:.1} ({ob:.1}) |");
    }
}

/// The seeded ViT-B/32 exported by affectd's exporter and opened in ONNX Runtime (CPU).
struct AffectdOnnx {
    frame: Session,
    temporal: Session,
    export_s: f64,
    /// Op types of the optimised frame graph.
    frame_ops: std::collections::BTreeMap<String, usize>,
}

impl AffectdOnnx {
    fn open(model: &EmotionClip, dir: &Path, threads: usize, precision: Precision) -> AffectdOnnx {
        let t = Instant::now();
        affectd::onnx::export(
            model,
            &WeightsSource::Seeded(SEED),
            precision,
            AttentionForm::Contrib,
            dir,
        )
        .expect("export");
        let export_s = t.elapsed().as_secs_f64();
        let optimised = dir.join("frame_encoder.optimised.onnx");
        let frame = affectd::onnx::session::open_cpu(
            &dir.join(FRAME_ENCODER_FILE),
            threads,
            Some(&optimised),
        )
        .expect("frame session");
        let bytes = std::fs::read(&optimised).expect("optimised graph");
        let graph = affectd::onnx::graph::from_bytes(&bytes)
            .expect("parse")
            .graph
            .expect("graph");
        let frame_ops = affectd::onnx::graph::op_counts(&graph.node);
        let _ = std::fs::remove_file(&optimised);
        let temporal =
            affectd::onnx::session::open_cpu(&dir.join(TEMPORAL_ENCODER_FILE), threads, None)
                .expect("temporal session");
        AffectdOnnx {
            frame,
            temporal,
            export_s,
            frame_ops,
        }
    }

    /// Features of the first `b` frames.
    fn frames(&mut self, pixels: &[f32], patch_weights: &[f32], b: usize) -> Vec<f32> {
        let plane = pixels.len() / FRAMES;
        let side = ((plane / 3) as f64).sqrt() as usize;
        let p = patch_weights.len() / FRAMES;
        let x =
            TensorRef::from_array_view(([b, 3, side, side], &pixels[..b * plane])).expect("pixels");
        let w = TensorRef::from_array_view(([b, p], &patch_weights[..b * p])).expect("weights");
        let out = self
            .frame
            .run(ort::inputs![PIXELS => x, PATCH_WEIGHTS => w])
            .expect("frame encoder");
        let (_, data) = out[FEATURES].try_extract_tensor::<f32>().expect("features");
        data.to_vec()
    }

    fn video(&mut self, features: &[f32], windows: usize, t: usize, e: usize) -> Vec<f32> {
        let x = TensorRef::from_array_view(([windows, t, e], features)).expect("features");
        let out = self
            .temporal
            .run(ort::inputs![FRAME_FEATURES => x])
            .expect("temporal encoder");
        let (_, data) = out[0].try_extract_tensor::<f32>().expect("video");
        data.to_vec()
    }
}

/// N forwards at batch B of the frame encoder alone, after one warm-up, for a profiler.
fn profile_loop(spec: &str) {
    let (b, n) = spec
        .split_once(',')
        .and_then(|(b, n)| Some((b.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .expect("AFFECTD_BENCH_PROFILE=BATCH,FORWARDS");
    let model =
        EmotionClip::random(&EmotionClipConfig::vit_b32(), SEED, &Device::Cpu).expect("ViT-B/32");
    let x = Tensor::randn(0f32, 1.0, (b, 3, 224, 224), &Device::Cpu).expect("pixels");
    let m = Tensor::ones((b, 224, 224), candle_core::DType::U8, &Device::Cpu).expect("mask");
    model.encode_frames(&x, &m).expect("warm-up");
    eprintln!("profile: warm");
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(model.encode_frames(&x, &m).expect("encode"));
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "batch {b}: {:.2} person-frames/s ({:.1} ms per forward)",
        (b * n) as f64 / s,
        s * 1e3 / n as f64
    );
}

/// `LiveEncoder::prepare` without a live encoder at hand (the naive path holds no rings).
fn live_prepare(model: &EmotionClip, sample: &PersonSample) -> FrameInput {
    LiveEncoder::new(model.clone(), CropPolicy::SUBJECT_DEFAULT, 1)
        .prepare(sample)
        .expect("prepare")
}

/// Runs `f` until `seconds` have passed (at least once); items per second.
fn timed(seconds: f64, items: usize, mut f: impl FnMut()) -> f64 {
    let (mut runs, start) = (0usize, Instant::now());
    loop {
        f();
        runs += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            return (runs * items) as f64 / elapsed;
        }
    }
}

#[derive(Default)]
struct FrameRow {
    batch: usize,
    candle: Vec<f64>,
    onnx: Vec<f64>,
    torch: Vec<f64>,
    ort: Vec<f64>,
    onnx_vs_candle: Vec<f64>,
    onnx_vs_ort: Vec<f64>,
    int8: Vec<f64>,
    int8_vs_onnx: Vec<f64>,
    /// affectd's f32 graph in the Python ONNX Runtime session beside open_clip's.
    graph: Vec<f64>,
    graph_vs_ort: Vec<f64>,
}

impl FrameRow {
    fn new(batch: usize) -> Self {
        Self {
            batch,
            ..Self::default()
        }
    }

    fn push(&mut self, candle: f64, onnx: f64, torch: f64, ort: f64) {
        self.candle.push(candle);
        self.onnx.push(onnx);
        self.torch.push(torch);
        self.ort.push(ort);
        self.onnx_vs_candle.push(onnx / candle);
        self.onnx_vs_ort.push(onnx / ort);
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A `/proc/self/status` field in KiB.
fn vm_status(field: &str) -> Option<u64> {
    status_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The long-lived Python reference process (benches/encoder_reference.py).
struct Python {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    hello: String,
}

impl Python {
    /// `files`: the pixels, affectd's frame graph and its patch weights
    /// (benches/encoder_reference.py's arguments).
    fn start(python: &str, files: &[&Path; 3], threads: usize, cache: &Path) -> Python {
        let [raw, graph, weights] = files;
        let mut child = Command::new(python)
            .arg("benches/encoder_reference.py")
            .arg(raw)
            .arg(FRAMES.to_string())
            .arg(threads.to_string())
            .arg(cache)
            .arg(graph)
            .arg(weights)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e} (set AFFECTD_BENCH_PYTHON)"));
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let hello = lines.next().expect("python answers").expect("python line");
        Python {
            child,
            stdin,
            lines,
            hello,
        }
    }

    /// Runs `runtime` at batch `b` for at least `seconds`; person-frames/s.
    fn run(&mut self, runtime: &str, b: usize, seconds: f64) -> f64 {
        let stdin = self.stdin.as_mut().expect("python running");
        writeln!(stdin, "{runtime} {b} {seconds}").expect("python listens");
        let line = self
            .lines
            .next()
            .expect("python answers")
            .expect("python line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        v["fps"].as_f64().expect("fps")
    }

    fn stop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

struct RunRss {
    at_model_ready: u64,
    last: u64,
    max: u64,
    hwm: u64,
    seconds: f64,
}

/// Starts a broker and `affectd run` on the demo config (seeded random ViT-B/32 unless
/// `engines/emotionclip.pt` exists), and samples the daemon's memory while it runs.
fn affectd_run_rss(threads: usize) -> Result<RunRss, String> {
    let seconds: f64 = env_or("AFFECTD_BENCH_RUN_SECONDS", 30.0);
    let repo = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .map_err(|e| e.to_string())?;
    let broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto: {e}"))?;
    let broker = KillOnDrop(broker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let demo = std::fs::read_to_string(Path::new(repo).join("configs/demo.toml"))
        .map_err(|e| e.to_string())?
        .replace("\"../", &format!("\"{repo}/"))
        .replace("file:../", &format!("file:{repo}/"))
        .replace("port = 1883", &format!("port = {port}"));
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, demo).map_err(|e| e.to_string())?;
    let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        format!(
            "{repo}/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
        )
    });
    let mut daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_affectd"))
            .args(["run", "--config"])
            .arg(&config)
            .env("ORT_DYLIB_PATH", ort)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("affectd run: {e}"))?,
    );
    let pid = daemon.0.id();
    let stderr = daemon.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_model_ready = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line.contains("model ready");
                log.push(line);
                if ready {
                    break status_field(&status(), "VmRSS").unwrap_or(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => return Err(format!("no 'model ready':\n{}", log.join("\n"))),
        }
    };
    let start = Instant::now();
    let (mut last, mut max) = (at_model_ready, at_model_ready);
    while start.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_millis(250));
        while let Ok(line) = rx.try_recv() {
            log.push(line);
        }
        if let Some(rss) = status_field(&status(), "VmRSS") {
            last = rss;
            max = max.max(rss);
        }
    }
    let hwm = status_field(&status(), "VmHWM").unwrap_or(0);
    if log.iter().any(|l| l.contains("ERROR")) {
        eprintln!("affectd run logged errors:\n{}", log.join("\n"));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = daemon.0.wait();
    drop(broker);
    Ok(RunRss {
        at_model_ready,
        last,
        max,
        hwm,
        seconds,
    })
}

/// Kills a child process we started when it goes out of scope.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
