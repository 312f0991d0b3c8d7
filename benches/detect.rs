//! Detector throughput, affectd vs Python onnxruntime on the same ONNX model, the same
//! letterboxed tensors and the same thread count, side by side in one run; then the tracker's
//! time per frame at 10 and 100 persons.
//!
//! Run: `cargo bench --bench detect` (ONNX Runtime and Python from `./.venv`, or set
//! `ORT_DYLIB_PATH` and `AFFECTD_BENCH_PYTHON`). `AFFECTD_BENCH_THREADS` sets the thread count
//! (default 2), `AFFECTD_BENCH_SECONDS` the time per measurement (default 3; seven alternating rounds).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use affectd::detect::input::FileFrames;
use affectd::detect::letterbox::Preprocessor;
use affectd::detect::{DetectConfig, Detector, Manifest, Provider};
use affectd::track::{TrackConfig, Tracker};
use affectd::types::{BBox, Detection};

const FRAMES: usize = 16;
const ROUNDS: usize = 7;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let threads: usize = env_or("AFFECTD_BENCH_THREADS", 2);
    let seconds: f64 = env_or("AFFECTD_BENCH_SECONDS", 3.0);
    let python: String = env_or("AFFECTD_BENCH_PYTHON", ".venv/bin/python".to_string());
    let cfg = DetectConfig {
        engine: "engines/nanodet-m-416.toml".into(),
        providers: vec![Provider::Cpu],
        threads,
        ..DetectConfig::default()
    };
    let manifest = Manifest::load(&cfg.engine).expect("manifest");
    let mut detector = Detector::new(&cfg).expect("detector");

    // Real frames, spread over the clip's first 16 s, letterboxed once for both runtimes.
    let frames: Vec<_> = FileFrames::open(Path::new("tests/fixtures/vtest.mp4"), "bench")
        .expect("vtest")
        .step_by(10)
        .take(FRAMES)
        .map(|f| f.expect("frame"))
        .collect();
    let mut pre = Preprocessor::new(&manifest);
    let len = detector.input_len();
    let mut tensors = vec![0.0f32; len * frames.len()];
    let t = Instant::now();
    for (f, chunk) in frames.iter().zip(tensors.chunks_mut(len)) {
        pre.fill(f, chunk).expect("letterbox");
    }
    let letterbox_ms = t.elapsed().as_secs_f64() * 1e3 / frames.len() as f64;
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("tensors.f32");
    let bytes: Vec<u8> = tensors.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).expect("write tensors");

    println!(
        "threads {threads}, {seconds} s per measurement, {} frames of vtest",
        frames.len()
    );
    let mut rust = Vec::new();
    let mut py = Vec::new();
    for round in 0..ROUNDS {
        // affectd: the same session.run, fed the same tensors.
        for i in 0..3 {
            detector
                .infer(&tensors[(i % FRAMES) * len..][..len], 1)
                .expect("warm-up");
        }
        let (mut runs, start) = (0usize, Instant::now());
        while start.elapsed().as_secs_f64() < seconds {
            let i = runs % frames.len();
            detector
                .infer(&tensors[i * len..(i + 1) * len], 1)
                .expect("infer");
            runs += 1;
        }
        rust.push(runs as f64 / start.elapsed().as_secs_f64());

        let out = Command::new(&python)
            .arg("benches/detect_ort.py")
            .arg(manifest.model_path())
            .arg(&raw)
            .arg(frames.len().to_string())
            .arg(threads.to_string())
            .arg(seconds.to_string())
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        py.push(v["fps"].as_f64().expect("fps"));
        println!(
            "round {round}: affectd {:.2} frames/s, python onnxruntime {} {:.2} frames/s",
            rust[round], v["version"], py[round]
        );
    }
    let mut ratios: Vec<f64> = rust.iter().zip(&py).map(|(r, p)| r / p).collect();
    let (r, p, q) = (median(&mut rust), median(&mut py), median(&mut ratios));
    println!(
        "inference median: affectd {r:.2} frames/s, python {p:.2} frames/s, \
         median of per-round ratios {q:.3}"
    );

    // affectd end to end: letterbox + inference + decode + NMS + un-letterbox.
    let refs: Vec<_> = frames.iter().collect();
    let (mut runs, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < seconds {
        detector.run(&refs[runs % refs.len()..][..1]).expect("run");
        runs += 1;
    }
    let e2e = runs as f64 / start.elapsed().as_secs_f64();
    println!(
        "affectd end to end (Detector::run): {e2e:.2} frames/s; letterbox alone {letterbox_ms:.2} ms/frame"
    );

    for persons in [10, 100] {
        let per = tracker_time(persons, 2000);
        println!(
            "tracker, {persons} persons: {:.1} us/frame",
            per.as_secs_f64() * 1e6
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `persons` people walking at constant speeds with a little jitter, each seen with a score
/// that dips below the high threshold now and then.
fn tracker_time(persons: usize, frames: usize) -> Duration {
    let mut seed = 42u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    };
    let cols = (persons as f32).sqrt().ceil() as usize;
    let people: Vec<(f32, f32, f32, f32)> = (0..persons)
        .map(|i| {
            let x = (i % cols) as f32 * 190.0;
            let y = (i / cols) as f32 * 210.0;
            (x, y, rnd() * 4.0 - 2.0, rnd() * 2.0 - 1.0)
        })
        .collect();
    let mut tracker = Tracker::new(TrackConfig {
        max_tracks: 1000,
        ..TrackConfig::default()
    });
    let mut dets = Vec::with_capacity(persons);
    let mut total = Duration::ZERO;
    for f in 0..frames {
        dets.clear();
        for &(x, y, vx, vy) in &people {
            let (cx, cy) = (x + vx * f as f32 + rnd(), y + vy * f as f32 + rnd());
            dets.push(Detection {
                bbox: BBox::new(cx, cy, cx + 40.0, cy + 100.0),
                score: if rnd() < 0.1 { 0.4 } else { 0.85 },
            });
        }
        let t = Instant::now();
        let up = tracker.update(&dets, std::time::SystemTime::UNIX_EPOCH);
        total += t.elapsed();
        std::hint::black_box(up);
    }
    total / frames as u32
}
