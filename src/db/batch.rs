//! The set-based statements of the hot path: a batch of messages (or of due timer
//! deadlines) reads and writes with a fixed number of statements, whatever its size.
//! Every statement takes its rows as arrays (`unnest`), so its text never changes and
//! its prepared statement is reused on every connection.
//!
//! Reads come first and in a fixed order: claim the message ids, lock the workflows
//! (sorted by id, so two batches never deadlock), then read what the locked workflows
//! own. Writes follow in the order of the foreign keys.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::store::{OutboxMessage, OUTCOME_ACCEPTED};

/// Claims message ids (the deduplication keys) for this transaction; the ids claimed.
/// An id another transaction holds uncommitted waits for it, then is not claimed.
pub async fn claim(
    conn: &mut PgConnection,
    message_ids: &[&str],
    instance: &str,
) -> sqlx::Result<HashSet<String>> {
    if message_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "INSERT INTO processed_messages (message_id, outcome, processed_by)
         SELECT id, $2, $3 FROM unnest($1::text[]) AS u(id)
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind(message_ids)
    .bind(OUTCOME_ACCEPTED)
    .bind(instance)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A workflow row locked for the rest of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedWorkflow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub round: i32,
}

/// Locks the workflows that exist among `ids`, in id order.
pub async fn lock_workflows(
    conn: &mut PgConnection,
    ids: &[&str],
) -> sqlx::Result<Vec<LockedWorkflow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, kind, state, round FROM workflows WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LockedWorkflow {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                state: r.try_get("state")?,
                round: r.try_get("round")?,
            })
        })
        .collect()
}

/// An armed clock of a locked workflow.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArmedClockRow {
    pub id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
}

pub async fn armed_clocks(
    conn: &mut PgConnection,
    workflow_ids: &[&str],
) -> sqlx::Result<Vec<ArmedClockRow>> {
    if workflow_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id
         FROM sla_clocks WHERE workflow_id = ANY($1) AND status = 'armed' ORDER BY id",
    )
    .bind(workflow_ids)
    .fetch_all(conn)
    .await
}

/// The registered type of each of these agents that is registered.
pub async fn agent_types(
    conn: &mut PgConnection,
    agent_ids: &[&str],
) -> sqlx::Result<Vec<(String, String)>> {
    if agent_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as("SELECT agent_id, agent_type FROM agents WHERE agent_id = ANY($1)")
        .bind(agent_ids)
        .fetch_all(conn)
        .await
}

/// An escalation of a chain that a message names.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainMember {
    pub id: i64,
    pub workflow_id: String,
    pub chain_id: i64,
    /// Not yet acknowledged.
    pub open: bool,
}

/// Every escalation of the chains the given escalations belong to.
pub async fn escalation_chains(
    conn: &mut PgConnection,
    escalation_ids: &[i64],
) -> sqlx::Result<Vec<ChainMember>> {
    if escalation_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT id, workflow_id, chain_id, acknowledged_at IS NULL AS open FROM escalations
         WHERE chain_id IN (SELECT chain_id FROM escalations WHERE id = ANY($1)) ORDER BY id",
    )
    .bind(escalation_ids)
    .fetch_all(conn)
    .await
}

/// Reserves `n` escalation ids, so a batch can name them in the messages it queues.
pub async fn reserve_escalation_ids(conn: &mut PgConnection, n: usize) -> sqlx::Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('escalations', 'id')) FROM generate_series(1, $1)",
    )
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
}

/// A workflow (or incident) created by the batch, in the state the batch left it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub epic_id: Option<String>,
    pub title: Option<String>,
    pub data: Value,
    pub round: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Creates workflows; how many were created (fewer than asked if an id was taken
/// meanwhile, which the caller treats as a conflict to retry).
pub async fn insert_workflows(
    conn: &mut PgConnection,
    rows: &[NewWorkflow],
) -> sqlx::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let res = sqlx::query(
        "INSERT INTO workflows (id, kind, state, epic_id, title, data, round, created_at, updated_at, completed_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                              $7::int[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.epic_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.title.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &r.data).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.round).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.completed_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(usize::try_from(res.rows_affected()).unwrap_or(usize::MAX))
}

/// An existing workflow's state after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowChange {
    pub id: String,
    pub state: String,
    pub round: i32,
    pub at: DateTime<Utc>,
    pub terminal: bool,
}

pub async fn update_workflows(
    conn: &mut PgConnection,
    rows: &[WorkflowChange],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE workflows w SET state = u.state, round = u.round, updated_at = u.at,
                completed_at = CASE WHEN u.terminal THEN coalesce(w.completed_at, u.at) ELSE w.completed_at END
         FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::bool[])
              AS u(id, state, round, at, terminal)
         WHERE w.id = u.id",
    )
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.round).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.terminal).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// A clock armed by the batch, with the status the batch left it in (a clock armed and
/// met in the same batch is written once, already met).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClock {
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    pub severity: String,
    pub armed_at: DateTime<Utc>,
    pub warn_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
}

/// A clock row as inserted: its id and what the timer needs.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InsertedClock {
    pub id: i64,
    pub status: String,
    pub warn_at: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
}

/// Inserts clocks; a clock of the same workflow, name, round and subject that exists
/// already is skipped (re-arming is a no-op).
pub async fn insert_clocks(
    conn: &mut PgConnection,
    rows: &[NewClock],
) -> sqlx::Result<Vec<InsertedClock>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id,
                                 severity, armed_at, warn_at, due_at, status, closed_at, closed_by)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                              $11::text[], $12::timestamptz[], $13::text[])
         ON CONFLICT DO NOTHING RETURNING id, status, warn_at, due_at",
    )
    .bind(rows.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.clock.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.round).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.owner_role.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.owner_agent_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.subject_agent_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.severity.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.armed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.warn_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.due_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.closed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.closed_by.as_deref()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// An armed clock the batch closed or gave an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockChange {
    pub id: i64,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    pub owner_agent_id: Option<String>,
}

pub async fn update_clocks(conn: &mut PgConnection, rows: &[ClockChange]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE sla_clocks c SET status = u.status, closed_at = u.closed_at, closed_by = u.closed_by,
                owner_agent_id = u.owner_agent_id
         FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
              AS u(id, status, closed_at, closed_by, owner_agent_id)
         WHERE c.id = u.id AND c.status = 'armed'",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.closed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.closed_by.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.owner_agent_id.as_deref()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// One raise of an escalation, its id reserved beforehand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEscalation {
    pub id: i64,
    pub chain_id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub clock_id: Option<i64>,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub level: i32,
    pub target: String,
    pub severity: String,
    pub raised_at: DateTime<Utc>,
    pub next_level_at: DateTime<Utc>,
    pub message_id: String,
}

pub async fn insert_escalations(
    conn: &mut PgConnection,
    rows: &[NewEscalation],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO escalations (id, chain_id, workflow_id, clock, clock_id, owner_role, agent_id, level,
                                  target, severity, raised_at, next_level_at, message_id)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                              $7::text[], $8::int[], $9::text[], $10::text[], $11::timestamptz[],
                              $12::timestamptz[], $13::text[])",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.chain_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.clock.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.clock_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.owner_role.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.agent_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.level).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.target.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.severity.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.raised_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.next_level_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// A chain acknowledged: its open escalations stop climbing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAck {
    pub chain_id: i64,
    pub by: String,
    pub at: DateTime<Utc>,
}

pub async fn acknowledge_chains(conn: &mut PgConnection, rows: &[ChainAck]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE escalations e SET acknowledged_at = u.at, acknowledged_by = u.by, next_level_at = NULL
         FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS u(chain_id, by, at)
         WHERE e.chain_id = u.chain_id AND e.acknowledged_at IS NULL",
    )
    .bind(rows.iter().map(|r| r.chain_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.by.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// A history row. `ordinal` numbers the rows of one workflow within the batch (1, 2,
/// …); the sequence number is the workflow's last one plus the ordinal, read when the
/// statement runs, under the workflow's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub workflow_id: String,
    pub ordinal: i32,
    pub message_id: Option<String>,
    pub message_type: String,
    pub source_agent_id: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub at: DateTime<Utc>,
    pub detail: Value,
}

pub async fn insert_events(conn: &mut PgConnection, rows: &[NewEvent]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO workflow_events
             (workflow_id, seq, message_id, message_type, source_agent_id, from_state, to_state, occurred_at, detail)
         SELECT u.workflow_id,
                coalesce((SELECT max(e.seq) FROM workflow_events e WHERE e.workflow_id = u.workflow_id), 0) + u.n,
                u.message_id, u.message_type, u.source_agent_id, u.from_state, u.to_state, u.at, u.detail
         FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::timestamptz[], $9::jsonb[])
              AS u(workflow_id, n, message_id, message_type, source_agent_id, from_state, to_state, at, detail)",
    )
    .bind(rows.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ordinal).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_type.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.source_agent_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.from_state.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to_state.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &r.detail).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// An outbox row as written: its id, for marking it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub message: OutboxMessage,
}

/// Queues messages. `publish_after` is when the relay may take them: the caller that
/// publishes them itself right after the commit sets it a lease ahead, so the relay
/// only picks up what that publisher did not get to (a crash). A message id queued
/// before is skipped.
pub async fn insert_outbox(
    conn: &mut PgConnection,
    rows: Vec<OutboxMessage>,
    publish_after: DateTime<Utc>,
) -> sqlx::Result<Vec<Queued>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id, causation_id,
                             app_id, body, next_attempt_at)
         SELECT u.*, $9 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                   $7::text[], $8::bytea[]) AS u
         ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id",
    )
    .bind(rows.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.exchange.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.routing_key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_type.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.correlation_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.causation_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.app_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
    .bind(publish_after)
    .fetch_all(conn)
    .await?;
    let mut ids: std::collections::HashMap<String, i64> =
        inserted.into_iter().map(|(id, m)| (m, id)).collect();
    Ok(rows
        .into_iter()
        .filter_map(|m| {
            ids.remove(&m.message_id)
                .map(|id| Queued { id, message: m })
        })
        .collect())
}

/// A delivery kept whole because it was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub body_json: Option<Value>,
    pub properties: Value,
    pub source_agent_id: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn insert_dead_letters(
    conn: &mut PgConnection,
    rows: &[NewDeadLetter],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO dead_letters
             (message_id, reason, detail, routing_key, body, body_json, properties, source_agent_id, received_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[],
                              $7::jsonb[], $8::text[], $9::timestamptz[])",
    )
    .bind(rows.iter().map(|r| r.message_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.routing_key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_json.as_ref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &r.properties).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.source_agent_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records how claimed messages ended (claims are written `accepted`).
pub async fn set_outcomes(conn: &mut PgConnection, rows: &[(String, &str)]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE processed_messages p SET outcome = u.outcome
         FROM unnest($1::text[], $2::text[]) AS u(message_id, outcome)
         WHERE p.message_id = u.message_id",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers agents (heartbeat registration); the ones that were new. Other
/// coordinators are told (NOTIFY on commit) so their agent caches reload.
pub async fn register_agents(
    conn: &mut PgConnection,
    rows: &[(String, String)],
    via: &str,
) -> sqlx::Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<String> = sqlx::query_scalar(
        "INSERT INTO agents (agent_id, agent_type, registered_via)
         SELECT u.id, u.type, $3 FROM unnest($1::text[], $2::text[]) AS u(id, type)
         ON CONFLICT DO NOTHING RETURNING agent_id",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(via)
    .fetch_all(&mut *conn)
    .await?;
    if !new.is_empty() {
        super::store::notify_agents(conn).await?;
    }
    Ok(new)
}

/// Records heartbeats (the latest time wins).
pub async fn touch_heartbeats(
    conn: &mut PgConnection,
    rows: &[(String, DateTime<Utc>)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE agents a SET last_heartbeat_at = greatest(a.last_heartbeat_at, u.at)
         FROM (SELECT id, max(at) AS at FROM unnest($1::text[], $2::timestamptz[]) AS x(id, at) GROUP BY id) u
         WHERE a.agent_id = u.id",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// What a batch must read once its message ids are claimed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Workflows (and incidents) its messages name, to lock.
    pub workflow_ids: Vec<String>,
    /// Senders the agent cache does not hold.
    pub agent_ids: Vec<String>,
    /// Escalations named by acknowledgements.
    pub escalation_ids: Vec<i64>,
    /// An emergency is raised: every registered agent must acknowledge it.
    pub all_agents: bool,
    /// Escalation ids to reserve (messages that may raise one).
    pub escalations: usize,
}

impl Needs {
    /// The statements [`load`] runs for these needs (the lock runs whenever there are
    /// workflows; the clocks when some were locked, which it counts as likely).
    pub fn statements(&self) -> usize {
        let wf = usize::from(!self.workflow_ids.is_empty());
        2 * wf
            + usize::from(!self.agent_ids.is_empty())
            + usize::from(self.all_agents)
            + usize::from(!self.escalation_ids.is_empty())
            + usize::from(self.escalations > 0)
    }
}

/// What a batch read under its locks.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub workflows: Vec<LockedWorkflow>,
    pub clocks: Vec<ArmedClockRow>,
    pub agents: Vec<(String, String)>,
    pub all_agents: Option<Vec<(String, String)>>,
    pub chains: Vec<ChainMember>,
    pub escalation_ids: Vec<i64>,
}

/// Runs the reads of a batch: a statement per kind of thing needed, none for what is
/// not needed.
pub async fn load(conn: &mut PgConnection, needs: &Needs) -> sqlx::Result<Loaded> {
    let mut ids: Vec<&str> = needs.workflow_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let workflows = lock_workflows(conn, &ids).await?;
    let locked: Vec<&str> = workflows.iter().map(|w| w.id.as_str()).collect();
    let clocks = armed_clocks(conn, &locked).await?;
    let agent_ids: Vec<&str> = needs.agent_ids.iter().map(String::as_str).collect();
    let agents = agent_types(conn, &agent_ids).await?;
    let all_agents = if needs.all_agents {
        Some(super::store::all_agents(conn).await?)
    } else {
        None
    };
    let chains = escalation_chains(conn, &needs.escalation_ids).await?;
    let escalation_ids = reserve_escalation_ids(conn, needs.escalations).await?;
    Ok(Loaded {
        workflows,
        clocks,
        agents,
        all_agents,
        chains,
        escalation_ids,
    })
}

/// Everything a batch (of messages or of timer deadlines) writes.
#[derive(Debug, Default)]
pub struct Writes {
    pub new_workflows: Vec<NewWorkflow>,
    pub workflow_changes: Vec<WorkflowChange>,
    pub new_clocks: Vec<NewClock>,
    pub clock_changes: Vec<ClockChange>,
    pub escalations: Vec<NewEscalation>,
    pub chain_acks: Vec<ChainAck>,
    pub events: Vec<NewEvent>,
    pub outbox: Vec<OutboxMessage>,
    pub dead_letters: Vec<NewDeadLetter>,
    pub outcomes: Vec<(String, &'static str)>,
    /// Agents registered by heartbeat.
    pub registrations: Vec<(String, String)>,
    pub heartbeats: Vec<(String, DateTime<Utc>)>,
}

impl Writes {
    /// The statements [`write`] runs for these rows.
    pub fn statements(&self) -> usize {
        [
            !self.new_workflows.is_empty(),
            !self.workflow_changes.is_empty(),
            !self.new_clocks.is_empty(),
            !self.clock_changes.is_empty(),
            !self.escalations.is_empty(),
            !self.chain_acks.is_empty(),
            !self.events.is_empty(),
            !self.dead_letters.is_empty(),
            !self.outcomes.is_empty(),
            !self.registrations.is_empty(),
            !self.heartbeats.is_empty(),
            !self.outbox.is_empty(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

/// What the writes produced that only the database knows.
#[derive(Debug, Default)]
pub struct Written {
    pub clocks: Vec<InsertedClock>,
    pub queued: Vec<Queued>,
    /// Agents that were not registered before.
    pub registered: Vec<String>,
}

/// A write that the batch's own reads said could not fail did: a workflow id was taken
/// between the lock and the insert by a transaction that did not hold the lock. The
/// batch is retried; its reads then see the new row.
#[derive(Debug, thiserror::Error)]
#[error("workflow ids were created concurrently; the batch must be re-read")]
pub struct Conflict;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Conflict(#[from] Conflict),
}

/// Runs the writes of a batch in foreign-key order, a statement per kind of row.
pub async fn write(
    conn: &mut PgConnection,
    w: Writes,
    publish_after: DateTime<Utc>,
) -> Result<Written, WriteError> {
    if insert_workflows(conn, &w.new_workflows).await? != w.new_workflows.len() {
        return Err(Conflict.into());
    }
    update_workflows(conn, &w.workflow_changes).await?;
    let clocks = insert_clocks(conn, &w.new_clocks).await?;
    update_clocks(conn, &w.clock_changes).await?;
    insert_escalations(conn, &w.escalations).await?;
    acknowledge_chains(conn, &w.chain_acks).await?;
    insert_events(conn, &w.events).await?;
    insert_dead_letters(conn, &w.dead_letters).await?;
    set_outcomes(conn, &w.outcomes).await?;
    let registered = register_agents(conn, &w.registrations, "heartbeat").await?;
    touch_heartbeats(conn, &w.heartbeats).await?;
    let queued = insert_outbox(conn, w.outbox, publish_after).await?;
    Ok(Written {
        clocks,
        queued,
        registered,
    })
}
