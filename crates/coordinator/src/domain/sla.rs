//! SLA clocks in general: every clock's definition (owner, default duration, severity,
//! what meets it), the effective durations after configuration and time scale, and
//! when a clock warns. The workflow's clocks are in [`super::workflow::CLOCKS`], the
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

/// Every clock the service knows.
pub fn all_clocks() -> impl Iterator<Item = &'static ClockDef> {
    super::workflow::CLOCKS
        .iter()
        .chain(super::emergency::CLOCKS.iter())
}

pub fn clock_def(name: &str) -> Option<&'static ClockDef> {
    all_clocks().find(|c| c.name == name)
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
    /// The defaults, with `overrides` (real time) replacing some, all multiplied by
    /// `time_scale`.
    pub fn new(time_scale: f64, overrides: &HashMap<String, Duration>) -> Self {
        let durations = all_clocks()
            .map(|c| {
                let base = overrides.get(c.name).copied().unwrap_or(c.default);
                (c.name, base.mul_f64(time_scale))
            })
            .collect();
        let severities = all_clocks().map(|c| (c.name, c.severity)).collect();
        ClockDurations {
            durations,
            severities,
            warning_fraction: 0.8,
        }
    }

    pub fn with_severities(mut self, overrides: &HashMap<String, Severity>) -> Self {
        for (name, sev) in overrides {
            if let Some(def) = clock_def(name) {
                self.severities.insert(def.name, *sev);
            }
        }
        self
    }

    pub fn with_warning_fraction(mut self, fraction: f64) -> Self {
        self.warning_fraction = fraction;
        self
    }

    pub fn get(&self, clock: &str) -> Duration {
        self.durations
            .get(clock)
            .copied()
            .or_else(|| clock_def(clock).map(|c| c.default))
            .unwrap_or_default()
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

impl Default for ClockDurations {
    fn default() -> Self {
        ClockDurations::new(1.0, &HashMap::new())
    }
}

/// `t + d`, saturating at the largest representable time.
pub fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn warning_is_at_the_configured_fraction_of_the_duration() {
        let d = ClockDurations::default();
        assert_eq!(
            d.warn_at(t("2026-01-01T00:00:00Z"), t("2026-01-01T10:00:00Z")),
            t("2026-01-01T08:00:00Z")
        );
        let d = d.with_warning_fraction(0.5);
        assert_eq!(
            d.warn_at(t("2026-01-01T00:00:00Z"), t("2026-01-01T10:00:00Z")),
            t("2026-01-01T05:00:00Z")
        );
    }

    #[test]
    fn every_clock_has_one_definition_and_severities_can_be_overridden() {
        let mut names: Vec<&str> = all_clocks().map(|c| c.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "clock names are unique");
        let d = ClockDurations::default();
        assert_eq!(d.severity("testing_start"), Severity::High);
        assert_eq!(d.severity("acknowledgment"), Severity::Critical);
        let mut o = HashMap::new();
        o.insert("testing_start".to_string(), Severity::Low);
        assert_eq!(
            d.with_severities(&o).severity("testing_start"),
            Severity::Low
        );
    }

    #[test]
    fn emergency_clocks_follow_the_time_scale_too() {
        let d = ClockDurations::new(0.01, &HashMap::new());
        assert_eq!(d.get("acknowledgment"), Duration::from_secs(3));
        assert_eq!(d.get("status_update"), Duration::from_secs(18));
    }
}
