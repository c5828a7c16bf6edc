//! Escalation severity, as it appears in routing keys and payloads.

/// Escalation severity, as used in `escalation.{severity}.{target}`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The `header.priority` of a message about something this severe.
    pub fn priority(self) -> crate::envelope::Priority {
        use crate::envelope::Priority;
        match self {
            Severity::Low => Priority::Low,
            Severity::Medium => Priority::Normal,
            Severity::High => Priority::High,
            Severity::Critical => Priority::Critical,
        }
    }
}
