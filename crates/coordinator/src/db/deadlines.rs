//! The timers' statements: which deadlines come in the next window, and taking a batch
//! of due ones in one statement.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::engine::rows::{ClimbedEscalation, FiredClock, Taken};

pub const TAKE_DUE: &str = "WITH
         wanted AS (
           SELECT true AS is_clock, id, workflow_id FROM sla_clocks WHERE id = ANY($1) OR id = ANY($2)
           UNION ALL SELECT false, id, workflow_id FROM escalations WHERE id = ANY($3)),
         locked AS (
           SELECT id, state FROM workflows WHERE id = ANY(ARRAY(SELECT workflow_id FROM wanted))
           ORDER BY id FOR UPDATE SKIP LOCKED),
         warned AS (
           UPDATE sla_clocks SET warned_at = $4
           WHERE id = ANY($1) AND workflow_id = ANY(ARRAY(SELECT id FROM locked))
             AND closed_at IS NULL AND warned_at IS NULL AND warn_at <= $4
           RETURNING id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id, severity, due_at),
         breached AS (
           UPDATE sla_clocks SET status = 'breached', closed_at = $4, closed_by = 'timer'
           WHERE id = ANY($2) AND workflow_id = ANY(ARRAY(SELECT id FROM locked))
             AND closed_at IS NULL AND due_at <= $4
           RETURNING id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id, severity, due_at),
         climbed AS (
           UPDATE escalations SET next_level_at = NULL
           WHERE id = ANY($3) AND workflow_id = ANY(ARRAY(SELECT id FROM locked))
             AND acknowledged_at IS NULL AND next_level_at <= $4
           RETURNING id, workflow_id, chain_id, clock, clock_id, owner_role, agent_id, level, severity)
         SELECT 'locked' AS kind, NULL::bigint AS id, id AS workflow_id, state AS clock, NULL::int AS round,
                NULL AS owner_role, NULL AS owner_agent_id, NULL AS subject_agent_id, NULL AS severity,
                NULL::timestamptz AS due_at, NULL::bigint AS chain_id, NULL::bigint AS clock_id, NULL::int AS level
           FROM locked
         UNION ALL SELECT 'warned', id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id,
                severity, due_at, NULL, NULL, NULL FROM warned
         UNION ALL SELECT 'breached', id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id,
                severity, due_at, NULL, NULL, NULL FROM breached
         UNION ALL SELECT 'climbed', id, workflow_id, clock, NULL, owner_role, agent_id, NULL, severity, NULL,
                chain_id, clock_id, level FROM climbed
         UNION ALL SELECT CASE WHEN is_clock THEN 'wanted_clock' ELSE 'wanted_escalation' END, id, workflow_id,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM wanted";

/// In one statement: locks the workflows of the given deadlines (in id order, skipping
/// those another transaction holds), then marks the due warnings warned, the due clocks
/// breached and the due ladder steps taken, each guarded (still armed, i.e. `closed_at
/// IS NULL`; `warned_at IS NULL`; `next_level_at <= now`), so a deadline fires once however many
/// coordinators try. A clock id may appear in only one of `warnings` and `breaches`.
pub async fn take_due(
    conn: &mut PgConnection,
    warnings: &[i64],
    breaches: &[i64],
    ladder: &[i64],
    now: DateTime<Utc>,
) -> super::Result<Taken> {
    let rows = sqlx::query(TAKE_DUE)
        .bind(warnings)
        .bind(breaches)
        .bind(ladder)
        .bind(now)
        .fetch_all(conn)
        .await?;
    let mut t = Taken::default();
    for r in &rows {
        let kind: &str = r.try_get("kind")?;
        match kind {
            "locked" => t
                .workflows
                .push((r.try_get("workflow_id")?, r.try_get("clock")?)),
            "wanted_clock" | "wanted_escalation" => t.wanted.push((
                kind == "wanted_clock",
                r.try_get("id")?,
                r.try_get("workflow_id")?,
            )),
            "climbed" => t.climbed.push(ClimbedEscalation {
                id: r.try_get("id")?,
                workflow_id: r.try_get("workflow_id")?,
                chain_id: r.try_get("chain_id")?,
                clock: r.try_get("clock")?,
                clock_id: r.try_get("clock_id")?,
                owner_role: r.try_get("owner_role")?,
                agent_id: r.try_get("owner_agent_id")?,
                level: r.try_get("level")?,
                severity: r.try_get("severity")?,
            }),
            _ => {
                let c = FiredClock {
                    id: r.try_get("id")?,
                    workflow_id: r.try_get("workflow_id")?,
                    clock: r.try_get("clock")?,
                    round: r.try_get("round")?,
                    owner_role: r.try_get("owner_role")?,
                    owner_agent_id: r.try_get("owner_agent_id")?,
                    subject_agent_id: r.try_get("subject_agent_id")?,
                    severity: r.try_get("severity")?,
                    due_at: r.try_get("due_at")?,
                };
                if kind == "warned" {
                    t.warned.push(c);
                } else {
                    t.breached.push(c);
                }
            }
        }
    }
    Ok(t)
}
