//! Keys the relay holds back: their next row could not be written, so none of their later
//! rows may be sent before it. Each key is retried on its own exponential backoff.

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

const MIN_HOLD: Duration = Duration::from_secs(1);
const MAX_HOLD: Duration = Duration::from_secs(30);

struct Hold {
    until: Instant,
    backoff: ExponentialBackoff,
}

#[derive(Default)]
pub(crate) struct Held {
    keys: HashMap<String, Hold>,
}

impl Held {
    /// Holds `key` back (again), for longer each time; returns for how long.
    pub(crate) fn hold(&mut self, key: &str, now: Instant) -> Duration {
        let hold = self.keys.entry(key.to_owned()).or_insert_with(|| Hold {
            until: now,
            backoff: ExponentialBuilder::default()
                .with_min_delay(MIN_HOLD)
                .with_max_delay(MAX_HOLD)
                .with_jitter()
                .without_max_times()
                .build(),
        });
        let delay = hold.backoff.next().unwrap_or(MAX_HOLD);
        hold.until = now + delay;
        delay
    }

    pub(crate) fn release(&mut self, key: &str) -> bool {
        self.keys.remove(key).is_some()
    }

    /// Every held key, due or not: a regular batch leaves them all out.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// The held keys whose backoff ran out: the next batch retries them alone.
    pub(crate) fn due(&self, now: Instant) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, hold)| hold.until <= now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// When the next held key is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.keys.values().map(|hold| hold.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_due_after_its_backoff_and_longer_each_time() {
        let mut held = Held::default();
        let now = Instant::now();
        let first = held.hold("a", now);
        assert!(held.due(now).is_empty());
        assert_eq!(held.due(now + first), ["a"]);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = held.hold("a", now);
        }
        assert!(
            last > first && last <= MAX_HOLD * 2,
            "{first:?} then {last:?}"
        );
        assert!(held.release("a"));
        assert!(held.keys().is_empty() && held.next_due().is_none());
    }
}
