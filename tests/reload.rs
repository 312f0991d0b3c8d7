//! `systemctl reload` end to end: the real daemon on the bundled clip with a real broker gets
//! SIGHUP after its config was pointed at new weights, and must swap models without dropping
//! the stream or the tracks; bad weights must leave the running model serving.

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mosquitto::{Mosquitto, Msg, Subscriber};
use safetensors::tensor::TensorView;
use serde_json::Value;

const NODE: &str = "rl";
const CAMERA: &str = "walkway";
/// The CLIP tokenizer's vocabulary: the read-out's class descriptions need all of it.
const CLIP_VOCAB: usize = 49408;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Two checkpoints of the tiny EmotionCLIP that differ in one tensor, with their config.
///
/// The golden tiny checkpoint has a 1000-token text vocabulary (enough for its parity
/// inputs) but the read-out tokenizes English descriptions with the full CLIP vocabulary, so
/// its token embedding is widened to 49408 rows (row i = row i mod 1000); the rest is the
/// checkpoint as shipped. The second file scales `backbone.visual.proj` by 1.1.
fn write_models(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let golden = repo("tests/fixtures/golden/emotionclip-tiny");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("config.json")).unwrap())
            .unwrap();
    config["text_cfg"]["vocab_size"] = CLIP_VOCAB.into();
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let bytes = std::fs::read(golden.join("weights.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let write = |name: &str, perturb: bool| -> PathBuf {
        let tensors: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(key, view)| {
                let mut shape = view.shape().to_vec();
                let mut data = view.data().to_vec();
                if key == "backbone.token_embedding.weight" {
                    let row = shape[1] * 4;
                    data = (0..CLIP_VOCAB)
                        .flat_map(|i| {
                            let r = i % shape[0];
                            view.data()[r * row..(r + 1) * row].to_vec()
                        })
                        .collect();
                    shape[0] = CLIP_VOCAB;
                }
                if perturb && key == "backbone.visual.proj" {
                    data = data
                        .chunks_exact(4)
                        .flat_map(|b| {
                            (f32::from_le_bytes(b.try_into().unwrap()) * 1.1).to_le_bytes()
                        })
                        .collect();
                }
                (key, (view.dtype(), shape, data))
            })
            .collect();
        assert!(tensors.contains_key("backbone.visual.proj"));
        let views = tensors.iter().map(|(k, (dtype, shape, data))| {
            (
                k.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        });
        let path = dir.join(name);
        safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    };
    (
        config_path,
        write("a.safetensors", false),
        write("b.safetensors", true),
    )
}

/// What person messages say about weights loaded from `path`.
fn weights_id(path: &Path) -> String {
    let hex = affectd::digest::sha256_file(path).unwrap();
    affectd::model::ModelId::new("x", Some(&hex)).weights
}

fn config(broker: &Mosquitto, model_config: &Path, weights: &Path, extra: &str) -> String {
    format!(
        r#"
[node]
id = "{NODE}"

[[camera]]
id = "{CAMERA}"
uri = "file:{clip}"

[mqtt]
port = {port}
status_interval_s = 1.0

[http]
enabled = false

[detect]
engine = "{engine}"
providers = ["cpu"]

[model]
name = "tiny"
weights = "{weights}"
config = "{model_config}"
update_every = 2
onnx_cache_dir = "onnx-cache"
{extra}
"#,
        clip = repo("tests/fixtures/vtest.mp4").display(),
        port = broker.port(),
        engine = repo("engines/nanodet-g-416.toml").display(),
        weights = weights.display(),
        model_config = model_config.display(),
    )
}

struct Daemon {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &str) -> Daemon {
        let path = dir.join("affectd.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_affectd"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            config: path,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rewrites the config file and sends SIGHUP, as `systemctl reload` does.
    fn reload(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits until the log has `n` lines containing `needle`.
    fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(m: &Msg) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

fn person(m: &Msg) -> Option<(u64, String)> {
    if !m
        .topic
        .starts_with(&format!("affectd/{NODE}/{CAMERA}/person/"))
    {
        return None;
    }
    let v = json(m);
    Some((
        v["track_id"].as_u64()?,
        v["model"]["weights"].as_str()?.to_owned(),
    ))
}

fn ended(m: &Msg) -> Option<u64> {
    let v = json(m);
    (m.topic == format!("affectd/{NODE}/{CAMERA}/tracks") && v["event"] == "end")
        .then(|| v["track_id"].as_u64())
        .flatten()
}

#[test]
fn a_reload_under_load_swaps_the_model_and_drops_no_track() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (model_config, a, b) = write_models(dir.path());
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint at all, just garbage bytes").unwrap();
    let (id_a, id_b) = (weights_id(&a), weights_id(&b));
    assert_ne!(id_a, id_b);

    let broker = Mosquitto::start();
    let sub = Subscriber::new(&broker, "affectd/#");
    let mut daemon = Daemon::start(dir.path(), &config(&broker, &model_config, &a, ""));

    // Serving with A: wait until several person messages came, from a track still publishing.
    let mut published_before: BTreeSet<u64> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while published_before.len() < 2 || sub.messages().iter().filter_map(person).count() < 6 {
        assert!(
            Instant::now() < deadline,
            "too few person messages with the first model:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        published_before = sub
            .messages()
            .iter()
            .filter_map(person)
            .map(|(t, _)| t)
            .collect();
    }
    let streaming_since = sub.mark();
    let before: Vec<(u64, String)> = sub.messages().iter().filter_map(person).collect();
    assert!(
        before.iter().all(|(_, w)| *w == id_a),
        "{before:?} != {id_a}"
    );
    // Only tracks that are still alive are expected to survive: those that never ended.
    let ended_before: BTreeSet<u64> = sub.messages().iter().filter_map(ended).collect();
    let live: BTreeSet<u64> = published_before
        .difference(&ended_before)
        .copied()
        .collect();
    let started = Instant::now();

    daemon.reload(&config(&broker, &model_config, &b, ""));
    assert!(
        daemon.wait_log("reloaded model tiny", 1, Duration::from_secs(20)),
        "no reload logged:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains(&format!("reloaded model tiny {id_b}")),
        "{}",
        daemon.log()
    );
    eprintln!("reloaded {:?} after SIGHUP", started.elapsed());

    // A live track publishes with B under the same id, with no `end` before it.
    let survivor = sub.wait_for_after(streaming_since, Duration::from_secs(15), |m| {
        person(m).is_some_and(|(t, w)| live.contains(&t) && w == id_b)
    });
    let messages = sub.messages();
    let survivor = person(&survivor.unwrap_or_else(|| {
        panic!(
            "no track of {live:?} published with the new model:\n{:?}\n{}",
            messages[streaming_since..]
                .iter()
                .filter_map(person)
                .collect::<Vec<_>>(),
            daemon.log()
        )
    }))
    .unwrap()
    .0;
    let after = &messages[streaming_since..];
    let first_b = after
        .iter()
        .position(|m| person(m).is_some_and(|(t, w)| t == survivor && w == id_b))
        .unwrap();
    assert!(
        !after[..first_b]
            .iter()
            .filter_map(ended)
            .any(|t| t == survivor),
        "track {survivor} ended at the reload"
    );
    // Once B serves, no message carries A again.
    let models: Vec<String> = after.iter().filter_map(person).map(|(_, w)| w).collect();
    let switch = models.iter().position(|w| *w == id_b).unwrap();
    assert!(models[switch..].iter().all(|w| *w == id_b), "{models:?}");

    // A corrupt file (with a change that needs a restart) is refused; B keeps serving.
    daemon.reload(&config(&broker, &model_config, &bad, "[ingest]\nfps = 6\n"));
    assert!(
        daemon.wait_log("reload failed", 1, Duration::from_secs(20)),
        "no failure logged:\n{}",
        daemon.log()
    );
    let refused = sub.mark();
    let log = daemon.log();
    assert!(
        log.contains("bad.safetensors"),
        "the error names the file:\n{log}"
    );
    assert!(
        log.contains("keys=[\"ingest\"]"),
        "ingest needs a restart:\n{log}"
    );
    let later = sub.wait_for_after(refused, Duration::from_secs(10), |m| person(m).is_some());
    assert_eq!(
        later.and_then(|m| person(&m)).map(|(_, w)| w),
        Some(id_b.clone())
    );

    // A config that does not validate changes nothing and names the key.
    daemon.reload(&config(&broker, &model_config, &b, "max_batch = 0\n"));
    assert!(
        daemon.wait_log("reload failed", 2, Duration::from_secs(20)),
        "no failure logged:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("model.max_batch: 0 is out of range"),
        "{}",
        daemon.log()
    );
    let last = sub.mark();
    let later = sub.wait_for_after(last, Duration::from_secs(10), |m| person(m).is_some());
    assert_eq!(
        later.and_then(|m| person(&m)).map(|(_, w)| w),
        Some(id_b.clone())
    );

    // The stream never stopped: every camera status since the first model served says
    // streaming, and the node never went offline. A fast run can be over within one status
    // interval, so wait for a status published after the last reload.
    let status_topic = format!("affectd/{NODE}/{CAMERA}/status");
    assert!(
        sub.wait_for_after(last, Duration::from_secs(10), |m| m.topic == status_topic
            && !m.retain)
            .is_some(),
        "no camera status after the last reload:\n{}",
        daemon.log()
    );
    let messages = sub.messages();
    let statuses: Vec<Value> = messages[streaming_since..]
        .iter()
        .filter(|m| m.topic == format!("affectd/{NODE}/{CAMERA}/status") && !m.retain)
        .map(json)
        .collect();
    assert!(!statuses.is_empty(), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| s["state"] == "streaming" && s["restarts"] == 0),
        "{statuses:?}"
    );
    assert!(
        !messages[streaming_since..]
            .iter()
            .any(|m| m.topic == format!("affectd/{NODE}/status") && m.text() != "online")
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited"
    );
    // A track live at the reload may be out of sight for a moment (and the refused reloads
    // above take no time): wait for each one's outcome, a message with the new model or its
    // end, before judging it.
    let decided = |messages: &[Msg], t: u64| {
        messages
            .iter()
            .any(|m| ended(m) == Some(t) || person(m).is_some_and(|(p, w)| p == t && w == id_b))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !live.iter().all(|&t| decided(&sub.messages(), t)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    every_live_track_survived(&sub.messages(), &live, &id_b);
    eprintln!("reload test took {:?}", t0.elapsed());
}

/// Every track live at the reload (published with the first model and not ended at SIGHUP)
/// that was still in view once the new model served published with it under the same id,
/// with no `end` before. A track whose person left before then ends without a message from
/// the new model: that is the tracker, not the reload. "Then" is the last frame of the first
/// window the new model published, plus [`SURVIVAL_SLACK`] for a window update to come due.
fn every_live_track_survived(messages: &[Msg], live: &BTreeSet<u64>, id_b: &str) {
    let wall = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let first_b = messages
        .iter()
        .find(|m| person(m).is_some_and(|(_, w)| w == id_b))
        .expect("the new model published");
    let swap = wall(&json(first_b)["window"]["end"]);
    let mut outcomes = Vec::new();
    for &track in live {
        let first_b_index = messages
            .iter()
            .position(|m| person(m).is_some_and(|(t, w)| t == track && w == id_b));
        let end = messages.iter().position(|m| ended(m) == Some(track));
        match (first_b_index, end) {
            (Some(b), end) => {
                assert!(
                    end.is_none_or(|e| e > b),
                    "track {track} ended (message #{end:?}) before publishing with the new model (#{b})"
                );
                outcomes.push(format!("{track}: survived"));
            }
            (None, Some(e)) => {
                let last_seen = wall(&json(&messages[e])["last_seen"]);
                let after_swap = (last_seen - swap).num_milliseconds() as f64 / 1000.0;
                assert!(
                    after_swap <= SURVIVAL_SLACK,
                    "track {track} was live at the reload and seen {after_swap:.2} s after the new \
                     model served, but never published with it"
                );
                outcomes.push(format!("{track}: left {after_swap:.2} s after the swap"));
            }
            (None, None) => panic!(
                "track {track} was live at the reload, never ended and never published with the \
                 new model"
            ),
        }
    }
    eprintln!("live tracks at the reload: {outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o.ends_with("survived")),
        "no live track survived: {outcomes:?}"
    );
}

/// Seconds after the new model's first window for a live track's next window update
/// (`update_every = 2` sampled frames at 8 fps is 0.25 s; the rest is the queue ahead of it).
const SURVIVAL_SLACK: f64 = 2.0;
