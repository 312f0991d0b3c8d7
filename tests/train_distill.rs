//! Capture -> distill -> serve, with the real binary: the daemon captures windows of the real
//! clip, `affectd train distill` learns a student from them (a tiny teacher config so that a
//! few hundred steps take seconds), an interrupted run resumed ends bit for bit where an
//! uninterrupted one does, and the daemon serves the student.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use daemon::{Daemon, NODE, config, detect_sections, fixture, tiny_model_section};
use mosquitto::{Mosquitto, Subscriber};
use serde_json::Value;

const CAMERA: &str = "walkway";

/// The bundled detector, every frame sampled, the tiny teacher (seeded random weights), and
/// capture into `capture`.
fn teacher_sections(capture: &Path) -> String {
    format!(
        "{}{}[capture]\ndir = \"{}\"\nevery = 4\n",
        detect_sections(),
        tiny_model_section(),
        capture.display()
    )
}

fn cameras() -> String {
    format!(
        "[[camera]]\nid = \"{CAMERA}\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    )
}

/// Runs the daemon until the capture folder holds `wanted` windows.
fn capture(broker: &Mosquitto, dir: &Path, wanted: usize) -> PathBuf {
    let mut daemon = Daemon::start(&config(broker, &cameras(), &teacher_sections(dir)));
    let index = dir.join("index.jsonl");
    let count = || {
        std::fs::read_to_string(&index)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() < wanted && Instant::now() < deadline {
        assert!(daemon.is_running(), "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let config_path = daemon.dir.path().join("affectd.toml");
    let kept = dir.join("affectd.toml");
    std::fs::copy(&config_path, &kept).unwrap();
    let (status, _) = daemon.terminate(Duration::from_secs(6));
    assert!(status.success(), "{}", daemon.log());
    assert!(count() >= wanted, "{} windows:\n{}", count(), daemon.log());
    kept
}

fn distill(config: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args(["train", "distill", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--student",
            "vits32",
            "--steps",
            "240",
            "--batch",
            "4",
            "--lr",
            "3e-3",
            "--warmup",
            "10",
            "--eval-every",
            "40",
            "--checkpoint-every",
            "100",
            "--val-fraction",
            "0.3",
            "--seed",
            "3",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn mean_loss(history: &[Value]) -> f64 {
    history
        .iter()
        .map(|r| r["loss"]["total"].as_f64().unwrap())
        .sum::<f64>()
        / history.len() as f64
}

#[test]
fn captured_windows_distil_into_a_student_the_daemon_serves() {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("capture");
    let daemon_config = capture(&broker, &data, 40);

    // Uninterrupted.
    let out = work.path().join("student");
    let printed = distill(&daemon_config, &data, &out, &[]);
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(stdout.contains("held-out"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let history = report["history"].as_array().unwrap();
    assert_eq!(history.len(), 240);
    let (first, last) = (mean_loss(&history[..10]), mean_loss(&history[230..]));
    assert!(last <= first / 2.0, "loss {first} -> {last}");
    let (initial, result) = (&report["initial"], &report["final"]);
    assert!(result["windows"].as_u64().unwrap() > 0, "{report}");
    let cos = |a: &Value| a["embedding_cosine"].as_f64().unwrap();
    let top1 = |a: &Value| a["top1_agreement"].as_f64().unwrap();
    let held_out_loss = |a: &Value| a["loss"]["total"].as_f64().unwrap();
    println!(
        "held-out: loss {:.4} -> {:.4}, cosine {:.4} -> {:.4}, top-1 {:.3} -> {:.3}",
        held_out_loss(initial),
        held_out_loss(result),
        cos(initial),
        cos(result),
        top1(initial),
        top1(result)
    );
    // The held-out loss must at least halve too, not only the training loss (measured: 3.56 ->
    // 0.13). Top-1 agreement starts at 1.0 here (the tiny teacher's read-out is nearly
    // constant), so it can only be required not to fall.
    assert!(
        cos(result) > cos(initial)
            && top1(result) >= top1(initial)
            && held_out_loss(result) <= 0.5 * held_out_loss(initial),
        "held-out agreement {initial} -> {result}"
    );
    assert!(report["speed"]["student_frames_per_s"].as_f64().unwrap() > 0.0);
    let png = image::open(out.join("report.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // Interrupted after 130 steps, then resumed: the same student, bit for bit.
    let resumed = work.path().join("resumed");
    let stopped = distill(&daemon_config, &data, &resumed, &["--stop-after", "130"]);
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("stopped at step 130"));
    assert!(!resumed.join("student.safetensors").exists());
    distill(&daemon_config, &data, &resumed, &["--resume"]);
    let a = std::fs::read(out.join("student.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("student.safetensors")).unwrap();
    assert!(a == b, "the resumed run ended elsewhere");

    // The daemon serves the student.
    let sub = Subscriber::new(&broker, &format!("affectd/{NODE}/{CAMERA}/person/#"));
    let serving = format!(
        r#"
{detect}
[model]
weights = "{weights}"
config = "{cfg}"
name = "tiny-student"
update_every = 2
onnx_cache_dir = "onnx-cache"
"#,
        detect = detect_sections(),
        weights = out.join("student.safetensors").display(),
        cfg = out.join("config.json").display(),
    );
    let mut daemon = Daemon::start(&config(&broker, &cameras(), &serving));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.messages().is_empty() && Instant::now() < deadline {
        assert!(daemon.is_running(), "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate(Duration::from_secs(6));
    let messages = sub.messages();
    assert!(!messages.is_empty(), "no person message:\n{}", daemon.log());
    let message: Value = serde_json::from_slice(&messages[0].payload).unwrap();
    let sha = report["student"]["sha256"].as_str().unwrap();
    assert_eq!(message["model"]["name"], "tiny-student");
    assert!(
        message["model"]["weights"]
            .as_str()
            .is_some_and(|w| sha.starts_with(w.trim_start_matches("sha256:"))),
        "{message} vs {sha}"
    );
}
