//! The capture writer thread: windows arrive from the encoder's tap on a bounded channel
//! (the encoder never waits:
//! beyond `queue` waiting windows new ones are dropped and counted), are PNG-encoded and
//! written to the dataset. The thread beats (stage `capture`) per window and on every
//! 200 ms idle wake-up; [`Capture::stop`] waits for it with a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::CaptureError;
use super::config::CaptureConfig;
use super::format::Manifest;
use super::writer::{DatasetWriter, WindowRecord};
use crate::encode::{TappedWindow, WindowTap};
use crate::health::Beat;

/// One person's window, handed from the encoder to the writer.
pub type CapturedWindow = TappedWindow;

/// Counters of the capture stage.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Windows stored.
    pub written: AtomicU64,
    /// Windows dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Oldest samples deleted for the quota.
    pub rotated: AtomicU64,
    /// Windows that could not be stored (disk errors).
    pub failed: AtomicU64,
}

/// The encoder's side: never blocks.
#[derive(Clone)]
pub struct CaptureSender {
    tx: Sender<CapturedWindow>,
    stats: Arc<CaptureStats>,
    every: usize,
}

impl CaptureSender {
    /// Queues a window for the writer; when the queue is full it is dropped and counted.
    /// Returns whether it was queued.
    pub fn offer(&self, window: CapturedWindow) -> bool {
        match self.tx.try_send(window) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        dropped = n,
                        "capture writer behind: windows dropped (disk too slow for [capture] every)"
                    );
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Sampled frames of a track between two captures (`[capture] every`).
    pub fn every(&self) -> usize {
        self.every
    }
}

/// The encoder hands due windows to capture through its tap.
impl WindowTap for CaptureSender {
    fn every(&self) -> usize {
        self.every
    }

    fn offer(&self, window: TappedWindow) -> bool {
        CaptureSender::offer(self, window)
    }
}

/// The running capture writer.
pub struct Capture {
    sender: CaptureSender,
    stop: CancellationToken,
    thread: JoinHandle<()>,
    /// Disconnected when the thread ends.
    done: Receiver<()>,
    dir: std::path::PathBuf,
}

impl Capture {
    /// Opens (or creates) the dataset for a model described by `manifest` and starts the
    /// writer thread. Fails when the folder holds a dataset of another shape or another
    /// process writes it. The thread stops when `stop` is cancelled (or every sender is
    /// gone), after writing what is queued.
    pub fn start(
        cfg: &CaptureConfig,
        manifest: &Manifest,
        stop: CancellationToken,
    ) -> Result<Capture, CaptureError> {
        Self::start_watched(cfg, manifest, stop, Beat::new())
    }

    /// [`Capture::start`], the writer thread beating `beat`.
    pub fn start_watched(
        cfg: &CaptureConfig,
        manifest: &Manifest,
        stop: CancellationToken,
        beat: Beat,
    ) -> Result<Capture, CaptureError> {
        let writer = DatasetWriter::open(&cfg.dir, manifest, cfg.quota_bytes())?;
        info!(
            dir = %cfg.dir.display(),
            samples = writer.len(),
            mib = writer.total_bytes() / (1024 * 1024),
            quota_mb = cfg.quota_mb,
            every = cfg.every,
            "capturing windows into a local dataset"
        );
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue.max(1));
        let stats = Arc::new(CaptureStats::default());
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread = {
            let (stats, stop) = (Arc::clone(&stats), stop.clone());
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || {
                    let _done = done_tx;
                    run(writer, &rx, &stats, &stop, &beat);
                })
                .map_err(CaptureError::io(&cfg.dir))?
        };
        Ok(Capture {
            sender: CaptureSender {
                tx,
                stats,
                every: cfg.every.max(1),
            },
            stop,
            thread,
            done,
            dir: cfg.dir.clone(),
        })
    }

    pub fn sender(&self) -> CaptureSender {
        self.sender.clone()
    }

    pub fn stats(&self) -> Arc<CaptureStats> {
        Arc::clone(&self.sender.stats)
    }

    /// Cancels the stop token: the thread writes what is queued (the encoder stopped first)
    /// and ends; waits up to `timeout` for it.
    pub fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let stats = Arc::clone(&self.sender.stats);
        drop(self.sender);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                info!(
                    dir = %self.dir.display(),
                    written = load(&stats.written),
                    dropped = load(&stats.dropped),
                    rotated = load(&stats.rotated),
                    failed = load(&stats.failed),
                    "capture stopped"
                );
            }
            _ => warn!(
                dir = %self.dir.display(),
                written = load(&stats.written),
                timeout_ms = timeout.as_millis() as u64,
                "capture still writing at the shutdown deadline; its last windows are lost"
            ),
        }
    }
}

fn run(
    mut writer: DatasetWriter,
    rx: &Receiver<CapturedWindow>,
    stats: &CaptureStats,
    stop: &CancellationToken,
    beat: &Beat,
) {
    loop {
        beat.beat();
        let window = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) if !stop.is_cancelled() => continue,
            // Stopping: write what is still queued, then end.
            Err(_) => match rx.try_recv() {
                Ok(w) => w,
                Err(_) => break,
            },
        };
        store(&mut writer, &window, stats);
    }
}

fn store(writer: &mut DatasetWriter, window: &CapturedWindow, stats: &CaptureStats) {
    let f = &window.frames;
    let record = WindowRecord {
        camera: &window.camera,
        track_id: window.track_id,
        model: &window.model,
        crops: f.crops.iter().map(|c| c.as_ref()).collect(),
        walls: &f.walls,
        frame_seqs: &f.frame_seqs,
        bboxes: &f.bboxes,
        frame_size: f.frame_size,
    };
    match writer.write(&record) {
        Ok(w) => {
            let n = stats.written.fetch_add(1, Ordering::Relaxed) + 1;
            stats.rotated.fetch_add(w.rotated as u64, Ordering::Relaxed);
            if n == 1 {
                info!(dir = %writer.dir().display(), id = %w.id, bytes = w.bytes, "first window captured");
            }
        }
        Err(e) => {
            let n = stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(error = %e, failed = n, camera = %window.camera, track = window.track_id, "window not captured");
            }
        }
    }
}
