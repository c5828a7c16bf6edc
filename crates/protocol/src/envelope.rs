//! The wire envelope of docs/protocol.md section 3 and the validation of an inbound delivery.
//!
//! Validation is a pipeline of pure checks, in order: [`parse`] (JSON and required
//! fields), [`check_properties`] (AMQP properties and routing key agree with the
//! header), [`check_catalog`] (known role, known message type, the role may send it) and
//! [`check_fresh`] (not expired). Checks that need I/O (is the agent registered; later,
//! signatures and replay windows) run after these in the processor. Every check returns
//! a [`Rejected`] that names the field at fault.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{Catalog, Permission};
use crate::reject::{Reason, Rejected};

pub use crate::names::COORDINATOR_ID;
pub const CONTENT_TYPE: &str = "application/json";
/// A JSON Schema pattern: at least one character that is neither whitespace nor
/// U+0000, and no U+0000 (the service checks the same).
const NON_BLANK: &str = r"^[^\x00]*[^\s\x00][^\x00]*$";
/// A JSON Schema pattern for a word of a routing key: [`NON_BLANK`] without `.`, `*`
/// or `#`.
const ROUTING_WORD: &str = r"^[^\x00.*#]*[^\s\x00.*#][^\x00.*#]*$";

/// The contract version this coordinator writes (docs/protocol.md, "Versioning").
pub const VERSION: &str = "1.7";
/// The contract's major versions this coordinator reads: `1.x`.
pub const SUPPORTED_MAJOR_VERSIONS: &[u32] = &[1];
/// AMQP short strings (message_id, correlation_id, type, app_id) hold at most 255 bytes.
pub const MAX_ID_LEN: usize = 255;

/// The body of every message (docs/protocol.md section 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Envelope {
    pub header: Header,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Header {
    /// Unique per message: the deduplication key. At most 255 bytes of UTF-8
    /// (`maxLength` counts characters; the coordinator counts bytes).
    #[schemars(length(max = 255), regex(pattern = NON_BLANK))]
    pub message_id: String,
    /// The workflow (or incident) id; for `heartbeat`, the agent id. At most 255 bytes
    /// of UTF-8.
    #[schemars(length(max = 255), regex(pattern = NON_BLANK))]
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// The contract version, `MAJOR.MINOR` (or `MAJOR.MINOR.PATCH`, as the source
    /// documents write it); this coordinator reads `1.x`.
    #[serde(default = "default_version")]
    #[schemars(regex(pattern = r"^0*1\.[0-9]+(\.[0-9]+)?$"))]
    pub version: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// A type of the catalog; part of the routing key, so no `.`, `*` or `#`. At most
    /// 255 bytes of UTF-8.
    #[schemars(length(max = 255), regex(pattern = ROUTING_WORD))]
    pub message_type: String,
    /// How urgent (absent: `normal`). Also read from `routing.priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Seconds after `timestamp` past which the message is not acted on. Also read
    /// from `routing.ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The source documents' shape: `priority` and `ttl` nested here are read as if
    /// they were the header's own (if both are given they must agree);
    /// `retry_count` and `max_retries` are the sender's bookkeeping, carried and not
    /// acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_guarantee: Option<DeliveryGuarantee>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
}

fn default_version() -> String {
    VERSION.to_string()
}

/// `header.routing`, as the source documents nest it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Routing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Source {
    /// At most 255 bytes of UTF-8.
    #[schemars(length(max = 255), regex(pattern = NON_BLANK))]
    pub agent_id: String,
    /// A configured role; part of the routing key, so no `.`, `*` or `#`.
    #[schemars(length(max = 255), regex(pattern = ROUTING_WORD))]
    pub agent_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Destination {
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub agent_type: Option<String>,
    #[serde(default)]
    pub broadcast: bool,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryGuarantee {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tracing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Security {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Payload {
    #[serde(default = "empty_object")]
    pub data: Value,
    #[serde(default = "empty_object")]
    pub metadata: Value,
}

impl Default for Payload {
    fn default() -> Self {
        Payload {
            data: empty_object(),
            metadata: empty_object(),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// What the transport said about a delivery: its routing key and AMQP properties.
/// Plain data, so validation needs no AMQP types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The AMQP `type` property.
    pub kind: Option<String>,
    pub app_id: Option<String>,
    /// The AMQP `timestamp` property, seconds since the epoch.
    pub timestamp: Option<u64>,
    pub content_type: Option<String>,
    /// The AMQP `user_id` property: RabbitMQ refuses a publish whose `user_id` is not
    /// the connection's user, so when present it names the sender's broker identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The `x-replay-of` header: the dead letter an operator replayed
    /// (`coordinator dead-letter replay`). Trusted only from the coordinator's own
    /// broker user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<i64>,
    /// The W3C `traceparent` header (docs/protocol.md, "Tracing"), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    /// True if any string of the envelope holds U+0000 (PostgreSQL's text and jsonb
    /// cannot).
    pub fn has_nul(&self) -> bool {
        let h = &self.header;
        let opt = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        [
            &h.message_id,
            &h.correlation_id,
            &h.version,
            &h.source.agent_id,
            &h.source.agent_type,
            &h.message_type,
        ]
        .iter()
        .any(|s| s.contains('\0'))
            || opt(&h.causation_id)
            || opt(&h.source.instance_id)
            || h.destination
                .as_ref()
                .is_some_and(|d| opt(&d.agent_id) || opt(&d.agent_type))
            || h.tracing
                .as_ref()
                .is_some_and(|t| opt(&t.trace_id) || opt(&t.span_id) || opt(&t.parent_span_id))
            || h.security
                .as_ref()
                .is_some_and(|s| opt(&s.signature) || opt(&s.key_id))
            || has_nul(&self.payload.data)
            || has_nul(&self.payload.metadata)
    }

    /// A message from the coordinator.
    pub fn from_coordinator(
        message_id: String,
        correlation_id: String,
        causation_id: Option<String>,
        message_type: &str,
        destination: Option<Destination>,
        payload: Payload,
        timestamp: DateTime<Utc>,
    ) -> Self {
        Envelope {
            header: Header {
                message_id,
                correlation_id,
                causation_id,
                timestamp,
                version: default_version(),
                source: Source {
                    agent_id: COORDINATOR_ID.to_string(),
                    agent_type: COORDINATOR_ID.to_string(),
                    instance_id: None,
                },
                destination,
                message_type: message_type.to_string(),
                priority: Some(Priority::Normal),
                ttl: None,
                routing: None,
                delivery_guarantee: Some(DeliveryGuarantee::AtLeastOnce),
                tracing: None,
                security: None,
            },
            payload,
        }
    }

    /// A message from an agent, with a fresh message id.
    pub fn from_agent(
        agent_id: &str,
        agent_type: &str,
        message_type: &str,
        correlation_id: &str,
        data: Value,
        timestamp: DateTime<Utc>,
    ) -> Self {
        Envelope {
            header: Header {
                message_id: uuid::Uuid::new_v4().to_string(),
                correlation_id: correlation_id.to_string(),
                causation_id: None,
                timestamp,
                version: default_version(),
                source: Source {
                    agent_id: agent_id.to_string(),
                    agent_type: agent_type.to_string(),
                    instance_id: None,
                },
                destination: None,
                message_type: message_type.to_string(),
                priority: None,
                ttl: None,
                routing: None,
                delivery_guarantee: None,
                tracing: None,
                security: None,
            },
            payload: Payload {
                data,
                metadata: empty_object(),
            },
        }
    }

    /// The routing key an agent publishes this message with.
    pub fn agent_routing_key(&self) -> String {
        crate::names::routing::agent(&self.header.source.agent_type, &self.header.message_type)
    }

    /// The AMQP properties that repeat this header.
    pub fn meta(&self, routing_key: &str) -> DeliveryMeta {
        DeliveryMeta {
            routing_key: routing_key.to_string(),
            message_id: Some(self.header.message_id.clone()),
            correlation_id: Some(self.header.correlation_id.clone()),
            kind: Some(self.header.message_type.clone()),
            app_id: Some(self.header.source.agent_id.clone()),
            timestamp: u64::try_from(self.header.timestamp.timestamp()).ok(),
            content_type: Some(CONTENT_TYPE.to_string()),
            user_id: None,
            replay_of: None,
            // The header's context, repeated where AMQP tooling looks for it.
            traceparent: self
                .header
                .tracing
                .as_ref()
                .and_then(crate::trace::SpanContext::from_header)
                .map(|c| c.traceparent()),
        }
    }
}

/// Parses a body into an envelope in one pass (JSON and types together), then checks
/// the required fields are non-empty and fit, and that no string holds U+0000.
pub fn parse(body: &[u8]) -> Result<Envelope, Rejected> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let env: Envelope = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // Deserializing straight from the bytes, a value of the wrong kind can be
            // reported as a syntax error: it is one only if the body is not JSON at all.
            let is_json = || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            if inner.classify() != serde_json::error::Category::Data && !is_json() {
                return Rejected::new(Reason::MalformedJson, format!("body is not JSON: {inner}"));
            }
            shape_error(&path, &inner)
        })
        .and_then(|env| {
            de.end()
                .map(|()| env)
                .map_err(|e| Rejected::new(Reason::MalformedJson, format!("body is not JSON: {e}")))
        })?;
    checked(env)
}

/// Parses a body into a JSON value (for a reader that needs the value too, as a
/// signature check does); [`from_value`] then makes the envelope of it without reading
/// the bytes again.
pub fn parse_value(body: &[u8]) -> Result<Value, Rejected> {
    serde_json::from_slice(body)
        .map_err(|e| Rejected::new(Reason::MalformedJson, format!("body is not JSON: {e}")))
}

/// The envelope a parsed body holds, checked as [`parse`] checks it.
pub fn from_value(value: &Value) -> Result<Envelope, Rejected> {
    let env: Envelope = serde_path_to_error::deserialize(value)
        .map_err(|e| shape_error(&e.path().to_string(), e.inner()))?;
    checked(env)
}

/// A body that is JSON but not an envelope: what is missing or wrong, and where.
fn shape_error(path: &str, inner: &serde_json::Error) -> Rejected {
    // The position in the body adds nothing to the path of the field.
    let msg = inner.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    let reason = if msg.starts_with("missing field") {
        Reason::MissingField
    } else {
        Reason::InvalidField
    };
    let at = if path == "." {
        String::new()
    } else {
        format!(" at {path}")
    };
    Rejected::new(reason, format!("{msg}{at}"))
}

/// The required fields are non-empty and fit, no string holds U+0000, and the routing
/// block agrees with the header.
fn checked(env: Envelope) -> Result<Envelope, Rejected> {
    let env = with_routing(env)?;
    if env.has_nul() {
        return Err(Rejected::new(
            Reason::InvalidField,
            "a string in the body contains U+0000, which cannot be stored",
        ));
    }
    let h = &env.header;
    for (field, value) in [
        ("header.message_id", &h.message_id),
        ("header.correlation_id", &h.correlation_id),
        ("header.message_type", &h.message_type),
        ("header.source.agent_id", &h.source.agent_id),
        ("header.source.agent_type", &h.source.agent_type),
    ] {
        if value.trim().is_empty() {
            return Err(Rejected::new(
                Reason::MissingField,
                format!("{field} is empty"),
            ));
        }
        if value.len() > MAX_ID_LEN {
            return Err(Rejected::new(
                Reason::InvalidField,
                format!(
                    "{field} is {} bytes long; at most {MAX_ID_LEN} are allowed",
                    value.len()
                ),
            ));
        }
    }
    for (field, value) in [
        ("header.message_type", &h.message_type),
        ("header.source.agent_type", &h.source.agent_type),
    ] {
        if value.contains(['.', '*', '#']) {
            return Err(Rejected::new(
                Reason::InvalidField,
                format!("{field} {value:?} may not contain '.', '*' or '#' (it is part of a routing key)"),
            ));
        }
    }
    Ok(env)
}

/// Reads `header.routing.priority` and `.ttl` as the header's own, so that a message
/// written the source documents' way expires and ranks as it says; refuses the two
/// when they disagree, naming the fields.
fn with_routing(mut env: Envelope) -> Result<Envelope, Rejected> {
    let h = &mut env.header;
    let Some(r) = h.routing.clone() else {
        return Ok(env);
    };
    match (h.priority, r.priority) {
        (Some(a), Some(b)) if a != b => {
            return Err(Rejected::new(
                Reason::InvalidField,
                format!(
                "header.priority is {} but header.routing.priority is {}; give one, or the same",
                a.as_str(),
                b.as_str()
            ),
            ))
        }
        (None, Some(b)) => h.priority = Some(b),
        _ => {}
    }
    match (h.ttl, r.ttl) {
        (Some(a), Some(b)) if a != b => {
            return Err(Rejected::new(
                Reason::InvalidField,
                format!("header.ttl is {a} but header.routing.ttl is {b}; give one, or the same"),
            ))
        }
        (None, Some(b)) => h.ttl = Some(b),
        _ => {}
    }
    Ok(env)
}

/// The AMQP properties and routing key must repeat the header.
pub fn check_properties(env: &Envelope, meta: &DeliveryMeta) -> Result<(), Rejected> {
    let h = &env.header;
    let required = [
        (
            "message_id",
            &meta.message_id,
            "header.message_id",
            &h.message_id,
        ),
        (
            "correlation_id",
            &meta.correlation_id,
            "header.correlation_id",
            &h.correlation_id,
        ),
        ("type", &meta.kind, "header.message_type", &h.message_type),
        (
            "app_id",
            &meta.app_id,
            "header.source.agent_id",
            &h.source.agent_id,
        ),
    ];
    for (prop, got, field, want) in required {
        match got {
            None => {
                return Err(Rejected::new(
                    Reason::PropertyMismatch,
                    format!("AMQP property {prop} is missing; it must repeat {field} ({want:?})"),
                ))
            }
            Some(got) if got != want => {
                return Err(Rejected::new(
                    Reason::PropertyMismatch,
                    format!("AMQP property {prop} is {got:?} but {field} is {want:?}"),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(ts) = meta.timestamp {
        let header_secs = h.timestamp.timestamp();
        if i64::try_from(ts).ok() != Some(header_secs) {
            return Err(Rejected::new(
                Reason::PropertyMismatch,
                format!(
                    "AMQP property timestamp is {ts} but header.timestamp is {} ({header_secs} s)",
                    h.timestamp.to_rfc3339()
                ),
            ));
        }
    }
    if let Some(ct) = &meta.content_type {
        if ct != CONTENT_TYPE {
            return Err(Rejected::new(
                Reason::PropertyMismatch,
                format!("AMQP property content_type is {ct:?}; it must be {CONTENT_TYPE:?}"),
            ));
        }
    }
    let expected_key = env.agent_routing_key();
    if meta.routing_key != expected_key {
        return Err(Rejected::new(
            Reason::PropertyMismatch,
            format!(
                "routing key is {:?} but the header says {expected_key:?} ({{agent_type}}.{{message_type}})",
                meta.routing_key
            ),
        ));
    }
    Ok(())
}

/// The sender's role is known, the message type is known, and the role may send it.
pub fn check_catalog(env: &Envelope, catalog: &Catalog) -> Result<(), Rejected> {
    let role = &env.header.source.agent_type;
    let mt = &env.header.message_type;
    match catalog.may_publish(role, mt) {
        Permission::Allowed => Ok(()),
        Permission::UnknownRole => Err(Rejected::new(
            Reason::UnknownRole,
            format!("header.source.agent_type {role:?} is not a known role"),
        )),
        Permission::UnknownMessageType => Err(Rejected::new(
            Reason::UnknownMessageType,
            format!("header.message_type {mt:?} is not a known message type"),
        )),
        Permission::NotAllowed => Err(Rejected::new(
            Reason::SenderNotAllowed,
            format!("role {role:?} may not send {mt:?}"),
        )),
    }
}

/// A message whose `timestamp + ttl` has passed is not acted on.
pub fn check_fresh(env: &Envelope, now: DateTime<Utc>) -> Result<(), Rejected> {
    let Some(ttl) = env.header.ttl else {
        return Ok(());
    };
    let expires = i64::try_from(ttl)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| env.header.timestamp.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if expires < now {
        return Err(Rejected::new(
            Reason::Expired,
            format!(
                "expired at {} (header.timestamp {} + ttl {ttl} s)",
                expires.to_rfc3339(),
                env.header.timestamp.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// How far `header.timestamp` may be from the receiver's clock: replay protection
/// (docs/security.md). Message ids are remembered for longer than `max_age`, so a
/// captured message can be replayed neither inside the window nor after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max_age: chrono::Duration,
    pub max_ahead: chrono::Duration,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            max_age: chrono::Duration::minutes(5),
            max_ahead: chrono::Duration::minutes(1),
        }
    }
}

/// `header.timestamp` must be within the window around `now`.
pub fn check_window(env: &Envelope, now: DateTime<Utc>, window: &Window) -> Result<(), Rejected> {
    let t = env.header.timestamp;
    let age = now.signed_duration_since(t);
    if age > window.max_age {
        return Err(Rejected::new(
            Reason::Stale,
            format!(
                "header.timestamp {} is {} s old; messages older than {} s are refused \
                 (replay protection): send a new message, with a new message_id, stamped now",
                t.to_rfc3339(),
                age.num_seconds(),
                window.max_age.num_seconds()
            ),
        ));
    }
    if -age > window.max_ahead {
        return Err(Rejected::new(
            Reason::FromTheFuture,
            format!(
                "header.timestamp {} is {} s ahead of the coordinator's clock ({}); at most \
                 {} s is allowed: check the sender's clock (NTP)",
                t.to_rfc3339(),
                (-age).num_seconds(),
                now.to_rfc3339(),
                window.max_ahead.num_seconds()
            ),
        ));
    }
    Ok(())
}

/// Sender authentication: the AMQP `user_id` property, which the broker checks against
/// the connection's user, must be `header.source.agent_id`.
pub fn check_sender(env: &Envelope, meta: &DeliveryMeta) -> Result<(), Rejected> {
    let agent = &env.header.source.agent_id;
    match meta.user_id.as_deref() {
        Some(user) if user == agent => Ok(()),
        Some(user) => Err(Rejected::new(
            Reason::Unauthenticated,
            format!(
                "the AMQP user_id property is {user:?} but header.source.agent_id is {agent:?}: \
                 an agent publishes only as itself, connected as its own broker user"
            ),
        )),
        None => Err(Rejected::new(
            Reason::Unauthenticated,
            format!(
                "no AMQP user_id property: sender authentication is on, so connect as the \
                 broker user {agent:?} (coordinator agent add --credentials) and set user_id to it"
            ),
        )),
    }
}

/// Size limits on what is stored: the body as a whole (it is kept whole in
/// `dead_letters` and copied into the workflow), and the payload fields that get their
/// own (indexed) columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Identifiers stored and indexed: every workflow definition's business key.
    pub max_key_bytes: usize,
    /// Texts stored in columns (`payload.data.title`, `description`, …).
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_key_bytes: MAX_ID_LEN,
            max_text_bytes: 8192,
        }
    }
}

/// Payload fields stored as texts in their own columns.
pub const STORED_TEXTS: &[&str] = &["title", "epic_title", "description", "incident_description"];

/// The body must fit `max_body_bytes`; checked before it is parsed.
pub fn check_body_size(body: &[u8], limits: &Limits) -> Result<(), Rejected> {
    if body.len() > limits.max_body_bytes {
        return Err(Rejected::new(
            Reason::TooLarge,
            format!(
                "the body is {} bytes; at most {} are allowed",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    Ok(())
}

/// The checks of a delivery this crate can make on its own, in order (size with the
/// default limits, shape, version, properties, catalogue, expiry), for a reader of the
/// coordinator's messages. The coordinator itself admits a delivery with its own
/// configuration and more checks (`coordinator::engine::admission`).
pub fn validate(
    body: &[u8],
    meta: &DeliveryMeta,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Envelope, Rejected> {
    check_body_size(body, &Limits::default())?;
    let env = parse(body)?;
    check_version(&env)?;
    check_properties(&env, meta)?;
    check_catalog(&env, catalog)?;
    check_fresh(&env, now)?;
    Ok(env)
}

/// `header.version` must be `MAJOR.MINOR` (or `MAJOR.MINOR.PATCH`) with a major
/// version this coordinator speaks; within a major version changes are additive, so
/// any minor is read.
pub fn check_version(env: &Envelope) -> Result<(), Rejected> {
    let v = env.header.version.as_str();
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let major = parts
        .first()
        .filter(|_| numeric)
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if SUPPORTED_MAJOR_VERSIONS.contains(&m) => Ok(()),
        _ => Err(Rejected::new(
            Reason::UnsupportedVersion,
            format!(
                "header.version {:?} is not supported; this coordinator speaks {}",
                v.chars().take(40).collect::<String>(),
                SUPPORTED_MAJOR_VERSIONS
                    .iter()
                    .map(|m| format!("{m}.x"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The message id and sender of a delivery that may not parse, for dead letters and
/// rejection notices: from the header if it has them, else from the AMQP properties.
pub fn best_effort_ids(body: &[u8], meta: &DeliveryMeta) -> (Option<String>, Option<String>) {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let header_str = |path: &[&str]| -> Option<String> {
        let mut v = value.as_ref()?.get("header")?;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str()
            .filter(|s| !s.trim().is_empty() && s.len() <= MAX_ID_LEN)
            .map(str::to_string)
    };
    let message_id = header_str(&["message_id"]).or_else(|| meta.message_id.clone());
    let sender = header_str(&["source", "agent_id"]).or_else(|| meta.app_id.clone());
    (message_id, sender)
}

/// True if any string (or key) in the value contains U+0000, which PostgreSQL's text
/// and jsonb cannot hold.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Converts a header timestamp to the AMQP property (whole seconds).
pub fn amqp_timestamp(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp()).unwrap_or(0)
}

/// Parses an AMQP timestamp property back to a time (for display).
pub fn from_amqp_timestamp(secs: u64) -> Option<DateTime<Utc>> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Utc.timestamp_opt(s, 0).single())
}

#[cfg(test)]
mod tests;
