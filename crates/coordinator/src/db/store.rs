//! The statements around the hot path: agents, the timers' window, the outbox relay,
//! housekeeping, dead letters and the operator's bookkeeping. Every function takes a
//! connection so it joins the caller's transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::domain::sla::{Deadline, DeadlineKind};
use crate::engine::rows::{
    NewDeadLetter, OutboxMessage, Queued, Undeliverable, UnresolvedDeadLetter, OUTCOME_ACCEPTED,
};

/// Forgets a message id that was not applied (rejected or set aside), so a replayed
/// copy is acted on again. One that was applied is kept: replaying it changes nothing.
/// Whether it was forgotten.
pub async fn forget_unapplied(conn: &mut PgConnection, message_id: &str) -> super::Result<bool> {
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
pub async fn agent_type(conn: &mut PgConnection, agent_id: &str) -> super::Result<Option<String>> {
    sqlx::query_scalar("SELECT agent_type FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_optional(conn)
        .await
        .map_err(super::Error::from)
}

/// Registers an agent; true if it was not registered before (then every running
/// coordinator is told to reload its agent cache).
pub async fn register_agent(
    conn: &mut PgConnection,
    agent_id: &str,
    agent_type: &str,
    via: &str,
) -> super::Result<bool> {
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

/// Deletes an agent's registration and tells every running coordinator.
pub async fn delete_agent(conn: &mut PgConnection, agent_id: &str) -> super::Result<bool> {
    let res = sqlx::query("DELETE FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .execute(&mut *conn)
        .await?;
    notify_agents(conn).await?;
    Ok(res.rows_affected() == 1)
}

/// What adding a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdded {
    Added,
    /// The agent already had this key under this id: nothing changed.
    AlreadyThere,
    /// The agent has another public key under this id: nothing changed.
    IdTaken,
    /// No such agent is registered.
    NoAgent,
}

/// Adds a public key to an agent, and tells every running coordinator. A key id the
/// agent already uses for another key is never replaced (that is a rotation).
pub async fn add_agent_key(
    conn: &mut PgConnection,
    agent_id: &str,
    key_id: &str,
    public_key: &[u8],
    by: &str,
) -> super::Result<KeyAdded> {
    let res = sqlx::query(
        "INSERT INTO agent_keys (agent_id, key_id, public_key, added_by)
         SELECT agent_id, $2, $3, $4 FROM agents WHERE agent_id = $1
         ON CONFLICT (agent_id, key_id) DO NOTHING",
    )
    .bind(agent_id)
    .bind(key_id)
    .bind(public_key)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    if res.rows_affected() == 1 {
        notify_agents(conn).await?;
        return Ok(KeyAdded::Added);
    }
    let existing: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT public_key FROM agent_keys WHERE agent_id = $1 AND key_id = $2")
            .bind(agent_id)
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match existing {
        Some(k) if k == public_key => KeyAdded::AlreadyThere,
        Some(_) => KeyAdded::IdTaken,
        None => KeyAdded::NoAgent,
    })
}

/// Retires an agent's keys: those named, or (`keep_newest`) all but the newest
/// `keep_newest`. The ids retired.
pub async fn retire_agent_keys(
    conn: &mut PgConnection,
    agent_id: &str,
    named: Option<&str>,
    keep_newest: i64,
) -> super::Result<Vec<String>> {
    let retired: Vec<String> = sqlx::query_scalar(
        "DELETE FROM agent_keys WHERE agent_id = $1 AND ($2::text IS NULL OR key_id = $2)
           AND ($2::text IS NOT NULL OR key_id NOT IN (
                SELECT key_id FROM agent_keys WHERE agent_id = $1
                ORDER BY added_at DESC, key_id DESC LIMIT $3))
         RETURNING key_id",
    )
    .bind(agent_id)
    .bind(named)
    .bind(keep_newest)
    .fetch_all(&mut *conn)
    .await?;
    notify_agents(conn).await?;
    Ok(retired)
}

/// Every agent's public keys: (agent id, key id, key bytes).
pub async fn agent_keys(conn: &mut PgConnection) -> super::Result<Vec<(String, String, Vec<u8>)>> {
    Ok(sqlx::query_as(
        "SELECT agent_id, key_id, public_key FROM agent_keys ORDER BY agent_id, added_at",
    )
    .fetch_all(conn)
    .await?)
}

/// The LISTEN/NOTIFY channel agent caches reload on.
pub const AGENTS_CHANNEL: &str = "coordinator_agents";

/// Tells every running coordinator (on commit) that the registered agents changed.
pub async fn notify_agents(conn: &mut PgConnection) -> super::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(AGENTS_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

pub const ALL_AGENTS: &str = "SELECT agent_id, agent_type FROM agents ORDER BY agent_id";

/// Every registered agent, for declaring queues at start.
pub async fn all_agents(conn: &mut PgConnection) -> super::Result<Vec<(String, String)>> {
    let rows = sqlx::query(ALL_AGENTS).fetch_all(conn).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("agent_id")?, r.try_get("agent_type")?)))
        .collect()
}

/// The workflow and chain of an escalation.
pub async fn escalation_chain(
    conn: &mut PgConnection,
    id: i64,
) -> super::Result<Option<(String, i64)>> {
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
) -> super::Result<(Vec<Deadline>, bool)> {
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
pub async fn notify_timers(conn: &mut PgConnection) -> super::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(TIMERS_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// The LISTEN/NOTIFY channel timers reload on.
pub const TIMERS_CHANNEL: &str = "coordinator_timers";

pub const LEASE_DUE: &str = "UPDATE outbox SET next_attempt_at = $3::timestamptz + make_interval(secs => $2)
         WHERE id = ANY(ARRAY(SELECT id FROM outbox WHERE sent_at IS NULL AND undeliverable_at IS NULL
                      AND next_attempt_at <= $3
                      ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
         RETURNING id, attempts, message_id, exchange, routing_key, message_type, correlation_id,
                   causation_id, app_id, body, traceparent";

/// Leases due unsent rows to this relay: they become due again `lease` from now, so a
/// relay that dies mid-publish loses nothing, and no transaction stays open while the
/// broker confirms. Rows another relay is leasing right now are skipped. Earliest due
/// first, in the order of the pending index, so a step reads only the rows it takes
/// (ordered by id, it sorted every due row for each step: quadratic in a backlog).
pub async fn lease_due(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> super::Result<Vec<(Queued, i32)>> {
    let rows = sqlx::query(LEASE_DUE)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .bind(now)
        .fetch_all(conn)
        .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok((
                Queued {
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
                        traceparent: r.try_get("traceparent")?,
                    },
                },
                r.try_get("attempts")?,
            ))
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    out.sort_by_key(|(q, _)| q.id);
    Ok(out)
}

pub const MARK_SENT: &str =
    "UPDATE outbox SET sent_at = $2, attempts = attempts + 1, last_error = NULL WHERE id = ANY($1)";

pub async fn mark_sent(
    conn: &mut PgConnection,
    ids: &[i64],
    now: DateTime<Utc>,
) -> super::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(MARK_SENT)
        .bind(ids)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

// Given-up rows are those set to $5 (the caller's time) by this statement: one
// given up before has an earlier time. Conditions on sent_at or undeliverable_at in the
// WHERE would match the pending index's predicate and let a generic plan walk it whole.
pub const MARK_FAILED: &str = "WITH failed AS (
           UPDATE outbox o SET attempts = o.attempts + 1, last_error = u.error,
                  next_attempt_at = $5::timestamptz + make_interval(secs => u.wait),
                  undeliverable_at = CASE
                      WHEN o.undeliverable_at IS NULL AND o.sent_at IS NULL
                           AND o.created_at <= $5::timestamptz - make_interval(secs => $4) THEN $5::timestamptz
                      ELSE o.undeliverable_at END
           FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(id, error, wait)
           WHERE o.id = u.id AND o.id = ANY($1)
           RETURNING o.id, o.message_id, o.message_type, o.exchange, o.routing_key,
                     o.correlation_id, o.attempts, o.created_at, o.undeliverable_at, u.error)
         SELECT id, message_id, message_type, exchange, routing_key, correlation_id, attempts,
                created_at, error AS last_error
         FROM failed WHERE undeliverable_at = $5::timestamptz";

/// Leaves rows unsent, each due again after its wait; those written longer than
/// `give_up_after` ago are marked undeliverable instead (once: a row already given up
/// or sent is left alone) and returned.
pub async fn mark_failed(
    conn: &mut PgConnection,
    rows: &[(i64, String, std::time::Duration)],
    give_up_after: std::time::Duration,
    now: DateTime<Utc>,
) -> super::Result<Vec<Undeliverable>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    type Row = (
        i64,
        String,
        String,
        String,
        String,
        String,
        i32,
        DateTime<Utc>,
        String,
    );
    Ok(sqlx::query_as::<_, Row>(MARK_FAILED)
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.as_secs_f64()).collect::<Vec<_>>())
        .bind(give_up_after.as_secs_f64())
        .bind(now)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(
            |(
                id,
                message_id,
                message_type,
                exchange,
                routing_key,
                correlation_id,
                attempts,
                created_at,
                last_error,
            )| Undeliverable {
                id,
                message_id,
                message_type,
                exchange,
                routing_key,
                correlation_id,
                attempts,
                created_at,
                last_error,
            },
        )
        .collect())
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

    /// The delete, with the retention in seconds as `$1`, the most rows as `$2` and the
    /// time now as `$3`.
    pub fn statement(self) -> &'static str {
        match self {
            Expired::SentOutbox => "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE sent_at < $3::timestamptz - make_interval(secs => $1) LIMIT $2)",
            Expired::UndeliverableOutbox => "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE undeliverable_at < $3::timestamptz - make_interval(secs => $1) LIMIT $2)",
            Expired::ProcessedMessages => "DELETE FROM processed_messages WHERE message_id IN (
                 SELECT message_id FROM processed_messages
                 WHERE processed_at < $3::timestamptz - make_interval(secs => $1) LIMIT $2)",
            Expired::SettledDeadLetters => "DELETE FROM dead_letters WHERE id IN (
                 SELECT id FROM dead_letters
                 WHERE coalesce(resolved_at, replayed_at) < $3::timestamptz - make_interval(secs => $1) LIMIT $2)",
        }
    }
}

/// Deletes at most `limit` rows of `what` older than `retention` at `now`; how many.
pub async fn delete_expired(
    pool: &sqlx::PgPool,
    what: Expired,
    retention: std::time::Duration,
    limit: i64,
    now: DateTime<Utc>,
) -> super::Result<u64> {
    Ok(sqlx::query(what.statement())
        .bind(retention.as_secs_f64())
        .bind(limit)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Rows not yet sent (due or waiting for a retry).
pub async fn pending_count(conn: &mut PgConnection) -> super::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND undeliverable_at IS NULL",
    )
    .fetch_one(conn)
    .await
    .map_err(super::Error::from)
}

/// Makes every unsent row due now (after a reconnect, or when an agent's queues appear).
pub async fn retry_now(conn: &mut PgConnection, now: DateTime<Utc>) -> super::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = $1 WHERE sent_at IS NULL AND undeliverable_at IS NULL AND next_attempt_at > $1")
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub message_id: Option<String>,
    /// Why it was refused (`dead_letters.reason`).
    pub reason: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Value,
    pub replayed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

pub async fn lock_dead_letter(
    conn: &mut PgConnection,
    id: i64,
) -> super::Result<Option<DeadLetter>> {
    let row = sqlx::query(
        "SELECT id, message_id, reason, routing_key, body, properties, replayed_at, resolved_at,
                resolution
         FROM dead_letters WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(DeadLetter {
            id: r.try_get("id")?,
            message_id: r.try_get("message_id")?,
            reason: r.try_get("reason")?,
            routing_key: r.try_get("routing_key")?,
            body: r.try_get("body")?,
            properties: r.try_get("properties")?,
            replayed_at: r.try_get("replayed_at")?,
            resolved_at: r.try_get("resolved_at")?,
            resolution: r.try_get("resolution")?,
        })
    })
    .transpose()
}

/// Whether a message id is recorded as processed (applied, rejected or observed).
pub async fn was_processed(conn: &mut PgConnection, message_id: &str) -> super::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_messages WHERE message_id = $1)")
        .bind(message_id)
        .fetch_one(conn)
        .await
        .map_err(super::Error::from)
}

/// Marks a dead letter replayed and records who replayed it.
pub async fn mark_replayed(
    conn: &mut PgConnection,
    id: i64,
    by: &str,
    now: DateTime<Utc>,
) -> super::Result<()> {
    sqlx::query("UPDATE dead_letters SET replayed_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO dead_letter_replays (dead_letter_id, replayed_by, replayed_at) VALUES ($1, $2, $3)",
    )
    .bind(id)
    .bind(by)
    .bind(now)
    .execute(conn)
        .await?;
    Ok(())
}

/// Marks up to `limit` dead letters received longer than `after` ago, neither replayed
/// nor resolved nor escalated yet, as escalated now, and returns them. Rows another
/// coordinator is marking are skipped, so each is escalated once.
/// Marks stale the agents that sent a heartbeat but none since `stale_after` before
/// `now` and were not stale yet (guarded, so each silence is found once however many
/// coordinators look), with how many agents of each one's role are still live.
pub async fn mark_stale_agents(
    conn: &mut PgConnection,
    stale_after: std::time::Duration,
    limit: i64,
    now: DateTime<Utc>,
) -> super::Result<Vec<StaleAgent>> {
    Ok(sqlx::query_as::<_, StaleAgent>(
        "WITH stale AS (
           UPDATE agents SET stale_since = $3::timestamptz
            WHERE agent_id = ANY(ARRAY(
                SELECT agent_id FROM agents
                 WHERE stale_since IS NULL AND last_heartbeat_at IS NOT NULL
                   AND last_heartbeat_at < $3::timestamptz - make_interval(secs => $1)
                 ORDER BY last_heartbeat_at LIMIT $2 FOR UPDATE SKIP LOCKED))
           RETURNING agent_id, agent_type, last_heartbeat_at)
         SELECT s.agent_id, s.agent_type, s.last_heartbeat_at,
                (SELECT count(*) FROM agents a
                  WHERE a.agent_type = s.agent_type AND a.agent_id <> s.agent_id
                    AND a.stale_since IS NULL
                    AND a.last_heartbeat_at >= $3::timestamptz - make_interval(secs => $1)) AS live_of_role
           FROM stale s",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// An agent found stale by [`mark_stale_agents`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StaleAgent {
    pub agent_id: String,
    pub agent_type: String,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Other agents of its role that are live.
    pub live_of_role: i64,
}

pub async fn escalate_unresolved_dead_letters(
    conn: &mut PgConnection,
    after: std::time::Duration,
    limit: i64,
    now: DateTime<Utc>,
) -> super::Result<Vec<UnresolvedDeadLetter>> {
    Ok(
        sqlx::query_as::<_, (i64, String, Option<String>, DateTime<Utc>)>(
            "UPDATE dead_letters SET escalated_at = $3::timestamptz
         WHERE id = ANY(ARRAY(
             SELECT id FROM dead_letters
             WHERE escalated_at IS NULL AND resolved_at IS NULL AND replayed_at IS NULL
               AND received_at < $3::timestamptz - make_interval(secs => $1)
             ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))
         RETURNING id, reason, message_id, received_at",
        )
        .bind(after.as_secs_f64())
        .bind(limit)
        .bind(now)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(
            |(id, reason, message_id, received_at)| UnresolvedDeadLetter {
                id,
                reason,
                message_id,
                received_at,
            },
        )
        .collect(),
    )
}

/// Sets a dead letter aside for good, with the operator's note; false if there is none
/// with that id. Resolving again replaces the note.
pub async fn resolve_dead_letter(
    conn: &mut PgConnection,
    id: i64,
    note: &str,
    by: &str,
    now: DateTime<Utc>,
) -> super::Result<bool> {
    Ok(sqlx::query(
        "UPDATE dead_letters SET resolved_at = coalesce(resolved_at, $3), resolution = $2, resolved_by = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(note)
    .bind(now)
    .bind(by)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// What the broker dead-lettered, with each row's `collected_key`; a key already stored
/// (a redelivered copy) is skipped. How many rows were new.
pub async fn store_collected(
    conn: &mut PgConnection,
    rows: &[(NewDeadLetter, String)],
) -> super::Result<u64> {
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

/// How many partitions the inbox behind `exchange` was last declared with.
pub async fn recorded_partitions(
    conn: &mut PgConnection,
    exchange: &str,
) -> super::Result<Option<u32>> {
    let n: Option<i32> =
        sqlx::query_scalar("SELECT partitions FROM inbox_partitions WHERE exchange = $1")
            .bind(exchange)
            .fetch_optional(conn)
            .await?;
    Ok(n.and_then(|n| u32::try_from(n).ok()))
}

/// Records that the inbox behind `exchange` now has `partitions` partitions.
pub async fn record_partitions(
    conn: &mut PgConnection,
    exchange: &str,
    partitions: u32,
    now: DateTime<Utc>,
) -> super::Result<()> {
    sqlx::query(
        "INSERT INTO inbox_partitions (exchange, partitions, changed_at) VALUES ($1, $2, $3)
         ON CONFLICT (exchange) DO UPDATE SET partitions = $2, changed_at = $3
         WHERE inbox_partitions.partitions <> $2",
    )
    .bind(exchange)
    .bind(i32::try_from(partitions).unwrap_or(i32::MAX))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
