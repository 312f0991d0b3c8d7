//! Capped exponential backoff: camera restarts (ingest) and MQTT reconnects (publish).

use std::time::Duration;

/// Retry delays: `initial`, doubling on each consecutive failure, capped at `max`;
/// [`reset`](Backoff::reset) after a healthy run starts again from `initial`. With
/// [`jitter`](Backoff::jitter), each delay is shortened by up to that fraction at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter: f64,
}

impl Backoff {
    /// A `max` below `initial` is taken as `initial`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
            jitter: 0.0,
        }
    }

    /// Shortens every delay by up to `fraction` (clamped to 0..=1) at random, so that many
    /// clients of a restarted server do not all come back at the same instant.
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The delay before the next retry; the one after it will be twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if self.jitter > 0.0 {
            delay.mul_f64(1.0 - self.jitter * random_unit())
        } else {
            delay
        }
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A number in [0, 1) from the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(3000));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [ms(500), ms(1000), ms(2000), ms(3000), ms(3000), ms(3000)]
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(500));
        assert_eq!(b.next_delay(), ms(1000));
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_the_initial_delay() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }

    #[test]
    fn jitter_shortens_each_step_by_at_most_its_fraction() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)).jitter(0.25);
        for step in [100, 200, 400, 500, 500] {
            let d = b.next_delay().as_millis();
            assert!(step * 3 / 4 <= d && d <= step, "{d} for step {step}");
        }
        b.reset();
        assert!(b.next_delay().as_millis() <= 100);
    }
}
