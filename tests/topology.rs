//! The broker side: `rabbitmq/definitions.json` loads and the coordinator runs on top of
//! it; production's quorum queues work.

mod common;

use common::{expect_next, TestEnv};
use coordinator::agent::Queue;
use coordinator::settings::QueueType;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_json_loads_and_the_coordinator_runs_on_top_of_it() {
    let env = TestEnv::new().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rabbitmq/definitions.json"
    ))
    .expect("definitions.json");
    let mut defs: serde_json::Value =
        serde_json::from_str(&text).expect("definitions.json is JSON");
    // Point the file at this test's vhost.
    defs["vhosts"] = json!([{"name": env.vhost}]);
    for section in ["exchanges", "queues", "bindings"] {
        for item in defs[section].as_array_mut().expect("array") {
            item["vhost"] = json!(env.vhost);
        }
    }
    let path = std::env::temp_dir().join(format!("{}.json", env.vhost));
    std::fs::write(&path, defs.to_string()).expect("write");
    let out = std::process::Command::new("rabbitmqctl")
        .arg("import_definitions")
        .arg(&path)
        .output()
        .expect("rabbitmqctl");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The test config declares classic queues; the quorum oncall.escalations from the
    // definitions is used as it is.
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut reader = env.connect_as("reader", "qa-director").await;
    product
        .send("requirements_ready", "wf-defs", json!({}))
        .await
        .expect("publish");
    eng.send("sprint_initialized", "wf-defs", json!({}))
        .await
        .expect("publish");
    eng.send("engineering_blocked", "wf-defs", json!({}))
        .await
        .expect("publish");
    let esc = reader
        .next_on("oncall.escalations", common::WAIT)
        .await
        .expect("read")
        .expect("escalation on the pre-declared queue");
    assert_eq!(esc.header.correlation_id, "wf-defs");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_as_in_production() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.amqp.queue_type = QueueType::Quorum;
    let app = env.start_with(s.clone()).await;
    let mut eng = env.agent_with(&s, "eng-1", "engineering-director").await;
    let product = env.agent_with(&s, "product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-q", json!({}))
        .await
        .expect("publish");
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "requirements_handoff");
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            &env.vhost,
            "name",
            "type",
            "--no-table-headers",
            "--quiet",
        ])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    for q in [
        "coordinator.inbox",
        "oncall.escalations",
        "agent.eng-1.tasks",
    ] {
        let line = listing
            .lines()
            .find(|l| l.starts_with(q))
            .unwrap_or_else(|| panic!("{q} in {listing}"));
        assert!(line.contains("quorum"), "{line}");
    }
    app.stop().await;
}
