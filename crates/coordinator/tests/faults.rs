//! Faults injected while workflows are in flight: the broker stopped and started, the
//! coordinator killed (mid-stream and at the two worst moments, by fail points), its
//! PostgreSQL sessions terminated mid-batch, PostgreSQL stopped, SIGTERM with work
//! in flight, and the lease connection lost with batches in hand. In each, every
//! workflow completes, every copy the coordinator sent again carries the same message
//! id, and nothing is applied twice. (`tools/loadgen/tests/shutdown.rs` sends SIGTERM
//! right after each fault under 1,000 messages a second.)
//!
//! The tests that stop the broker or the database stop a RabbitMQ node and a PostgreSQL
//! cluster of their own (`test_support::isolated`, on spare ports, in a temporary
//! folder), never the services other tests and people use; the others kill only the
//! coordinators they started. They are heavy and timing-sensitive, so they are
//! `#[ignore]`d in the parallel run and `make test` runs them afterwards one at a time
//! (`--ignored --test-threads=1`). The fail points exist only with the `fail-points`
//! feature (src/failpoint.rs).

use test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::{AgentClient, Queue};
use common::{eventually, http_get, isolated, metric, Serve, TestEnv};
use protocol::envelope::Envelope;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const AGENTS: [(&str, &str); 5] = [
    ("product-1", "product-director"),
    ("eng-1", "engineering-director"),
    ("qa-1", "qa-director"),
    ("devops-1", "devops-manager"),
    ("marketing-1", "marketing-director"),
];

/// Who sends what, by the workflow's phase (the happy path, 11 agent messages).
const PHASES: [(usize, &[&str]); 4] = [
    (0, &["requirements_ready"]),
    (
        1,
        &[
            "handoff_acknowledged",
            "sprint_initialized",
            "feature_completed",
        ],
    ),
    (
        2,
        &[
            "handoff_acknowledged",
            "testing_started",
            "release_approved",
        ],
    ),
    (
        3,
        &[
            "handoff_acknowledged",
            "deployment_started",
            "deployment_completed",
            "validation_completed",
        ],
    ),
];
const MESSAGES_PER_WORKFLOW: i64 = 11;

/// The tasks each workflow must deliver: (agent, message type).
const TASKS: [(&str, &str); 5] = [
    ("eng-1", "requirements_handoff"),
    ("qa-1", "feature_handoff"),
    ("devops-1", "release_handoff"),
    ("product-1", "feature_deployed"),
    ("marketing-1", "feature_deployed"),
];

/// How long a whole run may take, faults included.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// An agent that sees no progress for this long sends its messages again (same ids).
const RESEND_AFTER: Duration = Duration::from_secs(2);

/// The phase whose messages move a workflow on, from its state; `None` when done.
fn phase_of(state: Option<&str>) -> Option<usize> {
    match state {
        None => Some(0),
        Some("requirements_handoff" | "in_development") => Some(1),
        Some("feature_handoff" | "testing") => Some(2),
        Some("release_handoff" | "deploying" | "validating") => Some(3),
        _ => None,
    }
}

/// Plays the agents from the workflows' states in the database: each workflow's
/// messages are built once, so whatever is sent again carries the same message id.
/// Survives the broker and the database going away (it reconnects and sends again).
struct Driver {
    amqp_url: String,
    pool: PgPool,
    messages: BTreeMap<String, Vec<Vec<Envelope>>>,
    sent: BTreeMap<String, (usize, Instant)>,
    clients: Option<Vec<AgentClient>>,
    progress: Arc<Mutex<Progress>>,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    /// Workflows past their first handoff.
    started: usize,
    completed: usize,
    /// Workflows in a state the happy path never reaches.
    stray: Vec<(String, String)>,
}

impl Driver {
    fn new(env: &TestEnv, wfs: &[String]) -> Driver {
        let now = chrono::Utc::now();
        let messages = wfs
            .iter()
            .map(|wf| {
                let phases = PHASES
                    .iter()
                    .map(|(agent, types)| {
                        let (id, role) = AGENTS[*agent];
                        types
                            .iter()
                            .map(|t| {
                                let mut e = Envelope::from_agent(id, role, t, wf, json!({}), now);
                                e.header.ttl = Some(3600);
                                e
                            })
                            .collect()
                    })
                    .collect();
                (wf.clone(), phases)
            })
            .collect();
        Driver {
            amqp_url: env.amqp_url.clone(),
            pool: env.pool.clone(),
            messages,
            sent: BTreeMap::new(),
            clients: None,
            progress: Arc::default(),
        }
    }

    async fn connect(&mut self) -> Option<&Vec<AgentClient>> {
        if self.clients.is_none() {
            let mut clients = Vec::new();
            for (id, role) in AGENTS {
                clients.push(AgentClient::connect(&self.amqp_url, id, role).await.ok()?);
            }
            self.clients = Some(clients);
        }
        self.clients.as_ref()
    }

    /// One look at the states and one round of sending; false while the database or
    /// the broker is away.
    async fn tick(&mut self) -> bool {
        let ids: Vec<String> = self.messages.keys().cloned().collect();
        let Ok(rows) = sqlx::query_as::<_, (String, String)>(
            "SELECT id, state FROM workflows WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        else {
            return false;
        };
        let states: BTreeMap<String, String> = rows.into_iter().collect();
        let mut progress = Progress::default();
        let mut due = Vec::new();
        for wf in &ids {
            let state = states.get(wf).map(String::as_str);
            match phase_of(state) {
                Some(phase) => {
                    progress.started += usize::from(phase > 1);
                    let resend = match self.sent.get(wf) {
                        Some((p, at)) => *p != phase || at.elapsed() >= RESEND_AFTER,
                        None => true,
                    };
                    if resend {
                        due.push((wf.clone(), phase));
                    }
                }
                None if state == Some("completed") => {
                    progress.started += 1;
                    progress.completed += 1;
                }
                None => progress
                    .stray
                    .push((wf.clone(), state.unwrap_or_default().to_string())),
            }
        }
        if let Ok(mut p) = self.progress.lock() {
            *p = progress;
        }
        if self.connect().await.is_none() {
            return false;
        }
        let Some(clients) = self.clients.as_ref() else {
            return false;
        };
        let mut failed = false;
        for (wf, phase) in &due {
            let agent = PHASES[*phase].0;
            for e in &self.messages[wf][*phase] {
                if clients[agent].publish(e).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed {
                break;
            }
            self.sent.insert(wf.clone(), (*phase, Instant::now()));
        }
        if failed {
            self.clients = None;
        }
        !failed
    }

    /// Plays until every workflow completed (or a stray state, or the deadline).
    fn spawn(mut self, stop: CancellationToken) -> tokio::task::JoinHandle<Progress> {
        tokio::spawn(async move {
            let deadline = Instant::now() + RUN_DEADLINE;
            loop {
                self.tick().await;
                let p = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
                if p.completed == self.messages.len()
                    || !p.stray.is_empty()
                    || stop.is_cancelled()
                    || Instant::now() > deadline
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// One task an agent received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Received {
    agent: String,
    workflow: String,
    message_type: String,
    message_id: String,
}

/// Reads every agent's tasks queue, reconnecting after faults; on `stop`, drains them.
fn collect_tasks(
    amqp_url: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Received>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut clients: Vec<AgentClient> = Vec::new();
        let record = |got: &mut Vec<Received>, agent: &str, e: Envelope| {
            got.push(Received {
                agent: agent.to_string(),
                workflow: e.header.correlation_id,
                message_type: e.header.message_type,
                message_id: e.header.message_id,
            })
        };
        loop {
            if clients.is_empty() {
                for (id, role) in AGENTS {
                    match AgentClient::connect(&amqp_url, id, role).await {
                        Ok(c) => clients.push(c),
                        Err(_) => {
                            clients.clear();
                            break;
                        }
                    }
                }
                if clients.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            if stop.is_cancelled() {
                for c in &mut clients {
                    let name = Queue::Tasks.name(&c.agent_id);
                    let drained = c.drain(&name).await.expect("drain tasks");
                    let agent = c.agent_id.clone();
                    for (_, e) in drained {
                        record(&mut got, &agent, e);
                    }
                }
                return got;
            }
            let mut broken = false;
            for c in &mut clients {
                match c.next(Queue::Tasks, Duration::from_millis(20)).await {
                    Ok(Some(e)) => {
                        let agent = c.agent_id.clone();
                        record(&mut got, &agent, e);
                    }
                    Ok(None) => {}
                    Err(_) => broken = true,
                }
            }
            if broken {
                clients.clear();
            }
        }
    })
}

/// A stream of workflows under way, the agents played by a [`Driver`] and their tasks
/// collected.
struct Stream {
    wfs: Vec<String>,
    progress: Arc<Mutex<Progress>>,
    driver: tokio::task::JoinHandle<Progress>,
    collector: tokio::task::JoinHandle<Vec<Received>>,
    stop_collecting: CancellationToken,
}

impl Stream {
    async fn start(env: &TestEnv, n: usize) -> Stream {
        let settings = env.settings();
        for (id, role) in AGENTS {
            common::add_agent(&settings, &env.pool, id, role).await;
        }
        let wfs: Vec<String> = (0..n).map(|i| format!("wf-fault-{i}")).collect();
        let driver = Driver::new(env, &wfs);
        let progress = driver.progress.clone();
        let stop_collecting = CancellationToken::new();
        let collector = collect_tasks(env.amqp_url.clone(), stop_collecting.clone());
        let driver = driver.spawn(CancellationToken::new());
        Stream {
            wfs,
            progress,
            driver,
            collector,
            stop_collecting,
        }
    }

    /// Waits until `n` workflows are past their first handoff: the fault strikes mid-stream.
    async fn wait_started(&self, n: usize) {
        eventually(&format!("{n} workflows under way"), || async {
            let p = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
            (p.started >= n).then_some(())
        })
        .await
    }

    fn completed(&self) -> usize {
        self.progress.lock().map(|p| p.completed).unwrap_or(0)
    }

    /// Waits for every workflow to complete, then checks what the agents received and
    /// what the database holds. Returns the copies the agents received more than once.
    async fn finish(self, env: &TestEnv) -> usize {
        let progress = self.driver.await.expect("driver ran");
        assert!(
            progress.stray.is_empty(),
            "workflows off the happy path: {:?}",
            progress.stray
        );
        assert_eq!(
            progress.completed,
            self.wfs.len(),
            "every workflow completes within {RUN_DEADLINE:?}"
        );
        env.wait_outbox_flushed().await;
        self.stop_collecting.cancel();
        let received = self.collector.await.expect("collector ran");
        assert_applied_once(env, &self.wfs).await;
        assert_tasks_delivered_alike(&self.wfs, &received)
    }
}

/// Nothing applied twice: each workflow has one history row per agent message, each
/// with its own message id, and one outbox row per message it sent; and its completion
/// started one launch handoff (a follow-on), with one history row.
async fn assert_applied_once(env: &TestEnv, wfs: &[String]) {
    let follow_ons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT w.id, count(e.seq) FROM workflows w LEFT JOIN workflow_events e ON e.workflow_id = w.id
          WHERE w.kind = 'launch_handoff' GROUP BY w.id ORDER BY w.id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("launch handoffs");
    let mut expected: Vec<(String, i64)> = wfs
        .iter()
        .map(|wf| (format!("{wf}.launch_handoff"), 1))
        .collect();
    expected.sort();
    assert_eq!(follow_ons, expected);
    let per_workflow: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT workflow_id, count(*), count(DISTINCT message_id) FROM workflow_events
           JOIN workflows w ON w.id = workflow_id AND w.kind = 'feature_delivery'
          GROUP BY workflow_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(per_workflow.len(), wfs.len());
    for (wf, events, distinct) in &per_workflow {
        assert_eq!(
            (*events, *distinct),
            (MESSAGES_PER_WORKFLOW, MESSAGES_PER_WORKFLOW),
            "history of {wf}"
        );
    }
    let twice: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT correlation_id, message_type, routing_key, count(*) FROM outbox
          GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("outbox");
    assert!(twice.is_empty(), "messages written twice: {twice:?}");
}

/// Every task reached its agent, and every copy of one task carries one message id.
/// Returns how many copies arrived beyond the first.
fn assert_tasks_delivered_alike(wfs: &[String], received: &[Received]) -> usize {
    let mut ids: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for r in received {
        ids.entry((r.agent.clone(), r.workflow.clone(), r.message_type.clone()))
            .or_default()
            .insert(r.message_id.clone());
    }
    for wf in wfs {
        for (agent, task) in TASKS {
            let key = (agent.to_string(), wf.clone(), task.to_string());
            let got = ids.get(&key);
            assert!(got.is_some(), "{agent} never received {task} for {wf}");
            assert_eq!(
                got.map(BTreeSet::len),
                Some(1),
                "copies of {task} for {wf} to {agent} carry different message ids: {got:?}"
            );
        }
    }
    let distinct: usize = ids.values().map(BTreeSet::len).sum();
    received.len() - distinct
}

/// A PostgreSQL cluster and a RabbitMQ node of the test's own, and a database and a
/// vhost on them: what a test that stops the services stops. (Fields drop in order:
/// the database and vhost first, then the node and the cluster.)
struct Own {
    env: TestEnv,
    rabbit: isolated::Rabbit,
    pg: isolated::Postgres,
}

async fn own_services() -> Own {
    let (pg, rabbit) = tokio::task::spawn_blocking(|| {
        (
            isolated::Postgres::start(),
            isolated::Rabbit::start(&["rabbitmq_consistent_hash_exchange"]),
        )
    })
    .await
    .expect("services started");
    let env = TestEnv::isolated(&pg, &rabbit).await;
    Own { env, rabbit, pg }
}

/// Stops the RabbitMQ application of the test's own node; starts it again when dropped
/// (also on a failure).
struct BrokerStopped<'a>(&'a isolated::Rabbit);

impl<'a> BrokerStopped<'a> {
    fn now(rabbit: &'a isolated::Rabbit) -> BrokerStopped<'a> {
        rabbit.stop_app();
        BrokerStopped(rabbit)
    }
}

impl Drop for BrokerStopped<'_> {
    fn drop(&mut self) {
        self.0.start_app();
    }
}

/// Stops the test's own PostgreSQL cluster; starts it again when dropped (also on a
/// failure).
struct DatabaseStopped<'a>(&'a isolated::Postgres);

impl<'a> DatabaseStopped<'a> {
    fn now(pg: &'a isolated::Postgres) -> DatabaseStopped<'a> {
        pg.stop();
        DatabaseStopped(pg)
    }
}

impl Drop for DatabaseStopped<'_> {
    fn drop(&mut self) {
        self.0.start_again();
    }
}

async fn readyz(http: std::net::SocketAddr) -> Option<u16> {
    http_get(http, "/readyz").await.map(|(code, _)| code)
}

/// Settings for the coordinators these tests start: what a killed one leased but never
/// published goes out again after a second, not ten; a circuit breaker opened by an
/// outage lets work through again after two seconds, not sixty.
fn serve_env() -> Vec<(&'static str, String)> {
    vec![
        ("COORDINATOR__OUTBOX__LEASE", "1s".to_string()),
        (
            "COORDINATOR__CIRCUIT_BREAKER__OPEN_TIMEOUT",
            "2s".to_string(),
        ),
    ]
}

fn with(
    mut extra: Vec<(&'static str, String)>,
    k: &'static str,
    v: &str,
) -> Vec<(&'static str, String)> {
    extra.push((k, v.to_string()));
    extra
}

const N: usize = 40;

/// A coordinator (with `extra` settings) and a stream of [`N`] workflows a quarter of
/// the way in: the moment a fault strikes.
async fn under_way(env: &TestEnv, extra: &[(&'static str, String)]) -> (Serve, Stream) {
    let serve = Serve::spawn(env, extra);
    serve.wait_ready().await;
    let stream = Stream::start(env, N).await;
    stream.wait_started(N / 4).await;
    assert!(
        stream.completed() < N,
        "the fault strikes while work is in flight"
    );
    (serve, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_broker_stopped_and_started_mid_stream() {
    let own = own_services().await;
    let env = &own.env;
    let (serve, stream) = under_way(env, &serve_env()).await;
    {
        let _stopped = BrokerStopped::now(&own.rabbit);
        eventually("readiness to say the broker is gone", || async {
            (readyz(serve.http).await == Some(503)).then_some(())
        })
        .await;
        // Down for a while, as a broker restart is: the driver and the collector fail
        // meanwhile and keep trying.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    serve.wait_ready().await;
    let resent = stream.finish(env).await;
    eprintln!("tasks received again after the broker restart: {resent}");
    assert!(
        metric(serve.http, "coordinator_broker_connects_total ").await >= 2.0,
        "the coordinator reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_coordinator_killed_mid_stream() {
    let env = TestEnv::new().await;
    let (serve, stream) = under_way(&env, &serve_env()).await;
    serve.signal("-KILL");
    let _ = serve.wait_exit().await;
    let replacement = Serve::spawn(&env, &serve_env());
    replacement.wait_ready().await;
    let resent = stream.finish(&env).await;
    eprintln!("tasks received again after SIGKILL: {resent}");
}

/// Runs a stream on a coordinator that dies at `fail_point` the `after`+1-th time it
/// passes it, replaces it, and finishes; the replacement's metrics.
async fn killed_at(env: &TestEnv, fail_point: &str, after: u32) -> (Serve, usize) {
    let doomed = Serve::spawn(
        env,
        &with(
            serve_env(),
            "FAILPOINTS",
            &format!("{fail_point}={after}*off->return"),
        ),
    );
    doomed.wait_ready().await;
    let stream = Stream::start(env, N).await;
    let mut doomed = doomed;
    eventually(&format!("the coordinator to die at {fail_point}"), || {
        let exited = doomed.exited();
        async move { exited.then_some(()) }
    })
    .await;
    let (code, stderr) = doomed.wait_exit().await;
    assert_eq!(code, None, "killed by a signal, not exited: {stderr}");
    assert!(
        stderr.contains(fail_point),
        "died at the fail point: {stderr}"
    );
    assert!(stream.completed() < N, "it died while work was in flight");
    let replacement = Serve::spawn(env, &serve_env());
    replacement.wait_ready().await;
    let resent = stream.finish(env).await;
    (replacement, resent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_killed_after_the_commit_before_the_ack() {
    let env = TestEnv::new().await;
    let (replacement, resent) =
        killed_at(&env, coordinator::failpoint::AFTER_COMMIT_BEFORE_ACK, 8).await;
    // What it committed but never acked came again, and was recognised.
    let duplicates = metric(
        replacement.http,
        "coordinator_messages_total{outcome=\"duplicate\"} ",
    )
    .await;
    eprintln!("redelivered duplicates: {duplicates}, tasks received again: {resent}");
    assert!(
        duplicates >= 1.0,
        "the unacked batch was redelivered and caught"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_killed_after_the_confirm_before_the_outbox_row_is_marked_sent() {
    let env = TestEnv::new().await;
    let (_replacement, resent) = killed_at(
        &env,
        coordinator::failpoint::AFTER_CONFIRM_BEFORE_MARKED_SENT,
        3,
    )
    .await;
    // The broker had confirmed them, so the agents got them twice: same ids (checked).
    eprintln!("tasks received again: {resent}");
    assert!(
        resent >= 1,
        "confirmed messages were sent again by the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_database_sessions_terminated_mid_batch() {
    let env = TestEnv::new().await;
    // Every batch waits 100 ms before its commit, so sessions are caught inside one.
    let extra = with(
        serve_env(),
        "FAILPOINTS",
        &format!("{}=return(100)", coordinator::failpoint::BEFORE_COMMIT),
    );
    let (serve, stream) = under_way(&env, &extra).await;
    let mut terminated = 0;
    while terminated < 5 && stream.completed() < N {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'coordinator'
                AND state = 'idle in transaction') t",
        )
        .fetch_one(&env.pool)
        .await
        .expect("terminate");
        terminated += n;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(terminated >= 1, "no session was caught mid-batch");
    let resent = stream.finish(&env).await;
    eprintln!("sessions terminated mid-batch: {terminated}; tasks received again: {resent}");
    assert_eq!(readyz(serve.http).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_database_stopped_for_seconds_readiness_503_then_200() {
    let own = own_services().await;
    let env = &own.env;
    let (serve, stream) = under_way(env, &serve_env()).await;
    {
        let _stopped = DatabaseStopped::now(&own.pg);
        eventually("readiness to say the database is gone", || async {
            (readyz(serve.http).await == Some(503)).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            readyz(serve.http).await,
            Some(503),
            "still unready while it is down"
        );
    }
    serve.wait_ready().await;
    let resent = stream.finish(env).await;
    eprintln!("tasks received again after the database came back: {resent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_sigterm_with_work_in_flight_flushes_the_outbox_and_exits_0() {
    let env = TestEnv::new().await;
    // A relay that would otherwise wait: only the shutdown's flush sends what is left.
    let extra = with(serve_env(), "COORDINATOR__OUTBOX__POLL_INTERVAL", "1h");
    // The shutdown's steps are logged at info (the test configuration logs warnings only).
    let extra = with(extra, "COORDINATOR__LOG__FILTER", "info");
    let (serve, stream) = under_way(&env, &extra).await;
    serve.signal("-TERM");
    let (code, stderr) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("shutdown: flushing the outbox"),
        "each step is logged: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "text logs carry no colour codes when stderr is not a terminal"
    );
    // Nothing runs now: what it committed, it published before exiting.
    assert!(env.scalar_i64("SELECT count(*) FROM outbox").await > 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .await,
        0,
        "the outbox is flushed before exit"
    );
    let replacement = Serve::spawn(&env, &serve_env());
    replacement.wait_ready().await;
    stream.finish(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_shutdown_stuck_past_its_timeout_exits_1_naming_the_step() {
    let env = TestEnv::new().await;
    let mut extra = with(serve_env(), "COORDINATOR__SHUTDOWN__TIMEOUT", "2s");
    extra = with(extra, "COORDINATOR__SHUTDOWN__FLUSH_TIMEOUT", "1s");
    // The last flush hangs (as on a broker that stopped answering).
    extra = with(
        extra,
        "FAILPOINTS",
        &format!(
            "{}=return(600000)",
            coordinator::failpoint::BEFORE_OUTBOX_FLUSH
        ),
    );
    let (serve, stream) = under_way(&env, &extra).await;
    serve.signal("-TERM");
    let (code, stderr) = serve.wait_exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "shutdown did not finish within shutdown.timeout (2s); it was flushing the outbox"
        ),
        "{stderr}"
    );
    // What it committed but did not publish goes out from its replacement.
    let replacement = Serve::spawn(&env, &serve_env());
    replacement.wait_ready().await;
    stream.finish(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_dead_letter_collector_killed_after_the_commit_before_the_ack_stores_once() {
    let env = TestEnv::new().await;
    let doomed = Serve::spawn(
        &env,
        &with(
            serve_env(),
            "FAILPOINTS",
            &format!(
                "{}=return",
                coordinator::failpoint::DLX_AFTER_COMMIT_BEFORE_ACK
            ),
        ),
    );
    doomed.wait_ready().await;
    // QA's queues exist and nobody consumes them: a task that expires there is
    // dead-lettered by the broker, and the collector takes it.
    env.agent("qa-1", "qa-director").await;
    env.publish_expiring_task("qa-director", "m-expiring").await;

    let mut doomed = doomed;
    eventually(
        "the coordinator to die after storing the dead letter",
        || {
            let exited = doomed.exited();
            async move { exited.then_some(()) }
        },
    )
    .await;
    let (code, stderr) = doomed.wait_exit().await;
    assert_eq!(code, None, "killed, not exited: {stderr}");
    let stored =
        "SELECT count(*) FROM dead_letters WHERE message_id = 'm-expiring' AND reason = 'broker_dead_lettered'";
    assert_eq!(
        env.scalar_i64(stored).await,
        1,
        "committed before the crash"
    );

    // The replacement's collector gets the unacked copy again, stores nothing new, and
    // acks it.
    let replacement = Serve::spawn(&env, &serve_env());
    replacement.wait_ready().await;
    env.wait_queue_empty("agent.dead_letters").await;
    assert_eq!(env.scalar_i64(stored).await, 1, "collected once");
}

/// Each inbox partition's consumers in the order the log names them: `true` where one
/// started, `false` where one stopped.
fn consumer_lines(log: &str) -> BTreeMap<String, Vec<(usize, bool)>> {
    let mut by_partition: BTreeMap<String, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, line) in log.lines().enumerate() {
        let started = if line.contains("stopped consuming an inbox partition") {
            false
        } else if line.contains("consuming an inbox partition") {
            true
        } else {
            continue;
        };
        let queue = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("queue="))
            .unwrap_or_default()
            .to_string();
        by_partition.entry(queue).or_default().push((i, started));
    }
    by_partition
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs the fault tests one at a time, after the rest"]
async fn fault_lease_connection_lost_with_batches_in_hand_then_sigterm_exits_0() {
    let env = TestEnv::new().await;
    // Every batch takes two seconds before its commit: when the lease connection goes,
    // a consumer is in the middle of one, and finishes it after the leases have been
    // taken again (every 200 ms).
    let extra = with(
        serve_env(),
        "FAILPOINTS",
        &format!("{}=return(2000)", coordinator::failpoint::BEFORE_COMMIT),
    );
    let extra = with(extra, "COORDINATOR__INBOX__REBALANCE_INTERVAL", "200ms");
    let extra = with(extra, "COORDINATOR__SHUTDOWN__TIMEOUT", "15s");
    // Consumers starting and stopping are logged at info.
    let extra = with(extra, "COORDINATOR__LOG__FILTER", "info");
    let serve = Serve::spawn(&env, &extra);
    serve.wait_ready().await;
    let stream = Stream::start(&env, 16).await;
    eventually(
        "a batch in hand (its transaction waiting to commit)",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                AND application_name = 'coordinator' AND state = 'idle in transaction'",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap_or(0);
            (n > 0).then_some(())
        },
    )
    .await;
    let lost = "could not read the partition leases; releasing them";
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'coordinator leases%') t",
    )
    .fetch_one(&env.pool)
    .await
    .expect("terminate the lease connection");
    assert_eq!(terminated, 1, "one coordinator, one lease connection");
    eventually("the coordinator to notice its leases are gone", || {
        let seen = serve.log().contains(lost);
        async move { seen.then_some(()) }
    })
    .await;
    // Every consumer told to stop has finished its batch (two seconds at most), and the
    // partitions are taken again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");

    // Never two consumers of one partition at once: each partition's consumers start and
    // stop in turn. And one of them did outlive its lease: it stopped only after another
    // partition had been taken again.
    let lost_at = log
        .lines()
        .position(|l| l.contains(lost))
        .expect("the lease loss is logged");
    let by_partition = consumer_lines(&log);
    assert_eq!(by_partition.len(), 8, "{log}");
    for (queue, lines) in &by_partition {
        let kinds: Vec<bool> = lines.iter().map(|(_, started)| *started).collect();
        let alternating: Vec<bool> = (0..kinds.len()).map(|i| i % 2 == 0).collect();
        assert_eq!(kinds, alternating, "{queue}'s consumers overlap:\n{log}");
    }
    let retaken_at = by_partition
        .values()
        .flatten()
        .filter(|(i, started)| *started && *i > lost_at)
        .map(|(i, _)| *i)
        .min()
        .expect("partitions taken again after the loss");
    assert!(
        by_partition
            .values()
            .flatten()
            .any(|(i, started)| !started && *i > retaken_at),
        "no consumer was still finishing its batch when the partitions were taken again:\n{log}"
    );
    let replacement = Serve::spawn(&env, &serve_env());
    replacement.wait_ready().await;
    stream.finish(&env).await;
}
