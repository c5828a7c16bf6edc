//! A clock a test moves by hand, for the service's injected `Clock`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coordinator::clock::Clock;

/// A clock that stands still until it is moved: for tests that step time.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn starting_at(t: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(t)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = coordinator::domain::sla::add(*t, d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("time");
        let c = ManualClock::starting_at(t0);
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(90));
        assert_eq!(
            c.now(),
            "2026-01-01T00:01:30Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
        );
        c.set(t0);
        assert_eq!(c.now(), t0);
    }
}
