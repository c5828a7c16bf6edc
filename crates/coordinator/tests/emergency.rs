//! Emergencies (docs/protocol.md section 7) against the real services.

use coordinator::cli::{self, Command, EmergencyCommand};
use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv, WAIT};
use protocol::envelope::Priority;
use serde_json::json;

fn short_acknowledgment(env: &TestEnv) -> coordinator::settings::Settings {
    let mut s = env.settings();
    s.sla.durations.insert(
        "acknowledgment".into(),
        humantime::parse_duration("1200ms").expect("d").into(),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_everyone_and_a_missing_acknowledgment_escalates_naming_the_agent() {
    let env = TestEnv::new().await;
    let app = env.start_with(short_acknowledgment(&env)).await;
    let mut product = env.agent("product-1", "product-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut devops = env.agent("devops-1", "devops-manager").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;

    let alert = product
        .send(
            "emergency_alert",
            "inc-1",
            json!({"severity": "critical", "description": "payments down"}),
        )
        .await
        .expect("publish");

    for agent in [&mut product, &mut qa, &mut eng, &mut devops] {
        let b = expect_next(agent, Queue::Commands).await;
        assert_eq!(
            b.header.message_type, "emergency_alert",
            "{}",
            agent.agent_id
        );
        assert_eq!(b.header.correlation_id, "inc-1");
        assert_eq!(
            b.header.causation_id.as_deref(),
            Some(alert.header.message_id.as_str())
        );
        assert_eq!(b.payload.data["description"], "payments down");
        assert_eq!(
            b.header.priority,
            Some(Priority::Critical),
            "broadcasts are critical"
        );
    }
    let (_, b) = oncall
        .next_with_key("oncall.escalations", WAIT)
        .await
        .expect("read")
        .expect("on-call gets it");
    assert_eq!(b.header.message_type, "emergency_alert");
    assert!(b.header.destination.as_ref().is_some_and(|d| d.broadcast));

    // Two of the three acknowledge; devops-1 does not.
    qa.send("emergency_acknowledged", "inc-1", json!({}))
        .await
        .expect("publish");
    eng.send("emergency_acknowledged", "inc-1", json!({}))
        .await
        .expect("publish");

    let (key, esc) = oncall
        .next_with_key("oncall.escalations", WAIT)
        .await
        .expect("read")
        .expect("escalation");
    assert_eq!(key, "escalation.critical.devops-manager");
    assert_eq!(esc.header.message_type, "sla_breached");
    assert_eq!(esc.payload.data["clock"], "acknowledgment");
    assert_eq!(esc.payload.data["agent_id"], "devops-1");
    assert_eq!(esc.payload.data["severity"], "critical");
    assert_eq!(esc.header.priority, Some(Priority::Critical));
    // devops-1 hears it on its own commands queue (a warning first), as critical.
    let mut types = Vec::new();
    for _ in 0..2 {
        let notice = expect_next(&mut devops, Queue::Commands).await;
        assert_eq!(
            notice.header.priority,
            Some(Priority::Critical),
            "emergency notices are critical"
        );
        types.push(notice.header.message_type);
    }
    assert_eq!(types, ["sla_warning", "sla_breached"]);

    let show = Command::Emergency {
        command: EmergencyCommand::Show { id: "inc-1".into() },
    };
    let shown = cli::run(&env.settings(), show).await.expect("show");
    eprintln!("{shown}");
    let line = |agent: &str| {
        shown
            .lines()
            .find(|l| l.contains(agent))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("qa-1").contains("acknowledged"), "{shown}");
    assert!(line("eng-1").contains("acknowledged"), "{shown}");
    assert!(line("devops-1").contains("MISSED"), "{shown}");
    assert!(
        !shown.contains("product-1"),
        "the raiser is not asked to acknowledge its own alert"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_status_updates_meet_their_clocks_and_resolution_closes_everything() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let devops = env.agent("devops-1", "devops-manager").await;
    let qa = env.agent("qa-1", "qa-director").await;
    devops
        .send(
            "emergency_alert",
            "inc-2",
            json!({"description": "disk full"}),
        )
        .await
        .expect("publish");
    env.wait_state("inc-2", "active").await;
    qa.send("emergency_acknowledged", "inc-2", json!({}))
        .await
        .expect("publish");
    devops
        .send(
            "emergency_response",
            "inc-2",
            json!({"action": "rotating logs"}),
        )
        .await
        .expect("publish");
    devops
        .send("emergency_status_update", "inc-2", json!({"progress": 50}))
        .await
        .expect("publish");
    devops
        .send("emergency_status_update", "inc-2", json!({"progress": 90}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE workflow_id = 'inc-2' AND clock = 'status_update'",
        3,
    )
    .await;
    let clocks: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT clock, round, status FROM sla_clocks WHERE workflow_id = 'inc-2' ORDER BY clock, round",
    )
    .fetch_all(&env.pool)
    .await
    .expect("clocks");
    assert_eq!(
        clocks,
        vec![
            ("acknowledgment".into(), 1, "met".into()),
            ("initial_response".into(), 1, "met".into()),
            ("status_update".into(), 1, "met".into()),
            ("status_update".into(), 2, "met".into()),
            ("status_update".into(), 3, "armed".into()),
        ]
    );
    devops
        .send("emergency_resolved", "inc-2", json!({}))
        .await
        .expect("publish");
    env.wait_state("inc-2", "resolved").await;
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM sla_clocks WHERE workflow_id = 'inc-2' AND status = 'armed'"
        )
        .await,
        0
    );
    // Nothing is accepted after resolution.
    qa.send("emergency_status_update", "inc-2", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'not_accepted_in_state'",
        1,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_raises_an_emergency_from_the_cli() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let raise = |description: &str| Command::Emergency {
        command: EmergencyCommand::Raise {
            severity: "high".into(),
            description: description.into(),
            id: Some("inc-cli".into()),
            by: "alice".into(),
        },
    };
    let out = cli::run(&env.settings(), raise("certificate expires tonight"))
        .await
        .expect("raise");
    assert!(out.contains("2 acknowledgments awaited"), "{out}");
    for agent in [&mut qa, &mut eng] {
        let b = expect_next(agent, Queue::Commands).await;
        assert_eq!(b.header.message_type, "emergency_alert");
        assert_eq!(b.payload.data["raised_by"], "alice");
    }
    let again = cli::run(&env.settings(), raise("x"))
        .await
        .expect_err("an incident id is used once");
    assert!(again.to_string().contains("already exists"), "{again}");
    app.stop().await;
}
