//! Detector throughput, affectd vs Python onnxruntime on the same ONNX model, the same
//! letterboxed tensors and the same thread count, side by side in one run; then the tracker's
//! time per frame at 10 and 100 persons.
//!
//! Run: `cargo bench --bench detect` (ONNX Runtime and Python from `./.venv`, or set
//! `ORT_DYLIB_PATH` and `AFFECTD_BENCH_PYTHON`). `AFFECTD_BENCH_THREADS` sets the thread count
//! (default 2), `AFFECTD_BENCH_SLICE` the length of each of the 30 alternating slices (default
//! 1 s): affectd inference, Python inference, affectd end to end, in turn.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use affectd::detect::letterbox::Preprocessor;
use affectd::detect::{DetectConfig, Detector, Manifest, Provider};
use affectd::ingest::FileFrames;
use affectd::track::{TrackConfig, Tracker};
use affectd::types::{BBox, Detection};

mod common;
use common::env_or;

const FRAMES: usize = 16;
const SLICES: usize = 30;

fn main() {
    let threads: usize = env_or("AFFECTD_BENCH_THREADS", 2);
    let slice: f64 = env_or("AFFECTD_BENCH_SLICE", 1.0);
    let python: String = env_or("AFFECTD_BENCH_PYTHON", ".venv/bin/python".to_string());
    let cfg = DetectConfig {
        engine: "engines/nanodet-g-416.toml".into(),
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

    // Python runs as one long-lived process; the two runtimes then take turns in short slices,
    // so that both see the same load from whatever else runs on the machine.
    let mut child = Command::new(&python)
        .arg("benches/detect_ort.py")
        .arg(manifest.model_path())
        .arg(&raw)
        .arg(frames.len().to_string())
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut to_py = child.stdin.take().expect("stdin");
    let mut from_py = BufReader::new(child.stdout.take().expect("stdout"));
    let mut read_json = || {
        let mut line = String::new();
        from_py.read_line(&mut line).expect("python answers");
        serde_json::from_str::<serde_json::Value>(&line).expect("json")
    };
    let hello = read_json();
    println!(
        "threads {threads}, {SLICES} alternating slices of {slice} s each, {} frames of vtest, \
         Python onnxruntime {}",
        frames.len(),
        hello["version"]
    );
    for i in 0..3 {
        detector
            .infer(&tensors[i * len..][..len], 1)
            .expect("warm-up");
    }
    let (mut rust, mut py, mut ratios, mut e2e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut next = 0usize;
    for _ in 0..SLICES {
        let (mut runs, start) = (0usize, Instant::now());
        while start.elapsed().as_secs_f64() < slice {
            let i = next % frames.len();
            detector
                .infer(&tensors[i * len..(i + 1) * len], 1)
                .expect("infer");
            runs += 1;
            next += 1;
        }
        let r = runs as f64 / start.elapsed().as_secs_f64();
        writeln!(to_py, "{slice}").expect("python listens");
        let p = read_json()["fps"].as_f64().expect("fps");
        // affectd end to end: letterbox + inference + decode + NMS + un-letterbox.
        let (mut runs, start) = (0usize, Instant::now());
        while start.elapsed().as_secs_f64() < slice {
            detector.run(&[&frames[next % frames.len()]]).expect("run");
            runs += 1;
            next += 1;
        }
        e2e.push(runs as f64 / start.elapsed().as_secs_f64());
        rust.push(r);
        py.push(p);
        ratios.push(r / p);
    }
    drop(to_py);
    let _ = child.wait();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "inference: affectd mean {:.2} (best slice {:.2}) frames/s, python mean {:.2} (best \
         slice {:.2}) frames/s; ratio of means {:.3}, median of paired ratios {:.3}",
        mean(&rust),
        best(&rust),
        mean(&py),
        best(&py),
        mean(&rust) / mean(&py),
        median(&mut ratios)
    );

    println!(
        "affectd end to end (Detector::run: letterbox, inference, decode, NMS): mean {:.2} \
         (best slice {:.2}) frames/s; letterbox alone {letterbox_ms:.2} ms/frame",
        mean(&e2e),
        best(&e2e)
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
