//! The communication-health report's verdict (the source documents'
//! `generate_communication_health_report`: `healthy`, `degraded` or `critical`). Each
//! rule names a measure and the values past which it is degraded and critical; the
//! overall health is the worst rule's, and the report writes out every rule with the
//! value it judged, so whoever reads it sees why. A measure with no data (nothing sent,
//! no clock closed in the window) judges nothing.

use serde::Serialize;

/// Which side of a threshold is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Worse {
    Below,
    Above,
}

/// One rule of the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rule {
    pub measure: &'static str,
    pub worse: Worse,
    pub degraded: f64,
    pub critical: f64,
    /// What the measure is, for the text report.
    pub what: &'static str,
}

/// The rules, in the order the report lists them.
pub const RULES: &[Rule] = &[
    Rule {
        measure: "delivery_success_rate",
        worse: Worse::Below,
        degraded: 0.999,
        critical: 0.99,
        what: "messages the coordinator sent that the broker took (first try or after retries) / all it sent, pending ones aside",
    },
    Rule {
        measure: "retry_rate",
        worse: Worse::Above,
        degraded: 0.05,
        critical: 0.20,
        what: "messages the coordinator sent that needed more than one try / all it delivered",
    },
    Rule {
        measure: "p95_delivery_seconds",
        worse: Worse::Above,
        degraded: 1.0,
        critical: 10.0,
        what: "95th percentile of a sent message's commit → the broker's confirm, seconds",
    },
    Rule {
        measure: "handoff_success_rate",
        worse: Worse::Below,
        degraded: 0.99,
        critical: 0.95,
        what: "tasks delivered to their role's queue / tasks sent, every workflow kind",
    },
    Rule {
        measure: "sla_compliance",
        worse: Worse::Below,
        degraded: 0.95,
        critical: 0.80,
        what: "SLA clocks met on time / clocks closed (met or breached), every role",
    },
    Rule {
        measure: "protocol_adherence",
        worse: Worse::Below,
        degraded: 0.99,
        critical: 0.90,
        what: "agents' messages accepted / all received, every orchestrator",
    },
];

/// The overall health, and what one rule found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Critical => "critical",
        }
    }
}

/// A rule applied to its measure's value (`None`: no data, judged nothing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    #[serde(flatten)]
    pub rule: Rule,
    pub value: Option<f64>,
    pub verdict: Option<Health>,
}

impl Judged {
    /// The rule as a sentence: "protocol_adherence 0.950: degraded (below 0.99;
    /// critical below 0.9)".
    pub fn sentence(&self) -> String {
        let side = match self.rule.worse {
            Worse::Below => "below",
            Worse::Above => "above",
        };
        let thresholds = format!(
            "degraded {side} {}, critical {side} {}",
            self.rule.degraded, self.rule.critical
        );
        match (self.value, self.verdict) {
            (Some(v), Some(h)) => format!(
                "{} = {v:.3}: {} ({thresholds})",
                self.rule.measure,
                h.as_str()
            ),
            _ => format!("{}: no data ({thresholds})", self.rule.measure),
        }
    }
}

/// Judges each rule against `value_of` its measure; the worst verdict is the health.
pub fn judge(value_of: impl Fn(&str) -> Option<f64>) -> (Health, Vec<Judged>) {
    let judged: Vec<Judged> = RULES
        .iter()
        .map(|rule| {
            let value = value_of(rule.measure).filter(|v| v.is_finite());
            let past = |threshold: f64, v: f64| match rule.worse {
                Worse::Below => v < threshold,
                Worse::Above => v > threshold,
            };
            let verdict = value.map(|v| {
                if past(rule.critical, v) {
                    Health::Critical
                } else if past(rule.degraded, v) {
                    Health::Degraded
                } else {
                    Health::Healthy
                }
            });
            Judged {
                rule: *rule,
                value,
                verdict,
            }
        })
        .collect();
    let health = judged
        .iter()
        .filter_map(|j| j.verdict)
        .max()
        .unwrap_or(Health::Healthy);
    (health, judged)
}

/// `part / whole`, none when `whole` is zero.
pub fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<'a>(pairs: &'a [(&'a str, f64)]) -> impl Fn(&str) -> Option<f64> + 'a {
        move |m| pairs.iter().find(|(k, _)| *k == m).map(|(_, v)| *v)
    }

    #[test]
    fn all_good_is_healthy_and_no_data_judges_nothing() {
        let (health, judged) = judge(with(&[("protocol_adherence", 1.0), ("retry_rate", 0.0)]));
        assert_eq!(health, Health::Healthy);
        let adherence = judged
            .iter()
            .find(|j| j.rule.measure == "protocol_adherence");
        assert_eq!(adherence.and_then(|j| j.verdict), Some(Health::Healthy));
        let sla = judged.iter().find(|j| j.rule.measure == "sla_compliance");
        assert_eq!(sla.and_then(|j| j.verdict), None);
        assert_eq!(judge(|_| None).0, Health::Healthy);
    }

    #[test]
    fn the_worst_rule_decides_on_each_side_of_its_thresholds() {
        assert_eq!(judge(with(&[("sla_compliance", 0.95)])).0, Health::Healthy);
        assert_eq!(judge(with(&[("sla_compliance", 0.94)])).0, Health::Degraded);
        assert_eq!(judge(with(&[("sla_compliance", 0.79)])).0, Health::Critical);
        assert_eq!(
            judge(with(&[("p95_delivery_seconds", 1.5)])).0,
            Health::Degraded
        );
        assert_eq!(
            judge(with(&[("p95_delivery_seconds", 1.5), ("retry_rate", 0.5)])).0,
            Health::Critical
        );
    }

    #[test]
    fn each_rule_is_written_out_with_its_value_and_thresholds() {
        let (_, judged) = judge(with(&[("protocol_adherence", 0.95)]));
        let sentences: Vec<String> = judged.iter().map(Judged::sentence).collect();
        assert!(
            sentences.contains(
                &"protocol_adherence = 0.950: degraded (degraded below 0.99, critical below 0.9)"
                    .to_string()
            ),
            "{sentences:#?}"
        );
        assert!(
            sentences.contains(
                &"retry_rate: no data (degraded above 0.05, critical above 0.2)".to_string()
            ),
            "{sentences:#?}"
        );
    }

    #[test]
    fn a_ratio_of_nothing_is_no_data() {
        assert_eq!(ratio(0, 0), None);
        assert_eq!(ratio(1, 4), Some(0.25));
    }
}
