//! The real detector on real footage: NanoDet-g (engines/) on tests/fixtures/vtest.mp4 and
//! basketball1.png, and the tracker on the first 20 s of vtest.
//!
//! ONNX Runtime is found the way the daemon finds it: `ORT_DYLIB_PATH`, else the search list
//! (which includes `./.venv/lib/python3*/site-packages/onnxruntime/capi/`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use affectd::detect::{DetectConfig, Detector, Provider};
use affectd::ingest::{FileFrames, read_image};
use affectd::track::{TrackConfig, Tracker};
use affectd::types::{BBox, Detection, Frame};
use affectd::window::{Sampler, WindowConfig};

fn config() -> DetectConfig {
    DetectConfig {
        engine: "engines/nanodet-g-416.toml".into(),
        providers: vec![Provider::Cpu],
        threads: 2,
        ..DetectConfig::default()
    }
}

/// One detector for the whole file (sessions are expensive to open).
fn detector() -> &'static Mutex<Detector> {
    static D: OnceLock<Mutex<Detector>> = OnceLock::new();
    D.get_or_init(|| Mutex::new(Detector::new(&config()).expect("detector opens")))
}

/// The first `seconds` of vtest (10 fps).
fn vtest(seconds: usize) -> Vec<Frame> {
    FileFrames::open(Path::new("tests/fixtures/vtest.mp4"), "vtest")
        .unwrap()
        .take(seconds * 10)
        .map(|f| f.unwrap())
        .collect()
}

fn detect(frame: &Frame) -> Vec<Detection> {
    detector()
        .lock()
        .unwrap()
        .run(&[frame])
        .unwrap()
        .pop()
        .unwrap()
}

fn inside(d: &Detection, f: &Frame) -> bool {
    let b = d.bbox;
    b.x1 >= 0.0
        && b.y1 >= 0.0
        && b.x2 <= f.width as f32
        && b.y2 <= f.height as f32
        && b.x2 > b.x1
        && b.y2 > b.y1
}

#[test]
fn nanodet_finds_the_walkers_in_vtest() {
    let frames = vtest(20);
    assert_eq!(frames.len(), 200, "20 s at 10 fps");
    // Twice a second over the first 20 s (2 to 8 people walk at any time).
    for f in frames.iter().step_by(5) {
        assert_eq!((f.width, f.height), (768, 576));
        let dets = detect(f);
        for d in &dets {
            assert!(inside(d, f), "frame {}: {d:?} outside", f.seq);
            assert!(d.score >= 0.25 && d.score <= 1.0, "{d:?}");
        }
        // At least two clearly visible walkers (score > 0.5): upright boxes of plausible
        // pedestrian size for this camera.
        let walkers: Vec<_> = dets
            .iter()
            .filter(|d| d.score > 0.5)
            .filter(|d| d.bbox.height() > d.bbox.width() && d.bbox.height() > 30.0)
            .collect();
        assert!(walkers.len() >= 2, "frame {}: {dets:?}", f.seq);
    }
}

#[test]
fn nanodet_finds_both_basketball_players() {
    let f = read_image(Path::new("tests/fixtures/basketball1.png"), "still").unwrap();
    let dets = detector()
        .lock()
        .unwrap()
        .run(&[&f])
        .unwrap()
        .pop()
        .unwrap();
    let players: Vec<_> = dets.iter().filter(|d| d.score > 0.5).collect();
    assert!(players.len() >= 2, "{dets:?}");
    assert!(players[0].bbox.iou(&players[1].bbox) < 0.3, "{players:?}");
    for d in &dets {
        assert!(inside(d, &f), "{d:?}");
    }
}

#[test]
fn probe_verifies_checksum_and_output_shapes() {
    let report = Detector::probe(&config()).unwrap();
    assert_eq!(report.output_shapes.len(), 6);
    assert_eq!(report.input_shape, vec![1, 3, 416, 416]);
    // A manifest with a wrong sha256 fails before any session is opened.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("engines/nanodet-g-416.toml").unwrap();
    let model = std::fs::canonicalize("engines/nanodet-g-416.onnx").unwrap();
    let text = text.replace("d295874e", "00000000").replace(
        "\"nanodet-g-416.onnx\"",
        &format!("{:?}", model.display().to_string()),
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let e = Detector::probe(&DetectConfig {
        engine: bad.clone(),
        ..config()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("sha256 is d295874e"), "{e}");
    // Outputs other than the manifest promises fail after one run, naming both.
    let text = std::fs::read_to_string("engines/nanodet-g-416.toml")
        .unwrap()
        .replace("[1, 169, 44]]", "[1, 169, 45]]")
        .replace(
            "\"nanodet-g-416.onnx\"",
            &format!("{:?}", model.display().to_string()),
        );
    std::fs::write(&bad, text).unwrap();
    let e = Detector::probe(&DetectConfig {
        engine: bad,
        ..config()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("the manifest promises"), "{e}");
}

#[test]
fn a_file_that_is_not_video_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.mp4");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let mut frames = FileFrames::open(&path, "noise").unwrap();
    let e = frames.next().expect("an error, not the end").unwrap_err();
    assert!(e.to_string().contains("GstPipeline:file-noise.mp4"), "{e}");
    assert!(frames.next().is_none());
    let e = FileFrames::open(&dir.path().join("missing.mp4"), "x")
        .err()
        .unwrap();
    assert!(e.to_string().ends_with("missing.mp4: no such file"), "{e}");
}

#[test]
fn a_batch_gives_the_same_persons_as_single_frames() {
    let frames = vtest(16);
    let (a, b) = (&frames[50], &frames[150]);
    let both = detector().lock().unwrap().run(&[a, b]).unwrap();
    assert_eq!(both, vec![detect(a), detect(b)]);
}

#[test]
fn tracking_the_first_20_s_of_vtest_keeps_ids_stable() {
    let frames = vtest(20);
    let mut tracker = Tracker::new(TrackConfig::default());
    // id -> (first frame, last frame)
    let mut spans: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut most_visible = 0;
    for f in &frames {
        let dets = detect(f);
        most_visible = most_visible.max(dets.iter().filter(|d| d.score > 0.5).count());
        for t in tracker.update(&dets, f.wall).active {
            let s = spans.entry(t.id).or_insert((f.seq, f.seq));
            s.1 = f.seq;
        }
    }
    let ids = spans.len();
    let long = spans.values().filter(|(a, b)| b - a >= 10).count();
    println!("ids {ids}, lasting over 1 s {long}, most persons visible at once {most_visible}");
    // The number of people who appear is at least the most seen at once.
    assert!(
        ids <= 2 * most_visible.max(1),
        "{ids} ids for {most_visible} people at once"
    );
    assert!(2 * long > ids, "{long} of {ids} tracks last over a second");
}

#[test]
fn walkers_are_sampled_into_8_frame_windows() {
    let frames = vtest(4);
    let mut tracker = Tracker::new(TrackConfig::default());
    let sampler = Sampler::new(&WindowConfig::default());
    let mut sampled: std::collections::BTreeMap<u64, Vec<(u64, BBox)>> = Default::default();
    for f in &frames {
        let dets = detect(f);
        let update = tracker.update(&dets, f.wall);
        for (id, bbox) in sampler.pick(&update, &dets) {
            // The box each sample contributes is one of this frame's detections.
            assert!(dets.iter().any(|d| d.bbox == bbox), "track {id}: {bbox:?}");
            sampled.entry(id).or_default().push((f.seq, bbox));
        }
    }
    // Walkers confirmed at frame 3 have 8 samples (a full window) by frame 10, one per frame
    // (stride 1), every box inside its frame.
    let full: Vec<&u64> = sampled
        .iter()
        .filter(|(_, s)| s.len() >= 8)
        .map(|(id, _)| id)
        .collect();
    assert!(full.len() >= 2, "{sampled:?}");
    for samples in sampled.values() {
        assert!(samples.windows(2).all(|w| w[0].0 < w[1].0));
        for (_, b) in samples {
            assert!(b.x2 <= 768.0 && b.y2 <= 576.0 && b.area() > 0.0);
        }
    }
}
