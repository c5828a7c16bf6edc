//! Security over the real broker and database: replay protection (a stale message is
//! refused, an operator's replay of it is not), a message id used by another sender,
//! and sender authentication by the AMQP `user_id` property. The pure rules have unit
//! tests in `protocol::envelope` and `engine`.

use coordinator::cli::{self, AgentCommand, Command, DeadLetterCommand};
use test_support as common;

use agent::{AgentClient, Queue};
use chrono::Utc;
use common::{expect_next, unique, TestEnv};
use protocol::envelope::Envelope;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_message_sent_later_is_stale_and_an_operators_replay_of_it_applies() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");

    // A message stamped ten minutes ago (captured then, sent now) is refused.
    let mut old = eng.envelope("sprint_initialized", &wf, json!({}));
    old.header.timestamp = Utc::now() - chrono::Duration::minutes(10);
    old.header.ttl = None;
    eng.publish(&old).await.expect("publish");
    let notice = expect_next(&mut eng, Queue::Commands).await;
    assert_eq!(notice.payload.data["reason"], "stale");
    let id = env.dead_letter_id(&old.header.message_id).await;
    assert_eq!(
        env.workflow_state(&wf).await.as_deref(),
        Some("requirements_handoff")
    );

    // The operator, who vouches for it, replays the dead letter: it is applied.
    let out = cli::run(
        &env.settings(),
        Command::DeadLetter {
            command: DeadLetterCommand::Replay {
                id: Some(id),
                reason: None,
                since: None,
                dry_run: false,
                force: false,
                note: None,
                by: "alice".into(),
            },
        },
    )
    .await
    .expect("replay");
    assert!(out.contains("published again"), "{out}");
    env.wait_state(&wf, "in_development").await;

    // Sent once more by anyone else, it changes nothing: its id is remembered.
    eng.publish(&old).await.expect("publish");
    let fresh = eng
        .send("feature_completed", &wf, json!({}))
        .await
        .expect("publish");
    env.wait_state(&wf, "feature_handoff").await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM workflow_events WHERE workflow_id = '{wf}' AND message_type = 'sprint_initialized'"
        ))
        .await,
        1
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM dead_letters WHERE message_id = '{}'",
            fresh.header.message_id
        ))
        .await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_used_by_another_sender_is_refused_as_a_conflict() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    let first = product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");
    env.wait_state(&wf, "requirements_handoff").await;

    // Engineering's message reuses product's id (a bug, or an attempt to have a real
    // message dropped as a duplicate).
    let mut reused: Envelope = eng.envelope("handoff_acknowledged", &wf, json!({}));
    reused.header.message_id = first.header.message_id.clone();
    eng.publish(&reused).await.expect("publish");
    let notice = expect_next(&mut eng, Queue::Commands).await;
    assert_eq!(notice.payload.data["reason"], "duplicate_id_conflict");
    assert!(
        notice.payload.data["detail"]
            .as_str()
            .is_some_and(|d| d.contains("product-1")),
        "{notice:?}"
    );
    let (reason, sender): (String, String) =
        sqlx::query_as("SELECT reason, source_agent_id FROM dead_letters WHERE message_id = $1")
            .bind(&first.header.message_id)
            .fetch_one(&env.pool)
            .await
            .expect("kept");
    assert_eq!(
        (reason.as_str(), sender.as_str()),
        ("duplicate_id_conflict", "eng-1")
    );
    let (outcome, recorded): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, sender FROM processed_messages WHERE message_id = $1")
            .bind(&first.header.message_id)
            .fetch_one(&env.pool)
            .await
            .expect("claim");
    assert_eq!(
        (outcome.as_str(), recorded.as_deref()),
        ("accepted", Some("product-1")),
        "the id stays product's"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sender_authentication_a_message_not_published_as_its_agent_is_refused() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.security.authenticate_senders = true;
    let app = env.start_with(settings.clone()).await;
    // Connected as the shared test user: no user_id, or the wrong one.
    let mut product = env
        .agent_with(&settings, "product-1", "product-director")
        .await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");
    let notice = expect_next(&mut product, Queue::Commands).await;
    assert_eq!(notice.payload.data["reason"], "unauthenticated");
    assert!(
        notice.payload.data["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no AMQP user_id")),
        "{notice:?}"
    );
    assert_eq!(env.workflow_state(&wf).await, None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_its_own_broker_user_is_applied_and_can_neither_pose_as_nor_read_another() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.security.authenticate_senders = true;
    let app = env.start_with(settings.clone()).await;
    let (product_id, qa_id) = (unique("product"), unique("qa"));
    let mut urls = Vec::new();
    for (id, role) in [(&product_id, "product-director"), (&qa_id, "qa-director")] {
        env.delete_user_on_drop(id);
        let out = cli::run(
            &settings,
            Command::Agent {
                command: AgentCommand::Add {
                    agent_id: id.clone(),
                    agent_type: role.into(),
                    credentials: true,
                    public_key: None,
                    key_id: None,
                    by: "alice".into(),
                },
            },
        )
        .await
        .expect("agent add --credentials");
        assert!(out.contains("shown once"), "{out}");
        let password = out.lines().last().expect("the password").trim().to_string();
        urls.push(env.amqp_url_as(id, &password));
    }
    let (product_url, qa_url) = (urls[0].clone(), urls[1].clone());

    // As itself, with user_id set: applied.
    let product = AgentClient::connect(&product_url, &product_id, "product-director")
        .await
        .expect("product connects as its own user")
        .authenticated();
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");
    env.wait_state(&wf, "requirements_handoff").await;

    // QA's user cannot publish under product's routing keys (topic permission) …
    let qa_as_product = AgentClient::connect(&qa_url, &qa_id, "product-director")
        .await
        .expect("qa connects")
        .authenticated();
    let refused = qa_as_product
        .send("requirements_ready", &unique("wf"), json!({}))
        .await;
    assert!(
        refused.is_err(),
        "publishing under another role's key is refused"
    );
    // … nor claim to be product in user_id (the broker checks it) …
    let qa = AgentClient::connect(&qa_url, &qa_id, "qa-director")
        .await
        .expect("qa connects");
    let mut spoofed = qa.envelope("testing_started", &wf, json!({}));
    spoofed.header.source.agent_id = product_id.clone();
    let key = spoofed.agent_routing_key();
    let mut meta = spoofed.meta(&key);
    meta.user_id = Some(product_id.clone());
    let body = serde_json::to_vec(&spoofed).expect("json");
    assert!(
        qa.publish_raw(protocol::names::exchanges::TOPIC, &key, &body, &meta)
            .await
            .is_err(),
        "a user_id that is not the connection's user is refused by the broker"
    );
    // … nor read product's queues; its own it can.
    let mut qa = AgentClient::connect(&qa_url, &qa_id, "qa-director")
        .await
        .expect("qa connects");
    let product_queue = Queue::Commands.name(&product_id);
    assert!(
        qa.next_on(&product_queue, std::time::Duration::from_millis(200))
            .await
            .is_err(),
        "consuming another agent's queue is refused"
    );
    let mut qa = AgentClient::connect(&qa_url, &qa_id, "qa-director")
        .await
        .expect("qa connects");
    assert!(qa
        .next(Queue::Tasks, std::time::Duration::from_millis(200))
        .await
        .is_ok());
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM workflows WHERE id <> '{wf}'"
        ))
        .await,
        0,
        "nothing another role's key carried was applied"
    );

    // Revoked: its user is gone, so it cannot connect; its registration is gone.
    let out = cli::run(
        &settings,
        Command::Agent {
            command: AgentCommand::Remove {
                agent_id: qa_id.clone(),
                by: "alice".into(),
            },
        },
    )
    .await
    .expect("agent remove");
    assert!(out.contains("broker user deleted"), "{out}");
    assert!(AgentClient::connect(&qa_url, &qa_id, "qa-director")
        .await
        .is_err());
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM agents WHERE agent_id = '{qa_id}'"
        ))
        .await,
        0
    );
    // Each command is in the audit log under its operator.
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE chain = 'operator' AND actor = 'alice' AND target = $1 ORDER BY seq",
    )
    .bind(&qa_id)
    .fetch_all(&env.pool)
    .await
    .expect("audit rows");
    assert_eq!(audited, ["agent_add", "agent_credentials", "agent_remove"]);
    app.stop().await;
}
