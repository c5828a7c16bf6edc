//! What happens when deadlines come, many in one transaction: [`db::deadlines::take_due`]
//! locks their workflows and takes the due warnings, breaches and ladder steps (each
//! guarded, so a deadline fires once however many coordinators try), then [`rows`]
//! turns what was taken into escalations, notices, on-call messages and history rows,
//! written by the same single statement as a batch of messages.
//!
//! A clock that breaches raises an escalation at level 1 and tells its owner; a clock
//! that warns tells its owner; an unacknowledged escalation climbs one level.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::db::batch::{self, NewEvent, Queued, Writes};
use crate::db::deadlines::{self, ClimbedEscalation, FiredClock};
use crate::db::store::OutboxMessage;
use crate::domain::ids;
use crate::domain::sla::{Deadline, DeadlineKind, Severity};
use crate::escalations::{self, Raise, ESCALATION_RAISED, SLA_BREACHED};
use crate::processor::{to_agent, to_role};
use crate::runtime::Shared;
use protocol::payloads;

pub const SLA_WARNING: &str = "sla_warning";
pub const ESCALATED: &str = "escalated";
/// The history rows the timer writes name it as their source.
pub const TIMER: &str = "coordinator";

/// What firing a batch of deadlines did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fired {
    /// Deadlines that fired (with when they were due).
    pub fired: Vec<Deadline>,
    /// Deadlines whose workflow another transaction held: to try again shortly.
    pub skipped: Vec<Deadline>,
    /// Deadlines the firing created (next ladder steps).
    pub next: Vec<Deadline>,
    /// Outbox rows written.
    pub queued: Vec<Queued>,
}

/// Fires due deadlines in one transaction. A deadline that no longer applies (met,
/// snoozed, acknowledged, or fired by another coordinator) is dropped.
pub async fn fire(shared: &Shared, due: &[Deadline], now: DateTime<Utc>) -> sqlx::Result<Fired> {
    let mut out = Fired::default();
    let (mut warnings, mut breaches, mut ladder) = (Vec::new(), Vec::new(), Vec::new());
    for d in due {
        match d.kind {
            DeadlineKind::Warning => warnings.push(d.id),
            DeadlineKind::Breach => breaches.push(d.id),
            DeadlineKind::Ladder => ladder.push(d.id),
        }
    }
    // A clock whose warning and breach are both due (after a restart) warns now and
    // breaches in the next batch: one statement may change a row only once.
    let warned_too: Vec<i64> = breaches
        .iter()
        .filter(|id| warnings.contains(id))
        .copied()
        .collect();
    breaches.retain(|id| !warned_too.contains(id));
    out.skipped.extend(
        due.iter()
            .filter(|d| d.kind == DeadlineKind::Breach && warned_too.contains(&d.id))
            .copied(),
    );

    let mut tx = shared.pool.begin().await?;
    let taken = deadlines::take_due(&mut tx, &warnings, &breaches, &ladder, now).await?;
    let raises = taken.breached.len() + taken.climbed.len();
    let escalation_ids = batch::reserve_escalation_ids(&mut tx, raises).await?;
    let (writes, next) = rows(shared, &taken, &escalation_ids, now);
    let written = batch::write(&mut tx, writes, now)
        .await
        .map_err(|e| match e {
            batch::WriteError::Db(e) => e,
            batch::WriteError::Conflict(c) => sqlx::Error::Protocol(c.to_string()),
        })?;
    tx.commit().await?;

    let locked: std::collections::HashSet<&str> =
        taken.workflows.iter().map(|(id, _)| id.as_str()).collect();
    let fired: std::collections::HashSet<(DeadlineKind, i64)> = taken
        .warned
        .iter()
        .map(|c| (DeadlineKind::Warning, c.id))
        .chain(taken.breached.iter().map(|c| (DeadlineKind::Breach, c.id)))
        .chain(taken.climbed.iter().map(|e| (DeadlineKind::Ladder, e.id)))
        .collect();
    let held_elsewhere: std::collections::HashSet<(bool, i64)> = taken
        .wanted
        .iter()
        .filter(|(_, _, wf)| !locked.contains(wf.as_str()))
        .map(|(is_clock, id, _)| (*is_clock, *id))
        .collect();
    for d in due {
        if fired.contains(&(d.kind, d.id)) {
            out.fired.push(*d);
        } else if held_elsewhere.contains(&(d.kind != DeadlineKind::Ladder, d.id))
            && !out.skipped.contains(d)
        {
            out.skipped.push(*d);
        }
    }
    out.next = next;
    out.queued = written.queued;
    Ok(out)
}

/// The rows what was taken implies, and the next ladder deadlines. Pure.
pub fn rows(
    shared: &Shared,
    taken: &deadlines::Taken,
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
        w.outbox
            .extend(owner_notice(shared, c, SLA_WARNING, message_id, data, now));
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
        let step = shared
            .processor
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
        w.outbox.push(raised.message);
        w.outbox.extend(owner_notice(
            shared,
            c,
            SLA_BREACHED,
            ids::derived(&cause, "breach_notice"),
            notice,
            now,
        ));
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
        let raised = climb(shared, e, id, now);
        note(
            &mut w,
            &e.workflow_id,
            ESCALATED,
            json!({"escalation_id": id, "chain_id": e.chain_id, "level": raised.row.level, "target": raised.row.target}),
        );
        w.outbox.push(raised.message);
        w.escalations.push(raised.row);
        next.push(raised.next);
    }
    (w, next)
}

/// An escalation nobody acknowledged, raised again one level up (or at the last).
fn climb(
    shared: &Shared,
    e: &ClimbedEscalation,
    id: i64,
    now: DateTime<Utc>,
) -> escalations::Raised {
    let severity = Severity::parse(&e.severity).unwrap_or(Severity::High);
    let ladder = shared.processor.ladders.for_escalation(&e.clock, severity);
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
    shared: &Shared,
    c: &FiredClock,
    message_type: &str,
    message_id: String,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Option<OutboxMessage> {
    match &c.subject_agent_id {
        Some(agent) => Some(to_agent(
            message_id,
            &c.workflow_id,
            None,
            message_type,
            agent,
            data,
            now,
        )),
        None if shared.catalog.is_role(&c.owner_role) => Some(to_role(
            message_id,
            &c.workflow_id,
            None,
            message_type,
            &c.owner_role,
            data,
            json!({}),
            now,
        )),
        None => None,
    }
}
