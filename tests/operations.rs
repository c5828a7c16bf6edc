//! The service as operators run it: the real binary, signals, configured agents.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{expect_next, http_get, TestEnv};
use coordinator::agent::Queue;
use coordinator::settings::StaticAgent;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_becomes_ready_then_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("COORDINATOR_ENV", "test")
        .env("COORDINATOR__DATABASE__URL", &env.db_url)
        .env("COORDINATOR__AMQP__URL", &env.amqp_url)
        .env("COORDINATOR__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("COORDINATOR__LOG__FORMAT", "json")
        .env("RUST_LOG", "info,coordinator=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    common::eventually("serve to be ready", || async {
        (http_get(addr, "/readyz").await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;

    // A message in flight, so the log has a message line to check.
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-sig", json!({}))
        .await
        .expect("publish");
    env.wait_state("wf-sig", "requirements_handoff").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + common::WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");

    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read logs");
    // Structured logs: the (debug) line about the message carries its workflow and
    // message ids.
    let processed = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "processed")
        .unwrap_or_else(|| panic!("no 'processed' line in:\n{stderr}"));
    assert_eq!(processed["workflow_id"], "wf-sig", "{processed}");
    assert!(
        processed["message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{processed}"
    );
    assert!(stderr.contains("shutdown requested"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_listed_in_the_configuration_get_their_queues_at_start() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.agents = vec![StaticAgent {
        agent_id: "eng-cfg".into(),
        agent_type: "engineering-director".into(),
    }];
    s.validate().expect("valid");
    let app = env.start_with(s).await;
    let via: String =
        sqlx::query_scalar("SELECT registered_via FROM agents WHERE agent_id = 'eng-cfg'")
            .fetch_one(&env.pool)
            .await
            .expect("registered");
    assert_eq!(via, "config");
    let mut eng = env.connect_as("eng-cfg", "engineering-director").await;
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-cfg", json!({}))
        .await
        .expect("publish");
    let task = expect_next(&mut eng, Queue::Tasks).await;
    assert_eq!(task.header.message_type, "requirements_handoff");
    // Its events queue carries the role's subscriptions: product's requirements_ready.
    let seen = expect_next(&mut eng, Queue::Events).await;
    assert_eq!(seen.header.message_type, "requirements_ready");
    app.stop().await;
}
