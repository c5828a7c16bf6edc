//! `loadgen soak` (`make soak`): a steady load through the full happy path for many
//! minutes, with one fault a minute, rotating through those `tests/faults.rs` injects:
//! the coordinator killed (SIGKILL), its PostgreSQL sessions terminated, PostgreSQL
//! stopped for a few seconds, the coordinator restarted with SIGTERM, and RabbitMQ
//! stopped and started. It reports, per minute, the handoff latency and the
//! coordinator's memory, and at the end the messages lost and applied twice (both
//! must be 0). It stops and starts the machine's PostgreSQL and RabbitMQ: run it where
//! nothing else uses them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::process::Command;
use tokio::sync::mpsc;

use super::bench::{rabbitmqctl, Coordinator, Fresh};
use super::stats::{rss_mib, Counters, Recorder};
use super::team::{self, Team, MESSAGES_PER_WORKFLOW};

/// Ten agents, as the source documents' normal scenario.
const AGENTS_PER_ROLE: usize = 2;
use coordinator::settings::Settings;

pub struct Options {
    pub bin: PathBuf,
    pub config_dir: PathBuf,
    pub out_dir: PathBuf,
    pub minutes: u64,
    /// Agent messages per second offered (11 per workflow).
    pub rate: f64,
    /// How long a fault keeps PostgreSQL or RabbitMQ down.
    pub outage: Duration,
    /// False: no faults at all (one coordinator process throughout).
    pub faults: bool,
    /// After the load stops, how long workflows in flight may take to complete.
    pub drain: Duration,
}

/// The faults, in the order they are injected (one a minute, from the second minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillCoordinator,
    TerminateSessions,
    StopDatabase,
    RestartCoordinator,
    RestartBroker,
}

pub const ROTATION: [Fault; 5] = [
    Fault::KillCoordinator,
    Fault::TerminateSessions,
    Fault::StopDatabase,
    Fault::RestartCoordinator,
    Fault::RestartBroker,
];

impl Fault {
    /// The fault injected at the start of minute `m` (none in the first).
    pub fn of_minute(m: u64) -> Option<Fault> {
        m.checked_sub(1)
            .map(|i| ROTATION[(i % ROTATION.len() as u64) as usize])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::KillCoordinator => "coordinator SIGKILL",
            Fault::TerminateSessions => "pg_terminate_backend",
            Fault::StopDatabase => "PostgreSQL stopped",
            Fault::RestartCoordinator => "coordinator SIGTERM",
            Fault::RestartBroker => "RabbitMQ stopped",
        }
    }
}

/// One minute of the soak.
#[derive(Debug, Clone)]
pub struct Minute {
    pub minute: u64,
    pub fault: Option<Fault>,
    pub started: u64,
    pub completed: i64,
    pub handoffs: usize,
    pub handoff_p50_ms: f64,
    pub handoff_p99_ms: f64,
    pub rss_mib: Option<f64>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub minutes: Vec<Minute>,
    pub started: u64,
    pub completed: i64,
    /// Workflows whose requirements_ready the broker confirmed that never completed.
    pub lost: i64,
    /// Agent messages applied more than once (history rows beyond one per message id).
    pub applied_twice: i64,
    /// Workflows whose history is not exactly the happy path's eleven messages.
    pub irregular: i64,
    pub rss_start_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.applied_twice == 0 && self.irregular == 0
    }

    pub fn render(&self, opts: &Options) -> String {
        let mut out = format!(
            "# Soak: {} minutes at {:.0} agent messages/s, {}\n\n\
             | minute | fault | workflows started | completed (total) | handoffs | handoff p50 ms | handoff p99 ms | coordinator RSS MiB | pid |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
            opts.minutes,
            opts.rate,
            if opts.faults {
                "one fault a minute"
            } else {
                "no faults"
            }
        );
        for m in &self.minutes {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |\n",
                m.minute,
                m.fault.map_or("none", Fault::as_str),
                m.started,
                m.completed,
                m.handoffs,
                m.handoff_p50_ms,
                m.handoff_p99_ms,
                m.rss_mib.map_or("-".into(), |r| format!("{r:.1}")),
                m.pid.map_or("-".into(), |p| p.to_string()),
            ));
        }
        out.push_str(&format!(
            "\nWorkflows started: {} (requirements_ready confirmed by the broker); completed: {}.\n\
             Messages lost (started workflows that never completed): **{}**. \
             Applied twice: **{}**. Workflows with an irregular history: **{}**.\n\
             Coordinator RSS: {} MiB at the start, {} MiB at the end.\n",
            self.started,
            self.completed,
            self.lost,
            self.applied_twice,
            self.irregular,
            self.rss_start_mib.map_or("-".into(), |r| format!("{r:.1}")),
            self.rss_end_mib.map_or("-".into(), |r| format!("{r:.1}")),
        ));
        out
    }
}

fn pg_cluster() -> anyhow::Result<String> {
    std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL's clusters under /etc/postgresql")?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster under /etc/postgresql")
}

async fn pg_ctl(action: &str) -> anyhow::Result<()> {
    let version = pg_cluster()?;
    let mut args = vec!["--skip-systemctl-redirect", &version, "main", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let out = Command::new("pg_ctlcluster").args(&args).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The agents, shared by the load (which starts workflows through them) and the
/// broker fault (which replaces them).
type Agents = Arc<std::sync::Mutex<Option<Team>>>;

/// What a fault replaces.
struct Running {
    coordinator: Option<Coordinator>,
    agents: Agents,
    restarts: usize,
}

impl Running {
    async fn start_coordinator(&mut self, opts: &Options, fresh: &Fresh) -> anyhow::Result<()> {
        self.restarts += 1;
        let log = opts
            .out_dir
            .join(format!("coordinator-soak-{}.log", self.restarts));
        self.coordinator =
            Some(Coordinator::start(&opts.bin, &opts.config_dir, "default", fresh, &log).await?);
        Ok(())
    }

    async fn start_team(&self, url: &str, rec: &Arc<Recorder>) -> anyhow::Result<()> {
        // Completion is read from the database, not from the team's own count.
        let (done, _) = mpsc::unbounded_channel();
        let team = Team::start(
            url,
            &team::Logins::default(),
            AGENTS_PER_ROLE,
            50,
            rec.clone(),
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
}

/// Offers `per_second` workflows until `until`, through whichever agents are current.
async fn offer(agents: &Agents, per_second: f64, until: Instant, n: &mut u64) {
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
            *n += 1;
            // While the agents are replaced, the workflows offered are not started
            // (nor counted as started).
            if let Some(team) = agents.as_ref() {
                team.start_workflow(format!("soak-{n}"));
            }
        }
    }
}

async fn inject(
    fault: Fault,
    run: &mut Running,
    opts: &Options,
    fresh: &Fresh,
    pool: &PgPool,
    rec: &Arc<Recorder>,
) -> anyhow::Result<()> {
    match fault {
        Fault::KillCoordinator => {
            if let Some(c) = run.coordinator.take() {
                c.kill().await;
            }
            run.start_coordinator(opts, fresh).await?;
        }
        Fault::RestartCoordinator => {
            if let Some(c) = run.coordinator.take() {
                let status = c.stop().await;
                anyhow::ensure!(
                    status.is_some_and(|s| s.success()),
                    "the coordinator did not exit 0 on SIGTERM ({status:?})"
                );
            }
            run.start_coordinator(opts, fresh).await?;
        }
        Fault::TerminateSessions => {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'coordinator'",
            )
            .execute(pool)
            .await?;
        }
        Fault::StopDatabase => {
            pg_ctl("stop").await?;
            tokio::time::sleep(opts.outage).await;
            pg_ctl("start").await?;
        }
        Fault::RestartBroker => {
            rabbitmqctl(&["stop_app"]).await?;
            tokio::time::sleep(opts.outage).await;
            rabbitmqctl(&["start_app"]).await?;
            rabbitmqctl(&["await_startup"]).await?;
            // The agents' connections died with it: they connect again, and handle
            // again what they had not acked (their replies carry the same ids).
            run.close_team().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match run.start_team(&fresh.amqp_url(), rec).await {
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

async fn scalar(pool: &PgPool, sql: &str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.ok()
}

/// Runs the soak; the report is also written to `out_dir/soak.md`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let fresh = Fresh::create("soak").await?;
    let result = run_in(opts, &fresh).await;
    // Starts them again if a fault's restart failed half-way, before cleaning up.
    let _ = pg_ctl("start").await;
    let _ = rabbitmqctl(&["start_app"]).await;
    fresh.drop_all().await;
    let report = result?;
    let text = report.render(opts);
    std::fs::write(opts.out_dir.join("soak.md"), &text)?;
    println!("\n{text}");
    Ok(report)
}

async fn run_in(opts: &Options, fresh: &Fresh) -> anyhow::Result<Report> {
    let mut settings = Settings::load_from(&opts.config_dir, None)?;
    settings.database.url = fresh.db_url().into();
    settings.amqp.url = fresh.amqp_url().into();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&fresh.db_url())?;
    let mut run = Running {
        coordinator: None,
        agents: Arc::default(),
        restarts: 0,
    };
    run.start_coordinator(opts, fresh).await?;
    team::register(&settings, &pool, AGENTS_PER_ROLE).await?;
    let rec = Arc::new(Recorder::default());
    rec.recording
        .store(true, std::sync::atomic::Ordering::Relaxed);
    run.start_team(&fresh.amqp_url(), &rec).await?;

    let per_second = opts.rate / MESSAGES_PER_WORKFLOW as f64;
    let t0 = Instant::now();
    let mut minutes = Vec::new();
    let mut n: u64 = 0;
    let mut rss_start = None;
    for minute in 0..opts.minutes {
        let fault = Fault::of_minute(minute).filter(|_| opts.faults);
        let minute_start = t0 + Duration::from_secs(60 * minute);
        let started_before = Counters::get(&rec.counters.started);
        let until = minute_start + Duration::from_secs(60);
        let agents = run.agents.clone();
        match fault {
            Some(f) => {
                println!("minute {minute}: injecting {}", f.as_str());
                // The load goes on while the fault is injected.
                let (r, ()) = tokio::join!(
                    inject(f, &mut run, opts, fresh, &pool, &rec),
                    offer(&agents, per_second, until, &mut n)
                );
                r?;
            }
            None => offer(&agents, per_second, until, &mut n).await,
        }
        let handoff = rec.handoff.take();
        let pid = run.coordinator.as_ref().and_then(Coordinator::pid);
        let rss = pid.and_then(rss_mib);
        if minute == 0 {
            rss_start = rss;
        }
        let m = Minute {
            minute,
            fault,
            started: Counters::get(&rec.counters.started) - started_before,
            completed: scalar(
                &pool,
                "SELECT count(*) FROM workflows WHERE state = 'completed'",
            )
            .await
            .unwrap_or(-1),
            handoffs: handoff.n,
            handoff_p50_ms: handoff.p50,
            handoff_p99_ms: handoff.p99,
            rss_mib: rss,
            pid,
        };
        println!("{m:?}");
        minutes.push(m);
    }
    let rss_end = run
        .coordinator
        .as_ref()
        .and_then(Coordinator::pid)
        .and_then(rss_mib);

    // Drain: every workflow whose start the broker confirmed must complete. (A start
    // whose confirm was lost in a broker restart may have been routed all the same:
    // it is not counted as started, and completes anyway.)
    let started_ids: Vec<String> = rec
        .started_ids
        .lock()
        .map(|ids| ids.clone())
        .unwrap_or_default();
    let started = started_ids.len() as u64;
    let deadline = Instant::now() + opts.drain;
    let lost = loop {
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS s(id)
               LEFT JOIN workflows w ON w.id = s.id
              WHERE w.state IS DISTINCT FROM 'completed'",
        )
        .bind(&started_ids)
        .fetch_one(&pool)
        .await
        .ok();
        match (open, Instant::now() > deadline) {
            (Some(0), _) => break 0,
            (Some(n), true) => break n,
            (None, true) => anyhow::bail!("PostgreSQL did not answer after the soak"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let completed = scalar(
        &pool,
        "SELECT count(*) FROM workflows WHERE state = 'completed'",
    )
    .await
    .unwrap_or(-1);
    let applied_twice = scalar(
        &pool,
        // A message's id is in two workflows' histories where it started a follow-on.
        "SELECT count(*) - count(DISTINCT (workflow_id, message_id)) FROM workflow_events",
    )
    .await
    .context("count history rows")?;
    let irregular = scalar(
        &pool,
        &format!(
            "SELECT count(*) FROM (SELECT workflow_id FROM workflow_events GROUP BY workflow_id
              HAVING count(*) <> {MESSAGES_PER_WORKFLOW}) w
              JOIN workflows ON workflows.id = w.workflow_id AND workflows.state = 'completed'"
        ),
    )
    .await
    .context("count irregular histories")?;
    run.close_team().await;
    if let Some(c) = run.coordinator.take() {
        c.stop().await;
    }
    pool.close().await;
    Ok(Report {
        minutes,
        started,
        completed,
        lost,
        applied_twice,
        irregular,
        rss_start_mib: rss_start,
        rss_end_mib: rss_end,
    })
}
