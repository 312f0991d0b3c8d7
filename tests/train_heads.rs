//! `affectd train heads` end to end: a capture dataset written by the capture writer, the
//! tiny real checkpoint as `[model]`, labels, the binary, and the read-out of its file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use affectd::capture::{Dataset, DatasetWriter, Manifest, WindowRecord};
use affectd::model::preprocess::{CropPolicy, EncoderCrop};
use affectd::readout::{EmotionClass, Readout, ReadoutConfig};
use affectd::types::BBox;

const CLASSES: [&str; 2] = ["calm", "joy"];

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/emotionclip-tiny")
}

/// A window whose colour says its class (red or blue), with per-window noise.
fn window(class: usize, seed: u64) -> Vec<EncoderCrop> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 60) as u8
    };
    (0..8)
        .map(|_| EncoderCrop {
            size: 64,
            rgb: (0..64 * 64)
                .flat_map(|_| {
                    let n = noise();
                    if class == 0 {
                        [180 + n, 40 + n, 40]
                    } else {
                        [40, 40 + n, 180 + n]
                    }
                })
                .collect(),
            mask: (0..64 * 64)
                .map(|i| u8::from((i % 64) > 16 && (i % 64) < 48))
                .collect(),
        })
        .collect()
}

/// 8 tracks of 3 windows on two cameras; returns the dataset folder and labels text.
fn dataset(dir: &Path) -> String {
    let manifest = Manifest::new(64, 8, CropPolicy::SUBJECT_DEFAULT, "tiny");
    let mut writer = DatasetWriter::open(&dir.join("data"), &manifest, u64::MAX).unwrap();
    let walls: Vec<SystemTime> = (0..8)
        .map(|i| SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + i))
        .collect();
    let seqs: Vec<u64> = (0..8).collect();
    let boxes = vec![BBox::new(10.0, 10.0, 50.0, 90.0); 8];
    let mut labels = String::from("sample,emotion,valence,arousal\n");
    for track in 0..8u64 {
        let class = (track % 2) as usize;
        for w in 0..3 {
            let crops = window(class, track * 10 + w);
            let written = writer
                .write(&WindowRecord {
                    camera: if track < 4 { "door" } else { "hall" },
                    track_id: track + 1,
                    model: "tiny",
                    crops: crops.iter().collect(),
                    walls: &walls,
                    frame_seqs: &seqs,
                    bboxes: &boxes,
                    frame_size: (640, 480),
                })
                .unwrap();
            let v = if class == 0 { -0.4 } else { 0.6 };
            labels.push_str(&format!(
                "{},{},{v},{}\n",
                written.id,
                CLASSES[class],
                -v / 2.0
            ));
        }
    }
    labels
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("affectd.toml");
    let tiny = tiny();
    std::fs::write(
        &path,
        format!(
            "[node]\nid = \"n\"\n[[camera]]\nid = \"door\"\nuri = \"test:ball\"\n[detect]\n[model]\nname = \"tiny\"\nweights = \"{}\"\nconfig = \"{}\"\n",
            tiny.join("weights.safetensors").display(),
            tiny.join("config.json").display()
        ),
    )
    .unwrap();
    path
}

fn train(dir: &Path, labels: &str, extra: &[&str]) -> Output {
    std::fs::write(dir.join("labels.csv"), labels).unwrap();
    let d = |p: &str| dir.join(p).display().to_string();
    Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args([
            "train",
            "heads",
            "--data",
            &d("data"),
            "--labels",
            &d("labels.csv"),
        ])
        .args([
            "--config",
            &d("affectd.toml"),
            "--out",
            &d("heads.safetensors"),
        ])
        .args(["--report", &d("report.json"), "--val-fraction", "0.25"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn train_heads_writes_heads_the_readout_serves() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let labels = dataset(dir.path());
    config(dir.path());

    let out = train(dir.path(), &labels, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(stdout.contains("emotion  2 classes"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["model"]["name"], "tiny");
    assert_eq!(report["model"]["embed_dim"], 32);
    assert_eq!(
        report["model"]["weights_sha256"].as_str().unwrap().len(),
        64
    );
    assert_eq!(report["data"]["labels_used"], 24);
    assert_eq!(report["split"]["by"], "camera+track");
    let emotion = &report["emotion"];
    assert_eq!(emotion["classes"], serde_json::json!(CLASSES));
    assert!(emotion["accuracy"].as_f64().unwrap() >= 0.95, "{emotion}");
    assert!(emotion["macro_map"].as_f64().unwrap() >= 0.95, "{emotion}");
    assert!(
        report["valence_arousal"]["valence"]["r2"].as_f64().unwrap() > 0.9,
        "{report}"
    );

    // The read-out serves the file: scores from the head, over its classes.
    let heads = dir.path().join("heads.safetensors");
    let cfg = ReadoutConfig {
        ema_alpha: 1.0,
        heads_file: Some(heads),
        classes: ["neutral", "anger"]
            .map(|n| EmotionClass {
                name: n.into(),
                descriptions: vec![n.into()],
                components: vec![],
                valence: Some(0.0),
                arousal: Some(0.0),
            })
            .to_vec(),
    };
    let axes = |t: &[String]| -> Result<Vec<Vec<f32>>, String> {
        Ok(t.iter()
            .enumerate()
            .map(|(i, _)| (0..32).map(|j| f32::from(u8::from(i == j))).collect())
            .collect())
    };
    let readout = Readout::build(&cfg, 100.0, axes).unwrap();
    assert!(readout.has_emotion_head() && readout.has_va_head());
    assert_eq!(readout.names(), CLASSES);
    let data = Dataset::open(&dir.path().join("data")).unwrap();
    let cfg =
        affectd::model::EmotionClipConfig::from_json_file(&tiny().join("config.json")).unwrap();
    let model = affectd::model::EmotionClip::load(
        &tiny().join("weights.safetensors"),
        &cfg,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let samples: Vec<_> = data.samples().iter().collect();
    let embeddings =
        affectd::train::heads::embed_samples(&model, &data, &samples, 64, |_| {}).unwrap();
    for (i, e) in embeddings.iter().enumerate() {
        let affect = readout.read(e);
        let class = (i / 3) % 2;
        assert_eq!(Readout::top(&affect), class, "window {i}: {affect:?}");
        assert_eq!(affect.valence > 0.0, class == 1);
    }

    // A bad row: exit 2 naming the line and column.
    let bad = labels.replacen(",-0.4,", ",-4,", 1);
    let out = train(dir.path(), &bad, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("labels.csv:2: valence: -4 is outside [-1, 1]"),
        "{stderr}"
    );

    // A label for a sample that is not in the dataset: refused, or skipped on request.
    let unknown = format!("{labels}ghost,joy,,\n");
    let out = train(dir.path(), &unknown, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 26 \"ghost\""), "{stderr}");
    let out = train(dir.path(), &unknown, &["--skip-unknown", "--seed", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("train heads end to end in {:?}", t0.elapsed());
}
