//! The escalation ladder: who is paged at each level and how long each level waits for
//! an acknowledgement before the next. Pure; the timer service fires the steps.
//!
//! Levels are names: `owner` means the escalation's owner role; anything else
//! (`oncall`, `management`) is used as it is in the routing key
//! `escalation.{severity}.{target}`. After the last level the last level repeats.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::sla::{add, Severity};

/// The level name that stands for the escalation's owner role.
pub const OWNER: &str = "owner";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    levels: Vec<String>,
    waits: Vec<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    #[error("a ladder needs at least one level")]
    Empty,
    #[error("{levels} levels but {waits} waits: give one wait per level")]
    Mismatch { levels: usize, waits: usize },
    #[error("a wait of zero would page in a tight loop")]
    ZeroWait,
}

/// One raise of an escalation: its level, whom it pages, and when the next raise is due
/// if nobody acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub level: i32,
    pub target: String,
    pub next_at: DateTime<Utc>,
}

impl Ladder {
    pub fn new(levels: Vec<String>, waits: Vec<Duration>) -> Result<Ladder, LadderError> {
        if levels.is_empty() {
            return Err(LadderError::Empty);
        }
        if levels.len() != waits.len() {
            return Err(LadderError::Mismatch {
                levels: levels.len(),
                waits: waits.len(),
            });
        }
        if waits.iter().any(Duration::is_zero) {
            return Err(LadderError::ZeroWait);
        }
        Ok(Ladder { levels, waits })
    }

    /// Every wait multiplied by `time_scale` (at least a millisecond).
    pub fn scaled(mut self, time_scale: f64) -> Ladder {
        for w in &mut self.waits {
            *w = w.mul_f64(time_scale).max(Duration::from_millis(1));
        }
        self
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    fn index(&self, level: i32) -> usize {
        usize::try_from(level.max(1) - 1)
            .unwrap_or(0)
            .min(self.levels.len() - 1)
    }

    /// Whom `level` (1-based) pages.
    pub fn target(&self, level: i32, owner_role: &str) -> String {
        let name = &self.levels[self.index(level)];
        if name == OWNER {
            owner_role.to_string()
        } else {
            name.clone()
        }
    }

    pub fn wait(&self, level: i32) -> Duration {
        self.waits[self.index(level)]
    }

    /// The first raise, at level 1.
    pub fn first(&self, owner_role: &str, now: DateTime<Utc>) -> Step {
        self.step(1, owner_role, now)
    }

    /// The raise after `level` went unacknowledged: one level up, or the last again.
    pub fn next(&self, level: i32, owner_role: &str, now: DateTime<Utc>) -> Step {
        let next = (level + 1).min(self.levels.len() as i32);
        self.step(next, owner_role, now)
    }

    fn step(&self, level: i32, owner_role: &str, now: DateTime<Utc>) -> Step {
        Step {
            level,
            target: self.target(level, owner_role),
            next_at: add(now, self.wait(level)),
        }
    }
}

/// The configured ladders: per clock, else per severity, else the default.
#[derive(Debug, Clone)]
pub struct Ladders {
    pub default: Ladder,
    pub by_severity: HashMap<Severity, Ladder>,
    pub by_clock: HashMap<String, Ladder>,
}

impl Ladders {
    pub fn for_escalation(&self, clock: &str, severity: Severity) -> &Ladder {
        self.by_clock
            .get(clock)
            .or_else(|| self.by_severity.get(&severity))
            .unwrap_or(&self.default)
    }

    pub fn scaled(self, time_scale: f64) -> Ladders {
        Ladders {
            default: self.default.scaled(time_scale),
            by_severity: self
                .by_severity
                .into_iter()
                .map(|(k, v)| (k, v.scaled(time_scale)))
                .collect(),
            by_clock: self
                .by_clock
                .into_iter()
                .map(|(k, v)| (k, v.scaled(time_scale)))
                .collect(),
        }
    }
}

impl Default for Ladders {
    /// owner → oncall → management, 30 min, 30 min, 1 h.
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Ladders {
            default: Ladder {
                levels: vec![OWNER.into(), "oncall".into(), "management".into()],
                waits: vec![m(30), m(30), m(60)],
            },
            by_severity: HashMap::new(),
            by_clock: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().expect("time")
    }

    fn mins(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    #[test]
    fn the_ladder_climbs_owner_oncall_management_then_repeats_the_last_level() {
        let l = Ladders::default().default;
        let s1 = l.first("qa-director", now());
        assert_eq!((s1.level, s1.target.as_str()), (1, "qa-director"));
        assert_eq!(s1.next_at, add(now(), mins(30)));
        let s2 = l.next(s1.level, "qa-director", s1.next_at);
        assert_eq!((s2.level, s2.target.as_str()), (2, "oncall"));
        let s3 = l.next(s2.level, "qa-director", s2.next_at);
        assert_eq!((s3.level, s3.target.as_str()), (3, "management"));
        assert_eq!(s3.next_at, add(s2.next_at, mins(60)));
        let s4 = l.next(s3.level, "qa-director", s3.next_at);
        assert_eq!(
            (s4.level, s4.target.as_str()),
            (3, "management"),
            "the last level repeats"
        );
        assert_eq!(s4.next_at, add(s3.next_at, mins(60)));
    }

    #[test]
    fn a_clock_ladder_beats_a_severity_ladder_beats_the_default() {
        let mut ladders = Ladders::default();
        let crit = Ladder::new(vec!["oncall".into()], vec![mins(5)]).expect("valid");
        let clock =
            Ladder::new(vec![OWNER.into(), "cto".into()], vec![mins(1), mins(2)]).expect("valid");
        ladders.by_severity.insert(Severity::Critical, crit.clone());
        ladders
            .by_clock
            .insert("acknowledgment".into(), clock.clone());
        assert_eq!(
            ladders.for_escalation("acknowledgment", Severity::Critical),
            &clock
        );
        assert_eq!(
            ladders.for_escalation("testing_start", Severity::Critical),
            &crit
        );
        assert_eq!(
            ladders.for_escalation("testing_start", Severity::High),
            &ladders.default
        );
    }

    #[test]
    fn bad_ladders_are_refused_and_scaling_shrinks_waits() {
        assert_eq!(Ladder::new(vec![], vec![]), Err(LadderError::Empty));
        assert!(matches!(
            Ladder::new(vec![OWNER.into()], vec![mins(1), mins(2)]),
            Err(LadderError::Mismatch { .. })
        ));
        assert_eq!(
            Ladder::new(vec![OWNER.into()], vec![Duration::ZERO]),
            Err(LadderError::ZeroWait)
        );
        let l = Ladders::default().scaled(0.001).default;
        assert_eq!(l.wait(1), Duration::from_millis(1800));
        assert_eq!(
            l.wait(99),
            Duration::from_millis(3600),
            "levels past the end use the last"
        );
    }
}
