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

pub const CLAIM_AND_LOCK: &str = "WITH claimed AS (
           INSERT INTO processed_messages (message_id, outcome, processed_by)
           SELECT id, $2::text, $3::text FROM unnest($1::text[]) AS u(id)
           ON CONFLICT DO NOTHING RETURNING message_id),
         locked AS (
           SELECT id, kind, state, round FROM workflows WHERE id = ANY($4::text[]) ORDER BY id FOR UPDATE)
         SELECT message_id AS id, NULL AS kind, NULL AS state, NULL::int AS round FROM claimed
         UNION ALL SELECT id, kind, state, round FROM locked";

/// Claims message ids (the deduplication keys) and locks the workflows that exist
/// among `workflow_ids`, in id order, in one statement. Returns the ids claimed (an id
/// another transaction holds uncommitted waits for it, then is not claimed) and the
/// locked workflows.
pub async fn claim_and_lock(
    conn: &mut PgConnection,
    message_ids: &[&str],
    instance: &str,
    workflow_ids: &[&str],
) -> sqlx::Result<(HashSet<String>, Vec<LockedWorkflow>)> {
    if message_ids.is_empty() && workflow_ids.is_empty() {
        return Ok((HashSet::new(), Vec::new()));
    }
    let rows = sqlx::query(CLAIM_AND_LOCK)
        .bind(message_ids)
        .bind(OUTCOME_ACCEPTED)
        .bind(instance)
        .bind(workflow_ids)
        .fetch_all(conn)
        .await?;
    let mut claimed = HashSet::new();
    let mut locked = Vec::new();
    for r in rows {
        let id: String = r.try_get("id")?;
        match r.try_get::<Option<String>, _>("kind")? {
            None => {
                claimed.insert(id);
            }
            Some(kind) => locked.push(LockedWorkflow {
                id,
                kind,
                state: r.try_get("state")?,
                round: r.try_get("round")?,
            }),
        }
    }
    locked.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((claimed, locked))
}

/// A workflow row locked for the rest of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedWorkflow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub round: i32,
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

// Sorted by the caller: an ORDER BY here lets a plan made on an empty table walk the
// primary key instead of looking the workflows up.
pub const ARMED_CLOCKS: &str =
    "SELECT id, workflow_id, clock, round, owner_role, owner_agent_id, subject_agent_id
         FROM sla_clocks WHERE workflow_id = ANY($1) AND closed_at IS NULL";

pub async fn armed_clocks(
    conn: &mut PgConnection,
    workflow_ids: &[&str],
) -> sqlx::Result<Vec<ArmedClockRow>> {
    if workflow_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<ArmedClockRow> = sqlx::query_as(ARMED_CLOCKS)
        .bind(workflow_ids)
        .fetch_all(conn)
        .await?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

pub const AGENT_TYPES: &str = "SELECT agent_id, agent_type FROM agents WHERE agent_id = ANY($1)";

/// The registered type of each of these agents that is registered.
pub async fn agent_types(
    conn: &mut PgConnection,
    agent_ids: &[&str],
) -> sqlx::Result<Vec<(String, String)>> {
    if agent_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(AGENT_TYPES)
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

// The chains first, then each chain's members by index (LATERAL with OFFSET 0 fixes that order
// whatever the table's statistics say; a DISTINCT here could be planned as a walk of
// the chain index). Two ids of one chain list it twice: sorted and deduplicated by the
// caller.
pub const ESCALATION_CHAINS: &str =
    "SELECT e.id, e.workflow_id, e.chain_id, e.acknowledged_at IS NULL AS open
         FROM (SELECT chain_id FROM escalations WHERE id = ANY($1)) c,
              LATERAL (SELECT id, workflow_id, chain_id, acknowledged_at FROM escalations x
                       WHERE x.chain_id = c.chain_id OFFSET 0) e";

/// Every escalation of the chains the given escalations belong to.
pub async fn escalation_chains(
    conn: &mut PgConnection,
    escalation_ids: &[i64],
) -> sqlx::Result<Vec<ChainMember>> {
    if escalation_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<ChainMember> = sqlx::query_as(ESCALATION_CHAINS)
        .bind(escalation_ids)
        .fetch_all(conn)
        .await?;
    rows.sort_by_key(|r| r.id);
    rows.dedup_by_key(|r| r.id);
    Ok(rows)
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

/// An existing workflow's state after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowChange {
    pub id: String,
    pub state: String,
    pub round: i32,
    pub at: DateTime<Utc>,
    pub terminal: bool,
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

/// An armed clock the batch closed or gave an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockChange {
    pub id: i64,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    pub owner_agent_id: Option<String>,
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

/// A chain acknowledged: its open escalations stop climbing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAck {
    pub chain_id: i64,
    pub by: String,
    pub at: DateTime<Utc>,
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

/// An outbox row as written: its id, for marking it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub message: OutboxMessage,
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
    /// The statements the claim and [`load`] run for these needs (the clocks are read
    /// when workflows were locked, which it counts as likely).
    pub fn statements(&self) -> usize {
        1 + usize::from(!self.workflow_ids.is_empty())
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

/// Runs the reads of a batch after its claim and lock: a statement per kind of thing
/// needed, none for what is not needed. The clocks are read in a statement of their
/// own, after the locks are held, so they are what the lock holders left.
pub async fn load(
    conn: &mut PgConnection,
    needs: &Needs,
    workflows: Vec<LockedWorkflow>,
) -> sqlx::Result<Loaded> {
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
    /// The statements [`write`] runs for these rows: one, unless there is nothing to
    /// write.
    pub fn statements(&self) -> usize {
        usize::from(self.kinds() > 0)
    }

    fn kinds(&self) -> usize {
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

impl From<WriteError> for sqlx::Error {
    /// A conflict (someone created a workflow between our lock and our insert without
    /// holding the lock) is a collision like a deadlock: retried the same way.
    fn from(e: WriteError) -> sqlx::Error {
        match e {
            WriteError::Db(e) => e,
            WriteError::Conflict(c) => sqlx::Error::Protocol(c.to_string()),
        }
    }
}

/// Every write of a batch in one statement: a data-modifying CTE per kind of row, all
/// run with one snapshot (foreign keys are checked at its end, so a history row may
/// name a workflow created beside it). One round trip instead of a dozen matters on a
/// busy machine, where each round trip waits for a core. Kinds without rows get empty
/// arrays and cost next to nothing.
// Every join to a batch's arrays also bounds the table by the array's keys (`… AND
// w.id = ANY($11)`): a generic plan made on a table analyzed while empty would
// otherwise walk the whole table first (tests/plans.rs).
pub const WRITE: &str = "
WITH
wf_new AS (
  INSERT INTO workflows (id, kind, state, epic_id, title, data, round, created_at, updated_at, completed_at)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                       $7::int[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
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
         owner_agent_id = u.owner_agent_id
  FROM unnest($29::bigint[], $30::text[], $31::timestamptz[], $32::text[], $33::text[])
       AS u(id, status, closed_at, closed_by, owner_agent_id)
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
  INSERT INTO agents (agent_id, agent_type, registered_via, last_heartbeat_at)
  SELECT u.id, u.type, 'heartbeat', u.at FROM unnest($70::text[], $71::text[], $72::timestamptz[]) AS u(id, type, at)
  ON CONFLICT DO NOTHING RETURNING agent_id),
heartbeat AS (
  UPDATE agents a SET last_heartbeat_at = greatest(a.last_heartbeat_at, u.at)
  FROM (SELECT id, max(at) AS at FROM unnest($73::text[], $74::timestamptz[]) AS x(id, at) GROUP BY id) u
  WHERE a.agent_id = u.id AND a.agent_id = ANY($73)),
ob AS (
  INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id, causation_id,
                      app_id, body, next_attempt_at)
  SELECT u.*, $83 FROM unnest($75::text[], $76::text[], $77::text[], $78::text[], $79::text[], $80::text[],
                             $81::text[], $82::bytea[]) AS u
  ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id)
SELECT 'workflow' AS kind, NULL::bigint AS id, id AS name, NULL::timestamptz AS warn_at, NULL::timestamptz AS due_at FROM wf_new
UNION ALL SELECT 'clock', id, status, warn_at, due_at FROM clk_new
UNION ALL SELECT 'outbox', id, message_id, NULL, NULL FROM ob
UNION ALL SELECT 'agent', NULL, agent_id, NULL, NULL FROM reg";

/// Runs every write of a batch, in one statement.
pub async fn write(
    conn: &mut PgConnection,
    w: Writes,
    publish_after: DateTime<Utc>,
) -> Result<Written, WriteError> {
    if w.statements() == 0 {
        return Ok(Written::default());
    }
    // A registered agent's heartbeat is written with its row (an update in the same
    // statement cannot see a row inserted beside it).
    let registered_at = |id: &str| {
        w.heartbeats
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, at)| *at)
            .max()
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
    let rows = sqlx::query(WRITE)
        .bind(nw.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(nw.iter().map(|r| r.epic_id.as_deref()).collect::<Vec<_>>())
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
                .map(|r| registered_at(&r.0))
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
        return Err(Conflict.into());
    }
    if !written.registered.is_empty() {
        super::store::notify_agents(conn).await?;
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
