//! The echo the bench runs beside the coordinator carries the bench's agents through
//! the whole happy path on the real broker: every workflow completes, the handoffs are
//! measured from the data it copies into each task, and nothing reaches the database.

use std::sync::Arc;

use loadgen::stats::{Counters, Recorder};
use loadgen::team::{self, Team, MESSAGES_PER_WORKFLOW};
use test_support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_completes_every_workflow_the_bench_starts_without_the_database() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.inbox.partitions = 3;
    // Registering declares the coordinator's topology, as the bench does before the echo.
    let logins = team::register(&settings, &env.pool, 2)
        .await
        .expect("agents registered");
    let echo = tokio::spawn({
        let settings = settings.clone();
        async move { loadgen::echo::serve(&settings).await }
    });
    let rec = Arc::new(Recorder::default());
    rec.recording
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (done_tx, _done_rx) = tokio::sync::mpsc::unbounded_channel();
    let team = Team::start(&env.amqp_url, &logins, 2, 20, rec.clone(), done_tx)
        .await
        .expect("team");
    let n: u64 = 40;
    for i in 0..n {
        team.start_workflow(format!("wf-echo-{i}"));
    }
    eventually("every workflow to complete through the echo", || async {
        (Counters::get(&rec.counters.completed) >= n).then_some(())
    })
    .await;
    team.close().await;
    assert!(!echo.is_finished(), "the echo stopped: {:?}", echo.await);
    echo.abort();

    let c = &rec.counters;
    assert_eq!(Counters::get(&c.completed), n);
    assert_eq!(Counters::get(&c.published), n * MESSAGES_PER_WORKFLOW);
    assert_eq!(Counters::get(&c.redelivered), 0);
    // Five handoffs a workflow (engineering, QA, DevOps, and feature_deployed to product
    // and marketing), each timed from the `t` the echo copied into the task.
    assert_eq!(rec.handoff.take().n, 5 * n as usize);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM workflows").await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM processed_messages")
            .await,
        0
    );
}
