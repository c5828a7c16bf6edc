//! The feature-delivery workflow end to end, with simulated agents speaking AMQP.

use test_support as common;

use std::collections::BTreeSet;

use agent::{AgentClient, Queue};
use common::{expect_next, expect_no_more, TestEnv};
use protocol::envelope::Envelope;
use serde_json::json;

struct Team {
    product: AgentClient,
    eng: AgentClient,
    qa: AgentClient,
    devops: AgentClient,
    marketing: AgentClient,
}

impl Team {
    async fn new(env: &TestEnv) -> Team {
        Team {
            product: env.agent("product-1", "product-director").await,
            eng: env.agent("eng-1", "engineering-director").await,
            qa: env.agent("qa-1", "qa-director").await,
            devops: env.agent("devops-1", "devops-manager").await,
            marketing: env.agent("marketing-1", "marketing-director").await,
        }
    }
}

/// Reads `n` messages of one type from a queue and returns their workflow ids.
async fn collect(
    agent: &mut AgentClient,
    queue: Queue,
    message_type: &str,
    n: usize,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let env = expect_next(agent, queue).await;
        assert_eq!(
            env.header.message_type, message_type,
            "{}: {env:?}",
            agent.agent_id
        );
        assert_eq!(env.header.source.agent_id, "coordinator");
        assert!(
            ids.insert(env.header.correlation_id.clone()),
            "second {message_type} for the same workflow"
        );
    }
    ids
}

async fn send(agent: &AgentClient, message_type: &str, wf: &str) -> Envelope {
    agent
        .send(
            message_type,
            wf,
            json!({"note": format!("{message_type} for {wf}")}),
        )
        .await
        .expect("publish")
}

/// Runs the happy path for every workflow in `wfs` in lock step, checking each handoff.
async fn happy_path(env: &TestEnv, team: &mut Team, wfs: &[String]) {
    let all: BTreeSet<String> = wfs.iter().cloned().collect();
    for wf in wfs {
        team.product
            .send(
                "requirements_ready",
                wf,
                json!({"epic_id": format!("EPIC-{wf}"), "title": "Login"}),
            )
            .await
            .expect("publish");
    }
    assert_eq!(
        collect(
            &mut team.eng,
            Queue::Tasks,
            "requirements_handoff",
            wfs.len()
        )
        .await,
        all
    );
    for wf in wfs {
        for m in [
            "handoff_acknowledged",
            "feasibility_assessed",
            "effort_estimated",
            "sprint_initialized",
            "feature_completed",
        ] {
            send(&team.eng, m, wf).await;
        }
    }
    assert_eq!(
        collect(&mut team.qa, Queue::Tasks, "feature_handoff", wfs.len()).await,
        all
    );
    for wf in wfs {
        for m in [
            "handoff_acknowledged",
            "testing_started",
            "testing_completed",
            "release_approved",
        ] {
            send(&team.qa, m, wf).await;
        }
    }
    assert_eq!(
        collect(&mut team.devops, Queue::Tasks, "release_handoff", wfs.len()).await,
        all
    );
    for wf in wfs {
        for m in [
            "handoff_acknowledged",
            "deployment_started",
            "deployment_completed",
            "validation_completed",
        ] {
            send(&team.devops, m, wf).await;
        }
    }
    assert_eq!(
        collect(
            &mut team.product,
            Queue::Tasks,
            "feature_deployed",
            wfs.len()
        )
        .await,
        all
    );
    assert_eq!(
        collect(
            &mut team.marketing,
            Queue::Tasks,
            "feature_deployed",
            wfs.len()
        )
        .await,
        all
    );
    for wf in wfs {
        env.wait_state(wf, "completed").await;
    }
}

fn wf_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("wf-{}", uuid::Uuid::new_v4()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_of_several_workflows_at_once() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut team = Team::new(&env).await;
    let wfs = wf_ids(3);
    happy_path(&env, &mut team, &wfs).await;

    for wf in &wfs {
        // 1 start + 5 engineering + 4 QA + 4 DevOps messages, each one history row.
        let events: i64 =
            sqlx::query_scalar("SELECT count(*) FROM workflow_events WHERE workflow_id = $1")
                .bind(wf)
                .fetch_one(&env.pool)
                .await
                .expect("count");
        assert_eq!(events, 14, "{wf}");
        let (epic, completed): (Option<String>, bool) =
            sqlx::query_as("SELECT epic_id, completed_at IS NOT NULL FROM workflows WHERE id = $1")
                .bind(wf)
                .fetch_one(&env.pool)
                .await
                .expect("workflow row");
        assert_eq!(epic.as_deref(), Some(format!("EPIC-{wf}").as_str()));
        assert!(completed);
        // Every clock of the happy path was met, none left armed.
        let statuses: Vec<(String, String)> = sqlx::query_as(
            "SELECT clock, status FROM sla_clocks WHERE workflow_id = $1 ORDER BY id",
        )
        .bind(wf)
        .fetch_all(&env.pool)
        .await
        .expect("clocks");
        assert_eq!(statuses.len(), 9, "{statuses:?}");
        assert!(statuses.iter().all(|(_, s)| s == "met"), "{statuses:?}");
    }
    // The owner of QA's clocks is the agent that acknowledged the handoff.
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT owner_agent_id FROM sla_clocks WHERE clock = 'testing_start' AND workflow_id = $1",
    )
    .bind(&wfs[0])
    .fetch_one(&env.pool)
    .await
    .expect("owner");
    assert_eq!(owner.as_deref(), Some("qa-1"));
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_changes_nothing_the_second_time() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut team = Team::new(&env).await;
    let wf = wf_ids(1).remove(0);

    // Each agent message is published twice, back to back, with the same message_id.
    async fn twice(agent: &AgentClient, m: &str, wf: &str) {
        let e = agent.envelope(m, wf, json!({"epic_id": "EPIC-DUP"}));
        agent.publish(&e).await.expect("publish");
        agent.publish(&e).await.expect("publish again");
    }
    twice(&team.product, "requirements_ready", &wf).await;
    expect_next(&mut team.eng, Queue::Tasks).await;
    for m in [
        "handoff_acknowledged",
        "sprint_initialized",
        "feature_completed",
    ] {
        twice(&team.eng, m, &wf).await;
    }
    expect_next(&mut team.qa, Queue::Tasks).await;
    for m in ["testing_started", "release_approved"] {
        twice(&team.qa, m, &wf).await;
    }
    expect_next(&mut team.devops, Queue::Tasks).await;
    for m in [
        "deployment_started",
        "deployment_completed",
        "validation_completed",
    ] {
        twice(&team.devops, m, &wf).await;
    }
    expect_next(&mut team.product, Queue::Tasks).await;
    expect_next(&mut team.marketing, Queue::Tasks).await;
    env.wait_state(&wf, "completed").await;

    // Every copy was consumed: 9 distinct messages, each processed once.
    env.wait_count("SELECT count(*) FROM processed_messages", 9)
        .await;
    let inbox_done = || async {
        let m = app
            .shared
            .metrics
            .messages
            .with_label_values(&["duplicate"])
            .get();
        (m == 9).then_some(())
    };
    common::eventually("9 duplicates to be counted", inbox_done).await;
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workflow_events WHERE workflow_id = $1")
            .bind(&wf)
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(events, 9, "one history row per distinct message");
    // One of each outgoing message, and no second task on any queue.
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 5);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
    for agent in [
        &mut team.eng,
        &mut team.qa,
        &mut team.devops,
        &mut team.product,
        &mut team.marketing,
    ] {
        expect_no_more(&env, agent, Queue::Tasks).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bug_discovered_loops_back_to_engineering_for_a_second_round() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut team = Team::new(&env).await;
    let wf = wf_ids(1).remove(0);

    team.product
        .send("requirements_ready", &wf, json!({"epic_id": "EPIC-BUG"}))
        .await
        .expect("publish");
    expect_next(&mut team.eng, Queue::Tasks).await;
    for m in ["sprint_initialized", "feature_completed"] {
        send(&team.eng, m, &wf).await;
    }
    let handoff = expect_next(&mut team.qa, Queue::Tasks).await;
    assert_eq!(handoff.payload.metadata["round"], 1);
    send(&team.qa, "testing_started", &wf).await;

    // A clarification first: engineering is asked, the workflow stays in testing.
    send(&team.qa, "clarification_needed", &wf).await;
    let ask = expect_next(&mut team.eng, Queue::Tasks).await;
    assert_eq!(ask.header.message_type, "clarification_request");
    assert_eq!(ask.header.correlation_id, wf);

    let bug = team
        .qa
        .send(
            "bug_discovered",
            &wf,
            json!({"bug_id": "BUG-7", "severity": "high"}),
        )
        .await
        .expect("publish");
    let report = expect_next(&mut team.eng, Queue::Tasks).await;
    assert_eq!(report.header.message_type, "bug_report");
    assert_eq!(
        report.header.causation_id.as_deref(),
        Some(bug.header.message_id.as_str())
    );
    assert_eq!(report.payload.data["bug_id"], "BUG-7");
    env.wait_state(&wf, "in_development").await;
    let round: i32 = sqlx::query_scalar("SELECT round FROM workflows WHERE id = $1")
        .bind(&wf)
        .fetch_one(&env.pool)
        .await
        .expect("round");
    assert_eq!(round, 2);
    // Round 1's QA clocks: testing_start and initial_feedback met, testing_completion cancelled.
    let r1: Vec<(String, String)> = sqlx::query_as(
        "SELECT clock, status FROM sla_clocks WHERE workflow_id = $1 AND owner_role = 'qa-director' AND round = 1 ORDER BY id",
    )
    .bind(&wf)
    .fetch_all(&env.pool)
    .await
    .expect("clocks");
    assert_eq!(
        r1,
        vec![
            ("testing_start".into(), "met".into()),
            ("initial_feedback".into(), "met".into()),
            ("testing_completion".into(), "cancelled".into())
        ]
    );

    // Round 2: the fixed feature goes back to QA and through to the end.
    send(&team.eng, "feature_completed", &wf).await;
    let handoff = expect_next(&mut team.qa, Queue::Tasks).await;
    assert_eq!(handoff.header.message_type, "feature_handoff");
    assert_eq!(handoff.payload.metadata["round"], 2);
    for m in ["testing_started", "release_approved"] {
        send(&team.qa, m, &wf).await;
    }
    expect_next(&mut team.devops, Queue::Tasks).await;
    for m in [
        "deployment_started",
        "deployment_completed",
        "validation_completed",
    ] {
        send(&team.devops, m, &wf).await;
    }
    env.wait_state(&wf, "completed").await;
    let armed = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM sla_clocks WHERE workflow_id = '{wf}' AND status = 'armed'"
        ))
        .await;
    assert_eq!(armed, 0, "a completed workflow leaves no clock armed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_failed_messages_escalate_to_oncall_at_once() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut team = Team::new(&env).await;
    let mut oncall = env.connect_as("oncall-reader", "qa-director").await;
    let wf = wf_ids(1).remove(0);
    team.product
        .send("requirements_ready", &wf, json!({"epic_id": "EPIC-BLK"}))
        .await
        .expect("publish");
    send(&team.eng, "sprint_initialized", &wf).await;
    let blocked = team
        .eng
        .send(
            "engineering_blocked",
            &wf,
            json!({"blocker": "no staging database"}),
        )
        .await
        .expect("publish");

    let esc = oncall
        .next_on("oncall.escalations", common::WAIT)
        .await
        .expect("read")
        .expect("an escalation reaches on-call");
    assert_eq!(esc.header.message_type, "escalation_raised");
    assert_eq!(esc.header.correlation_id, wf);
    assert_eq!(
        esc.header.causation_id.as_deref(),
        Some(blocked.header.message_id.as_str())
    );
    assert_eq!(esc.payload.data["reason"], "engineering_blocked");
    assert_eq!(esc.payload.data["severity"], "high");
    assert_eq!(esc.payload.data["owner_role"], "engineering-director");
    assert_eq!(esc.payload.data["detail"]["blocker"], "no staging database");
    let (severity, level): (String, i32) =
        sqlx::query_as("SELECT severity, level FROM escalations WHERE workflow_id = $1")
            .bind(&wf)
            .fetch_one(&env.pool)
            .await
            .expect("escalation row");
    assert_eq!((severity.as_str(), level), ("high", 1));
    assert_eq!(
        env.workflow_state(&wf).await.as_deref(),
        Some("in_development")
    );
    let _ = expect_next(&mut team.eng, Queue::Tasks).await; // requirements_handoff
    app.stop().await;
}
