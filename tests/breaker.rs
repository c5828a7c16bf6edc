//! The circuit breaker around PostgreSQL, on the running service: batches that cannot
//! commit open it, `/readyz` names it, the metric shows it, and once the database
//! answers again the waiting deliveries are applied and it closes.

mod common;

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

    let body = common::eventually("/readyz to name the open breaker", || async {
        let (code, body) = http_get(app.http, "/readyz").await?;
        (code == 503 && body.contains("\"database\":\"open\"")).then_some(body)
    })
    .await;
    assert!(body.contains("\"no_circuit_breaker_open\":false"), "{body}");
    let (_, metrics) = http_get(app.http, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("coordinator_circuit_breaker_state{breaker=\"database\"} 2"),
        "{metrics}"
    );
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
