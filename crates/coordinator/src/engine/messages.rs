//! The messages the coordinator sends, as outbox rows: the envelope (from the
//! coordinator, with a derived message id), its exchange and routing key.

use chrono::{DateTime, Utc};
use protocol::envelope::{self, Destination, Envelope, Payload, Priority};
use protocol::names::{exchanges, routing};
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
    }
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
    to_agent(
        crate::domain::ids::derived(held_message_id, "rate_limited"),
        correlation_id.unwrap_or(agent_id),
        Some(held_message_id),
        protocol::names::message_types::RATE_LIMITED,
        agent_id,
        data,
        Priority::Normal,
        now,
    )
}
