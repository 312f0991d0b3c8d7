//! Round trips through the writer and the reader, rotation, and damaged datasets.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use candle_core::Device;
use tokio_util::sync::CancellationToken;

use super::format::{INDEX, sample_paths};
use super::*;
use crate::encode::LiveEncoder;
use crate::model::preprocess::{CropPolicy, EncoderCrop};
use crate::model::{EmotionClip, EmotionClipConfig};
use crate::types::{BBox, CameraId, Frame, PersonSample};
use crate::window::WindowFrames;

fn tiny() -> EmotionClip {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/emotionclip-tiny");
    let cfg = EmotionClipConfig::from_json_file(&dir.join("config.json")).unwrap();
    EmotionClip::load(&dir.join("weights.safetensors"), &cfg, &Device::Cpu).unwrap()
}

fn sample(camera: &CameraId, n: u64) -> PersonSample {
    let (w, h) = (120u32, 90u32);
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i as u64 * 37 + n * 11) % 253) as u8)
        .collect();
    let x = 20.0 + n as f32 * 3.0;
    PersonSample {
        frame: Frame {
            camera: camera.clone(),
            seq: 100 + n,
            pts: None,
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + 125 * n),
            width: w,
            height: h,
            rgb: Arc::from(rgb),
        },
        track_id: 7,
        bbox: BBox::new(x, 10.0, x + 25.0, 80.0),
    }
}

/// A synthetic `size` px window whose pixels depend on `seed`.
fn synthetic(size: usize, t: usize, seed: u64) -> WindowFrames {
    let crops = (0..t as u64)
        .map(|f| {
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(f + 1);
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            Arc::new(EncoderCrop {
                size,
                rgb: (0..size * size * 3).map(|_| next() as u8).collect(),
                mask: (0..size * size).map(|i| u8::from(i % 3 == 0)).collect(),
            })
        })
        .collect();
    WindowFrames {
        crops,
        walls: (0..t as u64)
            .map(|f| SystemTime::UNIX_EPOCH + Duration::from_millis(1000 * seed + f))
            .collect(),
        bboxes: vec![BBox::new(1.0, 2.0, 3.5, 4.0); t],
        frame_seqs: (0..t as u64).collect(),
        frame_size: (640, 480),
    }
}

fn record<'a>(f: &'a WindowFrames, track_id: u64) -> WindowRecord<'a> {
    WindowRecord {
        camera: "cam",
        track_id,
        model: "tiny",
        crops: f.crops.iter().map(|c| c.as_ref()).collect(),
        walls: &f.walls,
        frame_seqs: &f.frame_seqs,
        bboxes: &f.bboxes,
        frame_size: f.frame_size,
    }
}

fn manifest(size: usize) -> Manifest {
    Manifest::new(size, 8, CropPolicy::SUBJECT_DEFAULT, "tiny")
}

#[test]
fn a_window_reads_back_exactly_as_the_encoder_saw_it() {
    let camera: CameraId = Arc::from("cam");
    let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 8);
    let mut updates = Vec::new();
    for n in 0..8 {
        updates.extend(live.push(&[sample(&camera, n)]).unwrap());
    }
    assert_eq!(updates.len(), 1);
    let frames = live.window_frames(&(camera.clone(), 7)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let m = manifest(64);
    let mut writer = DatasetWriter::open(dir.path(), &m, 1 << 30).unwrap();
    let written = writer.write(&record(&frames, 7)).unwrap();
    assert_eq!(written.rotated, 0);
    drop(writer);

    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.manifest(), &m);
    assert_eq!(dataset.manifest().format, "affectd-capture/1");
    let [s] = dataset.samples() else {
        panic!("{:?}", dataset.samples())
    };
    assert_eq!((s.camera.as_str(), s.track_id), ("cam", 7));
    assert_eq!(s.frame_size, [120, 90]);
    assert_eq!(s.bytes, written.bytes);
    assert_eq!(s.frames[0].seq, 100);
    assert_eq!(s.frames[7].wall(), frames.walls[7]);
    assert_eq!(s.frames[3].bbox, [29.0, 10.0, 54.0, 80.0]);
    let crops = dataset.load(s).unwrap();
    assert_eq!(crops.len(), 8);
    for (i, (got, want)) in crops.iter().zip(&frames.crops).enumerate() {
        assert_eq!(got, want.as_ref(), "frame {i}");
        assert_eq!(got.input(), want.input(), "frame {i}");
        // ... which is what the encoder computes from the sample itself.
        assert_eq!(*got, live.prepare_crop(&sample(&camera, i as u64)).unwrap());
    }
}

#[test]
fn beyond_the_quota_the_oldest_samples_go_and_the_index_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let windows: Vec<WindowFrames> = (0..10).map(|i| synthetic(16, 8, i)).collect();
    // Random pixels do not compress: each sample is a bit over 8 * 16 * 16 * 3 bytes.
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    let one = writer.write(&record(&windows[0], 0)).unwrap().bytes;
    drop(writer);
    std::fs::remove_dir_all(dir.path()).unwrap();

    let quota = one * 4 + one / 2;
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), quota).unwrap();
    let mut rotated = 0;
    for (i, w) in windows.iter().enumerate() {
        rotated += writer.write(&record(w, i as u64)).unwrap().rotated;
        assert!(writer.total_bytes() <= quota);
    }
    assert!(rotated >= 5, "{rotated}");
    let kept = writer.len();
    assert_eq!(kept + rotated, 10);
    drop(writer);

    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.skipped_lines(), 0);
    assert!(dataset.orphans().is_empty());
    let ids: Vec<&str> = dataset.samples().iter().map(|s| s.id.as_str()).collect();
    let want: Vec<String> = (10 - kept as u64..10).map(format::id_for).collect();
    assert_eq!(ids, want, "the newest are kept, oldest first");
    for s in dataset.samples() {
        let crops = dataset.load(s).unwrap();
        assert_eq!(crops[0], *windows[s.track_id as usize].crops[0]);
    }
    for old in 0..(10 - kept as u64) {
        let (rgb, mask) = sample_paths(dir.path(), &format::id_for(old));
        assert!(!rgb.exists() && !mask.exists());
    }
    // Ids keep increasing across writers (after the first one's reservation of 1000).
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), quota).unwrap();
    assert_eq!(
        writer.write(&record(&windows[0], 0)).unwrap().id,
        format::id_for(1000)
    );
}

#[test]
fn a_corrupt_sample_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    for i in 0..3 {
        writer.write(&record(&synthetic(16, 8, i), i)).unwrap();
    }
    drop(writer);
    let dataset = Dataset::open(dir.path()).unwrap();
    let s = dataset.samples();
    let (rgb0, _) = sample_paths(dir.path(), &s[0].id);
    std::fs::write(&rgb0, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (rgb1, _) = sample_paths(dir.path(), &s[1].id);
    let bytes = std::fs::read(&rgb1).unwrap();
    std::fs::write(&rgb1, &bytes[..bytes.len() / 2]).unwrap();
    // A valid PNG of the wrong shape: sample 2's mask as its RGB.
    let (rgb2, mask2) = sample_paths(dir.path(), &s[2].id);
    std::fs::copy(&mask2, &rgb2).unwrap();

    for (sample, path) in s.iter().zip([&rgb0, &rgb1, &rgb2]) {
        let e = dataset.load(sample).unwrap_err();
        assert!(matches!(e, CaptureError::Corrupt { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with(&format!("{}: corrupt sample: ", path.display())),
            "{e}"
        );
    }
    assert!(
        dataset
            .load(&s[2])
            .unwrap_err()
            .to_string()
            .contains("16x128 L8, expected 16x128 Rgb8")
    );
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn crash_leftovers_are_skipped_by_readers_and_quarantined_never_deleted_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    for i in 0..3 {
        writer.write(&record(&synthetic(16, 8, i), i)).unwrap();
    }
    drop(writer);
    let samples = dir.path().join("samples");
    // Sample 1's image is gone (its mask and metadata stay), a crash left the files of an
    // unindexed sample 9 without metadata, a temporary file and half an index line.
    let (rgb1, _) = sample_paths(dir.path(), &format::id_for(1));
    std::fs::remove_file(&rgb1).unwrap();
    std::fs::write(samples.join("0000000009.rgb.png"), b"x").unwrap();
    std::fs::write(samples.join(".0000000010.rgb.png.tmp"), b"x").unwrap();
    let index = dir.path().join(INDEX);
    let mut text = std::fs::read_to_string(&index).unwrap();
    text.push_str("{\"id\":\"0000000009\",\"cam");
    std::fs::write(&index, &text).unwrap();

    let dataset = Dataset::open(dir.path()).unwrap();
    let ids: Vec<&str> = dataset.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["0000000000", "0000000002"]);
    assert_eq!(dataset.skipped_lines(), 2);
    assert_eq!(dataset.orphans().len(), 3, "{:?}", dataset.orphans());

    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    assert_eq!(writer.len(), 2);
    // Ids continue after the highest ever handed out (the first writer reserved 0..1000).
    let written = writer.write(&record(&synthetic(16, 8, 5), 5)).unwrap();
    assert_eq!(written.id, format::id_for(1000));
    drop(writer);
    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.skipped_lines(), 0);
    assert!(dataset.orphans().is_empty());
    assert_eq!(dataset.samples().len(), 3);
    // Nothing the writer could not use was deleted: the files are in quarantine, the two
    // index lines too; only the temporary file (never complete) is gone.
    let files = tree(dir.path());
    for moved in [
        "quarantine/0000000001.json",
        "quarantine/0000000001.mask.png",
        "quarantine/0000000009.rgb.png",
        "quarantine/index-lines.jsonl",
    ] {
        assert!(
            files.contains(&moved.to_owned()),
            "{moved} not in {files:?}"
        );
    }
    let lines = std::fs::read_to_string(dir.path().join("quarantine/index-lines.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("\"cam"), "{lines}");
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
}

#[test]
fn a_lost_index_is_rebuilt_from_the_samples_and_ids_never_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    let mut before = Vec::new();
    for i in 0..4 {
        before.push(writer.write(&record(&synthetic(16, 8, i), i)).unwrap().id);
    }
    drop(writer);
    let kept = Dataset::open(dir.path()).unwrap().samples().to_vec();
    std::fs::remove_file(dir.path().join(INDEX)).unwrap();

    // A reader sees every sample from their own metadata, changing nothing.
    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.samples(), &kept[..]);
    assert_eq!(dataset.recovered(), 4);
    assert!(!dir.path().join(INDEX).exists());
    // The writer writes the index back, deletes nothing, and goes on after the last id,
    // even with every sample gone and only `next_id` left to say where the ids were.
    let files = tree(dir.path());
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    assert_eq!(writer.len(), 4);
    for f in &files {
        assert!(dir.path().join(f).exists(), "{f} was deleted");
    }
    assert_eq!(Dataset::open(dir.path()).unwrap().samples(), &kept[..]);
    // Ids go on after the first writer's reservation (0..1000), never reusing one.
    let fifth = writer.write(&record(&synthetic(16, 8, 9), 9)).unwrap().id;
    assert_eq!(fifth, format::id_for(1000));
    drop(writer);
    std::fs::remove_dir_all(dir.path().join("samples")).unwrap();
    std::fs::remove_file(dir.path().join(INDEX)).unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    assert!(writer.is_empty());
    let after = writer.write(&record(&synthetic(16, 8, 9), 9)).unwrap().id;
    assert_eq!(after, format::id_for(2000));
    assert!(before.iter().chain([&fifth]).all(|id| *id < after));
}

#[test]
fn rotation_keeps_the_windows_a_training_run_pinned_and_files_are_0640() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    let one = writer
        .write(&record(&synthetic(16, 8, 0), 0))
        .unwrap()
        .bytes;
    drop(writer);
    // A run pins sample 0; the quota holds about three samples.
    let out = tempfile::tempdir().unwrap();
    let pin =
        crate::capture::Pin::hold(dir.path(), out.path(), [format::id_for(0).as_str()]).unwrap();
    let mut writer = DatasetWriter::open(dir.path(), &manifest(16), one * 3 + one / 2).unwrap();
    for i in 1..6 {
        writer.write(&record(&synthetic(16, 8, i), i)).unwrap();
    }
    let ids: Vec<String> = Dataset::open(dir.path())
        .unwrap()
        .samples()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ids.first(), Some(&format::id_for(0)), "{ids:?}");
    assert!(!ids.contains(&format::id_for(1)), "{ids:?}");
    // Released when the run completes: the next rotation may take it.
    pin.release();
    for i in 6..9 {
        writer.write(&record(&synthetic(16, 8, i), i)).unwrap();
    }
    let ids: Vec<String> = Dataset::open(dir.path())
        .unwrap()
        .samples()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert!(!ids.contains(&format::id_for(0)), "{ids:?}");
    // Images of people are 0640 whatever the umask (0022 here).
    for f in tree(dir.path())
        .iter()
        .filter(|f| f.starts_with("samples/") || f.as_str() == INDEX)
    {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640, "{f}");
    }
}

#[test]
fn a_dataset_of_another_shape_is_refused_and_one_writer_per_folder() {
    let dir = tempfile::tempdir().unwrap();
    let writer = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX).unwrap();
    let e = DatasetWriter::open(dir.path(), &manifest(16), u64::MAX)
        .err()
        .unwrap();
    assert!(matches!(e, CaptureError::Locked { .. }), "{e}");
    drop(writer);
    let e = DatasetWriter::open(dir.path(), &manifest(32), u64::MAX)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("holds 16 px x 8 frames"), "{e}");
    assert!(e.contains("needs 32 px x 8 frames"), "{e}");
    let other = Manifest::new(16, 8, CropPolicy::OFFICIAL_EVAL, "tiny");
    assert!(DatasetWriter::open(dir.path(), &other, u64::MAX).is_err());
    // Another model of the same shape may add to it.
    let renamed = Manifest::new(16, 8, CropPolicy::SUBJECT_DEFAULT, "other");
    let writer = DatasetWriter::open(dir.path(), &renamed, u64::MAX).unwrap();
    assert_eq!(writer.manifest().model, "tiny");
    // A window of the wrong size is refused, not stored.
    let mut writer = writer;
    let e = writer.write(&record(&synthetic(32, 8, 0), 0)).unwrap_err();
    assert!(matches!(e, CaptureError::BadWindow(_)), "{e}");
    assert!(writer.is_empty());
    let e = Dataset::open(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("manifest.json: missing: not a capture dataset"),
        "{e}"
    );
}

#[test]
fn the_stage_writes_what_the_tap_sends_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaptureConfig::new(dir.path());
    cfg.queue = 1;
    let capture = Capture::start(&cfg, &manifest(16), CancellationToken::new()).unwrap();
    let sender = capture.sender();
    let mut queued = 0;
    for i in 0..20 {
        queued += u64::from(sender.offer(CapturedWindow {
            camera: Arc::from("cam"),
            track_id: i,
            model: "tiny".into(),
            frames: synthetic(16, 8, i),
        }));
    }
    let dropped = capture
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(queued + dropped, 20);
    // 20 windows offered at once to a queue of 1 cannot all be taken: drops happen, counted.
    assert!(
        dropped > 0,
        "no drop counted with 20 offers into a queue of 1"
    );
    capture.stop(Duration::from_secs(10));
    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.samples().len() as u64, queued);
}

#[test]
fn cancelling_the_token_ends_the_writer_after_what_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CaptureConfig::new(dir.path());
    let stop = CancellationToken::new();
    let capture = Capture::start(&cfg, &manifest(16), stop.child_token()).unwrap();
    let sender = capture.sender();
    let window = |i| CapturedWindow {
        camera: Arc::from("cam"),
        track_id: i,
        model: "tiny".into(),
        frames: synthetic(16, 8, i),
    };
    assert!(sender.offer(window(0)) && sender.offer(window(1)));
    stop.cancel();
    // The writer ends by itself once nothing came for a while: then windows are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut offered = 2;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if !sender.offer(window(offered)) {
            break;
        }
        offered += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the writer still runs"
        );
    }
    capture.stop(Duration::from_secs(10));
    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.samples().len() as u64, offered);
}

#[test]
fn the_config_section_resolves_its_folder_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("affectd.toml");
    let text = "[node]\nid = \"n\"\n[[camera]]\nid = \"cam\"\nuri = \"test:smpte\"\n\
                [detect]\n[model]\nallow_untrained = true\n[capture]\ndir = \"data\"\n";
    std::fs::write(&path, text).unwrap();
    let config = crate::config::Config::load(&path).unwrap();
    let capture = config.capture.unwrap();
    assert_eq!(capture.dir, dir.path().join("data"));
    assert_eq!(
        (
            capture.quota_mb,
            capture.every,
            capture.queue,
            capture.enabled
        ),
        (2048, 8, 16, true)
    );
    assert_eq!(capture.quota_bytes(), 2048 << 20);
}
