//! Every SLA clock the service knows: the workflows' (their definitions) and the
//! emergency's, looked up by name, and their effective durations.

use std::collections::HashMap;
use std::time::Duration;

use super::definition::Definitions;
use super::emergency;
use super::sla::{ClockDef, ClockDurations};

/// Every clock the service knows.
pub fn all(workflows: &Definitions) -> impl Iterator<Item = &'static ClockDef> + '_ {
    workflows.clocks().chain(emergency::CLOCKS.iter())
}

/// The clock named `name`.
pub fn def(workflows: &Definitions, name: &str) -> Option<&'static ClockDef> {
    all(workflows).find(|c| c.name == name)
}

/// Every clock's duration: its default or its override, times `time_scale`.
pub fn durations(
    workflows: &Definitions,
    time_scale: f64,
    overrides: &HashMap<String, Duration>,
) -> ClockDurations {
    ClockDurations::new(all(workflows), time_scale, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use protocol::severity::Severity;

    fn workflows() -> Definitions {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
        crate::settings::Settings::load_from(&dir, None)
            .expect("default settings")
            .workflows
    }

    fn durations(time_scale: f64, overrides: &HashMap<String, Duration>) -> ClockDurations {
        super::durations(&workflows(), time_scale, overrides)
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn warning_is_at_the_configured_fraction_of_the_duration() {
        let d = durations(1.0, &HashMap::new());
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
        let w = workflows();
        let mut names: Vec<&str> = all(&w).map(|c| c.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "clock names are unique");
        let d = durations(1.0, &HashMap::new());
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
        let d = durations(0.01, &HashMap::new());
        assert_eq!(d.get("acknowledgment"), Duration::from_secs(3));
        assert_eq!(d.get("status_update"), Duration::from_secs(18));
    }
}
