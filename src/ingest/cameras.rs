//! [`Ingest`]: every enabled camera's supervisor, the frame hub and the status channels.
//!
//! In: the camera configs, a stop token, the [`Health`] registry. Out: frames (the hub),
//! statuses, one heartbeat per camera (`ingest-<id>`). Owns: the supervisor threads, each
//! joined at stop with a deadline (one that does not finish is named in the log and left).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{CameraConfig, IngestConfig};
use super::error::Error;
use super::pipeline;
use super::queue::{FrameHub, HubBuilder};
use super::supervisor::Supervisor;
use crate::health::Health;
use crate::types::{CameraId, CameraStatus};

/// Grace given to the pipelines when an [`Ingest`] is dropped without [`Ingest::stop`].
const DROP_TIMEOUT: Duration = Duration::from_secs(2);

/// All cameras' ingest: one supervisor thread (`ingest-<id>`) per enabled camera.
pub struct Ingest {
    cameras: Vec<Running>,
    hub: FrameHub,
    stop: CancellationToken,
    /// Until when the pipelines may drain (EOS), and until when they must be down; set by
    /// [`Ingest::stop`] before it cancels.
    eos_deadline: Arc<OnceLock<(Instant, Instant)>>,
    /// Pipeline teardowns left hanging (`[ingest] teardown_timeout_s`).
    abandoned: Arc<AtomicU64>,
}

struct Running {
    id: CameraId,
    status: watch::Receiver<CameraStatus>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Initialises GStreamer and starts one supervisor per enabled camera. A camera whose
    /// pipeline cannot be built goes to `failed` and is retried with backoff; it never stops
    /// the others. Fails only when GStreamer cannot start or a thread cannot be spawned.
    ///
    /// Every camera stops when `stop` is cancelled: [`Ingest::stop`] cancels it after setting
    /// how long EOS may drain the pipelines; cancelled from elsewhere, EOS gets about a second.
    pub fn start(
        cameras: &[CameraConfig],
        cfg: &IngestConfig,
        stop: CancellationToken,
    ) -> Result<Ingest, Error> {
        Self::start_watched(cameras, cfg, stop, &Health::new())
    }

    /// [`Ingest::start`], each camera's supervisor registered in `health` as `ingest-<id>`.
    pub fn start_watched(
        cameras: &[CameraConfig],
        cfg: &IngestConfig,
        stop: CancellationToken,
        health: &Health,
    ) -> Result<Ingest, Error> {
        pipeline::init()?;
        let abandoned = Arc::new(AtomicU64::new(0));
        let mut hub = HubBuilder::new(cfg.queue_frames);
        let eos_deadline = Arc::new(OnceLock::new());
        let mut running = Vec::new();
        let mut supervisors = Vec::new();
        for camera in cameras.iter().filter(|c| c.enabled) {
            let id: CameraId = camera.id.as_str().into();
            let (status_tx, status_rx) = watch::channel(CameraStatus::starting());
            supervisors.push(Supervisor {
                id: id.clone(),
                camera: camera.clone(),
                cfg: cfg.clone(),
                queue: hub.queue(id.clone()),
                status: status_tx,
                stop: stop.clone(),
                eos_deadline: Arc::clone(&eos_deadline),
                beat: health.register(format!("ingest-{id}")),
                abandoned: Arc::clone(&abandoned),
            });
            running.push(Running {
                id,
                status: status_rx,
                thread: None,
            });
        }
        let mut ingest = Ingest {
            cameras: running,
            hub: hub.build(),
            stop,
            eos_deadline,
            abandoned,
        };
        for (slot, supervisor) in ingest.cameras.iter_mut().zip(supervisors) {
            let thread = std::thread::Builder::new()
                .name(format!("ingest-{}", slot.id))
                .spawn(move || supervisor.run())
                .map_err(|e| Error::Init(format!("cannot start a camera thread: {e}")))?;
            slot.thread = Some(thread);
        }
        info!(cameras = ingest.cameras.len(), "ingest started");
        Ok(ingest)
    }

    /// The consumer side: wait on and drain the frames of every camera.
    pub fn hub(&self) -> FrameHub {
        self.hub.clone()
    }

    /// Each camera's status channel; a receiver wakes on every change (state, and fps and
    /// drop counts about once a second).
    pub fn statuses(&self) -> Vec<(CameraId, watch::Receiver<CameraStatus>)> {
        self.cameras
            .iter()
            .map(|c| (c.id.clone(), c.status.clone()))
            .collect()
    }

    /// Pipeline teardowns that hung past `[ingest] teardown_timeout_s`, their threads left
    /// behind, since start.
    pub fn abandoned_teardowns(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Cancels the stop token and waits for every camera: EOS is sent and waited for
    /// (bounded), the pipelines are set to NULL and the threads joined, all within about
    /// `timeout`.
    pub fn stop(mut self, timeout: Duration) {
        self.shutdown(timeout);
    }

    fn shutdown(&mut self, timeout: Duration) {
        if self.cameras.is_empty() {
            self.stop.cancel();
            return;
        }
        let start = Instant::now();
        // EOS gets three quarters of the time; tearing down and joining the rest.
        let join_deadline = start + timeout;
        let _ = self
            .eos_deadline
            .set((start + timeout.mul_f64(0.75), join_deadline));
        self.stop.cancel();
        let cameras = std::mem::take(&mut self.cameras);
        for mut camera in cameras {
            let Some(thread) = camera.thread.take() else {
                continue;
            };
            while !thread.is_finished() && Instant::now() < join_deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                warn!(
                    camera = %camera.id,
                    timeout_ms = timeout.as_millis() as u64,
                    "camera thread did not stop in time; leaving it behind"
                );
            }
        }
        info!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            "ingest stopped"
        );
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shutdown(DROP_TIMEOUT);
    }
}
