//! The tamper-evident audit log over the real broker and database: every message
//! applied or refused and every operator command appends a hash-chained row, and
//! `coordinator audit verify` finds a row altered, one removed from the middle, and
//! rows removed from the end. The chain's pure rules have unit tests in
//! `domain::audit`.

use coordinator::cli::{self, AuditCommand, Command, DeadLetterCommand};
use test_support as common;

use agent::Queue;
use common::{expect_next, TestEnv};
use serde_json::json;

async fn verify(env: &TestEnv) -> Result<String, String> {
    cli::run(
        &env.settings(),
        Command::Audit {
            command: AuditCommand::Verify,
        },
    )
    .await
    .map_err(|e| format!("{e:#}"))
}

/// (chain, seq, actor, action, result) of every row about `target`, in order.
async fn rows_about(env: &TestEnv, target: &str) -> Vec<(String, i64, String, String, String)> {
    sqlx::query_as(
        "SELECT chain, seq, actor, action, result FROM audit_log WHERE target = $1 ORDER BY chain, seq",
    )
    .bind(target)
    .fetch_all(&env.pool)
    .await
    .expect("audit rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_applied_and_refused_and_operator_commands_are_audited_and_verify() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let wf = env.start_feature(&product).await;
    // Engineering may not start a workflow: refused, and audited as refused.
    let refused = eng
        .send("requirements_ready", &wf, json!({}))
        .await
        .expect("publish");
    let notice = expect_next(&mut eng, Queue::Commands).await;
    assert_eq!(notice.payload.data["reason"], "sender_not_allowed");
    let dl = env.dead_letter_id(&refused.header.message_id).await;
    cli::run(
        &env.settings(),
        Command::DeadLetter {
            command: DeadLetterCommand::Resolve {
                id: dl,
                note: "engineering's test".into(),
                replace: false,
                by: "alice".into(),
            },
        },
    )
    .await
    .expect("resolve");

    let rows = rows_about(&env, &wf).await;
    let inbox: Vec<_> = rows
        .iter()
        .map(|(_, _, actor, action, result)| (actor.as_str(), action.as_str(), result.as_str()))
        .collect();
    assert_eq!(
        inbox,
        [
            ("product-1", "requirements_ready", "accepted"),
            ("eng-1", "requirements_ready", "rejected:sender_not_allowed"),
        ]
    );
    assert!(rows[0].0.starts_with("inbox."), "{rows:?}");
    let (context, metadata): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT context, metadata FROM audit_log WHERE chain = $1 AND seq = $2")
            .bind(&rows[1].0)
            .bind(rows[1].1)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(context["message_id"], refused.header.message_id.as_str());
    assert!(
        metadata["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{metadata}"
    );
    let operator = rows_about(&env, &format!("dead_letter:{dl}")).await;
    assert_eq!(operator.len(), 1, "{operator:?}");
    assert_eq!(
        (
            operator[0].0.as_str(),
            operator[0].2.as_str(),
            operator[0].3.as_str()
        ),
        ("operator", "alice", "dead_letter_resolve")
    );

    assert!(
        coordinator::db::audit::anchor(&env.pool, chrono::Utc::now())
            .await
            .expect("anchor")
    );
    let out = verify(&env).await.expect("intact");
    assert!(out.starts_with("audit log intact"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_row_altered_a_row_removed_and_rows_removed_from_the_end() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let wf = env.start_feature(&product).await;
    // Four more rows on the same chain (the same workflow, so the same partition).
    for _ in 0..4 {
        product
            .send("requirements_ready", &wf, json!({}))
            .await
            .expect("publish");
    }
    env.wait_count(
        &format!("SELECT count(*) FROM audit_log WHERE target = '{wf}'"),
        5,
    )
    .await;
    app.stop().await;
    let rows = rows_about(&env, &wf).await;
    let chain = rows[0].0.clone();
    let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert!(verify(&env).await.is_ok());
    let sql = |q: &str| {
        let q = q.replace("$chain", &format!("'{chain}'"));
        let pool = env.pool.clone();
        async move {
            sqlx::raw_sql(&q).execute(&pool).await.expect("tamper");
        }
    };

    // Someone changes who sent the second message.
    let second = seqs[1];
    sql(&format!(
        "UPDATE audit_log SET actor = 'mallory' WHERE chain = $chain AND seq = {second}"
    ))
    .await;
    let err = verify(&env).await.expect_err("altered");
    assert!(
        err.contains(&format!("chain {chain}, row {second}: altered")),
        "{err}"
    );
    sql(&format!(
        "UPDATE audit_log SET actor = 'product-1' WHERE chain = $chain AND seq = {second}"
    ))
    .await;
    assert!(verify(&env).await.is_ok());

    // Someone deletes the third.
    let third = seqs[2];
    sql(&format!(
        "CREATE TABLE kept AS SELECT * FROM audit_log WHERE chain = $chain AND seq = {third};
         DELETE FROM audit_log WHERE chain = $chain AND seq = {third}"
    ))
    .await;
    let err = verify(&env).await.expect_err("removed");
    assert!(
        err.contains(&format!("chain {chain}, row {third}: removed")),
        "{err}"
    );
    sql("INSERT INTO audit_log SELECT * FROM kept").await;
    assert!(verify(&env).await.is_ok());

    // Someone deletes the last two rows and moves the head back to match: the anchor
    // taken before still names the last row.
    assert!(
        coordinator::db::audit::anchor(&env.pool, chrono::Utc::now())
            .await
            .expect("anchor")
    );
    let last = *seqs.last().expect("rows");
    sql(&format!(
        "DELETE FROM audit_log WHERE chain = $chain AND seq > {};
         UPDATE audit_heads SET seq = {0}, hash = (SELECT hash FROM audit_log WHERE chain = $chain AND seq = {0})
          WHERE chain = $chain",
        last - 2
    ))
    .await;
    let err = verify(&env).await.expect_err("truncated");
    assert!(
        err.contains(&format!(
            "chain {chain}: ends at row {} but row {last} was written",
            last - 2
        )),
        "{err}"
    );
}
