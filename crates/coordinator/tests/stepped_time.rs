//! Time is injected: a manual clock, set years ahead of the database server's own
//! clock, is stepped through a clock's warning, its breach and every level of the
//! escalation ladder, with no waiting. The timer decides by the manual clock and the
//! SQL guards compare with the time it passes them: a guard that read the server's
//! `now()` would find nothing due in 2031. No broker: what the timer sends stays in the
//! outbox, where the test reads it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coordinator::clock::Clock;
use coordinator::engine::{Inbound, Outcome};
use coordinator::service::ops::Ops;
use coordinator::service::runtime::Shared;
use coordinator::service::{pipeline, timers};
use protocol::envelope::Envelope;
use serde_json::json;
use test_support::{ManualClock, TestEnv};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("a time")
}

fn hours(h: f64) -> Duration {
    Duration::from_secs_f64(h * 3600.0)
}

/// The outbox's messages of a type, by routing key, in the order written.
async fn sent(env: &TestEnv, message_type: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT routing_key FROM outbox WHERE message_type = $1 AND correlation_id = 'wf-time' ORDER BY id",
    )
    .bind(message_type)
    .fetch_all(&env.pool)
    .await
    .expect("outbox")
}

/// The escalations of the chain, (level, target, raised_at), in order.
async fn ladder(env: &TestEnv) -> Vec<(i32, String, DateTime<Utc>)> {
    sqlx::query_as("SELECT level, target, raised_at FROM escalations ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .expect("escalations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_clock_steps_a_clock_through_warning_breach_and_the_ladder_without_waiting() {
    let env = TestEnv::new().await;
    let t0 = t("2031-06-02T09:00:00Z");
    let clock = ManualClock::starting_at(t0);
    let shared = Arc::new(Shared::new(env.settings(), env.pool.clone(), clock.clone()));

    // The workflow starts at t0: engineering's three clocks are armed from t0 (the
    // feasibility assessment's 48 h, effort estimation's 72 h, sprint planning's 168 h).
    let start = Envelope::from_agent(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-time",
        json!({"epic_id": "EPIC-T", "title": "stepped time"}),
        t0,
    );
    let body = serde_json::to_vec(&start).expect("json");
    let meta = start.meta(&start.agent_routing_key());
    let out = pipeline::apply_shared(
        &shared,
        0,
        &[Inbound {
            body: &body,
            meta: &meta,
        }],
        t0,
    )
    .await
    .expect("applied");
    assert_eq!(out.results[0].outcome, Outcome::Accepted);
    let armed_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT min(armed_at) FROM sla_clocks WHERE workflow_id = 'wf-time'")
            .fetch_one(&env.pool)
            .await
            .expect("armed");
    assert_eq!(armed_at, t0, "clocks are armed at the injected time");

    let mut timer = timers::Timer::new(timers::Parts::of(&shared));

    // 38 h: nothing is due yet (the feasibility warning comes at 80 % of 48 h).
    clock.set(t0 + chrono::Duration::hours(38));
    assert_eq!(timer.step().await.expect("step").fired, 0);
    assert!(sent(&env, "sla_warning").await.is_empty());

    // 38.4 h: its owner is warned, once.
    clock.set(t0);
    clock.advance(hours(38.4));
    assert_eq!(timer.step().await.expect("step").fired, 1);
    assert_eq!(
        sent(&env, "sla_warning").await,
        ["task.engineering-director"]
    );
    let warned_at: DateTime<Utc> = sqlx::query_scalar(
        "SELECT warned_at FROM sla_clocks WHERE clock = 'technical_feasibility_assessment'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("warned");
    assert_eq!(warned_at, clock.now());
    assert_eq!(timer.step().await.expect("step").fired, 0, "warned once");

    // An operator moves effort estimation's deadline out by a week, on the same clock.
    let settings = env.settings();
    let effort: i64 =
        sqlx::query_scalar("SELECT id FROM sla_clocks WHERE clock = 'effort_estimation'")
            .fetch_one(&env.pool)
            .await
            .expect("effort clock");
    Ops::new(&settings, &env.pool, clock.as_ref())
        .snooze_clock(effort, t0 + chrono::Duration::hours(240), "vendor", "alice")
        .await
        .expect("snoozed");

    // 48 h: the clock breaches; the ladder starts at its owner.
    clock.set(t0 + chrono::Duration::hours(48));
    assert_eq!(timer.step().await.expect("step").fired, 1);
    let breach_at = clock.now();
    assert_eq!(
        sent(&env, "sla_breached").await,
        [
            "escalation.high.engineering-director",
            "task.engineering-director"
        ],
        "the escalation, and the owner's notice"
    );
    assert_eq!(
        ladder(&env).await,
        [(1, "engineering-director".to_string(), breach_at)]
    );

    // Each unacknowledged level climbs after its wait: 30 min, 30 min, then an hour,
    // and the last level repeats (raised again at level 3).
    for (wait, level, target) in [
        (0.5, 2, "oncall"),
        (0.5, 3, "management"),
        (1.0, 3, "management"),
    ] {
        clock.advance(hours(wait) - Duration::from_secs(1));
        assert_eq!(
            timer.step().await.expect("step").fired,
            0,
            "level {level} waits its full time"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(timer.step().await.expect("step").fired, 1, "level {level}");
        let l = ladder(&env).await;
        assert_eq!(
            l.last(),
            Some(&(level, target.to_string(), clock.now())),
            "{l:?}"
        );
    }

    // 72 h: effort estimation would have breached; it was snoozed, so it does not.
    clock.set(t0 + chrono::Duration::hours(72));
    timer.step().await.expect("step");
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT clock, status FROM sla_clocks WHERE workflow_id = 'wf-time' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("clocks");
    assert_eq!(
        statuses,
        [
            ("technical_feasibility_assessment".into(), "breached".into()),
            ("effort_estimation".into(), "armed".into()),
            ("sprint_planning".into(), "armed".into()),
        ]
    );
    // The database's own clock never reached any of these deadlines.
    let server_now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .expect("now");
    assert!(
        server_now < t0,
        "the server's clock is years behind the test's"
    );
}
