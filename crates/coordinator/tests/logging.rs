//! What the running service logs about a condition that repeats: a task no queue takes
//! is retried for a day, and an operator reads one line when it starts and one when it
//! is over (a count in between, each minute), never the message's body. `coordinator
//! serve` runs as `make run` runs it (the shipped log filter, text format).

use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{eventually, repo_root, Serve, TestEnv};

/// Something in the task's body that no log line may repeat.
const MARKER: &str = "a-title-that-stays-out-of-the-log";

/// Polls `sql` until it counts `n`, for up to a minute (the retries back off by seconds).
async fn at_least(env: &TestEnv, sql: &str, n: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.scalar_i64(sql).await < n {
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_task_is_logged_when_it_starts_and_when_it_ends_and_never_with_its_body() {
    let env = TestEnv::new().await;
    let shipped = coordinator::settings::Settings::load_from(&repo_root().join("config"), None)
        .expect("the shipped settings");
    let serve = Serve::spawn(
        &env,
        &[
            ("RUST_LOG", shipped.log.filter.clone()),
            ("COORDINATOR__LOG__FORMAT", "text".to_string()),
        ],
    );
    serve.wait_ready().await;

    // No engineering director is registered yet: its handoff reaches no queue.
    let product = env.agent("product-1", "product-director").await;
    let start = product.envelope(
        "requirements_ready",
        "wf-log",
        json!({"epic_id": "EPIC-LOG", "title": MARKER}),
    );
    product.publish(&start).await.expect("published");
    let attempts = "SELECT coalesce(max(attempts), 0)::bigint FROM outbox \
                    WHERE routing_key = 'task.engineering-director'";
    at_least(&env, attempts, 3, "the handoff to be retried three times").await;

    // The role's agent comes: the next retry goes out and the condition is over.
    let _eng = env.agent("eng-1", "engineering-director").await;
    let sent = "SELECT count(*) FROM outbox WHERE routing_key = 'task.engineering-director' \
                AND sent_at IS NOT NULL";
    at_least(
        &env,
        sent,
        1,
        "the handoff to go out once its queue existed",
    )
    .await;
    eventually("the end of the condition to be logged", || async {
        serve
            .log()
            .contains("over, no message waits for it")
            .then_some(())
    })
    .await;
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");

    let unroutable: Vec<&str> = log.lines().filter(|l| l.contains("unroutable")).collect();
    let warned: Vec<&&str> = unroutable.iter().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(
        warned.len(),
        1,
        "one warning when it started, not one per retry:\n{}",
        unroutable.join("\n")
    );
    assert!(
        unroutable
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("over, no message waits for it")),
        "{log}"
    );
    assert!(
        !log.contains("returned_messages") && !log.contains(MARKER),
        "a line dumps the returned message:\n{log}"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1_000, "a line of {longest} characters:\n{log}");
}
