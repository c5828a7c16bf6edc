//! The circuit breakers on the running service. Around PostgreSQL: batches that cannot
//! commit open it, `/readyz` names it, the metric shows it, and once the database
//! answers again the waiting deliveries are applied and it closes. Around publishing:
//! messages the broker nacks open it, they stay in the outbox, and once the broker
//! takes them again they go out with their ids and it closes.

use test_support as common;

use std::time::Duration;

use common::{http_get, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_cannot_commit_open_the_database_breaker_until_the_database_answers() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.lock_timeout = Duration::from_millis(200);
    settings.circuit_breaker.failure_threshold = 2;
    settings.circuit_breaker.success_threshold = 1;
    settings.circuit_breaker.open_timeout = Duration::from_secs(1);
    let app = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    product
        .send("requirements_ready", "wf-breaker", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-breaker", "requirements_handoff").await;
    let closed = "coordinator_circuit_breaker_state{breaker=\"database\"} 0";
    let (_, metrics) = http_get(app.http, "/metrics").await.expect("metrics");
    assert!(metrics.contains(closed), "{metrics}");

    // Another session holds the workflow's row: every attempt of the next batch waits
    // past lock_timeout and fails, as it would against a database that does not answer.
    let mut holder = env.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM workflows WHERE id = 'wf-breaker' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let ack = eng
        .send("handoff_acknowledged", "wf-breaker", json!({}))
        .await
        .expect("publish");

    expect_open(app.http, "database").await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}'",
            ack.header.message_id
        ))
        .await,
        0,
        "nothing of the failing batch committed"
    );

    holder.rollback().await.expect("release the row");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}'",
            ack.header.message_id
        ),
        1,
    )
    .await;
    common::eventually("the breaker to close and /readyz to answer 200", || async {
        let (code, body) = http_get(app.http, "/readyz").await?;
        (code == 200 && body.contains("\"database\":\"closed\"")).then_some(())
    })
    .await;
    let (_, metrics) = http_get(app.http, "/metrics").await.expect("metrics");
    assert!(metrics.contains(closed), "{metrics}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_publishes_open_the_publishing_breaker_and_the_messages_go_out_once_it_closes() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.circuit_breaker.failure_threshold = 2;
    settings.circuit_breaker.success_threshold = 1;
    settings.circuit_breaker.open_timeout = Duration::from_secs(1);
    let app = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;

    // A full queue that refuses what is routed to it: the broker nacks every task for
    // engineering (this vhost only), as it would a publish it cannot take.
    let conn = agent::connect(&env.amqp_url, "blackhole")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare("blackhole", Default::default(), args)
        .await
        .expect("declare");
    ch.queue_bind(
        "blackhole",
        "agent.direct",
        "task.engineering-director",
        Default::default(),
        Default::default(),
    )
    .await
    .expect("bind");

    for wf in ["wf-nack-1", "wf-nack-2", "wf-nack-3"] {
        product
            .send("requirements_ready", wf, json!({}))
            .await
            .expect("publish");
    }
    expect_open(app.http, "publishing").await;
    // The breaker opens as the nack is counted; the row's error is written just after.
    common::eventually(
        "a nacked task kept in the outbox to be sent again",
        || async {
            (env.scalar_i64(
                "SELECT count(*) FROM outbox WHERE routing_key = 'task.engineering-director'
             AND sent_at IS NULL AND last_error LIKE '%nack%'",
            )
            .await
                >= 1)
                .then_some(())
        },
    )
    .await;

    // The broker takes messages again: the kept tasks go out, the breaker closes.
    ch.queue_delete("blackhole", Default::default())
        .await
        .expect("delete");
    env.wait_count(
        "SELECT count(*) FROM outbox WHERE routing_key = 'task.engineering-director' AND sent_at IS NULL",
        0,
    )
    .await;
    common::eventually("the breaker to close and /readyz to answer 200", || async {
        let (code, body) = http_get(app.http, "/readyz").await?;
        (code == 200 && body.contains("\"publishing\":\"closed\"")).then_some(())
    })
    .await;
    // Engineering has every task; a copy the broker nacked but had delivered carries
    // the same message id as the one sent again.
    let mut ids = std::collections::BTreeMap::new();
    while ids.len() < 3 {
        let task = common::expect_next(&mut eng, agent::Queue::Tasks).await;
        assert_eq!(task.header.message_type, "requirements_handoff");
        ids.entry(task.header.correlation_id.clone())
            .or_insert(task.header.message_id.clone());
        assert_eq!(ids[&task.header.correlation_id], task.header.message_id);
    }
    let _ = conn.close(200, "done").await;
    app.stop().await;
}

/// Waits until /readyz answers 503 naming `breaker` open, and checks /metrics says so
/// too (state 2: open).
async fn expect_open(http: std::net::SocketAddr, breaker: &str) {
    let open = format!("\"{breaker}\":\"open\"");
    let body = common::eventually(
        &format!("/readyz to name the open {breaker} breaker"),
        || async {
            let (code, body) = http_get(http, "/readyz").await?;
            (code == 503 && body.contains(&open)).then_some(body)
        },
    )
    .await;
    assert!(body.contains("\"no_circuit_breaker_open\":false"), "{body}");
    let (_, metrics) = http_get(http, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains(&format!(
            "coordinator_circuit_breaker_state{{breaker=\"{breaker}\"}} 2"
        )),
        "{metrics}"
    );
}
