//! Raising and acknowledging escalations: one place that writes the `escalations` row
//! and the message to on-call, used by message-triggered escalations (the processor),
//! breaches and ladder steps (the timers), and `coordinator escalation ack`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::db::store::{self, NewEscalation};
use crate::domain::envelope::Payload;
use crate::domain::escalation::Step;
use crate::domain::sla::{Deadline, DeadlineKind, Severity};
use crate::processor::{exchanges, outgoing};

pub const SLA_BREACHED: &str = "sla_breached";
pub const ESCALATION_RAISED: &str = "escalation_raised";
pub const ESCALATION_ACKNOWLEDGED: &str = "escalation_acknowledged";

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
    /// Extra fields for the message's `payload.data`.
    pub data: Value,
    pub now: DateTime<Utc>,
}

/// Writes the escalation and queues its message on `agent.topic` with routing key
/// `escalation.{severity}.{target}`. Returns its id and the deadline of the next step.
pub async fn raise(conn: &mut PgConnection, r: Raise<'_>) -> sqlx::Result<(i64, Deadline)> {
    let (id, chain_id) = store::insert_escalation(
        conn,
        &NewEscalation {
            workflow_id: r.workflow_id,
            chain_id: r.chain_id,
            clock: r.clock,
            clock_id: r.clock_id,
            owner_role: r.owner_role,
            agent_id: r.agent_id,
            level: r.step.level,
            target: &r.step.target,
            severity: r.severity.as_str(),
            raised_at: r.now,
            next_level_at: r.step.next_at,
            message_id: &r.message_id,
        },
    )
    .await?;
    let mut data = json!({
        "escalation_id": id,
        "chain_id": chain_id,
        "workflow_id": r.workflow_id,
        "clock": r.clock,
        "owner_role": r.owner_role,
        "agent_id": r.agent_id,
        "level": r.step.level,
        "target": r.step.target,
        "severity": r.severity.as_str(),
        "raised_at": r.now,
        "next_level_at": r.step.next_at,
    });
    if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), r.data) {
        obj.extend(extra);
    }
    let routing_key = format!("escalation.{}.{}", r.severity.as_str(), r.step.target);
    let m = outgoing(
        r.message_id,
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
        r.now,
    );
    store::enqueue(conn, &m).await?;
    let next = Deadline {
        at: r.step.next_at,
        kind: DeadlineKind::Ladder,
        id,
    };
    Ok((id, next))
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

/// Acknowledges the chain an escalation belongs to, stopping its ladder. `None` if there
/// is no such escalation. The caller holds the workflow's lock.
pub async fn acknowledge(
    conn: &mut PgConnection,
    escalation_id: i64,
    by: &str,
    message_id: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Acknowledged>> {
    let Some((workflow_id, chain_id)) = store::escalation_chain(conn, escalation_id).await? else {
        return Ok(None);
    };
    let ids = store::acknowledge_chain(conn, chain_id, by, now).await?;
    if ids.is_empty() {
        return Ok(Some(Acknowledged::Already {
            workflow_id,
            chain_id,
        }));
    }
    let state = store::workflow_state(conn, &workflow_id)
        .await?
        .unwrap_or_default();
    let detail = json!({"escalation_id": escalation_id, "chain_id": chain_id, "acknowledged": ids});
    store::append_note(
        conn,
        &workflow_id,
        &state,
        ESCALATION_ACKNOWLEDGED,
        by,
        message_id,
        detail,
        now,
    )
    .await?;
    Ok(Some(Acknowledged::Now {
        workflow_id,
        chain_id,
        ids,
    }))
}
