//! What on-call reads: SLA clocks, escalations and incidents. (What on-call changes —
//! snooze, cancel, acknowledge, raise — is in `service::ops`.)

use std::fmt::Write as _;

use anyhow::bail;
use chrono::Utc;

use super::table::{Align, Table};
use super::{relative, ts};
use crate::db::{read, Pool as PgPool};
use crate::domain::emergency;

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
