//! SLA clocks against the real services: breaches reach on-call once, met clocks never
//! fire, warnings, the escalation ladder and its acknowledgement, restarts, several
//! coordinators, and operators moving deadlines.

use coordinator::cli::{self, Command, EscalationCommand, SlaCommand};
use test_support as common;

use std::time::Duration;

use agent::{AgentClient, Queue};
use chrono::{DateTime, Utc};
use common::{expect_next, TestEnv, WAIT};
use coordinator::settings::Settings;
use protocol::envelope::Priority;
use serde_json::json;

const ONCALL: &str = "oncall.escalations";

fn dur(s: &str) -> humantime_serde::Serde<Duration> {
    humantime::parse_duration(s).expect("duration").into()
}

/// Test settings with some clocks shortened and every ladder level waiting `wait`.
fn fast(env: &TestEnv, clocks: &[(&str, &str)], wait: &str) -> Settings {
    let mut s = env.settings();
    for (clock, d) in clocks {
        s.sla.durations.insert(clock.to_string(), dur(d));
    }
    s.escalation.waits = vec![dur(wait), dur(wait), dur(wait)];
    s.escalation.severity.clear();
    s.validate().expect("valid test settings");
    s
}

async fn next_oncall(reader: &mut AgentClient) -> (String, protocol::envelope::Envelope) {
    reader
        .next_with_key(ONCALL, WAIT)
        .await
        .expect("read on-call")
        .unwrap_or_else(|| panic!("nothing reached {ONCALL} within {WAIT:?}"))
}

/// One timestamp from the test's database.
async fn time_of(env: &TestEnv, sql: &str) -> DateTime<Utc> {
    sqlx::query_scalar::<_, Option<DateTime<Utc>>>(sql)
        .fetch_one(&env.pool)
        .await
        .expect("query")
        .unwrap_or_else(|| panic!("no time from {sql}"))
}

/// Waits until the database clock is `margin` past a clock's deadline.
async fn wait_past_deadline(env: &TestEnv, workflow: &str, clock: &str, margin_ms: i64) {
    let sql = format!(
        "SELECT count(*) FROM sla_clocks WHERE workflow_id = '{workflow}' AND clock = '{clock}'
           AND now() > due_at + interval '{margin_ms} milliseconds'"
    );
    env.wait_count(&sql, 1).await;
}

async fn to_feature_handoff(
    product: &AgentClient,
    eng: &AgentClient,
    qa: &mut AgentClient,
    wf: &str,
) {
    product
        .send("requirements_ready", wf, json!({"epic_id": "EPIC-SLA"}))
        .await
        .expect("publish");
    for m in [
        "feasibility_assessed",
        "effort_estimated",
        "sprint_initialized",
        "feature_completed",
    ] {
        eng.send(m, wf, json!({})).await.expect("publish");
    }
    let t = expect_next(qa, Queue::Tasks).await;
    assert_eq!(t.header.message_type, "feature_handoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_reaches_oncall_once_with_its_routing_key_and_payload() {
    let env = TestEnv::new().await;
    let app = env
        .start_with(fast(
            &env,
            &[("technical_feasibility_assessment", "1s")],
            "1h",
        ))
        .await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    product
        .send("requirements_ready", "wf-late", json!({}))
        .await
        .expect("publish");
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "requirements_handoff");
    assert_eq!(task.header.priority, Some(Priority::Normal));

    let (key, esc) = next_oncall(&mut oncall).await;
    assert_eq!(key, "escalation.high.engineering-director");
    assert_eq!(esc.header.message_type, "sla_breached");
    assert_eq!(
        esc.header.priority,
        Some(Priority::High),
        "as urgent as its severity"
    );
    assert_eq!(esc.header.correlation_id, "wf-late");
    let d = &esc.payload.data;
    assert_eq!(d["workflow_id"], "wf-late");
    assert_eq!(d["clock"], "technical_feasibility_assessment");
    assert_eq!(d["owner_role"], "engineering-director");
    assert_eq!(d["level"], 1);
    assert_eq!(d["severity"], "high");
    let due: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(d["due_at"].clone()).expect("due_at");
    let breached: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(d["breached_at"].clone()).expect("breached_at");
    assert!(breached >= due, "breached {breached} before due {due}");

    // The owner hears it too: a warning at 80 %, then the breach notice.
    let warning = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(warning.header.message_type, "sla_warning");
    assert_eq!(
        warning.payload.data["clock"],
        "technical_feasibility_assessment"
    );
    let notice = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(notice.header.message_type, "sla_breached");

    // Once: no second escalation (the ladder waits an hour), one row, clock breached,
    // also after the timer read its deadlines again from the database.
    app.shared.signals.timers_changed();
    env.assert_nothing_more(&[&app], Utc::now(), &mut oncall, ONCALL)
        .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM escalations").await, 1);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sla_clocks WHERE status = 'breached'")
            .await,
        1
    );
    let body = common::http_get(app.http, "/metrics")
        .await
        .expect("metrics")
        .1;
    for series in [
        "coordinator_sla_timer_lateness_seconds_count{kind=\"breach\"} 1",
        // By clock and owner role: the warning at 80 %, then the breach.
        "coordinator_sla_warnings_total{clock=\"technical_feasibility_assessment\",role=\"engineering-director\"} 1",
        "coordinator_sla_breaches_total{clock=\"technical_feasibility_assessment\",role=\"engineering-director\"} 1",
        // The one handoff (requirements_ready → the engineering director's task),
        // timed to its confirm; the timer's notices are not handoffs.
        "coordinator_handoff_latency_seconds_count{kind=\"feature_delivery\"} 1",
        "coordinator_messages_by_type_total{outcome=\"accepted\",type=\"requirements_ready\"} 1",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_time_scale_the_owner_is_warned_once_and_a_met_clock_never_fires() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    // Four hours of testing_start in two seconds; everything else scales too.
    s.sla.time_scale = 2.0 / (4.0 * 3600.0);
    let app = env.start_with(s).await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    to_feature_handoff(&product, &eng, &mut qa, "wf-warn").await;

    let warning = expect_next(&mut qa, Queue::Tasks).await;
    assert_eq!(warning.header.message_type, "sla_warning");
    assert_eq!(warning.payload.data["clock"], "testing_start");
    assert!(
        warning.payload.data["remaining_seconds"]
            .as_f64()
            .expect("remaining")
            < 0.5
    );
    qa.send("testing_started", "wf-warn", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE clock = 'testing_start' AND status = 'met'",
        1,
    )
    .await;

    // Past the met clock's deadline, nothing reached on-call and the owner was warned once.
    let due = time_of(
        &env,
        "SELECT due_at FROM sla_clocks WHERE workflow_id = 'wf-warn' AND clock = 'testing_start'",
    )
    .await;
    env.assert_nothing_more(&[&app], due, &mut oncall, ONCALL)
        .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM escalations").await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflow_events WHERE message_type = 'sla_warning'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_climbs_to_level_two_and_stops_when_acknowledged() {
    let env = TestEnv::new().await;
    // On-call acknowledges over AMQP as an agent of a role named after its ladder level.
    let mut settings = fast(&env, &[("testing_start", "300ms")], "1500ms");
    settings.roles.insert("oncall".into(), Default::default());
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let pager = env.agent_with(&settings, "pager-1", "oncall").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    to_feature_handoff(&product, &eng, &mut qa, "wf-ladder").await;

    let (key1, l1) = next_oncall(&mut oncall).await;
    assert_eq!(key1, "escalation.high.qa-director");
    assert_eq!(l1.payload.data["level"], 1);
    let (key2, l2) = next_oncall(&mut oncall).await;
    assert_eq!(key2, "escalation.high.oncall", "level 2 pages on-call");
    assert_eq!(l2.header.message_type, "sla_breached");
    assert_eq!(l2.payload.data["level"], 2);
    assert_eq!(
        l2.payload.data["chain_id"],
        l1.payload.data["escalation_id"]
    );

    let level_three_due = time_of(
        &env,
        &format!(
            "SELECT next_level_at FROM escalations WHERE id = {}",
            l2.payload.data["escalation_id"]
        ),
    )
    .await;
    // Level two paged on-call: the owner role may no longer acknowledge, on-call may.
    qa.send(
        "escalation_acknowledged",
        "wf-ladder",
        json!({"escalation_id": l2.payload.data["escalation_id"]}),
    )
    .await
    .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'unauthorized' AND source_agent_id = 'qa-1'",
        1,
    )
    .await;
    pager
        .send(
            "escalation_acknowledged",
            "wf-ladder",
            json!({"escalation_id": l2.payload.data["escalation_id"]}),
        )
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE acknowledged_by = 'pager-1'",
        2,
    )
    .await;
    env.assert_nothing_more(&[&app], level_three_due, &mut oncall, ONCALL)
        .await;
    assert_eq!(
        env.scalar_i64("SELECT max(level)::bigint FROM escalations")
            .await,
        2
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflow_events WHERE message_type = 'escalation_acknowledged'"
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acknowledgement_from_the_cli_stops_the_ladder_at_level_one() {
    let env = TestEnv::new().await;
    let app = env
        .start_with(fast(
            &env,
            &[("technical_feasibility_assessment", "300ms")],
            "1500ms",
        ))
        .await;
    let product = env.agent("product-1", "product-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    product
        .send("requirements_ready", "wf-cli-ack", json!({}))
        .await
        .expect("publish");
    let (_, l1) = next_oncall(&mut oncall).await;
    let id = l1.payload.data["escalation_id"].as_i64().expect("id");
    let level_two_due = time_of(
        &env,
        &format!("SELECT next_level_at FROM escalations WHERE id = {id}"),
    )
    .await;
    let ack = || Command::Escalation {
        command: EscalationCommand::Ack {
            id,
            by: "alice".into(),
        },
    };
    let out = cli::run(&env.settings(), ack()).await.expect("ack");
    assert!(out.contains("its ladder stops"), "{out}");
    let again = cli::run(&env.settings(), ack()).await.expect("ack twice");
    assert!(again.contains("already acknowledged"), "{again}");
    env.assert_nothing_more(&[&app], level_two_due, &mut oncall, ONCALL)
        .await;
    let by: String = sqlx::query_scalar("SELECT acknowledged_by FROM escalations WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(by, "alice");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_that_passed_while_the_service_was_down_fire_at_once_after_restart() {
    let env = TestEnv::new().await;
    let settings = fast(&env, &[("technical_feasibility_assessment", "3s")], "1h");
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    for wf in ["wf-down-1", "wf-down-2"] {
        product
            .send("requirements_ready", wf, json!({}))
            .await
            .expect("publish");
    }
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE clock = 'technical_feasibility_assessment'",
        2,
    )
    .await;
    app.stop().await;
    for wf in ["wf-down-1", "wf-down-2"] {
        wait_past_deadline(&env, wf, "technical_feasibility_assessment", 200).await;
    }
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sla_clocks WHERE status = 'breached'")
            .await,
        0,
        "nothing fires while the service is down"
    );

    let app = env.start_with(settings).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let (_, esc) = next_oncall(&mut oncall).await;
        assert_eq!(
            esc.payload.data["clock"],
            "technical_feasibility_assessment"
        );
        seen.insert(esc.header.correlation_id);
    }
    assert_eq!(seen.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_fire_each_breach_once() {
    let env = TestEnv::new().await;
    let mut settings = fast(
        &env,
        &[("technical_feasibility_assessment", "1500ms")],
        "1h",
    );
    // A short window, so both instances hold every deadline and race for it.
    settings.timers.window = Duration::from_millis(800);
    let a = env.start_with(settings.clone()).await;
    let b = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    let n = 6;
    for i in 0..n {
        product
            .send("requirements_ready", &format!("wf-pair-{i}"), json!({}))
            .await
            .expect("publish");
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (_, esc) = next_oncall(&mut oncall).await;
        assert!(
            seen.insert(esc.header.correlation_id.clone()),
            "second breach for {}",
            esc.header.correlation_id
        );
    }
    // Both held every deadline; neither fires one again once both have passed them all.
    env.assert_nothing_more(&[&a, &b], Utc::now(), &mut oncall, ONCALL)
        .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM escalations").await, n);
    let fired_by_each = (
        a.shared
            .metrics
            .timer_lateness
            .with_label_values(&["breach"])
            .get_sample_count(),
        b.shared
            .metrics
            .timer_lateness
            .with_label_values(&["breach"])
            .get_sample_count(),
    );
    assert_eq!(
        fired_by_each.0 + fired_by_each.1,
        n as u64,
        "{fired_by_each:?}"
    );
    eprintln!("breaches fired by each instance: {fired_by_each:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_snooze_and_cancel_clocks_and_each_change_is_history() {
    let env = TestEnv::new().await;
    let settings = fast(
        &env,
        &[
            ("technical_feasibility_assessment", "2s"),
            ("effort_estimation", "1h"),
        ],
        "1h",
    );
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    product
        .send("requirements_ready", "wf-ops", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE workflow_id = 'wf-ops'",
        3,
    )
    .await;
    let id_of = |clock: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM sla_clocks WHERE clock = $1")
                .bind(clock)
                .fetch_one(&pool)
                .await
                .expect("clock id")
        }
    };
    let feasibility = id_of("technical_feasibility_assessment").await;
    let effort = id_of("effort_estimation").await;

    let out = coordinator::cli::run(
        &settings,
        coordinator::cli::Command::Sla {
            command: coordinator::cli::SlaCommand::List {
                overdue: false,
                workflow: None,
                limit: 10,
            },
        },
    )
    .await
    .expect("sla list");
    assert!(
        out.contains("technical_feasibility_assessment") && out.contains("wf-ops"),
        "{out}"
    );

    // Snoozed an hour: its original deadline passes without a breach.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let snooze = |clock: i64, until, reason: &str| Command::Sla {
        command: SlaCommand::Snooze {
            clock,
            until: Some(until),
            for_: None,
            reason: reason.into(),
            by: "alice".into(),
        },
    };
    cli::run(&settings, snooze(feasibility, later, "waiting on vendor"))
        .await
        .expect("snooze");
    // Its original deadline was armed_at + 2 s.
    env.wait_count(
        &format!("SELECT count(*) FROM sla_clocks WHERE id = {feasibility} AND now() > armed_at + interval '2500 milliseconds'"),
        1,
    )
    .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM escalations").await, 0);

    // Moved earlier, the effort clock fires promptly: timers reload on NOTIFY, not in 30 s.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    cli::run(&settings, snooze(effort, soon, "pulled in"))
        .await
        .expect("snooze earlier");
    let (_, esc) = next_oncall(&mut oncall).await;
    assert_eq!(esc.payload.data["clock"], "effort_estimation");

    let out = coordinator::cli::run(
        &settings,
        coordinator::cli::Command::Sla {
            command: coordinator::cli::SlaCommand::Cancel {
                clock: feasibility,
                reason: "descoped".into(),
                by: "bob".into(),
            },
        },
    )
    .await
    .expect("cancel");
    assert!(out.contains("cancelled"), "{out}");
    let status: String = sqlx::query_scalar("SELECT status FROM sla_clocks WHERE id = $1")
        .bind(feasibility)
        .fetch_one(&env.pool)
        .await
        .expect("status");
    assert_eq!(status, "cancelled");
    let history: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT message_type, source_agent_id, detail->>'reason' FROM workflow_events
         WHERE workflow_id = 'wf-ops' AND source_agent_id <> 'coordinator' AND message_type LIKE 'sla_%' ORDER BY seq",
    )
    .fetch_all(&env.pool)
    .await
    .expect("history");
    assert_eq!(
        history,
        vec![
            (
                "sla_snoozed".into(),
                "alice".into(),
                Some("waiting on vendor".into())
            ),
            (
                "sla_snoozed".into(),
                "alice".into(),
                Some("pulled in".into())
            ),
            (
                "sla_cancelled".into(),
                "bob".into(),
                Some("descoped".into())
            ),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ladder_step_due_while_the_service_was_down_fires_after_restart() {
    let env = TestEnv::new().await;
    let settings = fast(&env, &[("technical_feasibility_assessment", "300ms")], "2s");
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;
    product
        .send("requirements_ready", "wf-ladder-down", json!({}))
        .await
        .expect("publish");
    let (_, l1) = next_oncall(&mut oncall).await;
    assert_eq!(l1.payload.data["level"], 1);
    app.stop().await;

    // Level 2 was due 2 s after level 1; let that pass with nobody running.
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE level = 1 AND now() > next_level_at + interval '200 milliseconds'",
        1,
    )
    .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM escalations").await, 1);

    let app = env.start_with(settings).await;
    let (key, l2) = next_oncall(&mut oncall).await;
    assert_eq!(key, "escalation.high.oncall");
    assert_eq!(l2.payload.data["level"], 2);
    assert_eq!(
        l2.payload.data["chain_id"],
        l1.payload.data["escalation_id"]
    );
    app.stop().await;
}
