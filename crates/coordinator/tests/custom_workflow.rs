//! A workflow nobody wrote Rust for: the test invents a definition (engineering asks QA
//! for a code review; QA answers with its quality gate within a clock), writes it into
//! a temporary configuration folder, starts the coordinator on that folder and drives
//! the workflow with agents over the real broker: the task, the clock's breach and its
//! escalation, the answer that completes it, and the rows managers' SQL reads.

use test_support as common;

use std::time::Duration;

use agent::Queue;
use common::{expect_next, TestEnv, WAIT};
use serde_json::json;

const ONCALL: &str = "oncall.escalations";

/// The tests' code-review definition, its clock shortened to a second.
const REVIEW: &str = include_str!("fixtures/code_review.toml");

/// A temporary configuration folder, removed when dropped.
struct ConfigDir(std::path::PathBuf);

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_with(file: &str, text: &str) -> ConfigDir {
    let dir = std::env::temp_dir().join(format!("coordinator-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("workflows")).expect("config dir");
    std::fs::write(dir.join("workflows").join(file), text).expect("write definition");
    ConfigDir(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_defined_in_a_file_sends_its_task_breaches_its_clock_and_completes() {
    let env = TestEnv::new().await;
    assert!(REVIEW.contains("duration = \"2h\""));
    let config = config_with(
        "code_review.toml",
        &REVIEW.replace("duration = \"2h\"", "duration = \"1s\""),
    );
    let mut settings = env.settings_from(&config.0);
    let hour: humantime_serde::Serde<Duration> = Duration::from_secs(3600).into();
    settings.escalation.waits = vec![hour; 3];
    settings.escalation.severity.clear();
    assert!(
        settings.workflows.get("code_review").is_some(),
        "the folder's definition is read"
    );
    let _app = env.start_with(settings).await;

    let eng = env.agent("eng-1", "engineering-director").await;
    let mut qa = env.agent("qa-1", "qa-director").await;
    let mut oncall = env.connect_as("pager", "qa-director").await;

    eng.send("code_review_required", "cr-1", json!({"change_id": "CH-7"}))
        .await
        .expect("publish");
    let task = expect_next(&mut qa, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "code_review");
    assert_eq!(task.header.correlation_id, "cr-1");

    let (key, breach) = oncall
        .next_with_key(ONCALL, WAIT)
        .await
        .expect("read on-call")
        .unwrap_or_else(|| panic!("no breach reached {ONCALL} within {WAIT:?}"));
    assert_eq!(key, "escalation.high.qa-director");
    assert_eq!(breach.header.message_type, "sla_breached");
    assert_eq!(breach.payload.data["clock"], "review");
    assert_eq!(breach.payload.data["owner_role"], "qa-director");
    assert_eq!(breach.payload.data["workflow_id"], "cr-1");

    // The rows a manager reads: the workflow of its own kind, its breached clock, the
    // escalation against QA.
    env.wait_count(
        "SELECT count(*) FROM workflows WHERE id = 'cr-1' AND kind = 'code_review' AND state = 'reviewing'
           AND business_key = 'CH-7'",
        1,
    )
    .await;
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE workflow_id = 'cr-1' AND clock = 'review'
           AND owner_role = 'qa-director' AND status = 'breached'",
        1,
    )
    .await;
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE workflow_id = 'cr-1' AND clock = 'review'
           AND owner_role = 'qa-director' AND level = 1",
        1,
    )
    .await;

    // QA's answer takes it to its terminal state.
    qa.send("quality_gate_status", "cr-1", json!({"passed": true}))
        .await
        .expect("publish");
    env.wait_count(
        "SELECT count(*) FROM workflows WHERE id = 'cr-1' AND state = 'done' AND completed_at IS NOT NULL",
        1,
    )
    .await;
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflow_events WHERE workflow_id = 'cr-1'
               AND message_type IN ('code_review_required', 'quality_gate_status')"
        )
        .await,
        2
    );
}

/// The fixture as version 2: its terminal state renamed.
fn version_2() -> String {
    REVIEW
        .replace("version = 1", "version = 2")
        .replace("goto = \"done\"", "goto = \"approved\"")
        .replace("[states.done]", "[states.approved]")
}

async fn state_of(env: &TestEnv, id: &str, state: &str) {
    env.wait_count(
        &format!("SELECT count(*) FROM workflows WHERE id = '{id}' AND state = '{state}'"),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_definition_changes_only_workflows_started_afterwards_and_one_in_use_cannot_go() {
    let env = TestEnv::new().await;
    let v1 = config_with("code_review.toml", REVIEW);
    let app = env.start_with(env.settings_from(&v1.0)).await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let qa = env.agent("qa-1", "qa-director").await;
    eng.send("code_review_required", "cr-old", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-old", "reviewing").await;
    app.stop().await;

    // The file is edited; the service restarts on it.
    let v2 = config_with("code_review.toml", &version_2());
    let settings = env.settings_from(&v2.0);
    let app = env.start_with(settings.clone()).await;
    eng.send("code_review_required", "cr-new", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-new", "reviewing").await;
    for id in ["cr-old", "cr-new"] {
        qa.send("quality_gate_status", id, json!({}))
            .await
            .expect("publish");
    }
    state_of(&env, "cr-old", "done").await;
    state_of(&env, "cr-new", "approved").await;
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflows WHERE (id, definition_version) IN (('cr-old', 1), ('cr-new', 2))
               AND definition_hash IS NOT NULL"
        )
        .await,
        2,
        "each workflow keeps the version it started with"
    );

    // `workflow definitions` lists both versions and what uses them.
    eng.send("code_review_required", "cr-live", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-live", "reviewing").await;
    let listed = coordinator::cli::run(
        &settings,
        coordinator::cli::Command::Workflow {
            command: coordinator::cli::WorkflowCommand::Definitions,
        },
    )
    .await
    .expect("workflow definitions");
    let line = |version: &str| {
        listed
            .lines()
            .find(|l| l.starts_with("code_review") && l.split_whitespace().nth(1) == Some(version))
            .unwrap_or_else(|| panic!("no code_review version {version} in\n{listed}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // WORKFLOW VERSION HASH FIRST-RUN(date time) LIVE STARTED [current]
    assert_eq!(&line("1")[5..7], &["0", "1"], "{listed}");
    assert_eq!(&line("2")[5..], &["1", "2", "current"], "{listed}");
    app.stop().await;

    // Without the file, the live workflow's definition is gone: the service refuses to
    // start, naming the workflow and what to do.
    let none = config_with("unrelated.txt", "");
    let app = coordinator::app::App::build(env.settings_from(&none.0))
        .await
        .expect("app builds");
    let err = app
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refuses to start");
    let err = format!("{err:#}");
    assert!(
        err.contains(
            "workflow definition \"code_review\" is gone, and 1 live workflow(s) use it (cr-live)"
        ) && err.contains("config/workflows/code_review.toml"),
        "{err}"
    );
}

/// The fixture as a version 1 with more than the shipped fixture: a message QA may send
/// that escalates at once (`testing_results`, which no shipped definition consumes), and
/// a second clock (`gate`, two seconds). The fixture itself, renumbered 2, drops both.
fn richer_version_1() -> String {
    REVIEW
        .replace(
            "arms = [\"review\"]\non = [{ message = \"quality_gate_status\", goto = \"done\" }]",
            "arms = [\"review\", \"gate\"]\non = [\n  { message = \"quality_gate_status\", goto = \"done\" },\n  { message = \"testing_results\", escalate = \"high\" },\n]",
        )
        .replace(
            "[states.reviewing]",
            "[clocks.gate]\nowner = \"qa-director\"\nduration = \"2s\"\nmet_by = [\"quality_gate_status\"]\n\n[states.reviewing]",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_started_under_version_1_finish_under_it_after_version_2_drops_a_message_and_a_clock(
) {
    let env = TestEnv::new().await;
    let v1_text = richer_version_1();
    assert!(v1_text.contains("testing_results") && v1_text.contains("[clocks.gate]"));
    let v1 = config_with("code_review.toml", &v1_text);
    let app = env.start_with(env.settings_from(&v1.0)).await;
    let eng = env.agent("eng-1", "engineering-director").await;
    let qa = env.agent("qa-1", "qa-director").await;
    eng.send("code_review_required", "cr-v1", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-v1", "reviewing").await;
    app.stop().await;

    // Version 2 (the plain fixture) knows neither testing_results nor the gate clock.
    let v2 = config_with(
        "code_review.toml",
        &REVIEW.replace("version = 1", "version = 2"),
    );
    let app = env.start_with(env.settings_from(&v2.0)).await;
    // The old workflow's gate clock still breaches, under version 1.
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE workflow_id = 'cr-v1' AND clock = 'gate'
           AND status = 'breached'",
        1,
    )
    .await;
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE workflow_id = 'cr-v1' AND clock = 'gate' AND level = 1",
        1,
    )
    .await;
    // Its testing_results still escalates at once, as version 1 says, instead of being
    // only observed.
    let results = qa
        .send("testing_results", "cr-v1", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'accepted'",
            results.header.message_id
        ),
        1,
    )
    .await;
    env.wait_count(
        "SELECT count(*) FROM escalations WHERE workflow_id = 'cr-v1' AND clock = 'testing_results' AND level = 1",
        1,
    )
    .await;
    qa.send("quality_gate_status", "cr-v1", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-v1", "done").await;

    // A workflow started under version 2 does not know testing_results: observed.
    eng.send("code_review_required", "cr-v2", json!({}))
        .await
        .expect("publish");
    state_of(&env, "cr-v2", "reviewing").await;
    let ignored = qa
        .send("testing_results", "cr-v2", json!({}))
        .await
        .expect("publish");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = 'observed'",
            ignored.header.message_id
        ),
        1,
    )
    .await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM escalations WHERE workflow_id = 'cr-v2'")
            .await,
        0
    );
    app.stop().await;
}
