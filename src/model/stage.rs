//! The encoder stage: a named thread that owns the model and the device.
//!
//! Person samples arrive on a bounded channel (the detector never waits: when the encoder
//! falls behind, new samples are dropped and counted). Each wake-up batches every sample
//! waiting, from every camera, into one frame-encoder forward; due tracks get one temporal
//! forward; the read-out and the per-track EMA turn embeddings into messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use candle_core::{DType, Device};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use crossbeam_queue::ArrayQueue;
use tracing::{debug, info, warn};

use super::live::{LiveEncoder, PersonSample, TrackKey, WindowUpdate};
use super::live_config::{ModelConfig, ModelDevice};
use super::readout::{Ema, Readout};
use super::readout_config::ReadoutConfig;
use super::{ClipTokenizer, EmotionClip, EmotionClipConfig, Error};
use crate::capture::{CaptureSender, CaptureTap};
use crate::publish::{
    ModelId, PERSON_SCHEMA, PersonMessage, Publisher, ReadoutSource, ScoresSource,
    ValenceArousalSource, WindowSpan, normalised_box,
};
use crate::service::Beat;
use crate::types::rfc3339;

/// How long the thread waits for samples before it beats idle.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What wakes the encoder thread besides samples.
enum Control {
    /// Samples are waiting in the ring.
    Wake,
    /// The track was removed: free its ring and smoothing state.
    TrackEnded(TrackKey),
    /// Serve a reloaded model from the next batch on.
    Swap(Box<Swap>),
}

/// A reloaded model and the `[model]`/`[readout]` settings that travel with it.
struct Swap {
    model: LoadedModel,
    max_batch: usize,
    ema_alpha: f32,
    include_embedding: bool,
    reply: Sender<Result<ModelId, String>>,
}

/// How long a reload waits for room on the control channel.
const SWAP_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A model ready to serve: the live encoder, its read-out and its identity.
pub struct LoadedModel {
    pub encoder: LiveEncoder,
    pub readout: Readout,
    pub id: ModelId,
}

/// Loads the configured weights (or the seeded random ones) and computes the class text
/// embeddings once.
pub fn load(cfg: &ModelConfig, readout: &ReadoutConfig) -> Result<LoadedModel, Error> {
    let (model, digest) = load_encoder(cfg)?;
    let readout = build_readout(&model, readout)?;
    let id = ModelId::new(cfg.name.clone(), digest.as_deref());
    if let (_, Some(fitted_on)) = readout.heads_model()
        && fitted_on != id.weights
    {
        warn!(
            heads_fitted_on = fitted_on,
            serving = %id.weights,
            "the heads file was fitted on embeddings of other weights; its outputs are unreliable"
        );
    }
    let encoder = LiveEncoder::new(model, cfg.crop_policy(), cfg.update_every);
    Ok(LoadedModel {
        encoder,
        readout,
        id,
    })
}

/// The read-out of `model`: the class text embeddings from its text tower, computed once.
pub fn build_readout(model: &EmotionClip, cfg: &ReadoutConfig) -> Result<Readout, Error> {
    let tokenizer = ClipTokenizer::new();
    let vocab = model.config().text_cfg.vocab_size;
    Readout::build(cfg, model.logit_scale_exp()?, |texts| {
        let tokens = tokenizer.tokenize_batch(texts, model.device())?;
        let max = tokens.max_all()?.to_scalar::<i64>()?;
        if max >= vocab as i64 {
            candle_core::bail!("token id {max} is outside the text tower's vocabulary of {vocab}")
        }
        model
            .encode_text(&tokens)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()
    })
    .map_err(|e| Error::invalid_config("readout", e.to_string()))
}

/// The configured EmotionCLIP (or the seeded random one) and the sha256 of its weights file
/// (`None` for random weights), without the read-out: what [`load`] and `affectd train`
/// share.
pub fn load_encoder(cfg: &ModelConfig) -> Result<(EmotionClip, Option<String>), Error> {
    let device = match cfg.device {
        ModelDevice::Cpu => Device::Cpu,
        ModelDevice::Cuda => Device::new_cuda(0)?,
    };
    let arch = match &cfg.config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    match cfg.weights_to_load() {
        Some(path) => {
            let digest = crate::digest::sha256_file(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            info!(weights = %path.display(), sha256 = %digest, "loading EmotionCLIP weights");
            Ok((
                EmotionClip::load_as(path, &arch, &device, cfg.dtype.dtype())?,
                Some(digest),
            ))
        }
        None => {
            warn!(
                seed = cfg.seed,
                weights = ?cfg.weights,
                "UNTRAINED MODEL: no EmotionCLIP weights file, running seeded random weights. \
                 Emotion scores and valence/arousal are meaningless; every message says \
                 \"untrained\". Put the official release at [model] weights for real results."
            );
            Ok((EmotionClip::random(&arch, cfg.seed, &device)?, None))
        }
    }
}

/// Where the stage publishes and how.
pub struct StageOptions {
    pub node: String,
    pub max_batch: usize,
    pub queue: usize,
    pub ema_alpha: f32,
    pub include_embedding: bool,
    /// Where windows due for capture go (`[capture]`); `None`: no capture.
    pub capture: Option<CaptureSender>,
}

/// The detector's side of the stage: never blocks on samples.
///
/// Samples go into a bounded drop-oldest ring, like ingest's frame queues: when the encoder
/// falls behind, the stalest samples are dropped (and counted) so that what it encodes stays
/// recent. Track endings travel on their own channel and are never dropped.
#[derive(Clone)]
pub struct EncoderSender {
    samples: Arc<ArrayQueue<PersonSample>>,
    control: Sender<Control>,
    dropped: Arc<AtomicU64>,
}

impl EncoderSender {
    /// Hands a sample over; when the ring is full the oldest waiting sample is dropped.
    pub fn sample(&self, sample: PersonSample) {
        if self.samples.force_push(sample).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.control.try_send(Control::Wake);
    }

    /// Tells the encoder a track ended. Waits briefly if the channel is full: losing it would
    /// leak the track's state.
    pub fn track_ended(&self, key: TrackKey) {
        let _ = self
            .control
            .send_timeout(Control::TrackEnded(key), Duration::from_secs(1));
    }

    /// Hands a reloaded model to the encoder thread, which swaps it in between two batches:
    /// every track's window is re-encoded with it (tracks and their windows survive), the
    /// read-out and the model id in messages change, and the per-track smoothing restarts
    /// (scores of two models are not averaged). `options` brings the new `max_batch`,
    /// `ema_alpha` and `include_embedding`; `node` and `queue` stay. The receiver gets the new
    /// model's id, or why the running model was kept (e.g. another input size).
    pub fn swap(
        &self,
        model: LoadedModel,
        options: &StageOptions,
    ) -> Receiver<Result<ModelId, String>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let swap = Swap {
            model,
            max_batch: options.max_batch,
            ema_alpha: options.ema_alpha,
            include_embedding: options.include_embedding,
            reply: reply.clone(),
        };
        if let Err(e) = self
            .control
            .send_timeout(Control::Swap(Box::new(swap)), SWAP_SEND_TIMEOUT)
        {
            let why = match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => "the encoder is not responding",
                crossbeam_channel::SendTimeoutError::Disconnected(_) => "the encoder has stopped",
            };
            let _ = reply.send(Err(why.to_owned()));
        }
        rx
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
    /// Disconnected when the thread ends.
    done: Receiver<()>,
}

impl EncoderStage {
    pub fn spawn(
        model: LoadedModel,
        options: StageOptions,
        publisher: Publisher,
        beat: Beat,
    ) -> std::io::Result<EncoderStage> {
        let (control, rx) = crossbeam_channel::bounded(1024);
        let samples = Arc::new(ArrayQueue::new(options.queue.max(1)));
        let sender = EncoderSender {
            samples: Arc::clone(&samples),
            control,
            dropped: Arc::default(),
        };
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || {
                let _done = done_tx;
                Worker::new(model, options, publisher, samples).run(&rx, &beat);
            })?;
        Ok(EncoderStage {
            sender,
            thread,
            done,
        })
    }

    pub fn sender(&self) -> EncoderSender {
        self.sender.clone()
    }

    /// Closes the input (the detector stopped first) and waits up to `timeout` for the
    /// thread to encode what is queued and publish it. A forward still running past the
    /// deadline is abandoned: the process is about to exit.
    pub fn stop(self, timeout: Duration) {
        let dropped = self.sender.dropped();
        drop(self.sender);
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                debug!(dropped, "encoder stopped");
            }
            _ => warn!(
                timeout_ms = timeout.as_millis() as u64,
                "encoder still busy at the shutdown deadline; its last windows are lost"
            ),
        }
    }
}

struct Worker {
    model: LoadedModel,
    options: StageOptions,
    publisher: Publisher,
    samples: Arc<ArrayQueue<PersonSample>>,
    smoothing: HashMap<TrackKey, Ema>,
    batch: Vec<PersonSample>,
    failures: u64,
    capture: Option<CaptureTap>,
}

impl Worker {
    fn new(
        model: LoadedModel,
        options: StageOptions,
        publisher: Publisher,
        samples: Arc<ArrayQueue<PersonSample>>,
    ) -> Self {
        Self {
            capture: options.capture.clone().map(CaptureTap::new),
            model,
            options,
            publisher,
            samples,
            smoothing: HashMap::new(),
            batch: Vec::new(),
            failures: 0,
        }
    }

    /// One batch per turn, so track endings and heartbeats interleave with encoding even
    /// when samples never stop coming; blocks only when no sample waits.
    fn run(mut self, rx: &Receiver<Control>, beat: &Beat) {
        loop {
            let control = if self.samples.is_empty() {
                rx.recv_timeout(IDLE_WAKE)
            } else {
                rx.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match control {
                Ok(Control::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Control::TrackEnded(key)) => {
                    // Its samples still waiting count for its last window, then it is gone.
                    self.encode_all_waiting();
                    self.model.encoder.end_track(&key);
                    self.smoothing.remove(&key);
                    if let Some(tap) = &mut self.capture {
                        tap.end_track(&key);
                    }
                }
                Ok(Control::Swap(swap)) => self.swap(*swap),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            beat.beat();
            self.encode_batch();
        }
        self.encode_all_waiting();
    }

    /// Swaps in a reloaded model, or keeps the running one when the new one cannot take over.
    fn swap(&mut self, swap: Swap) {
        let Swap {
            model,
            max_batch,
            ema_alpha,
            include_embedding,
            reply,
        } = swap;
        let LoadedModel {
            encoder,
            readout,
            id,
        } = model;
        let tracks = self.model.encoder.tracks();
        let outcome = match self.model.encoder.adopt(encoder, max_batch) {
            Ok(()) => {
                self.model.readout = readout;
                self.model.id = id.clone();
                self.smoothing.clear();
                self.options.max_batch = max_batch;
                self.options.ema_alpha = ema_alpha;
                self.options.include_embedding = include_embedding;
                debug!(tracks, model = %id.name, weights = %id.weights, "encoder swapped models");
                Ok(id)
            }
            Err(e) => Err(format!("the running model was kept: {e}")),
        };
        let _ = reply.send(outcome);
    }

    fn encode_all_waiting(&mut self) {
        while !self.samples.is_empty() {
            self.encode_batch();
        }
    }

    /// Encodes up to `max_batch` waiting samples in one forward.
    fn encode_batch(&mut self) {
        while self.batch.len() < self.options.max_batch {
            match self.samples.pop() {
                Some(sample) => self.batch.push(sample),
                None => break,
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        match self.model.encoder.push(&batch) {
            Ok(updates) => {
                if let Some(tap) = &mut self.capture {
                    let model = &self.model;
                    tap.after_push(&batch, &updates, &model.encoder, &model.id.name);
                }
                updates.iter().for_each(|u| self.publish(u));
            }
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
            readout: ReadoutSource {
                scores: if readout.has_emotion_head() {
                    ScoresSource::Head
                } else {
                    ScoresSource::ZeroShot
                },
                valence_arousal: if readout.has_va_head() {
                    ValenceArousalSource::Head
                } else {
                    ValenceArousalSource::Lexicon
                },
            },
            model: self.model.id.clone(),
            latency_ms,
            embedding: self
                .options
                .include_embedding
                .then(|| update.embedding.clone()),
        };
        let topic = self
            .publisher
            .topics()
            .under(&format!("{}/person/{}", update.camera, update.track_id));
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
        eprintln!(
            "untrained ViT-B/32 + 22 descriptions loaded in {:?}",
            t0.elapsed()
        );
        assert_eq!(loaded.id.weights, "untrained");
        assert_eq!(loaded.readout.names().len(), 11);
        let embedding: Vec<f32> = (0..512)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let affect = loaded.readout.read(&embedding);
        assert!((affect.scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(affect.scores.iter().all(|s| s.is_finite()));
        assert!((-1.0..=1.0).contains(&affect.valence) && (-1.0..=1.0).contains(&affect.arousal));
    }
}
