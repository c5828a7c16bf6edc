//! The dashboard end to end in a real headless Chromium (Debian's chromium and its
//! chromedriver, driven by Selenium from tests/dashboard/drive.py) against a running
//! coordinator with real workflows: what the overview and a workflow's page show, an
//! escalation acknowledged through the page (recorded as who), and screenshots saved
//! under target/dashboard/. The pages are read without JavaScript too.

use test_support as common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token";

fn tool(path: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: `make chromium` installs Debian's chromium and chromium-driver (make test does)"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_state_and_acknowledges_an_escalation_in_chromium() {
    tool("/usr/bin/chromium");
    tool("/usr/bin/chromedriver");
    let python = common::repo_root().join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv is missing: run `make python-venv` (make test does)"
    );

    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.sla.durations.insert(
        "technical_feasibility_assessment".into(),
        Duration::from_millis(300).into(),
    );
    settings.http.operator_token = Some(TOKEN.to_string().into());
    // The page's counts and chart are the gauges' last read.
    settings.metrics.refresh_interval = Duration::from_millis(100);
    settings.metrics.chart_interval = Duration::from_millis(100);
    let app = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let qa = env.agent("qa-1", "qa-director").await;
    eng.send(
        "heartbeat",
        "eng-1",
        json!({"agent_status": "healthy", "load": 0.25, "active_tasks": 2}),
    )
    .await
    .expect("publish");
    product
        .send(
            "requirements_ready",
            "wf-late",
            json!({"epic_id": "EPIC-9", "title": "Checkout"}),
        )
        .await
        .expect("publish");
    product
        .send("requirements_ready", "wf-moving", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-moving", "requirements_handoff").await;
    eng.send("sprint_initialized", "wf-moving", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-moving", "in_development").await;
    qa.send("testing_started", "wf-nowhere", json!({}))
        .await
        .expect("publish");
    qa.send(
        "emergency_alert",
        "inc-1",
        json!({"severity": "high", "description": "checkout down"}),
    )
    .await
    .expect("publish");
    env.wait_state("inc-1", "active").await;
    env.wait_count("SELECT count(*) FROM dead_letters", 1).await;
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE workflow_id = 'wf-late'",
        1,
    )
    .await;
    env.wait_count("SELECT count(*) FROM agents WHERE status = 'healthy'", 1)
        .await;
    let escalation = env
        .scalar_i64("SELECT id FROM escalations WHERE workflow_id = 'wf-late'")
        .await;

    // Without JavaScript: the server renders everything, the counts once the gauges
    // have read the workflows.
    let html = common::eventually("the counts on the dashboard", || async {
        let (status, html) = common::http_get(app.http, "/").await?;
        (status == 200 && html.contains("in_development")).then_some(html)
    })
    .await;
    for text in [
        "Live workflows by kind and state",
        "feature_delivery",
        "wf-late",
        "Acknowledge",
    ] {
        assert!(
            html.contains(text),
            "{text} missing from / without JavaScript"
        );
    }
    let (status, _) = common::http_get(app.http, "/workflows/wf-nope")
        .await
        .expect("GET");
    assert_eq!(status, 404);

    let shots = common::repo_root().join("target/dashboard");
    let out = tokio::process::Command::new(&python)
        .arg(common::repo_root().join("crates/coordinator/tests/dashboard/drive.py"))
        .arg(format!("http://{}", app.http))
        .arg(TOKEN)
        .arg(escalation.to_string())
        .arg("wf-late")
        .arg(&shots)
        .output()
        .await
        .expect("drive.py runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drive.py failed:\n{said}");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let text = |k: &str| seen[k].as_str().unwrap_or_default().to_string();

    assert!(text("title").contains("dashboard"), "{seen:#}");
    assert!(
        text("workflows").contains("feature_delivery requirements_handoff"),
        "{seen:#}"
    );
    assert!(
        text("workflows").contains("feature_delivery in_development"),
        "{seen:#}"
    );
    // The incident's acknowledgments are due within the hour; the features' next
    // clocks, days away, are not shown.
    assert!(text("clocks").contains("inc-1 acknowledgment"), "{seen:#}");
    assert!(!text("clocks").contains("effort_estimation"), "{seen:#}");
    assert!(text("emergencies").contains("inc-1"), "{seen:#}");
    assert!(
        text("emergencies").contains("not acknowledged: eng-1, product-1"),
        "{seen:#}"
    );
    assert!(
        text("agents").contains("eng-1 engineering-director live healthy 0.25 2"),
        "{seen:#}"
    );
    assert!(
        text("dead_letters").contains("unknown_workflow"),
        "{seen:#}"
    );
    assert!(
        seen["chart_roles"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("engineering-director"))),
        "{seen:#}"
    );
    assert!(text("escalation_row").contains("wf-late"), "{seen:#}");
    assert_eq!(
        text("notice"),
        format!("Escalation {escalation} acknowledged.")
    );
    assert!(
        !seen["open_after"]
            .as_array()
            .is_some_and(|o| o.contains(&json!(escalation.to_string()))),
        "{seen:#}"
    );
    assert_eq!(text("state"), "requirements_handoff");
    assert!(text("timeline").contains("requirements_ready"), "{seen:#}");
    assert!(
        text("workflow_clocks").contains("technical_feasibility_assessment"),
        "{seen:#}"
    );
    assert!(text("workflow_clocks").contains("breached"), "{seen:#}");
    assert_eq!(seen["current_states"], json!(["requirements_handoff"]));

    let by: Option<String> =
        sqlx::query_scalar("SELECT acknowledged_by FROM escalations WHERE id = $1")
            .bind(escalation)
            .fetch_one(&env.pool)
            .await
            .expect("escalation");
    assert_eq!(by.as_deref(), Some("alice"));
    for shot in ["overview.png", "acknowledged.png", "workflow.png"] {
        let len = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "{shot} was not saved under target/dashboard/");
    }
    app.stop().await;
}
