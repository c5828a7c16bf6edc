//! Scale-out on a real RabbitMQ cluster (`make cluster-test`; not part of `make test`):
//! three RabbitMQ nodes of this machine's installation on ports of their own, clustered;
//! the production settings (quorum queues); two coordinators, each with the three nodes
//! in `amqp.url` and `amqp.fallback_urls` (one starting on the node the other does
//! not); the load generator's agents publishing through a node that stays up. Mid-run
//! the node that leads most inbox partitions is stopped, clocks fall due while it is
//! away, and it is started again. Every workflow started completes, no message is
//! applied twice, no clock fires twice; the figures go to `target/cluster/report.md`
//! (and into docs/scaling.md by hand).
//!
//! The rate limits are on, as production ships them, with the load generator's five roles
//! unlimited (as the bench raises their limits: each of its agents sends far more than
//! the seed's 100 messages a minute). A creative-director agent keeps the seed's limits:
//! just before the node stops it sends the three replies of each of 200 design handoffs
//! at once, more than its burst, so that most are held back while the node is away; they
//! must all be applied after it, each workflow's in the order sent, some of them after
//! the node is back. When the test fails it prints where everything was (each
//! coordinator's last log lines, the unfinished workflows by state, every queue's depth)
//! and writes it, with the coordinators' whole logs, under `target/cluster/`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;
use loadgen::drive::{self, Load, Spec};
use loadgen::stats::{Counters, Percentiles, Recorder};
use loadgen::team::{self, Team, MESSAGES_PER_WORKFLOW};
use protocol::names::roles::{CREATIVE, PRODUCT};
use serde_json::json;
use test_support::isolated::Rabbit;
use test_support::{repo_root, Serve, TestEnv};

const OFFERED_MSG_PER_S: f64 = 300.0;
const WARMUP: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);
/// When, inside the window, the busiest node stops, and how long it stays down.
const STOP_AT: Duration = Duration::from_secs(15);
const DOWN_FOR: Duration = Duration::from_secs(20);
/// Clocks armed as the node stops, due while it is down.
const CLOCKS: i64 = 1_000;
/// Design handoffs whose creative replies (three each) are sent just before the stop, by
/// one agent held to the seed's 100 messages a minute. Each coordinator keeps its own
/// buckets, so with two the agent may send 200 a minute (and a burst of 200): 400 are
/// held, released over two minutes, well past the node's return.
const HELD_WORKFLOWS: usize = 200;
const HELD_REPLIES: [&str; 3] = ["handoff_acknowledged", "assets_ready", "design_ready"];
/// How long before the stop they are sent.
const HELD_LEAD: Duration = Duration::from_secs(3);
/// The agent held to the seed's limits.
const CREATIVE_AGENT: &str = "cl-creative-0";

/// Each inbox partition's leader node (`rabbitmqctl list_queues name leader`).
fn inbox_leaders(node: &Rabbit, vhost: &str) -> HashMap<String, String> {
    let out = node.ctl(&[
        "list_queues",
        "-p",
        vhost,
        "--quiet",
        "--no-table-headers",
        "name",
        "leader",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .filter(|(q, _)| q.starts_with("coordinator.inbox."))
        .collect()
}

/// The node leading most of the partitions.
fn busiest(leaders: &HashMap<String, String>) -> String {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for node in leaders.values() {
        *count.entry(node).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = count.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .first()
        .map(|(n, _)| n.to_string())
        .unwrap_or_default()
}

/// Seconds from the stop until in-flight work is back within a margin of what it was
/// before the stop, and stays there: the per-second samples of the window.
fn recovery_s(samples: &[drive::BacklogSample], stopped_at_s: f64) -> Option<f64> {
    let before: Vec<u64> = samples
        .iter()
        .filter(|s| s.at_s < stopped_at_s)
        .map(|s| s.in_flight)
        .collect();
    let baseline = before.iter().copied().max()? as f64;
    let ok = |s: &drive::BacklogSample| s.in_flight as f64 <= baseline * 1.5 + 10.0;
    let after: Vec<&drive::BacklogSample> =
        samples.iter().filter(|s| s.at_s >= stopped_at_s).collect();
    (0..after.len())
        .find(|&i| after[i..].iter().all(|s| ok(s)))
        .map(|i| after[i].at_s - stopped_at_s)
}

/// The settings every coordinator of the test runs with, over production's.
fn coordinator_env(url: &str, fallbacks: &[&str]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("COORDINATOR_ENV", "production"),
        // The cluster's nodes have no management API to create agents' users on: this
        // test is about failover, not identities.
        ("COORDINATOR__SECURITY__AUTHENTICATE_SENDERS", "false"),
        ("COORDINATOR__LOG__FORMAT", "text"),
        // The cluster of its own speaks plain AMQP on loopback.
        ("COORDINATOR__SECURITY__ALLOW_PLAINTEXT", "true"),
        ("COORDINATOR__SECURITY__SIGNATURES", "off"),
        ("COORDINATOR__AMQP__URL", url),
        ("COORDINATOR__INBOX__REBALANCE_INTERVAL", "500ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push((
        "COORDINATOR__AMQP__FALLBACK_URLS".into(),
        fallbacks.join(","),
    ));
    // The load generator's roles are not limited (a role's limit of 0); every other role
    // keeps production's, the seed's numbers.
    env.extend(team::ROLES.iter().map(|role| {
        (
            format!(
                "COORDINATOR__SECURITY__RATE_LIMITS__ROLES__{}",
                role.to_uppercase()
            ),
            "0".to_string(),
        )
    }));
    env
}

/// The design handoffs sent through the agent held to the seed's limits.
fn held_workflow(i: usize) -> String {
    format!("dh-{i}")
}

/// Starts every held design handoff (as a product agent, not limited), then sends each
/// one's creative replies in order, all at once: far over the creative agent's burst.
async fn send_held(url: &str, product_id: &str) -> anyhow::Result<()> {
    let product = AgentClient::connect(url, product_id, PRODUCT).await?;
    let creative = AgentClient::connect(url, CREATIVE_AGENT, CREATIVE).await?;
    let starts: Vec<_> = (0..HELD_WORKFLOWS)
        .map(|i| product.envelope("design_requirements", &held_workflow(i), json!({})))
        .collect();
    product.publish_all(&starts).await?;
    // All at once (pipelined, then every confirm), so that most are over the burst.
    let replies: Vec<_> = (0..HELD_WORKFLOWS)
        .flat_map(|i| HELD_REPLIES.map(|r| creative.envelope(r, &held_workflow(i), json!({}))))
        .collect();
    creative.publish_all(&replies).await?;
    Ok(())
}

/// What the fault did, and when.
struct FaultTimes {
    before: Percentiles,
    during: Percentiles,
    stop_took: Duration,
    start_took: Duration,
    reconnected: Option<Duration>,
    /// Messages held back when the node was stopped, and when it was back.
    held_at_stop: i64,
    back_at: chrono::DateTime<chrono::Utc>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a three-node RabbitMQ cluster of its own: run with `make cluster-test`"]
async fn two_coordinators_on_three_nodes_lose_nothing_when_the_busiest_node_stops_and_returns() {
    let nodes =
        tokio::task::spawn_blocking(|| Rabbit::cluster(3, &["rabbitmq_consistent_hash_exchange"]))
            .await
            .expect("the cluster starts");
    let env = TestEnv::on_broker(&nodes[0]).await;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}/{}", n.amqp_base(), env.vhost))
        .collect();
    // Coordinator i starts on node i and falls back to the others in turn.
    let serves: Vec<Serve> = (0..2)
        .map(|i| {
            let fallbacks: Vec<&str> = (1..3).map(|k| urls[(i + k) % 3].as_str()).collect();
            let vars = coordinator_env(&urls[i], &fallbacks);
            let vars: Vec<(&str, String)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            Serve::spawn(&env, &vars)
        })
        .collect();
    for serve in &serves {
        serve.wait_ready().await;
    }
    let dir = repo_root().join("target/cluster");
    std::fs::create_dir_all(&dir).expect("target/cluster");
    let outcome = run(&env, &nodes, &urls, &serves).await;
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{}", diagnose(&env, &nodes, &serves, &dir).await);
            panic!("{e:#}");
        }
    };
    std::fs::write(dir.join("report.md"), &report).expect("report written");
    eprintln!("{report}");

    for serve in serves {
        serve.signal("-TERM");
        let (code, log) = serve.wait_exit().await;
        assert_eq!(code, Some(0), "{log}");
    }
}

/// The run and every check; the report, or what failed.
async fn run(
    env: &TestEnv,
    nodes: &[Rabbit],
    urls: &[String],
    serves: &[Serve],
) -> anyhow::Result<String> {
    let mut production = coordinator::settings::Settings::load_from(
        &repo_root().join("config"),
        Some("production"),
    )?;
    production.database.url = env.db_url.clone().into();
    production.amqp.url = urls[0].clone().into();
    production.security.authenticate_senders = false;
    production.security.signatures = coordinator::engine::SignatureMode::Off;
    let per_role = 2;
    let logins = team::register(&production, &env.pool, per_role).await?;
    test_support::add_agent(&production, &env.pool, CREATIVE_AGENT, CREATIVE).await;

    let leaders = inbox_leaders(&nodes[0], &env.vhost);
    anyhow::ensure!(
        leaders.len() == production.inbox.partitions as usize,
        "every inbox partition has a leader: {leaders:?}"
    );
    let victim_name = busiest(&leaders);
    let victim = nodes
        .iter()
        .position(|n| n.node() == victim_name)
        .expect("the busiest node is one of the three");
    let led = leaders.values().filter(|n| **n == victim_name).count();
    let agents_url = urls[(victim + 1) % 3].clone();
    eprintln!(
        "cluster: {}; node {victim_name} leads {led} of {} inbox partitions and will be stopped; agents publish through {agents_url}",
        nodes.iter().map(Rabbit::node).collect::<Vec<_>>().join(", "),
        leaders.len()
    );

    let rec = Arc::new(Recorder::default());
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let team = Team::start(&agents_url, &logins, per_role, 20, rec.clone(), done_tx).await?;
    let spec = Spec {
        load: Load::Open {
            msg_per_s: OFFERED_MSG_PER_S,
        },
        warmup: WARMUP,
        window: WINDOW,
        drain: Duration::from_secs(120),
        prefix: "cl".into(),
    };

    // The fault: stop the busiest node at STOP_AT into the window (arming clocks due
    // while it is away, with the creative agent's replies held back), start it again
    // DOWN_FOR later. The handoff latencies of each phase are taken as it ends.
    // The coordinator that started on the victim (the topology's declarations put the
    // partitions' leaders on the coordinators' nodes) must reconnect through a fallback.
    let victims_coordinator = serves.get(victim).map(|s| s.http);
    let product_id = team::agent_id(PRODUCT, 0);
    let fault = {
        let rec = rec.clone();
        let pool = env.pool.clone();
        let victim_node = &nodes[victim];
        let (agents_url, product_id) = (&agents_url, &product_id);
        async move {
            tokio::time::sleep(WARMUP + STOP_AT - HELD_LEAD).await;
            send_held(agents_url, product_id).await?;
            tokio::time::sleep(HELD_LEAD).await;
            let held_at_stop: i64 = sqlx::query_scalar("SELECT count(*) FROM deferred_messages")
                .fetch_one(&pool)
                .await?;
            let before = rec.handoff.take();
            let stopped = Instant::now();
            tokio::task::block_in_place(|| victim_node.stop_node());
            let stop_took = stopped.elapsed();
            let reconnect = async {
                let http = victims_coordinator?;
                loop {
                    if test_support::metric(http, "coordinator_broker_connects_total ").await >= 2.0
                    {
                        return Some(stopped.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            let down = async {
                loadgen::bench::arm_due_clocks(&pool, CLOCKS).await?;
                tokio::time::sleep(DOWN_FOR.saturating_sub(stopped.elapsed())).await;
                anyhow::Ok(())
            };
            let (reconnected, armed) = tokio::join!(
                async {
                    tokio::time::timeout(DOWN_FOR, reconnect)
                        .await
                        .ok()
                        .flatten()
                },
                down
            );
            armed?;
            let t = Instant::now();
            tokio::task::block_in_place(|| victim_node.start_node());
            let start_took = t.elapsed();
            let during = rec.handoff.take();
            anyhow::Ok(FaultTimes {
                before,
                during,
                stop_took,
                start_took,
                reconnected,
                held_at_stop,
                back_at: chrono::Utc::now(),
            })
        }
    };
    let driven = drive::run(&team, &rec, &spec, done_rx, None, || async { None });
    let (observed, fault) = tokio::join!(driven, fault);
    team.close().await;
    let fault = fault?;
    if victims_coordinator.is_some() {
        anyhow::ensure!(
            fault.reconnected.is_some(),
            "the coordinator on the stopped node did not reconnect to another node while it was down"
        );
    }

    // Every workflow started completed.
    let started = Counters::get(&rec.counters.started);
    anyhow::ensure!(
        observed.unfinished == 0,
        "{} of {started} workflows unfinished",
        observed.unfinished
    );
    let completed = env
        .scalar_i64("SELECT count(*) FROM workflows WHERE state = 'completed' AND id LIKE 'cl-%'")
        .await;
    anyhow::ensure!(
        completed == started as i64,
        "{completed} workflows completed, {started} started"
    );
    // No message applied twice.
    let per_workflow: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT workflow_id, count(*), count(DISTINCT message_id) FROM workflow_events
           JOIN workflows w ON w.id = workflow_id AND w.kind = 'feature_delivery'
         WHERE workflow_id LIKE 'cl-%' GROUP BY workflow_id",
    )
    .fetch_all(&env.pool)
    .await?;
    anyhow::ensure!(
        per_workflow.len() as u64 == started,
        "{} workflows have a history, {started} started",
        per_workflow.len()
    );
    for (wf, events, distinct) in &per_workflow {
        anyhow::ensure!(
            (*events as u64, *distinct as u64) == (MESSAGES_PER_WORKFLOW, MESSAGES_PER_WORKFLOW),
            "{wf}: {events} history rows, {distinct} distinct message ids"
        );
    }
    let dead = env.scalar_i64("SELECT count(*) FROM dead_letters").await;
    anyhow::ensure!(dead == 0, "{dead} dead letters");
    // Every clock fired, once.
    let (breached, escalations, distinct): (i64, i64, i64) = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r: (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM sla_clocks WHERE workflow_id LIKE 'tmr-%' AND status = 'breached'),
                        count(*), count(DISTINCT clock_id)
                 FROM escalations WHERE workflow_id LIKE 'tmr-%' AND level = 1",
            )
            .fetch_one(&env.pool)
            .await?;
            if r.0 >= CLOCKS || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    anyhow::ensure!(
        (breached, escalations, distinct) == (CLOCKS, CLOCKS, CLOCKS),
        "clocks breached {breached}, escalations {escalations} for {distinct} clocks; {CLOCKS} armed"
    );
    let held = held_applied_in_order(env, &fault).await?;

    let after = observed.handoff;
    let recovery = recovery_s(&observed.backlog, STOP_AT.as_secs_f64());
    let line = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |\n",
            p.n, p.p50, p.p99, p.max
        )
    };
    Ok(format!(
        "# Cluster test\n\n\
         Three RabbitMQ nodes ({}), production settings (quorum queues, rate limits on, the \
         load generator's roles unlimited), two coordinators, \
         {} agents offering {OFFERED_MSG_PER_S:.0} agent msg/s for {:?} after {:?} of warm-up. \
         {STOP_AT:?} into the window node {victim_name}, leader of {led} of {} inbox partitions, \
         was stopped (`rabbitmqctl stop`, {:.1?}) with {CLOCKS} clocks falling due while \
         it was away, and started again {DOWN_FOR:?} later (boot and rejoin {:.1?}).\n\n\
         - started and completed: {started} workflows ({:.1} wf/s, {:.0} agent msg/s over the window)\n\
         - applied twice: 0; dead letters: 0; clocks fired {breached}/{CLOCKS}, each once\n\
         - the coordinator that was connected to that node: {}\n\
         - in-flight work back to its level before the stop: {} after the stop\n\
         - {held}\n\n\
         | handoff latency, ms | n | p50 | p99 | max |\n|---|---|---|---|---|\n{}{}{}",
        nodes.iter().map(Rabbit::node).collect::<Vec<_>>().join(", "),
        per_role * team::ROLES.len(),
        WINDOW,
        WARMUP,
        leaders.len(),
        fault.stop_took,
        fault.start_took,
        observed.workflows_per_s(),
        observed.messages_per_s(),
        match (victims_coordinator, fault.reconnected) {
            (None, _) => "none (no coordinator had started on it)".to_string(),
            (Some(_), Some(t)) => format!("reconnected through a fallback node within {t:.1?} of the stop"),
            (Some(_), None) => "did not reconnect while it was down".to_string(),
        },
        recovery.map_or_else(|| "not within the window".to_string(), |s| format!("{s:.0} s")),
        line("before the stop", &fault.before),
        line("node down (until it was started again)", &fault.during),
        line("after", &after),
    ))
}

/// The creative agent's replies, held back by its rate limit across the node's absence:
/// every design handoff delivered, its history in the order sent, some replies applied
/// after the node was back, nothing left held. What the report says of them.
async fn held_applied_in_order(env: &TestEnv, fault: &FaultTimes) -> anyhow::Result<String> {
    anyhow::ensure!(
        fault.held_at_stop > 0,
        "nothing was held back when the node stopped: the creative agent's replies were all within its limit"
    );
    let ids: Vec<String> = (0..HELD_WORKFLOWS).map(held_workflow).collect();
    let expected: Vec<String> = std::iter::once("design_requirements")
        .chain(HELD_REPLIES)
        .map(str::to_string)
        .collect();
    // Released at the seed's 100 a minute: well within this.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let delivered = env
            .scalar_i64(
                "SELECT count(*) FROM workflows WHERE state = 'delivered' AND id LIKE 'dh-%'",
            )
            .await;
        if delivered == HELD_WORKFLOWS as i64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{delivered} of {HELD_WORKFLOWS} design handoffs delivered; {} messages still held",
            env.scalar_i64("SELECT count(*) FROM deferred_messages")
                .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let histories: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT workflow_id, array_agg(message_type ORDER BY seq) FROM workflow_events
          WHERE workflow_id = ANY($1) GROUP BY workflow_id",
    )
    .bind(&ids)
    .fetch_all(&env.pool)
    .await?;
    anyhow::ensure!(
        histories.len() == HELD_WORKFLOWS,
        "{} histories",
        histories.len()
    );
    for (wf, history) in &histories {
        anyhow::ensure!(history == &expected, "{wf}'s history: {history:?}");
    }
    let after_return: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM workflow_events WHERE workflow_id = ANY($1)
            AND source_agent_id = $2 AND occurred_at > $3",
    )
    .bind(&ids)
    .bind(CREATIVE_AGENT)
    .bind(fault.back_at)
    .fetch_one(&env.pool)
    .await?;
    if after_return == 0 {
        let last: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT max(occurred_at) FROM workflow_events WHERE source_agent_id = $1",
        )
        .bind(CREATIVE_AGENT)
        .fetch_one(&env.pool)
        .await?;
        anyhow::bail!(
            "no held reply was applied after the node returned (at {}, {:.1?} after it was started); the last at {last:?}",
            fault.back_at,
            fault.start_took
        );
    }
    let left = env
        .scalar_i64("SELECT count(*) FROM deferred_messages")
        .await;
    anyhow::ensure!(left == 0, "{left} messages still held at the end");
    Ok(format!(
        "rate limits: the creative agent (the seed's 100 a minute, in each of the two coordinators) sent {} replies at once; \
         {} were held back when the node stopped, {after_return} applied after it was back; \
         all {HELD_WORKFLOWS} design handoffs delivered, each history in the order sent",
        HELD_WORKFLOWS * HELD_REPLIES.len(),
        fault.held_at_stop
    ))
}

/// Where everything was when the test failed: every coordinator's last log lines (the
/// whole logs written to `dir`), the workflows not completed by state, and every queue's
/// depth as the first node that answers sees it. Also written to `dir/failure.md`.
async fn diagnose(
    env: &TestEnv,
    nodes: &[Rabbit],
    serves: &[Serve],
    dir: &std::path::Path,
) -> String {
    let mut out = String::from("# Where the cluster test was when it failed\n\n");
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, state, count(*) FROM workflows
          WHERE state NOT IN ('completed', 'delivered') GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap_or_default();
    out.push_str("## Workflows not finished, by kind and state\n\n| kind | state | workflows |\n|---|---|---:|\n");
    for (kind, state, n) in states {
        let _ = writeln!(out, "| {kind} | {state} | {n} |");
    }
    let held = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deferred_messages")
        .fetch_one(&env.pool)
        .await
        .map_or_else(|e| e.to_string(), |n| n.to_string());
    let _ = writeln!(out, "\nMessages held back by the rate limits: {held}");
    let queues = nodes
        .iter()
        .map(|n| n.describe_queues(&env.vhost))
        .find(|q| !q.starts_with('('))
        .unwrap_or_else(|| "(no node answered)".into());
    let _ = write!(out, "\n## Queues\n\n```\n{queues}```\n");
    for (i, serve) in serves.iter().enumerate() {
        let log = serve.log();
        let path = dir.join(format!("coordinator-{i}.log"));
        let _ = std::fs::write(&path, &log);
        let lines: Vec<&str> = log.lines().collect();
        let _ = write!(
            out,
            "\n## Coordinator {i} (last 40 lines; the whole log: {})\n\n```\n{}\n```\n",
            path.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    let path = dir.join("failure.md");
    if std::fs::write(&path, &out).is_ok() {
        let _ = writeln!(out, "\n(written to {})", path.display());
    }
    out
}
