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
