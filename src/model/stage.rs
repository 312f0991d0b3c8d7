//! The encoder stage: a named thread that owns the model and the device.
//!
//! Person samples arrive on a bounded channel (the detector never waits: when the encoder
//! falls behind, new samples are dropped and counted). Each wake-up batches every sample
//! waiting, from every camera, into one frame-encoder forward; due tracks get one temporal
//! forward; the read-out and the per-track EMA turn embeddings into messages.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use candle_core::{DType, Device};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::live::{LiveEncoder, PersonSample, TrackKey, WindowUpdate};
use super::live_config::{ModelConfig, ModelDevice};
use super::readout::{Ema, Readout};
use super::readout_config::ReadoutConfig;
use super::{ClipTokenizer, EmotionClip, EmotionClipConfig, Error};
use crate::publish::{ModelId, PERSON_SCHEMA, PersonMessage, Publisher, WindowSpan, normalised_box};
use crate::service::Beat;
use crate::types::rfc3339;

/// How long the thread waits for samples before it beats idle.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What the tracker tells the encoder.
#[derive(Debug, Clone)]
pub enum EncoderInput {
    Sample(PersonSample),
    /// The track was removed: free its ring and smoothing state.
    TrackEnded(TrackKey),
}

/// A model ready to serve: the live encoder, its read-out and its identity.
pub struct LoadedModel {
    pub encoder: LiveEncoder,
    pub readout: Readout,
    pub id: ModelId,
}

/// Loads the configured weights (or the seeded random ones) and computes the class text
/// embeddings once.
pub fn load(cfg: &ModelConfig, readout: &ReadoutConfig) -> Result<LoadedModel, Error> {
    let device = match cfg.device {
        ModelDevice::Cpu => Device::Cpu,
        ModelDevice::Cuda => Device::new_cuda(0)?,
    };
    let arch = match &cfg.config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    let (model, digest) = match cfg.weights_to_load() {
        Some(path) => {
            let digest = sha256_file(path)?;
            info!(weights = %path.display(), sha256 = %digest, "loading EmotionCLIP weights");
            (EmotionClip::load(path, &arch, &device)?, Some(digest))
        }
        None => {
            warn!(
                seed = cfg.seed,
                weights = ?cfg.weights,
                "UNTRAINED MODEL: no EmotionCLIP weights file, running seeded random weights. \
                 Emotion scores and valence/arousal are meaningless; every message says \
                 \"untrained\". Put the official release at [model] weights for real results."
            );
            (EmotionClip::random(&arch, cfg.seed, &device)?, None)
        }
    };
    let tokenizer = ClipTokenizer::new();
    let vocab = arch.text_cfg.vocab_size;
    let readout = Readout::build(readout, model.logit_scale_exp()?, |texts| {
        let tokens = tokenizer.tokenize_batch(texts, &device)?;
        let max = tokens.max_all()?.to_scalar::<i64>()?;
        if max >= vocab as i64 {
            candle_core::bail!("token id {max} is outside the text tower's vocabulary of {vocab}")
        }
        model
            .encode_text(&tokens)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()
    })
    .map_err(|e| Error::invalid_config("readout", e.to_string()))?;
    let id = ModelId::new(cfg.name.clone(), digest.as_deref());
    let encoder = LiveEncoder::new(model, cfg.crop_policy(), cfg.update_every);
    Ok(LoadedModel {
        encoder,
        readout,
        id,
    })
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where the stage publishes and how.
pub struct StageOptions {
    pub node: String,
    pub max_batch: usize,
    pub queue: usize,
    pub ema_alpha: f32,
    pub include_embedding: bool,
}

/// The detector's side of the stage: never blocks.
#[derive(Clone)]
pub struct EncoderSender {
    tx: Sender<EncoderInput>,
    dropped: Arc<AtomicU64>,
}

impl EncoderSender {
    /// Hands a sample over; when the encoder is behind, drops it and counts it.
    pub fn sample(&self, sample: PersonSample) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(EncoderInput::Sample(sample)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the encoder a track ended. Waits briefly if the queue is full: losing it would
    /// leak the track's state.
    pub fn track_ended(&self, key: TrackKey) {
        let _ = self
            .tx
            .send_timeout(EncoderInput::TrackEnded(key), Duration::from_secs(1));
    }

    /// Samples dropped because the encoder was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The running stage.
pub struct EncoderStage {
    sender: EncoderSender,
    thread: JoinHandle<()>,
}

impl EncoderStage {
    pub fn spawn(
        model: LoadedModel,
        options: StageOptions,
        publisher: Publisher,
        beat: Beat,
    ) -> std::io::Result<EncoderStage> {
        let (tx, rx) = crossbeam_channel::bounded(options.queue);
        let sender = EncoderSender {
            tx,
            dropped: Arc::default(),
        };
        let thread = std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || Worker::new(model, options, publisher).run(&rx, &beat))?;
        Ok(EncoderStage { sender, thread })
    }

    pub fn sender(&self) -> EncoderSender {
        self.sender.clone()
    }

    /// Waits for the thread after every sender is gone (the detector stopped first).
    pub fn stop(self) {
        let dropped = self.sender.dropped();
        drop(self.sender);
        let _ = self.thread.join();
        debug!(dropped, "encoder stopped");
    }
}

struct Worker {
    model: LoadedModel,
    options: StageOptions,
    publisher: Publisher,
    smoothing: HashMap<TrackKey, Ema>,
    batch: Vec<PersonSample>,
    failures: u64,
}

impl Worker {
    fn new(model: LoadedModel, options: StageOptions, publisher: Publisher) -> Self {
        Self {
            model,
            options,
            publisher,
            smoothing: HashMap::new(),
            batch: Vec::new(),
            failures: 0,
        }
    }

    fn run(mut self, rx: &Receiver<EncoderInput>, beat: &Beat) {
        loop {
            let first = match rx.recv_timeout(IDLE_WAKE) {
                Ok(input) => input,
                Err(RecvTimeoutError::Timeout) => {
                    beat.beat();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            beat.beat();
            self.take(first);
            while self.batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(input) => self.take(input),
                    Err(_) => break,
                }
            }
            self.flush();
        }
        self.flush();
    }

    fn take(&mut self, input: EncoderInput) {
        match input {
            EncoderInput::Sample(sample) => self.batch.push(sample),
            EncoderInput::TrackEnded(key) => {
                // Samples of the track already batched still count for its last window.
                self.flush();
                self.model.encoder.end_track(&key);
                self.smoothing.remove(&key);
            }
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        match self.model.encoder.push(&batch) {
            Ok(updates) => updates.iter().for_each(|u| self.publish(u)),
            Err(e) => {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    warn!(error = %e, failures = self.failures, persons = batch.len(), "encoder forward failed; batch dropped");
                }
            }
        }
    }

    fn publish(&mut self, update: &WindowUpdate) {
        let readout = &self.model.readout;
        let raw = readout.read(&update.embedding);
        let key = (update.camera.clone(), update.track_id);
        let affect = self
            .smoothing
            .entry(key)
            .or_insert_with(|| Ema::new(self.options.ema_alpha))
            .update(&raw);
        let top = readout.names()[Readout::top(&affect)].clone();
        let now = SystemTime::now();
        let latency_ms = now
            .duration_since(update.end)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3;
        let message = PersonMessage {
            schema: PERSON_SCHEMA,
            node: self.options.node.clone(),
            camera: update.camera.to_string(),
            track_id: update.track_id,
            time: rfc3339(now),
            window: WindowSpan::new(update.start, update.end, update.frames),
            bbox: normalised_box(&update.bbox, update.frame_size.0, update.frame_size.1),
            top_emotion: top,
            scores: readout
                .names()
                .iter()
                .cloned()
                .zip(affect.scores.iter().copied())
                .collect(),
            valence: affect.valence,
            arousal: affect.arousal,
            model: self.model.id.clone(),
            latency_ms,
            embedding: self
                .options
                .include_embedding
                .then(|| update.embedding.clone()),
        };
        let topic = self.publisher.topics().under(&format!(
            "{}/person/{}",
            update.camera, update.track_id
        ));
        match serde_json::to_vec(&message) {
            Ok(payload) => {
                if let Err(e) = self.publisher.publish(topic, payload) {
                    debug!(error = %e, "person message not queued");
                }
            }
            Err(e) => debug!(error = %e, "person message not serialisable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrained_vit_b32_serves_the_default_classes() {
        let cfg = ModelConfig {
            allow_untrained: true,
            weights: Some("does-not-exist.pt".into()),
            ..ModelConfig::default()
        };
        let t0 = std::time::Instant::now();
        let loaded = load(&cfg, &ReadoutConfig::default()).unwrap();
        eprintln!("untrained ViT-B/32 + 22 descriptions loaded in {:?}", t0.elapsed());
        assert_eq!(loaded.id.weights, "untrained");
        assert_eq!(loaded.readout.names().len(), 11);
        let embedding: Vec<f32> = (0..512).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let affect = loaded.readout.read(&embedding);
        assert!((affect.scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(affect.scores.iter().all(|s| s.is_finite()));
        assert!((-1.0..=1.0).contains(&affect.valence) && (-1.0..=1.0).contains(&affect.arousal));
    }
}
