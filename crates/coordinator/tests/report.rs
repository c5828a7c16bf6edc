//! `coordinator report` against the real services: a workflow handed off, its clock
//! breached, a message refused; the report counts each where the source documents'
//! communication-health report puts it and judges the health by its written rules.

use coordinator::cli::{self, Command, ReportFormat};
use test_support as common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_volume_delivery_handoffs_slas_and_refusals_and_says_why_it_judged() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.sla.durations.insert(
        "technical_feasibility_assessment".into(),
        Duration::from_secs(1).into(),
    );
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    product
        .send("requirements_ready", "wf-late", json!({}))
        .await
        .expect("publish");
    // Refused: no such workflow.
    eng.send("sprint_initialized", "wf-nowhere", json!({}))
        .await
        .expect("publish");
    env.wait_count("SELECT count(*) FROM dead_letters", 1).await;
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE clock = 'technical_feasibility_assessment' AND status = 'breached'",
        1,
    )
    .await;
    env.wait_outbox_flushed().await;

    let run = |format| {
        cli::run(
            &settings,
            Command::Report {
                since: Duration::from_secs(3600),
                format,
            },
        )
    };
    let json_out = run(ReportFormat::Json).await.expect("report --format json");
    let r: Value = serde_json::from_str(&json_out).unwrap_or_else(|e| panic!("{e}: {json_out}"));

    assert_eq!(r["message_volume"]["total_messages"], 2, "{r:#}");
    let adherence = &r["communication_quality"]["adherence_by_orchestrator"];
    let of = |role: &str| {
        adherence
            .as_array()
            .and_then(|a| a.iter().find(|o| o["orchestrator"] == role))
            .cloned()
            .unwrap_or_else(|| panic!("no {role} in {adherence:#}"))
    };
    assert_eq!(of("product-director")["rate"], 1.0);
    let eng_row = of("engineering-director");
    assert_eq!(eng_row["received"], 1);
    assert_eq!(eng_row["accepted"], 0);
    assert_eq!(
        eng_row["top_refusals"],
        json!([{"reason": "unknown_workflow", "count": 1}])
    );
    assert_eq!(r["communication_quality"]["protocol_adherence_rate"], 0.5);

    let handoffs = &r["communication_quality"]["handoffs_by_kind"];
    assert_eq!(
        handoffs,
        &json!([{"kind": "feature_delivery", "sent": 1, "delivered": 1, "failed": 0, "pending": 0, "success_rate": 1.0}])
    );
    let sla = &r["communication_quality"]["sla_by_role_and_clock"];
    assert_eq!(
        sla,
        &json!([{"role": "engineering-director", "clock": "technical_feasibility_assessment", "met": 0, "breached": 1, "compliance": 0.0}])
    );
    assert_eq!(r["message_reliability"]["delivery_success_rate"], 1.0);
    assert_eq!(r["message_reliability"]["retry_rate"], 0.0);
    assert!(
        r["message_latency"]["p95_delivery_seconds"]
            .as_f64()
            .is_some(),
        "{r:#}"
    );
    let types: Vec<&str> = r["message_latency"]["by_type"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["message_type"].as_str())
                .collect()
        })
        .unwrap_or_default();
    for t in ["requirements_handoff", "sla_breached", "message_rejected"] {
        assert!(types.contains(&t), "{t} not among {types:?}");
    }

    // Every rule is written out; a breached clock and half the messages refused are
    // critical.
    assert_eq!(r["overall_health"], "critical");
    let rules = r["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), 6, "{rules:#?}");
    let verdict = |m: &str| {
        rules
            .iter()
            .find(|j| j["measure"] == m)
            .map(|j| j["verdict"].clone())
            .unwrap_or_default()
    };
    assert_eq!(verdict("sla_compliance"), "critical");
    assert_eq!(verdict("protocol_adherence"), "critical");
    assert_eq!(verdict("delivery_success_rate"), "healthy");

    let text = run(ReportFormat::Text).await.expect("report");
    for line in [
        "CRITICAL",
        "sla_compliance = 0.000: critical (degraded below 0.95, critical below 0.8)",
        "protocol_adherence = 0.500: critical",
        "technical_feasibility_assessment",
        "unknown_workflow ×1",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    app.stop().await;
}
