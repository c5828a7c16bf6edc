//! Read queries behind the manager- and operator-facing CLI.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool};

#[derive(Debug, Clone, FromRow)]
pub struct WorkflowRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    /// The `payload.data` member its definition names as its key (`workflows.key_name`;
    /// none on rows written before it was stored) and its value (`business_key`).
    pub key_name: Option<String>,
    pub business_key: Option<String>,
    pub title: Option<String>,
    pub round: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The earliest deadline among the workflow's armed clocks.
    pub next_due_at: Option<DateTime<Utc>>,
}

const WORKFLOW_COLUMNS: &str = "w.id, w.kind, w.state, w.key_name, w.business_key, w.title, w.round, w.created_at, w.updated_at, w.completed_at,
     (SELECT min(due_at) FROM sla_clocks c WHERE c.workflow_id = w.id AND c.status = 'armed') AS next_due_at";

pub async fn workflows(
    pool: &PgPool,
    kind: Option<&str>,
    state: Option<&str>,
    limit: i64,
) -> super::Result<Vec<WorkflowRow>> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w
         WHERE ($1::text IS NULL OR w.state = $1) AND ($3::text IS NULL OR w.kind = $3)
         ORDER BY w.updated_at DESC, w.id LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .bind(kind)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// Which workflows a page holds: none set is every live one.
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter<'a> {
    pub kind: Option<&'a str>,
    pub state: Option<&'a str>,
    /// With an armed clock this role owns.
    pub role: Option<&'a str>,
    /// With an armed clock past its deadline.
    pub overdue: bool,
    /// Completed ones too.
    pub completed: bool,
}

/// Where a page of workflows ended: its last row's id, written `w:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub id: String,
}

impl PageCursor {
    pub fn parse(s: &str) -> Result<PageCursor, String> {
        s.strip_prefix("w:")
            .map(|id| PageCursor { id: id.to_string() })
            .ok_or_else(|| format!("after {s:?} is not a `next` this API returned"))
    }
}

impl std::fmt::Display for PageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w:{}", self.id)
    }
}

/// A page of workflows in id order, after `after`; with the cursor of the next page
/// when there is one. By id, through the primary key: an index on `updated_at` would
/// be written by every message a workflow takes (migration 19 says what it cost).
pub async fn workflow_page(
    pool: &PgPool,
    filter: &WorkflowFilter<'_>,
    after: Option<&PageCursor>,
    limit: i64,
) -> super::Result<(Vec<WorkflowRow>, Option<PageCursor>)> {
    // One statement with a cursor and one without: under the service's generic plans
    // `$6 IS NULL OR w.id > $6` would not bound the key scan.
    let (from, clocks_from) = match after {
        Some(_) => ("w.id > $6", "AND c.workflow_id > $6"),
        None => ("$6::text IS NULL", ""),
    };
    // The overdue ones, and a role's, are found from their clocks, their workflow ids
    // sorted (the overdue: few, a clock past its deadline is armed only until the
    // timer fires it) or in index order (a role's: `sla_clocks_armed_role`), then
    // joined in that order. Walking every workflow in id order and looking for such a
    // clock in each took, over 100,000 workflows, 30 ms idle and 170 with the peak
    // running for the overdue, and 2 s for a role that owned two of them.
    const ROLE_CLOCK: &str = "($4::text IS NULL OR EXISTS (SELECT 1 FROM sla_clocks c
                 WHERE c.workflow_id = w.id AND c.status = 'armed' AND c.owner_role = $4))";
    let found_from = |clocks: &str| {
        format!(
            "(SELECT DISTINCT c.workflow_id FROM sla_clocks c
               WHERE c.status = 'armed' AND {clocks} {clocks_from} ORDER BY 1) o
             JOIN workflows w ON w.id = o.workflow_id"
        )
    };
    let (workflows, overdue, role) = match (filter.overdue, filter.role.is_some()) {
        (true, _) => (found_from("c.due_at < now()"), "$5", ROLE_CLOCK),
        (false, true) => (found_from("c.owner_role = $4"), "NOT $5", "TRUE"),
        (false, false) => ("workflows w".to_string(), "NOT $5", ROLE_CLOCK),
    };
    let mut rows: Vec<WorkflowRow> = sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM {workflows}
         WHERE {from} AND {overdue} AND {role}
           AND ($1::text IS NULL OR w.kind = $1) AND ($2::text IS NULL OR w.state = $2)
           AND ($3 OR w.completed_at IS NULL)
         ORDER BY w.id LIMIT $7"
    ))
    .bind(filter.kind)
    .bind(filter.state)
    .bind(filter.completed)
    .bind(filter.role)
    .bind(filter.overdue)
    .bind(after.map(|a| a.id.as_str()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = rows
        .last()
        .filter(|_| more)
        .map(|w| PageCursor { id: w.id.clone() });
    Ok((rows, next))
}

/// The workflows that most recently took a message, newest first (through the
/// history's `occurred_at` index).
pub async fn recently_changed(pool: &PgPool, limit: i64) -> super::Result<Vec<WorkflowRow>> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w
          WHERE w.id = ANY(ARRAY(SELECT workflow_id FROM workflow_events
                                  ORDER BY occurred_at DESC LIMIT $1 * 10))
          ORDER BY w.updated_at DESC, w.id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// The follow-ons among `ids` (`<workflow>.<kind>` for each kind that could follow it).
pub async fn workflows_among(pool: &PgPool, ids: &[String]) -> super::Result<Vec<WorkflowRow>> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = ANY($1) ORDER BY w.created_at"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// An incident with the agents whose acknowledgment clock is still armed.
#[derive(Debug, Clone, FromRow)]
pub struct EmergencyRow {
    #[sqlx(flatten)]
    pub incident: WorkflowRow,
    pub not_acknowledged: Vec<String>,
}

/// Incidents, newest first (open ones only unless `resolved`).
pub async fn emergencies(
    pool: &PgPool,
    resolved: bool,
    limit: i64,
) -> super::Result<Vec<EmergencyRow>> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS},
                ARRAY(SELECT c.subject_agent_id FROM sla_clocks c
                       WHERE c.workflow_id = w.id AND c.clock = 'acknowledgment'
                         AND c.status = 'armed' AND c.subject_agent_id IS NOT NULL
                       ORDER BY 1) AS not_acknowledged
           FROM workflows w
          WHERE w.kind = 'emergency' AND ($1 OR w.completed_at IS NULL)
          ORDER BY w.created_at DESC LIMIT $2"
    ))
    .bind(resolved)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

pub async fn workflow(pool: &PgPool, id: &str) -> super::Result<Option<WorkflowRow>> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct ClockRow {
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub armed_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
}

pub async fn clocks(pool: &PgPool, workflow_id: &str) -> super::Result<Vec<ClockRow>> {
    sqlx::query_as(
        "SELECT clock, round, owner_role, owner_agent_id, armed_at, due_at, status, closed_at
         FROM sla_clocks WHERE workflow_id = $1 ORDER BY round, armed_at, id",
    )
    .bind(workflow_id)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub seq: i32,
    pub message_id: Option<String>,
    pub message_type: String,
    pub source_agent_id: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub occurred_at: DateTime<Utc>,
    pub detail: Value,
}

/// A workflow with its history, clocks and escalations, as its pages show it.
#[derive(Debug, Clone)]
pub struct WorkflowWhole {
    pub workflow: WorkflowRow,
    pub events: Vec<EventRow>,
    pub clocks: Vec<ClockListRow>,
    pub escalations: Vec<EscalationListRow>,
}

/// One workflow whole (at most `clocks` clocks and `escalations` escalations), or none:
/// the four reads at once, each on a connection of its own, so that a page waits for
/// the slowest of them, not their sum (on a machine busy with the load, each is mostly
/// a wait for a CPU).
pub async fn workflow_whole(
    pool: &PgPool,
    id: &str,
    clocks: i64,
    escalations: i64,
) -> super::Result<Option<WorkflowWhole>> {
    let (workflow, events, clocks, escalations) = tokio::try_join!(
        workflow(pool, id),
        events(pool, id),
        sla_clocks(pool, false, Some(id), clocks),
        escalation_list(pool, false, Some(id), escalations),
    )?;
    Ok(workflow.map(|workflow| WorkflowWhole {
        workflow,
        events,
        clocks,
        escalations,
    }))
}

pub async fn events(pool: &PgPool, workflow_id: &str) -> super::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT seq, message_id, message_type, source_agent_id, from_state, to_state, occurred_at, detail
         FROM workflow_events WHERE workflow_id = $1 ORDER BY seq",
    )
    .bind(workflow_id)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct EscalationRow {
    pub id: i64,
    pub clock: String,
    pub owner_role: String,
    pub level: i32,
    pub severity: String,
    pub raised_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

pub async fn escalations(pool: &PgPool, workflow_id: &str) -> super::Result<Vec<EscalationRow>> {
    sqlx::query_as(
        "SELECT id, clock, owner_role, level, severity, raised_at, acknowledged_at, acknowledged_by
         FROM escalations WHERE workflow_id = $1 ORDER BY id",
    )
    .bind(workflow_id)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct AgentRow {
    pub agent_id: String,
    pub agent_type: String,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub registered_via: String,
    /// What its latest heartbeat said (docs/protocol.md, `heartbeat`).
    pub status: Option<String>,
    pub load: Option<f64>,
    pub available_capacity: Option<f64>,
    pub active_tasks: Option<i32>,
    pub queued_tasks: Option<i32>,
    pub capabilities: Option<Vec<String>>,
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When the coordinator found it stale (cleared by its next heartbeat).
    pub stale_since: Option<DateTime<Utc>>,
}

const AGENT_COLUMNS: &str =
    "agent_id, agent_type, registered_at, last_heartbeat_at, registered_via,
    status, load, available_capacity, active_tasks, queued_tasks, capabilities, last_activity_at,
    stale_since";

/// Registered agents, of one role or all.
pub async fn agents(pool: &PgPool, role: Option<&str>) -> super::Result<Vec<AgentRow>> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE $1::text IS NULL OR agent_type = $1
          ORDER BY agent_type, agent_id"
    ))
    .bind(role)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// One registered agent.
pub async fn agent(pool: &PgPool, agent_id: &str) -> super::Result<Option<AgentRow>> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1"
    ))
    .bind(agent_id)
    .fetch_optional(pool)
    .await
    .map_err(super::Error::from)
}

/// One of an agent's public keys.
#[derive(Debug, Clone, FromRow)]
pub struct AgentKeyRow {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub added_at: DateTime<Utc>,
    pub added_by: String,
}

/// An agent's public keys, oldest first.
pub async fn agent_keys(pool: &PgPool, agent_id: &str) -> super::Result<Vec<AgentKeyRow>> {
    sqlx::query_as(
        "SELECT key_id, public_key, added_at, added_by FROM agent_keys WHERE agent_id = $1 ORDER BY added_at, key_id",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct DeadLetterRow {
    pub id: i64,
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub source_agent_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter<'a> {
    pub reason: Option<&'a str>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Neither replayed nor resolved.
    pub unresolved: bool,
}

pub async fn dead_letters(
    pool: &PgPool,
    filter: &DeadLetterFilter<'_>,
    limit: i64,
) -> super::Result<Vec<DeadLetterRow>> {
    sqlx::query_as(
        "SELECT id, message_id, reason, detail, routing_key, source_agent_id, received_at,
                replayed_at, resolved_at
         FROM dead_letters
         WHERE ($1::text IS NULL OR reason = $1)
           AND ($2::timestamptz IS NULL OR received_at >= $2)
           AND (NOT $3 OR (replayed_at IS NULL AND resolved_at IS NULL))
         ORDER BY id DESC LIMIT $4",
    )
    .bind(filter.reason)
    .bind(filter.since)
    .bind(filter.unresolved)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// One dead letter whole, for `dead-letter show`.
#[derive(Debug, Clone, FromRow)]
pub struct DeadLetterDetail {
    pub id: i64,
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub body_json: Option<serde_json::Value>,
    pub properties: serde_json::Value,
    pub source_agent_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

pub async fn dead_letter(pool: &PgPool, id: i64) -> super::Result<Option<DeadLetterDetail>> {
    sqlx::query_as(
        "SELECT id, message_id, reason, detail, routing_key, body, body_json, properties,
                source_agent_id, received_at, replayed_at, resolved_at, resolution
         FROM dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(super::Error::from)
}

/// The replays of a dead letter, oldest first: (when, by whom).
pub async fn dead_letter_replays(
    pool: &PgPool,
    id: i64,
) -> super::Result<Vec<(DateTime<Utc>, String)>> {
    sqlx::query_as(
        "SELECT replayed_at, replayed_by FROM dead_letter_replays
         WHERE dead_letter_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct ClockListRow {
    pub id: i64,
    pub workflow_id: String,
    pub kind: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    pub severity: String,
    pub status: String,
    pub due_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// A clock with its workflow's kind, as operators' lists show it.
macro_rules! select_clocks {
    () => {
        "SELECT c.id, c.workflow_id, w.kind, c.clock, c.round, c.owner_role, c.owner_agent_id,
                c.subject_agent_id, c.severity, c.status, c.due_at, c.closed_at
           FROM sla_clocks c JOIN workflows w ON w.id = c.workflow_id"
    };
}

/// The armed clocks (or only the overdue ones) by deadline: the dashboard's list.
pub const CLOCKS_BY_DEADLINE: &str = concat!(
    select_clocks!(),
    " WHERE c.status = 'armed' AND (NOT $1 OR c.due_at < now()) AND $2::text IS NULL
      ORDER BY c.due_at, c.id LIMIT $3"
);

/// One workflow's clocks, whatever their status (or only its overdue ones).
const WORKFLOW_CLOCKS: &str = concat!(
    select_clocks!(),
    " WHERE c.workflow_id = $2 AND (NOT $1 OR (c.status = 'armed' AND c.due_at < now()))
      ORDER BY c.due_at, c.id LIMIT $3"
);

/// Clocks for operators: armed ones (or only overdue ones), of one workflow (whatever
/// their status) or all, earliest deadline first.
///
/// One statement for each case, not one with `$2 IS NULL OR …`: the service's pool
/// plans generically (`SERVICE_PLANNER`), and a generic plan of that condition cannot
/// use an index, which sorted every clock (a million: 300 ms) for the dashboard.
pub async fn sla_clocks(
    pool: &PgPool,
    overdue_only: bool,
    workflow_id: Option<&str>,
    limit: i64,
) -> super::Result<Vec<ClockListRow>> {
    let query = match workflow_id {
        Some(_) => WORKFLOW_CLOCKS,
        None => CLOCKS_BY_DEADLINE,
    };
    sqlx::query_as(query)
        .bind(overdue_only)
        .bind(workflow_id)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(super::Error::from)
}

/// One clock by its id, whatever its status.
pub async fn clock(pool: &PgPool, id: i64) -> super::Result<Option<ClockListRow>> {
    sqlx::query_as(concat!(select_clocks!(), " WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(super::Error::from)
}

#[derive(Debug, Clone, FromRow)]
pub struct EscalationListRow {
    pub id: i64,
    pub chain_id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub level: i32,
    pub target: String,
    pub severity: String,
    pub raised_at: DateTime<Utc>,
    pub next_level_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

pub async fn escalation_list(
    pool: &PgPool,
    open_only: bool,
    workflow_id: Option<&str>,
    limit: i64,
) -> super::Result<Vec<EscalationListRow>> {
    // One statement per case, as for `sla_clocks`: a workflow's through its index.
    let which = match workflow_id {
        Some(_) => "workflow_id = $2",
        None => "$2::text IS NULL",
    };
    sqlx::query_as(&format!(
        "SELECT id, chain_id, workflow_id, clock, owner_role, agent_id, level, target, severity, raised_at,
                next_level_at, acknowledged_at, acknowledged_by
         FROM escalations
         WHERE (NOT $1 OR acknowledged_at IS NULL) AND {which}
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(open_only)
    .bind(workflow_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}

/// How many clocks of a name a workflow (or incident) has.
pub async fn clock_count(pool: &PgPool, workflow_id: &str, clock: &str) -> super::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM sla_clocks WHERE workflow_id = $1 AND clock = $2")
        .bind(workflow_id)
        .bind(clock)
        .fetch_one(pool)
        .await
        .map_err(super::Error::from)
}

/// What the database holds, for the gauges (`service::gauges`, docs/metrics.md): each
/// family as label values with a count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// `[kind, state]`: live (not completed) workflows and incidents.
    pub workflows: Vec<(Vec<String>, i64)>,
    /// `[level]`: escalations nobody has acknowledged.
    pub escalations_open: Vec<(Vec<String>, i64)>,
    /// `[reason]`: dead letters neither replayed nor resolved.
    pub dead_letters_unresolved: Vec<(Vec<String>, i64)>,
    /// `[health]`: agents `live`, `stale` (no heartbeat for `stale_after`) or `unknown`.
    pub agents: Vec<(Vec<String>, i64)>,
    /// The oldest unsent outbox row's age; 0 when there is none.
    pub outbox_oldest_age_seconds: f64,
    /// Every role with a registered agent, and whether one of them is live or not
    /// heard from yet (one to take a task).
    pub roles: Vec<(String, bool)>,
}

/// The gauges' one read of what the database holds (see [`gauges`]).
pub const GAUGES: &str =
    "SELECT 'workflows', kind, state, count(*)::float8 FROM workflows
       WHERE completed_at IS NULL GROUP BY kind, state
     UNION ALL
     SELECT 'escalations', level::text, '', count(*)::float8 FROM escalations
       WHERE acknowledged_at IS NULL GROUP BY level
     UNION ALL
     SELECT 'dead_letters', reason, '', count(*)::float8 FROM dead_letters
       WHERE replayed_at IS NULL AND resolved_at IS NULL GROUP BY reason
     UNION ALL
     SELECT 'agents', health, '', count(*)::float8 FROM (
       SELECT CASE WHEN last_heartbeat_at IS NULL THEN 'unknown'
                   WHEN last_heartbeat_at < now() - make_interval(secs => $1) THEN 'stale'
                   ELSE 'live' END AS health
         FROM agents) a GROUP BY health
     UNION ALL
     SELECT 'roles', agent_type, '', count(*) FILTER (
       WHERE last_heartbeat_at IS NULL OR last_heartbeat_at >= now() - make_interval(secs => $1))::float8
       FROM agents GROUP BY agent_type
     UNION ALL
     SELECT 'outbox', '', '', coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
       FROM outbox WHERE sent_at IS NULL";

/// One statement for every gauge: a handful of grouped counts over indexed or small
/// sets, every `metrics.refresh_interval`.
pub async fn gauges(pool: &PgPool, stale_after: std::time::Duration) -> super::Result<State> {
    let rows: Vec<(String, String, String, f64)> = sqlx::query_as(GAUGES)
        .bind(stale_after.as_secs_f64())
        .fetch_all(pool)
        .await?;
    let mut state = State::default();
    for (family, a, b, value) in rows {
        let count = value as i64;
        match family.as_str() {
            "workflows" => state.workflows.push((vec![a, b], count)),
            "escalations" => state.escalations_open.push((vec![a], count)),
            "dead_letters" => state.dead_letters_unresolved.push((vec![a], count)),
            "agents" => state.agents.push((vec![a], count)),
            "roles" => state.roles.push((a, count > 0)),
            _ => state.outbox_oldest_age_seconds = value.max(0.0),
        }
    }
    Ok(state)
}

/// One history row for `coordinator tail`, with its workflow's kind and its sender's
/// role.
#[derive(Debug, Clone, FromRow)]
pub struct TailedEvent {
    pub workflow_id: String,
    pub seq: i32,
    pub kind: String,
    pub message_type: String,
    pub source_agent_id: Option<String>,
    pub source_role: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub occurred_at: DateTime<Utc>,
}

/// What `coordinator tail` shows: none set shows everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub workflow: Option<String>,
    pub kind: Option<String>,
    /// The sender's role (`agents.agent_type`).
    pub role: Option<String>,
    pub message_type: Option<String>,
}

/// Follows the history as it is committed (`coordinator tail`, the API's event stream).
/// A batch's rows carry the time its transaction decided them, and transactions commit
/// out of that order, so each read looks back over [`EventCursor::LOOK_BACK`] and drops
/// what it returned already: an event committed up to that long after its time is
/// still returned, once.
#[derive(Debug, Clone)]
pub struct EventCursor {
    from: DateTime<Utc>,
    /// What was returned, with when it occurred, as long as a read can see it again.
    seen: std::collections::HashMap<(String, i32), DateTime<Utc>>,
}

impl EventCursor {
    pub const LOOK_BACK: std::time::Duration = std::time::Duration::from_secs(10);

    /// From `since` on.
    pub fn at(since: DateTime<Utc>) -> EventCursor {
        EventCursor {
            from: since,
            seen: Default::default(),
        }
    }

    /// The events not returned before, oldest first, reading at most `page` rows; and
    /// whether to read again at once (a full page moved the cursor on).
    pub async fn next(
        &mut self,
        pool: &PgPool,
        filter: &EventFilter,
        page: i64,
    ) -> super::Result<(Vec<TailedEvent>, bool)> {
        let rows = events_since(pool, self.from, filter, page).await?;
        let full = rows.len() as i64 == page;
        let newest = rows.last().map(|r| r.occurred_at);
        let fresh: Vec<TailedEvent> = rows
            .into_iter()
            .filter(|r| {
                self.seen
                    .insert((r.workflow_id.clone(), r.seq), r.occurred_at)
                    .is_none()
            })
            .collect();
        let before = self.from;
        if let Some(newest) = newest {
            let look_back = chrono::Duration::from_std(Self::LOOK_BACK).unwrap_or_default();
            self.from = self
                .from
                .max(if full { newest } else { newest - look_back });
        }
        // What is older than the next read's start cannot come back.
        let from = self.from;
        self.seen.retain(|_, at| *at >= from);
        Ok((fresh, full && self.from > before))
    }
}

/// History rows that occurred at or after `since`, oldest first, at most `limit`
/// (the `workflow_events (occurred_at)` index serves it).
pub async fn events_since(
    pool: &PgPool,
    since: DateTime<Utc>,
    filter: &EventFilter,
    limit: i64,
) -> super::Result<Vec<TailedEvent>> {
    sqlx::query_as(
        "SELECT e.workflow_id, e.seq, w.kind, e.message_type, e.source_agent_id,
                a.agent_type AS source_role, e.from_state, e.to_state, e.occurred_at
           FROM workflow_events e
           JOIN workflows w ON w.id = e.workflow_id
           LEFT JOIN agents a ON a.agent_id = e.source_agent_id
          WHERE e.occurred_at >= $1
            AND ($2::text IS NULL OR e.workflow_id = $2)
            AND ($3::text IS NULL OR w.kind = $3)
            AND ($4::text IS NULL OR a.agent_type = $4)
            AND ($5::text IS NULL OR e.message_type = $5)
          ORDER BY e.occurred_at, e.workflow_id, e.seq
          LIMIT $6",
    )
    .bind(since)
    .bind(filter.workflow.as_deref())
    .bind(filter.kind.as_deref())
    .bind(filter.role.as_deref())
    .bind(filter.message_type.as_deref())
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(super::Error::from)
}
