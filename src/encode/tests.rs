//! The encoder stage under overload, with the real (tiny) EmotionCLIP: endings are never
//! lost, every person's state is freed, each track's windows precede its `end`, the
//! heartbeat stays fresh, and a reload's outcome is one thing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use candle_core::Device;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::capture::{Capture, CaptureConfig, Dataset, Manifest};
use crate::health::Health;
use crate::model::preprocess::CropPolicy;
use crate::model::{EmotionClip, EmotionClipConfig, ModelId};
use crate::readout::{Readout, ReadoutConfig};
use crate::results::{PersonAffect, ResultSink, SpanEvent, TrackSpan};
use crate::types::{BBox, CameraId, Frame, PersonSample, TrackKey};

fn tiny(seed: Option<u64>) -> EmotionClip {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/emotionclip-tiny");
    let cfg = EmotionClipConfig::from_json_file(&dir.join("config.json")).unwrap();
    match seed {
        None => EmotionClip::load(&dir.join("weights.safetensors"), &cfg, &Device::Cpu).unwrap(),
        Some(seed) => EmotionClip::random(&cfg, seed, &Device::Cpu).unwrap(),
    }
}

/// The tiny model with a read-out over fixed class embeddings (its text tower's vocabulary
/// is too small for the class descriptions).
fn loaded(name: &str, seed: Option<u64>) -> LoadedModel {
    let model = tiny(seed);
    let dim = model.config().embed_dim;
    let readout = Readout::build(&ReadoutConfig::default(), 10.0, |texts| {
        Ok::<_, String>(
            texts
                .iter()
                .enumerate()
                .map(|(t, _)| {
                    (0..dim)
                        .map(|i| ((i * 7 + t * 13) % 11) as f32 - 5.0)
                        .collect()
                })
                .collect(),
        )
    })
    .unwrap();
    LoadedModel {
        encoder: LiveEncoder::new(model, CropPolicy::SUBJECT_DEFAULT, 2),
        readout,
        id: ModelId::new(name, seed.map(|s| format!("{s:064}")).as_deref()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Person(TrackKey, String),
    End(TrackKey),
}

#[derive(Default)]
struct Collect(Mutex<Vec<Seen>>);

impl ResultSink for Collect {
    fn person(&self, a: PersonAffect) {
        let key = (a.camera, a.track_id);
        self.0.lock().push(Seen::Person(key, a.model.name));
    }
    fn track(&self, span: TrackSpan) {
        assert_eq!(span.event, SpanEvent::End, "the encoder reports ends only");
        self.0.lock().push(Seen::End(span.key()));
    }
}

fn sample(camera: &CameraId, track_id: u64, n: u64) -> PersonSample {
    let (w, h) = (96u32, 80u32);
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i as u64 * 31 + n * 17 + track_id) % 251) as u8)
        .collect();
    let x = 5.0 + (n % 20) as f32 * 2.0;
    PersonSample {
        frame: Frame {
            camera: camera.clone(),
            seq: n,
            pts: None,
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(125 * n),
            width: w,
            height: h,
            rgb: Arc::from(rgb),
        },
        track_id,
        bbox: BBox::new(x, 10.0, x + 30.0, 75.0),
    }
}

fn span(camera: &CameraId, track_id: u64) -> TrackSpan {
    TrackSpan {
        camera: camera.clone(),
        track_id,
        event: SpanEvent::End,
        bbox: BBox::new(0.0, 0.0, 10.0, 10.0),
        frame_size: (96, 80),
        first_seen: SystemTime::UNIX_EPOCH,
        last_seen: SystemTime::UNIX_EPOCH,
    }
}

struct Running {
    stage: EncoderStage,
    sink: Arc<Collect>,
    health: Health,
}

fn start(queue: usize, max_batch: usize, tap: Option<Box<dyn WindowTap>>) -> Running {
    let sink = Arc::new(Collect::default());
    let health = Health::new();
    let options = StageOptions {
        settings: Settings {
            max_batch,
            ema_alpha: 0.4,
            include_embedding: false,
        },
        queue,
        max_per_camera: 64,
        metrics: Default::default(),
    };
    let stage = EncoderStage::spawn(
        loaded("tiny", None),
        options,
        Arc::clone(&sink) as Arc<dyn ResultSink>,
        tap,
        health.register("encoder"),
        CancellationToken::new(),
    )
    .unwrap();
    Running {
        stage,
        sink,
        health,
    }
}

/// Many short tracks, six at a time, sampled every frame into a queue of 4 that the encoder
/// cannot keep up with, for `seconds`, while the encoder's heartbeat is checked (the old
/// loop, which worked through the backlog at every track end, stopped beating as long as
/// samples kept coming); every track ends. Returns the tracks ended.
fn overload(run: &Running, seconds: f64) -> Vec<TrackKey> {
    let camera: CameraId = Arc::from("cam");
    let sender = run.stage.sender();
    let t0 = Instant::now();
    let mut ended = Vec::new();
    let (mut next_id, mut n) = (1u64, 0u64);
    let mut live: Vec<u64> = Vec::new();
    while t0.elapsed().as_secs_f64() < seconds {
        while live.len() < 6 {
            live.push(next_id);
            next_id += 1;
        }
        for &id in &live {
            sender.sample(sample(&camera, id, n));
        }
        n += 1;
        // Every 12 frames the oldest person leaves.
        if n % 12 == 0 {
            let id = live.remove(0);
            sender.track_ended(span(&camera, id));
            ended.push((camera.clone(), id));
        }
        let stalled = run.health.stalled(Duration::from_millis(1500));
        assert!(
            stalled.is_empty(),
            "{stalled:?} stopped beating under overload"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for id in live {
        sender.track_ended(span(&camera, id));
        ended.push((camera.clone(), id));
    }
    ended
}

#[test]
fn an_overloaded_encoder_loses_no_ending_frees_every_person_and_keeps_beating() {
    let run = start(4, 2, None);
    let ended = overload(&run, 60.0);
    let (sink, stats, dropped) = (
        Arc::clone(&run.sink),
        run.stage.stats(),
        run.stage.sender().dropped(),
    );
    run.stage.stop(Duration::from_secs(30));
    let seen = sink.0.lock().clone();

    assert!(dropped > 0, "the run must overload the queue of 4");
    assert_eq!(stats.persons.load(std::sync::atomic::Ordering::Relaxed), 0);
    let ends: Vec<&TrackKey> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::End(k) => Some(k),
            Seen::Person(..) => None,
        })
        .collect();
    assert_eq!(ends.len(), ended.len(), "one end per track, none lost");
    let mut last_position: HashMap<&TrackKey, usize> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        match s {
            Seen::Person(k, _) => {
                assert!(
                    !last_position.contains_key(k),
                    "{k:?}: a window after its end"
                );
            }
            Seen::End(k) => {
                assert!(last_position.insert(k, i).is_none(), "{k:?} ended twice");
            }
        }
    }
    let windows = seen.len() - ends.len();
    assert!(windows > 0, "some windows were published");
}

#[test]
fn a_reload_under_overload_is_applied_or_refused_never_both() {
    let run = start(4, 2, None);
    let sender = run.stage.sender();
    let feeder = {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let camera: CameraId = Arc::from("cam");
            for n in 0..600u64 {
                for id in 1..=4 {
                    sender.sample(sample(&camera, id, n));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Taken at once: control never waits behind the samples.
    let reloaded = Settings {
        max_batch: 2,
        ema_alpha: 0.5,
        include_embedding: false,
    };
    let applied = sender
        .swap(loaded("second", Some(7)), reloaded.clone())
        .wait(Duration::from_secs(20));
    assert_eq!(applied.as_ref().map(|id| id.name.as_str()), Ok("second"));
    // A reload that gives up at once: either the encoder took it first (and says so) or
    // it is never applied.
    let quick = sender
        .swap(loaded("third", Some(9)), reloaded)
        .wait(Duration::ZERO);
    feeder.join().unwrap();
    let sink = Arc::clone(&run.sink);
    run.stage.stop(Duration::from_secs(30));
    let names: Vec<String> = sink
        .0
        .lock()
        .iter()
        .filter_map(|s| match s {
            Seen::Person(_, name) => Some(name.clone()),
            Seen::End(_) => None,
        })
        .collect();
    let last = names.last().cloned().unwrap_or_default();
    match quick {
        Ok(id) => assert_eq!(last, id.name, "applied and said so"),
        Err(why) => {
            assert!(why.contains("will not apply"), "{why}");
            assert!(!names.contains(&"third".to_owned()), "refused yet applied");
            assert_eq!(last, "second");
        }
    }
}

#[test]
fn the_tap_captures_the_first_window_update_every_n_frames_of_a_track() {
    let camera: CameraId = Arc::from("cam");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaptureConfig::new(dir.path());
    cfg.every = 5;
    let manifest = Manifest::new(64, 8, CropPolicy::SUBJECT_DEFAULT, "tiny");
    let capture = Capture::start(&cfg, &manifest, CancellationToken::new()).unwrap();
    // Windows every 2 frames once full (frames 7, 9, 11, ...); captures at least 5 apart.
    let run = start(64, 1, Some(Box::new(capture.sender())));
    for n in 0..16 {
        run.stage.sender().sample(sample(&camera, 7, 100 + n));
    }
    run.stage.sender().track_ended(span(&camera, 7));
    run.stage.stop(Duration::from_secs(30));
    capture.stop(Duration::from_secs(10));
    let dataset = Dataset::open(dir.path()).unwrap();
    let last_seqs: Vec<u64> = dataset
        .samples()
        .iter()
        .map(|s| s.frames[7].seq - 100)
        .collect();
    assert_eq!(last_seqs, [7, 13]);
}

#[test]
fn a_shutdown_deadline_drops_the_backlog_but_never_a_track_end() {
    let run = start(512, 1, None);
    let camera: CameraId = Arc::from("cam");
    let sender = run.stage.sender();
    for n in 0..60 {
        for id in 1..=8 {
            sender.sample(sample(&camera, id, n));
        }
    }
    for id in 1..=8 {
        sender.track_ended(span(&camera, id));
    }
    let sink = Arc::clone(&run.sink);
    let t0 = Instant::now();
    // 480 batch-1 forwards take far longer than this.
    run.stage.stop(Duration::from_millis(300));
    let took = t0.elapsed();
    let ends = sink
        .0
        .lock()
        .iter()
        .filter(|s| matches!(s, Seen::End(_)))
        .count();
    assert_eq!(
        ends, 8,
        "every end went out before stop returned ({took:?})"
    );
    assert!(sender.dropped() > 0, "the backlog was dropped, and counted");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
