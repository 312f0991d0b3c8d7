//! The analytics thread: the one consumer of every camera's frame queue.
//!
//! It drains the ingest hub on a named OS thread and keeps the heartbeat that the watchdog
//! reads. Detection, tracking and the encoder plug in here as they land.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;

use super::health::Beat;
use crate::ingest::FrameHub;

/// How long the thread sleeps waiting for frames before it beats and looks at the stop flag.
const IDLE_WAKE: Duration = Duration::from_millis(500);

pub struct Analytics {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Analytics {
    pub fn spawn(hub: FrameHub, beat: Beat) -> std::io::Result<Analytics> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("analytics".into())
            .spawn(move || {
                let mut frames = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    let batch = hub.next_batch(IDLE_WAKE);
                    beat.beat();
                    frames += batch.len() as u64;
                    for frame in &batch {
                        debug!(camera = %frame.camera, seq = frame.seq, "frame");
                    }
                }
                debug!(frames, "analytics stopped");
            })?;
        Ok(Analytics { stop, thread })
    }

    /// Asks the thread to finish and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
