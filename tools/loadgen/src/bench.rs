//! The benchmark suite behind `make bench`: for each settings profile (default and
//! production), the broker's ceiling, then every run on a fresh database and vhost with
//! the release coordinator started as a child process, and a report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::drive::{self, Load, Observed, Spec};
use super::stats::{peak_rss_mib, Recorder};
use super::team::{self, Team, MESSAGES_PER_WORKFLOW, ROLES};
use super::{ceiling, envelope_bytes, report};
use agent::connect;
use coordinator::settings::Settings;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_BASE: &str = "amqp://guest:guest@127.0.0.1:5672";

/// What a run does on top of its load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    None,
    /// Clocks due within ten seconds, inserted when the window opens.
    Timers,
    /// Active workflows and armed clocks in the tables before the coordinator starts,
    /// then the timer workload too.
    BigTables,
}

#[derive(Debug, Clone)]
pub struct RunDef {
    pub name: &'static str,
    pub agents: usize,
    pub load: Load,
    pub extra: Extra,
}

/// The runs of the suite: the seed's three load scenarios, a closed loop, the timer
/// workload under the peak scenario, and the same with large tables.
pub fn runs() -> Vec<RunDef> {
    let open = |msg_per_s| Load::Open { msg_per_s };
    vec![
        RunDef {
            name: "normal",
            agents: 10,
            load: open(100.0),
            extra: Extra::None,
        },
        RunDef {
            name: "peak",
            agents: 50,
            load: open(1000.0),
            extra: Extra::None,
        },
        RunDef {
            name: "stress",
            agents: 100,
            load: open(5000.0),
            extra: Extra::None,
        },
        RunDef {
            name: "closed-200",
            agents: 50,
            load: Load::Closed { in_flight: 200 },
            extra: Extra::None,
        },
        RunDef {
            name: "peak+timers",
            agents: 50,
            load: open(1000.0),
            extra: Extra::Timers,
        },
        RunDef {
            name: "big+peak+timers",
            agents: 50,
            load: open(1000.0),
            extra: Extra::BigTables,
        },
    ]
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator binary (`target/release/coordinator`).
    pub bin: PathBuf,
    pub config_dir: PathBuf,
    /// Settings profiles: `default` (no COORDINATOR_ENV) and/or `production`.
    pub profiles: Vec<String>,
    /// Only these runs (by name); all when empty.
    pub only: Vec<String>,
    pub warmup: Duration,
    pub window: Duration,
    pub timer_clocks: i64,
    pub big_workflows: i64,
    pub big_clocks: i64,
    /// Agents per role in every run (`--agents-per-role`), instead of each run's own.
    pub agents_per_role: Option<usize>,
    /// Where coordinator logs and the report go.
    pub out_dir: PathBuf,
    /// Each load also driven through the echo ([`crate::echo`]), the coordinator's
    /// figures given as ratios to it (`--no-echo` turns it off).
    pub echo: bool,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub profile: String,
    pub run: String,
    pub offered: String,
    pub observed: Option<Observed>,
    pub ceiling: f64,
    pub coordinator_peak_rss_mib: Option<f64>,
    pub timers: Option<TimerResult>,
    /// The API's and dashboard's pages, timed during the window (the big-tables run),
    /// and the report's latency after it.
    pub pages: Option<crate::pages::PageTimes>,
    pub report_latency: Option<crate::stats::Percentiles>,
    pub inside: Option<Inside>,
    pub backlog_grows: bool,
    /// A closed loop keeps its work in flight constant: no backlog to judge.
    pub closed_loop: bool,
    pub error: Option<String>,
    /// The same load through the echo in the same sitting, where it ran.
    pub echo: Option<Observed>,
}

/// The coordinator's own view of the window: its metrics and PostgreSQL's counters.
#[derive(Debug, Clone, Default)]
pub struct Inside {
    pub batches_per_s: f64,
    pub messages_per_batch: f64,
    pub ms_per_batch: f64,
    /// Mean wait of a batch's first delivery for a database turn.
    pub ms_waiting: f64,
    /// Mean time from a batch's commit until its messages were handed to the broker.
    pub ms_to_publish: f64,
    pub statements_per_batch: f64,
    pub commits_per_s: f64,
    /// Each stage a message went through (`coordinator_stage_seconds`), in order.
    pub stages: Vec<crate::stats::StageLatency>,
}

#[derive(Debug, Clone, Default)]
struct Probe {
    batches: f64,
    batch_messages: f64,
    batch_seconds: f64,
    wait_seconds: f64,
    publish_waits: f64,
    publish_wait_seconds: f64,
    statements: f64,
    commits: f64,
    stages: crate::stats::StageHistograms,
    at: Option<Instant>,
}

impl Probe {
    async fn take(http: &str, pool: &PgPool) -> Probe {
        let mut p = Probe {
            at: Some(Instant::now()),
            ..Default::default()
        };
        if let Some((200, text)) = agent::probe(http, "/metrics").await {
            p.stages = crate::stats::StageHistograms::parse(&text);
            for line in text.lines() {
                let mut it = line.split_whitespace();
                let (Some(name), Some(v)) = (it.next(), it.next().and_then(|v| v.parse().ok()))
                else {
                    continue;
                };
                match name {
                    "coordinator_batch_size_count" => p.batches = v,
                    "coordinator_batch_size_sum" => p.batch_messages = v,
                    "coordinator_batch_seconds_sum" => p.batch_seconds = v,
                    "coordinator_batch_wait_seconds_sum" => p.wait_seconds = v,
                    "coordinator_publish_wait_seconds_count" => p.publish_waits = v,
                    "coordinator_publish_wait_seconds_sum" => p.publish_wait_seconds = v,
                    "coordinator_batch_statements_total" => p.statements = v,
                    _ => {}
                }
            }
        }
        p.commits = sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .map_or(0.0, |c| c as f64);
        p
    }

    fn inside(&self, end: &Probe) -> Option<Inside> {
        let secs = end.at?.duration_since(self.at?).as_secs_f64();
        let batches = end.batches - self.batches;
        let per = |v: f64| if batches > 0.0 { v / batches } else { 0.0 };
        Some(Inside {
            batches_per_s: batches / secs,
            messages_per_batch: per(end.batch_messages - self.batch_messages),
            ms_per_batch: per(end.batch_seconds - self.batch_seconds) * 1000.0,
            ms_waiting: per(end.wait_seconds - self.wait_seconds) * 1000.0,
            ms_to_publish: {
                let n = end.publish_waits - self.publish_waits;
                let t = end.publish_wait_seconds - self.publish_wait_seconds;
                if n > 0.0 {
                    t / n * 1000.0
                } else {
                    0.0
                }
            },
            statements_per_batch: per(end.statements - self.statements),
            commits_per_s: (end.commits - self.commits) / secs,
            stages: end
                .stages
                .since(&self.stages, &coordinator::service::runtime::STAGES),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TimerResult {
    pub expected: i64,
    pub fired: i64,
    pub escalations: i64,
    pub distinct_clocks: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A database and a vhost of their own, dropped by [`Fresh::drop_all`].
pub(crate) struct Fresh {
    pub(crate) db: String,
    pub(crate) vhost: String,
}

impl Fresh {
    pub(crate) async fn create(tag: &str) -> anyhow::Result<Fresh> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let f = Fresh {
            db: format!("coordinator_bench_{tag}_{}", &id[..8]),
            vhost: format!("coordinator_bench_{tag}_{}", &id[..8]),
        };
        let mut admin = PgConnection::connect(PG_ADMIN)
            .await
            .context("PostgreSQL on 127.0.0.1:5432 (run `make services`)")?;
        sqlx::query(&format!("CREATE DATABASE \"{}\"", f.db))
            .execute(&mut admin)
            .await?;
        rabbitmqctl(&["add_vhost", &f.vhost]).await?;
        rabbitmqctl(&["set_permissions", "-p", &f.vhost, "guest", ".*", ".*", ".*"]).await?;
        Ok(f)
    }

    pub(crate) fn db_url(&self) -> String {
        format!("{PG_BASE}/{}", self.db)
    }

    pub(crate) fn amqp_url(&self) -> String {
        format!("{AMQP_BASE}/{}", self.vhost)
    }

    pub(crate) async fn drop_all(self) {
        if let Ok(mut admin) = PgConnection::connect(PG_ADMIN).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            ))
            .execute(&mut admin)
            .await;
        }
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]).await;
    }
}

pub(crate) async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("rabbitmqctl runs")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a coordinator child process is started: which binary, reading which
/// configuration folder and profile, on which database and vhost, with which settings
/// over the profile's (as `COORDINATOR__…` environment variables).
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub config_dir: PathBuf,
    pub profile: String,
    pub db_url: String,
    pub amqp_url: String,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The settings such a coordinator runs with, as this process reads them (to register
    /// agents with the same rules).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let (env, profile) = profile_env(&self.profile);
        let overrides: Vec<(&str, &str)> = profile
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let mut s = Settings::load_with(&self.config_dir, env, &overrides)?;
        s.database.url = self.db_url.clone().into();
        s.amqp.url = self.amqp_url.clone().into();
        Ok(s)
    }
}

/// The last `n` lines of a log file, for an error message.
pub fn last_lines(log: &Path, n: usize) -> String {
    match std::fs::read_to_string(log) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", log.display()),
    }
}

/// The coordinator as a child process.
pub struct Coordinator {
    child: Child,
    pub http: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// How a coordinator stopped on SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Its exit status, if it exited by itself within [`Coordinator::STOP_WAIT`].
    pub status: Option<std::process::ExitStatus>,
    /// From the signal to its exit (or to the kill).
    pub took: Duration,
}

impl Stopped {
    pub fn exited_0(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Coordinator {
    /// How long a SIGTERMed coordinator may take to exit before it is killed: longer
    /// than the shipped `shutdown.timeout` (25 s), past which it exits 1 by itself.
    pub const STOP_WAIT: Duration = Duration::from_secs(35);

    /// Starts `serve` as `launch` says, its stderr to `log`, and waits until it is ready.
    pub async fn start(launch: &Launch, log: &Path) -> anyhow::Result<Coordinator> {
        let c = Coordinator::spawn(launch, log, &launch.bin, "serve")?;
        let http = c.http.clone();
        c.ready_when("the coordinator", || {
            let http = http.clone();
            async move { agent::probe(&http, "/readyz").await.map(|r| r.0) == Some(200) }
        })
        .await
    }

    /// Starts the echo ([`crate::echo`], `loadgen echo`, this binary) with the
    /// coordinator's environment, and waits until every inbox queue has a consumer.
    pub async fn start_echo(
        launch: &Launch,
        log: &Path,
        ch: &lapin::Channel,
        inbox: &[String],
    ) -> anyhow::Result<Coordinator> {
        let this = std::env::current_exe().context("the path of loadgen itself")?;
        let c = Coordinator::spawn(launch, log, &this, "echo")?;
        c.ready_when("the echo", || async move {
            let mut all = !inbox.is_empty();
            for q in inbox {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                all &= ch
                    .queue_declare(q, passive, FieldTable::default())
                    .await
                    .is_ok_and(|q| q.consumer_count() > 0);
            }
            all
        })
        .await
    }

    /// `program command` with the environment `launch` gives a coordinator.
    fn spawn(
        launch: &Launch,
        log: &Path,
        program: &Path,
        command: &str,
    ) -> anyhow::Result<Coordinator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let http = format!("127.0.0.1:{port}");
        let file = std::fs::File::create(log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.arg(command)
            .env("COORDINATOR_CONFIG_DIR", &launch.config_dir)
            .env("COORDINATOR__DATABASE__URL", &launch.db_url)
            .env("COORDINATOR__AMQP__URL", &launch.amqp_url)
            .env("COORDINATOR__HTTP__ADDR", &http)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let (env, overrides) = profile_env(&launch.profile);
        match env {
            None => cmd.env_remove(coordinator::settings::ENV_VAR),
            Some(e) => cmd.env(coordinator::settings::ENV_VAR, e),
        };
        cmd.envs(overrides);
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;
        Ok(Coordinator {
            child,
            http,
            log: log.to_path_buf(),
        })
    }

    /// Waits (up to a minute) until `ready` says so; an error with the log's last lines
    /// if `what` exits or does not become ready.
    async fn ready_when<F, Fut>(mut self, what: &str, mut ready: F) -> anyhow::Result<Coordinator>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready().await {
                return Ok(self);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{what} exited ({status}) before it was ready; its last lines ({}):\n{}",
                    self.log.display(),
                    last_lines(&self.log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not become ready within 60 s; its last lines ({}):\n{}",
                    self.log.display(),
                    last_lines(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait (SIGKILL after [`Coordinator::STOP_WAIT`]).
    pub async fn stop(mut self) -> Stopped {
        let t = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let status = match tokio::time::timeout(Self::STOP_WAIT, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        Stopped {
            status,
            took: t.elapsed(),
        }
    }
}

/// Production's settings with the security mechanisms off, run beside `production` to
/// show what security costs (docs/performance.md).
pub const PRODUCTION_OPEN: &str = "production-open";

/// The runs the cost of tracing is judged on: the rest would repeat `production`.
const TRACED_RUNS: &[&str] = &["peak", "closed-200"];

/// Production's settings with spans exported over OTLP (to [`crate::trace_sink`]), run
/// beside `production` to show what exporting traces costs (docs/performance.md).
pub const PRODUCTION_TRACED: &str = "production-traced";

/// Production as the bench runs it: this machine's broker and database speak plain
/// TCP on loopback (TLS is not what the bench measures), the coordinator signs with a
/// key made for the run, and the rate limits stay on (every message is checked against
/// its sender's bucket) with the seed's numbers raised for the load generator's agents,
/// each of which sends far more than 100 messages a minute.
fn production() -> Vec<(&'static str, String)> {
    vec![
        ("COORDINATOR__SECURITY__ALLOW_PLAINTEXT", "true".into()),
        (
            "COORDINATOR__SECURITY__RATE_LIMITS__PER_MINUTE",
            "1000000".into(),
        ),
        (
            "COORDINATOR__SECURITY__RATE_LIMITS__ALL_PER_MINUTE",
            "10000000".into(),
        ),
        (
            "COORDINATOR__SECURITY__SIGNING_KEY",
            protocol::signing::encode_private(&protocol::signing::generate()),
        ),
    ]
}

/// What `PRODUCTION_OPEN` turns off, as the coordinator's environment variables.
const SECURITY_OFF: &[(&str, &str)] = &[
    ("COORDINATOR__SECURITY__AUDIT", "false"),
    ("COORDINATOR__SECURITY__AUTHENTICATE_SENDERS", "false"),
    ("COORDINATOR__SECURITY__SIGNATURES", "off"),
    ("COORDINATOR__SECURITY__RATE_LIMITS__ENABLED", "false"),
];

/// A profile's settings environment (`COORDINATOR_ENV`) and the variables it sets
/// over it.
pub(crate) fn profile_env(profile: &str) -> (Option<&'static str>, Vec<(&'static str, String)>) {
    match profile {
        "default" => (None, Vec::new()),
        PRODUCTION_OPEN => {
            let mut vars = production();
            vars.extend(SECURITY_OFF.iter().map(|(k, v)| (*k, v.to_string())));
            (Some("production"), vars)
        }
        PRODUCTION_TRACED => {
            let mut vars = production();
            if let Some(endpoint) = crate::trace_sink::endpoint() {
                vars.push(("COORDINATOR__TRACES__OTLP_ENDPOINT", endpoint));
            }
            (Some("production"), vars)
        }
        _ => (Some("production"), production()),
    }
}

/// The settings a profile runs the coordinator with.
fn profile_settings(opts: &Options, profile: &str) -> anyhow::Result<Settings> {
    let (env, overrides) = profile_env(profile);
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(Settings::load_with(&opts.config_dir, env, &overrides)?)
}

fn settings_for(opts: &Options, profile: &str, fresh: &Fresh) -> anyhow::Result<Settings> {
    let mut s = profile_settings(opts, profile)?;
    s.database.url = fresh.db_url().into();
    s.amqp.url = fresh.amqp_url().into();
    Ok(s)
}

/// Runs the suite and returns its rows (also printed as they complete).
pub async fn run(opts: &Options) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let provenance = report::Provenance::gather(opts).await;
    let mut rows = Vec::new();
    let mut hops: Vec<(String, super::stats::Percentiles)> = Vec::new();
    for profile in &opts.profiles {
        let (ceiling, queue_type) = {
            let fresh = Fresh::create("ceiling").await?;
            let s = settings_for(opts, profile, &fresh)?;
            let r = ceiling::measure_all(
                &fresh.amqp_url(),
                s.amqp.queue_type,
                envelope_bytes(),
                opts.window.min(Duration::from_secs(20)),
                1000.0,
            )
            .await;
            fresh.drop_all().await;
            (
                r.context("measuring the broker's ceiling")?,
                s.amqp.queue_type,
            )
        };
        println!(
            "[{profile}] ceiling: {:.0} msg/s through one {} queue (persistent, confirms, acks); one hop (publish → delivery) at 1,000 msg/s: p50 {:.1} ms, p99 {:.1} ms",
            ceiling.msg_per_s,
            queue_type.as_str(),
            ceiling.hop.p50,
            ceiling.hop.p99
        );
        hops.push((profile.clone(), ceiling.hop));
        let ceiling = ceiling.msg_per_s;
        let mut echoes: HashMap<String, Option<Observed>> = HashMap::new();
        for def in runs() {
            if !opts.only.is_empty() && !opts.only.iter().any(|o| o == def.name) {
                continue;
            }
            if profile == PRODUCTION_TRACED && !TRACED_RUNS.contains(&def.name) {
                continue;
            }
            // The echo first, then the coordinator, in the same sitting; a load the
            // echo has run with the same inbox already is not run again (the timers and
            // the big tables are the database's: the echo's peak is theirs).
            let echo = match (opts.echo, echo_key(opts, profile, &def)) {
                (false, _) => None,
                (true, key) => match echoes.get(&key) {
                    Some(o) => o.clone(),
                    None => {
                        let o = match one(opts, profile, &def, ceiling, Subject::Echo).await {
                            Ok(row) => row.observed,
                            Err(e) => {
                                println!(
                                    "[{profile}] {} through the echo: FAILED: {e:#}",
                                    def.name
                                );
                                None
                            }
                        };
                        if let Some(o) = &o {
                            println!("{}", report::format_echo(profile, def.name, o));
                        }
                        echoes.insert(key, o.clone());
                        o
                    }
                },
            };
            let row = match one(opts, profile, &def, ceiling, Subject::Coordinator).await {
                Ok(row) => Row { echo, ..row },
                Err(e) => Row {
                    profile: profile.clone(),
                    run: def.name.to_string(),
                    offered: offered(opts, &def),
                    observed: None,
                    ceiling,
                    coordinator_peak_rss_mib: None,
                    timers: None,
                    pages: None,
                    report_latency: None,
                    inside: None,
                    backlog_grows: false,
                    closed_loop: matches!(def.load, Load::Closed { .. }),
                    error: Some(format!("{e:#}")),
                    echo,
                },
            };
            println!("{}", report::format_row(&row));
            rows.push(row);
        }
    }
    let mut hop_lines = String::new();
    for (profile, hop) in &hops {
        hop_lines.push_str(&format!(
            "\nOne broker hop ({profile}), publish with confirm → delivery, at 1,000 msg/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.\n",
            hop.p50, hop.p99, hop.max
        ));
    }
    let report = report::report(opts, &provenance, &rows, &hop_lines);
    let path = report::write(&opts.out_dir, &report)?;
    println!("\n{report}\nreport written to {}", path.display());
    Ok(rows)
}

/// What a run offers: its load and its agents.
fn offered(opts: &Options, def: &RunDef) -> String {
    let agents = per_role(opts, def) * ROLES.len();
    match def.load {
        Load::Open { msg_per_s } => format!("{msg_per_s:.0} msg/s, {agents} agents"),
        Load::Closed { in_flight } => format!("{in_flight} in flight, {agents} agents"),
    }
}

/// Agents per role in a run: the scenario's count, unless `--agents-per-role` says.
fn per_role(opts: &Options, def: &RunDef) -> usize {
    opts.agents_per_role
        .unwrap_or(def.agents / ROLES.len())
        .max(1)
}

/// What a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Coordinator,
    Echo,
}

/// What makes two runs of the echo the same: the inbox (queue type, partitions, how
/// much is taken at once), the load and the agents.
fn echo_key(opts: &Options, profile: &str, def: &RunDef) -> String {
    let inbox = profile_settings(opts, profile).map_or_else(
        |_| profile.to_string(),
        |s| {
            format!(
                "{:?}/{}/{}/{}",
                s.amqp.queue_type, s.inbox.partitions, s.inbox.prefetch, s.inbox.batch_size
            )
        },
    );
    format!("{inbox}/{:?}/{}", def.load, per_role(opts, def))
}

async fn one(
    opts: &Options,
    profile: &str,
    def: &RunDef,
    ceiling: f64,
    subject: Subject,
) -> anyhow::Result<Row> {
    let tag = def.name.replace(['+', '-'], "_");
    let tag = match subject {
        Subject::Coordinator => tag,
        Subject::Echo => format!("echo_{tag}"),
    };
    let fresh = Fresh::create(&tag).await?;
    let result = one_in(opts, profile, def, ceiling, &fresh, subject).await;
    fresh.drop_all().await;
    result
}

async fn one_in(
    opts: &Options,
    profile: &str,
    def: &RunDef,
    ceiling: f64,
    fresh: &Fresh,
    subject: Subject,
) -> anyhow::Result<Row> {
    let settings = settings_for(opts, profile, fresh)?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&fresh.db_url())?;
    // The echo has no database: timers and big tables are the coordinator's alone.
    let extra = match subject {
        Subject::Coordinator => def.extra,
        Subject::Echo => Extra::None,
    };
    if extra == Extra::BigTables {
        coordinator::db::migrate(&pool).await?;
        let t = Instant::now();
        preload(&pool, opts.big_workflows, opts.big_clocks).await?;
        println!(
            "[{profile}] {}: preloaded {} workflows and {} armed clocks in {:.0?}",
            def.name,
            opts.big_workflows,
            opts.big_clocks,
            t.elapsed()
        );
    }
    let log = opts.out_dir.join(format!(
        "{}-{profile}-{}.log",
        match subject {
            Subject::Coordinator => "coordinator",
            Subject::Echo => "echo",
        },
        def.name
    ));
    let launch = Launch {
        bin: opts.bin.clone(),
        config_dir: opts.config_dir.clone(),
        profile: profile.to_string(),
        db_url: fresh.db_url(),
        amqp_url: fresh.amqp_url(),
        env: Vec::new(),
    };
    let depth_conn = connect(&fresh.amqp_url(), "bench-depth").await?;
    let depth_ch = depth_conn.create_channel().await?;
    let per_role = per_role(opts, def);
    let (coordinator, logins, inbox_queues) = match subject {
        Subject::Coordinator => {
            let coordinator = Coordinator::start(&launch, &log).await?;
            let logins = team::register(&settings, &pool, per_role).await?;
            (coordinator, logins, inbox_queues(&fresh.vhost).await?)
        }
        // Registering declares the topology, which the coordinator would have declared.
        Subject::Echo => {
            coordinator::db::migrate(&pool).await?;
            let logins = team::register(&settings, &pool, per_role).await?;
            let queues = inbox_queues(&fresh.vhost).await?;
            let echo = Coordinator::start_echo(&launch, &log, &depth_ch, &queues).await?;
            (echo, logins, queues)
        }
    };
    let rec = Arc::new(Recorder::default());
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let team = Team::start(
        &fresh.amqp_url(),
        &logins,
        per_role,
        50,
        rec.clone(),
        done_tx,
    )
    .await?;
    let spec = Spec {
        load: def.load,
        warmup: opts.warmup,
        window: opts.window,
        drain: Duration::from_secs(30),
        prefix: format!(
            "{}-{}",
            def.name,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        ),
    };
    let timer_task = (extra != Extra::None).then(|| {
        let pool = pool.clone();
        let n = opts.timer_clocks;
        let delay = opts.warmup;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            arm_due_clocks(&pool, n).await
        })
    });
    // With the big tables, the read API's and the dashboard's pages are timed through
    // the window, 20 requests a second, one at a time.
    let pages_task = (extra == Extra::BigTables).then(|| {
        let http = coordinator.http.clone();
        let (warmup, window) = (opts.warmup, opts.window);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            crate::pages::time_pages(http, Instant::now() + window, Duration::from_millis(50)).await
        })
    });
    let probes = (subject == Subject::Coordinator).then(|| {
        let (http, pool) = (coordinator.http.clone(), pool.clone());
        let (warmup, window) = (opts.warmup, opts.window);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let start = Probe::take(&http, &pool).await;
            tokio::time::sleep(window).await;
            let end = Probe::take(&http, &pool).await;
            start.inside(&end)
        })
    });
    let observed = drive::run(&team, &rec, &spec, done_rx, coordinator.pid(), || {
        let ch = &depth_ch;
        let names = &inbox_queues;
        async move {
            let mut total = 0;
            for q in names {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                total += u64::from(
                    ch.queue_declare(q, passive, FieldTable::default())
                        .await
                        .ok()?
                        .message_count(),
                );
            }
            Some(total)
        }
    })
    .await;
    let timers = match timer_task {
        Some(t) => {
            t.await??;
            Some(timer_result(&pool, opts.timer_clocks).await?)
        }
        None => None,
    };
    let inside = match probes {
        Some(p) => p.await.ok().flatten(),
        None => None,
    };
    let pages = match pages_task {
        Some(t) => t.await.ok(),
        None => None,
    };
    let report_latency = match pages {
        Some(_) => Some(crate::pages::time_report(&coordinator.http, 5).await),
        None => None,
    };
    let rss = coordinator.pid().and_then(peak_rss_mib);
    team.close().await;
    logins.remove(&settings).await;
    let _ = depth_conn.close(200, "done").await;
    coordinator.stop().await;
    pool.close().await;
    let backlog_grows = match def.load {
        Load::Open { msg_per_s } => {
            observed.backlog_grows(msg_per_s / MESSAGES_PER_WORKFLOW as f64)
        }
        Load::Closed { .. } => false,
    };
    Ok(Row {
        profile: profile.to_string(),
        run: def.name.to_string(),
        offered: offered(opts, def),
        observed: Some(observed),
        ceiling,
        coordinator_peak_rss_mib: rss,
        timers,
        pages,
        report_latency,
        inside,
        backlog_grows,
        closed_loop: matches!(def.load, Load::Closed { .. }),
        error: None,
        echo: None,
    })
}

/// The coordinator's inbox queues in a vhost (whatever their number).
async fn inbox_queues(vhost: &str) -> anyhow::Result<Vec<String>> {
    let out = rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost,
        "--quiet",
        "--no-table-headers",
        "name",
    ])
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with("coordinator.inbox"))
        .map(str::to_string)
        .collect())
}

async fn exec(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::query(sql)
        .execute(pool)
        .await
        .with_context(|| sql.to_string())?;
    Ok(())
}

/// Active workflows with armed clocks due days from now.
async fn preload(pool: &PgPool, workflows: i64, clocks: i64) -> anyhow::Result<()> {
    exec(
        pool,
        &format!(
            "INSERT INTO workflows (id, kind, state, key_name, business_key, title)
             SELECT 'old-' || g, 'feature_delivery', 'testing', 'epic_id', 'EPIC-old-' || g, 'preloaded'
             FROM generate_series(1, {workflows}) g"
        ),
    )
    .await?;
    exec(
        pool,
        &format!(
            "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, severity, armed_at, warn_at, due_at)
             SELECT 'old-' || (g % {workflows} + 1), 'testing_completion', g / {workflows} + 1, 'qa-director', 'high',
                    now(), now() + interval '1 day' + make_interval(secs => g * 0.1),
                    now() + interval '2 days' + make_interval(secs => g * 0.1)
             FROM generate_series(0, {clocks} - 1) g"
        ),
    )
    .await?;
    // A database that has held these rows for a while has vacuumed them and written
    // them out: without this, autovacuum's first pass over a million new rows and the
    // checkpoint that the load's WAL triggers (with a full-page image for every page
    // first touched after it) would run inside the measurement window.
    exec(pool, "VACUUM (FREEZE, ANALYZE) workflows").await?;
    exec(pool, "VACUUM (FREEZE, ANALYZE) sla_clocks").await?;
    exec(pool, "ANALYZE").await?;
    exec(pool, "CHECKPOINT").await
}

/// `n` workflows with one armed clock each, due evenly over the next 3 to 13 seconds;
/// the running timers are told to reload.
pub async fn arm_due_clocks(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    exec(
        pool,
        &format!(
            "INSERT INTO workflows (id, kind, state) SELECT 'tmr-' || g, 'feature_delivery', 'feature_handoff'
             FROM generate_series(1, {n}) g"
        ),
    )
    .await?;
    exec(
        pool,
        &format!(
            "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, severity, armed_at, due_at)
             SELECT 'tmr-' || g, 'testing_start', 1, 'qa-director', 'high', now(),
                    now() + make_interval(secs => 3 + 10.0 * g / {n})
             FROM generate_series(1, {n}) g"
        ),
    )
    .await?;
    exec(pool, "NOTIFY coordinator_timers").await
}

/// Waits (up to a minute) for the timer workload to fire, then measures it.
async fn timer_result(pool: &PgPool, n: i64) -> anyhow::Result<TimerResult> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fired: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sla_clocks WHERE workflow_id LIKE 'tmr-%' AND status = 'breached'",
        )
        .fetch_one(pool)
        .await?;
        if fired >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (fired, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l),
                max(l)
         FROM (SELECT extract(epoch FROM closed_at - due_at)::float8 * 1000 AS l
               FROM sla_clocks WHERE workflow_id LIKE 'tmr-%' AND status = 'breached') x",
    )
    .fetch_one(pool)
    .await?;
    let (escalations, distinct_clocks): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT clock_id) FROM escalations
         WHERE workflow_id LIKE 'tmr-%' AND level = 1",
    )
    .fetch_one(pool)
    .await?;
    Ok(TimerResult {
        expected: n,
        fired,
        escalations,
        distinct_clocks,
        p50_ms: p50.unwrap_or(f64::NAN),
        p99_ms: p99.unwrap_or(f64::NAN),
        max_ms: max.unwrap_or(f64::NAN),
    })
}
