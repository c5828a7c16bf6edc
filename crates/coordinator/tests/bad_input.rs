//! docs/protocol.md section 8: every kind of bad input is acked off the inbox, kept whole in
//! `dead_letters` with its reason, answered with a `message_rejected` notice where the
//! sender is known, and changes nothing else; the service keeps running.

use coordinator::cli::{self, Command, DeadLetterCommand};
use test_support as common;

use std::collections::BTreeMap;

use agent::{AgentClient, Queue};
use chrono::Utc;
use common::{expect_next, expect_no_more, TestEnv};
use protocol::envelope::{DeliveryMeta, Envelope};
use protocol::names::exchanges;
use serde_json::json;

struct Bad {
    reason: &'static str,
    routing_key: String,
    body: Vec<u8>,
    meta: DeliveryMeta,
    /// The id the notice names (None: the message has none).
    message_id: Option<String>,
}

fn bad_envelope(
    reason: &'static str,
    env: &Envelope,
    tweak: impl FnOnce(&mut serde_json::Value, &mut DeliveryMeta),
) -> Bad {
    let mut value = serde_json::to_value(env).expect("envelope to json");
    let mut meta = env.meta(&env.agent_routing_key());
    tweak(&mut value, &mut meta);
    Bad {
        reason,
        routing_key: meta.routing_key.clone(),
        body: serde_json::to_vec(&value).expect("json"),
        message_id: Some(env.header.message_id.clone()),
        meta,
    }
}

async fn publish(agent: &AgentClient, bad: &Bad) {
    agent
        .publish_raw(exchanges::TOPIC, &bad.routing_key, &bad.body, &bad.meta)
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_dead_lettered_with_its_reason_and_the_sender_told() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({"epic_id": "EPIC-BAD"}))
        .await
        .expect("publish");
    expect_next(&mut eng, Queue::Tasks).await;

    let ok = |m: &str| qa.envelope(m, &wf, json!({}));
    let mut cases = vec![
        Bad {
            reason: "malformed_json",
            routing_key: "qa-director.testing_started".into(),
            body: b"this is { not json".to_vec(),
            meta: DeliveryMeta {
                message_id: Some("not-json-1".into()),
                app_id: Some("qa-1".into()),
                ..Default::default()
            },
            message_id: Some("not-json-1".into()),
        },
        bad_envelope("missing_field", &ok("testing_started"), |v, _| {
            v["header"]
                .as_object_mut()
                .expect("header")
                .remove("timestamp");
        }),
        bad_envelope("invalid_field", &ok("testing_started"), |v, _| {
            v["payload"]["data"]["note"] = json!("nul \u{0} inside");
        }),
        bad_envelope("property_mismatch", &ok("testing_started"), |_, m| {
            m.correlation_id = Some("wf-someone-else".into());
        }),
        bad_envelope("unknown_role", &ok("testing_started"), |v, m| {
            v["header"]["source"]["agent_type"] = json!("intern");
            m.routing_key = "intern.testing_started".into();
        }),
        bad_envelope("unknown_message_type", &ok("launch_rockets"), |_, _| {}),
        bad_envelope("sender_not_allowed", &ok("requirements_ready"), |_, _| {}),
        bad_envelope("expired", &ok("testing_started"), |v, m| {
            let then = Utc::now() - chrono::Duration::hours(2);
            v["header"]["timestamp"] = json!(then);
            v["header"]["ttl"] = json!(60);
            m.timestamp = Some(then.timestamp() as u64);
        }),
        bad_envelope("stale", &ok("testing_started"), |v, m| {
            let then = Utc::now() - chrono::Duration::minutes(10);
            v["header"]["timestamp"] = json!(then);
            m.timestamp = Some(then.timestamp() as u64);
        }),
        bad_envelope("from_the_future", &ok("testing_started"), |v, m| {
            let then = Utc::now() + chrono::Duration::minutes(10);
            v["header"]["timestamp"] = json!(then);
            m.timestamp = Some(then.timestamp() as u64);
        }),
        bad_envelope("not_accepted_in_state", &ok("testing_started"), |_, _| {}),
        bad_envelope(
            "unknown_workflow",
            &qa.envelope("testing_started", "wf-nope", json!({})),
            |_, _| {},
        ),
        bad_envelope("agent_type_mismatch", &ok("feature_completed"), |v, m| {
            v["header"]["source"]["agent_type"] = json!("engineering-director");
            m.routing_key = "engineering-director.feature_completed".into();
        }),
    ];
    for bad in &cases {
        publish(&qa, bad).await;
    }
    // A second requirements_ready for the same workflow, from product.
    let again = product.envelope("requirements_ready", &wf, json!({}));
    product.publish(&again).await.expect("publish");
    // Garbage from nobody: dead-lettered, no one to tell.
    let anonymous = Bad {
        reason: "malformed_json",
        routing_key: "qa-director.testing_started".into(),
        body: vec![0xff, 0x00, 0xfe],
        meta: DeliveryMeta::default(),
        message_id: None,
    };
    publish(&qa, &anonymous).await;

    // The sender is told, once per message, with the reason.
    let mut notices = BTreeMap::new();
    for _ in 0..cases.len() {
        let n = expect_next(&mut qa, Queue::Commands).await;
        assert_eq!(n.header.message_type, "message_rejected");
        let id = n.payload.data["rejected_message_id"]
            .as_str()
            .expect("id")
            .to_string();
        let reason = n.payload.data["reason"]
            .as_str()
            .expect("reason")
            .to_string();
        assert!(
            !n.payload.data["detail"].as_str().unwrap_or("").is_empty(),
            "a detail says what is wrong"
        );
        notices.insert(id, reason);
    }
    for bad in &cases {
        let id = bad.message_id.clone().expect("every case has an id");
        assert_eq!(
            notices.get(&id).map(String::as_str),
            Some(bad.reason),
            "notice for {}",
            bad.reason
        );
    }

    // Every one is kept whole with its reason (plus product's and the anonymous one).
    cases.push(Bad {
        reason: "workflow_exists",
        routing_key: again.agent_routing_key(),
        body: serde_json::to_vec(&again).expect("json"),
        meta: DeliveryMeta::default(),
        message_id: Some(again.header.message_id.clone()),
    });
    cases.push(anonymous);
    env.wait_count("SELECT count(*) FROM dead_letters", cases.len() as i64)
        .await;
    // Every case handled: one notice each, none more.
    expect_no_more(&env, &mut qa, Queue::Commands).await;
    for bad in &cases {
        let rows: Vec<(String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT reason, body, routing_key FROM dead_letters WHERE reason = $1 AND body = $2",
        )
        .bind(bad.reason)
        .bind(&bad.body)
        .fetch_all(&env.pool)
        .await
        .expect("dead letters");
        assert_eq!(rows.len(), 1, "dead letter for {}", bad.reason);
        assert_eq!(rows[0].2, bad.routing_key);
    }
    // Counted by reason, and by type where admission could trust it (`unknown`
    // where it refused the delivery itself).
    let mut by_reason: BTreeMap<&str, f64> = BTreeMap::new();
    for bad in &cases {
        *by_reason.entry(bad.reason).or_default() += 1.0;
    }
    for (reason, n) in &by_reason {
        let series = format!("coordinator_rejections_total{{reason=\"{reason}\"}} ");
        common::eventually(&series, || async {
            (common::metric(app.http, &series).await == *n).then_some(())
        })
        .await;
    }
    let body = common::http_get(app.http, "/metrics")
        .await
        .expect("metrics")
        .1;
    let rejected_by_type: f64 = body
        .lines()
        .filter_map(|l| l.strip_prefix("coordinator_messages_by_type_total{outcome=\"rejected\","))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected_by_type, cases.len() as f64, "{body}");
    assert!(
        body.contains("coordinator_messages_by_type_total{outcome=\"rejected\",type=\"unknown\"}"),
        "{body}"
    );

    // Nothing else changed, and the service still works.
    assert_eq!(
        env.workflow_state(&wf).await.as_deref(),
        Some("requirements_handoff")
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflow_events").await,
        1
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sla_clocks WHERE status = 'armed'")
            .await,
        3
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM workflows").await, 1);
    eng.send("sprint_initialized", &wf, json!({}))
        .await
        .expect("publish");
    env.wait_state(&wf, "in_development").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_processed_anew() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let wf = format!("wf-{}", uuid::Uuid::new_v4());
    product
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");

    // QA starts testing too early: rejected.
    let early = qa
        .send("testing_started", &wf, json!({}))
        .await
        .expect("publish");
    let notice = expect_next(&mut qa, Queue::Commands).await;
    assert_eq!(notice.payload.data["reason"], "not_accepted_in_state");
    assert_eq!(
        notice.payload.data["rejected_message_id"],
        early.header.message_id.as_str()
    );

    // Engineering catches up; the operator replays QA's message and it now applies.
    for m in ["sprint_initialized", "feature_completed"] {
        eng.send(m, &wf, json!({})).await.expect("publish");
    }
    env.wait_state(&wf, "feature_handoff").await;
    let id = env.dead_letter_id(&early.header.message_id).await;
    let replay = || Command::DeadLetter {
        command: DeadLetterCommand::Replay {
            id: Some(id),
            reason: None,
            since: None,
            dry_run: false,
            force: false,
            note: None,
            by: "alice".into(),
        },
    };
    let out = cli::run(&env.settings(), replay()).await.expect("replay");
    assert!(out.contains("published again"), "{out}");
    env.wait_state(&wf, "testing").await;
    let replayed: bool =
        sqlx::query_scalar("SELECT replayed_at IS NOT NULL FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert!(replayed);

    // A second replay of a message applied since changes nothing, and is recorded.
    let again = cli::run(&env.settings(), replay())
        .await
        .expect("replay again");
    assert!(again.contains("changes nothing"), "{again}");
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM dead_letter_replays WHERE dead_letter_id = {id}"
        ))
        .await,
        2
    );
    // Applied once: one testing_started in the history, whatever the replays.
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'accepted'",
            early.header.message_id
        ),
        1,
    )
    .await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM workflow_events WHERE workflow_id = '{wf}' AND message_type = 'testing_started'"
        ))
        .await,
        1
    );
    assert_eq!(env.workflow_state(&wf).await.as_deref(), Some("testing"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_by_filter_shown_whole_and_resolved_with_a_note() {
    use clap::Parser;
    use coordinator::cli::{Cli, Command, DeadLetterCommand};
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO dead_letters (message_id, reason, detail, routing_key, body, body_json, received_at)
         VALUES ('m-old', 'malformed_json', 'expected value at line 1', 'product-director.requirements_ready',
                 'not json', NULL, now() - interval '3 hours'),
                ('m-new', 'unknown_message_type', 'no such type', 'qa-director.nonsense',
                 '{\"header\":{\"message_id\":\"m-new\"}}', '{\"header\":{\"message_id\":\"m-new\"}}', now())",
    )
    .execute(&env.pool)
    .await
    .expect("dead letters");
    // The AMQP properties as the coordinator records them (DeliveryMeta).
    sqlx::query(
        "UPDATE dead_letters SET properties = '{\"routing_key\": \"qa-director.nonsense\", \"message_id\": \"m-new\",
           \"kind\": \"nonsense\", \"app_id\": \"qa-1\", \"timestamp\": 1796000000, \"content_type\": null}'
         WHERE message_id = 'm-new'",
    )
    .execute(&env.pool)
    .await
    .expect("dead letters");
    let settings = env.settings();
    let run = |args: &[&str]| {
        let cli = Cli::try_parse_from(["coordinator", "dead-letter"].iter().chain(args.iter()))
            .expect("arguments parse");
        let settings = settings.clone();
        async move { coordinator::cli::run(&settings, cli.command).await }
    };
    let recent = run(&["list", "--since", "1h"]).await.expect("list");
    assert!(
        recent.contains("m-new") && !recent.contains("m-old"),
        "{recent}"
    );
    let malformed = run(&["list", "--reason", "malformed_json"])
        .await
        .expect("list");
    assert!(
        malformed.contains("m-old") && !malformed.contains("m-new"),
        "{malformed}"
    );

    let new_id = env
        .scalar_i64("SELECT id FROM dead_letters WHERE message_id = 'm-new'")
        .await;
    let shown = run(&["show", &new_id.to_string()]).await.expect("show");
    assert!(shown.contains("unknown_message_type"), "{shown}");
    assert!(
        shown.contains("\"message_id\": \"m-new\""),
        "body pretty-printed: {shown}"
    );
    assert!(shown.contains("replays:     none"), "{shown}");
    // The AMQP type property is called type, and the timestamp is a time.
    assert!(shown.contains("  type:           nonsense"), "{shown}");
    assert!(!shown.contains("kind"), "{shown}");
    assert!(
        shown.contains("timestamp:      2026-11-30 00:53:20 (1796000000)"),
        "{shown}"
    );

    let out = run(&[
        "resolve",
        &new_id.to_string(),
        "--note",
        "agent fixed in v2",
    ])
    .await
    .expect("resolve");
    assert!(out.contains("resolved"), "{out}");
    let unresolved = run(&["list", "--unresolved"]).await.expect("list");
    assert!(
        unresolved.contains("m-old") && !unresolved.contains("m-new"),
        "{unresolved}"
    );
    let shown = run(&["show", &new_id.to_string()]).await.expect("show");
    assert!(shown.contains("agent fixed in v2"), "{shown}");
    // Resolved once: a second note does not silently replace the first.
    let again = run(&["resolve", &new_id.to_string(), "--note", "another reason"])
        .await
        .expect_err("already resolved");
    assert!(
        again.to_string().contains("agent fixed in v2") && again.to_string().contains("--replace"),
        "{again}"
    );
    let shown = run(&["show", &new_id.to_string()]).await.expect("show");
    assert!(shown.contains("agent fixed in v2"), "{shown}");
    let out = run(&[
        "resolve",
        &new_id.to_string(),
        "--note",
        "agent fixed in v3",
        "--replace",
    ])
    .await
    .expect("resolve --replace");
    assert!(
        out.contains("replacing the note \"agent fixed in v2\""),
        "{out}"
    );
    let shown = run(&["show", &new_id.to_string()]).await.expect("show");
    assert!(shown.contains("agent fixed in v3"), "{shown}");

    let missing = run(&["show", "999999"]).await.expect_err("no such id");
    assert!(
        missing.to_string().contains("no dead letter 999999"),
        "{missing}"
    );
    let bad = Cli::try_parse_from([
        "coordinator",
        "dead-letter",
        "list",
        "--since",
        "yesterday-ish",
    ])
    .expect_err("a bad --since is refused");
    assert!(bad.to_string().contains("neither a time"), "{bad}");
    // replay needs an id or --reason; --since only narrows --reason.
    assert!(Cli::try_parse_from(["coordinator", "dead-letter", "replay"]).is_err());
    assert!(
        Cli::try_parse_from(["coordinator", "dead-letter", "replay", "1", "--since", "1h"])
            .is_err()
    );
    assert!(matches!(
        Cli::try_parse_from(["coordinator", "dead-letter", "replay", "7"]).map(|c| c.command),
        Ok(Command::DeadLetter {
            command: DeadLetterCommand::Replay {
                id: Some(7),
                reason: None,
                since: None,
                dry_run: false,
                force: false,
                note: None,
                ..
            }
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_says_what_a_replay_would_do_and_a_replay_by_reason_applies_every_match() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let wfs = ["wf-dry-1", "wf-dry-2"];
    for wf in wfs {
        product
            .send("requirements_ready", wf, json!({}))
            .await
            .expect("publish");
        // QA starts testing too early: rejected.
        qa.send("testing_started", wf, json!({}))
            .await
            .expect("publish");
        let notice = expect_next(&mut qa, Queue::Commands).await;
        assert_eq!(notice.payload.data["reason"], "not_accepted_in_state");
    }
    let settings = env.settings();
    let first: i64 = env
        .scalar_i64("SELECT min(id) FROM dead_letters WHERE reason = 'not_accepted_in_state'")
        .await;

    // Too early still: the dry run says it would be rejected again.
    let dry_run = || Command::DeadLetter {
        command: DeadLetterCommand::Replay {
            id: Some(first),
            reason: None,
            since: None,
            dry_run: true,
            force: false,
            note: None,
            by: "alice".into(),
        },
    };
    // As an operator runs it: the binary, the shipped log filter. A dry run logs no
    // warning (nothing is rejected, it only says what would be) and uses up no id.
    let ids_used = "SELECT last_value FROM dead_letters_id_seq";
    let ids_before = env.scalar_i64(ids_used).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["dead-letter", "replay", "--dry-run", &first.to_string()])
        .env("COORDINATOR_ENV", "test")
        .env("RUST_LOG", "info")
        .env("COORDINATOR__DATABASE__URL", &env.db_url)
        .env("COORDINATOR__AMQP__URL", &env.amqp_url)
        .output()
        .expect("the binary runs");
    let (early, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{early}\n{log}");
    assert!(
        early.contains("would be rejected again: not_accepted_in_state"),
        "{early}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    assert_eq!(
        env.scalar_i64(ids_used).await,
        ids_before,
        "a dry run used up dead-letter ids"
    );

    for wf in wfs {
        for m in ["sprint_initialized", "feature_completed"] {
            eng.send(m, wf, json!({})).await.expect("publish");
        }
        env.wait_state(wf, "feature_handoff").await;
    }
    let now = cli::run(&settings, dry_run()).await.expect("dry run");
    assert!(
        now.contains("would be accepted: feature_handoff → testing"),
        "{now}"
    );
    // Nothing committed by the dry runs.
    assert_eq!(
        env.workflow_state(wfs[0]).await.as_deref(),
        Some("feature_handoff")
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letter_replays")
            .await,
        0
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL")
            .await,
        0
    );

    // Every unresolved dead letter with the reason, replayed in one command.
    let cli = <coordinator::cli::Cli as clap::Parser>::try_parse_from([
        "coordinator",
        "dead-letter",
        "replay",
        "--reason",
        "not_accepted_in_state",
    ])
    .expect("arguments parse");
    let out = coordinator::cli::run(&settings, cli.command)
        .await
        .expect("replay by reason");
    assert_eq!(out.matches("published again").count(), 2, "{out}");
    for wf in wfs {
        env.wait_state(wf, "testing").await;
    }
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letter_replays")
            .await,
        2
    );

    // A letter an operator resolved is replayed only with a word about it.
    let resolve = Command::DeadLetter {
        command: DeadLetterCommand::Resolve {
            id: first,
            note: "handled by hand".into(),
            replace: false,
            by: "bob".into(),
        },
    };
    cli::run(&settings, resolve).await.expect("resolve");
    let by: Option<String> =
        sqlx::query_scalar("SELECT resolved_by FROM dead_letters WHERE id = $1")
            .bind(first)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(by.as_deref(), Some("bob"), "the operator is recorded");
    let replay = Command::DeadLetter {
        command: DeadLetterCommand::Replay {
            id: Some(first),
            reason: None,
            since: None,
            dry_run: false,
            force: false,
            note: None,
            by: "alice".into(),
        },
    };
    let out = cli::run(&settings, replay).await.expect("replay");
    assert!(
        out.contains("it had been resolved at") && out.contains("handled by hand"),
        "{out}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_nobody_worked_are_raised_to_management_once() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO dead_letters (message_id, reason, detail, routing_key, body, received_at, replayed_at, resolved_at)
         VALUES ('m-stale', 'unknown_agent', 'x', 'k', '', now() - interval '2 hours', NULL, NULL),
                ('m-replayed', 'unknown_agent', 'x', 'k', '', now() - interval '2 hours', now(), NULL),
                ('m-resolved', 'unknown_agent', 'x', 'k', '', now() - interval '2 hours', NULL, now()),
                ('m-fresh', 'unknown_agent', 'x', 'k', '', now() - interval '10 minutes', NULL, NULL)",
    )
    .execute(&env.pool)
    .await
    .expect("dead letters");
    let shared = coordinator::service::runtime::Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    let escalator = coordinator::service::dead_letters::Escalator::of(&shared);
    assert_eq!(escalator.step().await.expect("step"), 1);
    let (key, body): (String, Vec<u8>) = sqlx::query_as(
        "SELECT routing_key, body FROM outbox WHERE message_type = 'dead_letters_unresolved'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("one notice");
    assert_eq!(key, "escalation.high.management");
    let notice: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let data = &notice["payload"]["data"];
    assert_eq!(data["count"], 1);
    assert_eq!(data["dead_letters"][0]["message_id"], "m-stale");
    // Once: the next step finds nothing new.
    assert_eq!(escalator.step().await.expect("step"), 0);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM outbox WHERE message_type = 'dead_letters_unresolved'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_definitions_business_key_is_bounded_before_it_reaches_its_index() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let _app = env.start_with(settings.clone()).await;
    let max = settings.limits.max_key_bytes;
    let defs: Vec<_> = settings.workflows.iter().collect();
    assert!(defs.len() >= 5, "the shipped definitions are loaded");
    for def in defs {
        let Some(key) = def.key else { continue };
        let sender = env
            .agent(&format!("{}-sender", def.name), def.start.from)
            .await;
        // A 12 KB key: refused at admission as too_large, naming the field.
        let huge = sender
            .send(
                def.start.message,
                &format!("{}-huge", def.name),
                json!({ key: "K".repeat(12 * 1024) }),
            )
            .await
            .expect("publish");
        let id = env.dead_letter_id(&huge.header.message_id).await;
        let (reason, detail): (String, String) =
            sqlx::query_as("SELECT reason, detail FROM dead_letters WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .expect("the dead letter");
        assert_eq!(reason, "too_large", "{}: {detail}", def.name);
        assert!(
            detail.contains(&format!("payload.data.{key} is 12288 bytes; at most {max}")),
            "{}: {detail}",
            def.name
        );
        // One of the longest allowed starts its workflow and keeps its key.
        let wf = format!("{}-fits", def.name);
        sender
            .send(def.start.message, &wf, json!({ key: "K".repeat(max) }))
            .await
            .expect("publish");
        env.wait_state(&wf, def.start.state).await;
        assert_eq!(
            env.scalar_i64(&format!(
                "SELECT length(business_key)::int8 FROM workflows WHERE id = '{wf}'"
            ))
            .await,
            max as i64,
            "{}",
            def.name
        );
    }
}
