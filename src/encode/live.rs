//! The live encoder: frame features once per (frame, person), temporal encoder per window.
//!
//! Every sampled frame of every tracked person goes through the frame encoder exactly once,
//! batched across persons and cameras; its feature joins that person's [`Window`]. Once the
//! window is full, every `update_every` new features the temporal encoder alone turns it into
//! a video embedding. Recomputing all 8 frames per update would cost 8x the frame-encoder
//! work for the same result (tested below). The persons' state lives in one table
//! ([`Persons`]): created by the first sample, freed at once by [`LiveEncoder::end_track`].
//! Both networks run through the encoder's [`Engine`] (candle, or ONNX Runtime), which
//! belongs with the model: a reload swaps the two together.

use std::sync::Arc;
use std::time::SystemTime;

use candle_core::{Result, Tensor};

use super::persons::{Person, Persons};
use crate::model::preprocess::{self, CropPolicy, EncoderCrop, FrameInput, ImageView};
use crate::model::{CandleEngine, EmotionClip, Engine};
use crate::types::{BBox, CameraId, Detection, PersonSample, TrackKey};
use crate::window::{Slot, WindowFrames};

/// A new video embedding for a person.
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

impl WindowUpdate {
    pub fn key(&self) -> TrackKey {
        (self.camera.clone(), self.track_id)
    }
}

/// One model serving every person's window.
pub struct LiveEncoder {
    model: EmotionClip,
    /// Runs `model`'s frame and temporal encoders.
    engine: Box<dyn Engine>,
    policy: CropPolicy,
    update_every: usize,
    persons: Persons,
}

impl LiveEncoder {
    /// Serves `model` with candle ([`CandleEngine`]); see [`Self::with_engine`].
    pub fn new(model: EmotionClip, policy: CropPolicy, update_every: usize) -> Self {
        let persons = Persons::new(model.video_len(), usize::MAX);
        Self {
            model,
            engine: Box::new(CandleEngine),
            policy,
            update_every: update_every.max(1),
            persons,
        }
    }

    /// Caps the persons (windows) held per camera; samples of others are refused (counted).
    pub fn with_max_per_camera(mut self, max: usize) -> Self {
        self.persons = Persons::new(self.model.video_len(), max);
        self
    }

    /// Runs the model's networks with `engine` (made for this model) instead of candle.
    pub fn with_engine(mut self, engine: Box<dyn Engine>) -> Self {
        self.engine = engine;
        self
    }

    pub fn model(&self) -> &EmotionClip {
        &self.model
    }

    /// The engine serving the model: `candle` or `onnx`.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Persons holding a window.
    pub fn tracks(&self) -> usize {
        self.persons.len()
    }

    /// Samples refused because their camera held `max_per_camera` windows.
    pub fn refused(&self) -> u64 {
        self.persons.refused()
    }

    /// A person's state (window, smoothing, capture cadence).
    pub fn person_mut(&mut self, key: &TrackKey) -> Option<&mut Person> {
        self.persons.get_mut(key)
    }

    /// Forgets a person (the track ended): everything held for it is freed.
    pub fn end_track(&mut self, key: &TrackKey) -> Option<Person> {
        self.persons.remove(key)
    }

    /// Restarts every person's smoothing (a new read-out: scores of two models are not
    /// averaged).
    pub fn reset_smoothing(&mut self) {
        self.persons.iter_mut().for_each(|p| p.ema = None);
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

    /// The frames of a person's current window, oldest first.
    pub fn window_frames(&self, key: &TrackKey) -> Option<WindowFrames> {
        self.persons.get(key).map(|p| p.window.frames())
    }

    /// Frame features [N, embed_dim] of `crops`, in batches of at most `max_batch`;
    /// `between` runs after each batch (the stage beats there).
    fn encode_crops(
        &mut self,
        crops: &[&EncoderCrop],
        max_batch: usize,
        between: &mut dyn FnMut(),
    ) -> Result<Vec<Tensor>> {
        let mut rows = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(max_batch.max(1)) {
            let inputs: Vec<FrameInput> = chunk.iter().map(|c| c.input()).collect();
            let (pixels, masks) = preprocess::stack(&inputs, self.model.device())?;
            let features = self.engine.frames(&self.model, &pixels, &masks)?;
            for row in 0..chunk.len() {
                rows.push(features.get(row)?);
            }
            between();
        }
        Ok(rows)
    }

    /// Replaces the model and its engine and re-encodes every person's window with them, in
    /// batches of `max_batch` with `between` run after each, so that persons keep their
    /// windows (and their update cadence) across a reload. On error nothing changes. `model`
    /// must take inputs of the same size and window length as the current one. Returns the
    /// old model and engine.
    pub fn swap_model(
        &mut self,
        model: EmotionClip,
        engine: Box<dyn Engine>,
        max_batch: usize,
        between: &mut dyn FnMut(),
    ) -> Result<(EmotionClip, Box<dyn Engine>)> {
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
        let crops: Vec<Arc<EncoderCrop>> = self
            .persons
            .iter_mut()
            .flat_map(|p| p.window.slots().map(|s| Arc::clone(&s.crop)))
            .collect();
        let crops: Vec<&EncoderCrop> = crops.iter().map(Arc::as_ref).collect();
        let old_model = std::mem::replace(&mut self.model, model);
        let old_engine = std::mem::replace(&mut self.engine, engine);
        let features = match self.encode_crops(&crops, max_batch, between) {
            Ok(f) => f,
            Err(e) => {
                self.model = old_model;
                self.engine = old_engine;
                return Err(e);
            }
        };
        // Same iteration order as above: the map was not changed in between.
        let mut features = features.into_iter();
        for person in self.persons.iter_mut() {
            for slot in person.window.slots_mut() {
                slot.feature = features.next().expect("one feature per slot");
            }
        }
        Ok((old_model, old_engine))
    }

    /// Takes over a freshly loaded encoder's model and engine, crop policy and update cadence
    /// (a reload): every window is re-encoded with the new model (see [`Self::swap_model`]),
    /// so persons keep their windows. Crops already in the windows keep the policy they were cut with;
    /// new samples use the new one. On error nothing changes.
    pub fn adopt(
        &mut self,
        fresh: LiveEncoder,
        max_batch: usize,
        between: &mut dyn FnMut(),
    ) -> Result<()> {
        self.swap_model(fresh.model, fresh.engine, max_batch, between)?;
        self.policy = fresh.policy;
        self.update_every = fresh.update_every;
        Ok(())
    }

    /// Encodes the samples' frames in one batch, adds the features to their persons'
    /// windows, and returns the video embeddings of the windows due for an update. Samples
    /// whose frame cannot be read, or whose camera holds its most windows, are skipped.
    pub fn push(&mut self, samples: &[PersonSample]) -> Result<Vec<WindowUpdate>> {
        let admitted: Vec<&PersonSample> = samples
            .iter()
            .filter(|s| self.persons.admit(&(s.frame.camera.clone(), s.track_id)))
            .collect();
        let prepared: Vec<(&PersonSample, Arc<EncoderCrop>)> = admitted
            .into_iter()
            .filter_map(|s| self.prepare_crop(s).map(|c| (s, Arc::new(c))))
            .collect();
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<&EncoderCrop> = prepared.iter().map(|(_, c)| c.as_ref()).collect();
        let features = self.encode_crops(&crops, usize::MAX, &mut || {})?;

        let mut due: Vec<TrackKey> = Vec::new();
        for ((sample, crop), feature) in prepared.iter().zip(features) {
            let key = (sample.frame.camera.clone(), sample.track_id);
            let person = self.persons.entry(&key);
            person.window.push(
                Slot {
                    feature,
                    crop: Arc::clone(crop),
                    wall: sample.frame.wall,
                    bbox: sample.bbox,
                    frame_seq: sample.frame.seq,
                },
                (sample.frame.width, sample.frame.height),
            );
            person.capture_since += 1;
            if person.window.is_due(self.update_every) && !due.contains(&key) {
                due.push(key);
            }
        }
        self.temporal(&due)
    }

    /// Runs the temporal encoder over the full windows of `keys`, in one batch.
    fn temporal(&mut self, keys: &[TrackKey]) -> Result<Vec<WindowUpdate>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut windows = Vec::with_capacity(keys.len());
        for key in keys {
            let window = &self.persons.get(key).expect("due persons exist").window;
            let rows: Vec<&Tensor> = window.slots().map(|s| &s.feature).collect();
            windows.push(Tensor::stack(&rows, 0)?);
        }
        let embeddings = self
            .engine
            .video(&self.model, &Tensor::stack(&windows, 0)?)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let mut updates = Vec::with_capacity(keys.len());
        for (key, embedding) in keys.iter().zip(embeddings) {
            let window = &mut self.persons.get_mut(key).expect("due persons exist").window;
            window.mark_updated();
            let (start, end) = window.span();
            let (bbox, frame_size) = window.newest_box().unwrap_or_default();
            updates.push(WindowUpdate {
                camera: key.0.clone(),
                track_id: key.1,
                embedding,
                start,
                end,
                frames: window.len(),
                bbox,
                frame_size,
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
    use crate::types::Frame;

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
        assert!(live.end_track(&(camera, 1)).is_some());
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
        live.swap_model(other, Box::new(CandleEngine), 3, &mut || {})
            .unwrap();
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
        live.adopt(fresh, 8, &mut || {}).unwrap();
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
        assert!(
            live.swap_model(other, Box::new(CandleEngine), 3, &mut || {})
                .is_err()
        );
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

    #[test]
    fn a_camera_holds_at_most_its_cap_of_windows_until_one_ends() {
        let camera: CameraId = Arc::from("cam");
        let other: CameraId = Arc::from("other");
        let mut live =
            LiveEncoder::new(tiny(), CropPolicy::SUBJECT_DEFAULT, 1).with_max_per_camera(2);
        live.push(&[sample(&camera, 0, 1), sample(&camera, 0, 2)])
            .unwrap();
        live.push(&[sample(&camera, 1, 3), sample(&other, 1, 3)])
            .unwrap();
        assert_eq!(live.tracks(), 3, "the third person of `cam` is refused");
        assert_eq!(live.refused(), 1);
        live.end_track(&(camera.clone(), 1));
        live.push(&[sample(&camera, 2, 3)]).unwrap();
        assert!(live.window_frames(&(camera, 3)).is_some());
    }
}
