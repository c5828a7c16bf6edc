//! The time the service runs on, injected: the real clock in production, a clock a
//! test moves by hand. Everything that decides by time (the timers, the relay's leases,
//! housekeeping's retention, the dead-letter escalator, the batch pipeline) asks its
//! [`Clock`]; SQL guards take that time as a parameter instead of calling `now()`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// Tells the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared by the running parts.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}
