//! What happens when a deadline comes, each in one transaction that first locks the
//! workflow row: a clock breaches (escalation level 1 to on-call, a notice to its
//! owner), warns its owner, or an unacknowledged escalation climbs one level. Each
//! `UPDATE` is guarded (`status = 'armed'`, `warned_at IS NULL`, `next_level_at <= now`)
//! so a deadline fires once however many coordinators try.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use crate::db::store::{self, FiredClock};
use crate::domain::envelope::{Destination, Payload};
use crate::domain::ids;
use crate::domain::sla::{Deadline, DeadlineKind, Severity};
use crate::escalations::{self, Raise, ESCALATION_RAISED, SLA_BREACHED};
use crate::processor::{exchanges, outgoing};
use crate::runtime::Shared;

pub const SLA_WARNING: &str = "sla_warning";
pub const ESCALATED: &str = "escalated";

/// What firing one deadline did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fired {
    /// False if the deadline no longer applied (met, snoozed, acknowledged, or fired
    /// by another coordinator).
    pub fired: bool,
    /// Deadlines it created (the next ladder step).
    pub deadlines: Vec<Deadline>,
}

/// Fires one deadline in its own transaction.
pub async fn fire(shared: &Shared, d: Deadline) -> sqlx::Result<Fired> {
    let now = Utc::now();
    let mut tx = shared.pool.begin().await?;
    let Some(workflow_id) = store::deadline_workflow(&mut tx, &d).await? else {
        return Ok(Fired::default());
    };
    let Some(locked) = store::lock_workflow(&mut tx, &workflow_id).await? else {
        return Ok(Fired::default());
    };
    let fired = match d.kind {
        DeadlineKind::Breach => breach(shared, &mut tx, d.id, &locked.state, now).await?,
        DeadlineKind::Warning => warn(shared, &mut tx, d.id, &locked.state, now).await?,
        DeadlineKind::Ladder => climb(shared, &mut tx, d.id, &locked.state, now).await?,
    };
    tx.commit().await?;
    if fired.fired {
        let lateness = (now - d.at).to_std().unwrap_or_default().as_secs_f64();
        shared
            .metrics
            .timer_lateness
            .with_label_values(&[d.kind.as_str()])
            .observe(lateness);
        tracing::info!(workflow_id = %workflow_id, kind = d.kind.as_str(), id = d.id, lateness_s = lateness, "deadline fired");
    }
    Ok(fired)
}

async fn breach(
    shared: &Shared,
    conn: &mut PgConnection,
    clock_id: i64,
    state: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Fired> {
    let Some(c) = store::breach_clock(conn, clock_id, now).await? else {
        return Ok(Fired::default());
    };
    let severity = Severity::parse(&c.severity).unwrap_or(Severity::High);
    let ladder = shared.processor.ladders.for_escalation(&c.clock, severity);
    let step = ladder.first(&c.owner_role, now);
    let cause = format!("clock:{clock_id}");
    let escalation_id = reserve_id(conn).await?;
    let raised = escalations::raise(
        Raise {
            workflow_id: &c.workflow_id,
            chain_id: None,
            clock: &c.clock,
            clock_id: Some(clock_id),
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
            data: json!({"due_at": c.due_at, "breached_at": now, "round": c.round}),
            now,
        },
        escalation_id,
    );
    let next = write_raised(conn, raised).await?;
    let notice = json!({
        "workflow_id": c.workflow_id,
        "clock": c.clock,
        "owner_role": c.owner_role,
        "agent_id": c.subject_agent_id,
        "due_at": c.due_at,
        "breached_at": now,
        "level": step.level,
        "target": step.target,
        "severity": severity.as_str(),
        "escalation_id": escalation_id,
    });
    notify_owner(
        shared,
        conn,
        &c,
        SLA_BREACHED,
        ids::derived(&cause, "breach_notice"),
        notice,
        now,
    )
    .await?;
    event(
        conn,
        &c.workflow_id,
        SLA_BREACHED,
        state,
        json!({"clock": c.clock, "round": c.round, "agent": c.subject_agent_id, "escalation_id": escalation_id}),
        now,
    )
    .await?;
    Ok(Fired {
        fired: true,
        deadlines: vec![next],
    })
}

async fn warn(
    shared: &Shared,
    conn: &mut PgConnection,
    clock_id: i64,
    state: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Fired> {
    let Some(c) = store::warn_clock(conn, clock_id, now).await? else {
        return Ok(Fired::default());
    };
    let data = json!({
        "workflow_id": c.workflow_id,
        "clock": c.clock,
        "owner_role": c.owner_role,
        "agent_id": c.subject_agent_id,
        "due_at": c.due_at,
        "warned_at": now,
        "remaining_seconds": (c.due_at - now).num_milliseconds() as f64 / 1000.0,
    });
    let message_id = ids::derived(&format!("clock:{clock_id}"), "warning");
    notify_owner(shared, conn, &c, SLA_WARNING, message_id, data, now).await?;
    event(
        conn,
        &c.workflow_id,
        SLA_WARNING,
        state,
        json!({"clock": c.clock, "round": c.round, "agent": c.subject_agent_id, "due_at": c.due_at}),
        now,
    )
    .await?;
    Ok(Fired {
        fired: true,
        deadlines: Vec::new(),
    })
}

/// An escalation nobody acknowledged: raise it again one level up (or at the last).
async fn climb(
    shared: &Shared,
    conn: &mut PgConnection,
    escalation_id: i64,
    state: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Fired> {
    let Some(e) = store::take_ladder_step(conn, escalation_id, now).await? else {
        return Ok(Fired::default());
    };
    let severity = Severity::parse(&e.severity).unwrap_or(Severity::High);
    let ladder = shared.processor.ladders.for_escalation(&e.clock, severity);
    let step = ladder.next(e.level, &e.owner_role, now);
    let message_type = if e.clock_id.is_some() {
        SLA_BREACHED
    } else {
        ESCALATION_RAISED
    };
    let id = reserve_id(conn).await?;
    let raised = escalations::raise(
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
            message_id: ids::derived(&format!("escalation:{escalation_id}"), "climb"),
            causation_id: None,
            data: json!({"previous_escalation_id": escalation_id, "unacknowledged_level": e.level}),
            now,
        },
        id,
    );
    let next = write_raised(conn, raised).await?;
    event(
        conn,
        &e.workflow_id,
        ESCALATED,
        state,
        json!({"escalation_id": id, "chain_id": e.chain_id, "level": step.level, "target": step.target}),
        now,
    )
    .await?;
    Ok(Fired {
        fired: true,
        deadlines: vec![next],
    })
}

async fn reserve_id(conn: &mut PgConnection) -> sqlx::Result<i64> {
    crate::db::batch::reserve_escalation_ids(conn, 1)
        .await?
        .pop()
        .ok_or_else(|| sqlx::Error::RowNotFound)
}

async fn write_raised(conn: &mut PgConnection, r: escalations::Raised) -> sqlx::Result<Deadline> {
    crate::db::batch::insert_escalations(conn, std::slice::from_ref(&r.row)).await?;
    store::enqueue(conn, &r.message).await?;
    Ok(r.next)
}

/// A notice to a clock's owner: the agent a per-agent clock is about (its commands
/// queue), else every agent of the owner role (their task queues). Clocks owned by
/// on-call get no notice: on-call gets the escalation itself.
async fn notify_owner(
    shared: &Shared,
    conn: &mut PgConnection,
    c: &FiredClock,
    message_type: &str,
    message_id: String,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let (routing_key, destination) = match &c.subject_agent_id {
        Some(agent) => (
            format!("command.{agent}"),
            Destination {
                agent_id: Some(agent.clone()),
                agent_type: None,
                broadcast: false,
            },
        ),
        None if shared.catalog.is_role(&c.owner_role) => (
            format!("task.{}", c.owner_role),
            Destination {
                agent_id: None,
                agent_type: Some(c.owner_role.clone()),
                broadcast: false,
            },
        ),
        None => return Ok(()),
    };
    let m = outgoing(
        message_id,
        &c.workflow_id,
        None,
        message_type,
        exchanges::DIRECT,
        &routing_key,
        Some(destination),
        Payload {
            data,
            metadata: json!({}),
        },
        now,
    );
    store::enqueue(conn, &m).await
}

async fn event(
    conn: &mut PgConnection,
    workflow_id: &str,
    message_type: &str,
    state: &str,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    store::append_note(
        conn,
        workflow_id,
        state,
        message_type,
        "coordinator",
        None,
        detail,
        now,
    )
    .await?;
    Ok(())
}
