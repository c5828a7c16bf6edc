//! Retry policies: the seed's named policies as configuration (`[retry_policies.*]`),
//! and the one type every retry loop of the service takes its waits from (backoff by
//! the `backon` crate).
//!
//! | loop | policy | when its attempts run out |
//! |---|---|---|
//! | a batch the database cannot commit | `critical_task` | never gives up: waits `max_delay` between tries; the database breaker opens and `/readyz` says 503 |
//! | a message PostgreSQL refuses, alone | `default` | set aside in `dead_letters` as `processing_failed`, its sender told |
//! | an outbox message the broker returned or refused | `default` | tried again every `max_delay`, without end |
//! | the broker session (connect, topology, consume) | `critical_task` | never gives up: waits `max_delay`; `/readyz` says 503 |
//! | migrations and configured agents at start | `critical_task` | never gives up: waits `max_delay`; `/readyz` says 503 |
//! | the timer reading its deadlines | `default` | never gives up: waits `max_delay` |
//! | LISTEN for other processes' changes | `heartbeat` | never gives up: waits `max_delay`; periodic reloads cover the gap |

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Deserialize;

/// One named policy: the wait before the second attempt is `initial_delay`, each next
/// one `backoff_multiplier` times the last, never above `max_delay`; with `jitter`, each
/// wait is lengthened by a random part of itself (up to double), so that processes
/// that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub backoff_multiplier: f32,
    #[serde(default)]
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// The seed's `default` policy.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            jitter: true,
        }
    }
}

/// The seed's three policies.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicies {
    pub default: RetryPolicy,
    pub critical_task: RetryPolicy,
    pub heartbeat: RetryPolicy,
}

impl RetryPolicies {
    /// Each policy by name, for validation messages.
    pub fn named(&self) -> [(&'static str, &RetryPolicy); 3] {
        [
            ("default", &self.default),
            ("critical_task", &self.critical_task),
            ("heartbeat", &self.heartbeat),
        ]
    }
}

impl RetryPolicy {
    /// What is wrong with the values, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.max_attempts == 0 {
            return Some("max_attempts must be at least 1".into());
        }
        if self.initial_delay.is_zero() || self.max_delay < self.initial_delay {
            return Some(format!(
                "initial_delay must be above 0 and at most max_delay, got {:?} and {:?}",
                self.initial_delay, self.max_delay
            ));
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Some(format!(
                "backoff_multiplier must be 1 or more, got {}",
                self.backoff_multiplier
            ));
        }
        None
    }

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.backoff_multiplier)
            .without_max_times();
        if self.jitter {
            b.with_jitter()
        } else {
            b
        }
    }

    /// The waits of one series of attempts.
    pub fn waits(&self) -> Waits {
        Waits {
            policy: *self,
            backoff: self.builder().build(),
            retries: 0,
        }
    }

    /// The wait after `attempts` failed attempts of work retried across steps (an
    /// outbox row's attempts are kept in its row).
    pub fn wait_after(&self, attempts: u32) -> Duration {
        let mut w = self.waits();
        (1..attempts).for_each(|_| {
            w.next_persistent();
        });
        w.next_persistent()
    }
}

/// The waits between the attempts of one series; [`Waits::reset`] after a success.
#[derive(Debug)]
pub struct Waits {
    policy: RetryPolicy,
    backoff: ExponentialBackoff,
    retries: u32,
}

impl Waits {
    /// The wait before the next attempt, or `None` once `max_attempts` were made.
    pub fn next_attempt(&mut self) -> Option<Duration> {
        if self.retries + 1 >= self.policy.max_attempts {
            return None;
        }
        Some(self.next_persistent())
    }

    /// The wait before the next attempt for a loop that never gives up: past the
    /// policy's attempts the waits stay at `max_delay` (with its jitter).
    pub fn next_persistent(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        self.backoff.next().unwrap_or(self.policy.max_delay)
    }

    /// Attempts failed since the last reset.
    pub fn failures(&self) -> u32 {
        self.retries
    }

    pub fn reset(&mut self) {
        *self = self.policy.waits();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn seed_default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: ms(1000),
            max_delay: ms(60_000),
            backoff_multiplier: 2.0,
            jitter: false,
        }
    }

    #[test]
    fn waits_grow_by_the_multiplier_up_to_the_maximum() {
        let mut w = RetryPolicy {
            max_attempts: 5,
            initial_delay: ms(500),
            max_delay: ms(1000),
            backoff_multiplier: 1.5,
            jitter: false,
        }
        .waits();
        let got: Vec<_> = (0..5).map(|_| w.next_persistent()).collect();
        assert_eq!(got, vec![ms(500), ms(750), ms(1000), ms(1000), ms(1000)]);
    }

    #[test]
    fn three_attempts_mean_two_waits_then_none() {
        let mut w = seed_default().waits();
        assert_eq!(w.next_attempt(), Some(ms(1000)));
        assert_eq!(w.next_attempt(), Some(ms(2000)));
        assert_eq!(w.next_attempt(), None);
        assert_eq!(w.failures(), 2);
    }

    #[test]
    fn a_reset_starts_the_series_again() {
        let mut w = seed_default().waits();
        w.next_persistent();
        w.next_persistent();
        w.reset();
        assert_eq!(w.next_attempt(), Some(ms(1000)));
    }

    #[test]
    fn jitter_lengthens_each_wait_by_at_most_itself() {
        let p = RetryPolicy {
            jitter: true,
            ..seed_default()
        };
        let mut w = p.waits();
        for base in [1000, 2000, 4000, 8000] {
            let d = w.next_persistent();
            assert!(d >= ms(base) && d <= ms(2 * base), "{d:?} for {base} ms");
        }
    }

    #[test]
    fn the_wait_after_n_attempts_follows_the_same_series() {
        let p = seed_default();
        assert_eq!(p.wait_after(0), ms(1000));
        assert_eq!(p.wait_after(1), ms(1000));
        assert_eq!(p.wait_after(2), ms(2000));
        assert_eq!(p.wait_after(4), ms(8000));
        assert_eq!(p.wait_after(100), ms(60_000));
    }

    #[test]
    fn values_that_cannot_work_are_named() {
        let zero = RetryPolicy {
            max_attempts: 0,
            ..seed_default()
        };
        assert!(zero.problem().is_some_and(|p| p.contains("max_attempts")));
        let shrinking = RetryPolicy {
            backoff_multiplier: 0.5,
            ..seed_default()
        };
        assert!(shrinking
            .problem()
            .is_some_and(|p| p.contains("backoff_multiplier")));
        assert_eq!(seed_default().problem(), None);
    }
}
