//! Several coordinators share the inbox's partitions, and the survivors take over from
//! one killed with SIGKILL: every workflow the load generator's agents start completes,
//! each message applied once.

use std::collections::BTreeMap;
use std::sync::Arc;

use coordinator::db::lease::{LEASES_APPLICATION, PARTITION_CLASS};
use loadgen::stats::{Counters, Recorder};
use loadgen::team::{self, Team, MESSAGES_PER_WORKFLOW};
use test_support::{eventually, Serve, TestEnv};

/// Partitions held per backend pid, as pg_locks shows them.
async fn leases(env: &TestEnv) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT pid, count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND classid::int8 = $1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         GROUP BY pid",
    )
    .bind(i64::from(PARTITION_CLASS))
    .fetch_all(&env.pool)
    .await
    .expect("leases");
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_share_the_partitions_and_survivors_take_over_after_sigkill() {
    let env = TestEnv::new().await;
    let mut s = env.settings();
    s.inbox.partitions = 6;
    let logins = team::register(&s, &env.pool, 2)
        .await
        .expect("agents registered");
    let extra = [
        ("COORDINATOR__INBOX__PARTITIONS", "6".to_string()),
        (
            "COORDINATOR__INBOX__REBALANCE_INTERVAL",
            "200ms".to_string(),
        ),
        // What a killed coordinator committed but never published goes out sooner.
        ("COORDINATOR__OUTBOX__LEASE", "1s".to_string()),
    ];
    let mut serves: Vec<Serve> = (0..3).map(|_| Serve::spawn(&env, &extra)).collect();
    for serve in &serves {
        serve.wait_ready().await;
    }
    eventually("the partitions to be spread two by two", || async {
        let l = leases(&env).await;
        (l.len() == 3 && l.values().all(|n| *n == 2)).then_some(())
    })
    .await;
    // The lease query of docs/scaling.md tells the three apart though they share a host:
    // each lease session is named after its process.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int8 = $1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(PARTITION_CLASS))
    .fetch_all(&env.pool)
    .await
    .expect("lease sessions");
    assert_eq!(names.len(), 3, "{names:?}");
    for serve in &serves {
        let pid = format!("-{}-", serve.pid());
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(LEASES_APPLICATION) && n.contains(&pid)),
            "no lease session names process {}: {names:?}",
            serve.pid()
        );
    }

    // Workflows through the whole happy path, played by the bench agents.
    let rec = Arc::new(Recorder::default());
    let (done_tx, _done_rx) = tokio::sync::mpsc::unbounded_channel();
    let team = Team::start(&env.amqp_url, &logins, 2, 20, rec.clone(), done_tx)
        .await
        .expect("team");
    // Half the workflows before the kill (it strikes while they are in flight), half
    // after it, so every partition has work once the survivors hold them all.
    let n: u64 = 120;
    for i in 0..n / 2 {
        team.start_workflow(format!("wf-k-{i}"));
    }
    eventually("a fifth of the workflows to complete", || async {
        (Counters::get(&rec.counters.completed) >= n / 5).then_some(())
    })
    .await;
    let killed = serves.remove(0);
    let killed_pid = killed.pid();
    let killed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .expect("now");
    killed.signal("-KILL");
    let _ = killed.wait_exit().await;
    for i in n / 2..n {
        team.start_workflow(format!("wf-k-{i}"));
    }

    eventually("every workflow to complete", || async {
        (Counters::get(&rec.counters.completed) >= n).then_some(())
    })
    .await;
    team.close().await;

    // Every workflow completed, each message applied once.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflows WHERE state = 'completed'")
            .await,
        n as i64
    );
    // Each completed feature started one launch handoff (a follow-on), in the same
    // transaction, whichever coordinator applied its last message.
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflows WHERE kind = 'launch_handoff' AND state = 'deployed'"
        )
        .await,
        n as i64
    );
    let per_workflow: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT workflow_id, count(*), count(DISTINCT message_id) FROM workflow_events
           JOIN workflows w ON w.id = workflow_id AND w.kind = 'feature_delivery' GROUP BY workflow_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(per_workflow.len() as u64, n);
    for (wf, events, distinct) in &per_workflow {
        assert_eq!(
            (*events as u64, *distinct as u64),
            (MESSAGES_PER_WORKFLOW, MESSAGES_PER_WORKFLOW),
            "{wf}"
        );
    }
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);

    // The killed one worked before it died; each survivor worked after.
    let by_instance: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT processed_by, count(*) FILTER (WHERE processed_at <= $1), count(*) FILTER (WHERE processed_at > $1)
         FROM processed_messages GROUP BY processed_by",
    )
    .bind(killed_at)
    .fetch_all(&env.pool)
    .await
    .expect("by instance");
    let pid_of = |instance: &str| -> u32 {
        instance
            .rsplit('-')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("instance ids end with -{pid}-{random}")
    };
    let killed_work: i64 = by_instance
        .iter()
        .filter(|(i, _, _)| pid_of(i) == killed_pid)
        .map(|(_, before, _)| before)
        .sum();
    assert!(killed_work > 0, "{by_instance:?}");
    for serve in &serves {
        let after: i64 = by_instance
            .iter()
            .filter(|(i, _, _)| pid_of(i) == serve.pid())
            .map(|(_, _, after)| after)
            .sum();
        assert!(
            after > 0,
            "survivor {} did no work: {by_instance:?}",
            serve.pid()
        );
    }
    eventually("the survivors to hold every partition", || async {
        let l = leases(&env).await;
        (l.len() == 2 && l.values().sum::<i64>() == 6).then_some(())
    })
    .await;
    for serve in serves {
        serve.signal("-TERM");
        assert_eq!(serve.wait_exit().await.0, Some(0));
    }
}
