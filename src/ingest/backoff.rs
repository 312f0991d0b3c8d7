//! Exponential restart delay.

use std::time::Duration;

/// Restart delays: `initial`, doubling on each consecutive failure, capped at `max`;
/// [`reset`](Backoff::reset) after a healthy run starts again from `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next restart; the one after it will be twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
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
}
