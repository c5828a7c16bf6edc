//! Agents' health against the real services: a heartbeat's report lands in `agents`;
//! an agent silent for `heartbeats.missed` intervals is marked stale and its role's
//! owner told once; its next heartbeat makes it live again; a task sent to a role
//! with no agent to take it is counted (and logged) at once.

use coordinator::cli::{self, AgentCommand, Command};
use coordinator::service::agent_health::Watch;
use test_support as common;

use std::time::Duration;

use common::{TestEnv, WAIT};
use serde_json::json;

const ONCALL: &str = "oncall.escalations";

fn quick_heartbeats(env: &TestEnv) -> coordinator::settings::Settings {
    let mut s = env.settings();
    s.heartbeats.interval = Duration::from_millis(300);
    s.heartbeats.missed = 2;
    s.metrics.refresh_interval = Duration::from_millis(100);
    s.validate().expect("valid test settings");
    s
}

fn seed_heartbeat() -> serde_json::Value {
    json!({
        "agent_status": "healthy",
        "load": 0.75,
        "available_capacity": 0.25,
        "active_tasks": 3,
        "queued_tasks": 1,
        "last_activity": "2026-12-07T10:29:55.000Z",
        "capabilities": ["document_analysis", "policy_extraction"],
        "resource_usage": {"cpu_percent": 65.2, "memory_percent": 78.1, "disk_percent": 45.0}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_goes_stale_once_its_owner_is_told_and_a_heartbeat_revives_it() {
    let env = TestEnv::new().await;
    let settings = quick_heartbeats(&env);
    let app = env.start_with(settings.clone()).await;
    let qa = env.agent("qa-1", "qa-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;

    qa.send("heartbeat", "qa-1", seed_heartbeat())
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM agents WHERE agent_id = 'qa-1' AND status = 'healthy'
            AND load = 0.75 AND available_capacity = 0.25 AND active_tasks = 3
            AND queued_tasks = 1 AND capabilities = ARRAY['document_analysis', 'policy_extraction']
            AND (resource_usage->>'cpu_percent')::float8 = 65.2
            AND last_activity_at = '2026-12-07T10:29:55Z'",
        1,
    )
    .await;
    let listed = cli::run(
        &settings,
        Command::Agent {
            command: AgentCommand::List {
                role: Some("qa-director".into()),
            },
        },
    )
    .await
    .expect("agent list");
    let row = listed
        .lines()
        .find(|l| l.starts_with("qa-1"))
        .unwrap_or_default();
    for cell in ["live", "healthy", "0.75", "0.25"] {
        assert!(
            row.contains(cell),
            "{cell} missing from {row:?} in\n{listed}"
        );
    }

    // Silent: after two intervals its role's owner hears of it, on the escalation key
    // the ladder's owner level pages.
    let (key, stale) = oncall
        .next_with_key(ONCALL, WAIT)
        .await
        .expect("read on-call")
        .expect("agent_stale reached on-call");
    assert_eq!(key, "escalation.high.qa-director");
    assert_eq!(stale.header.message_type, "agent_stale");
    assert_eq!(stale.header.correlation_id, "qa-1");
    let d = &stale.payload.data;
    assert_eq!(d["agent_id"], "qa-1");
    assert_eq!(d["agent_type"], "qa-director");
    assert_eq!(d["missed_heartbeats"], 2);
    assert_eq!(d["live_agents_of_role"], 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM agents WHERE stale_since IS NOT NULL")
            .await,
        1
    );
    // Once: looking again finds nothing new, and one notice was ever written.
    let watch = Watch::of(&app.shared);
    assert!(watch.step().await.expect("step").is_empty());
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE message_type = 'agent_stale'")
            .await,
        1
    );
    let listed = cli::run(
        &settings,
        Command::Agent {
            command: AgentCommand::List { role: None },
        },
    )
    .await
    .expect("agent list");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("qa-1") && l.contains("stale")),
        "{listed}"
    );

    // Back: the next heartbeat clears it, with what that one says.
    qa.send(
        "heartbeat",
        "qa-1",
        json!({"status": "degraded", "load": 0.9}),
    )
    .await
    .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM agents WHERE agent_id = 'qa-1' AND stale_since IS NULL
            AND status = 'degraded' AND load = 0.9 AND active_tasks IS NULL",
        1,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_for_a_role_with_no_live_agent_is_counted_at_once() {
    let env = TestEnv::new().await;
    let app = env.start_with(quick_heartbeats(&env)).await;
    // The product director is registered (not heard from yet: it may take tasks); no
    // engineering director is.
    let product = env.agent("product-1", "product-director").await;
    let unattended = "coordinator_tasks_unattended_total{role=\"engineering-director\"} ";
    // The gauges have read the agents once (the product director among them).
    common::eventually("the agents read by the gauges", || async {
        (common::metric(app.http, "coordinator_agents{health=\"unknown\"} ").await >= 1.0)
            .then_some(())
    })
    .await;
    product
        .send("requirements_ready", "wf-nobody", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-nobody", "requirements_handoff").await;
    common::eventually(unattended, || async {
        (common::metric(app.http, unattended).await == 1.0).then_some(())
    })
    .await;
    // Once an engineering director is registered, its tasks are not counted.
    let _eng = env.agent("eng-1", "engineering-director").await;
    let body = || async { common::http_get(app.http, "/metrics").await.map(|r| r.1) };
    common::eventually("the engineering director read by the gauges", || async {
        (common::metric(app.http, "coordinator_agents{health=\"unknown\"} ").await >= 2.0)
            .then_some(())
    })
    .await;
    product
        .send("requirements_ready", "wf-somebody", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-somebody", "requirements_handoff").await;
    env.wait_outbox_flushed().await;
    assert_eq!(
        common::metric(app.http, unattended).await,
        1.0,
        "{:?}",
        body().await
    );
    app.stop().await;
}
