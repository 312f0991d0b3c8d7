//! Liveness of the stages.
//!
//! A stage thread that is watched (today: the analytics and the encoder) holds a [`Beat`]
//! and calls [`Beat::beat`] at least once per turn of its loop, busy or idle. The service
//! feeds systemd's watchdog only while every beat is fresh (`[service] stage_stall_s`), so a
//! hung stage gets the service restarted by systemd rather than silently publishing nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The registry of stage heartbeats.
#[derive(Clone)]
pub struct Health {
    epoch: Instant,
    beats: Arc<Mutex<Vec<Registered>>>,
}

struct Registered {
    stage: String,
    last_ms: Arc<AtomicU64>,
}

/// One stage's heartbeat: cheap to call from a hot loop.
#[derive(Clone)]
pub struct Beat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Beat {
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            beats: Arc::default(),
        }
    }

    /// Registers a stage; it starts fresh.
    pub fn register(&self, stage: impl Into<String>) -> Beat {
        let beat = Beat {
            epoch: self.epoch,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        beat.beat();
        self.beats.lock().push(Registered {
            stage: stage.into(),
            last_ms: Arc::clone(&beat.last_ms),
        });
        beat
    }

    /// The stages whose last beat is older than `max_age`.
    pub fn stalled(&self, max_age: Duration) -> Vec<String> {
        self.beats()
            .into_iter()
            .filter(|(_, age)| *age > max_age)
            .map(|(stage, _)| stage)
            .collect()
    }

    /// Every registered stage with the time since its last beat (millisecond resolution), in
    /// registration order.
    pub fn beats(&self) -> Vec<(String, Duration)> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.beats
            .lock()
            .iter()
            .map(|r| {
                let age = now.saturating_sub(r.last_ms.load(Ordering::Relaxed));
                (r.stage.clone(), Duration::from_millis(age))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_stops_beating_is_reported() {
        let health = Health::new();
        let a = health.register("a");
        let _b = health.register("b");
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(
            health.stalled(Duration::from_millis(20)),
            vec!["b".to_owned()]
        );
        assert!(health.stalled(Duration::from_secs(5)).is_empty());
    }
}
