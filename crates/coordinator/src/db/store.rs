//! The writes of message processing and of the outbox relay. Every function takes a
//! connection so it joins the caller's transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::domain::sla::{ArmedClock, Deadline, DeadlineKind};
use crate::domain::workflow::ClockRef;

pub const OUTCOME_ACCEPTED: &str = "accepted";
pub const OUTCOME_REJECTED: &str = "rejected";
pub const OUTCOME_OBSERVED: &str = "observed";

/// Forgets a message id that was not applied (rejected or set aside), so a replayed
/// copy is acted on again. One that was applied is kept: replaying it changes nothing.
/// Whether it was forgotten.
pub async fn forget_unapplied(conn: &mut PgConnection, message_id: &str) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("DELETE FROM processed_messages WHERE message_id = $1 AND outcome <> $2")
            .bind(message_id)
            .bind(OUTCOME_ACCEPTED)
            .execute(conn)
            .await?
            .rows_affected()
            > 0,
    )
}

/// The registered type of an agent, if it is registered.
pub async fn agent_type(conn: &mut PgConnection, agent_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT agent_type FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_optional(conn)
        .await
}

/// Registers an agent; true if it was not registered before (then every running
/// coordinator is told to reload its agent cache).
pub async fn register_agent(
    conn: &mut PgConnection,
    agent_id: &str,
    agent_type: &str,
    via: &str,
) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO agents (agent_id, agent_type, registered_via) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(agent_id)
    .bind(agent_type)
    .bind(via)
    .execute(&mut *conn)
    .await?;
    let new = res.rows_affected() == 1;
    if new {
        notify_agents(conn).await?;
    }
    Ok(new)
}

/// The LISTEN/NOTIFY channel agent caches reload on.
pub const AGENTS_CHANNEL: &str = "coordinator_agents";

/// Tells every running coordinator (on commit) that the registered agents changed.
pub async fn notify_agents(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(AGENTS_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

pub const ALL_AGENTS: &str = "SELECT agent_id, agent_type FROM agents ORDER BY agent_id";

/// Every registered agent, for declaring queues at start.
pub async fn all_agents(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query(ALL_AGENTS).fetch_all(conn).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("agent_id")?, r.try_get("agent_type")?)))
        .collect()
}

#[derive(Debug, Clone)]
pub struct LockedWorkflow {
    pub kind: String,
    pub state: String,
    pub round: i32,
}

/// Locks a workflow row for the rest of the transaction.
pub async fn lock_workflow(
    conn: &mut PgConnection,
    id: &str,
) -> sqlx::Result<Option<LockedWorkflow>> {
    let row = sqlx::query("SELECT kind, state, round FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(LockedWorkflow {
            kind: r.try_get("kind")?,
            state: r.try_get("state")?,
            round: r.try_get("round")?,
        })
    })
    .transpose()
}

pub async fn update_workflow(
    conn: &mut PgConnection,
    id: &str,
    state: &str,
    round: i32,
    terminal: bool,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE workflows SET state = $2, round = $3, updated_at = $4,
                completed_at = CASE WHEN $5 THEN coalesce(completed_at, $4) ELSE completed_at END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(round)
    .bind(at)
    .bind(terminal)
    .execute(conn)
    .await?;
    Ok(())
}

pub struct NewEvent<'a> {
    pub workflow_id: &'a str,
    pub message_id: Option<&'a str>,
    pub message_type: &'a str,
    pub source_agent_id: Option<&'a str>,
    pub from_state: Option<&'a str>,
    pub to_state: &'a str,
    pub at: DateTime<Utc>,
    pub detail: Value,
}

/// Appends to a workflow's history; the caller holds the workflow row lock, so the
/// next sequence number cannot race.
pub async fn append_event(conn: &mut PgConnection, e: &NewEvent<'_>) -> sqlx::Result<i32> {
    sqlx::query_scalar(
        "INSERT INTO workflow_events
             (workflow_id, seq, message_id, message_type, source_agent_id, from_state, to_state, occurred_at, detail)
         SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8
         FROM workflow_events WHERE workflow_id = $1
         RETURNING seq",
    )
    .bind(e.workflow_id)
    .bind(e.message_id)
    .bind(e.message_type)
    .bind(e.source_agent_id)
    .bind(e.from_state)
    .bind(e.to_state)
    .bind(e.at)
    .bind(&e.detail)
    .fetch_one(conn)
    .await
}

pub async fn armed_clocks(
    conn: &mut PgConnection,
    workflow_id: &str,
) -> sqlx::Result<Vec<ArmedClock>> {
    let rows = sqlx::query(
        "SELECT clock, round, owner_role, subject_agent_id FROM sla_clocks
         WHERE workflow_id = $1 AND status = 'armed' ORDER BY id",
    )
    .bind(workflow_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ArmedClock {
                clock: r.try_get("clock")?,
                round: r.try_get("round")?,
                owner_role: r.try_get("owner_role")?,
                subject_agent_id: r.try_get("subject_agent_id")?,
            })
        })
        .collect()
}

/// Closes an armed clock as `met` or `cancelled`.
pub async fn close_clock(
    conn: &mut PgConnection,
    workflow_id: &str,
    clock: &ClockRef,
    status: &str,
    closed_by: Option<&str>,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sla_clocks SET status = $5, closed_at = $6, closed_by = $7
         WHERE workflow_id = $1 AND clock = $2 AND round = $3
           AND coalesce(subject_agent_id, '') = coalesce($4, '') AND status = 'armed'",
    )
    .bind(workflow_id)
    .bind(&clock.clock)
    .bind(clock.round)
    .bind(&clock.subject_agent_id)
    .bind(status)
    .bind(at)
    .bind(closed_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// The workflow and chain of an escalation.
pub async fn escalation_chain(
    conn: &mut PgConnection,
    id: i64,
) -> sqlx::Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT workflow_id, chain_id FROM escalations WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok((r.try_get("workflow_id")?, r.try_get("chain_id")?)))
        .transpose()
}

pub const DEADLINES_BEFORE: &str = "(SELECT due_at AS at, 'breach' AS kind, id FROM sla_clocks
           WHERE status = 'armed' AND due_at < $1 ORDER BY due_at LIMIT $2)
         UNION ALL
         (SELECT warn_at, 'warning', id FROM sla_clocks
           WHERE status = 'armed' AND warned_at IS NULL AND warn_at < $1 ORDER BY warn_at LIMIT $2)
         UNION ALL
         (SELECT next_level_at, 'ladder', id FROM escalations
           WHERE acknowledged_at IS NULL AND next_level_at < $1 ORDER BY next_level_at LIMIT $2)";

/// Every deadline before `until`, earliest first, at most `limit`; and whether the
/// limit cut the list (then the caller's window must end at the last one returned).
pub async fn deadlines_before(
    conn: &mut PgConnection,
    until: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<(Vec<Deadline>, bool)> {
    let rows = sqlx::query(DEADLINES_BEFORE)
        .bind(until)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: String = r.try_get("kind")?;
        if let Some(kind) = DeadlineKind::parse(&kind) {
            out.push(Deadline {
                at: r.try_get("at")?,
                kind,
                id: r.try_get("id")?,
            });
        }
    }
    out.sort_unstable();
    // If any kind filled its limit, deadlines after the last one kept may be missing.
    let cut = out.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok((out, cut))
}

/// Tells every running timer to reload its window (after an operator moved a deadline).
pub async fn notify_timers(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(TIMERS_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// The LISTEN/NOTIFY channel timers reload on.
pub const TIMERS_CHANNEL: &str = "coordinator_timers";

/// A message the coordinator has committed to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub message_type: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub app_id: String,
    pub body: Vec<u8>,
}

pub const LEASE_DUE: &str = "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE id = ANY(ARRAY(SELECT id FROM outbox WHERE sent_at IS NULL AND undeliverable_at IS NULL
                      AND next_attempt_at <= now()
                      ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
         RETURNING id, attempts, message_id, exchange, routing_key, message_type, correlation_id,
                   causation_id, app_id, body";

/// Leases due unsent rows to this relay: they become due again `lease` from now, so a
/// relay that dies mid-publish loses nothing, and no transaction stays open while the
/// broker confirms. Rows another relay is leasing right now are skipped. Earliest due
/// first, in the order of the pending index, so a step reads only the rows it takes
/// (ordered by id, it sorted every due row for each step: quadratic in a backlog).
pub async fn lease_due(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
) -> sqlx::Result<Vec<(super::batch::Queued, i32)>> {
    let rows = sqlx::query(LEASE_DUE)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(conn)
        .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok((
                super::batch::Queued {
                    id: r.try_get("id")?,
                    message: OutboxMessage {
                        message_id: r.try_get("message_id")?,
                        exchange: r.try_get("exchange")?,
                        routing_key: r.try_get("routing_key")?,
                        message_type: r.try_get("message_type")?,
                        correlation_id: r.try_get("correlation_id")?,
                        causation_id: r.try_get("causation_id")?,
                        app_id: r.try_get("app_id")?,
                        body: r.try_get("body")?,
                    },
                },
                r.try_get("attempts")?,
            ))
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    out.sort_by_key(|(q, _)| q.id);
    Ok(out)
}

pub const MARK_SENT: &str = "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = ANY($1)";

pub async fn mark_sent(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(MARK_SENT).bind(ids).execute(conn).await?;
    Ok(())
}

// Given-up rows are those set to now() (the transaction's time) by this statement: one
// given up before has an earlier time. Conditions on sent_at or undeliverable_at in the
// WHERE would match the pending index's predicate and let a generic plan walk it whole.
pub const MARK_FAILED: &str = "WITH failed AS (
           UPDATE outbox o SET attempts = o.attempts + 1, last_error = u.error,
                  next_attempt_at = now() + make_interval(secs => u.wait),
                  undeliverable_at = CASE
                      WHEN o.undeliverable_at IS NULL AND o.sent_at IS NULL
                           AND o.created_at <= now() - make_interval(secs => $4) THEN now()
                      ELSE o.undeliverable_at END
           FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(id, error, wait)
           WHERE o.id = u.id AND o.id = ANY($1)
           RETURNING o.id, o.message_id, o.message_type, o.exchange, o.routing_key,
                     o.correlation_id, o.attempts, o.created_at, o.undeliverable_at, u.error)
         SELECT id, message_id, message_type, exchange, routing_key, correlation_id, attempts,
                created_at, error AS last_error
         FROM failed WHERE undeliverable_at = now()";

/// An outbox message given up on: no queue took it for `outbox.undeliverable_after`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Undeliverable {
    pub id: i64,
    pub message_id: String,
    pub message_type: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_error: String,
}

/// Leaves rows unsent, each due again after its wait; those written longer than
/// `give_up_after` ago are marked undeliverable instead (once: a row already given up
/// or sent is left alone) and returned.
pub async fn mark_failed(
    conn: &mut PgConnection,
    rows: &[(i64, String, std::time::Duration)],
    give_up_after: std::time::Duration,
) -> sqlx::Result<Vec<Undeliverable>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(MARK_FAILED)
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.as_secs_f64()).collect::<Vec<_>>())
        .bind(give_up_after.as_secs_f64())
        .fetch_all(conn)
        .await
}

/// What housekeeping deletes once it has outlived its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Outbox rows sent longer ago than `retention.outbox`.
    SentOutbox,
    /// Outbox rows given up longer ago than `retention.outbox`.
    UndeliverableOutbox,
    /// Deduplication keys older than `retention.processed_messages`.
    ProcessedMessages,
    /// Dead letters replayed or resolved longer ago than `retention.dead_letters`.
    SettledDeadLetters,
}

impl Expired {
    pub const ALL: [Expired; 4] = [
        Expired::SentOutbox,
        Expired::UndeliverableOutbox,
        Expired::ProcessedMessages,
        Expired::SettledDeadLetters,
    ];

    /// The delete, with the retention in seconds as `$1` and the most rows as `$2`.
    pub fn statement(self) -> &'static str {
        match self {
            Expired::SentOutbox => "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2)",
            Expired::UndeliverableOutbox => "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE undeliverable_at < now() - make_interval(secs => $1) LIMIT $2)",
            Expired::ProcessedMessages => "DELETE FROM processed_messages WHERE message_id IN (
                 SELECT message_id FROM processed_messages
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
            Expired::SettledDeadLetters => "DELETE FROM dead_letters WHERE id IN (
                 SELECT id FROM dead_letters
                 WHERE coalesce(resolved_at, replayed_at) < now() - make_interval(secs => $1) LIMIT $2)",
        }
    }
}

/// Deletes at most `limit` rows of `what` older than `retention`; how many.
pub async fn delete_expired(
    pool: &sqlx::PgPool,
    what: Expired,
    retention: std::time::Duration,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(what.statement())
        .bind(retention.as_secs_f64())
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Rows not yet sent (due or waiting for a retry).
pub async fn pending_count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND undeliverable_at IS NULL",
    )
    .fetch_one(conn)
    .await
}

/// Makes every unsent row due now (after a reconnect, or when an agent's queues appear).
pub async fn retry_now(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE sent_at IS NULL AND undeliverable_at IS NULL AND next_attempt_at > now()")
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub message_id: Option<String>,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Value,
    pub replayed_at: Option<DateTime<Utc>>,
}

pub async fn lock_dead_letter(
    conn: &mut PgConnection,
    id: i64,
) -> sqlx::Result<Option<DeadLetter>> {
    let row = sqlx::query(
        "SELECT id, message_id, routing_key, body, properties, replayed_at FROM dead_letters WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(DeadLetter {
            id: r.try_get("id")?,
            message_id: r.try_get("message_id")?,
            routing_key: r.try_get("routing_key")?,
            body: r.try_get("body")?,
            properties: r.try_get("properties")?,
            replayed_at: r.try_get("replayed_at")?,
        })
    })
    .transpose()
}

/// Whether a message id is recorded as processed (applied, rejected or observed).
pub async fn was_processed(conn: &mut PgConnection, message_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_messages WHERE message_id = $1)")
        .bind(message_id)
        .fetch_one(conn)
        .await
}

/// Marks a dead letter replayed and records who replayed it.
pub async fn mark_replayed(conn: &mut PgConnection, id: i64, by: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO dead_letter_replays (dead_letter_id, replayed_by) VALUES ($1, $2)")
        .bind(id)
        .bind(by)
        .execute(conn)
        .await?;
    Ok(())
}

/// A dead letter unresolved past `dead_letters.escalate_after`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnresolvedDeadLetter {
    pub id: i64,
    pub reason: String,
    pub message_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Marks up to `limit` dead letters received longer than `after` ago, neither replayed
/// nor resolved nor escalated yet, as escalated now, and returns them. Rows another
/// coordinator is marking are skipped, so each is escalated once.
pub async fn escalate_unresolved_dead_letters(
    conn: &mut PgConnection,
    after: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<UnresolvedDeadLetter>> {
    sqlx::query_as(
        "UPDATE dead_letters SET escalated_at = now()
         WHERE id = ANY(ARRAY(
             SELECT id FROM dead_letters
             WHERE escalated_at IS NULL AND resolved_at IS NULL AND replayed_at IS NULL
               AND received_at < now() - make_interval(secs => $1)
             ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))
         RETURNING id, reason, message_id, received_at",
    )
    .bind(after.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Sets a dead letter aside for good, with the operator's note; false if there is none
/// with that id. Resolving again replaces the note.
pub async fn resolve_dead_letter(
    conn: &mut PgConnection,
    id: i64,
    note: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE dead_letters SET resolved_at = coalesce(resolved_at, now()), resolution = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(note)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// An SLA clock as an operator acts on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClockRow {
    pub id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub status: String,
    pub armed_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// Locks a clock row, after its workflow row (the order every writer follows).
pub async fn lock_clock(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<ClockRow>> {
    let wf: Option<String> = sqlx::query_scalar("SELECT workflow_id FROM sla_clocks WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(wf) = wf else { return Ok(None) };
    lock_workflow(conn, &wf).await?;
    sqlx::query_as(
        "SELECT id, workflow_id, clock, round, status, armed_at, due_at FROM sla_clocks WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Moves an armed clock's deadline (and its warning, which may fire again).
pub async fn move_deadline(
    conn: &mut PgConnection,
    id: i64,
    due_at: DateTime<Utc>,
    warn_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sla_clocks SET due_at = $2, warn_at = $3,
                warned_at = CASE WHEN $3 > now() THEN NULL ELSE warned_at END
         WHERE id = $1 AND status = 'armed'",
    )
    .bind(id)
    .bind(due_at)
    .bind(warn_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn cancel_clock(
    conn: &mut PgConnection,
    id: i64,
    by: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sla_clocks SET status = 'cancelled', closed_at = $3, closed_by = $2 WHERE id = $1 AND status = 'armed'",
    )
    .bind(id)
    .bind(by)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The current state of a workflow (for history rows written outside a transition).
pub async fn workflow_state(conn: &mut PgConnection, id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT state FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Appends a history row that changes no state (a breach, a warning, an operator's
/// snooze, an acknowledgement): `from_state` = `to_state` = `state`. One argument per
/// column, like [`append_event`]'s struct, but short at its call sites.
#[allow(clippy::too_many_arguments)]
pub async fn append_note(
    conn: &mut PgConnection,
    workflow_id: &str,
    state: &str,
    message_type: &str,
    source_agent_id: &str,
    message_id: Option<&str>,
    detail: Value,
    at: DateTime<Utc>,
) -> sqlx::Result<i32> {
    append_event(
        conn,
        &NewEvent {
            workflow_id,
            message_id,
            message_type,
            source_agent_id: Some(source_agent_id),
            from_state: Some(state),
            to_state: state,
            at,
            detail,
        },
    )
    .await
}

/// What the broker dead-lettered, with each row's `collected_key`; a key already stored
/// (a redelivered copy) is skipped. How many rows were new.
pub async fn store_collected(
    conn: &mut PgConnection,
    rows: &[(crate::db::batch::NewDeadLetter, String)],
) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "INSERT INTO dead_letters
           (message_id, reason, detail, routing_key, body, body_json, properties, source_agent_id,
            received_at, collected_key)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                              $6::jsonb[], $7::jsonb[], $8::text[], $9::timestamptz[], $10::text[])
         ON CONFLICT (collected_key) WHERE collected_key IS NOT NULL DO NOTHING",
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.message_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.reason.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.detail.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.routing_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.body.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(d, _)| d.body_json.as_ref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(d, _)| &d.properties).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(d, _)| d.source_agent_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(d, _)| d.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(res.rows_affected())
}
