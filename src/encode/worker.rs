//! The encoder thread's loop: control first, then one batch, then the tracks that are done.
//!
//! Liveness: the thread beats (stage `encoder`) on progress only: a batch encoded, a control
//! message handled while waiting, each batch of a swap's re-encode, and a wait for work that
//! ended with none (`IDLE_WAKE`). A forward that fails does not beat, and a doorbell that
//! brings the next failing batch is no idle wait, so an encoder failing every batch under
//! load stops the watchdog after `[service] stage_stall_s`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use crossbeam_queue::ArrayQueue;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::live::WindowUpdate;
use super::load::LoadedModel;
use super::stage::{Control, EncoderStats, Numbered, Settings, StageOptions, StopDeadline, Swap};
use super::tap::{TappedWindow, WindowTap};
use crate::health::Beat;
use crate::observe::EncoderMetrics;
use crate::readout::Ema;
use crate::results::{PersonAffect, ResultSink, TrackSpan};
use crate::types::PersonSample;

/// How long the thread waits for work before it beats idle.
const IDLE_WAKE: Duration = Duration::from_millis(500);

pub(super) struct Worker {
    model: LoadedModel,
    settings: Settings,
    results: Arc<dyn ResultSink>,
    tap: Option<Box<dyn WindowTap>>,
    samples: Arc<ArrayQueue<Numbered>>,
    stats: Arc<EncoderStats>,
    /// Every sample numbered below this was taken from the queue or dropped from it.
    taken: u64,
    /// Tracks that ended, in hand-over order, waiting for their samples to pass.
    ending: VecDeque<(TrackSpan, u64)>,
    /// Forwards failed in a row.
    failures: u64,
    /// Samples dropped (shared with the sender's count).
    dropped: Arc<AtomicU64>,
    /// How long the last forward took: at shutdown, whether one more fits.
    last_forward: Duration,
    metrics: EncoderMetrics,
}

impl Worker {
    pub fn new(
        model: LoadedModel,
        options: StageOptions,
        results: Arc<dyn ResultSink>,
        tap: Option<Box<dyn WindowTap>>,
        samples: Arc<ArrayQueue<Numbered>>,
        stats: Arc<EncoderStats>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        let mut model = model;
        model.encoder = model.encoder.with_max_per_camera(options.max_per_camera);
        options.metrics.serving(&model.id);
        Self {
            model,
            settings: options.settings,
            results,
            tap,
            samples,
            stats,
            taken: 0,
            ending: VecDeque::new(),
            failures: 0,
            dropped,
            last_forward: Duration::ZERO,
            metrics: options.metrics,
        }
    }

    /// Per turn: every control message waiting, at most one batch of `max_batch` samples,
    /// then the tracks whose samples have all passed. Sleeps only when no sample waits. So a
    /// turn is at most one forward (and a swap's re-encode, which beats per batch), and the
    /// heartbeat never waits on the backlog.
    pub fn run(
        mut self,
        control: &Receiver<Control>,
        doorbell: &Receiver<()>,
        beat: &Beat,
        stop: &CancellationToken,
        deadline: &StopDeadline,
    ) {
        loop {
            let open = self.take_control(control, beat);
            let stopping = stop.is_cancelled() || !open;
            if stopping && self.out_of_time(deadline) {
                self.drop_waiting();
            }
            let (encoded, ok) = self.encode_batch();
            self.finish_ended_tracks();
            if encoded > 0 && ok {
                beat.beat();
            }
            if stopping && self.samples.is_empty() {
                // Endings sent just before the stop still go out, after their last windows.
                self.take_control(control, beat);
                self.finish_ended_tracks();
                break;
            }
            if encoded == 0 && !stopping {
                crossbeam_channel::select! {
                    recv(doorbell) -> _ => {}
                    recv(control) -> msg => if let Ok(msg) = msg {
                        self.handle(msg, beat);
                        beat.beat();
                    },
                    // Nothing to do for a while: idle, and healthy.
                    default(IDLE_WAKE) => beat.beat(),
                }
            }
        }
        debug!(
            persons = self.model.encoder.tracks(),
            refused = self.model.encoder.refused(),
            "encoder thread done"
        );
    }

    /// Whether another forward would end past the stop deadline.
    fn out_of_time(&self, deadline: &StopDeadline) -> bool {
        deadline
            .lock()
            .is_some_and(|d| Instant::now() + self.last_forward > d)
    }

    /// Drops every waiting sample (counted), so the ended tracks can be finished at once.
    fn drop_waiting(&mut self) {
        let mut n = 0u64;
        while let Some(Numbered { n: number, .. }) = self.samples.pop() {
            self.taken = self.taken.max(number + 1);
            n += 1;
        }
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            warn!(
                samples = n,
                "shutdown deadline: samples still queued were dropped; every track's end still goes out"
            );
        }
    }

    /// Handles every control message waiting; false once every sender is gone.
    fn take_control(&mut self, control: &Receiver<Control>, beat: &Beat) -> bool {
        loop {
            match control.try_recv() {
                Ok(msg) => self.handle(msg, beat),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn handle(&mut self, msg: Control, beat: &Beat) {
        match msg {
            Control::TrackEnded { span, before } => self.ending.push_back((span, before)),
            Control::Swap(swap) => self.swap(*swap, beat),
        }
    }

    /// Finishes the ended tracks none of whose samples can still be waiting: frees the
    /// person's state at once and publishes the `end` event after its last window.
    fn finish_ended_tracks(&mut self) {
        while let Some((_, before)) = self.ending.front() {
            if *before > self.taken && !self.samples.is_empty() {
                break;
            }
            let (span, _) = self.ending.pop_front().expect("front exists");
            self.model.encoder.end_track(&span.key());
            self.results.track(span);
        }
        let persons = self.model.encoder.tracks() as u64;
        self.stats.persons.store(persons, Ordering::Relaxed);
    }

    /// Swaps in a reloaded model, or keeps the running one when the new one cannot take over
    /// or the reload stopped waiting for it.
    fn swap(&mut self, swap: Swap, beat: &Beat) {
        let Swap {
            model,
            settings,
            ticket,
            reply,
        } = swap;
        if !ticket.take() {
            info!("a reloaded model arrived after its reload gave up waiting; not applied");
            return;
        }
        let LoadedModel {
            encoder,
            readout,
            id,
        } = model;
        let persons = self.model.encoder.tracks();
        let mut between = || beat.beat();
        let outcome = match self
            .model
            .encoder
            .adopt(encoder, settings.max_batch, &mut between)
        {
            Ok(()) => {
                self.model.readout = readout;
                self.model.id = id.clone();
                self.model.encoder.reset_smoothing();
                self.settings = settings;
                self.metrics.serving(&id);
                debug!(
                    persons,
                    model = %id.name,
                    weights = %id.weights,
                    runtime = self.model.encoder.engine_name(),
                    "encoder swapped models"
                );
                Ok(id)
            }
            Err(e) => Err(format!("the running model was kept: {e}")),
        };
        let _ = reply.send(outcome);
    }

    /// Encodes up to `max_batch` waiting samples in one forward; returns how many, and
    /// whether the forward succeeded.
    fn encode_batch(&mut self) -> (usize, bool) {
        let mut batch: Vec<PersonSample> = Vec::with_capacity(self.settings.max_batch);
        while batch.len() < self.settings.max_batch {
            match self.samples.pop() {
                Some(Numbered { n, sample }) => {
                    self.taken = self.taken.max(n + 1);
                    batch.push(sample);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            return (0, true);
        }
        let t0 = Instant::now();
        let pushed = self.model.encoder.push(&batch);
        self.last_forward = t0.elapsed();
        self.metrics.batch(batch.len(), self.last_forward);
        let refused = self.model.encoder.refused();
        self.stats.refused.store(refused, Ordering::Relaxed);
        let ok = pushed.is_ok();
        match pushed {
            Ok(updates) => {
                if self.failures > 0 {
                    info!(failed_before = self.failures, "encoder forward works again");
                    self.failures = 0;
                }
                updates.into_iter().for_each(|u| self.publish(u));
            }
            Err(e) => {
                self.failures += 1;
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if self.failures.is_power_of_two() {
                    warn!(error = %e, failures_in_a_row = self.failures, persons = batch.len(), "encoder forward failed; batch dropped (the encoder stops beating while it fails)");
                }
            }
        }
        (batch.len(), ok)
    }

    /// Reads out one window, smooths it per person, hands it to the results and, when due,
    /// to the tap.
    fn publish(&mut self, update: WindowUpdate) {
        let key = update.key();
        let raw = self.model.readout.read(&update.embedding);
        let alpha = self.settings.ema_alpha;
        let every = self.tap.as_ref().map(|t| t.every());
        let Some(person) = self.model.encoder.person_mut(&key) else {
            return;
        };
        let affect = person
            .ema
            .get_or_insert_with(|| Ema::new(alpha))
            .update(&raw);
        let capture = every.is_some_and(|every| person.capture_since >= every);
        if capture {
            person.capture_since = 0;
        }
        let frames = capture.then(|| person.window.frames());
        if let (Some(tap), Some(frames)) = (&self.tap, frames) {
            tap.offer(TappedWindow {
                camera: update.camera.clone(),
                track_id: update.track_id,
                model: self.model.id.name.clone(),
                frames,
            });
        }
        self.stats.windows.fetch_add(1, Ordering::Relaxed);
        let readout = &self.model.readout;
        self.results.person(PersonAffect {
            camera: update.camera,
            track_id: update.track_id,
            start: update.start,
            end: update.end,
            frames: update.frames,
            bbox: update.bbox,
            frame_size: update.frame_size,
            classes: readout.shared_names(),
            affect,
            source: readout.source(),
            model: self.model.id.clone(),
            embedding: self.settings.include_embedding.then_some(update.embedding),
        });
    }
}
