//! `loadgen soak` (`make soak`): a steady load through the full happy path for many
//! minutes, with one fault a minute, rotating through those `tests/faults.rs` injects:
//! the coordinator killed (SIGKILL), its PostgreSQL sessions terminated, PostgreSQL
//! stopped for a few seconds, the coordinator restarted with SIGTERM, and RabbitMQ
//! stopped and started. It reports, per minute, the handoff latency and the
//! coordinator's memory, and at the end the messages lost and applied twice (both
//! must be 0). It runs on a PostgreSQL cluster and a RabbitMQ node of its own
//! ([`crate::faults::Own`]), so the machine's are never stopped; when it fails it says
//! where everything was ([`crate::faults::Fleet::diagnose`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::bench::Launch;
use super::faults::{self, Fault, Fleet, Own};
use super::stats::{rss_mib, Counters};
use super::team::MESSAGES_PER_WORKFLOW;

/// Ten agents, as the source documents' normal scenario.
const AGENTS_PER_ROLE: usize = 2;

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
pub const ROTATION: [Fault; 5] = [
    Fault::KillCoordinator,
    Fault::TerminateSessions,
    Fault::StopDatabase,
    Fault::RestartCoordinator,
    Fault::RestartBroker,
];

/// The fault injected at the start of minute `m` (none in the first).
pub fn fault_of_minute(m: u64) -> Option<Fault> {
    m.checked_sub(1)
        .map(|i| ROTATION[(i % ROTATION.len() as u64) as usize])
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
    pub outcome: faults::Outcome,
    pub rss_start_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.outcome.ok()
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
            self.outcome.started,
            self.outcome.completed,
            self.outcome.lost,
            self.outcome.applied_twice,
            self.outcome.irregular,
            self.rss_start_mib.map_or("-".into(), |r| format!("{r:.1}")),
            self.rss_end_mib.map_or("-".into(), |r| format!("{r:.1}")),
        ));
        out
    }
}

/// Runs the soak; the report is also written to `out_dir/soak.md`. On a failure, where
/// everything was is printed and written to `out_dir/failure.md`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let own = Own::start().await?;
    let launch = Launch {
        bin: opts.bin.clone(),
        config_dir: opts.config_dir.clone(),
        profile: "default".into(),
        db_url: own.db_url().to_string(),
        amqp_url: own.amqp_url().to_string(),
        env: Vec::new(),
    };
    let mut fleet = Fleet::start(&own, launch, &opts.out_dir, 1, AGENTS_PER_ROLE).await?;
    let result = run_in(opts, &mut fleet).await;
    let report = match result {
        Ok(report) if report.ok() => report,
        Ok(report) => {
            let started = faults::started_ids(&fleet.rec);
            eprintln!("{}", fleet.diagnose(&started).await);
            report
        }
        Err(e) => {
            let started = faults::started_ids(&fleet.rec);
            eprintln!("{}", fleet.diagnose(&started).await);
            return Err(e);
        }
    };
    fleet.close().await?;
    let text = report.render(opts);
    std::fs::write(opts.out_dir.join("soak.md"), &text)?;
    println!("\n{text}");
    Ok(report)
}

async fn run_in(opts: &Options, fleet: &mut Fleet<'_>) -> anyhow::Result<Report> {
    let per_second = opts.rate / MESSAGES_PER_WORKFLOW as f64;
    let t0 = Instant::now();
    let mut minutes = Vec::new();
    let n = AtomicU64::new(0);
    let mut rss_start = None;
    let pool = fleet.own.env.pool.clone();
    for minute in 0..opts.minutes {
        let fault = fault_of_minute(minute).filter(|_| opts.faults);
        let minute_start = t0 + Duration::from_secs(60 * minute);
        let started_before = Counters::get(&fleet.rec.counters.started);
        let until = minute_start + Duration::from_secs(60);
        let agents = fleet.agents.clone();
        match fault {
            Some(f) => {
                println!("minute {minute}: injecting {}", f.as_str());
                // The load goes on while the fault is injected.
                let (r, ()) = tokio::join!(
                    fleet.inject(f, opts.outage),
                    faults::offer(&agents, per_second, until, "soak", &n)
                );
                r?;
            }
            None => faults::offer(&agents, per_second, until, "soak", &n).await,
        }
        let handoff = fleet.rec.handoff.take();
        let pid = fleet.pid(0);
        let rss = pid.and_then(rss_mib);
        if minute == 0 {
            rss_start = rss;
        }
        let m = Minute {
            minute,
            fault,
            started: Counters::get(&fleet.rec.counters.started) - started_before,
            completed: sqlx::query_scalar(
                "SELECT count(*) FROM workflows WHERE state = 'completed'",
            )
            .fetch_one(&pool)
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
    let rss_end = fleet.pid(0).and_then(rss_mib);
    // Drain: every workflow whose start the broker confirmed must complete.
    let started = faults::started_ids(&fleet.rec);
    let outcome = faults::outcome(&pool, &started, opts.drain).await?;
    Ok(Report {
        minutes,
        outcome,
        rss_start_mib: rss_start,
        rss_end_mib: rss_end,
    })
}
