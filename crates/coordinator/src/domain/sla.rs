//! SLA clocks in general: every clock's definition (owner, default duration, severity,
//! what meets it), the effective durations after configuration and time scale, and
//! when a clock warns. The workflows' clocks are in their definitions, the
//! emergency's in [`super::emergency::CLOCKS`]; this module looks across both.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use protocol::severity::Severity;

/// Owner of a clock that belongs to one agent (an emergency acknowledgment): the role
/// is that agent's type, filled in when the clock is armed.
pub const OWNER_SUBJECT_AGENT: &str = "";

/// One SLA clock.
#[derive(Debug)]
pub struct ClockDef {
    pub name: &'static str,
    /// The role that must meet it (or [`OWNER_SUBJECT_AGENT`]).
    pub owner: &'static str,
    pub default: Duration,
    pub severity: Severity,
    /// Message types (from the owner) that meet the clock.
    pub met_by: &'static [&'static str],
}

/// An armed clock as the state machines see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmedClock {
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    /// The agent a per-agent clock is about (emergency acknowledgments); else `None`.
    pub subject_agent_id: Option<String>,
}

/// What kind of deadline the timer service fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeadlineKind {
    /// An armed clock's `due_at`: it breaches.
    Breach,
    /// An armed clock's `warn_at`: its owner is warned.
    Warning,
    /// An unacknowledged escalation's `next_level_at`: it is raised one level up.
    Ladder,
}

impl DeadlineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::Breach => "breach",
            DeadlineKind::Warning => "warning",
            DeadlineKind::Ladder => "ladder",
        }
    }

    pub fn parse(s: &str) -> Option<DeadlineKind> {
        [
            DeadlineKind::Breach,
            DeadlineKind::Warning,
            DeadlineKind::Ladder,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A moment something must happen to a row (a clock or an escalation). Ordered by time
/// first, so a min-heap of deadlines pops the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    pub at: DateTime<Utc>,
    pub kind: DeadlineKind,
    /// `sla_clocks.id` (breach, warning) or `escalations.id` (ladder).
    pub id: i64,
}

/// Effective clock durations and severities (defaults, overrides, time scale applied).
#[derive(Debug, Clone)]
pub struct ClockDurations {
    durations: HashMap<&'static str, Duration>,
    severities: HashMap<&'static str, Severity>,
    /// Fraction of a clock's duration after which its owner is warned.
    pub warning_fraction: f64,
}

impl ClockDurations {
    /// The clocks `defs` with their defaults, `overrides` (real time) replacing some,
    /// all multiplied by `time_scale`.
    pub fn new(
        defs: impl IntoIterator<Item = &'static ClockDef>,
        time_scale: f64,
        overrides: &HashMap<String, Duration>,
    ) -> Self {
        let defs: Vec<&'static ClockDef> = defs.into_iter().collect();
        let durations = defs
            .iter()
            .map(|c| {
                let base = overrides.get(c.name).copied().unwrap_or(c.default);
                (c.name, base.mul_f64(time_scale))
            })
            .collect();
        let severities = defs.iter().map(|c| (c.name, c.severity)).collect();
        ClockDurations {
            durations,
            severities,
            warning_fraction: 0.8,
        }
    }

    pub fn with_severities(mut self, overrides: &HashMap<String, Severity>) -> Self {
        for (name, sev) in overrides {
            if let Some(slot) = self.severities.get_mut(name.as_str()) {
                *slot = *sev;
            }
        }
        self
    }

    pub fn with_warning_fraction(mut self, fraction: f64) -> Self {
        self.warning_fraction = fraction;
        self
    }

    /// A known clock's effective duration (zero for a clock it was not given).
    pub fn get(&self, clock: &str) -> Duration {
        self.durations.get(clock).copied().unwrap_or_default()
    }

    pub fn severity(&self, clock: &str) -> Severity {
        self.severities
            .get(clock)
            .copied()
            .unwrap_or(Severity::High)
    }

    /// `now + duration`, saturating.
    pub fn due_at(&self, clock: &str, now: DateTime<Utc>) -> DateTime<Utc> {
        add(now, self.get(clock))
    }

    /// When an armed clock warns its owner.
    pub fn warn_at(&self, armed_at: DateTime<Utc>, due_at: DateTime<Utc>) -> DateTime<Utc> {
        let span = (due_at - armed_at).to_std().unwrap_or_default();
        add(armed_at, span.mul_f64(self.warning_fraction))
    }
}

/// `t + d`, saturating at the largest representable time.
pub fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
