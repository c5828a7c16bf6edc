//! Raising an escalation: the `escalations` row, the message to on-call and the deadline
//! of its next ladder step, built in one place for message-triggered escalations (the
//! processor) and for breaches and ladder steps (the timers). Pure: the caller reserves
//! the id and writes the rows.

use chrono::{DateTime, Utc};
use serde_json::json;

use protocol::envelope::{Payload, Priority};
use protocol::names::message_types::{
    AGENT_STALE, DEAD_LETTERS_UNRESOLVED, MESSAGE_SET_ASIDE, MESSAGE_UNDELIVERABLE,
};
use protocol::names::{exchanges, routing};
use protocol::payloads;
use protocol::reject::Reason;

use super::messages::{outgoing, traced_alone};
use super::rows::{NewEscalation, OutboxMessage, Undeliverable, UnresolvedDeadLetter};
use crate::domain::emergency;
use crate::domain::escalation::Step;
use crate::domain::ids;
use crate::domain::sla::{Deadline, DeadlineKind, Severity};

/// Who hears of a message set aside or undeliverable, and of dead letters nobody worked.
const ONCALL: &str = "oncall";
const MANAGEMENT: &str = "management";

/// The notice to on-call (`escalation.high.oncall`) for a message set aside as
/// `processing_failed` after its retries: it is in `dead_letters` now.
pub fn set_aside_notice(
    message_id: Option<&str>,
    correlation_id: Option<&str>,
    sender: Option<&str>,
    attempts: u32,
    error: &str,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let subject = message_id.unwrap_or("(no message id)");
    outgoing(
        ids::derived(subject, MESSAGE_SET_ASIDE),
        correlation_id.unwrap_or(""),
        message_id,
        MESSAGE_SET_ASIDE,
        exchanges::TOPIC,
        &routing::escalation(Severity::High, ONCALL),
        None,
        Payload {
            data: payloads::to_value(&payloads::MessageSetAside {
                message_id: message_id.map(str::to_string),
                correlation_id: correlation_id.map(str::to_string),
                source_agent_id: sender.map(str::to_string),
                reason: Reason::ProcessingFailed.as_str().to_string(),
                attempts,
                error: error.to_string(),
                set_aside_at: now,
            }),
            metadata: json!({}),
        },
        Severity::High.priority(),
        now,
    )
}

/// The notice to management (`escalation.high.management`) for dead letters unresolved
/// longer than `dead_letters.escalate_after`: one message for all that crossed it.
pub fn unresolved_notice(letters: &[UnresolvedDeadLetter], now: DateTime<Utc>) -> OutboxMessage {
    let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
    let key = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    traced_alone(outgoing(
        ids::derived(&key, DEAD_LETTERS_UNRESOLVED),
        "dead-letters",
        None,
        DEAD_LETTERS_UNRESOLVED,
        exchanges::TOPIC,
        &routing::escalation(Severity::High, MANAGEMENT),
        None,
        Payload {
            data: payloads::to_value(&payloads::DeadLettersUnresolved {
                count: letters.len(),
                dead_letters: letters
                    .iter()
                    .map(|l| payloads::UnresolvedDeadLetter {
                        id: l.id,
                        reason: l.reason.clone(),
                        message_id: l.message_id.clone(),
                        received_at: l.received_at,
                    })
                    .collect(),
                hint: "coordinator dead-letter list --unresolved; show, replay or resolve each"
                    .to_string(),
            }),
            metadata: json!({}),
        },
        Severity::High.priority(),
        now,
    ))
}

/// The escalation to a role's owner (`escalation.high.{role}`, where the ladder's
/// `owner` level pages) for an agent that stopped sending heartbeats. Its id derives
/// from the agent and its last heartbeat, so a notice sent again is the same one.
pub fn stale_agent_notice(agent: &payloads::AgentStale, now: DateTime<Utc>) -> OutboxMessage {
    let key = format!(
        "{}:{}",
        agent.agent_id,
        agent.last_heartbeat_at.to_rfc3339()
    );
    traced_alone(outgoing(
        ids::derived(&key, AGENT_STALE),
        &agent.agent_id,
        None,
        AGENT_STALE,
        exchanges::TOPIC,
        &routing::escalation(Severity::High, &agent.agent_type),
        None,
        Payload {
            data: payloads::to_value(agent),
            metadata: json!({}),
        },
        Severity::High.priority(),
        now,
    ))
}

/// The notice to on-call (`escalation.high.oncall`) for an outbox message given up:
/// no queue took it (or the broker refused it) for `outbox.undeliverable_after`. Its id
/// derives from the message's, so a notice sent again is recognisably the same.
pub fn undeliverable_notice(u: &Undeliverable, now: DateTime<Utc>) -> OutboxMessage {
    traced_alone(outgoing(
        ids::derived(&u.message_id, MESSAGE_UNDELIVERABLE),
        &u.correlation_id,
        Some(&u.message_id),
        MESSAGE_UNDELIVERABLE,
        exchanges::TOPIC,
        &routing::escalation(Severity::High, ONCALL),
        None,
        Payload {
            data: payloads::to_value(&payloads::MessageUndeliverable {
                outbox_id: u.id,
                message_id: u.message_id.clone(),
                message_type: u.message_type.clone(),
                exchange: u.exchange.clone(),
                routing_key: u.routing_key.clone(),
                correlation_id: u.correlation_id.clone(),
                attempts: u.attempts,
                written_at: u.created_at,
                last_error: u.last_error.clone(),
                undeliverable_at: now,
            }),
            metadata: json!({}),
        },
        Severity::High.priority(),
        now,
    ))
}

/// One raise of an escalation.
pub struct Raise<'a> {
    pub workflow_id: &'a str,
    /// The chain this raise continues (a ladder step), or `None` for a new one.
    pub chain_id: Option<i64>,
    /// The clock that breached, or the message that raised it.
    pub clock: &'a str,
    pub clock_id: Option<i64>,
    pub owner_role: &'a str,
    /// The agent it names, if any (a missed emergency acknowledgment, a blocked agent).
    pub agent_id: Option<&'a str>,
    pub severity: Severity,
    pub step: &'a Step,
    /// `sla_breached` for clocks, `escalation_raised` for messages.
    pub message_type: &'a str,
    pub message_id: String,
    pub causation_id: Option<&'a str>,
    /// What raised it, for the message's `payload.data`.
    pub cause: payloads::EscalationCause,
    pub now: DateTime<Utc>,
}

/// What a raise writes.
#[derive(Debug, Clone)]
pub struct Raised {
    pub row: NewEscalation,
    /// To `agent.topic` with routing key `escalation.{severity}.{target}`.
    pub message: OutboxMessage,
    /// When the next level is raised if nobody acknowledges.
    pub next: Deadline,
}

/// The escalation with id `id` (reserved by the caller).
pub fn raise(r: Raise<'_>, id: i64) -> Raised {
    let chain_id = r.chain_id.unwrap_or(id);
    let data = payloads::to_value(&payloads::Escalation {
        escalation_id: id,
        chain_id,
        workflow_id: r.workflow_id.to_string(),
        clock: r.clock.to_string(),
        owner_role: r.owner_role.to_string(),
        agent_id: r.agent_id.map(str::to_string),
        level: r.step.level,
        target: r.step.target.clone(),
        severity: r.severity,
        raised_at: r.now,
        next_level_at: r.step.next_at,
        cause: r.cause,
    });
    let routing_key = routing::escalation(r.severity, &r.step.target);
    let message = outgoing(
        r.message_id.clone(),
        r.workflow_id,
        r.causation_id,
        r.message_type,
        exchanges::TOPIC,
        &routing_key,
        None,
        Payload {
            data,
            metadata: json!({}),
        },
        urgency(r.clock, r.severity),
        r.now,
    );
    Raised {
        row: NewEscalation {
            id,
            chain_id,
            workflow_id: r.workflow_id.to_string(),
            clock: r.clock.to_string(),
            clock_id: r.clock_id,
            owner_role: r.owner_role.to_string(),
            agent_id: r.agent_id.map(str::to_string),
            level: r.step.level,
            target: r.step.target.clone(),
            severity: r.severity.as_str().to_string(),
            raised_at: r.now,
            next_level_at: r.step.next_at,
            message_id: r.message_id,
        },
        message,
        next: Deadline {
            at: r.step.next_at,
            kind: DeadlineKind::Ladder,
            id,
        },
    }
}

/// How urgent a message about `clock` is: an emergency's are critical, others as
/// severe as the escalation.
pub fn urgency(clock: &str, severity: Severity) -> Priority {
    if emergency::is_clock(clock) {
        Priority::Critical
    } else {
        severity.priority()
    }
}

/// The outcome of acknowledging an escalation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledged {
    /// These escalations of the chain were open and are now acknowledged.
    Now {
        workflow_id: String,
        chain_id: i64,
        ids: Vec<i64>,
    },
    /// The chain had been acknowledged before: nothing changed.
    Already { workflow_id: String, chain_id: i64 },
}
