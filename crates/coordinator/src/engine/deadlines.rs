//! What deadlines that came imply, without I/O: a warned clock tells its owner; a
//! breached clock raises an escalation at level 1 and tells its owner; an escalation
//! nobody acknowledged climbs one level. The rows are written by the same single
//! statement as a batch of messages (the timer service in `service::timers` takes the
//! due deadlines and owns the transaction).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use protocol::names::message_types::{ESCALATION_RAISED, SLA_BREACHED, SLA_WARNING};
use protocol::payloads;
use protocol::severity::Severity;
use serde_json::json;

use super::escalations::{self, Raise};
use super::messages::{to_agent, to_role};
use super::rows::{ClimbedEscalation, FiredClock, NewEvent, OutboxMessage, Taken, Writes};
use super::spans;
use super::Processor;
use crate::domain::ids;
use crate::domain::sla::Deadline;

/// The history row of an escalation that climbed a level.
pub const ESCALATED: &str = "escalated";
/// The history rows the timer writes name it as their source.
pub const TIMER: &str = protocol::names::COORDINATOR_ID;

/// The rows what was taken implies, and the next ladder deadlines. Pure.
pub fn rows(
    p: &Processor,
    taken: &Taken,
    escalation_ids: &[i64],
    now: DateTime<Utc>,
) -> (Writes, Vec<Deadline>) {
    let state: HashMap<&str, &str> = taken
        .workflows
        .iter()
        .map(|(id, s)| (id.as_str(), s.as_str()))
        .collect();
    let mut w = Writes::default();
    let mut next = Vec::new();
    let mut ordinals: HashMap<String, i32> = HashMap::new();
    let mut note = |w: &mut Writes, workflow_id: &str, message_type: &str, detail| {
        let n = ordinals.entry(workflow_id.to_string()).or_insert(0);
        *n += 1;
        let s = state.get(workflow_id).copied().unwrap_or_default();
        w.events.push(NewEvent {
            workflow_id: workflow_id.to_string(),
            ordinal: *n,
            message_id: None,
            message_type: message_type.to_string(),
            source_agent_id: Some(TIMER.to_string()),
            from_state: Some(s.to_string()),
            to_state: s.to_string(),
            at: now,
            detail,
        });
    };
    let mut ids = escalation_ids.iter().copied();

    for c in &taken.warned {
        let data = payloads::to_value(&payloads::SlaWarning {
            workflow_id: c.workflow_id.clone(),
            clock: c.clock.clone(),
            owner_role: c.owner_role.clone(),
            agent_id: c.subject_agent_id.clone(),
            due_at: c.due_at,
            warned_at: now,
            remaining_seconds: (c.due_at - now).num_milliseconds() as f64 / 1000.0,
        });
        let message_id = ids::derived(&format!("clock:{}", c.id), "warning");
        let sent_from = w.outbox.len();
        w.outbox
            .extend(owner_notice(p, c, SLA_WARNING, message_id, data, now));
        clock_fired(p, &mut w, sent_from, c, "warning", SLA_WARNING);
        note(
            &mut w,
            &c.workflow_id,
            SLA_WARNING,
            json!({"clock": c.clock, "round": c.round, "agent": c.subject_agent_id, "due_at": c.due_at}),
        );
    }

    for c in &taken.breached {
        let Some(escalation_id) = ids.next() else {
            break;
        };
        let severity = Severity::parse(&c.severity).unwrap_or(Severity::High);
        let step = p
            .ladders
            .for_escalation(&c.clock, severity)
            .first(&c.owner_role, now);
        let cause = format!("clock:{}", c.id);
        let raised = escalations::raise(
            Raise {
                workflow_id: &c.workflow_id,
                chain_id: None,
                clock: &c.clock,
                clock_id: Some(c.id),
                owner_role: &c.owner_role,
                agent_id: c
                    .subject_agent_id
                    .as_deref()
                    .or(c.owner_agent_id.as_deref()),
                severity,
                step: &step,
                message_type: SLA_BREACHED,
                message_id: ids::derived(&cause, "breached"),
                causation_id: None,
                cause: payloads::EscalationCause {
                    due_at: Some(c.due_at),
                    breached_at: Some(now),
                    round: Some(c.round),
                    ..Default::default()
                },
                now,
            },
            escalation_id,
        );
        let notice = payloads::to_value(&payloads::SlaBreachedNotice {
            workflow_id: c.workflow_id.clone(),
            clock: c.clock.clone(),
            owner_role: c.owner_role.clone(),
            agent_id: c.subject_agent_id.clone(),
            due_at: c.due_at,
            breached_at: now,
            level: step.level,
            target: step.target.clone(),
            severity,
            escalation_id,
        });
        let sent_from = w.outbox.len();
        w.outbox.push(raised.message);
        w.outbox.extend(owner_notice(
            p,
            c,
            SLA_BREACHED,
            ids::derived(&cause, "breach_notice"),
            notice,
            now,
        ));
        clock_fired(p, &mut w, sent_from, c, "breach", SLA_BREACHED);
        w.escalations.push(raised.row);
        next.push(raised.next);
        note(
            &mut w,
            &c.workflow_id,
            SLA_BREACHED,
            json!({"clock": c.clock, "round": c.round, "agent": c.subject_agent_id, "escalation_id": escalation_id}),
        );
    }

    for e in &taken.climbed {
        let Some(id) = ids.next() else { break };
        let raised = climb(p, e, id, now);
        note(
            &mut w,
            &e.workflow_id,
            ESCALATED,
            json!({"escalation_id": id, "chain_id": e.chain_id, "level": raised.row.level, "target": raised.row.target}),
        );
        let sent_from = w.outbox.len();
        let message_type = raised.message.message_type.clone();
        w.outbox.push(raised.message);
        let subject = format!("escalation:{}:level-{}", e.id, raised.row.level);
        spans::fired(
            p,
            &mut w,
            sent_from,
            &e.workflow_id,
            e.id,
            "climb",
            &message_type,
            subject,
        );
        w.escalations.push(raised.row);
        next.push(raised.next);
    }
    (w, next)
}

/// Traces a clock's warning or breach (`what`): the messages queued from `sent_from`
/// on name its span.
fn clock_fired(
    p: &Processor,
    w: &mut Writes,
    sent_from: usize,
    c: &FiredClock,
    what: &str,
    message_type: &str,
) {
    let subject = format!("clock:{}:{}", c.id, c.clock);
    spans::fired(
        p,
        w,
        sent_from,
        &c.workflow_id,
        c.id,
        what,
        message_type,
        subject,
    );
}

/// An escalation nobody acknowledged, raised again one level up (or at the last).
fn climb(p: &Processor, e: &ClimbedEscalation, id: i64, now: DateTime<Utc>) -> escalations::Raised {
    let severity = Severity::parse(&e.severity).unwrap_or(Severity::High);
    let ladder = p.ladders.for_escalation(&e.clock, severity);
    let step = ladder.next(e.level, &e.owner_role, now);
    let message_type = if e.clock_id.is_some() {
        SLA_BREACHED
    } else {
        ESCALATION_RAISED
    };
    escalations::raise(
        Raise {
            workflow_id: &e.workflow_id,
            chain_id: Some(e.chain_id),
            clock: &e.clock,
            clock_id: e.clock_id,
            owner_role: &e.owner_role,
            agent_id: e.agent_id.as_deref(),
            severity,
            step: &step,
            message_type,
            message_id: ids::derived(&format!("escalation:{}", e.id), "climb"),
            causation_id: None,
            cause: payloads::EscalationCause {
                previous_escalation_id: Some(e.id),
                unacknowledged_level: Some(e.level),
                ..Default::default()
            },
            now,
        },
        id,
    )
}

/// A notice to a clock's owner: the agent a per-agent clock is about (its commands
/// queue), else every agent of the owner role (their task queues). Clocks owned by
/// on-call get no notice: on-call gets the escalation itself.
fn owner_notice(
    p: &Processor,
    c: &FiredClock,
    message_type: &str,
    message_id: String,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Option<OutboxMessage> {
    let severity = Severity::parse(&c.severity).unwrap_or(Severity::High);
    let priority = escalations::urgency(&c.clock, severity);
    match &c.subject_agent_id {
        Some(agent) => Some(to_agent(
            message_id,
            &c.workflow_id,
            None,
            message_type,
            agent,
            data,
            priority,
            now,
        )),
        None if p.catalog.is_role(&c.owner_role) => Some(to_role(
            message_id,
            &c.workflow_id,
            None,
            message_type,
            &c.owner_role,
            data,
            json!({}),
            priority,
            now,
        )),
        None => None,
    }
}
