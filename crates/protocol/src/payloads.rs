//! The `payload.data` (and, where the contract defines it, `payload.metadata`) of the
//! messages the coordinator sends, and of the agent messages whose fields it reads.
//! The coordinator builds what it sends from these types, and the JSON Schemas in
//! `docs/schemas/` are generated from them (`tests/schemas.rs` fails when the two
//! drift), so the schemas say exactly what goes on the wire.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::severity::Severity;

/// A payload as the JSON value an envelope carries.
pub fn to_value<T: Serialize>(payload: &T) -> Value {
    // These types hold strings, numbers, timestamps and JSON values only: serialising
    // them cannot fail.
    serde_json::to_value(payload).unwrap_or(Value::Null)
}

/// `sla_warning`, to a clock's owner before its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SlaWarning {
    pub workflow_id: String,
    pub clock: String,
    pub owner_role: String,
    /// The agent a per-agent clock (an emergency acknowledgment) is about.
    pub agent_id: Option<String>,
    pub due_at: DateTime<Utc>,
    pub warned_at: DateTime<Utc>,
    pub remaining_seconds: f64,
}

/// `sla_breached` as a notice to the clock's owner (on `agent.direct`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SlaBreachedNotice {
    pub workflow_id: String,
    pub clock: String,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub due_at: DateTime<Utc>,
    pub breached_at: DateTime<Utc>,
    /// The escalation level raised, from 1.
    pub level: i32,
    /// Whom that level pages: a role, `oncall` or `management`.
    pub target: String,
    pub severity: Severity,
    pub escalation_id: i64,
}

/// `sla_breached` and `escalation_raised` on `agent.topic`
/// (`escalation.{severity}.{target}`), read from `oncall.escalations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Escalation {
    pub escalation_id: i64,
    /// The first escalation of the chain; acknowledging any id of it acknowledges all.
    pub chain_id: i64,
    pub workflow_id: String,
    /// The clock that breached, or the message type that raised the escalation.
    pub clock: String,
    pub owner_role: String,
    /// The agent it names (a blocked agent, a missed emergency acknowledgment).
    pub agent_id: Option<String>,
    pub level: i32,
    pub target: String,
    pub severity: Severity,
    pub raised_at: DateTime<Utc>,
    /// When it is raised one level up unless acknowledged.
    pub next_level_at: DateTime<Utc>,
    #[serde(flatten)]
    pub cause: EscalationCause,
}

/// What raised an escalation: a breach, a ladder step, or a message. Only the fields of
/// its kind are present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EscalationCause {
    /// A breach: the clock's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// A breach: when it was noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breached_at: Option<DateTime<Utc>>,
    /// A breach: the workflow's round the clock belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<i32>,
    /// A ladder step: the escalation nobody acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_escalation_id: Option<i64>,
    /// A ladder step: the level nobody acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacknowledged_level: Option<i32>,
    /// A message: its type (`engineering_blocked`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A message: its `payload.data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// `message_rejected`, to the sender of a message the coordinator could not act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MessageRejected {
    /// Absent (null) when the message carried no readable id.
    pub rejected_message_id: Option<String>,
    /// One of the rejection reasons of docs/protocol.md section 8.
    pub reason: String,
    /// What was wrong and where, for a person.
    pub detail: String,
}

/// `message_set_aside`, to on-call: a message retried alone kept failing and is in
/// `dead_letters` as `processing_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MessageSetAside {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub source_agent_id: Option<String>,
    pub reason: String,
    pub attempts: u32,
    pub error: String,
    pub set_aside_at: DateTime<Utc>,
}

/// `message_undeliverable`, to on-call: a message the coordinator sent was taken by no
/// queue for `outbox.undeliverable_after` and is given up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MessageUndeliverable {
    pub outbox_id: i64,
    pub message_id: String,
    pub message_type: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: String,
    pub attempts: i32,
    pub written_at: DateTime<Utc>,
    pub last_error: String,
    pub undeliverable_at: DateTime<Utc>,
}

/// `dead_letters_unresolved`, to management: dead letters nobody replayed or resolved
/// within `dead_letters.escalate_after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DeadLettersUnresolved {
    pub count: usize,
    pub dead_letters: Vec<UnresolvedDeadLetter>,
    pub hint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UnresolvedDeadLetter {
    pub id: i64,
    pub reason: String,
    pub message_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// `payload.metadata` of a task (and of `feature_deployed`); its `payload.data` is the
/// data of the message that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TaskMetadata {
    pub workflow_id: String,
    /// The workflow's state once the causing message was applied.
    pub state: String,
    pub round: i32,
    pub caused_by: CausedBy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CausedBy {
    pub message_type: String,
    pub agent_id: String,
}

/// `payload.metadata` of the `emergency_alert` the coordinator broadcasts; its
/// `payload.data` is the alert's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BroadcastMetadata {
    pub incident_id: String,
    pub raised_by: String,
}

/// `escalation_acknowledged` from an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EscalationAcknowledged {
    /// Any escalation id of the chain, of the message's workflow.
    pub escalation_id: i64,
}

/// `requirements_ready` from product: the requirements package. The coordinator stores
/// `epic_id` and `title` (or `epic_title`) and passes everything on in the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequirementsReady {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub epic_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub epic_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub description: Option<String>,
}

/// `emergency_alert` from an agent or an operator; broadcast as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyAlert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Stored as the incident's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub description: Option<String>,
}

/// Every JSON Schema of the contract: its file name under `docs/schemas/`, and the
/// schema, generated from the types above and the envelope's.
pub fn schemas() -> Vec<(&'static str, Value)> {
    fn of<T: JsonSchema>() -> Value {
        to_value(&schemars::schema_for!(T))
    }
    vec![
        ("envelope.json", of::<crate::envelope::Envelope>()),
        ("data/sla_warning.json", of::<SlaWarning>()),
        ("data/sla_breached_notice.json", of::<SlaBreachedNotice>()),
        ("data/escalation.json", of::<Escalation>()),
        ("data/message_rejected.json", of::<MessageRejected>()),
        ("data/message_set_aside.json", of::<MessageSetAside>()),
        (
            "data/message_undeliverable.json",
            of::<MessageUndeliverable>(),
        ),
        (
            "data/dead_letters_unresolved.json",
            of::<DeadLettersUnresolved>(),
        ),
        (
            "data/escalation_acknowledged.json",
            of::<EscalationAcknowledged>(),
        ),
        ("data/requirements_ready.json", of::<RequirementsReady>()),
        ("data/emergency_alert.json", of::<EmergencyAlert>()),
        ("data/free_form.json", of::<FreeForm>()),
        ("metadata/task.json", of::<TaskMetadata>()),
        ("metadata/broadcast.json", of::<BroadcastMetadata>()),
    ]
}

/// The `payload.data` of a message whose content the coordinator does not read: any
/// JSON object, passed on as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Map<String, Value>);
