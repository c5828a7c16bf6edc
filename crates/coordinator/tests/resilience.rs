//! Restarts, several coordinators, concurrent processing, readiness, and registration.

use test_support as common;

use std::time::Duration;

use agent::Queue;
use chrono::Utc;
use common::{expect_next, expect_no_more, http_get, TestEnv};
use coordinator::engine::{Inbound, Outcome};
use coordinator::service::runtime::Shared;
use protocol::envelope::DeliveryMeta;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_unsent_outbox_survive_a_restart() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let qa = env.agent("qa-1", "qa-director").await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");
    for m in ["sprint_initialized", "feature_completed"] {
        eng.send(m, &wf, json!({})).await.expect("publish");
    }
    for m in ["testing_started", "release_approved"] {
        qa.send(m, &wf, json!({})).await.expect("publish");
    }
    // No DevOps agent exists yet, so release_handoff is unroutable: the broker returns
    // it and it stays in the outbox, unsent.
    env.wait_state(&wf, "release_handoff").await;
    env.wait_count(
        "SELECT count(*) FROM outbox WHERE message_type = 'release_handoff' AND sent_at IS NULL AND attempts > 0",
        1,
    )
    .await;
    app.stop().await;

    // While the coordinator is down: DevOps registers (its queues appear) and
    // acknowledges, which waits in the inbox.
    let mut devops = env.agent("devops-1", "devops-manager").await;
    devops
        .send("handoff_acknowledged", &wf, json!({}))
        .await
        .expect("publish");
    assert_eq!(
        env.workflow_state(&wf).await.as_deref(),
        Some("release_handoff")
    );

    let app = env.start().await;
    let task = expect_next(&mut devops, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "release_handoff");
    assert_eq!(task.header.correlation_id, wf);
    env.wait_count(
        &format!("SELECT count(*) FROM workflow_events WHERE workflow_id = '{wf}' AND message_type = 'handoff_acknowledged'"),
        1,
    )
    .await;
    for m in [
        "deployment_started",
        "deployment_completed",
        "validation_completed",
    ] {
        devops.send(m, &wf, json!({})).await.expect("publish");
    }
    env.wait_state(&wf, "completed").await;
    expect_no_more(&env, &mut devops, Queue::Tasks).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_database_and_vhost_cause_no_double_effect() {
    let env = TestEnv::new().await;
    let a = env.start().await;
    let b = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let wfs: Vec<String> = (0..4)
        .map(|_| format!("wf-{}", uuid::Uuid::new_v4()))
        .collect();
    for wf in &wfs {
        let e = product.envelope("requirements_ready", wf, json!({}));
        product.publish(&e).await.expect("publish");
        product.publish(&e).await.expect("publish twice");
        for m in ["sprint_initialized", "feature_completed"] {
            let e = eng.envelope(m, wf, json!({}));
            eng.publish(&e).await.expect("publish");
            eng.publish(&e).await.expect("publish twice");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in &wfs {
        let t = expect_next(&mut qa, Queue::Tasks).await;
        assert_eq!(t.header.message_type, "feature_handoff");
        assert!(
            seen.insert(t.header.correlation_id),
            "one feature_handoff per workflow"
        );
    }
    for wf in &wfs {
        env.wait_state(wf, "feature_handoff").await;
    }
    // Every second copy reached one of the two and was caught as a duplicate.
    common::eventually("12 duplicates to be counted", || async {
        let dup = |app: &common::Running| {
            app.shared
                .metrics
                .messages
                .with_label_values(&["duplicate"])
                .get()
        };
        (dup(&a) + dup(&b) >= 12).then_some(())
    })
    .await;
    expect_no_more(&env, &mut qa, Queue::Tasks).await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflow_events").await,
        12
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;

    // Stopping the active one hands the inbox to the other.
    a.stop().await;
    let wf = &wfs[0];
    qa.send("testing_started", wf, json!({}))
        .await
        .expect("publish");
    env.wait_state(wf, "testing").await;
    b.stop().await;
}

fn shared_for(env: &TestEnv) -> Shared {
    Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_applied_concurrently_by_two_batches_applies_once() {
    let env = TestEnv::new().await;
    let shared = std::sync::Arc::new(shared_for(&env));
    let outcome = common::process_directly(
        &shared,
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-race",
    )
    .await;
    assert_eq!(outcome, Outcome::Accepted);
    let eng = env.connect_as("eng-1", "engineering-director").await;
    let e = eng.envelope("handoff_acknowledged", "wf-race", json!({}));
    let body = std::sync::Arc::new(serde_json::to_vec(&e).expect("json"));
    let meta: std::sync::Arc<DeliveryMeta> = std::sync::Arc::new(e.meta(&e.agent_routing_key()));
    let apply = || {
        let (shared, body, meta) = (shared.clone(), body.clone(), meta.clone());
        tokio::spawn(async move {
            let inbound = Inbound {
                body: &body,
                meta: &meta,
            };
            coordinator::service::pipeline::apply_shared(&shared, 0, &[inbound], Utc::now())
                .await
                .expect("applied")
                .results[0]
                .outcome
                .clone()
        })
    };
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";

    // Hold the workflow's lock: the first batch claims the message id, then waits for
    // the workflow; the second waits on the first's uncommitted claim.
    let mut hold = env.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM workflows WHERE id = 'wf-race' FOR UPDATE")
        .execute(&mut *hold)
        .await
        .expect("lock");
    let first = apply();
    env.wait_count(waiting, 1).await;
    let second = apply();
    env.wait_count(waiting, 2).await;
    hold.commit().await.expect("release");

    assert_eq!(first.await.expect("join"), Outcome::Accepted);
    assert_eq!(second.await.expect("join"), Outcome::Duplicate);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflow_events WHERE message_type = 'handoff_acknowledged'"
        )
        .await,
        1
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_the_broker_is_unreachable_and_health_stays_200() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.amqp.url = "amqp://guest:guest@127.0.0.1:1/nowhere".into();
    let app = coordinator::app::App::build(s).await.expect("build");
    let addr = app.http_addr();
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    let migrated = common::eventually("migrations to be applied", || async {
        let (code, body) = http_get(addr, "/readyz").await?;
        body.contains("\"migrated\":true").then_some(code)
    })
    .await;
    assert_eq!(migrated, 503);
    let (code, body) = http_get(addr, "/readyz").await.expect("readyz answers");
    assert_eq!(code, 503);
    assert!(body.contains("\"broker_connected\":false"), "{body}");
    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));
    token.cancel();
    tokio::time::timeout(common::WAIT, handle)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text_format() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-metrics", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-metrics", "requirements_handoff").await;
    let body = common::eventually("the accepted message to be counted", || async {
        let (code, body) = http_get(app.http, "/metrics").await?;
        (code == 200 && body.contains("coordinator_messages_total{outcome=\"accepted\"} 1"))
            .then_some(body)
    })
    .await;
    assert!(
        body.contains("# TYPE coordinator_batch_seconds histogram"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_registers_an_unknown_agent_and_declares_its_queues() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut newcomer = env.connect_as("qa-new", "qa-director").await;
    let probe = agent::connect(&env.amqp_url, "probe")
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    newcomer
        .send("heartbeat", "qa-new", json!({"status": "healthy"}))
        .await
        .expect("publish");
    // The protocol: an agent that heartbeats is registered, its queues usable, within 2 s.
    let tasks = protocol::names::queues::tasks("qa-new");
    common::eventually("qa-new's tasks queue to exist", || async {
        // A passive declare of a missing queue closes its channel: one per try.
        let ch = probe.create_channel().await.expect("channel");
        let opts = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(&tasks, opts, Default::default())
            .await
            .is_ok()
            .then_some(())
    })
    .await;
    let registered_in = started.elapsed();
    assert!(
        registered_in <= Duration::from_secs(2),
        "heartbeat to declared queues took {registered_in:?}; the protocol allows 2 s"
    );
    env.wait_count(
        "SELECT count(*) FROM agents WHERE agent_id = 'qa-new' AND last_heartbeat_at IS NOT NULL",
        1,
    )
    .await;
    // Its queues exist: a task addressed to its role reaches it.
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    product
        .send("requirements_ready", "wf-hb", json!({}))
        .await
        .expect("publish");
    for m in ["sprint_initialized", "feature_completed"] {
        eng.send(m, "wf-hb", json!({})).await.expect("publish");
    }
    let task = expect_next(&mut newcomer, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "feature_handoff");
    let via: String =
        sqlx::query_scalar("SELECT registered_via FROM agents WHERE agent_id = 'qa-new'")
            .fetch_one(&env.pool)
            .await
            .expect("agent row");
    assert_eq!(via, "heartbeat");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_automatic_registration_an_unknown_agent_is_rejected() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.registration.auto_register = false;
    let app = env.start_with(s).await;
    let ghost = env.connect_as("ghost-1", "qa-director").await;
    ghost
        .send("heartbeat", "ghost-1", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'unknown_agent'",
        1,
    )
    .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM agents").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_crash_sends_the_same_message_ids() {
    let env = TestEnv::new().await;
    let shared = shared_for(&env);
    let agent = env.connect_as("product-1", "product-director").await;
    let e = agent.envelope("requirements_ready", "wf-rerun", json!({}));
    let body = serde_json::to_vec(&e).expect("json");
    let meta: DeliveryMeta = e.meta(&e.agent_routing_key());
    let outbox_ids = "SELECT message_id FROM outbox ORDER BY message_id";

    let inbound = Inbound {
        body: &body,
        meta: &meta,
    };
    let ctx = coordinator::service::pipeline::Context::of(&shared, 0, Utc::now())
        .await
        .expect("context");
    // First run: the process dies before commit (the transaction rolls back).
    let mut tx = env.pool.begin().await.expect("tx");
    coordinator::service::pipeline::apply_uncommitted(&ctx, &mut tx, &[inbound], Utc::now())
        .await
        .expect("first run");
    let first: Vec<String> = sqlx::query_scalar(outbox_ids)
        .fetch_all(&mut *tx)
        .await
        .expect("ids");
    tx.rollback().await.expect("rollback");

    // The redelivery runs it again, later, and commits.
    let mut tx = env.pool.begin().await.expect("tx");
    let p = coordinator::service::pipeline::apply_uncommitted(
        &ctx,
        &mut tx,
        &[inbound],
        Utc::now() + chrono::Duration::seconds(5),
    )
    .await
    .expect("second run");
    tx.commit().await.expect("commit");
    assert_eq!(p[0].outcome, Outcome::Accepted);
    let second: Vec<String> = sqlx::query_scalar(outbox_ids)
        .fetch_all(&env.pool)
        .await
        .expect("ids");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first, second,
        "the same effect of the same message has the same id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_from_an_agent_id_unfit_for_queue_names_is_rejected() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let odd = env.connect_as("qa one", "qa-director").await;
    odd.send("heartbeat", "qa one", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'invalid_field'",
        1,
    )
    .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM agents").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_reconnects_after_the_broker_closes_its_connections() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    product
        .send("requirements_ready", "wf-reconnect", json!({}))
        .await
        .expect("publish");
    expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(app.shared.metrics.broker_connects.get(), 1);

    common::broker::close_connections(&env.vhost);
    common::eventually("the coordinator to reconnect", || async {
        (app.shared.metrics.broker_connects.get() >= 2).then_some(())
    })
    .await;
    app.wait_ready().await;

    // The agents reconnect too, and the workflow carries on.
    let eng = env.connect_as("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    for m in ["sprint_initialized", "feature_completed"] {
        eng.send(m, "wf-reconnect", json!({}))
            .await
            .expect("publish");
    }
    let task = expect_next(&mut qa, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "feature_handoff");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_deletes_only_what_outlived_its_retention() {
    let env = TestEnv::new().await;
    let shared = shared_for(&env);
    for wf in ["wf-old", "wf-new"] {
        common::process_directly(
            &shared,
            "product-1",
            "product-director",
            "requirements_ready",
            wf,
        )
        .await;
    }
    // One of each is old (and its outbox row sent long ago); the other is fresh/unsent.
    sqlx::query(
        "UPDATE outbox SET sent_at = now() - interval '8 days' WHERE correlation_id = 'wf-old'",
    )
    .execute(&env.pool)
    .await
    .expect("age outbox");
    sqlx::query(
        "UPDATE processed_messages SET processed_at = now() - interval '31 days'
         WHERE message_id = (SELECT message_id FROM workflow_events WHERE workflow_id = 'wf-old')",
    )
    .execute(&env.pool)
    .await
    .expect("age dedupe key");
    // Dead letters: replayed and resolved long ago (swept), resolved lately and
    // unresolved though old (kept).
    sqlx::query(
        "INSERT INTO dead_letters (reason, detail, routing_key, body, received_at, replayed_at, resolved_at)
         VALUES ('malformed', 'x', 'k', '', now() - interval '30 days', now() - interval '8 days', NULL),
                ('malformed', 'x', 'k', '', now() - interval '30 days', NULL, now() - interval '8 days'),
                ('malformed', 'x', 'k', '', now() - interval '30 days', NULL, now() - interval '1 day'),
                ('malformed', 'x', 'k', '', now() - interval '30 days', NULL, NULL)",
    )
    .execute(&env.pool)
    .await
    .expect("dead letters");
    // An outbox row given up long ago goes like a sent one.
    sqlx::query(
        "UPDATE outbox SET undeliverable_at = now() - interval '8 days'
         WHERE correlation_id = 'wf-new'",
    )
    .execute(&env.pool)
    .await
    .expect("give up");
    let swept = coordinator::service::housekeeping::step(
        &env.pool,
        &env.settings().retention,
        chrono::Utc::now(),
    )
    .await
    .expect("step");
    assert_eq!(
        swept,
        coordinator::service::housekeeping::Swept {
            outbox: 2,
            processed_messages: 1,
            dead_letters: 2,
        }
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL AND replayed_at IS NULL"
        )
        .await,
        1,
        "the unresolved one is kept"
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 2);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM processed_messages")
            .await,
        1
    );
    // History is never swept.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflow_events").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registered_by_another_process_is_known_at_once() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-cache-1", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-cache-1", "requirements_handoff").await;
    // The cache is loaded and fresh; no engineering agent is registered yet.
    assert!(!app.shared.agents.is_stale(std::time::Instant::now()));

    // `coordinator agent add`, as another process would run it.
    common::add_agent(&env.settings(), &env.pool, "eng-1", "engineering-director").await;
    common::eventually(
        "the registration to reach the running coordinator",
        || async {
            app.shared
                .agents
                .is_stale(std::time::Instant::now())
                .then_some(())
        },
    )
    .await;
    product
        .send("requirements_ready", "wf-cache-2", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-cache-2", "requirements_handoff").await;
    // The only engineering agent owns engineering's clocks.
    let owners: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT owner_agent_id FROM sla_clocks WHERE workflow_id = 'wf-cache-2' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("owners");
    assert_eq!(owners, vec![Some("eng-1".to_string()); 3]);
    app.stop().await;
}
