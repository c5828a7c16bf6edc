//! Faults on services of a run's own, for `make soak` and the shutdown test
//! (`tests/shutdown.rs`): a PostgreSQL cluster and a RabbitMQ node started from the
//! machine's installation on spare ports ([`test_support::isolated`]), a database and a
//! vhost on them ([`Own`]), and a [`Fleet`]: coordinators as child processes logging to
//! files, and the agents ([`Team`]) under a steady load ([`offer`]). A fault stops
//! these, never the machine's PostgreSQL or RabbitMQ.
//!
//! When a run fails, [`Fleet::diagnose`] says where everything was at that moment: the
//! last lines of each coordinator's log (and the file), the states of the workflows that
//! did not complete, and the depth of every queue.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use test_support::{isolated, TestEnv};
use tokio::sync::mpsc;

use super::bench::{last_lines, Coordinator, Launch, Stopped};
use super::stats::Recorder;
use super::team::{self, Logins, Team, MESSAGES_PER_WORKFLOW};

/// A PostgreSQL cluster and a RabbitMQ node of the run's own, and a database and a
/// vhost on them. (Fields drop in order: the database and the vhost first.)
pub struct Own {
    pub env: TestEnv,
    pub rabbit: isolated::Rabbit,
    pub pg: isolated::Postgres,
}

impl Own {
    /// Starts both (the node with the consistent-hash exchange the inbox needs).
    pub async fn start() -> anyhow::Result<Own> {
        let (pg, rabbit) = tokio::task::spawn_blocking(|| {
            (
                isolated::Postgres::start(),
                isolated::Rabbit::start(&["rabbitmq_consistent_hash_exchange"]),
            )
        })
        .await
        .context("could not start a PostgreSQL cluster and a RabbitMQ node of the run's own from the installed packages (the reason is printed above)")?;
        let env = TestEnv::isolated(&pg, &rabbit).await;
        Ok(Own { env, rabbit, pg })
    }

    pub fn db_url(&self) -> &str {
        &self.env.db_url
    }

    pub fn amqp_url(&self) -> &str {
        &self.env.amqp_url
    }
}

/// The faults, each as the soak and the shutdown test inject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The (first) coordinator SIGKILLed, and another started at once.
    KillCoordinator,
    /// Every coordinator's PostgreSQL session terminated (`pg_terminate_backend`).
    TerminateSessions,
    /// PostgreSQL stopped for the outage, then started.
    StopDatabase,
    /// The (first) coordinator SIGTERMed, which must exit 0 within `shutdown.timeout`,
    /// and another started.
    RestartCoordinator,
    /// RabbitMQ's application stopped for the outage, then started; the agents connect
    /// again and handle again what they had not acked.
    RestartBroker,
    /// The second coordinator SIGKILLed (the first takes its partitions over); it is
    /// started again by [`Fleet::refill`].
    KillSecondCoordinator,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::KillCoordinator => "coordinator SIGKILL",
            Fault::TerminateSessions => "pg_terminate_backend",
            Fault::StopDatabase => "PostgreSQL stopped",
            Fault::RestartCoordinator => "coordinator SIGTERM",
            Fault::RestartBroker => "RabbitMQ stopped",
            Fault::KillSecondCoordinator => "second coordinator SIGKILL",
        }
    }
}

/// The agents, shared by the load (which starts workflows through them) and the broker
/// fault (which replaces them).
pub type Agents = Arc<std::sync::Mutex<Option<Team>>>;

/// Coordinators in numbered slots (each a child process of `launch`, its log a file of
/// its own under `out_dir`), the agents, and what they record.
pub struct Fleet<'o> {
    pub own: &'o Own,
    launch: Launch,
    out_dir: PathBuf,
    slots: Vec<Option<Coordinator>>,
    /// Every log a coordinator of this fleet wrote, in the order they were started.
    logs: Vec<PathBuf>,
    pub agents: Agents,
    logins: Logins,
    per_role: usize,
    pub rec: Arc<Recorder>,
}

impl<'o> Fleet<'o> {
    /// Starts `coordinators` coordinators on `own`, registers `per_role` agents of each
    /// role and connects them.
    pub async fn start(
        own: &'o Own,
        launch: Launch,
        out_dir: &Path,
        coordinators: usize,
        per_role: usize,
    ) -> anyhow::Result<Fleet<'o>> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("could not create {}", out_dir.display()))?;
        let settings = launch.settings()?;
        let rec = Arc::new(Recorder::default());
        rec.recording.store(true, Ordering::Relaxed);
        let mut fleet = Fleet {
            own,
            launch,
            out_dir: out_dir.to_path_buf(),
            slots: (0..coordinators).map(|_| None).collect(),
            logs: Vec::new(),
            agents: Arc::default(),
            logins: Logins::default(),
            per_role,
            rec,
        };
        fleet.refill().await?;
        fleet.logins = team::register(&settings, &own.env.pool, per_role).await?;
        fleet.start_team().await?;
        Ok(fleet)
    }

    /// Starts a coordinator in every empty slot, waiting until each is ready.
    pub async fn refill(&mut self) -> anyhow::Result<()> {
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_none() {
                let log = self
                    .out_dir
                    .join(format!("coordinator-{}.log", self.logs.len() + 1));
                self.logs.push(log.clone());
                self.slots[slot] = Some(Coordinator::start(&self.launch, &log).await?);
            }
        }
        Ok(())
    }

    pub fn pid(&self, slot: usize) -> Option<u32> {
        self.slots.get(slot)?.as_ref()?.pid()
    }

    pub fn http(&self, slot: usize) -> Option<&str> {
        Some(self.slots.get(slot)?.as_ref()?.http.as_str())
    }

    /// SIGTERM to the coordinator in `slot`, and how it stopped (the slot is left empty).
    pub async fn sigterm(&mut self, slot: usize) -> Option<(Stopped, PathBuf)> {
        let c = self.slots.get_mut(slot)?.take()?;
        let log = c.log.clone();
        Some((c.stop().await, log))
    }

    async fn kill(&mut self, slot: usize) {
        if let Some(c) = self.slots.get_mut(slot).and_then(Option::take) {
            c.kill().await;
        }
    }

    async fn start_team(&self) -> anyhow::Result<()> {
        // Completion is read from the database, not from the team's own count.
        let (done, _) = mpsc::unbounded_channel();
        let team = Team::start(
            self.own.amqp_url(),
            &self.logins,
            self.per_role,
            50,
            self.rec.clone(),
            done,
        )
        .await?;
        if let Ok(mut a) = self.agents.lock() {
            *a = Some(team);
        }
        Ok(())
    }

    async fn close_team(&self) {
        let team = self.agents.lock().ok().and_then(|mut a| a.take());
        if let Some(t) = team {
            t.close().await;
        }
    }

    /// Injects `fault`; the database and the broker stay down for `outage`. A
    /// coordinator SIGTERMed by [`Fault::RestartCoordinator`] that does not exit 0 is an
    /// error naming its log.
    pub async fn inject(&mut self, fault: Fault, outage: Duration) -> anyhow::Result<()> {
        match fault {
            Fault::KillCoordinator => {
                self.kill(0).await;
                self.refill().await?;
            }
            Fault::KillSecondCoordinator => self.kill(1).await,
            Fault::RestartCoordinator => {
                if let Some((stopped, log)) = self.sigterm(0).await {
                    ensure_exited_0(&stopped, &log)?;
                }
                self.refill().await?;
            }
            Fault::TerminateSessions => {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE datname = current_database() AND application_name = 'coordinator'",
                )
                .execute(&self.own.env.pool)
                .await
                .context("terminating the coordinators' sessions")?;
            }
            Fault::StopDatabase => {
                let pg = &self.own.pg;
                tokio::task::block_in_place(|| pg.stop());
                tokio::time::sleep(outage).await;
                tokio::task::block_in_place(|| pg.start_again());
            }
            Fault::RestartBroker => {
                let rabbit = &self.own.rabbit;
                tokio::task::block_in_place(|| rabbit.stop_app());
                tokio::time::sleep(outage).await;
                tokio::task::block_in_place(|| rabbit.start_app());
                // The agents' connections died with it: they connect again, and handle
                // again what they had not acked (their replies carry the same ids).
                self.close_team().await;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match self.start_team().await {
                        Ok(()) => break,
                        Err(e) if Instant::now() < deadline => {
                            tracing::debug!(error = %e, "agents reconnecting");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => return Err(e.context("the agents could not reconnect")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops the agents and SIGTERMs every coordinator; each must exit 0.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.close_team().await;
        for slot in 0..self.slots.len() {
            if let Some((stopped, log)) = self.sigterm(slot).await {
                ensure_exited_0(&stopped, &log)?;
            }
        }
        Ok(())
    }

    /// What a failing run reports: the last lines of every coordinator's log (with the
    /// files' paths), the workflows of `started` that did not complete, by state, and
    /// every queue's depth. Also written to `failure.md` in the output folder.
    pub async fn diagnose(&self, started: &[String]) -> String {
        let mut out = String::from("# Where the run was when it failed\n\n");
        out.push_str(&unfinished(&self.own.env.pool, started).await);
        let _ = write!(
            out,
            "\n## Queues of vhost {}\n\n```\n{}```\n",
            self.own.env.vhost,
            self.own.rabbit.describe_queues(&self.own.env.vhost)
        );
        for log in &self.logs {
            let _ = write!(
                out,
                "\n## {} (last 40 lines)\n\n```\n{}\n```\n",
                log.display(),
                last_lines(log, 40)
            );
        }
        let path = self.out_dir.join("failure.md");
        if std::fs::write(&path, &out).is_ok() {
            let _ = writeln!(out, "\n(written to {})", path.display());
        }
        out
    }
}

/// An error naming the log, unless the coordinator exited 0.
pub fn ensure_exited_0(stopped: &Stopped, log: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        stopped.exited_0(),
        "the coordinator did not exit 0 on SIGTERM ({:?} after {:.1?}); its last lines ({}):\n{}",
        stopped.status,
        stopped.took,
        log.display(),
        last_lines(log, 20)
    );
    Ok(())
}

/// The workflows of `started` that did not complete: how many in each state (none: no
/// row at all), with a few ids of each.
pub async fn unfinished(pool: &PgPool, started: &[String]) -> String {
    /// A state (none: no workflow row), how many are in it, a few of their ids.
    type InState = (Option<String>, i64, Vec<String>);
    let rows: Result<Vec<InState>, _> = sqlx::query_as(
        "SELECT w.state, count(*), (array_agg(s.id ORDER BY s.id))[1:5]
           FROM unnest($1::text[]) AS s(id) LEFT JOIN workflows w ON w.id = s.id
          WHERE w.state IS DISTINCT FROM 'completed'
          GROUP BY w.state ORDER BY count(*) DESC",
    )
    .bind(started)
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) if rows.is_empty() => format!(
            "Every one of the {} workflows started has completed.\n",
            started.len()
        ),
        Ok(rows) => {
            let mut out = format!(
                "## Unfinished workflows (of {} started)\n\n| state | workflows | e.g. |\n|---|---:|---|\n",
                started.len()
            );
            for (state, n, ids) in rows {
                let _ = writeln!(
                    out,
                    "| {} | {n} | {} |",
                    state.as_deref().unwrap_or("(no workflow row)"),
                    ids.join(", ")
                );
            }
            out
        }
        Err(e) => format!("(could not read the workflows' states: {e})\n"),
    }
}

/// Offers `per_second` workflows until `until`, through whichever agents are current,
/// naming them `{prefix}-{n}` (`n` counts every workflow offered).
pub async fn offer(agents: &Agents, per_second: f64, until: Instant, prefix: &str, n: &AtomicU64) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0;
    let mut last = Instant::now();
    while Instant::now() < until {
        tick.tick().await;
        owed += per_second * last.elapsed().as_secs_f64();
        last = Instant::now();
        let Ok(agents) = agents.lock() else { continue };
        while owed >= 1.0 {
            owed -= 1.0;
            let k = n.fetch_add(1, Ordering::Relaxed) + 1;
            // While the agents are replaced, the workflows offered are not started (nor
            // counted as started).
            if let Some(team) = agents.as_ref() {
                team.start_workflow(format!("{prefix}-{k}"));
            }
        }
    }
}

/// What became of the workflows a run started.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Workflows whose requirements_ready the broker confirmed.
    pub started: u64,
    /// Workflows completed (all of them, started or not: a start whose confirm was lost in
    /// a broker restart may have been routed all the same).
    pub completed: i64,
    /// Started workflows that never completed.
    pub lost: i64,
    /// Agent messages applied more than once (history rows beyond one per message id).
    pub applied_twice: i64,
    /// Completed workflows whose history is not exactly the happy path's messages.
    pub irregular: i64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.applied_twice == 0 && self.irregular == 0
    }
}

/// Waits up to `drain` for every started workflow to complete, then counts what was
/// lost, applied twice or irregular.
pub async fn outcome(
    pool: &PgPool,
    started: &[String],
    drain: Duration,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + drain;
    let lost = loop {
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS s(id)
               LEFT JOIN workflows w ON w.id = s.id
              WHERE w.state IS DISTINCT FROM 'completed'",
        )
        .bind(started)
        .fetch_one(pool)
        .await
        .ok();
        match (open, Instant::now() > deadline) {
            (Some(0), _) => break 0,
            (Some(n), true) => break n,
            (None, true) => anyhow::bail!("PostgreSQL did not answer after the run"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workflows WHERE state = 'completed'")
            .fetch_one(pool)
            .await
            .context("count completed workflows")?;
    let applied_twice: i64 = sqlx::query_scalar(
        // A message's id is in two workflows' histories where it started a follow-on.
        "SELECT count(*) - count(DISTINCT (workflow_id, message_id)) FROM workflow_events",
    )
    .fetch_one(pool)
    .await
    .context("count history rows")?;
    let irregular: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT workflow_id FROM workflow_events GROUP BY workflow_id
          HAVING count(*) <> {MESSAGES_PER_WORKFLOW}) w
          JOIN workflows ON workflows.id = w.workflow_id AND workflows.state = 'completed'
                        AND workflows.kind = 'feature_delivery'"
    ))
    .fetch_one(pool)
    .await
    .context("count irregular histories")?;
    Ok(Outcome {
        started: started.len() as u64,
        completed,
        lost,
        applied_twice,
        irregular,
    })
}

/// The ids of the workflows whose start the broker confirmed, so far.
pub fn started_ids(rec: &Recorder) -> Vec<String> {
    rec.started_ids
        .lock()
        .map(|ids| ids.clone())
        .unwrap_or_default()
}
