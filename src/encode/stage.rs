//! The encoder stage's thread and its two inputs.
//!
//! - **Data**: person samples go into a bounded drop-oldest queue (`[model] queue`): the
//!   analytics thread never waits, and when the encoder falls behind the stalest samples are
//!   dropped and counted, so that what it encodes stays recent. A doorbell (capacity 1,
//!   coalescing) wakes the thread.
//! - **Control**: track endings and model swaps travel on their own unbounded channel, which
//!   the thread empties before every batch: never blocked on, never starved, never dropped.
//!   Its length is bounded by the tracks that end (each once) and the reloads asked for.
//!
//! Every sample is numbered as it is handed over; a track's end carries the number of the
//! next sample, so the thread finishes the track (its last window, then its `end` event) once
//! every sample handed before the end has been encoded or dropped. Ending a track therefore
//! never adds work: the backlog stays the queue, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::load::LoadedModel;
use super::tap::WindowTap;
use super::worker::Worker;
use crate::health::Beat;
use crate::model::ModelId;
use crate::observe::EncoderMetrics;
use crate::results::{ResultSink, TrackSpan};
use crate::types::PersonSample;

/// The stage's settings; those in [`Settings`] change with a reload.
pub struct StageOptions {
    pub settings: Settings,
    /// Samples waiting at most (`[model] queue`); the oldest is dropped beyond it.
    pub queue: usize,
    /// Person windows per camera at most (`[window] max_tracks`).
    pub max_per_camera: usize,
    /// Batch durations and sizes, and the model served.
    pub metrics: EncoderMetrics,
}

/// What a reload may change besides the model.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_batch: usize,
    pub ema_alpha: f32,
    pub include_embedding: bool,
}

/// A sample with its hand-over number.
pub(super) struct Numbered {
    pub n: u64,
    pub sample: PersonSample,
}

pub(super) enum Control {
    /// The track ended after the samples numbered below `before` were handed over.
    TrackEnded { span: TrackSpan, before: u64 },
    /// Serve a reloaded model from the next batch on.
    Swap(Box<Swap>),
}

/// A reloaded model, its settings, and who waits for the outcome.
pub(super) struct Swap {
    pub model: LoadedModel,
    pub settings: Settings,
    pub ticket: Arc<Ticket>,
    pub reply: Sender<Result<ModelId, String>>,
}

/// Decides once whether a swap is applied: the encoder takes it, or the reload gives up on
/// it first; never both.
#[derive(Default)]
pub(super) struct Ticket(AtomicU8);

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// The encoder's side: true when the swap may be applied.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The reload's side: true when the encoder will not apply it.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The outcome of a swap, to wait for.
pub struct SwapReply {
    rx: Receiver<Result<ModelId, String>>,
    ticket: Arc<Ticket>,
}

impl SwapReply {
    /// The new model's id, or why the running model was kept. Waits up to `timeout` for the
    /// encoder to take the model; one that took it is waited for until it is done, so the
    /// answer is always what happened.
    pub fn wait(self, timeout: Duration) -> Result<ModelId, String> {
        match self.rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) if self.ticket.abandon() => Err(format!(
                "the encoder did not take the new model within {timeout:?}; it will not apply it"
            )),
            Err(RecvTimeoutError::Timeout) => self
                .rx
                .recv()
                .unwrap_or_else(|_| Err("the encoder stopped while swapping".into())),
            Err(RecvTimeoutError::Disconnected) => Err("the encoder has stopped".into()),
        }
    }
}

/// The analytics' (and reloads') side of the stage: never blocks.
#[derive(Clone)]
pub struct EncoderSender {
    samples: Arc<ArrayQueue<Numbered>>,
    next: Arc<AtomicU64>,
    doorbell: Sender<()>,
    control: Sender<Control>,
    dropped: Arc<AtomicU64>,
}

/// The encoder's end of an [`EncoderSender`]: the sample queue, the doorbell and the control
/// channel.
type SenderEnds = (Arc<ArrayQueue<Numbered>>, Receiver<()>, Receiver<Control>);

impl EncoderSender {
    /// A sender over a drop-oldest queue of `queue` samples (at least 1), and the ends the
    /// encoder thread reads.
    fn with_queue(queue: usize) -> (EncoderSender, SenderEnds) {
        let samples = Arc::new(ArrayQueue::new(queue.max(1)));
        let (doorbell, ring) = crossbeam_channel::bounded(1);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let sender = EncoderSender {
            samples: Arc::clone(&samples),
            next: Arc::default(),
            doorbell,
            control,
            dropped: Arc::default(),
        };
        (sender, (samples, ring, control_rx))
    }

    /// Hands a sample over; when the queue is full the oldest waiting sample is dropped.
    pub fn sample(&self, sample: PersonSample) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.samples.force_push(Numbered { n, sample }).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.doorbell.try_send(());
    }

    /// Tells the encoder a track ended. Its `end` event is published by the encoder, after
    /// the track's last window.
    pub fn track_ended(&self, span: TrackSpan) {
        let before = self.next.load(Ordering::Relaxed);
        let _ = self.control.send(Control::TrackEnded { span, before });
        let _ = self.doorbell.try_send(());
    }

    /// Hands a reloaded model to the encoder thread, which swaps it in between two batches:
    /// every person's window is re-encoded with it (tracks and their windows survive), the
    /// read-out and the model id in messages change, and the per-person smoothing restarts
    /// (scores of two models are not averaged). The queue size stays.
    pub fn swap(&self, model: LoadedModel, settings: Settings) -> SwapReply {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let ticket = Arc::new(Ticket::default());
        let swap = Swap {
            model,
            settings,
            ticket: Arc::clone(&ticket),
            reply,
        };
        if let Err(e) = self.control.send(Control::Swap(Box::new(swap)))
            && let Control::Swap(swap) = e.into_inner()
        {
            let _ = swap.reply.send(Err("the encoder has stopped".into()));
        }
        let _ = self.doorbell.try_send(());
        SwapReply { rx, ticket }
    }

    /// Samples dropped because the encoder was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Samples handed over so far (queued, then encoded or dropped).
    pub fn received(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Samples waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.samples.len()
    }
}

/// Counters of the stage, readable from any thread.
#[derive(Debug, Default)]
pub struct EncoderStats {
    /// Persons (windows) held now.
    pub persons: AtomicU64,
    /// Windows embedded and handed to the results.
    pub windows: AtomicU64,
    /// Batches whose forward failed.
    pub failures: AtomicU64,
    /// Samples refused because their camera held `[window] max_tracks` persons.
    pub refused: AtomicU64,
}

/// When the stage must be done stopping; set just before its token is cancelled.
pub(super) type StopDeadline = Arc<Mutex<Option<Instant>>>;

/// The running stage.
pub struct EncoderStage {
    sender: EncoderSender,
    stats: Arc<EncoderStats>,
    stop: CancellationToken,
    deadline: StopDeadline,
    thread: JoinHandle<()>,
    /// Disconnected when the thread ends.
    done: Receiver<()>,
}

impl EncoderStage {
    /// Starts the encoder thread. It stops when `stop` is cancelled, after encoding what is
    /// queued and finishing the tracks that ended.
    pub fn spawn(
        model: LoadedModel,
        options: StageOptions,
        results: Arc<dyn ResultSink>,
        tap: Option<Box<dyn WindowTap>>,
        beat: Beat,
        stop: CancellationToken,
    ) -> std::io::Result<EncoderStage> {
        let (sender, (samples, ring, control_rx)) = EncoderSender::with_queue(options.queue);
        let stats = Arc::new(EncoderStats::default());
        let deadline = StopDeadline::default();
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let worker = Worker::new(
            model,
            options,
            results,
            tap,
            samples,
            Arc::clone(&stats),
            Arc::clone(&sender.dropped),
        );
        let (thread_stop, thread_deadline) = (stop.clone(), Arc::clone(&deadline));
        let thread = std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || {
                let _done = done_tx;
                worker.run(&control_rx, &ring, &beat, &thread_stop, &thread_deadline);
            })?;
        Ok(EncoderStage {
            sender,
            stats,
            stop,
            deadline,
            thread,
            done,
        })
    }

    pub fn sender(&self) -> EncoderSender {
        self.sender.clone()
    }

    pub fn stats(&self) -> Arc<EncoderStats> {
        Arc::clone(&self.stats)
    }

    /// Stops the thread (the analytics stopped first, having ended every track) and waits up
    /// to `timeout` for it to encode what is queued and publish it. Samples that one more
    /// forward could not finish in time are dropped (counted) so that every track's `end`
    /// still goes out; a forward still running past the deadline is abandoned: the process is
    /// about to exit.
    pub fn stop(self, timeout: Duration) {
        *self.deadline.lock() = Some(Instant::now() + timeout.mul_f64(0.8));
        self.stop.cancel();
        let _ = self.sender.doorbell.try_send(());
        let dropped = self.sender.dropped();
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                info!(
                    persons = load(&self.stats.persons),
                    windows = load(&self.stats.windows),
                    samples_dropped = dropped,
                    failures = load(&self.stats.failures),
                    "encoder stopped"
                );
            }
            _ => warn!(
                timeout_ms = timeout.as_millis() as u64,
                "encoder still busy at the shutdown deadline; its last windows are lost"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::types::{BBox, Frame};

    #[test]
    fn a_full_queue_drops_its_oldest_sample_and_counts_it() {
        let (sender, (samples, _ring, _control_rx)) = EncoderSender::with_queue(2);
        for track_id in 0..5 {
            sender.sample(PersonSample {
                frame: Frame {
                    camera: Arc::from("cam"),
                    seq: track_id,
                    pts: None,
                    wall: SystemTime::now(),
                    width: 2,
                    height: 2,
                    rgb: vec![0; 12].into(),
                },
                track_id,
                bbox: BBox::new(0.0, 0.0, 1.0, 1.0),
            });
        }
        assert_eq!(
            (sender.received(), sender.dropped(), sender.queued()),
            (5, 3, 2)
        );
        // What waits is the newest two, in order: the oldest three went.
        let left: Vec<(u64, u64)> = std::iter::from_fn(|| samples.pop())
            .map(|s| (s.n, s.sample.track_id))
            .collect();
        assert_eq!(left, [(3, 3), (4, 4)]);
    }
}
