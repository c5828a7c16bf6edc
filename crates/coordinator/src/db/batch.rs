//! The set-based statements of the hot path: a batch of messages (or of due timer
//! deadlines) reads and writes with a fixed number of statements, whatever its size.
//! Every statement takes its rows as arrays (`unnest`), so its text never changes and
//! its prepared statement is reused on every connection.
//!
//! Reads come first and in a fixed order: claim the message ids, lock the workflows
//! (sorted by id, so two batches never deadlock), then read what the locked workflows
//! own. Writes follow in the order of the foreign keys.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::domain::audit;
use crate::engine::rows::{
    ArmedClockRow, ChainMember, Claims, InsertedClock, Loaded, LockedWorkflow, Needs, Queued,
    Writes, Written, OUTCOME_ACCEPTED,
};
use crate::engine::Received;

// `earlier` reads the snapshot the statement started with, so it sees the ids claimed
// before it and none of those `claimed` inserts.
pub const CLAIM_AND_LOCK: &str = "WITH head AS (
           SELECT chain, seq, hash FROM audit_heads WHERE chain = $6 FOR UPDATE),
         claimed AS (
           INSERT INTO processed_messages (message_id, outcome, processed_by, sender, message_type, sender_role)
           SELECT id, $2::text, $3::text, sender, type, role
             FROM unnest($1::text[], $5::text[], $7::text[], $8::text[]) AS u(id, sender, type, role)
           ON CONFLICT DO NOTHING RETURNING message_id),
         locked AS (
           SELECT id, kind, state, round, definition_hash, business_key FROM workflows WHERE id = ANY($4::text[]) ORDER BY id FOR UPDATE),
         earlier AS (
           SELECT message_id, sender FROM processed_messages WHERE message_id = ANY($1::text[]) AND sender IS NOT NULL)
         SELECT 'head' AS src, chain AS id, NULL AS kind, NULL AS state, NULL::int AS round, seq, hash,
                NULL AS definition_hash, NULL AS business_key FROM head
         UNION ALL SELECT 'claimed', message_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM claimed
         UNION ALL SELECT 'locked', id, kind, state, round, NULL, NULL, definition_hash, business_key FROM locked
         UNION ALL SELECT 'earlier', message_id, NULL, sender, NULL, NULL, NULL, NULL, NULL FROM earlier";

/// What claiming a batch's ids and locking its workflows found.
#[derive(Debug, Default)]
pub struct Claimed {
    pub claims: Claims,
    pub locked: Vec<LockedWorkflow>,
    /// The audit chain's head, locked; none when no chain was asked for or the chain
    /// has no head row yet ([`super::audit::lock_new_head`]).
    pub audit_head: Option<audit::Head>,
}

/// Claims message ids (the deduplication keys, each with its sender), locks the audit
/// chain's head (first, so that two batches of a chain queue there) and the workflows
/// that exist among `workflow_ids`, in id order, in one statement. Returns the ids
/// claimed (an id another transaction holds uncommitted waits for it, then is not
/// claimed), the senders of ids claimed before, and what was locked.
pub async fn claim_and_lock(
    conn: &mut PgConnection,
    received: &Received<'_>,
    instance: &str,
    workflow_ids: &[&str],
    audit_chain: Option<&str>,
) -> super::Result<Claimed> {
    if received.ids.is_empty() && workflow_ids.is_empty() && audit_chain.is_none() {
        return Ok(Claimed::default());
    }
    let rows = sqlx::query(CLAIM_AND_LOCK)
        .bind(&received.ids)
        .bind(OUTCOME_ACCEPTED)
        .bind(instance)
        .bind(workflow_ids)
        .bind(&received.senders)
        .bind(audit_chain)
        .bind(&received.types)
        .bind(&received.roles)
        .fetch_all(conn)
        .await?;
    let mut c = Claimed::default();
    for r in rows {
        let id: String = r.try_get("id")?;
        match r.try_get::<&str, _>("src")? {
            "head" => {
                c.audit_head = Some(audit::Head {
                    chain: id,
                    seq: r.try_get("seq")?,
                    hash: r.try_get("hash")?,
                })
            }
            "claimed" => {
                c.claims.claimed.insert(id);
            }
            "earlier" => {
                c.claims.earlier.insert(id, r.try_get("state")?);
            }
            _ => c.locked.push(LockedWorkflow {
                id,
                kind: r.try_get("kind")?,
                state: r.try_get("state")?,
                round: r.try_get("round")?,
                definition_hash: r.try_get("definition_hash")?,
                business_key: r.try_get("business_key")?,
            }),
        }
    }
    c.locked.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(c)
}

// Sorted by the caller: an ORDER BY here lets a plan made on an empty table walk the
// primary key instead of looking the workflows up.
pub const ARMED_CLOCKS: &str =
    "SELECT id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id,
            armed_at, due_at
         FROM sla_clocks WHERE workflow_id = ANY($1) AND closed_at IS NULL";

pub async fn armed_clocks(
    conn: &mut PgConnection,
    workflow_ids: &[&str],
) -> super::Result<Vec<ArmedClockRow>> {
    if workflow_ids.is_empty() {
        return Ok(Vec::new());
    }
    type Row = (
        i64,
        String,
        String,
        i32,
        String,
        Option<String>,
        Option<String>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let mut rows: Vec<ArmedClockRow> = sqlx::query_as::<_, Row>(ARMED_CLOCKS)
        .bind(workflow_ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(
            |(
                id,
                workflow_id,
                clock,
                round,
                owner_role,
                owner_agent_id,
                subject_agent_id,
                armed_at,
                due_at,
            )| ArmedClockRow {
                id,
                workflow_id,
                clock,
                round,
                owner_role,
                owner_agent_id,
                subject_agent_id,
                armed_at,
                due_at,
            },
        )
        .collect();
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

pub const AGENT_TYPES: &str = "SELECT agent_id, agent_type FROM agents WHERE agent_id = ANY($1)";

/// The registered type of each of these agents that is registered.
pub async fn agent_types(
    conn: &mut PgConnection,
    agent_ids: &[&str],
) -> super::Result<Vec<(String, String)>> {
    if agent_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(AGENT_TYPES)
        .bind(agent_ids)
        .fetch_all(conn)
        .await
        .map_err(super::Error::from)
}

// The chains first, then each chain's members by index (LATERAL with OFFSET 0 fixes that order
// whatever the table's statistics say; a DISTINCT here could be planned as a walk of
// the chain index). Two ids of one chain list it twice: sorted and deduplicated by the
// caller.
pub const ESCALATION_CHAINS: &str =
    "SELECT e.id, e.workflow_id, e.chain_id, e.acknowledged_at IS NULL AS open, e.level, e.target
         FROM (SELECT chain_id FROM escalations WHERE id = ANY($1)) c,
              LATERAL (SELECT id, workflow_id, chain_id, acknowledged_at, level, target FROM escalations x
                       WHERE x.chain_id = c.chain_id OFFSET 0) e";

/// Every escalation of the chains the given escalations belong to.
pub async fn escalation_chains(
    conn: &mut PgConnection,
    escalation_ids: &[i64],
) -> super::Result<Vec<ChainMember>> {
    if escalation_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<ChainMember> =
        sqlx::query_as::<_, (i64, String, i64, bool, i32, String)>(ESCALATION_CHAINS)
            .bind(escalation_ids)
            .fetch_all(conn)
            .await?
            .into_iter()
            .map(
                |(id, workflow_id, chain_id, open, level, target)| ChainMember {
                    id,
                    workflow_id,
                    chain_id,
                    open,
                    level,
                    target,
                },
            )
            .collect();
    rows.sort_by_key(|r| r.id);
    rows.dedup_by_key(|r| r.id);
    Ok(rows)
}

/// Reserves `n` escalation ids, so a batch can name them in the messages it queues.
pub async fn reserve_escalation_ids(conn: &mut PgConnection, n: usize) -> super::Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('escalations', 'id')) FROM generate_series(1, $1)",
    )
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
    .map_err(super::Error::from)
}

/// Runs the reads of a batch after its claim and lock: a statement per kind of thing
/// needed, none for what is not needed. The clocks are read in a statement of their
/// own, after the locks are held, so they are what the lock holders left.
pub async fn load(
    conn: &mut PgConnection,
    needs: &Needs,
    workflows: Vec<LockedWorkflow>,
    audit_head: Option<audit::Head>,
) -> super::Result<Loaded> {
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
        audit_head,
    })
}

/// Every write of a batch in one statement: a data-modifying CTE per kind of row, all
/// run with one snapshot (foreign keys are checked at its end, so a history row may
/// name a workflow created beside it). One round trip instead of a dozen matters on a
/// busy machine, where each round trip waits for a core. Kinds without rows get empty
/// arrays and cost next to nothing.
// Every join to a batch's arrays also bounds the table by the array's keys (`… AND
// w.id = ANY($11)`): a generic plan made on a table analyzed while empty would
// otherwise walk the whole table first (tests/plans.rs).
/// A heartbeat's report (`u.r`, as `domain::agent_health::stored` wrote it) as the
/// `agents` columns status … last_activity_at.
macro_rules! heartbeat_report {
    () => {
        "u.r->>'status', (u.r->>'load')::float8, (u.r->>'available_capacity')::float8,
    (u.r->>'active_tasks')::int, (u.r->>'queued_tasks')::int,
    CASE WHEN jsonb_typeof(u.r->'capabilities') = 'array'
         THEN ARRAY(SELECT jsonb_array_elements_text(u.r->'capabilities')) END,
    nullif(u.r->'resource_usage', 'null'::jsonb), (u.r->>'last_activity')::timestamptz"
    };
}

pub const WRITE: &str = concat!(
    "
WITH
wf_new AS (
  INSERT INTO workflows (id, kind, state, key_name, title, data, round, created_at, updated_at, completed_at,
                         definition_version, definition_hash, business_key)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                       $7::int[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                       $101::int[], $102::text[], $103::text[])
  ON CONFLICT DO NOTHING RETURNING id),
wf_upd AS (
  UPDATE workflows w SET state = u.state, round = u.round, updated_at = u.at,
         completed_at = CASE WHEN u.terminal THEN coalesce(w.completed_at, u.at) ELSE w.completed_at END
  FROM unnest($11::text[], $12::text[], $13::int[], $14::timestamptz[], $15::bool[])
       AS u(id, state, round, at, terminal)
  WHERE w.id = u.id AND w.id = ANY($11)),
clk_new AS (
  INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id,
                          severity, armed_at, warn_at, due_at, status, closed_at, closed_by)
  SELECT * FROM unnest($16::text[], $17::text[], $18::int[], $19::text[], $20::text[], $21::text[],
                       $22::text[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[],
                       $26::text[], $27::timestamptz[], $28::text[])
  ON CONFLICT DO NOTHING RETURNING id, status, warn_at, due_at),
clk_upd AS (
  UPDATE sla_clocks c SET status = u.status, closed_at = u.closed_at, closed_by = u.closed_by,
         owner_agent_id = u.owner_agent_id, due_at = coalesce(u.due_at, c.due_at),
         warn_at = coalesce(u.warn_at, c.warn_at),
         warned_at = CASE WHEN u.warn_again THEN NULL ELSE c.warned_at END
  FROM unnest($29::bigint[], $30::text[], $31::timestamptz[], $32::text[], $33::text[],
              $84::timestamptz[], $85::timestamptz[], $86::bool[])
       AS u(id, status, closed_at, closed_by, owner_agent_id, due_at, warn_at, warn_again)
  -- Still armed (an armed clock has no closed_at); said so rather than with status,
  -- whose partial indexes would tempt the planner to scan every armed clock.
  WHERE c.id = u.id AND c.id = ANY($29) AND c.closed_at IS NULL),
esc_new AS (
  INSERT INTO escalations (id, chain_id, workflow_id, clock, clock_id, owner_role, agent_id, level,
                           target, severity, raised_at, next_level_at, message_id)
  SELECT * FROM unnest($34::bigint[], $35::bigint[], $36::text[], $37::text[], $38::bigint[], $39::text[],
                       $40::text[], $41::int[], $42::text[], $43::text[], $44::timestamptz[],
                       $45::timestamptz[], $46::text[])),
esc_ack AS (
  -- Every escalation of the chain, keeping an earlier acknowledgement (a filter on
  -- acknowledged_at would tempt the planner to scan every open escalation).
  UPDATE escalations e SET acknowledged_at = coalesce(e.acknowledged_at, u.at),
         acknowledged_by = coalesce(e.acknowledged_by, u.by), next_level_at = NULL
  FROM unnest($47::bigint[], $48::text[], $49::timestamptz[]) AS u(chain_id, by, at)
  WHERE e.chain_id = u.chain_id AND e.chain_id = ANY($47)),
ev AS (
  INSERT INTO workflow_events
      (workflow_id, seq, message_id, message_type, source_agent_id, from_state, to_state, occurred_at, detail)
  SELECT u.workflow_id,
         coalesce((SELECT max(e.seq) FROM workflow_events e WHERE e.workflow_id = u.workflow_id), 0) + u.n,
         u.message_id, u.message_type, u.source_agent_id, u.from_state, u.to_state, u.at, u.detail
  FROM unnest($50::text[], $51::int[], $52::text[], $53::text[], $54::text[], $55::text[], $56::text[],
              $57::timestamptz[], $58::jsonb[])
       AS u(workflow_id, n, message_id, message_type, source_agent_id, from_state, to_state, at, detail)),
dl AS (
  INSERT INTO dead_letters
      (message_id, reason, detail, routing_key, body, body_json, properties, source_agent_id, received_at)
  SELECT * FROM unnest($59::text[], $60::text[], $61::text[], $62::text[], $63::bytea[], $64::jsonb[],
                       $65::jsonb[], $66::text[], $67::timestamptz[])),
outcome AS (
  UPDATE processed_messages p SET outcome = u.outcome
  FROM unnest($68::text[], $69::text[]) AS u(message_id, outcome)
  WHERE p.message_id = u.message_id AND p.message_id = ANY($68)),
reg AS (
  INSERT INTO agents (agent_id, agent_type, registered_via, last_heartbeat_at, status, load,
                      available_capacity, active_tasks, queued_tasks, capabilities,
                      resource_usage, last_activity_at)
  SELECT u.id, u.type, 'heartbeat', u.at, ",
    heartbeat_report!(),
    "
    FROM unnest($70::text[], $71::text[], $72::timestamptz[], $105::jsonb[]) AS u(id, type, at, r)
  ON CONFLICT DO NOTHING RETURNING agent_id),
heartbeat AS (
  UPDATE agents a SET last_heartbeat_at = u.at, stale_since = NULL,
    (status, load, available_capacity, active_tasks, queued_tasks, capabilities, resource_usage,
     last_activity_at) = (SELECT ",
    heartbeat_report!(),
    ")
  FROM (SELECT DISTINCT ON (id) id, at, r
          FROM unnest($73::text[], $74::timestamptz[], $104::jsonb[]) AS x(id, at, r)
         ORDER BY id, at DESC) u
  WHERE a.agent_id = u.id AND a.agent_id = ANY($73)
    AND (a.last_heartbeat_at IS NULL OR a.last_heartbeat_at <= u.at)),
ob AS (
  INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id, causation_id,
                      app_id, body, traceparent, next_attempt_at)
  SELECT u.*, $83 FROM unnest($75::text[], $76::text[], $77::text[], $78::text[], $79::text[], $80::text[],
                             $81::text[], $82::bytea[], $106::text[]) AS u
  ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id),
aud AS (
  INSERT INTO audit_log (chain, seq, at, actor, action, target, result, context, metadata, prev_hash, hash)
  SELECT * FROM unnest($87::text[], $88::bigint[], $89::timestamptz[], $90::text[], $91::text[], $92::text[],
                       $93::text[], $94::jsonb[], $95::jsonb[], $96::bytea[], $97::bytea[])),
aud_head AS (
  UPDATE audit_heads h SET seq = u.seq, hash = u.hash
  FROM unnest($98::text[], $99::bigint[], $100::bytea[]) AS u(chain, seq, hash)
  WHERE h.chain = u.chain AND h.chain = ANY($98))
SELECT 'workflow' AS kind, NULL::bigint AS id, id AS name, NULL::timestamptz AS warn_at, NULL::timestamptz AS due_at FROM wf_new
UNION ALL SELECT 'clock', id, status, warn_at, due_at FROM clk_new
UNION ALL SELECT 'outbox', id, message_id, NULL, NULL FROM ob
UNION ALL SELECT 'agent', NULL, agent_id, NULL, NULL FROM reg"
);

/// Runs every write of a batch, in one statement.
pub async fn write(
    conn: &mut PgConnection,
    w: Writes,
    publish_after: DateTime<Utc>,
) -> super::Result<Written> {
    if w.statements() == 0 {
        return Ok(Written::default());
    }
    // A registered agent's heartbeat is written with its row (an update in the same
    // statement cannot see a row inserted beside it).
    let latest = |id: &str| {
        w.heartbeats
            .iter()
            .filter(|(a, _, _)| a == id)
            .max_by_key(|(_, at, _)| *at)
    };
    let (nw, wc, nc, cc, es, ca, ev, dl, ob) = (
        &w.new_workflows,
        &w.workflow_changes,
        &w.new_clocks,
        &w.clock_changes,
        &w.escalations,
        &w.chain_acks,
        &w.events,
        &w.dead_letters,
        &w.outbox,
    );
    let (au, heads) = (&w.audit, w.audit_head.iter().collect::<Vec<_>>());
    let rows = sqlx::query(WRITE)
        .bind(nw.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.key_name.as_deref()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.title.as_deref()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| &r.data).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.round).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.completed_at).collect::<Vec<_>>())
        .bind(wc.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(wc.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(wc.iter().map(|r| r.round).collect::<Vec<_>>())
        .bind(wc.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(wc.iter().map(|r| r.terminal).collect::<Vec<_>>())
        .bind(
            nc.iter()
                .map(|r| r.workflow_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(nc.iter().map(|r| r.clock.as_str()).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.round).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.owner_role.as_str()).collect::<Vec<_>>())
        .bind(
            nc.iter()
                .map(|r| r.owner_agent_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            nc.iter()
                .map(|r| r.subject_agent_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(nc.iter().map(|r| r.severity.as_str()).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.armed_at).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.warn_at).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.due_at).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(nc.iter().map(|r| r.closed_at).collect::<Vec<_>>())
        .bind(
            nc.iter()
                .map(|r| r.closed_by.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(cc.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(cc.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(cc.iter().map(|r| r.closed_at).collect::<Vec<_>>())
        .bind(
            cc.iter()
                .map(|r| r.closed_by.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            cc.iter()
                .map(|r| r.owner_agent_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(es.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.chain_id).collect::<Vec<_>>())
        .bind(
            es.iter()
                .map(|r| r.workflow_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(es.iter().map(|r| r.clock.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.clock_id).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.owner_role.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.agent_id.as_deref()).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.level).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.target.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.severity.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.raised_at).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.next_level_at).collect::<Vec<_>>())
        .bind(es.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
        .bind(ca.iter().map(|r| r.chain_id).collect::<Vec<_>>())
        .bind(ca.iter().map(|r| r.by.as_str()).collect::<Vec<_>>())
        .bind(ca.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(
            ev.iter()
                .map(|r| r.workflow_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(ev.iter().map(|r| r.ordinal).collect::<Vec<_>>())
        .bind(
            ev.iter()
                .map(|r| r.message_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            ev.iter()
                .map(|r| r.message_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            ev.iter()
                .map(|r| r.source_agent_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            ev.iter()
                .map(|r| r.from_state.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(ev.iter().map(|r| r.to_state.as_str()).collect::<Vec<_>>())
        .bind(ev.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(ev.iter().map(|r| &r.detail).collect::<Vec<_>>())
        .bind(
            dl.iter()
                .map(|r| r.message_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(dl.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
        .bind(dl.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>())
        .bind(
            dl.iter()
                .map(|r| r.routing_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(dl.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
        .bind(dl.iter().map(|r| r.body_json.as_ref()).collect::<Vec<_>>())
        .bind(dl.iter().map(|r| &r.properties).collect::<Vec<_>>())
        .bind(
            dl.iter()
                .map(|r| r.source_agent_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(dl.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(w.outcomes.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(w.outcomes.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(
            w.registrations
                .iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            w.registrations
                .iter()
                .map(|r| r.1.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            w.registrations
                .iter()
                .map(|r| latest(&r.0).map(|h| h.1))
                .collect::<Vec<_>>(),
        )
        .bind(
            w.heartbeats
                .iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(w.heartbeats.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(ob.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
        .bind(ob.iter().map(|r| r.exchange.as_str()).collect::<Vec<_>>())
        .bind(
            ob.iter()
                .map(|r| r.routing_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            ob.iter()
                .map(|r| r.message_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            ob.iter()
                .map(|r| r.correlation_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            ob.iter()
                .map(|r| r.causation_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(ob.iter().map(|r| r.app_id.as_str()).collect::<Vec<_>>())
        .bind(ob.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
        .bind(publish_after)
        .bind(cc.iter().map(|r| r.due_at).collect::<Vec<_>>())
        .bind(cc.iter().map(|r| r.warn_at).collect::<Vec<_>>())
        .bind(cc.iter().map(|r| r.warn_again).collect::<Vec<_>>())
        .bind(au.iter().map(|r| r.chain.as_str()).collect::<Vec<_>>())
        .bind(au.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(au.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(
            au.iter()
                .map(|r| r.entry.actor.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            au.iter()
                .map(|r| r.entry.action.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            au.iter()
                .map(|r| r.entry.target.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            au.iter()
                .map(|r| r.entry.result.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(au.iter().map(|r| &r.entry.context).collect::<Vec<_>>())
        .bind(au.iter().map(|r| &r.entry.metadata).collect::<Vec<_>>())
        .bind(
            au.iter()
                .map(|r| r.prev_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(au.iter().map(|r| r.hash.as_slice()).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.chain.as_str()).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.seq).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.hash.as_slice()).collect::<Vec<_>>())
        .bind(
            nw.iter()
                .map(|r| r.definition.as_ref().map(|d| d.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            nw.iter()
                .map(|r| r.definition.as_ref().map(|d| d.1.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            nw.iter()
                .map(|r| r.business_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(w.heartbeats.iter().map(|r| &r.2).collect::<Vec<_>>())
        .bind(
            w.registrations
                .iter()
                .map(|r| latest(&r.0).map_or(&serde_json::Value::Null, |h| &h.2))
                .collect::<Vec<_>>(),
        )
        .bind(
            ob.iter()
                .map(|r| r.traceparent.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let mut created = 0;
    let mut written = Written::default();
    let mut outbox_ids = std::collections::HashMap::new();
    for r in &rows {
        let kind: &str = r.try_get("kind")?;
        match kind {
            "workflow" => created += 1,
            "clock" => written.clocks.push(InsertedClock {
                id: r.try_get("id")?,
                status: r.try_get("name")?,
                warn_at: r.try_get("warn_at")?,
                due_at: r.try_get("due_at")?,
            }),
            "outbox" => {
                outbox_ids.insert(r.try_get::<String, _>("name")?, r.try_get::<i64, _>("id")?);
            }
            _ => written.registered.push(r.try_get("name")?),
        }
    }
    if created != w.new_workflows.len() {
        return Err(super::Error::Conflict);
    }
    if !written.registered.is_empty() {
        super::store::notify_agents(conn).await?;
    }
    // Deadlines moved: every coordinator's timer reads its window again.
    if w.clock_changes.iter().any(|c| c.due_at.is_some()) {
        super::store::notify_timers(conn).await?;
    }
    written.queued = w
        .outbox
        .into_iter()
        .filter_map(|m| {
            outbox_ids
                .remove(&m.message_id)
                .map(|id| Queued { id, message: m })
        })
        .collect();
    Ok(written)
}
