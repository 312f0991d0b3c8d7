//! The live encoder: frame features once per (frame, person), temporal encoder per window.
//!
//! Every sampled frame of every tracked person goes through the frame encoder exactly once,
//! batched across persons and cameras; its feature joins that track's ring of the last
//! `video_len` features. Once the ring is full, every `update_every` new features the
//! temporal encoder alone turns the ring into a video embedding. Recomputing all 8 frames
//! per update would cost 8x the frame-encoder work for the same result (tested below).

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use candle_core::{Result, Tensor};

use super::EmotionClip;
use super::preprocess::{self, CropPolicy, FrameInput, ImageView};
use crate::types::{BBox, CameraId, Detection, Frame};

/// One person in one sampled frame: what the detector/tracker hands the encoder.
#[derive(Debug, Clone)]
pub struct PersonSample {
    pub frame: Frame,
    pub track_id: u64,
    /// The person's box in frame pixels.
    pub bbox: BBox,
}

/// A track is known by its camera and its per-camera id.
pub type TrackKey = (CameraId, u64);

/// A new video embedding for a track.
#[derive(Debug, Clone)]
pub struct WindowUpdate {
    pub camera: CameraId,
    pub track_id: u64,
    /// Un-normalised video embedding.
    pub embedding: Vec<f32>,
    /// Wall time of the window's first and last frame.
    pub start: SystemTime,
    pub end: SystemTime,
    pub frames: usize,
    /// The person's box in the last frame, with that frame's size.
    pub bbox: BBox,
    pub frame_size: (u32, u32),
}

struct Slot {
    feature: Tensor,
    wall: SystemTime,
}

struct TrackRing {
    slots: VecDeque<Slot>,
    since_update: usize,
    bbox: BBox,
    frame_size: (u32, u32),
}

/// Per-track rings of frame features over one model.
pub struct LiveEncoder {
    model: EmotionClip,
    policy: CropPolicy,
    update_every: usize,
    tracks: HashMap<TrackKey, TrackRing>,
}

impl LiveEncoder {
    pub fn new(model: EmotionClip, policy: CropPolicy, update_every: usize) -> Self {
        Self {
            model,
            policy,
            update_every: update_every.max(1),
            tracks: HashMap::new(),
        }
    }

    pub fn model(&self) -> &EmotionClip {
        &self.model
    }

    /// Tracks holding features.
    pub fn tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Forgets a track (it ended): its ring is freed.
    pub fn end_track(&mut self, key: &TrackKey) {
        self.tracks.remove(key);
    }

    /// The encoder input of one sample: its crop and the person's own box as the mask.
    pub fn prepare(&self, sample: &PersonSample) -> Option<FrameInput> {
        let view = ImageView::from_frame(&sample.frame)?;
        let subject = [Detection {
            bbox: sample.bbox,
            score: 1.0,
        }];
        Some(preprocess::prepare(
            view,
            &subject,
            self.policy,
            self.model.config().vision_cfg.image_size,
        ))
    }

    /// Encodes the samples' frames in one batch, adds the features to their tracks, and
    /// returns the video embeddings of the tracks due for an update. Samples whose frame
    /// cannot be read are skipped.
    pub fn push(&mut self, samples: &[PersonSample]) -> Result<Vec<WindowUpdate>> {
        let prepared: Vec<(&PersonSample, FrameInput)> = samples
            .iter()
            .filter_map(|s| self.prepare(s).map(|input| (s, input)))
            .collect();
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<FrameInput> = prepared.iter().map(|(_, i)| i.clone()).collect();
        let (pixels, masks) = preprocess::stack(&inputs, self.model.device())?;
        let (features, _) = self.model.encode_frames(&pixels, &masks)?;

        let video_len = self.model.video_len();
        let mut due: Vec<TrackKey> = Vec::new();
        for (row, (sample, _)) in prepared.iter().enumerate() {
            let key = (sample.frame.camera.clone(), sample.track_id);
            let ring = self.tracks.entry(key.clone()).or_insert_with(|| TrackRing {
                slots: VecDeque::with_capacity(video_len),
                since_update: 0,
                bbox: sample.bbox,
                frame_size: (sample.frame.width, sample.frame.height),
            });
            if ring.slots.len() == video_len {
                ring.slots.pop_front();
            }
            ring.slots.push_back(Slot {
                feature: features.get(row)?,
                wall: sample.frame.wall,
            });
            ring.since_update += 1;
            ring.bbox = sample.bbox;
            ring.frame_size = (sample.frame.width, sample.frame.height);
            // A fresh ring publishes as soon as it is full, then every `update_every`.
            let first = ring.slots.len() == video_len && ring.since_update == video_len;
            if ring.slots.len() == video_len
                && (first || ring.since_update >= self.update_every)
                && !due.contains(&key)
            {
                due.push(key);
            }
        }
        self.temporal(&due)
    }

    /// Runs the temporal encoder over the full rings of `keys`, in one batch.
    fn temporal(&mut self, keys: &[TrackKey]) -> Result<Vec<WindowUpdate>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut windows = Vec::with_capacity(keys.len());
        for key in keys {
            let ring = &self.tracks[key];
            let rows: Vec<&Tensor> = ring.slots.iter().map(|s| &s.feature).collect();
            windows.push(Tensor::stack(&rows, 0)?);
        }
        let embeddings = self
            .model
            .encode_video_from_features(&Tensor::stack(&windows, 0)?)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let mut updates = Vec::with_capacity(keys.len());
        for (key, embedding) in keys.iter().zip(embeddings) {
            let ring = self.tracks.get_mut(key).expect("due tracks have rings");
            ring.since_update = 0;
            updates.push(WindowUpdate {
                camera: key.0.clone(),
                track_id: key.1,
                embedding,
                start: ring
                    .slots
                    .front()
                    .map_or(SystemTime::UNIX_EPOCH, |s| s.wall),
                end: ring.slots.back().map_or(SystemTime::UNIX_EPOCH, |s| s.wall),
                frames: ring.slots.len(),
                bbox: ring.bbox,
                frame_size: ring.frame_size,
            });
        }
        Ok(updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use candle_core::Device;

    use crate::model::EmotionClipConfig;

    fn tiny() -> EmotionClip {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/emotionclip-tiny");
        let cfg = EmotionClipConfig::from_json_file(&dir.join("config.json")).unwrap();
        EmotionClip::load(&dir.join("weights.safetensors"), &cfg, &Device::Cpu).unwrap()
    }

    /// A 96x80 frame with a deterministic texture that changes with `n`.
    fn frame(camera: &CameraId, n: u64) -> Frame {
        let (w, h) = (96u32, 80u32);
        let rgb: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i as u64 * 31 + n * 17) % 251) as u8)
            .collect();
        Frame {
            camera: camera.clone(),
            seq: n,
            pts: Some(Duration::from_millis(125 * n)),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(125 * n),
            width: w,
            height: h,
            rgb: Arc::from(rgb),
        }
    }

    fn sample(camera: &CameraId, n: u64, track_id: u64) -> PersonSample {
        let x = 10.0 + n as f32 * 2.0;
        PersonSample {
            frame: frame(camera, n),
            track_id,
            bbox: BBox::new(x, 12.0 + track_id as f32, x + 30.0, 70.0),
        }
    }

    #[test]
    fn incremental_windows_equal_a_full_recompute() {
        let camera: CameraId = Arc::from("cam");
        let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 2);
        let mut updates = Vec::new();
        // Two persons, 12 frames, one frame-encoder batch per frame holding both.
        for n in 0..12 {
            let batch = [sample(&camera, n, 1), sample(&camera, n, 2)];
            updates.extend(live.push(&batch).unwrap());
        }
        // Full at frame 7, then every 2 frames: frames 7, 9, 11 for each person.
        assert_eq!(updates.len(), 6);
        assert_eq!(live.tracks(), 2);

        for update in &updates {
            let last = update
                .end
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                / 125;
            let inputs: Vec<FrameInput> = (last - 7..=last)
                .map(|n| live.prepare(&sample(&camera, n, update.track_id)).unwrap())
                .collect();
            let (pixels, masks) = preprocess::stack(&inputs, &Device::Cpu).unwrap();
            let s = live.model().config().vision_cfg.image_size;
            let full = live
                .model()
                .encode_video(
                    &pixels.reshape((1, 8, 3, s, s)).unwrap(),
                    &masks.reshape((1, 8, s, s)).unwrap(),
                )
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let diff = full[0]
                .iter()
                .zip(&update.embedding)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "track {} frame {last}: {diff}",
                update.track_id
            );
            assert_eq!(update.frames, 8);
        }
        live.end_track(&(camera, 1));
        assert_eq!(live.tracks(), 1);
    }

    #[test]
    fn an_unreadable_frame_is_skipped() {
        let camera: CameraId = Arc::from("cam");
        let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 1);
        let mut bad = sample(&camera, 0, 1);
        bad.frame.rgb = Arc::from(vec![0u8; 10]);
        assert!(live.push(&[bad]).unwrap().is_empty());
        assert_eq!(live.tracks(), 0);
    }
}
