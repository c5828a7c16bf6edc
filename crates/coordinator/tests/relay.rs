//! Publishing committed messages: pipelined batches with confirms, returns matched to
//! the right rows, and the relay taking what a batch's own publisher never sent.

use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv};
use coordinator::amqp::publisher::{Failed, Publisher, Returned};
use coordinator::amqp::topology::Declarer;
use coordinator::engine::messages::to_role;
use coordinator::engine::rows::Queued;
use serde_json::json;

/// A broker where QA has queues and DevOps has none, and 40 messages interleaving the
/// two roles, so returns and acks of neighbours arrive together.
async fn qa_only_broker(env: &TestEnv) -> (coordinator::amqp::Connection, Vec<Queued>) {
    let settings = env.settings();
    let conn = coordinator::amqp::connect(&env.amqp_url, "test")
        .await
        .expect("connect");
    let mut declarer = Declarer::new(&conn, &settings.amqp)
        .await
        .expect("declarer");
    declarer
        .fixed(&settings.inbox, None)
        .await
        .expect("topology");
    declarer
        .agent("qa-1", "qa-director", &settings.catalog())
        .await
        .expect("qa queues");
    declarer.close().await;
    let now = chrono::Utc::now();
    let rows = (0..40)
        .map(|i| {
            let role = if i % 3 == 0 {
                "devops-manager"
            } else {
                "qa-director"
            };
            Queued {
                id: i,
                message: to_role(
                    format!("m-{i}"),
                    "wf-pub",
                    None,
                    "feature_handoff",
                    role,
                    json!({"i": i}),
                    json!({}),
                    protocol::envelope::Priority::Normal,
                    now,
                ),
            }
        })
        .collect();
    (conn, rows)
}

fn assert_only_unroutable_failed(sent: &[i64], failed: &[Failed]) {
    let unroutable: Vec<i64> = (0..40).filter(|i| i % 3 == 0).collect();
    let mut failed_ids: Vec<i64> = failed.iter().map(|f| f.id).collect();
    failed_ids.sort_unstable();
    assert_eq!(failed_ids, unroutable);
    assert!(failed
        .iter()
        .all(|f| f.returned && f.why.contains("unroutable")));
    assert_eq!(sent.len(), 40 - unroutable.len());
    assert!(sent.iter().all(|id| id % 3 != 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pipelined_batch_only_the_unroutable_messages_are_kept_for_retry() {
    let env = TestEnv::new().await;
    let (conn, rows) = qa_only_broker(&env).await;
    let publisher = Publisher::open(&conn, env.settings().amqp.confirm_timeout)
        .await
        .expect("publisher");
    let p = publisher.publish(&rows, |_| 0).await.expect("published");
    assert_only_unroutable_failed(&p.sent, &p.failed);
    publisher.close().await;
    let _ = conn.close("done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_published_before_any_confirm_still_match_each_return_to_its_row() {
    let env = TestEnv::new().await;
    let (conn, rows) = qa_only_broker(&env).await;
    let publisher = Publisher::open(&conn, env.settings().amqp.confirm_timeout)
        .await
        .expect("publisher");
    // Ten groups of four on one channel, every one published before the first confirm
    // is awaited, as a partition's publisher does while its confirms are collected.
    let mut in_flight = Vec::new();
    for group in rows.chunks(4) {
        in_flight.push(publisher.send(group).await.expect("sent"));
    }
    let mut returned = Returned::default();
    let (mut sent, mut failed) = (Vec::new(), Vec::new());
    for group in in_flight {
        let p = group
            .confirmed(&mut returned, |_| 0)
            .await
            .expect("confirmed");
        sent.extend(p.sent);
        failed.extend(p.failed);
    }
    assert_only_unroutable_failed(&sent, &failed);
    publisher.close().await;
    let _ = conn.close("done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_batch_committed_but_never_published_is_sent_by_the_relay_after_its_lease() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.outbox.lease = std::time::Duration::from_millis(500);
    // Commit a batch as a consumer would, then "crash" before publishing: its rows are
    // leased to a publisher that never comes.
    let shared = coordinator::service::runtime::Shared::new(
        settings.clone(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let product = env.connect_as("product-1", "product-director").await;
    let e = product.envelope("requirements_ready", "wf-lease", json!({}));
    let body = serde_json::to_vec(&e).expect("json");
    let meta = e.meta(&e.agent_routing_key());
    let inbound = coordinator::engine::Inbound {
        body: &body,
        meta: &meta,
    };
    let publish_after =
        coordinator::service::pipeline::publish_after(chrono::Utc::now(), settings.outbox.lease);
    let out = coordinator::service::pipeline::apply_shared(&shared, 0, &[inbound], publish_after)
        .await
        .expect("committed");
    assert_eq!(out.queued.len(), 1);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND next_attempt_at > now()"
        )
        .await,
        1,
        "leased to its publisher"
    );

    // A coordinator starts: its relay sends the row once the lease is over.
    let app = env.start_with(settings).await;
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "requirements_handoff");
    assert_eq!(task.header.correlation_id, "wf-lease");
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_queue_takes_is_given_up_after_its_time_and_on_call_is_told_once() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.outbox.undeliverable_after = std::time::Duration::from_secs(1);
    let app = env.start_with(settings).await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    // No engineering director has queues: the handoff to task.engineering-director is
    // returned by the broker every time it is tried.
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-nowhere", json!({}))
        .await
        .expect("publish");

    let (key, notice) = oncall
        .next_with_key("oncall.escalations", common::WAIT)
        .await
        .expect("read on-call")
        .expect("a notice reaches on-call");
    assert_eq!(key, "escalation.high.oncall");
    assert_eq!(notice.header.message_type, "message_undeliverable");
    assert_eq!(notice.header.correlation_id, "wf-nowhere");
    let data = &notice.payload.data;
    assert_eq!(data["message_type"], "requirements_handoff");
    assert_eq!(data["routing_key"], "task.engineering-director");
    assert!(
        data["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unroutable")),
        "{data}"
    );
    let handoff_id = data["message_id"].as_str().expect("message id").to_string();
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM outbox WHERE message_id = '{handoff_id}'
             AND undeliverable_at IS NOT NULL AND sent_at IS NULL"
        ))
        .await,
        1,
        "the handoff is marked undeliverable"
    );

    // Given up means no more attempts: even due, the row is not leased by a relay.
    let attempts = format!("SELECT attempts::bigint FROM outbox WHERE message_id = '{handoff_id}'");
    let before = env.scalar_i64(&attempts).await;
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = now() - interval '1 minute' WHERE message_id = $1",
    )
    .bind(&handoff_id)
    .execute(&env.pool)
    .await
    .expect("due");
    let shared = coordinator::service::runtime::Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    let conn = coordinator::amqp::connect(&env.amqp_url, "test")
        .await
        .expect("connect");
    let relay = coordinator::service::relay::Relay::of(&conn, &shared)
        .await
        .expect("relay");
    let report = relay.step().await.expect("step");
    assert_eq!(report.claimed, 0, "{report:?}");
    assert_eq!(env.scalar_i64(&attempts).await, before);
    relay.close().await;
    let _ = conn.close("done").await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE message_type = 'message_undeliverable'")
            .await,
        1,
        "raised once"
    );
    let (_, metrics) = common::http_get(app.http, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains("coordinator_outbox_undeliverable_total 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_dead_letters_is_kept_in_dead_letters_with_its_x_death() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let app = env.start_with(settings.clone()).await;
    // QA's queues exist but nobody consumes them: a task that expires there is
    // dead-lettered by the broker to agent.dlx.
    let (conn, _) = qa_only_broker(&env).await;
    env.publish_expiring_task("qa-director", "m-expiring").await;

    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE message_id = 'm-expiring' AND reason = 'broker_dead_lettered'",
        1,
    )
    .await;
    let (detail, x_death, body): (String, serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT detail, properties->'x_death', body_json FROM dead_letters WHERE message_id = 'm-expiring'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert!(detail.contains("expired"), "{detail}");
    assert_eq!(x_death[0]["reason"], "expired", "{x_death}");
    assert!(
        x_death[0]["queue"]
            .as_str()
            .is_some_and(|q| q.contains("qa")),
        "{x_death}"
    );
    assert_eq!(body["hello"], "qa");
    // Taken off the broker's dead-letter queue (acked) once stored.
    env.wait_queue_empty("agent.dead_letters").await;
    let _ = conn.close("done").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_flushes_within_its_bound_and_leaves_the_rest_for_after_restart() {
    let env = TestEnv::new().await;
    let (conn, rows) = qa_only_broker(&env).await;
    // A backlog far longer than the flush may take: many small steps.
    const BACKLOG: i64 = 50_000;
    let template = &rows[1].message;
    sqlx::query(
        "INSERT INTO outbox (message_id, exchange, routing_key, message_type, correlation_id, app_id, body)
         SELECT 'flush-' || g, $1, $2, $3, 'wf-flush', 'coordinator', $4
         FROM generate_series(1, $5) g",
    )
    .bind(&template.exchange)
    .bind(&template.routing_key)
    .bind(&template.message_type)
    .bind(&template.body)
    .bind(BACKLOG)
    .execute(&env.pool)
    .await
    .expect("backlog");
    let mut settings = env.settings();
    settings.outbox.batch_size = 10;
    settings.shutdown.flush_timeout = std::time::Duration::from_millis(300);
    let shared = coordinator::service::runtime::Shared::new(
        settings,
        env.pool.clone(),
        coordinator::clock::system(),
    );
    let relay = coordinator::service::relay::Relay::of(&conn, &shared)
        .await
        .expect("relay");

    // Stopped before it starts: it only flushes, and only for flush_timeout.
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    tokio::time::timeout(common::WAIT, coordinator::service::relay::run(&relay, stop))
        .await
        .expect("the relay returns once its flush time is up, though the backlog is not drained")
        .expect("the relay ran without error");
    let published = shared.metrics.published.get() as i64;
    assert!(published > 0, "the flush published part of the backlog");
    assert!(
        published < BACKLOG,
        "the flush stopped at its bound instead of draining all {BACKLOG} ({published} published)"
    );
    // What it did not send is still due: a restarted relay sends it.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .await,
        BACKLOG,
        "nothing is marked sent until the settler runs; nothing is lost"
    );
    relay.close().await;
    let _ = conn.close("done").await;
}
