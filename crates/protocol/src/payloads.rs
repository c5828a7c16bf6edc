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
pub struct MessageRejected {
    /// Absent (null) when the message carried no readable id.
    pub rejected_message_id: Option<String>,
    /// One of the rejection reasons of docs/protocol.md section 8.
    pub reason: String,
    /// What was wrong and where, for a person.
    pub detail: String,
}

/// `rate_limited`, to an agent over its rate limit: its further messages are delayed
/// (not dropped) and applied, in order, as its allowance refills. Sent at most once a
/// minute while the agent stays over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RateLimited {
    /// The message that found the agent over its limit (the first held back).
    pub held_message_id: String,
    /// The agent's allowance, messages a minute (for its role, or the emergency one).
    pub limit_per_minute: u32,
    /// Roughly when the next message fits in the allowance, in milliseconds from when
    /// this notice was written.
    pub retry_after_ms: u64,
}

/// `message_set_aside`, to on-call: a message retried alone kept failing and is in
/// `dead_letters` as `processing_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
pub struct DeadLettersUnresolved {
    pub count: usize,
    pub dead_letters: Vec<UnresolvedDeadLetter>,
    pub hint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnresolvedDeadLetter {
    pub id: i64,
    pub reason: String,
    pub message_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// `heartbeat`, from every agent: how it is doing (the source documents' fields). Every
/// field is optional and more may be sent; the coordinator keeps the ones it knows in
/// `agents` and ignores a field of another type than this says (a heartbeat is never
/// refused for its data).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// `healthy`, `degraded`, `overloaded`, … (at most 64 bytes; `status` is read when
    /// there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub agent_status: Option<String>,
    /// How busy it is, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub load: Option<f64>,
    /// How much more it can take, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub available_capacity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tasks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_tasks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
    /// What it can do (at most 64 names of at most 128 bytes each are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// `cpu_percent`, `memory_percent`, `disk_percent`, … (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_usage: Option<std::collections::BTreeMap<String, f64>>,
}

/// `agent_stale`, to the owner of a role (`escalation.high.{role}`): one of its agents
/// sent no heartbeat for `heartbeats.missed` intervals. Once until it sends one again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStale {
    pub agent_id: String,
    pub agent_type: String,
    pub last_heartbeat_at: DateTime<Utc>,
    pub stale_at: DateTime<Utc>,
    /// `heartbeats.interval`, in seconds, and how many were missed.
    pub heartbeat_interval_seconds: f64,
    pub missed_heartbeats: u32,
    /// The role's other agents still live (0: nobody takes its tasks).
    pub live_agents_of_role: i64,
    pub hint: String,
}

/// `payload.metadata` of a task (and of `feature_deployed`); its `payload.data` is the
/// data of the message that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskMetadata {
    pub workflow_id: String,
    /// The workflow's state once the causing message was applied.
    pub state: String,
    pub round: i32,
    pub caused_by: CausedBy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CausedBy {
    pub message_type: String,
    pub agent_id: String,
}

/// `payload.metadata` of the `emergency_alert` the coordinator broadcasts; its
/// `payload.data` is the alert's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// At most `limits.max_key_bytes` (255) bytes of UTF-8 (`maxLength` counts
    /// characters; the coordinator counts bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub epic_id: Option<String>,
    /// At most `limits.max_text_bytes` (8192) bytes of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub title: Option<String>,
    /// Read as `title` when there is none. At most 8192 bytes of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub epic_title: Option<String>,
    /// At most 8192 bytes of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub description: Option<String>,
}

/// `emergency_alert` from an agent or an operator; broadcast as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyAlert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Stored as the incident's title. At most 8192 bytes of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub description: Option<String>,
    /// The source documents' name for `description`, read when there is none. At most
    /// 8192 bytes of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub incident_description: Option<String>,
}

/// Every JSON Schema of the contract: its file name under `docs/schemas/`, and the
/// schema, generated from the types above and the envelope's.
pub fn schemas() -> Vec<(&'static str, Value)> {
    fn of<T: JsonSchema>() -> Value {
        let mut schema = to_value(&schemars::schema_for!(T));
        standard_formats_only(&mut schema);
        schema
    }
    vec![
        ("envelope.json", of::<crate::envelope::Envelope>()),
        ("data/sla_warning.json", of::<SlaWarning>()),
        ("data/sla_breached_notice.json", of::<SlaBreachedNotice>()),
        ("data/escalation.json", of::<Escalation>()),
        ("data/message_rejected.json", of::<MessageRejected>()),
        ("data/message_set_aside.json", of::<MessageSetAside>()),
        ("data/rate_limited.json", of::<RateLimited>()),
        (
            "data/message_undeliverable.json",
            of::<MessageUndeliverable>(),
        ),
        (
            "data/dead_letters_unresolved.json",
            of::<DeadLettersUnresolved>(),
        ),
        ("data/agent_stale.json", of::<AgentStale>()),
        ("data/heartbeat.json", of::<Heartbeat>()),
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

/// Which schema each message's `payload.data` and `payload.metadata` follow: (the
/// messages, as docs/protocol.md names them; the data schema; the metadata schema).
pub const DOCUMENTED: &[(&str, &str, Option<&str>)] = &[
    (
        "`requirements_ready` (product → coordinator)",
        "data/requirements_ready.json",
        None,
    ),
    (
        "`escalation_acknowledged` (any agent → coordinator)",
        "data/escalation_acknowledged.json",
        None,
    ),
    (
        "`emergency_alert` (any agent → coordinator; broadcast to everyone as it is)",
        "data/emergency_alert.json",
        Some("metadata/broadcast.json"),
    ),
    (
        "the tasks and notices of the shipped workflows: `requirements_handoff`, `feature_handoff`, `bug_report`, `clarification_request`, `release_handoff`, `feature_deployed`; `design_request`, `design_constraints`, `design_assets`, `design_delivered`, `brand_request`, `brand_assets_delivered`, `launch_request`, `insights_review` (the data of the message that caused them)",
        "data/free_form.json",
        Some("metadata/task.json"),
    ),
    ("`sla_warning` (to a clock's owner)", "data/sla_warning.json", None),
    (
        "`sla_breached` notice (to a clock's owner)",
        "data/sla_breached_notice.json",
        None,
    ),
    (
        "`sla_breached` and `escalation_raised` escalations (`escalation.{severity}.{target}`)",
        "data/escalation.json",
        None,
    ),
    (
        "`message_rejected` (to the sender)",
        "data/message_rejected.json",
        None,
    ),
    (
        "`rate_limited` (to the sender)",
        "data/rate_limited.json",
        None,
    ),
    (
        "`message_set_aside` (to on-call)",
        "data/message_set_aside.json",
        None,
    ),
    (
        "`message_undeliverable` (to on-call)",
        "data/message_undeliverable.json",
        None,
    ),
    (
        "`dead_letters_unresolved` (to management)",
        "data/dead_letters_unresolved.json",
        None,
    ),
    (
        "`heartbeat` (any agent → coordinator)",
        "data/heartbeat.json",
        None,
    ),
    (
        "`agent_stale` (to a role's owner)",
        "data/agent_stale.json",
        None,
    ),
];

/// The table of every payload's fields, as docs/protocol.md shows it (generated, so the
/// documentation and the types cannot disagree).
pub fn fields_table() -> String {
    let all = schemas();
    let fields = |file: &str| -> String {
        let Some((_, schema)) = all.iter().find(|(f, _)| *f == file) else {
            return String::new();
        };
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut optional: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| {
                p.keys()
                    .map(String::as_str)
                    .filter(|k| !required.contains(k))
                    .collect()
            })
            .unwrap_or_default();
        optional.sort_unstable();
        let mut out: Vec<String> = required.iter().map(|f| format!("`{f}`")).collect();
        out.extend(optional.iter().map(|f| format!("`{f}`?")));
        if out.is_empty() {
            "any object".to_string()
        } else {
            out.join(", ")
        }
    };
    let mut t = String::from(
        "| message | `payload.data` | its fields (`?`: may be absent) | `payload.metadata` |\n|---|---|---|---|\n",
    );
    for (messages, data, metadata) in DOCUMENTED {
        let meta = metadata.map_or_else(
            || "`{}`".to_string(),
            |m| format!("[{m}](schemas/{m}): {}", fields(m)),
        );
        t.push_str(&format!(
            "| {messages} | [{data}](schemas/{data}) | {} | {meta} |\n",
            fields(data)
        ));
    }
    t
}

/// The formats JSON Schema 2020-12 defines; schemars also writes `uint32`, `uint64`
/// and the like for unsigned integers, which strict validators refuse (the `minimum: 0`
/// it writes beside them says the same in standard terms).
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

fn standard_formats_only(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f))
            {
                o.remove("format");
            }
            o.values_mut().for_each(standard_formats_only);
        }
        Value::Array(a) => a.iter_mut().for_each(standard_formats_only),
        _ => {}
    }
}

/// The `payload.data` of a message whose content the coordinator does not read: any
/// JSON object, passed on as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Map<String, Value>);
