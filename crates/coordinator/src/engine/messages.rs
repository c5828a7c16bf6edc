//! The messages the coordinator sends, as outbox rows: the envelope (from the
//! coordinator, with a derived message id), its exchange and routing key.

use chrono::{DateTime, Utc};
use protocol::envelope::{self, Destination, Envelope, Payload, Priority};
use protocol::names::{exchanges, routing};
use protocol::trace::SpanContext;
use serde_json::Value;

use super::rows::OutboxMessage;

/// An outbox row holding a message from the coordinator.
#[allow(clippy::too_many_arguments)]
pub fn outgoing(
    message_id: String,
    correlation_id: &str,
    causation_id: Option<&str>,
    message_type: &str,
    exchange: &str,
    routing_key: &str,
    destination: Option<Destination>,
    payload: Payload,
    priority: Priority,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let mut env = Envelope::from_coordinator(
        message_id.clone(),
        correlation_id.to_string(),
        causation_id.map(str::to_string),
        message_type,
        destination,
        payload,
        now,
    );
    env.header.priority = Some(priority);
    OutboxMessage {
        message_id,
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        message_type: message_type.to_string(),
        correlation_id: correlation_id.to_string(),
        causation_id: causation_id.map(str::to_string),
        app_id: envelope::COORDINATOR_ID.to_string(),
        // Serialising plain data cannot fail; an empty body would be rejected by receivers.
        body: serde_json::to_vec(&env).unwrap_or_default(),
        traceparent: None,
    }
}

/// The start of every envelope [`outgoing`] serialises: the header's first member
/// follows.
const HEADER_START: &[u8] = b"{\"header\":{";

/// Names `span` (whose parent is `parent`) as the sender of `m`: its body's
/// `header.tracing` and its `traceparent` header. The member is written into the body
/// as serialised, not by parsing and serialising it again: this runs for every message
/// the coordinator sends.
pub fn traced(m: &mut OutboxMessage, span: &SpanContext, parent: Option<[u8; 8]>) {
    match m.body.strip_prefix(HEADER_START) {
        Some(rest) if !rest.starts_with(b"}") => {
            let mut body = Vec::with_capacity(m.body.len() + 112);
            body.extend_from_slice(HEADER_START);
            body.extend_from_slice(b"\"tracing\":{\"trace_id\":\"");
            push_hex(&mut body, &span.trace_id);
            body.extend_from_slice(b"\",\"span_id\":\"");
            push_hex(&mut body, &span.span_id);
            if let Some(parent) = parent {
                body.extend_from_slice(b"\",\"parent_span_id\":\"");
                push_hex(&mut body, &parent);
            }
            body.extend_from_slice(b"\"},");
            body.extend_from_slice(rest);
            m.body = body;
        }
        // Not the shape `outgoing` writes: set the member on the parsed envelope.
        _ => {
            let Ok(mut env) = serde_json::from_slice::<Envelope>(&m.body) else {
                return;
            };
            env.header.tracing = Some(span.header(parent));
            let Ok(body) = serde_json::to_vec(&env) else {
                return;
            };
            m.body = body;
        }
    }
    m.traceparent = Some(span.traceparent());
}

/// Lower-case hex, as the W3C ids are written.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// A message that is not part of a workflow's work, traced as a trace of its own.
pub fn traced_alone(mut m: OutboxMessage) -> OutboxMessage {
    let span = crate::domain::trace::alone(&m.message_id);
    traced(&mut m, &span, None);
    m
}

/// A message from the coordinator to every agent of a role (their task queues).
#[allow(clippy::too_many_arguments)]
pub fn to_role(
    message_id: String,
    correlation_id: &str,
    causation_id: Option<&str>,
    message_type: &str,
    role: &str,
    data: Value,
    metadata: Value,
    priority: Priority,
    now: DateTime<Utc>,
) -> OutboxMessage {
    outgoing(
        message_id,
        correlation_id,
        causation_id,
        message_type,
        exchanges::DIRECT,
        &routing::task(role),
        Some(Destination {
            agent_id: None,
            agent_type: Some(role.to_string()),
            broadcast: false,
        }),
        Payload { data, metadata },
        priority,
        now,
    )
}

/// A task or notice to every agent of a role, caused by the message `cause` that moved
/// workflow `workflow_id` to `state` in `round`: it carries the cause's data (agents read
/// what they need from it) and says where the workflow stands. Its id is derived from
/// the cause's and `effect_key`, so the message is the same however often the cause is
/// applied.
#[allow(clippy::too_many_arguments)]
pub fn caused_to_role(
    cause: &Envelope,
    workflow_id: &str,
    state: &str,
    round: i32,
    message_type: &str,
    role: &str,
    effect_key: &str,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let h = &cause.header;
    // A follow-on's message differs from its parent's of the same effect.
    let effect_key = if workflow_id == h.correlation_id {
        effect_key.to_string()
    } else {
        format!("{workflow_id}:{effect_key}")
    };
    to_role(
        crate::domain::ids::derived(&h.message_id, &effect_key),
        workflow_id,
        Some(&h.message_id),
        message_type,
        role,
        cause.payload.data.clone(),
        protocol::payloads::to_value(&protocol::payloads::TaskMetadata {
            workflow_id: workflow_id.to_string(),
            state: state.to_string(),
            round,
            caused_by: protocol::payloads::CausedBy {
                message_type: h.message_type.clone(),
                agent_id: h.source.agent_id.clone(),
            },
        }),
        Priority::Normal,
        now,
    )
}

/// A message from the coordinator to one agent (its commands queue).
#[allow(clippy::too_many_arguments)]
pub fn to_agent(
    message_id: String,
    correlation_id: &str,
    causation_id: Option<&str>,
    message_type: &str,
    agent_id: &str,
    data: Value,
    priority: Priority,
    now: DateTime<Utc>,
) -> OutboxMessage {
    outgoing(
        message_id,
        correlation_id,
        causation_id,
        message_type,
        exchanges::DIRECT,
        &routing::command(agent_id),
        Some(Destination {
            agent_id: Some(agent_id.to_string()),
            agent_type: None,
            broadcast: false,
        }),
        Payload {
            data,
            metadata: serde_json::json!({}),
        },
        priority,
        now,
    )
}

/// A `rate_limited` notice to an agent whose message `held_message_id` was held back
/// by limit `limit_per_minute` (room again after `retry_after`).
pub fn rate_limited_notice(
    agent_id: &str,
    held_message_id: &str,
    correlation_id: Option<&str>,
    limit_per_minute: u32,
    retry_after: std::time::Duration,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let data = protocol::payloads::to_value(&protocol::payloads::RateLimited {
        held_message_id: held_message_id.to_string(),
        limit_per_minute,
        retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
    });
    let notice = to_agent(
        crate::domain::ids::derived(held_message_id, "rate_limited"),
        correlation_id.unwrap_or(agent_id),
        Some(held_message_id),
        protocol::names::message_types::RATE_LIMITED,
        agent_id,
        data,
        Priority::Normal,
        now,
    );
    traced_alone(notice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> OutboxMessage {
        to_role(
            "m-1".into(),
            "wf-1",
            Some("cause-1"),
            "feature_handoff",
            "qa-director",
            serde_json::json!({"title": "a \"quoted\" {title}"}),
            serde_json::json!({"workflow_id": "wf-1"}),
            Priority::Normal,
            "2026-03-01T12:00:00Z".parse().expect("time"),
        )
    }

    #[test]
    fn tracing_written_into_the_body_reads_as_if_the_envelope_had_carried_it() {
        let span = crate::domain::trace::applying("wf-1", "cause-1");
        let parent = [9; 8];
        let mut m = task();
        let mut expected: Envelope = serde_json::from_slice(&m.body).expect("an envelope");
        expected.header.tracing = Some(span.header(Some(parent)));
        traced(&mut m, &span, Some(parent));
        let got: Envelope = serde_json::from_slice(&m.body).expect("still an envelope");
        assert_eq!(got, expected);
        assert_eq!(m.traceparent, Some(span.traceparent()));
    }

    #[test]
    fn a_body_of_another_shape_is_traced_through_the_parsed_envelope() {
        let span = crate::domain::trace::alone("m-1");
        let mut m = task();
        let env: Envelope = serde_json::from_slice(&m.body).expect("an envelope");
        // Pretty-printed: not the prefix written in place.
        m.body = serde_json::to_vec_pretty(&env).expect("json");
        traced(&mut m, &span, None);
        let got: Envelope = serde_json::from_slice(&m.body).expect("an envelope");
        assert_eq!(got.header.tracing, Some(span.header(None)));
        assert_eq!(got.payload, env.payload);
    }
}
