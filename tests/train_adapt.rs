//! Capture -> describe -> adapt -> serve, with the real binary: the daemon captures windows of
//! the real clip, each window gets two texts honestly tied to it (its person's motion and
//! place in the frame, from the boxes the capture recorded), `affectd train adapt` trains
//! the tiny model (seeded random weights, the full CLIP vocabulary) with each objective, an
//! interrupted run resumed ends bit for bit where an uninterrupted one does, and the daemon
//! serves the adapted model.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use daemon::{Daemon, NODE, config, detect_sections, fixture, tiny_model_section};
use mosquitto::{Mosquitto, Subscriber};
use serde_json::{Value, json};

const CAMERA: &str = "walkway";

/// 200 steps of the temporal encoder alone (the frame encoder's outputs come from the cache):
/// seconds.
const CACHED: [&str; 4] = ["--steps", "200", "--blocks", "0"];

fn camera() -> String {
    format!(
        "[[camera]]\nid = \"{CAMERA}\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    )
}

/// Runs the daemon until `dir` holds `wanted` captured windows; returns the daemon config,
/// kept beside the data (its `[model]` is the model to adapt).
fn capture_windows(broker: &Mosquitto, dir: &Path, wanted: usize) -> PathBuf {
    let sections = format!(
        "{}{}[capture]\ndir = \"{}\"\nevery = 4\n",
        detect_sections(),
        tiny_model_section(),
        dir.display()
    );
    let mut daemon = Daemon::start(&config(broker, &camera(), &sections));
    let index = dir.join("index.jsonl");
    let count = || std::fs::read_to_string(&index).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + Duration::from_secs(90);
    while count() < wanted {
        assert!(
            daemon.is_running() && Instant::now() < deadline,
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = dir.join("affectd.toml");
    std::fs::copy(daemon.dir.path().join("affectd.toml"), &kept).unwrap();
    assert!(
        daemon.terminate(Duration::from_secs(6)).0.success(),
        "{}",
        daemon.log()
    );
    kept
}

/// Two texts per captured window from its person's boxes: "a person walking left in the
/// middle of the frame" (the motion over the window, the height in the frame) and "someone
/// on the right of the scene, walking left" (the side). One `pairs.jsonl` line each.
fn motion_pairs(capture: &Path) -> String {
    let index = std::fs::read_to_string(capture.join("index.jsonl")).unwrap();
    let mut out = String::new();
    for line in index.lines() {
        let sample: Value = serde_json::from_str(line).unwrap();
        let size = &sample["frame_size"];
        let (w, h) = (size[0].as_f64().unwrap(), size[1].as_f64().unwrap());
        let boxes: Vec<[f64; 4]> = sample["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let b = &f["bbox"];
                [0, 1, 2, 3].map(|k| b[k].as_f64().unwrap())
            })
            .collect();
        let centre = |b: &[f64; 4]| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let (first, last) = (centre(&boxes[0]), centre(&boxes[boxes.len() - 1]));
        let (dx, dy) = (last.0 - first.0, last.1 - first.1);
        let n = boxes.len() as f64;
        let height = boxes.iter().map(|b| b[3] - b[1]).sum::<f64>() / n;
        let cx = boxes.iter().map(|b| centre(b).0).sum::<f64>() / n / w;
        let cy = boxes.iter().map(|b| centre(b).1).sum::<f64>() / n / h;
        // Moving: the centre travelled at least 15% of the person's height over the window.
        let motion = if dx.hypot(dy) < 0.15 * height {
            "standing still"
        } else if dx.abs() >= dy.abs() {
            if dx < 0.0 {
                "walking left"
            } else {
                "walking right"
            }
        } else if dy < 0.0 {
            "walking away from the camera"
        } else {
            "walking toward the camera"
        };
        let third = |v: f64, names: [&'static str; 3]| names[((v * 3.0) as usize).min(2)];
        let height_in_frame = third(
            cy,
            [
                "near the top of the frame",
                "in the middle of the frame",
                "near the bottom of the frame",
            ],
        );
        let side = third(cx, ["on the left", "in the centre", "on the right"]);
        let id = sample["id"].as_str().unwrap();
        for text in [
            format!("a person {motion} {height_in_frame}"),
            format!("someone {side} of the scene, {motion}"),
        ] {
            out.push_str(&json!({ "sample": id, "text": text }).to_string());
            out.push('\n');
        }
    }
    out
}

fn affectd(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_affectd"));
    command.args(["train", "adapt"]).args(args);
    for (flag, path) in paths {
        command.arg(flag).arg(path);
    }
    command.output().unwrap()
}

struct Setup {
    config: PathBuf,
    data: PathBuf,
    pairs: PathBuf,
}

impl Setup {
    /// `affectd train adapt --objective OBJECTIVE` into `out` with the test's settings and
    /// `extra`; asserts success.
    fn adapt(&self, objective: &str, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "--objective",
            objective,
            "--batch",
            "16",
            "--lr",
            "1e-3",
            "--warmup",
            "10",
            "--eval-every",
            "50",
            "--val-fraction",
            "0.3",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        let output = affectd(
            &args,
            &[
                ("--config", &self.config),
                ("--data", &self.data),
                ("--pairs", &self.pairs),
                ("--out", out),
            ],
        );
        let said =
            [&output.stdout, &output.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
        assert!(output.status.success(), "{}", said.join("\n"));
        output
    }
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn mean_loss(history: &[Value]) -> f64 {
    history
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .sum::<f64>()
        / history.len() as f64
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn captured_windows_with_text_adapt_into_a_model_the_daemon_serves() {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("capture");
    let daemon_config = capture_windows(&broker, &data, 160);
    let pairs = work.path().join("pairs.jsonl");
    std::fs::write(&pairs, motion_pairs(&data)).unwrap();
    let setup = Setup {
        config: daemon_config,
        data: data.clone(),
        pairs: pairs.clone(),
    };

    // Pairs naming a window that was never captured are refused, naming the line.
    let unknown = work.path().join("unknown.jsonl");
    let first = std::fs::read_to_string(&pairs).unwrap();
    let first = first.lines().next().unwrap();
    std::fs::write(
        &unknown,
        format!("{first}\n{{\"sample\": \"9999999999\", \"text\": \"a person\"}}\n"),
    )
    .unwrap();
    let refused = affectd(
        &["--objective", "clip"],
        &[
            ("--config", &setup.config),
            ("--data", &data),
            ("--pairs", &unknown),
            ("--out", &work.path().join("refused")),
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2 \"9999999999\""), "{stderr}");

    // InfoNCE: the training loss falls and held-out tracks' windows find their texts better.
    let clip = work.path().join("clip");
    let printed = setup.adapt("clip", &clip, &CACHED);
    assert!(String::from_utf8_lossy(&printed.stdout).contains("video->text R@1"));
    let r = report(&clip);
    let history = r["history"].as_array().unwrap();
    assert_eq!(history.len(), 200);
    let (early, late) = (mean_loss(&history[..20]), mean_loss(&history[180..]));
    assert!(late < 0.8 * early, "clip loss {early} -> {late}");
    let (before, after) = (&r["initial"], &r["final"]);
    assert!(num(&after["retrieval"]["windows"]) >= 10.0, "{r}");
    assert!(
        num(&after["retrieval"]["r1"]) > num(&before["retrieval"]["r1"]),
        "held-out R@1 {} -> {}",
        before["retrieval"],
        after["retrieval"]
    );
    assert!(
        num(&after["mean_pairwise_cosine"]) < 0.99,
        "collapsed: {after}"
    );
    assert_eq!(
        r["data"]["pairs"],
        2 * r["data"]["windows"].as_u64().unwrap()
    );
    let png = image::open(clip.join("report.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // SNCE reports how its sentiments reweight; PACL how it partitioned the pairs.
    let snce = work.path().join("snce");
    setup.adapt("snce", &snce, &[&CACHED[..], &["--beta", "1"]].concat());
    let r = report(&snce);
    let kl = r["snce"]["kl"].as_array().unwrap();
    assert!(
        num(&kl[2]) > 0.0 && num(&r["snce"]["suppressed"]) < 1.0,
        "{}",
        r["snce"]
    );
    let history = r["history"].as_array().unwrap();
    assert!(mean_loss(&history[180..]) < mean_loss(&history[..20]));
    let pacl_args = ["--sigma-factual", "-0.2", "--sigma-emotional", "0.5"];
    let pacl = work.path().join("pacl");
    setup.adapt("pacl", &pacl, &[&CACHED[..], &pacl_args[..]].concat());
    let p = &report(&pacl)["pacl"];
    let counted: u64 = ["strong", "emotional_only", "factual_only", "weak"]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .sum();
    let train_pairs = 2 * report(&pacl)["data"]["train"].as_u64().unwrap();
    assert_eq!(counted, train_pairs, "{p}");

    // Training the last frame-encoder block from the pixels: interrupted after 13 steps and
    // resumed, it ends where the uninterrupted run does, bit for bit.
    let pixels = ["--blocks", "1", "--steps", "30", "--checkpoint-every", "10"];
    let straight = work.path().join("straight");
    setup.adapt("pacl", &straight, &[&pacl_args[..], &pixels[..]].concat());
    let resumed = work.path().join("resumed");
    let stopped = setup.adapt(
        "pacl",
        &resumed,
        &[&pacl_args[..], &pixels[..], &["--stop-after", "13"]].concat(),
    );
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("stopped at step 13"));
    assert!(!resumed.join("adapted.safetensors").exists());
    setup.adapt(
        "pacl",
        &resumed,
        &[&pacl_args[..], &pixels[..], &["--resume"]].concat(),
    );
    let a = std::fs::read(straight.join("adapted.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("adapted.safetensors")).unwrap();
    assert!(a == b, "the resumed run ended elsewhere");
    assert!(report(&straight)["trainable_tensors"].as_u64().unwrap() > 10);

    // The daemon serves the adapted model.
    let sub = Subscriber::new(&broker, &format!("affectd/{NODE}/{CAMERA}/person/#"));
    let serving = format!(
        "{}[model]\nweights = \"{}\"\nconfig = \"{}\"\nname = \"tiny-adapted\"\nupdate_every = 2\n\
         onnx_cache_dir = \"onnx-cache\"\n",
        detect_sections(),
        clip.join("adapted.safetensors").display(),
        clip.join("config.json").display(),
    );
    let mut daemon = Daemon::start(&config(&broker, &camera(), &serving));
    let message = sub.wait_for(Duration::from_secs(30), |_| true);
    daemon.terminate(Duration::from_secs(6));
    let message = message.unwrap_or_else(|| panic!("no person message:\n{}", daemon.log()));
    let message: Value = serde_json::from_slice(&message.payload).unwrap();
    let sha = report(&clip)["adapted"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(message["model"]["name"], "tiny-adapted");
    assert!(
        message["model"]["weights"]
            .as_str()
            .is_some_and(|w| sha.starts_with(w.trim_start_matches("sha256:"))),
        "{message} vs {sha}"
    );
}

/// Writes the motion descriptions of a capture dataset (the benchmark's pairs, see
/// BENCHMARKS.md): `AFFECTD_PAIRS_CAPTURE=DIR AFFECTD_PAIRS_OUT=FILE cargo test --test
/// train_adapt -- --ignored write_motion_pairs`.
#[test]
#[ignore = "a tool for the benchmark: needs AFFECTD_PAIRS_CAPTURE and AFFECTD_PAIRS_OUT"]
fn write_motion_pairs() {
    let capture = std::env::var_os("AFFECTD_PAIRS_CAPTURE").expect("AFFECTD_PAIRS_CAPTURE");
    let out = std::env::var_os("AFFECTD_PAIRS_OUT").expect("AFFECTD_PAIRS_OUT");
    std::fs::write(out, motion_pairs(Path::new(&capture))).unwrap();
}
