//! `make demo`: the coordinator and a team of simulated agents running a few workflows
//! in compressed time (an hour of SLA time per second): one on time, one where QA is
//! late and gets escalated, one with a bug loop, a design handoff to creative beside
//! them, and an emergency. Prints a live account
//! of handoffs, warnings, escalations and acknowledgements, then the SQL summary a
//! manager would see. Leaves its database and vhost (`coordinator_demo`) to explore.

use std::collections::HashMap;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{AgentClient, Queue};
use anyhow::{bail, Context};
use coordinator::app::App;
use coordinator::clock::SystemClock;
use coordinator::service::ops::Ops;
use coordinator::service::runtime::{Shared, Status};
use coordinator::settings::Settings;
use protocol::envelope::Envelope;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the demo waits for any one expected message.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints timestamped lines relative to the start of the demo.
#[derive(Clone)]
struct Narrator {
    start: Instant,
}

impl Narrator {
    fn line(&self, who: &str, mark: &str, what: &str, wf: &str, note: &str) {
        println!(
            "{:>6.1}s  {} {} {} {} {}",
            self.start.elapsed().as_secs_f64(),
            fit(who, 12),
            mark,
            fit(what, 26),
            fit(wf, 14),
            note
        );
    }

    fn heading(&self, text: &str) {
        println!(
            "\n── {text} {}",
            "─".repeat(78usize.saturating_sub(text.len()))
        );
    }
}

/// Exactly `width` characters: padded, or cut with an ellipsis, so that the lines,
/// printed as things happen, keep their columns whatever the values.
fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s}{}", " ".repeat(width - n))
    } else {
        let kept: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

fn note_for(env: &Envelope) -> String {
    let d = &env.payload.data;
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    match env.header.message_type.as_str() {
        "sla_warning" => format!("{} due soon", s("clock")),
        "sla_breached" | "escalation_raised" => {
            let who = d
                .get("agent_id")
                .and_then(Value::as_str)
                .map(|a| format!(", {a}"))
                .unwrap_or_default();
            format!(
                "{}{who}: level {} → {} ({})",
                d.get("clock")
                    .or_else(|| d.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                d.get("level").and_then(Value::as_i64).unwrap_or(0),
                s("target"),
                s("severity")
            )
        }
        "emergency_alert" => format!("\"{}\"", s("description")),
        "message_rejected" => format!("{}: {}", s("reason"), s("detail")),
        _ => match env.payload.metadata.get("round").and_then(Value::as_i64) {
            Some(r) if r > 1 => format!("round {r}"),
            _ => String::new(),
        },
    }
}

/// One simulated agent: a connection to publish on, and everything its queues receive.
struct Agent {
    id: String,
    client: AgentClient,
    inbox: mpsc::UnboundedReceiver<Envelope>,
    held: Vec<Envelope>,
    narrator: Narrator,
}

impl Agent {
    async fn say(&self, message_type: &str, wf: &str, data: Value) -> anyhow::Result<Envelope> {
        let env = self.client.send(message_type, wf, data).await?;
        self.narrator.line(&self.id, "→", message_type, wf, "");
        Ok(env)
    }

    /// Says each message in turn, with empty data.
    async fn say_all(&self, wf: &str, message_types: &[&str]) -> anyhow::Result<()> {
        for m in message_types {
            self.say(m, wf, json!({})).await?;
        }
        Ok(())
    }

    /// Waits for a message of this type about this workflow (others are kept).
    async fn expect(&mut self, message_type: &str, wf: &str) -> anyhow::Result<Envelope> {
        let matches =
            |e: &Envelope| e.header.message_type == message_type && e.header.correlation_id == wf;
        if let Some(i) = self.held.iter().position(matches) {
            return Ok(self.held.remove(i));
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let Ok(Some(env)) = tokio::time::timeout_at(deadline, self.inbox.recv()).await else {
                bail!("{} never received {message_type} for {wf}", self.id);
            };
            if matches(&env) {
                return Ok(env);
            }
            self.held.push(env);
        }
    }
}

struct Demo {
    settings: Settings,
    amqp_url: String,
    narrator: Narrator,
    pool: PgPool,
}

impl Demo {
    /// Registers an agent and starts printing what reaches its tasks and commands queues.
    async fn agent(&self, id: &str, role: &str) -> anyhow::Result<Agent> {
        Ops::new(&self.settings, &self.pool, &SystemClock)
            .add_agent(id, role, "demo")
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        for queue in [Queue::Tasks, Queue::Commands] {
            let mut listener = AgentClient::connect(&self.amqp_url, id, role).await?;
            let tx = tx.clone();
            let narrator = self.narrator.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                while let Ok(Some(env)) = listener.next(queue, Duration::from_secs(3600)).await {
                    let mark = match env.header.message_type.as_str() {
                        "sla_warning" => "⚠",
                        "sla_breached" => "✗",
                        "emergency_alert" => "!",
                        _ => "←",
                    };
                    narrator.line(
                        &id,
                        mark,
                        &env.header.message_type,
                        &env.header.correlation_id,
                        &note_for(&env),
                    );
                    if tx.send(env).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Agent {
            id: id.to_string(),
            client: AgentClient::connect(&self.amqp_url, id, role).await?,
            inbox: rx,
            held: Vec::new(),
            narrator: self.narrator.clone(),
        })
    }

    /// On-call: prints everything on `oncall.escalations` and, like a person with a
    /// pager, acknowledges (with the CLI) whatever reaches level 2.
    async fn pager(&self) -> anyhow::Result<()> {
        let mut reader = AgentClient::connect(&self.amqp_url, "pager", "on-call").await?;
        let narrator = self.narrator.clone();
        let pool = self.pool.clone();
        let settings = self.settings.clone();
        tokio::spawn(async move {
            while let Ok(Some((key, env))) = reader
                .next_with_key("oncall.escalations", Duration::from_secs(3600))
                .await
            {
                let wf = env.header.correlation_id.clone();
                let mark = if env.header.message_type == "emergency_alert" {
                    "!"
                } else {
                    "☎"
                };
                let route = if key.is_empty() {
                    "fanout".to_string()
                } else {
                    key
                };
                let note = format!("[{route}] {}", note_for(&env));
                narrator.line("ON-CALL", mark, &env.header.message_type, &wf, &note);
                let level = env
                    .payload
                    .data
                    .get("level")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let id = env
                    .payload
                    .data
                    .get("escalation_id")
                    .and_then(Value::as_i64);
                if let (true, Some(id)) = (level >= 2, id) {
                    let ops = Ops::new(&settings, &pool, &SystemClock);
                    match ops.acknowledge_escalation(id, "pat (on-call)").await {
                        Ok(_) => narrator.line(
                            "pat",
                            "✓",
                            "escalation ack (CLI)",
                            &wf,
                            &format!("#{id}: `coordinator escalation ack {id} --by pat`; the ladder stops"),
                        ),
                        Err(e) => narrator.line("pat", "?", "escalation ack failed", &wf, &format!("{e:#}")),
                    }
                }
            }
        });
        Ok(())
    }
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("rabbitmqctl is needed for the demo")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn fresh_environment(name: &str) -> anyhow::Result<(String, String)> {
    let admin_url = std::env::var("DEMO_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .context("PostgreSQL is needed for the demo (make services)")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", name])
        .output();
    rabbitmqctl(&["add_vhost", name])?;
    rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])?;
    let host = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(h, _)| h)
        .to_string();
    Ok((
        format!("{host}/{name}"),
        format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
    ))
}

fn demo_settings(db_url: &str, amqp_url: &str) -> anyhow::Result<Settings> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
    let mut s = Settings::load_from(dir, None)?;
    s.database.url = db_url.into();
    s.amqp.url = amqp_url.into();
    s.http.addr = "127.0.0.1:0".into();
    // One hour of SLA time per second of demo.
    s.sla.time_scale = 1.0 / 3600.0;
    let h = |n: u64| humantime_serde::Serde::from(Duration::from_secs(n * 3600));
    // Emergencies are minutes long; give agents two "hours" to acknowledge so it shows.
    s.sla.durations.insert("acknowledgment".into(), h(2));
    s.sla.durations.insert("initial_response".into(), h(6));
    s.sla.durations.insert("status_update".into(), h(8));
    s.escalation.waits = vec![h(1), h(1), h(2)];
    s.escalation.severity.clear();
    s.validate()?;
    Ok(s)
}

async fn run() -> anyhow::Result<()> {
    let name = std::env::var("DEMO_NAME").unwrap_or_else(|_| "coordinator_demo".into());
    let (db_url, amqp_url) = fresh_environment(&name).await?;
    let settings = demo_settings(&db_url, &amqp_url)?;

    println!("coordinator demo: one second here is one hour of SLA time.");
    println!("database {db_url}, vhost {name}");
    let app = App::build(settings.clone()).await?;
    println!(
        "while it runs: http://{}/metrics and /readyz",
        app.http_addr()
    );
    let shared = app.shared();
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    wait_ready(&shared).await?;

    let narrator = Narrator {
        start: Instant::now(),
    };
    let demo = Demo {
        settings,
        amqp_url,
        narrator: narrator.clone(),
        pool: shared.pool.clone(),
    };
    let mut product = demo.agent("product-1", "product-director").await?;
    let mut eng = demo.agent("eng-1", "engineering-director").await?;
    let mut qa = demo.agent("qa-1", "qa-director").await?;
    let mut devops = demo.agent("devops-1", "devops-manager").await?;
    let mut marketing = demo.agent("marketing-1", "marketing-director").await?;
    let mut creative = demo.agent("creative-1", "creative-director").await?;
    demo.pager().await?;
    println!(
        "agents: product-1, eng-1, qa-1, devops-1, marketing-1, creative-1; on-call reads oncall.escalations"
    );

    narrator
        .heading("1. wf-101 \"Single sign-on\": every handoff on time, then marketing launches it");
    let wf = "wf-101";
    let steps = [
        "handoff_acknowledged",
        "feasibility_assessed",
        "effort_estimated",
        "sprint_initialized",
        "feature_completed",
    ];
    to_qa(
        &product,
        &mut eng,
        &mut qa,
        wf,
        json!({"epic_id": "EPIC-101", "title": "Single sign-on"}),
        &steps,
    )
    .await?;
    qa.say_all(
        wf,
        &[
            "handoff_acknowledged",
            "testing_started",
            "testing_completed",
            "release_approved",
        ],
    )
    .await?;
    deploy(&mut devops, wf).await?;
    product.expect("feature_deployed", wf).await?;
    marketing.expect("feature_deployed", wf).await?;
    // The completion started wf-101.launch_handoff, whose campaign_launch clock
    // marketing meets by answering under the feature's id.
    marketing
        .say(
            "campaign_launched",
            wf,
            json!({"channels": ["blog", "email"]}),
        )
        .await?;
    wait_state(&demo.pool, "wf-101.launch_handoff", "launched").await?;

    narrator.heading("2. wf-102 \"Audit log export\": QA is late and gets escalated");
    let wf = "wf-102";
    let steps = [
        "handoff_acknowledged",
        "feasibility_assessed",
        "effort_estimated",
        "sprint_initialized",
        "feature_completed",
    ];
    to_qa(
        &product,
        &mut eng,
        &mut qa,
        wf,
        json!({"epic_id": "EPIC-102", "title": "Audit log export"}),
        &steps,
    )
    .await?;
    narrator.line(
        "qa-1",
        "…",
        "(busy: does not start testing)",
        wf,
        "testing_start is due in 4 h",
    );
    qa.expect("sla_warning", wf).await?;
    qa.expect("sla_breached", wf).await?;
    wait_acknowledged(&demo.pool, wf).await?;
    qa.say_all(
        wf,
        &["testing_started", "testing_completed", "release_approved"],
    )
    .await?;
    deploy(&mut devops, wf).await?;
    product.expect("feature_deployed", wf).await?;

    narrator.heading("3. wf-103 \"Saved searches\": QA finds a bug, a second round");
    let wf = "wf-103";
    let steps = [
        "feasibility_assessed",
        "effort_estimated",
        "sprint_initialized",
        "feature_completed",
    ];
    to_qa(
        &product,
        &mut eng,
        &mut qa,
        wf,
        json!({"epic_id": "EPIC-103", "title": "Saved searches"}),
        &steps,
    )
    .await?;
    qa.say("testing_started", wf, json!({})).await?;
    qa.say(
        "bug_discovered",
        wf,
        json!({"bug_id": "BUG-17", "summary": "search loses filters"}),
    )
    .await?;
    eng.expect("bug_report", wf).await?;
    eng.say("feature_completed", wf, json!({"fixes": "BUG-17"}))
        .await?;
    qa.expect("feature_handoff", wf).await?;
    qa.say_all(wf, &["testing_started", "release_approved"])
        .await?;
    deploy(&mut devops, wf).await?;
    product.expect("feature_deployed", wf).await?;

    narrator.heading("4. dh-201 \"Saved searches\" design: a design handoff to creative");
    let dh = "dh-201";
    product
        .say(
            "design_requirements",
            dh,
            json!({"epic_id": "EPIC-103", "screens": ["search results", "saved list"]}),
        )
        .await?;
    creative.expect("design_request", dh).await?;
    creative.say("handoff_acknowledged", dh, json!({})).await?;
    eng.say(
        "technical_constraints",
        dh,
        json!({"max_bundle_kb": 200, "no_web_fonts": true}),
    )
    .await?;
    creative.expect("design_constraints", dh).await?;
    creative
        .say("assets_ready", dh, json!({"icons": "search-v2"}))
        .await?;
    eng.expect("design_assets", dh).await?;
    creative
        .say("design_ready", dh, json!({"spec": "saved-searches-v1"}))
        .await?;
    product.expect("design_delivered", dh).await?;
    eng.expect("design_delivered", dh).await?;
    wait_state(&demo.pool, dh, "delivered").await?;

    narrator.heading("5. inc-7 \"Payments API down\": an emergency, one agent never acknowledges");
    let inc = "inc-7";
    devops
        .say(
            "emergency_alert",
            inc,
            json!({"severity": "critical", "description": "Payments API down"}),
        )
        .await?;
    for agent in [
        &mut product,
        &mut eng,
        &mut qa,
        &mut marketing,
        &mut creative,
    ] {
        agent.expect("emergency_alert", inc).await?;
    }
    for agent in [&product, &eng, &qa, &creative] {
        agent.say("emergency_acknowledged", inc, json!({})).await?;
    }
    narrator.line("marketing-1", "…", "(offline: never acknowledges)", inc, "");
    devops
        .say(
            "emergency_response",
            inc,
            json!({"action": "failing over to the standby region"}),
        )
        .await?;
    marketing.expect("sla_breached", inc).await?;
    wait_acknowledged(&demo.pool, inc).await?;
    devops
        .say(
            "emergency_status_update",
            inc,
            json!({"progress": "traffic on standby"}),
        )
        .await?;
    devops.say("emergency_resolved", inc, json!({})).await?;
    wait_state(&demo.pool, inc, "resolved").await?;

    token.cancel();
    handle.await.context("coordinator task")??;
    summary(&demo.pool).await?;
    println!("\nExplore further (the demo's database and vhost are kept):");
    println!(
        "  COORDINATOR__DATABASE__URL={db_url} target/release/coordinator workflow show wf-102"
    );
    println!(
        "  COORDINATOR__DATABASE__URL={db_url} target/release/coordinator emergency show inc-7"
    );
    println!("  psql {db_url}   (queries: docs/sql.md)");
    Ok(())
}

/// Product hands requirements to engineering, engineering works through `steps`
/// (ending with `feature_completed`), and the feature reaches QA.
async fn to_qa(
    product: &Agent,
    eng: &mut Agent,
    qa: &mut Agent,
    wf: &str,
    requirements: Value,
    steps: &[&str],
) -> anyhow::Result<()> {
    product.say("requirements_ready", wf, requirements).await?;
    eng.expect("requirements_handoff", wf).await?;
    eng.say_all(wf, steps).await?;
    qa.expect("feature_handoff", wf).await?;
    Ok(())
}

async fn deploy(devops: &mut Agent, wf: &str) -> anyhow::Result<()> {
    devops.expect("release_handoff", wf).await?;
    devops
        .say_all(
            wf,
            &[
                "handoff_acknowledged",
                "deployment_started",
                "deployment_completed",
                "validation_completed",
            ],
        )
        .await?;
    Ok(())
}

async fn wait_ready(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !(Status::get(&shared.status.consuming) && Status::get(&shared.status.migrated)) {
        if Instant::now() > deadline {
            bail!("the coordinator did not become ready (is RabbitMQ running?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn poll(pool: &PgPool, sql: &str, bind: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n: i64 = sqlx::query_scalar(sql).bind(bind).fetch_one(pool).await?;
        if n > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_acknowledged(pool: &PgPool, wf: &str) -> anyhow::Result<()> {
    let sql =
        "SELECT count(*) FROM escalations WHERE workflow_id = $1 AND acknowledged_at IS NOT NULL";
    poll(pool, sql, wf, "on-call to acknowledge").await
}

async fn wait_state(pool: &PgPool, wf: &str, state: &str) -> anyhow::Result<()> {
    let sql = format!("SELECT count(*) FROM workflows WHERE id = $1 AND state = '{state}'");
    poll(pool, &sql, wf, state).await
}

/// Prints rows as an aligned table.
fn table(title: &str, sql: &str, headers: &[&str], rows: &[Vec<String>]) {
    println!(
        "\n{title}\n  {}",
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("  {}", fmt(headers.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("  {}", fmt(r.clone()));
    }
}

async fn text_rows(pool: &PgPool, sql: &str, cols: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            (0..cols)
                .map(|i| {
                    Ok(r.try_get::<Option<String>, _>(i)?
                        .unwrap_or_else(|| "-".into()))
                })
                .collect()
        })
        .collect()
}

async fn summary(pool: &PgPool) -> anyhow::Result<()> {
    println!("\n══ What a manager sees in SQL ═══════════════════════════════════════════════════════════");
    let sql = "SELECT id, kind, state, round::text, coalesce(title, ''), \
               to_char(completed_at - created_at, 'HH24:MI:SS.MS') FROM workflows ORDER BY created_at";
    table(
        "Workflows",
        sql,
        &["id", "kind", "state", "round", "title", "duration"],
        &text_rows(pool, sql, 6).await?,
    );
    let sql = "SELECT clock, count(*) FILTER (WHERE status = 'met')::text, \
               count(*) FILTER (WHERE status = 'breached')::text, count(*) FILTER (WHERE status = 'cancelled')::text, \
               count(*) FILTER (WHERE status = 'armed')::text FROM sla_clocks GROUP BY clock ORDER BY clock";
    table(
        "SLA clocks",
        sql,
        &["clock", "met", "breached", "cancelled", "still armed"],
        &text_rows(pool, sql, 5).await?,
    );
    let sql = "SELECT id::text, workflow_id, clock, coalesce(agent_id, ''), level::text, target, severity, \
               coalesce(acknowledged_by, 'not acknowledged') FROM escalations ORDER BY id";
    table(
        "Escalations",
        sql,
        &[
            "id",
            "workflow",
            "clock",
            "agent",
            "level",
            "paged",
            "severity",
            "acknowledged by",
        ],
        &text_rows(pool, sql, 8).await?,
    );
    let counts: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT 'events', count(*) FROM workflow_events UNION ALL SELECT 'dead letters', count(*) FROM dead_letters",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    println!(
        "\n{} history rows in workflow_events; {} dead letters.",
        counts.get("events").copied().unwrap_or(0),
        counts.get("dead letters").copied().unwrap_or(0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn columns_keep_their_width_with_long_values() {
        assert_eq!(fit("qa-1", 6), "qa-1  ");
        assert_eq!(fit("wf-feature-with-a-long-id", 8), "wf-feat…");
        assert_eq!(fit("wf-feature-with-a-long-id", 8).chars().count(), 8);
        assert_eq!(fit("", 3), "   ");
    }
}
