//! Liveness of the stages.
//!
//! In: beats from every long-lived thread and task (each camera's supervisor `ingest-<id>`,
//! `analytics`, `encoder`, `capture`, the MQTT event loop `mqtt`). Out: each stage's time
//! since its last beat, read by the service's watchdog loop and `/healthz`. Owns: the
//! registry of beats (a shared atomic per stage).
//!
//! A watched stage holds a [`Beat`] and calls [`Beat::beat`] when it makes progress: a turn
//! of its loop that did its work, or an idle wake-up with nothing to do. A turn that failed
//! (a detector or encoder forward that errors) does not beat, so a stage failing every batch
//! stalls like a hung one. The service feeds systemd's watchdog only while every beat is
//! fresh (`[service] stage_stall_s`), so a hung or always-failing stage gets the service
//! restarted by systemd rather than silently publishing nothing.

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
    beat: Beat,
}

/// One stage's heartbeat: cheap to call from a hot loop.
#[derive(Clone)]
pub struct Beat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Beat {
    fn default() -> Self {
        Self::new()
    }
}

impl Beat {
    /// A heartbeat made before it is watched (by a part started without a [`Health`], e.g.
    /// MQTT); [`Health::watch`] adds it to a registry. It starts fresh.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

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
        self.watch(stage, beat.clone());
        beat
    }

    /// Watches a beat made elsewhere ([`Beat::new`]); it counts as fresh now.
    pub fn watch(&self, stage: impl Into<String>, beat: Beat) {
        beat.beat();
        self.beats.lock().push(Registered {
            stage: stage.into(),
            beat,
        });
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
        self.beats
            .lock()
            .iter()
            .map(|r| {
                // Each beat counts from its own epoch (one made by `Beat::new` has another).
                let now = r.beat.epoch.elapsed().as_millis() as u64;
                let age = now.saturating_sub(r.beat.last_ms.load(Ordering::Relaxed));
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

    #[test]
    fn a_beat_made_elsewhere_is_watched_like_a_registered_one() {
        let health = Health::new();
        std::thread::sleep(Duration::from_millis(30));
        let mqtt = Beat::new();
        std::thread::sleep(Duration::from_millis(30));
        health.watch("mqtt", mqtt.clone());
        assert!(health.stalled(Duration::from_millis(20)).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(health.stalled(Duration::from_millis(20)), vec!["mqtt"]);
        mqtt.beat();
        assert!(health.stalled(Duration::from_millis(20)).is_empty());
    }
}
