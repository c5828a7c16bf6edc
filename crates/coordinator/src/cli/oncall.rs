//! On-call and operator commands: SLA clocks (list, snooze, cancel), escalations
//! (list, acknowledge) and emergencies (raise, show).

use std::fmt::Write as _;

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::{relative, ts};
use crate::db::{read, store};
use crate::domain::emergency;
use crate::escalations::{Acknowledged, ESCALATION_ACKNOWLEDGED};
use crate::pipeline;
use crate::processor::{operator_alert, Outcome, Processor, OPERATOR};
use crate::settings::Settings;
use protocol::envelope::Envelope;

use super::table::{Align, Table};

pub async fn list_clocks(
    pool: &PgPool,
    overdue: bool,
    workflow: Option<&str>,
    limit: i64,
) -> anyhow::Result<String> {
    let rows = read::sla_clocks(pool, overdue, workflow, limit).await?;
    let now = Utc::now();
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("WORKFLOW", Align::Left),
        ("CLOCK", Align::Left),
        ("ROUND", Align::Right),
        ("OWNER", Align::Left),
        ("SEVERITY", Align::Left),
        ("STATUS", Align::Left),
        ("DUE", Align::Left),
        ("NOTE", Align::Left),
    ]);
    for c in &rows {
        let owner = match c.subject_agent_id.as_ref().or(c.owner_agent_id.as_ref()) {
            Some(a) => format!("{} ({a})", c.owner_role),
            None => c.owner_role.clone(),
        };
        let note = match (c.status.as_str(), c.closed_at) {
            ("armed", _) => relative(c.due_at, now),
            (s, Some(at)) => format!("{s} {}", ts(at)),
            _ => String::new(),
        };
        t.row(vec![
            c.id.to_string(),
            c.workflow_id.clone(),
            c.clock.clone(),
            c.round.to_string(),
            owner,
            c.severity.clone(),
            c.status.clone(),
            ts(c.due_at),
            note,
        ]);
    }
    let mut out = t.render();
    if rows.is_empty() {
        out.push_str(if overdue {
            "(nothing overdue)\n"
        } else {
            "(no clocks)\n"
        });
    }
    Ok(out)
}

/// Moves an armed clock's deadline, with a reason, as a history row.
pub async fn snooze(
    settings: &Settings,
    pool: &PgPool,
    clock_id: i64,
    until: DateTime<Utc>,
    reason: &str,
    by: &str,
) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let Some(c) = store::lock_clock(&mut tx, clock_id).await? else {
        return Err(super::not_found("clock", clock_id, "sla list"));
    };
    if c.status != "armed" {
        bail!(
            "clock {clock_id} ({}) is {}, not armed: only an armed clock can be snoozed",
            c.clock,
            c.status
        );
    }
    let warn_at = settings.clock_durations().warn_at(c.armed_at, until);
    store::move_deadline(&mut tx, clock_id, until, warn_at).await?;
    let detail = json!({"clock_id": clock_id, "clock": c.clock, "round": c.round, "from": c.due_at, "to": until, "reason": reason});
    history(&mut tx, &c.workflow_id, "sla_snoozed", by, detail).await?;
    store::notify_timers(&mut tx).await?;
    tx.commit().await?;
    Ok(format!(
        "clock {clock_id} ({} of {}) now due {} (was {})\n",
        c.clock,
        c.workflow_id,
        ts(until),
        ts(c.due_at)
    ))
}

pub async fn cancel(
    pool: &PgPool,
    clock_id: i64,
    reason: &str,
    by: &str,
) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let Some(c) = store::lock_clock(&mut tx, clock_id).await? else {
        return Err(super::not_found("clock", clock_id, "sla list"));
    };
    if c.status != "armed" {
        bail!("clock {clock_id} ({}) is already {}", c.clock, c.status);
    }
    store::cancel_clock(&mut tx, clock_id, by, Utc::now()).await?;
    let detail = json!({"clock_id": clock_id, "clock": c.clock, "round": c.round, "due_at": c.due_at, "reason": reason});
    history(&mut tx, &c.workflow_id, "sla_cancelled", by, detail).await?;
    store::notify_timers(&mut tx).await?;
    tx.commit().await?;
    Ok(format!(
        "clock {clock_id} ({} of {}) cancelled\n",
        c.clock, c.workflow_id
    ))
}

async fn history(
    conn: &mut sqlx::PgConnection,
    workflow_id: &str,
    message_type: &str,
    by: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let state = store::workflow_state(conn, workflow_id)
        .await?
        .unwrap_or_default();
    store::append_note(
        conn,
        workflow_id,
        &state,
        message_type,
        by,
        None,
        detail,
        Utc::now(),
    )
    .await?;
    Ok(())
}

pub async fn list_escalations(
    pool: &PgPool,
    open: bool,
    workflow: Option<&str>,
    limit: i64,
) -> anyhow::Result<String> {
    let rows = read::escalation_list(pool, open, workflow, limit).await?;
    let now = Utc::now();
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("CHAIN", Align::Right),
        ("WORKFLOW", Align::Left),
        ("CLOCK/REASON", Align::Left),
        ("LEVEL", Align::Right),
        ("PAGED", Align::Left),
        ("SEVERITY", Align::Left),
        ("RAISED", Align::Left),
        ("STATUS", Align::Left),
    ]);
    for e in &rows {
        let status = match (&e.acknowledged_at, &e.acknowledged_by, e.next_level_at) {
            (Some(at), by, _) => format!(
                "acknowledged {} by {}",
                ts(*at),
                by.as_deref().unwrap_or("?")
            ),
            (None, _, Some(next)) => format!("open; next level {}", relative(next, now)),
            (None, _, None) => "open; superseded by a higher level".into(),
        };
        let clock = match &e.agent_id {
            Some(a) => format!("{} ({a})", e.clock),
            None => e.clock.clone(),
        };
        t.row(vec![
            e.id.to_string(),
            e.chain_id.to_string(),
            e.workflow_id.clone(),
            clock,
            e.level.to_string(),
            e.target.clone(),
            e.severity.clone(),
            ts(e.raised_at),
            status,
        ]);
    }
    let mut out = t.render();
    if rows.is_empty() {
        out.push_str("(no escalations)\n");
    }
    Ok(out)
}

/// Acknowledges an escalation's chain as an operator: the same path as an agent's
/// `escalation_acknowledged`.
pub async fn acknowledge(
    settings: &Settings,
    pool: &PgPool,
    escalation_id: i64,
    by: &str,
) -> anyhow::Result<String> {
    let mut conn = pool.acquire().await?;
    let Some((workflow_id, _)) = store::escalation_chain(&mut conn, escalation_id).await? else {
        return Err(super::not_found(
            "escalation",
            escalation_id,
            "escalation list --open",
        ));
    };
    drop(conn);
    let env = Envelope::from_agent(
        by,
        OPERATOR,
        ESCALATION_ACKNOWLEDGED,
        &workflow_id,
        json!({"escalation_id": escalation_id}),
        Utc::now(),
    );
    let processor = Processor::from_settings(settings);
    let p = pipeline::apply_operator(pool, &processor, &env).await?;
    match (p.outcome, p.acknowledged) {
        (Outcome::Accepted, Some(Acknowledged::Now { chain_id, ids, .. })) => Ok(format!(
            "acknowledged escalation chain {chain_id} of {workflow_id} by {by} ({} escalation{}); its ladder stops\n",
            ids.len(),
            if ids.len() == 1 { "" } else { "s" }
        )),
        (Outcome::Accepted, Some(Acknowledged::Already { chain_id, .. })) => Ok(format!(
            "escalation chain {chain_id} of {workflow_id} was already acknowledged; nothing changed\n"
        )),
        _ => bail!(
            "escalation {escalation_id} could not be acknowledged: {}",
            p.detail.unwrap_or_default()
        ),
    }
}

pub async fn raise(
    settings: &Settings,
    pool: &PgPool,
    id: Option<String>,
    severity: &str,
    description: &str,
    by: &str,
) -> anyhow::Result<String> {
    let id = id.unwrap_or_else(|| format!("inc-{}", uuid::Uuid::new_v4()));
    let processor = Processor::from_settings(settings);
    let env = operator_alert(&id, severity, description, by, Utc::now());
    let p = pipeline::apply_operator(pool, &processor, &env).await?;
    if p.outcome != Outcome::Accepted {
        bail!(
            "{}",
            p.detail
                .unwrap_or_else(|| "the incident was not raised".into())
        );
    }
    let agents = read::clock_count(pool, &id, emergency::ACKNOWLEDGMENT_CLOCK).await?;
    Ok(format!(
        "incident {id} raised ({severity}): broadcast to every agent; {agents} acknowledgment{} awaited\n",
        if agents == 1 { "" } else { "s" }
    ))
}

pub async fn show(pool: &PgPool, id: &str) -> anyhow::Result<String> {
    let Some(w) = read::workflow(pool, id).await? else {
        return Err(super::not_found(
            "incident",
            id,
            "workflow list --state active",
        ));
    };
    if w.kind != emergency::KIND {
        bail!(
            "{id} is a {} workflow, not an incident (use `coordinator workflow show`)",
            w.kind
        );
    }
    let now = Utc::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Incident {} — {}",
        w.id,
        w.title.as_deref().unwrap_or("(no description)")
    );
    let _ = writeln!(
        out,
        "  state: {}   raised: {}   resolved: {}",
        w.state,
        ts(w.created_at),
        w.completed_at.map_or_else(|| "-".into(), ts)
    );
    let clocks = read::clocks(pool, id).await?;
    out.push_str("\nAcknowledgments\n");
    let mut acks = Table::new(&[
        ("AGENT", Align::Left),
        ("ROLE", Align::Left),
        ("STATUS", Align::Left),
        ("WHEN", Align::Left),
    ])
    .indented("  ");
    for c in clocks
        .iter()
        .filter(|c| c.clock == emergency::ACKNOWLEDGMENT_CLOCK)
    {
        let agent = c.owner_agent_id.as_deref().unwrap_or("?");
        let (what, when) = match (c.status.as_str(), c.closed_at) {
            ("met", Some(at)) => ("acknowledged", ts(at)),
            ("breached", Some(at)) => ("MISSED", format!("escalated {}", ts(at))),
            ("armed", _) => (
                "waiting",
                format!("due {} ({})", ts(c.due_at), relative(c.due_at, now)),
            ),
            ("cancelled", Some(at)) => ("not needed", format!("resolved {}", ts(at))),
            (s, _) => (s, String::new()),
        };
        acks.row(vec![
            agent.to_string(),
            c.owner_role.clone(),
            what.to_string(),
            when,
        ]);
    }
    out.push_str(&acks.render());
    out.push_str("\nResponse clocks\n");
    let mut response = Table::new(&[
        ("CLOCK", Align::Left),
        ("NUMBER", Align::Right),
        ("DUE", Align::Left),
        ("NOTE", Align::Left),
    ])
    .indented("  ");
    for c in clocks
        .iter()
        .filter(|c| c.clock != emergency::ACKNOWLEDGMENT_CLOCK)
    {
        let note = match (c.status.as_str(), c.closed_at) {
            ("armed", _) => relative(c.due_at, now),
            (s, Some(at)) => format!("{s} {}", ts(at)),
            (s, None) => s.to_string(),
        };
        response.row(vec![
            c.clock.clone(),
            c.round.to_string(),
            ts(c.due_at),
            note,
        ]);
    }
    out.push_str(&response.render());
    Ok(out)
}
