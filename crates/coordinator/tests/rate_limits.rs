//! Rate limits over the real broker and database (security.rate_limits): an agent over
//! its limit has its further messages delayed, not dropped, and applied in order as its
//! bucket refills; another agent whose workflows share the same inbox partition is not
//! held up; a later message of a held workflow waits behind it, whoever sent it; the
//! agent hears one `rate_limited` notice; held messages outlive a restart. Each message
//! is charged to the sender admission vouched for: an agent posing as another in the
//! AMQP `app_id` is refused before it is charged to anyone, and a client's own
//! `x-replay-of` header exempts nothing. The buckets and the ordering have unit tests
//! in `service::rate_limits`.

use coordinator::settings::Settings;
use test_support as common;

use agent::{AgentClient, Queue};
use common::{expect_next, metric, unique, TestEnv};
use protocol::names::exchanges;
use serde_json::json;

/// One inbox partition (every workflow shares it); product directors may send 30
/// messages a minute (one every two seconds) after a burst of two.
fn settings(env: &TestEnv) -> Settings {
    let mut s = env.settings();
    s.inbox.partitions = 1;
    let limits = &mut s.security.rate_limits;
    limits.enabled = true;
    limits.per_minute = 600;
    limits.burst = Some(2);
    limits.roles.insert("product-director".into(), 30);
    s
}

async fn held(env: &TestEnv, sender: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT count(*) FROM deferred_messages WHERE sender = '{sender}'"
    ))
    .await
}

async fn created_at(env: &TestEnv, wf: &str) -> chrono::DateTime<chrono::Utc> {
    env.wait_state(wf, "requirements_handoff").await;
    sqlx::query_scalar("SELECT created_at FROM workflows WHERE id = $1")
        .bind(wf)
        .fetch_one(&env.pool)
        .await
        .expect("workflow")
}

/// Sends `requirements_ready` for each workflow, in order; the message ids.
async fn start_all(product: &AgentClient, wfs: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for wf in wfs {
        let env = product
            .send("requirements_ready", wf, json!({}))
            .await
            .expect("publish");
        ids.push(env.header.message_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_limit_is_delayed_in_order_without_holding_up_another_on_its_partition() {
    let env = TestEnv::new().await;
    let s = settings(&env);
    let app = env.start_with(s.clone()).await;
    let mut flooder = env.agent_with(&s, "pd-flood", "product-director").await;
    let other = env.agent_with(&s, "pd-calm", "product-director").await;
    let eng = env.agent_with(&s, "eng-1", "engineering-director").await;

    let flood: Vec<String> = (1..=5).map(|i| format!("wf-flood-{i}")).collect();
    let ids = start_all(&flooder, &flood).await;
    // Two go at once; the other three are held back.
    common::eventually("three of the flood held back", || async {
        (held(&env, "pd-flood").await == 3).then_some(())
    })
    .await;
    // Engineering's message to the fourth workflow, which is not started yet: it must
    // wait behind the held start, not be refused as unknown_workflow.
    let ack = eng
        .send("handoff_acknowledged", &flood[3], json!({}))
        .await
        .expect("publish");
    // Another product director, on the same (only) partition, sent after the flood.
    let calm = "wf-calm".to_string();
    start_all(&other, std::slice::from_ref(&calm)).await;
    let calm_at = created_at(&env, &calm).await;

    // Nothing dropped: every held start is applied, in the order sent.
    let mut at = Vec::new();
    for wf in &flood {
        at.push(created_at(&env, wf).await);
    }
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "applied in order: {at:?}"
    );
    assert!(
        at[2] > calm_at,
        "the calm agent's start was applied before the flood's held ones"
    );
    // Engineering's message waited behind its workflow's start, then was accepted.
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'accepted'",
            ack.header.message_id
        ),
        1,
    )
    .await;
    assert_eq!(held(&env, "eng-1").await, 0);
    env.wait_count("SELECT count(*) FROM deferred_messages", 0)
        .await;

    // One notice, naming the first message held back and the limit.
    let notice = expect_next(&mut flooder, Queue::Commands).await;
    assert_eq!(notice.header.message_type, "rate_limited");
    assert_eq!(notice.payload.data["held_message_id"], json!(ids[2]));
    assert_eq!(notice.payload.data["limit_per_minute"], json!(30));
    common::expect_no_more(&env, &mut flooder, Queue::Commands).await;
    assert_eq!(
        metric(
            app.http,
            "coordinator_rate_limited_total{role=\"product-director\"}"
        )
        .await,
        3.0
    );
    // Engineering's message was held for its workflow's sake, and counted.
    assert_eq!(
        metric(
            app.http,
            "coordinator_rate_limited_total{role=\"engineering-director\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(app.http, "coordinator_rate_limited_released_total").await,
        4.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_outlive_a_restart() {
    let env = TestEnv::new().await;
    let mut s = settings(&env);
    // One every ten seconds: nothing held is released before the restart.
    s.security
        .rate_limits
        .roles
        .insert("product-director".into(), 6);
    let app = env.start_with(s.clone()).await;
    let product = env.agent_with(&s, "pd-1", "product-director").await;
    let wfs: Vec<String> = (1..=4).map(|i| format!("wf-{i}")).collect();
    start_all(&product, &wfs).await;
    common::eventually("two held back", || async {
        (held(&env, "pd-1").await == 2).then_some(())
    })
    .await;
    app.stop().await;
    assert_eq!(env.workflow_state(&wfs[2]).await, None);

    // A fresh coordinator (fresh buckets) applies what the last one held.
    s.security
        .rate_limits
        .roles
        .insert("product-director".into(), 600);
    let app = env.start_with(s).await;
    for wf in &wfs {
        env.wait_state(wf, "requirements_handoff").await;
    }
    env.wait_count("SELECT count(*) FROM deferred_messages", 0)
        .await;
    app.stop().await;
}

/// With sender authentication on, product directors may send 30 a minute after a burst
/// of two; each agent connects as its own broker user.
fn authenticated(env: &TestEnv) -> Settings {
    let mut s = settings(env);
    s.security.authenticate_senders = true;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_posing_as_another_in_app_id_is_refused_before_it_is_charged_to_anyone() {
    let env = TestEnv::new().await;
    let s = authenticated(&env);
    let app = env.start_with(s.clone()).await;
    let (victim_id, poser_id) = (unique("pd-victim"), unique("pd-poser"));
    let victim = env.provisioned(&s, &victim_id, "product-director").await;
    let poser = env.provisioned(&s, &poser_id, "product-director").await;

    // Under its own broker user (the broker lets it: user_id is its own), five messages
    // that say they are the victim's: in app_id alone (the body says the poser), or in
    // app_id and the body.
    let mut posed = Vec::new();
    for i in 0..5 {
        let mut e = poser.envelope("requirements_ready", &format!("wf-posed-{i}"), json!({}));
        if i % 2 == 1 {
            e.header.source.agent_id = victim_id.clone();
        }
        let key = e.agent_routing_key();
        let mut meta = e.meta(&key);
        meta.app_id = Some(victim_id.clone());
        meta.user_id = Some(poser_id.clone());
        let body = serde_json::to_vec(&e).expect("json");
        poser
            .publish_raw(exchanges::TOPIC, &key, &body, &meta)
            .await
            .expect("the broker takes it");
        posed.push(e.header.message_id);
    }
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason IN ('property_mismatch', 'unauthenticated')",
        5,
    )
    .await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM deferred_messages")
            .await,
        0,
        "nothing refused is held"
    );
    // The victim's burst is untouched: both of its messages apply at once.
    let wfs: Vec<String> = (1..=2).map(|i| format!("wf-victim-{i}")).collect();
    start_all(&victim, &wfs).await;
    for wf in &wfs {
        env.wait_state(wf, "requirements_handoff").await;
    }
    assert_eq!(held(&env, &victim_id).await, 0);
    assert_eq!(
        metric(
            app.http,
            "coordinator_rate_limited_total{role=\"product-director\"}"
        )
        .await,
        0.0,
        "nothing was held back"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_header_set_by_an_agent_exempts_it_from_neither_its_limit_nor_the_order() {
    let env = TestEnv::new().await;
    let s = authenticated(&env);
    let app = env.start_with(s.clone()).await;
    let flooder_id = unique("pd-flood");
    let flooder = env.provisioned(&s, &flooder_id, "product-director").await;
    let eng_id = unique("eng");
    let eng = env.provisioned(&s, &eng_id, "engineering-director").await;

    // Five starts, each claiming to be an operator's replay of dead letter 1.
    let wfs: Vec<String> = (1..=5).map(|i| format!("wf-replayed-{i}")).collect();
    for wf in &wfs {
        let e = flooder.envelope("requirements_ready", wf, json!({}));
        let key = e.agent_routing_key();
        let mut meta = e.meta(&key);
        meta.user_id = Some(flooder_id.clone());
        meta.replay_of = Some(1);
        let body = serde_json::to_vec(&e).expect("json");
        flooder
            .publish_raw(exchanges::TOPIC, &key, &body, &meta)
            .await
            .expect("publish");
    }
    // Charged like any other: two go at once, three are held.
    common::eventually("three of the five held back", || async {
        (held(&env, &flooder_id).await == 3).then_some(())
    })
    .await;
    // And ordered like any other: engineering's message to the last workflow, marked
    // as a replay too, waits behind that workflow's held start instead of being refused
    // as unknown_workflow.
    let mut ack = eng.envelope("handoff_acknowledged", &wfs[4], json!({}));
    ack.header.source.agent_id = eng_id.clone();
    let key = ack.agent_routing_key();
    let mut meta = ack.meta(&key);
    meta.user_id = Some(eng_id.clone());
    meta.replay_of = Some(1);
    eng.publish_raw(
        exchanges::TOPIC,
        &key,
        &serde_json::to_vec(&ack).expect("json"),
        &meta,
    )
    .await
    .expect("publish");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'accepted'",
            ack.header.message_id
        ),
        1,
    )
    .await;
    for wf in &wfs {
        env.wait_state(wf, "requirements_handoff").await;
    }
    let replays: i64 = env
        .scalar_i64("SELECT count(*) FROM audit_log WHERE context ? 'replay_of'")
        .await;
    assert_eq!(replays, 0, "no audit row calls them replays");
    app.stop().await;
}
