//! Batches applied by the pipeline against the real database, with their composition
//! fixed by the test (no broker): several messages of one workflow and a repeat in one
//! batch, and a message PostgreSQL refuses in the middle of one.

use test_support as common;

use chrono::Utc;
use common::TestEnv;
use coordinator::engine::{Inbound, Outcome};
use coordinator::service::pipeline;
use coordinator::service::runtime::Shared;
use protocol::envelope::{DeliveryMeta, Envelope};
use protocol::reject::Reason;
use serde_json::{json, Value};

struct Msg {
    body: Vec<u8>,
    meta: DeliveryMeta,
}

fn msg(agent: &str, role: &str, message_type: &str, wf: &str, data: Value) -> Msg {
    let env = Envelope::from_agent(agent, role, message_type, wf, data, Utc::now());
    Msg {
        body: serde_json::to_vec(&env).expect("json"),
        meta: env.meta(&env.agent_routing_key()),
    }
}

fn inbound<'a>(msgs: &[&'a Msg]) -> Vec<Inbound<'a>> {
    msgs.iter()
        .map(|m| Inbound {
            body: &m.body,
            meta: &m.meta,
        })
        .collect()
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
async fn a_batch_applies_several_messages_of_one_workflow_in_order_and_a_repeat_once() {
    let env = TestEnv::new().await;
    let shared = Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    for (a, r) in [
        ("product-1", "product-director"),
        ("eng-1", "engineering-director"),
    ] {
        env.connect_as(a, r).await;
    }
    let start = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-b",
        json!({"epic_id": "E-1"}),
    );
    let ack = msg(
        "eng-1",
        "engineering-director",
        "handoff_acknowledged",
        "wf-b",
        json!({}),
    );
    let sprint = msg(
        "eng-1",
        "engineering-director",
        "sprint_initialized",
        "wf-b",
        json!({}),
    );
    let done = msg(
        "eng-1",
        "engineering-director",
        "feature_completed",
        "wf-b",
        json!({}),
    );
    let batch = inbound(&[&start, &ack, &sprint, &ack, &done]);
    let out = pipeline::apply_shared(&shared, 0, &batch, Utc::now())
        .await
        .expect("applied");

    let outcomes: Vec<&str> = out.results.iter().map(|p| p.outcome.label()).collect();
    assert_eq!(
        outcomes,
        ["accepted", "accepted", "accepted", "duplicate", "accepted"]
    );
    assert_eq!(out.commits, 1, "one transaction for the batch");
    // Where its time went: every stage of the transaction took some.
    for (stage, took) in out.times.each() {
        assert!(took > std::time::Duration::ZERO, "{stage}: {:?}", out.times);
    }
    assert_eq!(
        env.workflow_state("wf-b").await.as_deref(),
        Some("feature_handoff")
    );
    let history: Vec<(i32, String, Option<String>, String)> = sqlx::query_as(
        "SELECT seq, message_type, from_state, to_state FROM workflow_events WHERE workflow_id = 'wf-b' ORDER BY seq",
    )
    .fetch_all(&env.pool)
    .await
    .expect("history");
    let history: Vec<(i32, &str, Option<&str>, &str)> = history
        .iter()
        .map(|(s, m, f, t)| (*s, m.as_str(), f.as_deref(), t.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (1, "requirements_ready", None, "requirements_handoff"),
            (
                2,
                "handoff_acknowledged",
                Some("requirements_handoff"),
                "requirements_handoff"
            ),
            (
                3,
                "sprint_initialized",
                Some("requirements_handoff"),
                "in_development"
            ),
            (
                4,
                "feature_completed",
                Some("in_development"),
                "feature_handoff"
            ),
        ]
    );
    // The sprint_planning clock was armed and met inside the batch.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sla_clocks WHERE workflow_id = 'wf-b' AND clock = 'sprint_planning' AND status = 'met'")
            .await,
        1
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE correlation_id = 'wf-b'")
            .await,
        2,
        "requirements_handoff and feature_handoff, once each"
    );
    // The repeat, in a later batch, is a duplicate too.
    let again = pipeline::apply_shared(&shared, 0, &inbound(&[&ack]), Utc::now())
        .await
        .expect("applied");
    assert_eq!(again.results[0].outcome, Outcome::Duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_set_aside_and_its_neighbours_commit() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Let a 6 kB epic_id past the input limits, so that PostgreSQL itself refuses it
    // (too large for the epic_id index) and the pipeline has to find it.
    settings.limits.max_key_bytes = 100_000;
    settings.retry_policies.default.max_attempts = 2;
    let shared = Shared::new(settings, env.pool.clone(), coordinator::clock::system());
    let ok = |wf: &str| {
        msg(
            "product-1",
            "product-director",
            "requirements_ready",
            wf,
            json!({"epic_id": format!("E-{wf}")}),
        )
    };
    let (a, b, c, d) = (ok("wf-1"), ok("wf-2"), ok("wf-3"), ok("wf-4"));
    let poison = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-poison",
        json!({"epic_id": incompressible(6000)}),
    );
    let batch = inbound(&[&a, &b, &poison, &c, &d]);
    let out = pipeline::apply_shared(&shared, 0, &batch, Utc::now())
        .await
        .expect("the batch is not held back");

    let outcomes: Vec<Outcome> = out.results.iter().map(|p| p.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Rejected(Reason::ProcessingFailed),
            Outcome::Accepted,
            Outcome::Accepted
        ]
    );
    assert_eq!(out.set_aside, 1);
    assert!(
        out.commits >= 3,
        "the batch was split: {} commits",
        out.commits
    );
    for wf in ["wf-1", "wf-2", "wf-3", "wf-4"] {
        assert_eq!(
            env.workflow_state(wf).await.as_deref(),
            Some("requirements_handoff"),
            "{wf}"
        );
    }
    assert_eq!(env.workflow_state("wf-poison").await, None);
    // Kept whole, with the database's error, its sender told, its id claimed.
    let (reason, detail, body): (String, String, Vec<u8>) =
        sqlx::query_as("SELECT reason, detail, body FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .expect("one dead letter");
    assert_eq!(reason, "processing_failed");
    assert!(detail.contains("index row size"), "{detail}");
    assert_eq!(body, poison.body);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE message_type = 'message_rejected' AND routing_key = 'command.product-1'")
            .await,
        1
    );
    // Ops are told at once: it failed every retry.
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM outbox WHERE message_type = 'message_set_aside'
             AND routing_key = 'escalation.high.oncall' AND causation_id = '{}'",
            poison.meta.message_id.as_deref().unwrap_or_default()
        ))
        .await,
        1
    );
    let again = pipeline::apply_shared(&shared, 0, &inbound(&[&poison]), Utc::now())
        .await
        .expect("applied");
    assert_eq!(
        again.results[0].outcome,
        Outcome::Duplicate,
        "a redelivery is a duplicate"
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_sets_nothing_aside() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    settings.database.acquire_timeout = std::time::Duration::from_millis(300);
    let pool = coordinator::db::pool(&settings.database).expect("pool");
    let shared = Shared::new(settings, pool, coordinator::clock::system());
    let m = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-x",
        json!({}),
    );
    let err = pipeline::apply_shared(&shared, 0, &inbound(&[&m]), Utc::now())
        .await
        .expect_err("the database is unreachable");
    assert!(err.to_string().contains("retried"), "{err}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sessions_carry_the_configured_timeouts() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.statement_timeout = std::time::Duration::from_millis(4500);
    settings.database.lock_timeout = std::time::Duration::from_millis(700);
    settings.database.idle_in_transaction_timeout = std::time::Duration::from_secs(9);
    let pool = coordinator::db::service_pool(&settings.database).expect("pool");
    let show = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .expect("show")
        }
    };
    assert_eq!(show("statement_timeout").await, "4500ms");
    assert_eq!(show("lock_timeout").await, "700ms");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "9s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_waits_too_long_for_a_lock_fails_to_be_retried_and_sets_nothing_aside() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.lock_timeout = std::time::Duration::from_millis(300);
    let pool = coordinator::db::service_pool(&settings.database).expect("pool");
    let shared = Shared::new(settings, pool, coordinator::clock::system());
    let start = msg(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-locked",
        json!({}),
    );
    pipeline::apply_shared(&shared, 0, &inbound(&[&start]), Utc::now())
        .await
        .expect("workflow started");

    // Someone else holds the workflow's row (an operator's open transaction).
    let mut holder = env.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM workflows WHERE id = 'wf-locked' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let next = msg(
        "eng-1",
        "engineering-director",
        "handoff_acknowledged",
        "wf-locked",
        json!({}),
    );
    let err = pipeline::apply_shared(&shared, 0, &inbound(&[&next]), Utc::now())
        .await
        .expect_err("the lock is not granted within lock_timeout");
    assert!(err.to_string().contains("retried"), "{err}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);

    // Once the lock is given back, the same batch commits.
    holder.rollback().await.expect("rollback");
    let out = pipeline::apply_shared(&shared, 0, &inbound(&[&next]), Utc::now())
        .await
        .expect("applied after the lock is free");
    assert!(
        !matches!(out.results[0].outcome, Outcome::Duplicate),
        "{:?}",
        out.results[0].outcome
    );
}
