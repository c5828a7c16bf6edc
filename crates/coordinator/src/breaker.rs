//! A circuit breaker, as pure logic: the caller passes the time, so tests drive it with
//! an injected clock. The service keeps one around PostgreSQL and one around publishing
//! ([`crate::service::runtime::Breakers`]).
//!
//! ```text
//!   closed ──(failure_threshold failures, none more than monitoring_period apart
//!             from the first, no success between)──▶ open
//!   open ──(open_timeout passed)──▶ half-open: work is let through again
//!   half-open ──(success_threshold successes)──▶ closed
//!   half-open ──(a failure)──▶ open (for another open_timeout)
//! ```
//!
//! A success while closed clears the count: with several batches at once, one
//! collision (a deadlock, a cancelled statement) between thousands of commits must not
//! stop the service; an outage fails every attempt in a row.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The seed's settings by default: 5 failures open it, 3 successes close it, 60 s open,
/// 30 s monitoring period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub open_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub monitoring_period: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            success_threshold: 3,
            open_timeout: Duration::from_secs(60),
            monitoring_period: Duration::from_secs(30),
        }
    }
}

/// What the breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The value of the state metric: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Closed { failures: VecDeque<Instant> },
    Open { until: Instant },
    HalfOpen { successes: u32 },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Inner,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Inner::Closed {
                failures: VecDeque::new(),
            },
        }
    }

    /// The state at `now` (an open breaker whose timeout passed is half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if let Inner::Open { until } = self.inner {
            if now >= until {
                self.inner = Inner::HalfOpen { successes: 0 };
            }
        }
        match self.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// How long until work may be tried again: `None` when it may be now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        match (self.state(now), &self.inner) {
            (State::Open, Inner::Open { until }) => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    pub fn success(&mut self, now: Instant) {
        let threshold = self.settings.success_threshold;
        match self.state(now) {
            State::Closed => {
                self.inner = Inner::Closed {
                    failures: VecDeque::new(),
                }
            }
            State::HalfOpen => {
                if let Inner::HalfOpen { successes } = &mut self.inner {
                    *successes += 1;
                    if *successes >= threshold {
                        self.inner = Inner::Closed {
                            failures: VecDeque::new(),
                        };
                    }
                }
            }
            // Work that started before the breaker opened: it says nothing of now.
            State::Open => {}
        }
    }

    pub fn failure(&mut self, now: Instant) {
        let open = Inner::Open {
            until: now + self.settings.open_timeout,
        };
        match self.state(now) {
            State::Closed => {
                let period = self.settings.monitoring_period;
                let threshold = self.settings.failure_threshold.max(1) as usize;
                if let Inner::Closed { failures } = &mut self.inner {
                    while failures
                        .front()
                        .is_some_and(|t| now.saturating_duration_since(*t) > period)
                    {
                        failures.pop_front();
                    }
                    failures.push_back(now);
                    if failures.len() >= threshold {
                        self.inner = open;
                    }
                }
            }
            State::HalfOpen => self.inner = open,
            State::Open => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> (Breaker, Instant) {
        (Breaker::new(BreakerSettings::default()), Instant::now())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn five_failures_in_a_row_open_it_and_it_lets_nothing_through_for_sixty_seconds() {
        let (mut b, t0) = seed();
        for i in 0..4 {
            b.failure(t0 + secs(i));
            assert_eq!(
                b.state(t0 + secs(i)),
                State::Closed,
                "after {} failures",
                i + 1
            );
        }
        b.failure(t0 + secs(4));
        assert_eq!(b.state(t0 + secs(4)), State::Open);
        assert_eq!(b.wait(t0 + secs(4)), Some(secs(60)));
        assert_eq!(b.wait(t0 + secs(34)), Some(secs(30)));
        assert_eq!(b.state(t0 + secs(63)), State::Open);
        assert_eq!(b.state(t0 + secs(64)), State::HalfOpen);
        assert_eq!(b.wait(t0 + secs(64)), None);
    }

    #[test]
    fn failures_further_apart_than_the_monitoring_period_do_not_add_up() {
        let (mut b, t0) = seed();
        for i in 0..10 {
            b.failure(t0 + secs(10 * i));
        }
        // Never more than four within any 30 s.
        assert_eq!(b.state(t0 + secs(90)), State::Closed);
    }

    #[test]
    fn a_success_while_closed_clears_the_count() {
        let (mut b, t0) = seed();
        for i in 0..4 {
            b.failure(t0 + secs(i));
        }
        b.success(t0 + secs(4));
        for i in 5..9 {
            b.failure(t0 + secs(i));
        }
        assert_eq!(b.state(t0 + secs(9)), State::Closed);
        b.failure(t0 + secs(9));
        assert_eq!(b.state(t0 + secs(9)), State::Open);
    }

    #[test]
    fn three_successes_when_half_open_close_it() {
        let (mut b, t0) = seed();
        for _ in 0..5 {
            b.failure(t0);
        }
        let t = t0 + secs(61);
        assert_eq!(b.state(t), State::HalfOpen);
        b.success(t);
        b.success(t);
        assert_eq!(b.state(t), State::HalfOpen);
        b.success(t);
        assert_eq!(b.state(t), State::Closed);
    }

    #[test]
    fn a_failure_when_half_open_opens_it_again_for_a_whole_timeout() {
        let (mut b, t0) = seed();
        for _ in 0..5 {
            b.failure(t0);
        }
        let t = t0 + secs(61);
        b.success(t);
        b.failure(t);
        assert_eq!(b.state(t), State::Open);
        assert_eq!(b.wait(t), Some(secs(60)));
    }

    #[test]
    fn outcomes_of_work_started_before_it_opened_change_nothing_while_open() {
        let (mut b, t0) = seed();
        for _ in 0..5 {
            b.failure(t0);
        }
        b.success(t0 + secs(1));
        b.failure(t0 + secs(2));
        assert_eq!(b.wait(t0 + secs(2)), Some(secs(58)));
    }

    #[test]
    fn settings_are_the_seeds_by_default() {
        let s = BreakerSettings::default();
        assert_eq!(
            (
                s.failure_threshold,
                s.success_threshold,
                s.open_timeout,
                s.monitoring_period
            ),
            (5, 3, secs(60), secs(30))
        );
    }
}
