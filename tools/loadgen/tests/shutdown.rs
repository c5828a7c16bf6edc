//! SIGTERM right after every fault (`make shutdown-test`; not part of `make test`, run
//! by `.ci/run` after it). Two coordinators on a PostgreSQL cluster and a RabbitMQ node
//! of the test's own, ten agents offering 1,000 messages a second throughout. Round
//! after round, each fault the soak injects strikes (PostgreSQL stopped and started, the
//! coordinators' sessions terminated, RabbitMQ stopped and started, the second
//! coordinator killed) and the first coordinator is sent SIGTERM right after it: at
//! once, as the circuit breaker lets the backlog through, or while it drains. Every
//! shutdown must exit 0 within `shutdown.timeout`; at the end every workflow started
//! has completed and no message was applied twice. The figures go to
//! `target/shutdown/report.md`; a failure prints where everything was (and writes it to
//! `target/shutdown/failure.md`). `COORDINATOR_BIN` names another coordinator binary
//! to run (an earlier commit's, say) instead of the one cargo built.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::bench::{Launch, Stopped};
use loadgen::faults::{self, Fault, Fleet, Own};
use loadgen::team::MESSAGES_PER_WORKFLOW;
use test_support::{coordinator_bin, repo_root};

const MSG_PER_S: f64 = 1000.0;
/// The faults, in the order they strike in each round.
const FAULTS: [Fault; 4] = [
    Fault::StopDatabase,
    Fault::TerminateSessions,
    Fault::RestartBroker,
    Fault::KillSecondCoordinator,
];
/// How long after each fault is over the SIGTERM comes, by round: at once (the breaker
/// open, the broker session being made again, partitions being taken over), as the
/// breaker lets the backlog through, and while it drains.
const SIGTERM_AFTER: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(2500),
    Duration::from_secs(5),
];
/// How long the database or the broker stays down.
const OUTAGE: Duration = Duration::from_secs(3);
/// Load before the first fault, and between a restart and the next fault.
const WARMUP: Duration = Duration::from_secs(10);
const BETWEEN: Duration = Duration::from_secs(5);
/// The shipped `shutdown.timeout`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// One SIGTERM: after which fault, how long after, and how the coordinator stopped.
struct Shutdown {
    fault: Fault,
    after: Duration,
    stopped: Stopped,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a PostgreSQL cluster and a RabbitMQ node of its own and runs ~4 minutes: `make shutdown-test`"]
async fn sigterm_right_after_every_fault_exits_0_within_the_timeout_and_loses_nothing() {
    let own = Own::start().await.expect("services of the test's own");
    let out = repo_root().join("target/shutdown");
    let launch = Launch {
        bin: std::env::var_os("COORDINATOR_BIN").map_or_else(coordinator_bin, Into::into),
        config_dir: repo_root().join("config"),
        profile: "default".into(),
        db_url: own.db_url().to_string(),
        amqp_url: own.amqp_url().to_string(),
        // A breaker opened by an outage lets work through again after two seconds (not
        // sixty), so the SIGTERMs of the later rounds strike while the backlog drains.
        env: vec![(
            "COORDINATOR__CIRCUIT_BREAKER__OPEN_TIMEOUT".into(),
            "2s".into(),
        )],
    };
    let mut fleet = Fleet::start(&own, launch, &out, 2, 2)
        .await
        .expect("two coordinators and ten agents");
    let offered = Arc::new(AtomicU64::new(0));
    let load = {
        let (agents, offered) = (fleet.agents.clone(), offered.clone());
        tokio::spawn(async move {
            let per_second = MSG_PER_S / MESSAGES_PER_WORKFLOW as f64;
            let until = Instant::now() + Duration::from_secs(3600);
            faults::offer(&agents, per_second, until, "sd", &offered).await
        })
    };
    let run = sigterms(&mut fleet).await;
    load.abort();
    let started = faults::started_ids(&fleet.rec);
    let shutdowns = match run {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", fleet.diagnose(&started).await);
            panic!("{e:#}");
        }
    };
    let outcome = faults::outcome(&own.env.pool, &started, Duration::from_secs(120))
        .await
        .expect("the outcome is read");
    let report = report(&shutdowns, &outcome);
    std::fs::write(out.join("report.md"), &report).expect("report written");
    eprintln!("{report}");
    if !outcome.ok() {
        eprintln!("{}", fleet.diagnose(&started).await);
        panic!("{outcome:?}");
    }
    fleet
        .close()
        .await
        .expect("both coordinators exit 0 at the end");
}

/// Every round of faults, each followed by a SIGTERM to the first coordinator, which is
/// then started again (with the second, if the fault killed it).
async fn sigterms(fleet: &mut Fleet<'_>) -> anyhow::Result<Vec<Shutdown>> {
    tokio::time::sleep(WARMUP).await;
    let mut done = Vec::new();
    for after in SIGTERM_AFTER {
        for fault in FAULTS {
            eprintln!("{}, then SIGTERM {after:?} later", fault.as_str());
            fleet.inject(fault, OUTAGE).await?;
            tokio::time::sleep(after).await;
            let Some((stopped, log)) = fleet.sigterm(0).await else {
                anyhow::bail!("the first coordinator was not running");
            };
            eprintln!("  exit {:?} after {:.1?}", stopped.status, stopped.took);
            faults::ensure_exited_0(&stopped, &log)?;
            anyhow::ensure!(
                stopped.took < SHUTDOWN_TIMEOUT,
                "the shutdown took {:.1?}, past shutdown.timeout",
                stopped.took
            );
            done.push(Shutdown {
                fault,
                after,
                stopped,
            });
            fleet.refill().await?;
            tokio::time::sleep(BETWEEN).await;
        }
    }
    Ok(done)
}

fn report(shutdowns: &[Shutdown], outcome: &faults::Outcome) -> String {
    let mut out = format!(
        "# SIGTERM right after every fault\n\n\
         Two coordinators (default settings, the breaker's open_timeout 2 s), ten agents \
         offering {MSG_PER_S:.0} agent messages a second, a PostgreSQL cluster and a \
         RabbitMQ node of the test's own; outages of {OUTAGE:?}.\n\n\
         | fault | SIGTERM after | exit | shutdown took |\n|---|---|---|---|\n"
    );
    for s in shutdowns {
        let _ = writeln!(
            out,
            "| {} | {:?} | {} | {:.1?} |",
            s.fault.as_str(),
            s.after,
            s.stopped
                .status
                .and_then(|s| s.code())
                .map_or("killed".to_string(), |c| c.to_string()),
            s.stopped.took
        );
    }
    let longest = shutdowns
        .iter()
        .map(|s| s.stopped.took)
        .max()
        .unwrap_or_default();
    let _ = write!(
        out,
        "\n{} shutdowns, every one exit 0, the longest {longest:.1?} (shutdown.timeout {SHUTDOWN_TIMEOUT:?}).\n\
         Workflows started: {}; completed: {}; lost: **{}**; applied twice: **{}**; irregular histories: **{}**.\n",
        shutdowns.len(),
        outcome.started,
        outcome.completed,
        outcome.lost,
        outcome.applied_twice,
        outcome.irregular,
    );
    out
}
