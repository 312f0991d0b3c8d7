//! The live encoder: frame features once per (frame, person), temporal encoder per window.
//!
//! Every sampled frame of every tracked person goes through the frame encoder exactly once,
//! batched across persons and cameras; its feature joins that track's ring of the last
//! `video_len` features. Once the ring is full, every `update_every` new features the
//! temporal encoder alone turns the ring into a video embedding. Recomputing all 8 frames
//! per update would cost 8x the frame-encoder work for the same result (tested below).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use candle_core::{Result, Tensor};

use super::EmotionClip;
use super::preprocess::{self, CropPolicy, EncoderCrop, FrameInput, ImageView};
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

/// One frame of a track's window: its feature and what produced it.
struct Slot {
    feature: Tensor,
    wall: SystemTime,
    /// The encoder input, kept so a new model can re-encode the window (reload) and capture
    /// can store exactly what the encoder saw.
    crop: Arc<EncoderCrop>,
    /// The person's box in frame pixels.
    bbox: BBox,
    frame_seq: u64,
}

/// A track's current window as the encoder saw it (for capture).
#[derive(Debug, Clone)]
pub struct WindowFrames {
    pub crops: Vec<Arc<EncoderCrop>>,
    pub walls: Vec<SystemTime>,
    pub bboxes: Vec<BBox>,
    pub frame_seqs: Vec<u64>,
    pub frame_size: (u32, u32),
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
        self.prepare_crop(sample).map(|c| c.input())
    }

    /// `prepare` before normalisation.
    pub fn prepare_crop(&self, sample: &PersonSample) -> Option<EncoderCrop> {
        let view = ImageView::from_frame(&sample.frame)?;
        let subject = [Detection {
            bbox: sample.bbox,
            score: 1.0,
        }];
        Some(preprocess::prepare_crop(
            view,
            &subject,
            self.policy,
            self.model.config().vision_cfg.image_size,
        ))
    }

    /// The frames of a track's current window, oldest first.
    pub fn window_frames(&self, key: &TrackKey) -> Option<WindowFrames> {
        let ring = self.tracks.get(key)?;
        Some(WindowFrames {
            crops: ring.slots.iter().map(|s| Arc::clone(&s.crop)).collect(),
            walls: ring.slots.iter().map(|s| s.wall).collect(),
            bboxes: ring.slots.iter().map(|s| s.bbox).collect(),
            frame_seqs: ring.slots.iter().map(|s| s.frame_seq).collect(),
            frame_size: ring.frame_size,
        })
    }

    /// Frame features [N, embed_dim] of `crops`, in batches of at most `max_batch`.
    fn encode_crops(&self, crops: &[&EncoderCrop], max_batch: usize) -> Result<Vec<Tensor>> {
        let mut rows = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(max_batch.max(1)) {
            let inputs: Vec<FrameInput> = chunk.iter().map(|c| c.input()).collect();
            let (pixels, masks) = preprocess::stack(&inputs, self.model.device())?;
            let (features, _) = self.model.encode_frames(&pixels, &masks)?;
            for row in 0..chunk.len() {
                rows.push(features.get(row)?);
            }
        }
        Ok(rows)
    }

    /// Replaces the model and re-encodes every track's window with it, so that tracks keep
    /// their windows (and their update cadence) across a reload. On error nothing changes.
    /// `model` must take inputs of the same side as the current one.
    pub fn swap_model(&mut self, model: EmotionClip, max_batch: usize) -> Result<EmotionClip> {
        let (old, new) = (
            self.model.config().vision_cfg.image_size,
            model.config().vision_cfg.image_size,
        );
        if old != new || self.model.video_len() != model.video_len() {
            candle_core::bail!(
                "the new model takes {new} px x {} frames, the running one {old} px x {}",
                model.video_len(),
                self.model.video_len()
            )
        }
        let keys: Vec<TrackKey> = self.tracks.keys().cloned().collect();
        let crops: Vec<&EncoderCrop> = keys
            .iter()
            .flat_map(|k| self.tracks[k].slots.iter().map(|s| s.crop.as_ref()))
            .collect();
        let old_model = std::mem::replace(&mut self.model, model);
        let features = match self.encode_crops(&crops, max_batch) {
            Ok(f) => f,
            Err(e) => {
                self.model = old_model;
                return Err(e);
            }
        };
        let mut features = features.into_iter();
        for key in &keys {
            let ring = self
                .tracks
                .get_mut(key)
                .expect("keys were taken from the map");
            for slot in ring.slots.iter_mut() {
                slot.feature = features.next().expect("one feature per slot");
            }
        }
        Ok(old_model)
    }

    /// Takes over a freshly loaded encoder's model, crop policy and update cadence (a reload):
    /// every track's window is re-encoded with the new model (see [`Self::swap_model`]), so
    /// tracks keep their windows. Crops already in the windows keep the policy they were cut
    /// with; new samples use the new one. On error nothing changes.
    pub fn adopt(&mut self, fresh: LiveEncoder, max_batch: usize) -> Result<()> {
        self.swap_model(fresh.model, max_batch)?;
        self.policy = fresh.policy;
        self.update_every = fresh.update_every;
        Ok(())
    }

    /// Encodes the samples' frames in one batch, adds the features to their tracks, and
    /// returns the video embeddings of the tracks due for an update. Samples whose frame
    /// cannot be read are skipped.
    pub fn push(&mut self, samples: &[PersonSample]) -> Result<Vec<WindowUpdate>> {
        let prepared: Vec<(&PersonSample, Arc<EncoderCrop>)> = samples
            .iter()
            .filter_map(|s| self.prepare_crop(s).map(|c| (s, Arc::new(c))))
            .collect();
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<&EncoderCrop> = prepared.iter().map(|(_, c)| c.as_ref()).collect();
        let features = self.encode_crops(&crops, usize::MAX)?;

        let video_len = self.model.video_len();
        let mut due: Vec<TrackKey> = Vec::new();
        for ((sample, crop), feature) in prepared.iter().zip(features) {
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
                feature,
                wall: sample.frame.wall,
                crop: Arc::clone(crop),
                bbox: sample.bbox,
                frame_seq: sample.frame.seq,
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

    /// The largest difference between `embedding` and a full recompute of track `track_id`'s
    /// window of frames `first..=last` with the live encoder's current model.
    fn recompute_gap(
        live: &LiveEncoder,
        camera: &CameraId,
        track_id: u64,
        last: u64,
        embedding: &[f32],
    ) -> f32 {
        let inputs: Vec<FrameInput> = (last - 7..=last)
            .map(|n| live.prepare(&sample(camera, n, track_id)).unwrap())
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
        full[0]
            .iter()
            .zip(embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
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
            let diff = recompute_gap(&live, &camera, update.track_id, last, &update.embedding);
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
    fn a_swapped_model_re_encodes_the_windows_it_inherits() {
        let camera: CameraId = Arc::from("cam");
        let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 1);
        for n in 0..8 {
            live.push(&[sample(&camera, n, 1)]).unwrap();
        }
        let cfg = live.model().config().clone();
        let other = EmotionClip::random(&cfg, 3, &Device::Cpu).unwrap();
        live.swap_model(other, 3).unwrap();
        assert_eq!(live.tracks(), 1, "the track survives the swap");
        // The first update after the swap is what the new model alone gives for frames 1..=8.
        let update = live.push(&[sample(&camera, 8, 1)]).unwrap().remove(0);
        let diff = recompute_gap(&live, &camera, 1, 8, &update.embedding);
        assert!(diff < 1e-5, "{diff}");
        let frames = live.window_frames(&(camera.clone(), 1)).unwrap();
        assert_eq!(frames.crops.len(), 8);
        assert_eq!(
            frames.crops[0].input(),
            live.prepare(&sample(&camera, 1, 1)).unwrap()
        );
    }

    #[test]
    fn an_adopted_encoder_keeps_the_tracks_and_brings_its_cadence() {
        let camera: CameraId = Arc::from("cam");
        let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 1);
        for n in 0..8 {
            live.push(&[sample(&camera, n, 1)]).unwrap();
        }
        let cfg = live.model().config().clone();
        let fresh = LiveEncoder::new(
            EmotionClip::random(&cfg, 5, &Device::Cpu).unwrap(),
            CropPolicy::SUBJECT_DEFAULT,
            4,
        );
        live.adopt(fresh, 8).unwrap();
        assert_eq!(live.tracks(), 1);
        // The window was full before: the new cadence (every 4th frame) applies at once.
        let published: Vec<usize> = (8..16)
            .map(|n| live.push(&[sample(&camera, n, 1)]).unwrap().len())
            .collect();
        assert_eq!(published, [0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn a_model_of_another_input_size_is_refused() {
        let camera: CameraId = Arc::from("cam");
        let mut live = LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 1);
        live.push(&[sample(&camera, 0, 1)]).unwrap();
        let mut cfg = live.model().config().clone();
        cfg.vision_cfg.image_size = 32;
        let other = EmotionClip::random(&cfg, 3, &Device::Cpu).unwrap();
        assert!(live.swap_model(other, 3).is_err());
        assert_eq!(live.model().config().vision_cfg.image_size, 64);
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
