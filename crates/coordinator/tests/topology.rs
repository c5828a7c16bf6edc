//! The broker side: `rabbitmq/definitions.json` (development) and
//! `definitions.production.json` load and agree with their configurations, and the
//! coordinator runs on top of them; production's quorum queues work.

use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv};
use coordinator::amqp::topology::Declarer;
use coordinator::settings::{AmqpSettings, QueueType};
use serde_json::json;

/// Imports `rabbitmq/{file}` into this test's vhost.
fn import_definitions(env: &TestEnv, file: &str) {
    let text = std::fs::read_to_string(common::repo_root().join("rabbitmq").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut defs: serde_json::Value = serde_json::from_str(&text).expect("the file is JSON");
    // Point the file at this test's vhost.
    defs["vhosts"] = json!([{"name": env.vhost}]);
    for section in ["exchanges", "queues", "bindings"] {
        for item in defs[section].as_array_mut().expect("array") {
            item["vhost"] = json!(env.vhost);
        }
    }
    common::broker::import_definitions(&defs);
}

/// Declares the fixed topology as `serve` would with these settings over what is there;
/// what had to be used as it was.
async fn fallbacks_over_definitions(env: &TestEnv, amqp: &AmqpSettings) -> Vec<String> {
    let settings = env.settings();
    let conn = coordinator::amqp::connect(&env.amqp_url, "test")
        .await
        .expect("connect");
    let mut declarer = Declarer::new(&conn, amqp).await.expect("declarer");
    declarer
        .fixed(&settings.inbox, None)
        .await
        .expect("topology");
    let fallbacks = declarer.fallbacks();
    declarer.close().await;
    let _ = conn.close("done").await;
    fallbacks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_json_agrees_with_the_development_config_and_the_coordinator_runs_on_it() {
    let env = TestEnv::new().await;
    import_definitions(&env, "definitions.json");
    assert_eq!(env.settings().amqp.queue_type, QueueType::Classic);
    assert_eq!(
        fallbacks_over_definitions(&env, &env.settings().amqp).await,
        Vec::<String>::new(),
        "every pre-declared exchange and queue has the arguments the development config declares"
    );

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
async fn production_definitions_agree_with_the_production_config() {
    let env = TestEnv::new().await;
    import_definitions(&env, "definitions.production.json");
    let dir = common::repo_root().join("config");
    let prod = coordinator::settings::Settings::load_from(&dir, Some("production"))
        .expect("production settings");
    assert_eq!(
        fallbacks_over_definitions(&env, &prod.amqp).await,
        Vec::<String>::new()
    );
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
    let queues = common::broker::queues(&env.vhost);
    for q in [
        "coordinator.inbox",
        "oncall.escalations",
        "agent.eng-1.tasks",
    ] {
        let found = queues
            .iter()
            .find(|i| i.name.starts_with(q))
            .unwrap_or_else(|| panic!("{q} in {queues:?}"));
        assert_eq!(found.kind, "quorum", "{found:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_queue_keeps_only_the_newest_events_past_its_bound() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.amqp.events_max_length = 2;
    // QA's events queue is bound to engineering-director.feature_completed.
    let mut qa = env.agent_with(&s, "qa-1", "qa-director").await;
    let eng = env.connect_as("eng-1", "engineering-director").await;
    for wf in ["wf-1", "wf-2", "wf-3"] {
        // Confirmed: the broker has routed it to the events queue.
        eng.send("feature_completed", wf, json!({}))
            .await
            .expect("publish");
    }
    let conn = agent::connect(&env.amqp_url, "probe")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            &Queue::Events.name("qa-1"),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the events queue exists");
    assert_eq!(q.message_count(), 2, "the oldest event was dropped");
    let mut kept = Vec::new();
    for _ in 0..2 {
        let e = expect_next(&mut qa, Queue::Events).await;
        kept.push(e.header.correlation_id);
    }
    assert_eq!(kept, ["wf-2", "wf-3"]);
    let _ = conn.close(200, "done").await;
}
