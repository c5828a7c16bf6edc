//! The read API under `/api/v1` (JSON), with its OpenAPI 3.1 document generated from
//! these types and handlers (`/api/v1/openapi.json`, docs/api.md). Everything is
//! read-only and open, as `/metrics` is; the one write, acknowledging an escalation,
//! needs the operator token (`http.operator_token`, from the environment) and records
//! who acknowledged. Answers come from `db::read` and `db::report`: the API adds no
//! query of its own to the service's hot path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::db::{self, read};
use crate::domain::agent_health::Health;
use crate::engine::escalations::Acknowledged;
use crate::service::ops::Ops;
use crate::service::runtime::Shared;

/// Most rows one page returns.
const MOST: i64 = 500;
/// How often the event stream looks for new events, and most read at once.
const EVENTS_EVERY: Duration = Duration::from_millis(250);
const EVENTS_PAGE: i64 = 500;

pub fn router(shutdown: CancellationToken) -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/workflows", get(workflows))
        .route("/api/v1/workflows/{id}", get(workflow))
        .route("/api/v1/escalations", get(escalations))
        .route("/api/v1/escalations/{id}/acknowledge", post(acknowledge))
        .route("/api/v1/emergencies", get(emergencies))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/report", get(report))
        .route("/api/v1/events", get(events))
        .layer(Extension(shutdown))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coordinator read API",
        description = "What the coordinator holds, read-only (docs/api.md); acknowledging an escalation is the one write and needs the operator token."
    ),
    paths(
        workflows,
        workflow,
        escalations,
        acknowledge,
        emergencies,
        agents,
        dead_letters,
        report,
        events
    ),
    components(schemas(
        Workflow,
        WorkflowPage,
        WorkflowDetail,
        HistoryEvent,
        Clock,
        Escalation,
        Emergency,
        Agent,
        DeadLetter,
        Acknowledge,
        AcknowledgeResult,
        ApiError
    )),
    modifiers(&OperatorToken)
)]
pub struct ApiDoc;

/// The bearer scheme the acknowledgement names.
struct OperatorToken;

impl utoipa::Modify for OperatorToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "http.operator_token (COORDINATOR__HTTP__OPERATOR_TOKEN)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> impl IntoResponse {
    Json(document())
}

/// What went wrong, said so a person can act on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

fn unavailable(e: db::Error) -> Response {
    tracing::warn!(error = %crate::telemetry::error_chain(&e), "the read API could not read the database");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database could not be read; try again",
    )
}

/// A workflow (or incident) as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Workflow {
    pub id: String,
    /// A workflow definition's name, or `emergency`.
    pub kind: String,
    pub state: String,
    pub key_name: Option<String>,
    pub business_key: Option<String>,
    pub title: Option<String>,
    pub round: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The earliest deadline among its armed clocks.
    pub next_due_at: Option<DateTime<Utc>>,
    /// An armed clock is past its deadline.
    pub overdue: bool,
}

impl Workflow {
    fn of(w: read::WorkflowRow, now: DateTime<Utc>) -> Workflow {
        Workflow {
            overdue: w.next_due_at.is_some_and(|d| d < now),
            id: w.id,
            kind: w.kind,
            state: w.state,
            key_name: w.key_name,
            business_key: w.business_key,
            title: w.title,
            round: w.round,
            created_at: w.created_at,
            updated_at: w.updated_at,
            completed_at: w.completed_at,
            next_due_at: w.next_due_at,
        }
    }
}

/// One page of workflows, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowPage {
    pub workflows: Vec<Workflow>,
    /// Pass as `after` for the next page; none on the last.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkflowQuery {
    /// Only this kind (a definition's name, or `emergency`).
    pub kind: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only workflows with an armed clock this role owns (whose move it is).
    pub role: Option<String>,
    /// Only workflows with an armed clock past its deadline.
    #[serde(default)]
    pub overdue: bool,
    /// Also completed ones (default: live only).
    #[serde(default)]
    pub completed: bool,
    /// At most this many (1–500, default 50).
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// Workflows (and incidents), filtered, in id order, paged.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    params(WorkflowQuery),
    responses(
        (status = 200, description = "A page of workflows", body = WorkflowPage),
        (status = 400, description = "A parameter is wrong", body = ApiError)
    )
)]
async fn workflows(State(shared): State<Arc<Shared>>, Query(q): Query<WorkflowQuery>) -> Response {
    let limit = match limit_of(q.limit, 50) {
        Ok(l) => l,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let after = match q.after.as_deref().map(read::PageCursor::parse).transpose() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let filter = read::WorkflowFilter {
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        role: q.role.as_deref(),
        overdue: q.overdue,
        completed: q.completed,
    };
    match read::workflow_page(&shared.pool, &filter, after.as_ref(), limit).await {
        Ok((rows, next)) => {
            let now = shared.clock.now();
            Json(WorkflowPage {
                workflows: rows.into_iter().map(|w| Workflow::of(w, now)).collect(),
                next: next.map(|c| c.to_string()),
            })
            .into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// One message applied to a workflow (or an operator's action).
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEvent {
    pub seq: i32,
    pub message_id: Option<String>,
    pub message_type: String,
    pub source_agent_id: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub occurred_at: DateTime<Utc>,
    /// Tasks sent, clocks armed, met, cancelled and moved, escalations.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// An SLA clock of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct Clock {
    pub id: i64,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    /// The agent a per-agent clock (an emergency acknowledgment) waits for.
    pub subject_agent_id: Option<String>,
    pub severity: String,
    /// `armed`, `met`, `breached` or `cancelled`.
    pub status: String,
    pub due_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl From<read::ClockListRow> for Clock {
    fn from(c: read::ClockListRow) -> Clock {
        Clock {
            id: c.id,
            clock: c.clock,
            round: c.round,
            owner_role: c.owner_role,
            owner_agent_id: c.owner_agent_id,
            subject_agent_id: c.subject_agent_id,
            severity: c.severity,
            status: c.status,
            due_at: c.due_at,
            closed_at: c.closed_at,
        }
    }
}

/// An escalation (one level of a chain).
#[derive(Debug, Serialize, ToSchema)]
pub struct Escalation {
    pub id: i64,
    pub chain_id: i64,
    pub workflow_id: String,
    /// The clock that breached, or the message that raised it.
    pub clock: String,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub level: i32,
    /// Whom this level paged.
    pub target: String,
    pub severity: String,
    pub raised_at: DateTime<Utc>,
    pub next_level_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

impl From<read::EscalationListRow> for Escalation {
    fn from(e: read::EscalationListRow) -> Escalation {
        Escalation {
            id: e.id,
            chain_id: e.chain_id,
            workflow_id: e.workflow_id,
            clock: e.clock,
            owner_role: e.owner_role,
            agent_id: e.agent_id,
            level: e.level,
            target: e.target,
            severity: e.severity,
            raised_at: e.raised_at,
            next_level_at: e.next_level_at,
            acknowledged_at: e.acknowledged_at,
            acknowledged_by: e.acknowledged_by,
        }
    }
}

/// One workflow whole: its history, clocks, escalations and follow-ons.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowDetail {
    pub workflow: Workflow,
    pub history: Vec<HistoryEvent>,
    pub clocks: Vec<Clock>,
    pub escalations: Vec<Escalation>,
    /// Workflows it started (`<id>.<kind>`).
    pub follow_ons: Vec<Workflow>,
}

/// One workflow (or incident) with its history, clocks, escalations and follow-ons.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    params(("id" = String, Path, description = "The workflow's id (its correlation id)")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowDetail),
        (status = 404, description = "No such workflow", body = ApiError)
    )
)]
async fn workflow(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match workflow_detail(&shared, &id).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no workflow {id:?}")),
        Err(e) => unavailable(e),
    }
}

async fn workflow_detail(shared: &Shared, id: &str) -> db::Result<Option<WorkflowDetail>> {
    let pool = &shared.pool;
    let candidates: Vec<String> = shared
        .processor
        .workflows
        .iter()
        .map(|d| crate::domain::ids::follow_on(id, d.name))
        .collect();
    let (whole, follow_ons) = tokio::try_join!(
        read::workflow_whole(pool, id, MOST, MOST),
        read::workflows_among(pool, &candidates),
    )?;
    let Some(read::WorkflowWhole {
        workflow: w,
        events: history,
        clocks,
        escalations,
    }) = whole
    else {
        return Ok(None);
    };
    let now = shared.clock.now();
    Ok(Some(WorkflowDetail {
        workflow: Workflow::of(w, now),
        history: history
            .into_iter()
            .map(|e| HistoryEvent {
                seq: e.seq,
                message_id: e.message_id,
                message_type: e.message_type,
                source_agent_id: e.source_agent_id,
                from_state: e.from_state,
                to_state: e.to_state,
                occurred_at: e.occurred_at,
                detail: e.detail,
            })
            .collect(),
        clocks: clocks.into_iter().map(Clock::from).collect(),
        escalations: escalations.into_iter().map(Escalation::from).collect(),
        follow_ons: follow_ons
            .into_iter()
            .map(|f| Workflow::of(f, now))
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EscalationQuery {
    /// Only escalations nobody has acknowledged.
    #[serde(default)]
    pub open: bool,
    /// Only this workflow's.
    pub workflow: Option<String>,
    /// At most this many, newest first (1–500, default 100).
    pub limit: Option<i64>,
}

/// Escalations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/escalations",
    params(EscalationQuery),
    responses(
        (status = 200, description = "Escalations", body = [Escalation]),
        (status = 400, description = "A parameter is wrong", body = ApiError)
    )
)]
async fn escalations(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<EscalationQuery>,
) -> Response {
    let limit = match limit_of(q.limit, 100) {
        Ok(l) => l,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match read::escalation_list(&shared.pool, q.open, q.workflow.as_deref(), limit).await {
        Ok(rows) => {
            Json(rows.into_iter().map(Escalation::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// The page size asked for (or `default`), or why it is refused.
fn limit_of(asked: Option<i64>, default: i64) -> Result<i64, String> {
    let limit = asked.unwrap_or(default);
    if (1..=MOST).contains(&limit) {
        Ok(limit)
    } else {
        Err(format!("limit must be 1 to {MOST}, got {limit}"))
    }
}

/// Who acknowledges.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Acknowledge {
    /// Recorded as `acknowledged_by` and in the audit log.
    pub by: String,
}

/// What acknowledging did.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcknowledgeResult {
    pub workflow_id: String,
    pub chain_id: i64,
    /// The escalations of the chain acknowledged now (empty: it had been before).
    pub acknowledged: Vec<i64>,
    pub already: bool,
}

/// Acknowledges an escalation's whole chain (its ladder stops), as `by`. Needs the
/// operator token.
#[utoipa::path(
    post,
    path = "/api/v1/escalations/{id}/acknowledge",
    params(("id" = i64, Path, description = "Any escalation of the chain")),
    request_body = Acknowledge,
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Acknowledged (or it was already)", body = AcknowledgeResult),
        (status = 400, description = "`by` is empty", body = ApiError),
        (status = 401, description = "No or a wrong operator token", body = ApiError),
        (status = 403, description = "No operator token is configured: the API is read-only", body = ApiError),
        (status = 404, description = "No such escalation", body = ApiError)
    )
)]
async fn acknowledge(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Json(body): Json<Acknowledge>,
) -> Response {
    let Some(token) = shared.settings.http.operator_token.as_ref() else {
        return error(
            StatusCode::FORBIDDEN,
            "the API is read-only: set http.operator_token (COORDINATOR__HTTP__OPERATOR_TOKEN) to acknowledge through it",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| token_matches(g, token.expose())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "send the operator token as `Authorization: Bearer <token>`",
        );
    }
    let by = body.by.trim();
    if by.is_empty() || by.len() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "`by` must name who acknowledges (1 to 200 bytes)",
        );
    }
    match acknowledge_as(&shared, id, by).await {
        Ok(Acknowledged::Now {
            workflow_id,
            chain_id,
            ids,
        }) => Json(AcknowledgeResult {
            workflow_id,
            chain_id,
            acknowledged: ids,
            already: false,
        })
        .into_response(),
        Ok(Acknowledged::Already {
            workflow_id,
            chain_id,
        }) => Json(AcknowledgeResult {
            workflow_id,
            chain_id,
            acknowledged: Vec::new(),
            already: true,
        })
        .into_response(),
        Err(e @ crate::service::ops::Error::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Acknowledges escalation `id`'s chain as `by` (the API's and the dashboard's one
/// write), and wakes the timer and the relay for what it changed.
pub(super) async fn acknowledge_as(
    shared: &Shared,
    id: i64,
    by: &str,
) -> Result<Acknowledged, crate::service::ops::Error> {
    let ops = Ops::new(&shared.settings, &shared.pool, shared.clock.as_ref());
    let done = ops.acknowledge_escalation(id, by).await?;
    shared.signals.timers_changed();
    shared.signals.wake_relay.notify_one();
    Ok(done)
}

/// Whether `given` is the operator token, compared without an early exit so that the
/// time taken says nothing of the token.
pub(super) fn token_matches(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An incident and who has not acknowledged it yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct Emergency {
    pub incident: Workflow,
    /// Agents whose acknowledgment clock is still armed.
    pub not_acknowledged: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EmergencyQuery {
    /// Also resolved ones (default: open only).
    #[serde(default)]
    pub resolved: bool,
}

/// Emergencies, newest first, with who has not acknowledged each.
#[utoipa::path(
    get,
    path = "/api/v1/emergencies",
    params(EmergencyQuery),
    responses((status = 200, description = "Emergencies", body = [Emergency]))
)]
async fn emergencies(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<EmergencyQuery>,
) -> Response {
    match read::emergencies(&shared.pool, q.resolved, MOST).await {
        Ok(rows) => {
            let now = shared.clock.now();
            let out: Vec<Emergency> = rows
                .into_iter()
                .map(|e| Emergency {
                    incident: Workflow::of(e.incident, now),
                    not_acknowledged: e.not_acknowledged,
                })
                .collect();
            Json(out).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// A registered agent and its health.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub agent_type: String,
    /// `live`, `stale` (no heartbeat for heartbeats.missed intervals) or `unknown` (none yet).
    pub health: String,
    pub registered_at: DateTime<Utc>,
    pub registered_via: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub stale_since: Option<DateTime<Utc>>,
    pub status: Option<String>,
    pub load: Option<f64>,
    pub available_capacity: Option<f64>,
    pub active_tasks: Option<i32>,
    pub queued_tasks: Option<i32>,
    pub capabilities: Option<Vec<String>>,
    pub last_activity_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    /// Only this role's agents.
    pub role: Option<String>,
}

/// Registered agents with their health and what their last heartbeat said.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    params(AgentQuery),
    responses((status = 200, description = "Agents", body = [Agent]))
)]
async fn agents(State(shared): State<Arc<Shared>>, Query(q): Query<AgentQuery>) -> Response {
    let stale_after = shared.settings.heartbeats.stale_after();
    let now = shared.clock.now();
    match read::agents(&shared.pool, q.role.as_deref()).await {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|a| Agent {
                    health: Health::of(a.last_heartbeat_at, stale_after, now)
                        .as_str()
                        .to_string(),
                    agent_id: a.agent_id,
                    agent_type: a.agent_type,
                    registered_at: a.registered_at,
                    registered_via: a.registered_via,
                    last_heartbeat_at: a.last_heartbeat_at,
                    stale_since: a.stale_since,
                    status: a.status,
                    load: a.load,
                    available_capacity: a.available_capacity,
                    active_tasks: a.active_tasks,
                    queued_tasks: a.queued_tasks,
                    capabilities: a.capabilities,
                    last_activity_at: a.last_activity_at,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => unavailable(e),
    }
}

/// A delivery the coordinator refused, kept whole in `dead_letters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub message_id: Option<String>,
    /// A rejection reason of docs/protocol.md section 8.
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub source_agent_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only neither replayed nor resolved.
    #[serde(default)]
    pub unresolved: bool,
    /// Only this reason.
    pub reason: Option<String>,
    /// At most this many, newest first (1–500, default 100).
    pub limit: Option<i64>,
}

/// Dead letters, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "Dead letters", body = [DeadLetter]),
        (status = 400, description = "A parameter is wrong", body = ApiError)
    )
)]
async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<DeadLetterQuery>,
) -> Response {
    let limit = match limit_of(q.limit, 100) {
        Ok(l) => l,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let filter = read::DeadLetterFilter {
        reason: q.reason.as_deref(),
        since: None,
        unresolved: q.unresolved,
    };
    match read::dead_letters(&shared.pool, &filter, limit).await {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|d| DeadLetter {
                    id: d.id,
                    message_id: d.message_id,
                    reason: d.reason,
                    detail: d.detail,
                    routing_key: d.routing_key,
                    source_agent_id: d.source_agent_id,
                    received_at: d.received_at,
                    replayed_at: d.replayed_at,
                    resolved_at: d.resolved_at,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// How far back (e.g. 24h, 7d; default 7d).
    pub since: Option<String>,
}

/// The communication-health report (as `coordinator report --format json`).
#[utoipa::path(
    get,
    path = "/api/v1/report",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report: overall_health, rules, message_volume, message_latency, message_reliability, communication_quality", body = Object),
        (status = 400, description = "`since` is not a duration", body = ApiError)
    )
)]
async fn report(State(shared): State<Arc<Shared>>, Query(q): Query<ReportQuery>) -> Response {
    let since = match q
        .since
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
    {
        Ok(s) => s.unwrap_or(Duration::from_secs(7 * 24 * 3600)),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("since must be a duration such as 24h or 7d: {e}"),
            )
        }
    };
    let until = shared.clock.now();
    let Some(from) = chrono::Duration::from_std(since)
        .ok()
        .and_then(|d| until.checked_sub_signed(d))
    else {
        return error(StatusCode::BAD_REQUEST, "since reaches back too far");
    };
    match db::report::figures(&shared.pool, from, until).await {
        Ok(f) => Json(crate::service::report::Report::of(f).json()).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this workflow's events.
    pub workflow: Option<String>,
    /// Only workflows of this kind.
    pub kind: Option<String>,
    /// Only messages sent by agents of this role.
    pub role: Option<String>,
    /// Only this message type.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
}

/// Workflow events as they are committed, as server-sent events (`event:
/// workflow_event`, `data:` one JSON history row with its workflow's kind and the
/// sender's role); a comment every 15 s keeps the connection open.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    params(EventQuery),
    responses((status = 200, description = "A text/event-stream of workflow events", content_type = "text/event-stream", body = String))
)]
async fn events(
    State(shared): State<Arc<Shared>>,
    Extension(shutdown): Extension<CancellationToken>,
    Query(q): Query<EventQuery>,
) -> Response {
    let filter = read::EventFilter {
        workflow: q.workflow,
        kind: q.kind,
        role: q.role,
        message_type: q.message_type,
    };
    let start = shared.clock.now();
    let stream = futures_util::stream::unfold(
        (
            shared,
            filter,
            read::EventCursor::at(start),
            std::collections::VecDeque::new(),
        ),
        |(shared, filter, mut cursor, mut pending)| async move {
            let mut again = false;
            loop {
                if let Some(e) = pending.pop_front() {
                    let event = sse_event(&e);
                    return Some((
                        Ok::<_, Infallible>(event),
                        (shared, filter, cursor, pending),
                    ));
                }
                if !again {
                    tokio::time::sleep(EVENTS_EVERY).await;
                }
                match cursor.next(&shared.pool, &filter, EVENTS_PAGE).await {
                    Ok((found, more)) => {
                        pending.extend(found);
                        again = more;
                    }
                    Err(e) => {
                        again = false;
                        tracing::debug!(error = %crate::telemetry::error_chain(&e), "the event stream could not read; trying again");
                    }
                }
            }
        },
    );
    // Ends with the service: a graceful shutdown waits for open responses.
    let stream = stream.take_until(shutdown.cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn sse_event(e: &read::TailedEvent) -> Event {
    let data = serde_json::json!({
        "workflow_id": e.workflow_id,
        "seq": e.seq,
        "kind": e.kind,
        "message_type": e.message_type,
        "source_agent_id": e.source_agent_id,
        "source_role": e.source_role,
        "from_state": e.from_state,
        "to_state": e.to_state,
        "occurred_at": e.occurred_at,
    });
    Event::default()
        .event("workflow_event")
        .id(format!("{}:{}", e.workflow_id, e.seq))
        .data(data.to_string())
}
