//! [`Ingest`]: every enabled camera's supervisor, the frame hub and the status channels.

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
use crate::types::{CameraId, CameraStatus};

/// Grace given to the pipelines when an [`Ingest`] is dropped without [`Ingest::stop`].
const DROP_TIMEOUT: Duration = Duration::from_secs(2);

/// All cameras' ingest: one supervisor thread (`ingest-<id>`) per enabled camera.
pub struct Ingest {
    cameras: Vec<Running>,
    hub: FrameHub,
    stop: CancellationToken,
    /// Until when the pipelines may drain (EOS); set by [`Ingest::stop`] before it cancels.
    eos_deadline: Arc<OnceLock<Instant>>,
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
        pipeline::init()?;
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
        let _ = self.eos_deadline.set(start + timeout.mul_f64(0.75));
        let join_deadline = start + timeout;
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
                warn!(camera = %camera.id, "camera thread did not stop in time; leaving it behind");
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
