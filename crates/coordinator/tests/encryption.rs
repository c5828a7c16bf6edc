//! Sensitive payload fields (security.encryption) over the real broker and database:
//! stored sealed in workflows.data, workflow_events.detail and dead_letters (body and
//! body_json), so managers' SQL sees ciphertext; agents receive them in clear; the CLI
//! shows them opened only with the key; a dead letter's replay sends them opened. The
//! cipher has unit tests in `encryption`.

use std::process::Command;

use chrono::Utc;
use coordinator::clock::SystemClock;
use coordinator::domain::workflow::Closing;
use coordinator::encryption::{self, SEALED};
use coordinator::service::ops::Ops;
use coordinator::settings::Settings;
use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv};
use serde_json::{json, Value};

const FIELDS: &str = "payload.data.customer_email,payload.data.reason";

fn settings(env: &TestEnv, key: &str) -> Settings {
    let mut s = env.settings();
    s.security.encryption.fields = FIELDS.split(',').map(str::to_string).collect();
    s.security.encryption.key = Some(key.to_string().into());
    s
}

async fn data_of(env: &TestEnv, wf: &str) -> Value {
    sqlx::query_scalar("SELECT data FROM workflows WHERE id = $1")
        .bind(wf)
        .fetch_one(&env.pool)
        .await
        .expect("workflow")
}

/// `coordinator dead-letter show <id>`, with the key or without.
fn show(env: &TestEnv, id: i64, key: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(["dead-letter", "show", &id.to_string()])
        .current_dir(common::repo_root())
        .env("COORDINATOR_ENV", "test")
        .env("COORDINATOR__DATABASE__URL", &env.db_url)
        .env("COORDINATOR__AMQP__URL", &env.amqp_url)
        .env("COORDINATOR__SECURITY__ENCRYPTION__FIELDS", FIELDS)
        .env_remove("RUST_LOG");
    if let Some(key) = key {
        cmd.env("COORDINATOR__SECURITY__ENCRYPTION__KEY", key);
    }
    let out = cmd.output().expect("coordinator binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_fields_are_stored_sealed_and_only_the_key_opens_them() {
    let env = TestEnv::new().await;
    let (key, key_id) = encryption::generate();
    let s = settings(&env, &key);
    let cipher = s.cipher().expect("cipher");
    let app = env.start_with(s.clone()).await;
    let product = env.agent_with(&s, "product-1", "product-director").await;
    let mut eng = env.agent_with(&s, "eng-1", "engineering-director").await;

    // Applied: the workflow's data holds the field sealed, the rest as sent.
    product
        .send(
            "requirements_ready",
            "wf-sealed",
            json!({"title": "Checkout", "customer_email": "alice@example.com"}),
        )
        .await
        .expect("publish");
    env.wait_state("wf-sealed", "requirements_handoff").await;
    let data = data_of(&env, "wf-sealed").await;
    assert!(!data.to_string().contains("alice@example.com"), "{data}");
    assert_eq!(data["title"], "Checkout");
    assert_eq!(data["customer_email"][SEALED]["kid"], json!(key_id));
    let mut opened = data.clone();
    assert_eq!(cipher.open(&mut opened), Ok(1));
    assert_eq!(opened["customer_email"], "alice@example.com");
    // The agent it is handed to receives it in clear.
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.payload.data["customer_email"], "alice@example.com");

    // Refused (stale): the dead letter's body and JSON hold it sealed.
    let mut stale = product.envelope(
        "requirements_ready",
        "wf-replayed",
        json!({"customer_email": "bob@example.com"}),
    );
    stale.header.timestamp = Utc::now() - chrono::Duration::minutes(10);
    product.publish(&stale).await.expect("publish");
    let id = env.dead_letter_id(&stale.header.message_id).await;
    let (body, body_json): (Vec<u8>, Value) =
        sqlx::query_as("SELECT body, body_json FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("dead letter");
    assert!(!String::from_utf8_lossy(&body).contains("bob@example.com"));
    assert!(!body_json.to_string().contains("bob@example.com"));
    assert!(encryption::contains_sealed(&body_json));

    // The CLI opens it with the key, and says it cannot without.
    assert!(show(&env, id, Some(&key)).contains("bob@example.com"));
    let without = show(&env, id, None);
    assert!(!without.contains("bob@example.com"), "{without}");
    assert!(without.contains("sealed fields shown sealed"), "{without}");
    // Another key cannot open it either, and names the key it needs.
    let (other, _) = encryption::generate();
    let wrong = show(&env, id, Some(&other));
    assert!(
        wrong.contains(&key_id) && !wrong.contains("bob@example.com"),
        "{wrong}"
    );

    // A replay sends the message as received (an operator's replay is exempt from the
    // freshness window), and it is stored sealed again.
    let ops = Ops::new(&s, &env.pool, &SystemClock);
    ops.replay_dead_letter(id, "alice", None)
        .await
        .expect("replayed");
    env.wait_state("wf-replayed", "requirements_handoff").await;
    let mut replayed = data_of(&env, "wf-replayed").await;
    assert!(!replayed.to_string().contains("bob@example.com"));
    cipher.open(&mut replayed).expect("opens");
    assert_eq!(replayed["customer_email"], "bob@example.com");

    // An operator's note under a sealed path is sealed in the workflow's history.
    ops.close_workflow(
        "wf-sealed",
        Closing::Cancelled,
        "customer alice@example.com asked",
        "alice",
    )
    .await
    .expect("closed");
    let detail: Value = sqlx::query_scalar(
        "SELECT detail FROM workflow_events WHERE workflow_id = 'wf-sealed' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .expect("event");
    assert!(
        !detail.to_string().contains("alice@example.com"),
        "{detail}"
    );
    assert!(encryption::contains_sealed(&detail));
    app.stop().await;
}

#[test]
fn serve_refuses_to_start_with_fields_and_no_key_and_a_bad_key_is_named() {
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
        cmd.arg("serve")
            .current_dir(common::repo_root())
            .env("COORDINATOR_ENV", "test")
            .env("COORDINATOR__SECURITY__ENCRYPTION__FIELDS", FIELDS)
            .env_remove("RUST_LOG");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("coordinator binary runs")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security.encryption.key"), "{err}");
    let out = run(&[("COORDINATOR__SECURITY__ENCRYPTION__KEY", "c2hvcnQ=")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("security.encryption.key") && !err.contains("c2hvcnQ="),
        "{err}"
    );
}
