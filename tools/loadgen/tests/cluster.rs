//! Scale-out on a real RabbitMQ cluster (`make cluster-test`; not part of `make test`):
//! three RabbitMQ nodes of this machine's installation on ports of their own, clustered;
//! the production settings (quorum queues); two coordinators, each with the three nodes
//! in `amqp.url` and `amqp.fallback_urls` (one starting on the node the other does
//! not); the load generator's agents publishing through a node that stays up. Mid-run
//! the node that leads most inbox partitions is stopped, clocks fall due while it is
//! away, and it is started again. Every workflow started completes, no message is
//! applied twice, no clock fires twice; the figures go to `target/cluster/report.md`
//! (and into docs/scaling.md by hand).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::drive::{self, Load, Spec};
use loadgen::stats::{Counters, Percentiles, Recorder};
use loadgen::team::{self, Team, MESSAGES_PER_WORKFLOW};
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
            Serve::spawn(
                &env,
                &[
                    ("COORDINATOR_ENV", "production".to_string()),
                    // The cluster's nodes have no management API to create agents'
                    // users on: this test is about failover, not identities.
                    (
                        "COORDINATOR__SECURITY__AUTHENTICATE_SENDERS",
                        "false".to_string(),
                    ),
                    ("COORDINATOR__LOG__FORMAT", "text".to_string()),
                    // The cluster of its own speaks plain AMQP on loopback.
                    ("COORDINATOR__SECURITY__ALLOW_PLAINTEXT", "true".to_string()),
                    ("COORDINATOR__SECURITY__SIGNATURES", "off".to_string()),
                    ("COORDINATOR__AMQP__URL", urls[i].clone()),
                    ("COORDINATOR__AMQP__FALLBACK_URLS", fallbacks.join(",")),
                    (
                        "COORDINATOR__INBOX__REBALANCE_INTERVAL",
                        "500ms".to_string(),
                    ),
                ],
            )
        })
        .collect();
    for serve in &serves {
        serve.wait_ready().await;
    }
    let mut production =
        coordinator::settings::Settings::load_from(&repo_root().join("config"), Some("production"))
            .expect("production settings");
    production.database.url = env.db_url.clone().into();
    production.amqp.url = urls[0].clone().into();
    production.security.authenticate_senders = false;
    production.security.signatures = coordinator::engine::SignatureMode::Off;
    let per_role = 2;
    let logins = team::register(&production, &env.pool, per_role)
        .await
        .expect("agents registered");

    let leaders = inbox_leaders(&nodes[0], &env.vhost);
    assert_eq!(
        leaders.len(),
        production.inbox.partitions as usize,
        "{leaders:?}"
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
    let team = Team::start(&agents_url, &logins, per_role, 20, rec.clone(), done_tx)
        .await
        .expect("team");
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
    // while it is away), start it again DOWN_FOR later. The handoff latencies of each
    // phase are taken as it ends.
    // The coordinator that started on the victim (the topology's declarations put the
    // partitions' leaders on the coordinators' nodes) must reconnect through a fallback.
    let victims_coordinator = serves.get(victim).map(|s| s.http);
    let fault = {
        let rec = rec.clone();
        let pool = env.pool.clone();
        let victim_node = &nodes[victim];
        async move {
            tokio::time::sleep(WARMUP + STOP_AT).await;
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
                loadgen::bench::arm_due_clocks(&pool, CLOCKS)
                    .await
                    .expect("clocks armed");
                tokio::time::sleep(DOWN_FOR.saturating_sub(stopped.elapsed())).await;
            };
            let (reconnected, ()) = tokio::join!(
                async {
                    tokio::time::timeout(DOWN_FOR, reconnect)
                        .await
                        .ok()
                        .flatten()
                },
                down
            );
            let t = Instant::now();
            tokio::task::block_in_place(|| victim_node.start_node());
            let start_took = t.elapsed();
            let during = rec.handoff.take();
            (before, during, stop_took, start_took, reconnected)
        }
    };
    let run = drive::run(&team, &rec, &spec, done_rx, None, || async { None });
    let (observed, (before, during, stop_took, start_took, reconnected)) = tokio::join!(run, fault);
    team.close().await;
    if victims_coordinator.is_some() {
        assert!(
            reconnected.is_some(),
            "the coordinator on the stopped node did not reconnect to another node while it was down"
        );
    }

    // Every workflow started completed.
    let started = Counters::get(&rec.counters.started);
    assert_eq!(
        observed.unfinished, 0,
        "{} of {started} workflows unfinished",
        observed.unfinished
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM workflows WHERE state = 'completed' AND id LIKE 'cl-%'"
        )
        .await,
        started as i64
    );
    // No message applied twice.
    let per_workflow: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT workflow_id, count(*), count(DISTINCT message_id) FROM workflow_events
           JOIN workflows w ON w.id = workflow_id AND w.kind = 'feature_delivery'
         WHERE workflow_id LIKE 'cl-%' GROUP BY workflow_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(per_workflow.len() as u64, started);
    for (wf, events, distinct) in &per_workflow {
        assert_eq!(
            (*events as u64, *distinct as u64),
            (MESSAGES_PER_WORKFLOW, MESSAGES_PER_WORKFLOW),
            "{wf}"
        );
    }
    assert_eq!(env.scalar_i64("SELECT count(*) FROM dead_letters").await, 0);
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
            .await
            .expect("clocks");
            if r.0 >= CLOCKS || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    assert_eq!((breached, escalations, distinct), (CLOCKS, CLOCKS, CLOCKS));

    let after = observed.handoff;
    let recovery = recovery_s(&observed.backlog, STOP_AT.as_secs_f64());
    let line = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |\n",
            p.n, p.p50, p.p99, p.max
        )
    };
    let report = format!(
        "# Cluster test\n\n\
         Three RabbitMQ nodes ({}), production settings (quorum queues), two coordinators, \
         {} agents offering {OFFERED_MSG_PER_S:.0} agent msg/s for {:?} after {:?} of warm-up. \
         {STOP_AT:?} into the window node {victim_name}, leader of {led} of {} inbox partitions, \
         was stopped (`rabbitmqctl stop`, {stop_took:.1?}) with {CLOCKS} clocks falling due while \
         it was away, and started again {DOWN_FOR:?} later (boot and rejoin {start_took:.1?}).\n\n\
         - started and completed: {started} workflows ({:.1} wf/s, {:.0} agent msg/s over the window)\n\
         - applied twice: 0; dead letters: 0; clocks fired {breached}/{CLOCKS}, each once\n\
         - the coordinator that was connected to that node: {}\n\
         - in-flight work back to its level before the stop: {} after the stop\n\n\
         | handoff latency, ms | n | p50 | p99 | max |\n|---|---|---|---|---|\n{}{}{}",
        nodes.iter().map(Rabbit::node).collect::<Vec<_>>().join(", "),
        per_role * team::ROLES.len(),
        WINDOW,
        WARMUP,
        leaders.len(),
        observed.workflows_per_s(),
        observed.messages_per_s(),
        match (victims_coordinator, reconnected) {
            (None, _) => "none (no coordinator had started on it)".to_string(),
            (Some(_), Some(t)) => format!("reconnected through a fallback node within {t:.1?} of the stop"),
            (Some(_), None) => "did not reconnect while it was down".to_string(),
        },
        recovery.map_or_else(|| "not within the window".to_string(), |s| format!("{s:.0} s")),
        line("before the stop", &before),
        line("node down (until it was started again)", &during),
        line("after", &after),
    );
    let dir = repo_root().join("target/cluster");
    std::fs::create_dir_all(&dir).expect("target/cluster");
    std::fs::write(dir.join("report.md"), &report).expect("report written");
    eprintln!("{report}");

    for serve in serves {
        serve.signal("-TERM");
        let (code, log) = serve.wait_exit().await;
        assert_eq!(code, Some(0), "{log}");
    }
}
