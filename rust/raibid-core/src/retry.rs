//! One retry/backoff policy: exponential delays with a cap, optionally bounded by a deadline.

use std::time::{Duration, Instant};

/// Exponential backoff: `first`, doubling up to `max`; `give_up` bounds the total time (None: never).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    give_up: Option<Instant>,
}

impl Backoff {
    /// Delays from `first` doubling up to `max`, without a deadline.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            give_up: None,
        }
    }

    /// Give up once `within` has passed from now.
    pub fn within(mut self, within: Duration) -> Backoff {
        self.give_up = Some(Instant::now() + within);
        self
    }

    /// The delay before the next try, or `None` when the deadline has passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.give_up.is_some_and(|g| Instant::now() >= g) {
            return None;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }

    /// Sleep for the next delay; false when the deadline has passed (nothing slept).
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4)
            .filter_map(|_| b.next_delay())
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(d, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
        let mut g =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(1)).within(Duration::ZERO);
        assert_eq!(g.next_delay(), None);
    }
}
