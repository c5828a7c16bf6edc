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
async fn python_agents_copied_out_of_the_repo_take_a_feature_through_and_dead_letter_junk() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // testing_start's 4 h become 7.2 s; its warning comes at 5.8 s.
    settings.sla.time_scale = 0.0005;
    let app = env.start_with(settings).await;

    // As a user copies it: the two files and the schemas beside them, outside the repo.
    let copy = CopiedExample::new();
    let out = run_python(
        &copy.dir.join("interop.py"),
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
    // The body that was not JSON went to the dead letters, rejected by the agent; the
    // message of an unknown type was acked, not dead-lettered.
    let rejected_by_agent =
        "SELECT count(*) FROM dead_letters WHERE reason = 'broker_dead_lettered' \
         AND detail LIKE '%rejected in queue agent.qa-py.commands%'";
    common::eventually("the agent's rejected message is collected", || async {
        (env.scalar_i64(rejected_by_agent).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE reason = 'broker_dead_lettered'")
            .await,
        1,
        "only the body that was not JSON is dead-lettered"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agents_sign_with_cryptography_and_check_the_coordinators_signatures() {
    use coordinator::engine::SignatureMode;
    use protocol::signing;
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.security.signatures = SignatureMode::Require;
    settings.security.signing_key = Some(signing::encode_private(&signing::generate()).into());
    let app = env.start_with(settings.clone()).await;
    let ops =
        coordinator::service::ops::Ops::new(&settings, &env.pool, &coordinator::clock::SystemClock);
    let mut seeds = Vec::new();
    for (id, role) in [
        ("product-py", "product-director"),
        ("eng-py", "engineering-director"),
    ] {
        let key = signing::generate();
        ops.add_agent(id, role, "test").await.expect("agent add");
        ops.add_agent_key(
            id,
            &signing::encode_public(&key.verifying_key()),
            Some(&format!("{id}-1")),
            None,
            "test",
        )
        .await
        .expect("key add");
        seeds.push(signing::encode_private(&key));
    }
    let copy = CopiedExample::new();
    let http = format!("http://{}", app.http);
    let out = run_python(
        &copy.dir.join("signed.py"),
        &[
            "--amqp-url",
            &env.amqp_url,
            "--http",
            &http,
            "--workflow",
            "wf-py-signed",
            "--product-key",
            &seeds[0],
            "--eng-key",
            &seeds[1],
        ],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    env.wait_state("wf-py-signed", "in_development").await;
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM dead_letters WHERE reason IN ('missing_signature', 'bad_signature') AND source_agent_id = 'eng-py'"
        )
        .await,
        2,
        "the unsigned and the wrongly signed message are kept"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_drops_spoofed_and_stale_events_and_takes_the_genuine_one() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.security.authenticate_senders = true;
    let app = env.start_with(settings.clone()).await;
    let ops =
        coordinator::service::ops::Ops::new(&settings, &env.pool, &coordinator::clock::SystemClock);
    let mut urls = Vec::new();
    for (id, role) in [("qa-py", "qa-director"), ("eng-py", "engineering-director")] {
        ops.add_agent(id, role, "test").await.expect("agent add");
        env.delete_user_on_drop(id);
        let password = ops
            .add_agent_credentials(id, role, "test")
            .await
            .expect("credentials");
        urls.push(env.amqp_url_as(id, &password));
    }
    let copy = CopiedExample::new();
    let out = run_python(
        &copy.dir.join("events.py"),
        &[
            "--qa-url",
            &urls[0],
            "--eng-url",
            &urls[1],
            "--spoof-url",
            &env.amqp_url,
            "--workflow",
            "wf-py-events",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    // The coordinator refused the same two the agent dropped.
    for reason in ["unauthenticated", "stale"] {
        env.wait_count(
            &format!("SELECT count(*) FROM dead_letters WHERE reason = '{reason}'"),
            1,
        )
        .await;
    }
    app.stop().await;
}

/// `examples/python/` copied to a fresh folder outside the repository, with the
/// contract's schemas beside it as `schemas/` (where the agent looks first after its
/// argument and COORDINATOR_SCHEMAS); removed on drop.
struct CopiedExample {
    dir: PathBuf,
}

impl CopiedExample {
    fn new() -> CopiedExample {
        let dir = std::env::temp_dir().join(format!("coordinator-agent-{}", uuid::Uuid::new_v4()));
        for name in [
            "coordinator_agent.py",
            "interop.py",
            "signed.py",
            "events.py",
        ] {
            std::fs::create_dir_all(&dir).expect("a temporary folder");
            std::fs::copy(root().join("examples/python").join(name), dir.join(name))
                .expect("the example copies");
        }
        copy_tree(&root().join("docs/schemas"), &dir.join("schemas"));
        CopiedExample { dir }
    }
}

impl Drop for CopiedExample {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a folder");
    for entry in std::fs::read_dir(from).expect("a readable folder") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a file copies");
        }
    }
}

/// Outside the repository and without schemas, the agent says where it looked and
/// what to do, instead of a Python traceback about a missing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_agent_without_its_schemas_says_where_to_put_them() {
    let copy = CopiedExample::new();
    std::fs::remove_dir_all(copy.dir.join("schemas")).expect("schemas removed");
    let out = run_python(
        &copy.dir.join("interop.py"),
        &[
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--workflow",
            "wf-x",
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("COORDINATOR_SCHEMAS") && err.contains("docs/schemas"),
        "{}",
        show(&out)
    );
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

/// With automatic registration off (production), the agent's heartbeat registers
/// nothing: it gives up after its timeout and says who must run what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_agent_unknown_to_a_coordinator_without_auto_registration_says_what_to_do() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.registration.auto_register = false;
    let app = env.start_with(settings).await;
    let copy = CopiedExample::new();
    let script = copy.dir.join("register_only.py");
    std::fs::write(
        &script,
        "import sys\n\
         from coordinator_agent import Agent\n\
         agent = Agent('qa-unknown', 'qa-director', sys.argv[1])\n\
         try:\n    agent.register(timeout=2.0)\n\
         except TimeoutError as e:\n    print(e)\n    sys.exit(3)\n",
    )
    .expect("script written");
    let out = run_python(&script, &[&env.amqp_url]).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("registration")
            && said.contains("coordinator agent add qa-unknown qa-director"),
        "{}",
        show(&out)
    );
    app.stop().await;
}
