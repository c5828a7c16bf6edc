//! Deciding a batch of inbound messages, without I/O.
//!
//! [`check`] runs the pure checks on each delivery (parsed once). [`needs`] says what
//! the batch must read once its message ids are claimed. A [`Batch`] then holds what
//! was read under lock and applies each message in delivery order — dedupe, identity,
//! dispatch (heartbeat, escalation acknowledgement, emergency, feature workflow, or an
//! event the coordinator only observes), the pure state machine, and the rows its
//! decision implies — so the next message of the same workflow sees what the previous
//! one did. [`Batch::finish`] hands the collected rows to [`crate::pipeline`], which
//! owns the transaction and writes them with a statement per kind of row.
//!
//! A rejection is not an error: it becomes a `dead_letters` row and a `message_rejected`
//! notice, and the batch goes on.

pub mod agents;
mod batch;
mod effects;
mod feature;
mod incident;
mod model;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::batch::Needs;
use crate::db::store::OutboxMessage;
use crate::domain::escalation::Ladders;
use crate::domain::sla::ClockDurations;
use crate::domain::{emergency, workflow};
use crate::escalations::{self, Acknowledged};
use crate::settings::Settings;
use protocol::catalog::Catalog;
use protocol::envelope::{self, DeliveryMeta, Destination, Envelope, Limits, Payload};
use protocol::names::exchanges;
use protocol::reject::{Reason, Rejected};

pub use agents::{AgentView, Agents};
pub use batch::{dead_letter, set_aside, Batch, Finished};
pub use incident::operator_alert;

pub const HEARTBEAT: &str = "heartbeat";
pub const MESSAGE_REJECTED: &str = "message_rejected";
/// The agent type of messages an operator makes with the CLI.
pub const OPERATOR: &str = "operator";

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to a workflow or incident (or a heartbeat recorded).
    Accepted,
    /// A valid event the coordinator does not act on.
    Observed,
    /// Its message id was processed before: nothing changed.
    Duplicate,
    Rejected(Reason),
}

impl Outcome {
    /// Every [`Outcome::label`], for metrics present from the start.
    pub const LABELS: [&'static str; 4] = ["accepted", "observed", "duplicate", "rejected"];

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Observed => "observed",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// What the batch did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    /// The state transition, when there was one.
    pub transition: Option<(String, String)>,
    /// Why it was rejected.
    pub detail: Option<String>,
    /// What an escalation acknowledgement did.
    pub acknowledged: Option<Acknowledged>,
}

impl Processed {
    pub fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            transition: None,
            detail: None,
            acknowledged: None,
        }
    }
}

/// A delivery, as far as processing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub meta: &'a DeliveryMeta,
}

/// What a batch applies: a delivery from the inbox, or a message an operator makes
/// with the CLI (trusted: not checked against the catalog or the agents, and a
/// rejection is returned to the operator instead of being dead-lettered).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Delivery(Inbound<'a>),
    Operator(&'a Envelope),
}

/// A delivery after the pure checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub envelope: Result<Envelope, Rejected>,
    pub trusted: bool,
}

impl Checked {
    fn valid(&self) -> Option<&Envelope> {
        self.envelope.as_ref().ok()
    }
}

/// The service's processing settings.
#[derive(Debug, Clone)]
pub struct Processor {
    pub catalog: Catalog,
    pub durations: ClockDurations,
    pub ladders: Ladders,
    pub auto_register: bool,
    pub limits: Limits,
}

impl Processor {
    pub fn from_settings(settings: &Settings) -> Processor {
        Processor {
            catalog: settings.catalog(),
            durations: settings.clock_durations(),
            // Settings are validated on load, so the ladders build.
            ladders: settings.ladders().unwrap_or_default(),
            auto_register: settings.registration.auto_register,
            limits: settings.limits.envelope(),
        }
    }

    /// The pure checks of one input.
    pub fn check(&self, input: Input<'_>, now: DateTime<Utc>) -> Checked {
        match input {
            Input::Operator(env) => Checked {
                message_id: Some(env.header.message_id.clone()),
                sender: None,
                envelope: Ok(env.clone()),
                trusted: true,
            },
            Input::Delivery(d) => {
                match envelope::validate_within(d.body, d.meta, &self.catalog, &self.limits, now) {
                    Ok(env) => Checked {
                        message_id: Some(env.header.message_id.clone()),
                        sender: Some(env.header.source.agent_id.clone()),
                        envelope: Ok(env),
                        trusted: false,
                    },
                    Err(rej) => {
                        // Only a rejected body is read a second time, for its ids.
                        let (message_id, sender) = if d.body.len() <= self.limits.max_body_bytes {
                            envelope::best_effort_ids(d.body, d.meta)
                        } else {
                            (d.meta.message_id.clone(), d.meta.app_id.clone())
                        };
                        Checked {
                            message_id: message_id.filter(|id| !id.contains('\0')),
                            sender,
                            envelope: Err(rej),
                            trusted: false,
                        }
                    }
                }
            }
        }
    }
}

/// The message ids to claim, each once, in delivery order.
pub fn message_ids(checked: &[Checked]) -> Vec<&str> {
    let mut seen = HashSet::new();
    checked
        .iter()
        .filter_map(|c| c.message_id.as_deref())
        .filter(|id| seen.insert(*id))
        .collect()
}

/// What a batch must read (before its ids are claimed: a duplicate costs a lock it did
/// not need, which is rare), given the agents the cache holds.
pub fn needs(checked: &[Checked], agents: &AgentView) -> Needs {
    let mut n = Needs::default();
    for c in checked {
        let Some(env) = c.valid() else { continue };
        let h = &env.header;
        if !c.trusted && agents.type_of(&h.source.agent_id).is_none() {
            n.agent_ids.push(h.source.agent_id.clone());
        }
        let mt = h.message_type.as_str();
        if mt == HEARTBEAT {
            continue;
        }
        if mt == escalations::ESCALATION_ACKNOWLEDGED {
            if let Some(id) = acknowledged_escalation(env) {
                n.escalation_ids.push(id);
            }
        } else if mt == emergency::ALERT {
            n.all_agents = true;
        } else if !(emergency::is_input(mt) || workflow::is_input(mt)) {
            continue;
        }
        n.workflow_ids.push(h.correlation_id.clone());
        if workflow::may_escalate(mt) {
            n.escalations += 1;
        }
    }
    n
}

/// `escalation_acknowledged` names an escalation of the chain in
/// `payload.data.escalation_id`.
fn acknowledged_escalation(env: &Envelope) -> Option<i64> {
    use serde::Deserialize;
    protocol::payloads::EscalationAcknowledged::deserialize(&env.payload.data)
        .ok()
        .map(|a| a.escalation_id)
}

/// A stable stand-in id for a body that carries none.
pub(crate) fn body_digest(body: &[u8]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body).to_string()
}

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
    now: DateTime<Utc>,
) -> OutboxMessage {
    let env = Envelope::from_coordinator(
        message_id.clone(),
        correlation_id.to_string(),
        causation_id.map(str::to_string),
        message_type,
        destination,
        payload,
        now,
    );
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
    now: DateTime<Utc>,
) -> OutboxMessage {
    outgoing(
        message_id,
        correlation_id,
        causation_id,
        message_type,
        exchanges::DIRECT,
        &format!("task.{role}"),
        Some(Destination {
            agent_id: None,
            agent_type: Some(role.to_string()),
            broadcast: false,
        }),
        Payload { data, metadata },
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
    now: DateTime<Utc>,
) -> OutboxMessage {
    outgoing(
        message_id,
        correlation_id,
        causation_id,
        message_type,
        exchanges::DIRECT,
        &format!("command.{agent_id}"),
        Some(Destination {
            agent_id: Some(agent_id.to_string()),
            agent_type: None,
            broadcast: false,
        }),
        Payload {
            data,
            metadata: serde_json::json!({}),
        },
        now,
    )
}

#[cfg(test)]
mod tests;
