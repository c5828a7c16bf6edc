//! Interoperability: agents written in Python from docs/agents.md and docs/schemas/
//! alone (`examples/python/`) take a feature through the real coordinator, get a
//! rejection and an SLA warning, and validate everything they receive; and the JSON
//! Schema of the envelope agrees with the Rust validator on the shared corpus, and every
//! JSON example of the documentation is valid against its schema. The
//! virtualenv comes from `make python-venv` (part of `make test`).

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::TestEnv;

fn root() -> PathBuf {
    common::repo_root()
}

fn python() -> PathBuf {
    let p = root().join("target/python-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `make python-venv` (make test does)",
        p.display()
    );
    p
}

async fn run_python(script: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .current_dir(script.parent().expect("a folder"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the Python script finishes within 3 minutes")
        .expect("python runs")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agents_take_a_feature_through_with_a_rejection_and_a_warning() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // testing_start's 4 h become 7.2 s; its warning comes at 5.8 s.
    settings.sla.time_scale = 0.0005;
    let app = env.start_with(settings).await;

    let out = run_python(
        &root().join("examples/python/interop.py"),
        &["--amqp-url", &env.amqp_url, "--workflow", "wf-py-1"],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    assert_eq!(
        env.workflow_state("wf-py-1").await.as_deref(),
        Some("completed")
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM dead_letters WHERE reason = 'unknown_workflow' AND source_agent_id = 'qa-py'"
        )
        .await,
        1,
        "the early message is kept as a dead letter"
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflow_events WHERE workflow_id = 'wf-py-1' AND message_type = 'sla_warning'"
        )
        .await,
        1,
        "testing_start's warning is in the history"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM agents WHERE agent_id LIKE '%-py' AND registered_via = 'heartbeat'")
            .await,
        4,
        "each Python agent registered itself with a heartbeat"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envelope_schema_gives_every_corpus_envelope_its_expected_verdict() {
    let out = run_python(
        &root().join("crates/protocol/tests/corpus/check_schemas.py"),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
}

/// Every JSON example in docs/ and the README parses and is valid against the schema
/// it names (jsonschema, as the Python agent validates what it receives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_example_in_the_docs_is_valid_against_its_schema() {
    let out = run_python(
        &root().join("crates/coordinator/tests/docs_examples.py"),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 problems"),
        "{}",
        show(&out)
    );
}
