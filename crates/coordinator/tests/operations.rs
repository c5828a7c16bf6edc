//! The service as operators run it: the real binary, signals, configured agents.

use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv};
use coordinator::settings::StaticAgent;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_becomes_ready_then_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    let serve = common::Serve::spawn(
        &env,
        &[
            ("COORDINATOR__LOG__FORMAT", "json".into()),
            ("RUST_LOG", "info,coordinator=debug".into()),
        ],
    );
    serve.wait_ready().await;

    // A message in flight, so the log has a message line to check.
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-sig", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-sig", "requirements_handoff").await;

    serve.signal("-TERM");
    let (code, stderr) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "graceful shutdown exits 0");

    // Structured logs: the (debug) line about the message carries its workflow and
    // message ids.
    let processed = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "processed")
        .unwrap_or_else(|| panic!("no 'processed' line in:\n{stderr}"));
    assert_eq!(processed["workflow_id"], "wf-sig", "{processed}");
    assert!(
        processed["message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{processed}"
    );
    assert!(stderr.contains("shutdown requested"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_listed_in_the_configuration_get_their_queues_at_start() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.agents = vec![StaticAgent {
        agent_id: "eng-cfg".into(),
        agent_type: "engineering-director".into(),
    }];
    s.validate().expect("valid");
    let app = env.start_with(s).await;
    let via: String =
        sqlx::query_scalar("SELECT registered_via FROM agents WHERE agent_id = 'eng-cfg'")
            .fetch_one(&env.pool)
            .await
            .expect("registered");
    assert_eq!(via, "config");
    let mut eng = env.connect_as("eng-cfg", "engineering-director").await;
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-cfg", json!({}))
        .await
        .expect("publish");
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "requirements_handoff");
    // Its events queue carries the role's subscriptions: product's requirements_ready.
    let seen = expect_next(&mut eng, Queue::Events).await;
    assert_eq!(seen.header.message_type, "requirements_ready");
    app.stop().await;
}
