//! The partitioned inbox: partitions applied concurrently, a poison message set aside
//! while the inbox flows, and a broker without the consistent-hash plugin. Several
//! coordinators sharing the partitions under load is tools/loadgen/tests/sharing.rs
//! (the load generator's agents drive it).

use test_support as common;

use std::collections::BTreeMap;

use agent::Queue;
use common::{expect_next, http_get, partition_of, Serve, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitions_are_applied_concurrently() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.inbox.partitions = 2;
    s.inbox.concurrency = 2;
    let product = env.agent_with(&s, "product-1", "product-director").await;
    let eng = env.agent_with(&s, "eng-1", "engineering-director").await;
    // One workflow in each partition.
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    for i in 0.. {
        let wf = format!("wf-{i}");
        ids.entry(partition_of(&env, &s, &wf).await).or_insert(wf);
        if ids.len() == 2 {
            break;
        }
    }
    let (a, b) = (ids[&0].clone(), ids[&1].clone());
    let app = env.start_with(s).await;
    product
        .send("requirements_ready", &a, json!({}))
        .await
        .expect("publish");
    env.wait_state(&a, "requirements_handoff").await;

    // Hold workflow a's row: its partition's next batch waits for the lock.
    let mut hold = env.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(&a)
        .execute(&mut *hold)
        .await
        .expect("lock");
    eng.send("sprint_initialized", &a, json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        1,
    )
    .await;

    // The other partition is applied meanwhile.
    product
        .send("requirements_ready", &b, json!({}))
        .await
        .expect("publish");
    env.wait_state(&b, "requirements_handoff").await;
    assert_eq!(
        env.workflow_state(&a).await.as_deref(),
        Some("requirements_handoff"),
        "a's partition is still waiting"
    );
    hold.commit().await.expect("release");
    env.wait_state(&a, "in_development").await;
    app.stop().await;
}

/// Text PostgreSQL's compression cannot shrink below an index row's limit (~2.7 kB).
fn incompressible(len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_set_aside_the_sender_told_and_the_inbox_keeps_flowing() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    // One partition, so every message below is in the same queue (and, as they are
    // published before the coordinator starts, in the same first batches); the epic_id
    // limit is lifted so that PostgreSQL itself refuses the poison.
    s.inbox.partitions = 1;
    s.limits.max_key_bytes = 100_000;
    s.retry_policies.default.max_attempts = 2;
    let mut product = env.agent_with(&s, "product-1", "product-director").await;
    for wf in ["wf-1", "wf-2"] {
        product
            .send("requirements_ready", wf, json!({"epic_id": wf}))
            .await
            .expect("publish");
    }
    let poison = product
        .send(
            "requirements_ready",
            "wf-poison",
            json!({"epic_id": incompressible(6000)}),
        )
        .await
        .expect("publish");
    for wf in ["wf-3", "wf-4"] {
        product
            .send("requirements_ready", wf, json!({"epic_id": wf}))
            .await
            .expect("publish");
    }

    let app = env.start_with(s).await;
    for wf in ["wf-1", "wf-2", "wf-3", "wf-4"] {
        env.wait_state(wf, "requirements_handoff").await;
    }
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'processing_failed'",
        1,
    )
    .await;
    let notice = expect_next(&mut product, Queue::Commands).await;
    assert_eq!(notice.header.message_type, "message_rejected");
    assert_eq!(notice.payload.data["reason"], "processing_failed");
    assert_eq!(
        notice.payload.data["rejected_message_id"],
        poison.header.message_id.as_str()
    );
    assert_eq!(app.shared.metrics.set_aside.get(), 1);
    assert_eq!(env.workflow_state("wf-poison").await, None);

    // The inbox flows on, and the service says it is ready.
    product
        .send("requirements_ready", "wf-after", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-after", "requirements_handoff").await;
    assert_eq!(http_get(app.http, "/readyz").await.map(|r| r.0), Some(200));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_broker_without_the_consistent_hash_plugin_stops_and_says_how_to_enable_it() {
    let env = TestEnv::new().await;
    let broker = tokio::task::spawn_blocking(|| common::isolated::Rabbit::start(&[]))
        .await
        .expect("a node without plugins");
    let url = format!("{}/%2f", broker.amqp_base());
    let serve = Serve::spawn(&env, &[("COORDINATOR__AMQP__URL", url)]);
    let (code, stderr) = serve.wait_exit().await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"),
        "{stderr}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    assert_eq!(
        error.matches("x-consistent-hash").count(),
        1,
        "the error does not repeat itself: {error}"
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_queue_beyond_the_configured_count_stops_serve() {
    let env = TestEnv::new().await;
    let mut eight = env.settings();
    eight.inbox.partitions = 8;
    env.agent_with(&eight, "product-1", "product-director")
        .await;
    // Started with fewer partitions than the inbox has: refused, with the procedure.
    let serve = Serve::spawn(&env, &[("COORDINATOR__INBOX__PARTITIONS", "4".to_string())]);
    let (code, stderr) = serve.wait_exit().await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("coordinator.inbox.4") && stderr.contains("docs/scaling.md"),
        "{stderr}"
    );

    // The procedure followed (the extra partitions drained and deleted): it starts,
    // and remembers the inbox has four partitions now.
    for p in 4..8 {
        let (vhost, queue) = (env.vhost.clone(), eight.inbox.queue(p));
        tokio::task::spawn_blocking(move || common::broker::delete_queue(&vhost, &queue))
            .await
            .expect("deleted");
    }
    let serve = Serve::spawn(&env, &[("COORDINATOR__INBOX__PARTITIONS", "4".to_string())]);
    serve.wait_ready().await;
    assert_eq!(
        env.scalar_i64("SELECT partitions::int8 FROM inbox_partitions")
            .await,
        4
    );
    serve.signal("-TERM");
    assert_eq!(serve.wait_exit().await.0, Some(0));
}
