//! The dashboard at `/`: server-rendered HTML (maud; no front-end build step, readable
//! without JavaScript), live through a few lines of script that reload the page's
//! `<main>` when the event stream says a workflow moved (and every 15 s, for clocks and
//! escalations the timer changes), or a `<noscript>` refresh. The one write is the
//! acknowledge form of an open escalation, which needs the operator token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::db::{self, read};
use crate::domain::agent_health::Health;
use crate::service::gauges::CHART_DAYS;
use crate::service::runtime::Shared;

/// A clock due within this long is at risk.
const AT_RISK: chrono::Duration = chrono::Duration::hours(1);

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview))
        .route("/workflows/{id}", get(workflow_page))
        .route("/escalations/{id}/acknowledge", post(acknowledge))
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:12px 20px;display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px}
h2{font-size:15px;margin:4px 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-weight:600;color:#57606a}.num{text-align:right}
.overdue{color:#cf222e;font-weight:600}.at-risk{color:#9a6700;font-weight:600}
.live{color:#1a7f37}.stale{color:#cf222e;font-weight:600}.unknown{color:#57606a}
.notice{background:#dafbe1;border:1px solid #4ac26b;padding:6px 10px;border-radius:6px;grid-column:1/-1}
.error{background:#ffebe9;border:1px solid #ff8182;padding:6px 10px;border-radius:6px;grid-column:1/-1}
.wide{grid-column:1/-1}.note{color:#57606a;font-size:12px;margin:0 0 6px}form.ack input{width:110px}form.ack{display:flex;gap:4px;margin:0}
svg.diagram .state rect{fill:#fff;stroke:#57606a}svg.diagram .state.terminal rect{stroke-dasharray:4 2}
svg.diagram .state.current rect{fill:#0969da;stroke:#0969da}svg.diagram .state.current text{fill:#fff;font-weight:600}
svg.diagram .edge line,svg.diagram .edge path{stroke:#8c959f}svg.diagram .edge text{font-size:11px;fill:#57606a}
svg.chart text{font-size:11px;fill:#57606a}svg.chart .axis{stroke:#d0d7de}
";

/// Reloads `<main>` when a workflow event arrives (and every 15 s), unless a form field
/// has the focus: someone is typing the token.
const LIVE: &str = r#"
(function () {
  function refresh() {
    var a = document.activeElement;
    if (a && a.form) return;
    fetch(location.href, {headers: {"Accept": "text/html"}}).then(function (r) { return r.text(); }).then(function (h) {
      var m = new DOMParser().parseFromString(h, "text/html").querySelector("main");
      if (m) document.querySelector("main").replaceWith(m);
    }).catch(function () {});
  }
  var pending = null;
  if (window.EventSource) {
    new EventSource("/api/v1/events").addEventListener("workflow_event", function () {
      clearTimeout(pending); pending = setTimeout(refresh, 300);
    });
  }
  setInterval(refresh, 15000);
})();
"#;

fn page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · coordinator" }
                    noscript { meta http-equiv="refresh" content="15"; }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header { a href="/" { "coordinator" } " · " (title) }
                    main { (body) }
                    script { (PreEscaped(LIVE)) }
                }
            }
        }
        .into_string(),
    )
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        page(
            "error",
            html! { p.error { (message) " " a href="/" { "Back to the dashboard" } } },
        ),
    )
        .into_response()
}

fn unavailable(e: db::Error) -> Response {
    tracing::warn!(error = %crate::telemetry::error_chain(&e), "the dashboard could not read the database");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database could not be read; this page tries again.",
    )
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// "in 5m", "3m ago".
fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let span = |s: i64| match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    match secs {
        0 => "now".into(),
        s if s > 0 => format!("in {}", span(s)),
        s => format!("{} ago", span(-s)),
    }
}

#[derive(Debug, Deserialize)]
struct OverviewQuery {
    acknowledged: Option<i64>,
}

struct Overview {
    state: Arc<read::State>,
    clocks: Vec<read::ClockListRow>,
    escalations: Vec<read::EscalationListRow>,
    emergencies: Vec<read::EmergencyRow>,
    agents: Vec<read::AgentRow>,
    dead_letters: Vec<read::DeadLetterRow>,
    /// None before the background's first read.
    compliance: Option<Arc<Vec<db::report::DailySla>>>,
    recent: Vec<read::WorkflowRow>,
}

async fn read_overview(shared: &Shared, now: DateTime<Utc>) -> db::Result<Overview> {
    let pool = &shared.pool;
    let stale_after = shared.settings.heartbeats.stale_after();
    // The gauges' last read (every metrics.refresh_interval), or a read of our own
    // before their first: counting every live workflow is the page's dearest query.
    let state = async {
        match shared.database_state.get() {
            Some(s) => Ok::<_, db::Error>(s),
            None => Ok(Arc::new(read::gauges(pool, stale_after).await?)),
        }
    };
    let no_filter = read::DeadLetterFilter::default();
    // At once, each on a connection of its own: the page waits for the slowest read,
    // not their sum.
    let (state, clocks, escalations, emergencies, agents, dead_letters, recent) = tokio::try_join!(
        state,
        read::sla_clocks(pool, false, None, 50),
        read::escalation_list(pool, true, None, 50),
        read::emergencies(pool, false, 10),
        read::agents(pool, None),
        read::dead_letters(pool, &no_filter, 10),
        read::recently_changed(pool, 15),
    )?;
    Ok(Overview {
        state,
        clocks: clocks
            .into_iter()
            .filter(|c| c.due_at - now < AT_RISK)
            .collect(),
        escalations,
        emergencies,
        agents,
        dead_letters,
        compliance: shared.compliance_chart.get(),
        recent,
    })
}

async fn overview(State(shared): State<Arc<Shared>>, Query(q): Query<OverviewQuery>) -> Response {
    let now = shared.clock.now();
    let o = match read_overview(&shared, now).await {
        Ok(o) => o,
        Err(e) => return unavailable(e),
    };
    let stale_after = shared.settings.heartbeats.stale_after();
    let can_ack = shared.settings.http.operator_token.is_some();
    let mut by_kind: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    for (labels, n) in &o.state.workflows {
        if let [kind, state] = labels.as_slice() {
            by_kind.entry(kind).or_default().push((state, *n));
        }
    }
    let body = html! {
        @if let Some(id) = q.acknowledged {
            p.notice id="acknowledged" { "Escalation " (id) " acknowledged." }
        }
        section #workflows {
            h2 { "Live workflows by kind and state" }
            p.note { "Counted every " (humantime::format_duration(shared.settings.metrics.refresh_interval)) " (metrics.refresh_interval)." }
            @if by_kind.is_empty() { p { "None." } }
            table {
                @for (kind, states) in &by_kind {
                    @for (state, n) in states {
                        tr { td { (kind) } td { (state) } td.num { (n) } }
                    }
                }
            }
        }
        section #recent {
            h2 { "Recently changed" }
            table {
                tr { th { "workflow" } th { "kind" } th { "state" } th { "next deadline" } }
                @for w in &o.recent {
                    tr {
                        td { a href={ "/workflows/" (w.id) } { (w.id) } }
                        td { (w.kind) } td { (w.state) }
                        td { @if let Some(d) = w.next_due_at { (relative(d, now)) } @else { "-" } }
                    }
                }
            }
        }
        section #clocks {
            h2 { "Clocks overdue or due within the hour" }
            @if o.clocks.is_empty() { p { "None." } }
            table {
                tr { th { "workflow" } th { "clock" } th { "owner" } th { "due" } }
                @for c in &o.clocks {
                    @let class = if c.due_at < now { "overdue" } else if c.due_at - now < AT_RISK { "at-risk" } else { "" };
                    tr class=(class) {
                        td { a href={ "/workflows/" (c.workflow_id) } { (c.workflow_id) } }
                        td { (c.clock) }
                        td { (c.owner_role) @if let Some(a) = &c.owner_agent_id { " (" (a) ")" } }
                        td { (relative(c.due_at, now)) @if c.due_at < now { " — overdue" } }
                    }
                }
            }
        }
        section.wide #escalations {
            h2 { "Open escalations" }
            @if o.escalations.is_empty() { p { "None open." } }
            @if !can_ack && !o.escalations.is_empty() {
                p { "Acknowledging here needs an operator token (http.operator_token)." }
            }
            table {
                @for e in &o.escalations {
                    tr data-escalation=(e.id) {
                        td { (e.id) }
                        td { a href={ "/workflows/" (e.workflow_id) } { (e.workflow_id) } }
                        td { (e.clock) " · level " (e.level) " → " (e.target) " (" (e.severity) ")" }
                        td { (relative(e.raised_at, now)) }
                        td {
                            @if can_ack {
                                form.ack method="post" action={ "/escalations/" (e.id) "/acknowledge" } {
                                    input name="by" placeholder="your name" required;
                                    input name="token" type="password" placeholder="operator token" required;
                                    button type="submit" { "Acknowledge" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #emergencies {
            h2 { "Emergencies" }
            @if o.emergencies.is_empty() { p { "None open." } }
            table {
                @for e in &o.emergencies {
                    tr {
                        td { a href={ "/workflows/" (e.incident.id) } { (e.incident.id) } }
                        td { (e.incident.state) }
                        td { (e.incident.title.as_deref().unwrap_or("")) }
                        td { @if e.not_acknowledged.is_empty() { "all acknowledged" } @else { "not acknowledged: " (e.not_acknowledged.join(", ")) } }
                    }
                }
            }
        }
        section #agents {
            h2 { "Agents" }
            table {
                tr { th { "agent" } th { "role" } th { "health" } th { "status" } th.num { "load" } th.num { "tasks" } th { "last heartbeat" } }
                @for a in &o.agents {
                    @let health = Health::of(a.last_heartbeat_at, stale_after, now).as_str();
                    tr {
                        td { (a.agent_id) } td { (a.agent_type) }
                        td class=(health) { (health) }
                        td { (a.status.as_deref().unwrap_or("-")) }
                        td.num { @if let Some(l) = a.load { (format!("{l:.2}")) } @else { "-" } }
                        td.num { @if let Some(n) = a.active_tasks { (n) } @else { "-" } }
                        td { @if let Some(t) = a.last_heartbeat_at { (relative(t, now)) } @else { "never" } }
                    }
                }
            }
        }
        section #dead-letters {
            h2 { "Recent dead letters" }
            @if o.dead_letters.is_empty() { p { "None." } }
            table {
                @for d in &o.dead_letters {
                    tr {
                        td { (d.id) } td { (d.reason) } td { (d.routing_key) }
                        td { (relative(d.received_at, now)) }
                        td { @if d.replayed_at.is_some() { "replayed" } @else if d.resolved_at.is_some() { "resolved" } @else { "unresolved" } }
                    }
                }
            }
        }
        section.wide #compliance {
            h2 { "SLA compliance per role, last " (CHART_DAYS) " days (met on time / closed)" }
            p.note { "Read every " (humantime::format_duration(shared.settings.metrics.chart_interval)) " (metrics.chart_interval)." }
            @match &o.compliance {
                Some(days) => (compliance_chart(days, now)),
                None => p { "Not read yet: the chart is read in the background, and the database has not answered since the start." },
            }
        }
    };
    page("dashboard", body).into_response()
}

/// One polyline per role over the last [`CHART_DAYS`] days, with a legend; a day with
/// no closed clock has no point.
fn compliance_chart(days: &[db::report::DailySla], now: DateTime<Utc>) -> Markup {
    const W: f64 = 760.0;
    const H: f64 = 180.0;
    const PAD: f64 = 30.0;
    const COLOURS: [&str; 8] = [
        "#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#57606a",
    ];
    let first = (now - chrono::Duration::days(CHART_DAYS - 1)).date_naive();
    let mut roles: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for d in days {
        let i = (d.day.date_naive() - first).num_days() as f64;
        let closed = d.met + d.breached;
        if closed == 0 || i < 0.0 {
            continue;
        }
        let x = PAD + i * (W - 2.0 * PAD) / (CHART_DAYS - 1) as f64;
        let y = PAD + (1.0 - d.met as f64 / closed as f64) * (H - 2.0 * PAD);
        roles.entry(&d.role).or_default().push((x, y));
    }
    html! {
        @if roles.is_empty() { p { "No clock closed in these days yet." } }
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(W + 200.0) height=(H) viewBox={ "0 0 " (W + 200.0) " " (H) } role="img" aria-label="SLA compliance per role" {
            line.axis x1=(PAD) y1=(PAD) x2=(PAD) y2=(H - PAD) {}
            line.axis x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) {}
            text x="0" y=(PAD + 4.0) { "100%" }
            text x="8" y=(H - PAD + 4.0) { "0%" }
            text x=(PAD) y=(H - 8.0) { (first.format("%m-%d")) }
            text x=(W - PAD - 30.0) y=(H - 8.0) { (now.format("%m-%d")) }
            @for (i, (role, points)) in roles.iter().enumerate() {
                @let colour = COLOURS[i % COLOURS.len()];
                @let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                polyline fill="none" stroke=(colour) stroke-width="2" points=(path.join(" ")) data-role=(role) {}
                @for (x, y) in points { circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" fill=(colour) {} }
                text x=(W - 10.0) y=(PAD + 14.0 * i as f64) fill=(colour) { (role) }
            }
        }
    }
}

async fn workflow_page(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let pool = &shared.pool;
    let now = shared.clock.now();
    let read::WorkflowWhole {
        workflow: w,
        events,
        clocks,
        escalations,
    } = match read::workflow_whole(pool, &id, 500, 100).await {
        Ok(Some(found)) => found,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("No workflow {id:?}.")),
        Err(e) => return unavailable(e),
    };
    let def = shared.processor.workflows.get(&w.kind);
    let body = html! {
        section #summary {
            h2 { (w.id) }
            table {
                tr { th { "kind" } td { (w.kind) } }
                tr { th { "state" } td #state { (w.state) } }
                tr { th { "round" } td { (w.round) } }
                @if let (Some(k), Some(v)) = (&w.key_name, &w.business_key) { tr { th { (k) } td { (v) } } }
                @if let Some(t) = &w.title { tr { th { "title" } td { (t) } } }
                tr { th { "started" } td { (when(w.created_at)) } }
                @if let Some(c) = w.completed_at { tr { th { "completed" } td { (when(c)) } } }
            }
        }
        section #diagram {
            h2 { "Definition" }
            @match def {
                Some(def) => { (PreEscaped(crate::domain::diagram::svg(def, Some(&w.state)))) }
                None => { p { "No diagram: " (w.kind) " is not a workflow definition this coordinator runs." } }
            }
        }
        section.wide #timeline {
            h2 { "Handoffs" }
            table {
                tr { th { "#" } th { "when" } th { "message" } th { "from" } th { "state" } }
                @for e in &events {
                    tr {
                        td { (e.seq) } td { (when(e.occurred_at)) } td { (e.message_type) }
                        td { (e.source_agent_id.as_deref().unwrap_or("-")) }
                        td { @if let Some(f) = &e.from_state { @if f != &e.to_state { (f) " → " } } (e.to_state) }
                    }
                }
            }
        }
        section.wide #clocks {
            h2 { "Clocks" }
            table {
                tr { th { "clock" } th { "round" } th { "owner" } th { "due" } th { "status" } th { "closed" } }
                @for c in &clocks {
                    @let late = c.status == "armed" && c.due_at < now;
                    tr class=(if late { "overdue" } else { "" }) data-clock=(c.clock) {
                        td { (c.clock) } td { (c.round) }
                        td { (c.owner_role) @if let Some(a) = &c.subject_agent_id { " (" (a) ")" } }
                        td { (when(c.due_at)) } td { (c.status) @if late { " (overdue)" } }
                        td { @if let Some(t) = c.closed_at { (when(t)) } @else { "-" } }
                    }
                }
            }
            @if !escalations.is_empty() {
                h2 { "Escalations" }
                table {
                    @for e in &escalations {
                        tr { td { (e.id) } td { (e.clock) " · level " (e.level) " → " (e.target) }
                             td { @if let Some(by) = &e.acknowledged_by { "acknowledged by " (by) } @else { "open" } } }
                    }
                }
            }
        }
    };
    page(&w.id, body).into_response()
}

#[derive(Debug, Deserialize)]
struct AckForm {
    by: String,
    token: String,
}

/// The acknowledge button: checks the token, acknowledges as `by`, and goes back to
/// the dashboard (303), or says what was wrong.
async fn acknowledge(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    Form(form): Form<AckForm>,
) -> Response {
    let Some(token) = shared.settings.http.operator_token.as_ref() else {
        return error_page(
            StatusCode::FORBIDDEN,
            "The dashboard is read-only: set http.operator_token (COORDINATOR__HTTP__OPERATOR_TOKEN) to acknowledge from it.",
        );
    };
    if !super::api::token_matches(&form.token, token.expose()) {
        return error_page(StatusCode::UNAUTHORIZED, "That is not the operator token.");
    }
    let by = form.by.trim();
    if by.is_empty() || by.len() > 200 {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Say who acknowledges (1 to 200 bytes).",
        );
    }
    match super::api::acknowledge_as(&shared, id, by).await {
        Ok(_) => Redirect::to(&format!("/?acknowledged={id}")).into_response(),
        Err(e @ crate::service::ops::Error::NotFound { .. }) => {
            error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => error_page(StatusCode::CONFLICT, &e.to_string()),
    }
}
