//! Signatures over the real broker and database, in each mode: `require` refuses a
//! missing and a bad signature (another key, a body changed after signing, a key id
//! the agent does not have) and applies a good one; `verify` applies and counts;
//! `off` does not look. Key rotation keeps two keys valid; the coordinator signs what
//! it sends with the key `GET /keys` publishes. The signed form has unit tests in
//! `protocol::signing`.

use coordinator::clock::SystemClock;
use coordinator::engine::SignatureMode;
use coordinator::service::ops::Ops;
use coordinator::settings::Settings;
use test_support as common;

use agent::{AgentClient, Queue};
use common::{expect_next, metric, TestEnv};
use protocol::signing::{self, SigningKey};
use serde_json::json;

fn settings(env: &TestEnv, mode: SignatureMode) -> Settings {
    let mut s = env.settings();
    s.security.signatures = mode;
    s.security.signing_key = Some(signing::encode_private(&signing::generate()).into());
    s
}

/// Registers `agent_id` with a new key; the client signs with it.
async fn signed_agent(
    env: &TestEnv,
    s: &Settings,
    agent_id: &str,
    role: &str,
) -> (AgentClient, SigningKey, String) {
    let client = env.agent_with(s, agent_id, role).await;
    let key = signing::generate();
    let (key_id, _) = Ops::new(s, &env.pool, &SystemClock)
        .add_agent_key(
            agent_id,
            &signing::encode_public(&key.verifying_key()),
            None,
            None,
            "alice",
        )
        .await
        .expect("key added");
    (client.signing(key.clone(), &key_id), key, key_id)
}

/// Waits until the running coordinator has heard that the agents' keys changed (its
/// cache reloads before the next batch): a key change takes effect from then on.
async fn heard(app: &common::Running) {
    common::eventually("the coordinator to hear of the key change", || async {
        app.shared
            .agents
            .is_stale(std::time::Instant::now())
            .then_some(())
    })
    .await;
}

async fn refused(client: &mut AgentClient) -> String {
    let notice = expect_next(client, Queue::Commands).await;
    notice.payload.data["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_missing_and_bad_signatures_and_the_coordinator_signs_its_own() {
    let env = TestEnv::new().await;
    let s = settings(&env, SignatureMode::Require);
    let app = env.start_with(s.clone()).await;
    let (product, key, key_id) = signed_agent(&env, &s, "product-1", "product-director").await;
    let mut eng = env.agent_with(&s, "eng-1", "engineering-director").await;
    let wf = env.start_feature(&product).await;

    // The task engineering receives is signed with the key GET /keys publishes.
    let task = expect_next(&mut eng, Queue::Tasks).await;
    let (_, body) = common::http_get(app.http, "/keys").await.expect("/keys");
    let published: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ours = signing::public_key(published["keys"][0]["public_key"].as_str().unwrap_or(""))
        .expect("a key");
    let ours_id = published["keys"][0]["key_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let task = serde_json::to_value(&task).expect("json");
    assert_eq!(
        signing::verify(&task, [(ours_id.as_str(), &ours)]),
        Ok(ours_id.clone())
    );

    // Unsigned: engineering has no key.
    eng.send("handoff_acknowledged", &wf, json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut eng).await, "missing_signature");
    // Signed with a key engineering does not have registered.
    let eng = eng.signing(signing::generate(), "eng-1-key");
    let mut eng = eng;
    eng.send("handoff_acknowledged", &wf, json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut eng).await, "bad_signature");
    // Naming product's registered key id does not make engineering's key product's:
    // only the sender's own keys are looked up.
    let mut eng = eng.signing(signing::generate(), &key_id);
    eng.send("handoff_acknowledged", &wf, json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut eng).await, "bad_signature");
    // Product's message changed after it was signed.
    let mut forged =
        serde_json::to_value(product.envelope("requirements_ready", "wf-forged", json!({})))
            .expect("json");
    signing::sign(&mut forged, &key, &key_id);
    forged["header"]["correlation_id"] = json!("wf-forged-2");
    let mut watcher = env.connect_as("product-1", "product-director").await;
    let body = serde_json::to_vec(&forged).expect("json");
    let meta = protocol::envelope::DeliveryMeta {
        routing_key: "product-director.requirements_ready".into(),
        message_id: forged["header"]["message_id"].as_str().map(str::to_string),
        correlation_id: Some("wf-forged-2".into()),
        kind: Some("requirements_ready".into()),
        app_id: Some("product-1".into()),
        ..Default::default()
    };
    watcher
        .publish_raw("agent.topic", &meta.routing_key.clone(), &body, &meta)
        .await
        .expect("publish");
    assert_eq!(refused(&mut watcher).await, "bad_signature");
    assert_eq!(env.workflow_state("wf-forged-2").await, None);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM dead_letters WHERE reason IN ('missing_signature', 'bad_signature')"
        )
        .await,
        4
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_applies_and_counts_and_off_does_not_look() {
    for (mode, counted) in [(SignatureMode::Verify, 1.0), (SignatureMode::Off, 0.0)] {
        let env = TestEnv::new().await;
        let s = settings(&env, mode);
        let app = env.start_with(s.clone()).await;
        let product = env.agent_with(&s, "product-1", "product-director").await;
        let wf = format!("wf-{}", uuid::Uuid::new_v4());
        // Signed with a key nobody registered.
        let product = product.signing(signing::generate(), "unknown");
        product
            .send("requirements_ready", &wf, json!({}))
            .await
            .expect("publish");
        env.wait_state(&wf, "requirements_handoff").await;
        assert_eq!(
            metric(app.http, "coordinator_bad_signatures_total ").await,
            counted,
            "{mode:?}"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_the_previous_key_valid_until_it_is_retired() {
    let env = TestEnv::new().await;
    let s = settings(&env, SignatureMode::Require);
    let app = env.start_with(s.clone()).await;
    let ops = Ops::new(&s, &env.pool, &SystemClock);
    let (_, first, first_id) = signed_agent(&env, &s, "product-1", "product-director").await;
    let second = signing::generate();
    let (second_id, retired) = ops
        .add_agent_key(
            "product-1",
            &signing::encode_public(&second.verifying_key()),
            Some("product-1-2"),
            Some(2),
            "alice",
        )
        .await
        .expect("rotate");
    assert!(retired.is_empty(), "{retired:?}");
    heard(&app).await;
    let with = |key: &SigningKey, id: &str| {
        let (key, id) = (key.clone(), id.to_string());
        let env = &env;
        async move {
            env.connect_as("product-1", "product-director")
                .await
                .signing(key, &id)
        }
    };
    // Both keys are valid during the rotation.
    for (key, id) in [(&first, &first_id), (&second, &second_id)] {
        env.start_feature(&with(key, id).await).await;
    }
    // The first key retired: refused; the second still applies.
    ops.retire_agent_key("product-1", &first_id, "alice")
        .await
        .expect("retire");
    heard(&app).await;
    let mut old = with(&first, &first_id).await;
    old.send("requirements_ready", "wf-old-key", json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut old).await, "bad_signature");
    // Its consumer would take the next notice to product-1.
    old.close().await;
    env.start_feature(&with(&second, &second_id).await).await;
    // A third rotation retires all but the two newest.
    let third = signing::generate();
    ops.add_agent_key(
        "product-1",
        &signing::encode_public(&third.verifying_key()),
        Some("product-1-3"),
        Some(2),
        "alice",
    )
    .await
    .expect("rotate");
    // Another key under an id the agent already uses is refused, pointing to
    // rotate-key; the same key again changes nothing.
    let err = ops
        .add_agent_key(
            "product-1",
            &signing::encode_public(&signing::generate().verifying_key()),
            Some("product-1-3"),
            None,
            "alice",
        )
        .await
        .expect_err("a key id in use");
    assert!(
        err.to_string()
            .contains("coordinator agent rotate-key product-1"),
        "{err}"
    );
    ops.add_agent_key(
        "product-1",
        &signing::encode_public(&third.verifying_key()),
        Some("product-1-3"),
        None,
        "alice",
    )
    .await
    .expect("the same key again");
    ops.add_agent_key(
        "product-1",
        &signing::encode_public(&signing::generate().verifying_key()),
        Some("product-1-4"),
        Some(2),
        "alice",
    )
    .await
    .expect("rotate");
    heard(&app).await;
    let mut second_now = with(&second, &second_id).await;
    second_now
        .send("requirements_ready", "wf-second-key", json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut second_now).await, "bad_signature");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_lists_the_signing_key_first_then_the_previous_ones() {
    let env = TestEnv::new().await;
    let mut s = settings(&env, SignatureMode::Require);
    let previous = signing::generate().verifying_key();
    s.security.previous_public_keys = vec![signing::encode_public(&previous)];
    let app = env.start_with(s.clone()).await;
    let (_, body) = common::http_get(app.http, "/keys").await.expect("/keys");
    let keys: serde_json::Value = serde_json::from_str(&body).expect("json");
    let signer = s.signer().expect("a signing key");
    let listed: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap_or(""),
                k["public_key"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let current = signing::encode_public(&signer.public_key());
    let old = signing::encode_public(&previous);
    let old_id = signing::default_key_id(&previous);
    assert_eq!(
        listed,
        [
            (signer.key_id(), current.as_str()),
            (old_id.as_str(), old.as_str())
        ]
    );
    // A previous key that is not a key is refused when the settings are read.
    let dir = common::repo_root().join("config");
    let err = Settings::load_with(
        &dir,
        Some("test"),
        &[("COORDINATOR__SECURITY__PREVIOUS_PUBLIC_KEYS", "AAAA")],
    );
    let err = err.map(|_| ()).expect_err("AAAA is not a key");
    assert!(
        err.to_string().contains("security.previous_public_keys[0]"),
        "{err}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_letter_refused_for_its_signature_needs_force_and_a_note() {
    use coordinator::cli::{self, Command, DeadLetterCommand};
    let env = TestEnv::new().await;
    let s = settings(&env, SignatureMode::Require);
    let app = env.start_with(s.clone()).await;
    let (product, _, _) = signed_agent(&env, &s, "product-1", "product-director").await;
    let mut eng = env.agent_with(&s, "eng-1", "engineering-director").await;
    let wf = env.start_feature(&product).await;
    // Engineering's message, unsigned: refused, kept.
    let unsigned = eng
        .send("handoff_acknowledged", &wf, json!({}))
        .await
        .expect("publish");
    assert_eq!(refused(&mut eng).await, "missing_signature");
    let id = env.dead_letter_id(&unsigned.header.message_id).await;
    let replay = |dry_run: bool, note: Option<&str>| Command::DeadLetter {
        command: DeadLetterCommand::Replay {
            id: Some(id),
            reason: None,
            since: None,
            dry_run,
            force: note.is_some(),
            note: note.map(str::to_string),
            by: "alice".into(),
        },
    };

    // The dry run says what a replay would skip; the replay itself is refused.
    let dry = cli::run(&s, replay(true, None)).await.expect("dry run");
    assert!(
        dry.contains("refused as missing_signature, and a replay skips the sender's signature: it needs --force --note"),
        "{dry}"
    );
    let err = cli::run(&s, replay(false, None))
        .await
        .expect_err("refused without --force");
    assert!(
        format!("{err:#}").contains("replay it with --force --note"),
        "{err:#}"
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM dead_letters WHERE id = {id} AND replayed_at IS NULL"
        ))
        .await,
        1,
        "nothing was replayed"
    );

    // Forced, with a note: applied, and the audit log says who, why and what it skipped.
    cli::run(
        &s,
        replay(false, Some("eng-1 confirmed it sent this by phone")),
    )
    .await
    .expect("forced replay");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'accepted'",
            unsigned.header.message_id
        ),
        1,
    )
    .await;
    let forced: serde_json::Value = sqlx::query_scalar(
        "SELECT context->'forced' FROM audit_log WHERE chain = 'operator' AND actor = 'alice'
            AND action = 'dead_letter_replay'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("the replay's audit row");
    assert_eq!(forced["note"], "eng-1 confirmed it sent this by phone");
    assert_eq!(forced["refused_as"], "missing_signature");
    app.stop().await;
}
