//! The command line: `serve`, `migrate`, and the commands managers and operators use.

mod oncall;
mod report;
pub use report::Format as ReportFormat;
mod table;
mod tail;

use std::fmt::Write as _;

use crate::clock::SystemClock;
use crate::db::{self, read, Pool as PgPool};
use crate::domain::agent_health::Health;
use crate::domain::workflow::Closing;
use crate::engine::escalations::Acknowledged;
use crate::engine::Outcome;
use crate::service::ops::{self, Ops, Replayed};
use crate::settings::Settings;
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};
use protocol::names::exchanges;
use protocol::reject::Reason;
use table::{Align, Table};

/// `coordinator --version`: the build and the wire contract it speaks.
static VERSION_TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (contract {})",
        env!("CARGO_PKG_VERSION"),
        protocol::envelope::VERSION
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version = VERSION_TEXT.as_str(),
    about = "Coordinates software-delivery workflows between agents over RabbitMQ, with state in PostgreSQL",
    long_about = "Coordinates software-delivery workflows between agents over RabbitMQ, with state in PostgreSQL.\n\n\
        Configuration: config/default.toml, then config/$COORDINATOR_ENV.toml, then environment variables \
        COORDINATOR__SECTION__KEY (e.g. COORDINATOR__DATABASE__URL, COORDINATOR__AMQP__URL)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: apply migrations, declare the topology, consume, relay the outbox, serve HTTP
    Serve,
    /// Apply pending database migrations and exit
    Migrate,
    /// Register and list agents
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Inspect and close workflows
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
    /// List, snooze and cancel SLA clocks
    Sla {
        #[command(subcommand)]
        command: SlaCommand,
    },
    /// List and acknowledge escalations
    Escalation {
        #[command(subcommand)]
        command: EscalationCommand,
    },
    /// Raise and inspect emergencies
    Emergency {
        #[command(subcommand)]
        command: EmergencyCommand,
    },
    /// Inspect and replay rejected messages
    #[command(name = "dead-letter")]
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Check the tamper-evident audit log
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The communication-health report: message volume per orchestrator and type,
    /// delivery latency and reliability, handoff success per workflow kind, SLA
    /// compliance per role and clock, protocol adherence per orchestrator, and an
    /// overall healthy / degraded / critical with the rules that decided it
    /// (docs/sql.md, section 12)
    Report {
        /// How far back to look (e.g. 24h, 7d)
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// text for a terminal, json for a script (the source documents' sections)
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
    },
    /// Follow workflow events as they are committed, one line each (Ctrl-C stops)
    Tail {
        /// Only this workflow's events
        #[arg(long)]
        workflow: Option<String>,
        /// Only workflows of this kind (a workflow definition's name, or `emergency`)
        #[arg(long)]
        kind: Option<String>,
        /// Only messages sent by agents of this role (e.g. qa-director)
        #[arg(long)]
        role: Option<String>,
        /// Only this message type (e.g. testing_completed)
        #[arg(long = "type")]
        message_type: Option<String>,
        /// Start this far back (e.g. 10m, 2h); default: from now
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// How often to look for new events
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
        /// Stop after this many events
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// The coordinator's own signing key
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

impl Command {
    /// Whether the command reaches PostgreSQL or RabbitMQ, or signs: only those need
    /// TLS (where plaintext is refused) and the coordinator's signing key. Making a key
    /// and checking or drawing workflow definitions touch neither.
    pub fn connects(&self) -> bool {
        !matches!(
            self,
            Command::Key {
                command: KeyCommand::Generate | KeyCommand::GenerateEncryption
            } | Command::Workflow {
                command: WorkflowCommand::Check { .. } | WorkflowCommand::Graph { .. }
            }
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new Ed25519 private key for security.signing_key, and print it with its
    /// public key (nothing is stored)
    Generate,
    /// The public key and key id of the configured security.signing_key: what agents
    /// verify the coordinator's messages with (also GET /keys)
    Show,
    /// Make a new AES-256 key for security.encryption.key, and print it with its key id
    /// (nothing is stored)
    GenerateEncryption,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every chain of audit_log and report the first row altered, inserted
    /// or removed (exit 1), or that it is intact
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Record an agent and declare its queues and bindings (idempotent)
    Add {
        /// The agent's id, e.g. qa-dir-001 (letters, digits, '.', '_', '-')
        agent_id: String,
        /// Its role: one of the configured roles ([roles.*]; by default product-director,
        /// engineering-director, qa-director, devops-manager, creative-director,
        /// marketing-director)
        agent_type: String,
        /// Also create the agent's own broker user (through RabbitMQ's management API,
        /// amqp.management_url) and print its password, once: it may read only its own
        /// queues and publish only its role's routing keys on agent.topic
        #[arg(long)]
        credentials: bool,
        /// Register the agent's Ed25519 public key (base64 of its 32 bytes), which its
        /// messages are signed with (docs/agents.md)
        #[arg(long, value_name = "BASE64")]
        public_key: Option<String>,
        /// The key's name, which the agent puts in header.security.key_id (default:
        /// ed25519- and the key's first 8 bytes in hex)
        #[arg(long, requires = "public_key")]
        key_id: Option<String>,
        /// Who (recorded in the audit log; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Give an agent a new public key; its previous key stays valid until retired (or
    /// until the next rotation), older ones are retired now
    #[command(name = "rotate-key")]
    RotateKey {
        /// The agent's id
        agent_id: String,
        /// The new Ed25519 public key (base64 of its 32 bytes)
        #[arg(long, value_name = "BASE64")]
        public_key: String,
        /// The new key's name (default: ed25519- and the key's first 8 bytes in hex)
        #[arg(long)]
        key_id: Option<String>,
        /// Who (recorded in the audit log; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Retire one of an agent's keys: messages signed with it are refused from now on
    #[command(name = "retire-key")]
    RetireKey {
        /// The agent's id
        agent_id: String,
        /// The key's name (header.security.key_id)
        key_id: String,
        /// Who (recorded in the audit log; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Revoke an agent: delete its broker user (its connections are closed) and its
    /// registration; its queues stay
    Remove {
        /// The agent's id
        agent_id: String,
        /// Who (recorded in the audit log; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// List registered agents with their health (live, stale: no heartbeat for
    /// heartbeats.missed intervals, unknown: none yet) and what their last heartbeat said
    List {
        /// Only this role's agents
        #[arg(long)]
        role: Option<String>,
    },
    /// One agent: its registration, its keys, whether it has a broker user of its own,
    /// and the depth of its queues
    Show {
        /// The agent's id
        agent_id: String,
    },
    /// Publish a message as a registered agent, to try the coordinator out (the default
    /// profile only: where messages must be signed or sent as the agent's own broker
    /// user, the agent itself must send them)
    Send {
        /// The registered agent to send as
        agent_id: String,
        /// The message type, e.g. requirements_ready
        message_type: String,
        /// The workflow it is about (its correlation id), e.g. wf-1
        workflow_id: String,
        /// payload.data, as JSON
        #[arg(long, default_value = "{}", value_parser = json_object)]
        data: serde_json::Value,
    },
}

/// `--data`: a JSON object.
fn json_object(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("must be a JSON object, e.g. '{\"title\": \"Login\"}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// The workflow definitions a CLI run knows: those loaded from the configuration
/// folder, and the latest stored version of every other one the service has run (a
/// custom workflow started by a service with another configuration folder).
async fn known_definitions(
    settings: &Settings,
    pool: &PgPool,
) -> Vec<&'static crate::domain::definition::Definition> {
    let mut defs: Vec<_> = settings.workflows.iter().collect();
    // A database the service has not migrated yet has stored nothing.
    let stored = crate::db::definitions::latest_sources(pool)
        .await
        .unwrap_or_default();
    for (name, source) in stored {
        if settings.workflows.get(&name).is_some() {
            continue;
        }
        // A stored text the configuration no longer accepts is left out, not fatal: the
        // service said so when it started.
        if let Ok(def) =
            crate::domain::definition::parse(&format!("{name}.toml"), &source, &settings.catalog())
        {
            defs.push(def);
        }
    }
    defs
}

/// `--kind` and `--state`, checked against the known definitions and incidents (they
/// come from configuration and the database, so clap cannot know them).
fn check_kind_and_state(
    defs: &[&crate::domain::definition::Definition],
    kind: Option<&str>,
    state: Option<&str>,
) -> anyhow::Result<()> {
    let incident = crate::domain::emergency::KIND;
    let incident_states = crate::domain::emergency::IncidentState::ALL.map(|s| s.as_str());
    let closed = [
        crate::domain::definition::CANCELLED,
        crate::domain::definition::FAILED,
    ];
    if let Some(kind) = kind {
        if kind != incident && !defs.iter().any(|d| d.name == kind) {
            let kinds: Vec<&str> = defs.iter().map(|d| d.name).chain([incident]).collect();
            return Err(usage(format!(
                "invalid value '{kind}' for '--kind <KIND>' [possible values: {}]",
                kinds.join(", ")
            )));
        }
    }
    let Some(state) = state else {
        return Ok(());
    };
    let mut known: Vec<&str> = Vec::new();
    for d in defs.iter().filter(|d| kind.is_none_or(|k| k == d.name)) {
        known.extend(d.states.iter().map(|s| s.name));
        known.extend(closed);
    }
    if kind.is_none_or(|k| k == incident) {
        known.extend(incident_states);
    }
    let mut seen = std::collections::BTreeSet::new();
    known.retain(|s| seen.insert(*s));
    if known.contains(&state) {
        return Ok(());
    }
    Err(usage(format!(
        "invalid value '{state}' for '--state <STATE>'{} [possible values: {}]",
        kind.map(|k| format!(" of {k}")).unwrap_or_default(),
        known.join(", ")
    )))
}

/// `coordinator workflow graph NAME` for a definition the configuration folder does
/// not hold: the latest version the service stored, when the database is there.
async fn stored_graph(settings: &Settings, name: &str) -> anyhow::Result<String> {
    let stored = async {
        let pool = db::pool(&settings.database).ok()?;
        if db::check_reachable(&settings.database).await.is_err() {
            return None;
        }
        let defs = known_definitions(settings, &pool).await;
        db::close(&pool).await;
        Some(defs)
    }
    .await;
    match stored
        .as_deref()
        .and_then(|defs| defs.iter().find(|d| d.name == name))
    {
        Some(d) => Ok(crate::domain::graph::mermaid(d)),
        None => {
            let loaded: Vec<&str> = settings.workflows.iter().map(|d| d.name).collect();
            let others: Vec<&str> = stored
                .iter()
                .flatten()
                .map(|d| d.name)
                .filter(|n| !loaded.contains(n))
                .collect();
            let more = match (&stored, others.is_empty()) {
                (None, _) => "; the database, which keeps the definitions the service ran from other configuration folders, could not be read".to_string(),
                (Some(_), true) => String::new(),
                (Some(_), false) => format!("; stored by the service: {}", others.join(", ")),
            };
            Err(usage(format!(
                "no workflow definition named {name:?}; defined: {}{more}",
                loaded.join(", ")
            )))
        }
    }
}

/// A wrong argument or value that clap could not catch (it depends on configuration):
/// `main` exits 2 with it, as for clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// Every "not found" answers alike: what was asked for, and how to list what exists.
pub(crate) fn not_found(
    what: &'static str,
    id: impl std::fmt::Display,
    list: &'static str,
) -> anyhow::Error {
    ops::Error::NotFound {
        what,
        id: id.to_string(),
        list,
    }
    .into()
}

/// True if `e` is a wrong argument (`main` exits 2 for it, as for clap's own errors).
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Usage>().is_some()
        || matches!(e.downcast_ref::<ops::Error>(), Some(ops::Error::Usage(_)))
}

/// Every reason a dead letter can have: the rejection reasons, and what the broker
/// itself dead-lettered.
fn reason_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(
        Reason::ALL
            .map(Reason::as_str)
            .into_iter()
            .chain([crate::service::collector::BROKER_DEAD_LETTERED]),
    )
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// List workflows, most recently changed first
    List {
        /// Only workflows of this kind (a workflow definition's name, or `emergency`)
        #[arg(long)]
        kind: Option<String>,
        /// Only workflows in this state (with --kind: one of that kind's states)
        #[arg(long)]
        state: Option<String>,
        /// At most this many rows
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Show a workflow: its state, its SLA clocks with deadlines, escalations and history
    Show {
        /// The workflow id (the correlation_id of its requirements_ready)
        id: String,
    },
    /// Cancel a workflow: it becomes `cancelled` and its armed clocks are cancelled
    Cancel {
        /// The workflow id
        id: String,
        /// Why (recorded in the workflow's history)
        #[arg(long)]
        reason: String,
        /// Who (recorded in the workflow's history; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Mark a workflow failed: it becomes `failed` and its armed clocks are cancelled
    Fail {
        /// The workflow id
        id: String,
        /// Why (recorded in the workflow's history)
        #[arg(long)]
        reason: String,
        /// Who (recorded in the workflow's history; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Check workflow definitions as the service reads them: the shipped ones, with the
    /// *.toml files of DIR (default: the configuration folder's workflows/) on top
    Check {
        /// A folder of workflow definitions (*.toml)
        dir: Option<std::path::PathBuf>,
    },
    /// List every version of every workflow definition the service has run, with how
    /// many workflows started with it and how many of those are live
    Definitions,
    /// Print a workflow definition as a Mermaid state diagram
    Graph {
        /// The workflow's name (`workflow check` lists them)
        name: String,
    },
}

/// The OS user running the command: who `--by` records unless told otherwise.
fn operator() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "operator".into())
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: use RFC 3339, e.g. 2026-11-21T15:00:00Z"))
}

fn severity_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(["low", "medium", "high", "critical"])
}

#[derive(Debug, Subcommand)]
pub enum SlaCommand {
    /// List armed clocks, earliest deadline first (or every clock of one workflow)
    List {
        /// Only armed clocks past their deadline
        #[arg(long)]
        overdue: bool,
        /// Every clock of this workflow or incident, whatever its status
        #[arg(long)]
        workflow: Option<String>,
        /// At most this many rows
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Move an armed clock's deadline (recorded in the workflow's history)
    #[command(group(clap::ArgGroup::new("when").required(true).args(["until", "for_"])))]
    Snooze {
        /// The clock's id (the ID column of `sla list`)
        clock: i64,
        /// New deadline, RFC 3339 (e.g. 2026-11-21T15:00:00Z)
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// New deadline as a duration from now (e.g. 2h, 30m)
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_: Option<std::time::Duration>,
        /// Why (recorded in the workflow's history)
        #[arg(long)]
        reason: String,
        /// Who (default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Cancel an armed clock: it will not breach (recorded in the workflow's history)
    Cancel {
        /// The clock's id (the ID column of `sla list`)
        clock: i64,
        /// Why (recorded in the workflow's history)
        #[arg(long)]
        reason: String,
        /// Who (default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EscalationCommand {
    /// List escalations, newest first
    List {
        /// Only those not acknowledged
        #[arg(long)]
        open: bool,
        /// Only the escalations of this workflow or incident
        #[arg(long)]
        workflow: Option<String>,
        /// At most this many rows
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Acknowledge an escalation: its whole chain is acknowledged and its ladder stops
    Ack {
        /// The escalation's id (any level of the chain)
        id: i64,
        /// Who acknowledges (recorded in escalations.acknowledged_by; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EmergencyCommand {
    /// Raise an incident: broadcast emergency_alert to every agent and on-call, and arm
    /// an acknowledgment clock for every registered agent
    Raise {
        /// How bad it is (sent in the alert)
        #[arg(long, value_parser = severity_parser())]
        severity: String,
        /// What is happening (sent in the alert; the incident's title)
        #[arg(long)]
        description: String,
        /// Incident id (default: a new inc-<uuid>)
        #[arg(long)]
        id: Option<String>,
        /// Who raises it (default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Show an incident: who acknowledged, who did not, and when
    Show {
        /// The incident id
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters, newest first
    List {
        /// Only this reason
        #[arg(long, value_parser = reason_parser())]
        reason: Option<String>,
        /// Only those received since then: a time (2026-11-22T10:00:00Z) or a duration ago (2h, 30m)
        #[arg(long, value_parser = since_parser)]
        since: Option<DateTime<Utc>>,
        /// Only those neither replayed nor resolved
        #[arg(long)]
        unresolved: bool,
        /// At most this many rows
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Show a dead letter whole: the body pretty-printed, the reason, the error, its replays
    Show {
        /// The dead letter's id (dead_letters.id)
        id: i64,
    },
    /// Publish a dead letter again, exactly as received, so the coordinator processes it
    /// anew (a message that was applied since stays applied: replaying it changes nothing)
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "reason"])))]
    Replay {
        /// The dead letter's id (dead_letters.id)
        id: Option<i64>,
        /// Instead of one id: every unresolved dead letter with this reason
        #[arg(long, value_parser = reason_parser())]
        reason: Option<String>,
        /// With --reason: only those received since then (a time, or a duration ago: 2h)
        #[arg(long, value_parser = since_parser, requires = "reason", conflicts_with = "id")]
        since: Option<DateTime<Utc>>,
        /// Print what the coordinator would do with each now; commit and publish nothing
        #[arg(long)]
        dry_run: bool,
        /// Replay a letter refused for who sent it (unauthenticated, missing_signature,
        /// bad_signature), which a replay would otherwise apply unchecked; needs --note
        #[arg(long, requires = "note")]
        force: bool,
        /// With --force: why it is safe (recorded in the audit log)
        #[arg(long, requires = "force")]
        note: Option<String>,
        /// Who replays (recorded with the replay; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
    /// Set a dead letter aside for good, with a note saying why (it is no longer listed
    /// as unresolved)
    Resolve {
        /// The dead letter's id (dead_letters.id)
        id: i64,
        /// Why it needs nothing more (recorded with it)
        #[arg(long)]
        note: String,
        /// Replace the note of a dead letter already resolved (refused without it)
        #[arg(long)]
        replace: bool,
        /// Who resolves (recorded in dead_letters.resolved_by; default: $USER)
        #[arg(long, default_value_t = operator())]
        by: String,
    },
}

/// `--since`: an RFC 3339 time, or a duration ago in humantime syntax.
fn since_parser(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither a time (2026-11-22T10:00:00Z) nor a duration ago (2h, 30m)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| format!("{s:?} is too long ago"))
}

/// Runs one of the non-serve commands, returning what to print. The state-changing ones
/// are operator use cases (`service::ops`); this only parses and prints.
pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<String> {
    if let Command::Key { command } = &command {
        return key(settings, command);
    }
    if let Command::Workflow {
        command: WorkflowCommand::Graph { name },
    } = &command
    {
        if settings.workflows.get(name).is_none() {
            return stored_graph(settings, name).await;
        }
    }
    if let Command::Workflow {
        command: command @ (WorkflowCommand::Check { .. } | WorkflowCommand::Graph { .. }),
    } = &command
    {
        return definitions(settings, command);
    }
    if let Command::Workflow {
        command: WorkflowCommand::List { kind, state, .. },
    } = &command
    {
        // What the configuration folder defines answers without the database; anything
        // else may be a kind the service stored, checked once connected.
        let loaded: Vec<_> = settings.workflows.iter().collect();
        if let Err(e) = check_kind_and_state(&loaded, kind.as_deref(), state.as_deref()) {
            if db::check_reachable(&settings.database).await.is_err() {
                return Err(e);
            }
        }
    }
    let pool = db::pool(&settings.database)?;
    db::check_reachable(&settings.database).await?;
    let result = run_on(settings, &pool, command).await;
    db::close(&pool).await;
    result
}

/// `coordinator workflow check|graph`: definitions only, no database.
fn definitions(settings: &Settings, command: &WorkflowCommand) -> anyhow::Result<String> {
    match command {
        WorkflowCommand::Check { dir } => {
            let workflows = match dir {
                None => settings.workflows.clone(),
                Some(dir) if !dir.is_dir() => {
                    return Err(usage(format!("{} is not a folder", dir.display())))
                }
                Some(dir) => crate::settings::load_workflows(dir, &settings.catalog())
                    .map_err(|e| usage(e.to_string()))?,
            };
            let mut out = format!("ok: {} workflow definition(s)\n", workflows.len());
            for d in workflows.iter() {
                let plural = |n: usize, one: &str| match n {
                    1 => format!("1 {one}"),
                    n => format!("{n} {one}s"),
                };
                let after: String = d
                    .after
                    .iter()
                    .map(|a| format!(" and after {} reaches {}", a.workflow, a.reaches))
                    .collect();
                out.push_str(&format!(
                    "  {} v{} ({}, {}, starts on {} from {}{after}; sha256 {}) from {}\n",
                    d.name,
                    d.version,
                    plural(d.states.len(), "state"),
                    plural(d.clocks.len(), "clock"),
                    d.start.message,
                    d.start.from,
                    &d.hash[..12],
                    d.file
                ));
            }
            Ok(out)
        }
        WorkflowCommand::Graph { name } => match settings.workflows.get(name) {
            Some(d) => Ok(crate::domain::graph::mermaid(d)),
            None => Err(usage(format!(
                "no workflow definition named {name:?}; defined: {}",
                settings
                    .workflows
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
        _ => Err(usage("not a definitions command")),
    }
}

/// `coordinator key …`: needs neither the database nor the broker.
fn key(settings: &Settings, command: &KeyCommand) -> anyhow::Result<String> {
    match command {
        KeyCommand::Show => match settings.signer() {
            Some(signer) => Ok(format!(
                "key_id: {}\npublic_key: {}\nalgorithm: ed25519\n",
                signer.key_id(),
                protocol::signing::encode_public(&signer.public_key())
            )),
            None => Err(usage(
                "security.signing_key is not set: make one with `coordinator key generate` and set COORDINATOR__SECURITY__SIGNING_KEY",
            )),
        },
        KeyCommand::GenerateEncryption => {
            let (key, id) = crate::encryption::generate();
            Ok(format!(
                "key (set it as COORDINATOR__SECURITY__ENCRYPTION__KEY, keep it in your secret store; it is shown once; sealed values name it as {id}):\n{key}\n"
            ))
        }
        KeyCommand::Generate => {
            let key = protocol::signing::generate();
            Ok(format!(
                "private key (set it as COORDINATOR__SECURITY__SIGNING_KEY, keep it in your secret store; it is shown once):\n{}\npublic key (give it to agents; key id {}):\n{}\n",
                protocol::signing::encode_private(&key),
                protocol::signing::default_key_id(&key.verifying_key()),
                protocol::signing::encode_public(&key.verifying_key())
            ))
        }
    }
}

async fn run_on(settings: &Settings, pool: &PgPool, command: Command) -> anyhow::Result<String> {
    let pool = pool.clone();
    let clock = SystemClock;
    let ops = Ops::new(settings, &pool, &clock);
    match command {
        Command::Serve => bail!("serve is run by main"),
        Command::Migrate => {
            db::migrate(&pool).await.context("migration failed")?;
            Ok("migrations applied\n".into())
        }
        Command::Agent { command } => match command {
            AgentCommand::Add {
                agent_id,
                agent_type,
                credentials,
                public_key,
                key_id,
                by,
            } => {
                let added = ops.add_agent(&agent_id, &agent_type, &by).await?;
                let mut out = format!(
                    "{} agent {agent_id} ({agent_type}); queues agent.{agent_id}.tasks, .commands, .events declared\n",
                    if added.created { "registered" } else { "already registered:" }
                );
                if let Some(key) = public_key {
                    let (key_id, _) = ops
                        .add_agent_key(&agent_id, &key, key_id.as_deref(), None, &by)
                        .await?;
                    let _ = writeln!(
                        out,
                        "public key {key_id} registered: the agent puts \"key_id\": \"{key_id}\" in header.security"
                    );
                }
                if credentials {
                    let password = ops.add_agent_credentials(&agent_id, &agent_type, &by).await?;
                    let _ = writeln!(
                        out,
                        "broker user {agent_id} on vhost {:?}; its password (shown once, keep it in your secret store):\n{password}",
                        settings.amqp.vhost()
                    );
                }
                Ok(out)
            }
            AgentCommand::Remove { agent_id, by } => {
                let removed = ops.remove_agent(&agent_id, &by).await?;
                Ok(format!(
                    "agent {agent_id}: {}; {}\n",
                    if removed.user_deleted { "broker user deleted (its connections closed)" } else { "had no broker user" },
                    if removed.registered { "registration deleted (its queues stay)" } else { "was not registered" }
                ))
            }
            AgentCommand::RotateKey {
                agent_id,
                public_key,
                key_id,
                by,
            } => {
                let (key_id, retired) = ops
                    .add_agent_key(&agent_id, &public_key, key_id.as_deref(), Some(2), &by)
                    .await?;
                Ok(format!(
                    "agent {agent_id}: key {key_id} added; its previous key stays valid until `coordinator agent retire-key {agent_id} <key_id>`{}\n",
                    if retired.is_empty() {
                        String::new()
                    } else {
                        format!("; retired: {}", retired.join(", "))
                    }
                ))
            }
            AgentCommand::RetireKey {
                agent_id,
                key_id,
                by,
            } => {
                ops.retire_agent_key(&agent_id, &key_id, &by).await?;
                Ok(format!(
                    "agent {agent_id}: key {key_id} retired; messages signed with it are refused\n"
                ))
            }
            AgentCommand::List { role } => {
                list_agents(&pool, role.as_deref(), settings.heartbeats.stale_after()).await
            }
            AgentCommand::Show { agent_id } => Ok(show_agent(&ops.show_agent(&agent_id).await?)),
            AgentCommand::Send {
                agent_id,
                message_type,
                workflow_id,
                data,
            } => {
                let sent = ops
                    .send_as_agent(&agent_id, &message_type, &workflow_id, data)
                    .await?;
                Ok(format!(
                    "{message_type} sent as {agent_id} ({}) about {workflow_id}, message {}; `coordinator workflow show {workflow_id}` shows what it did\n",
                    sent.header.source.agent_type, sent.header.message_id
                ))
            }
        },
        Command::Report { since, format } => {
            let until = chrono::Utc::now();
            let since = chrono::Duration::from_std(since)
                .ok()
                .and_then(|d| until.checked_sub_signed(d))
                .context("--since reaches back before the calendar's start")?;
            let figures = db::report::figures(&pool, since, until).await?;
            Ok(report::render(&report::Report::of(figures), format))
        }
        Command::Tail {
            workflow,
            kind,
            role,
            message_type,
            since,
            every,
            limit,
        } => {
            let defs = known_definitions(settings, &pool).await;
            check_kind_and_state(&defs, kind.as_deref(), None)?;
            let catalog = settings.catalog();
            if let Some(role) = role.as_deref().filter(|r| !catalog.is_role(r)) {
                let roles: Vec<&str> = catalog.roles().map(|(name, _)| name).collect();
                return Err(usage(format!(
                    "invalid value '{role}' for '--role <ROLE>' [possible values: {}]",
                    roles.join(", ")
                )));
            }
            let from = Utc::now()
                - chrono::Duration::from_std(since.unwrap_or_default()).unwrap_or_default();
            let filter = read::EventFilter {
                workflow,
                kind,
                role,
                message_type,
            };
            tail::run(&pool, &filter, from, every, limit).await?;
            Ok(String::new())
        }
        Command::Workflow { command } => match command {
            WorkflowCommand::List { kind, state, limit } => {
                let defs = known_definitions(settings, &pool).await;
                check_kind_and_state(&defs, kind.as_deref(), state.as_deref())?;
                list_workflows(settings, &pool, kind.as_deref(), state.as_deref(), limit).await
            }
            WorkflowCommand::Show { id } => show_workflow(settings, &pool, &id, Utc::now()).await,
            WorkflowCommand::Cancel { id, reason, by } => {
                let c = ops.close_workflow(&id, Closing::Cancelled, &reason, &by).await?;
                Ok(format!("workflow {id}: {} → {}\n", c.from, c.to))
            }
            WorkflowCommand::Fail { id, reason, by } => {
                let c = ops.close_workflow(&id, Closing::Failed, &reason, &by).await?;
                Ok(format!("workflow {id}: {} → {}\n", c.from, c.to))
            }
            c @ (WorkflowCommand::Check { .. } | WorkflowCommand::Graph { .. }) => {
                definitions(settings, &c)
            }
            WorkflowCommand::Definitions => list_definitions(settings, &pool).await,
        },
        Command::Sla { command } => match command {
            SlaCommand::List {
                overdue,
                workflow,
                limit,
            } => oncall::list_clocks(&pool, overdue, workflow.as_deref(), limit).await,
            SlaCommand::Snooze {
                clock,
                until,
                for_,
                reason,
                by,
            } => {
                let until = match (until, for_) {
                    (Some(t), _) => t,
                    (None, Some(d)) => crate::domain::sla::add(Utc::now(), d),
                    (None, None) => return Err(usage("give --until or --for")),
                };
                let c = ops.snooze_clock(clock, until, &reason, &by).await?;
                Ok(format!(
                    "clock {clock} ({} of {}) now due {} (was {})\n",
                    c.clock,
                    c.workflow_id,
                    ts(until),
                    ts(c.was_due)
                ))
            }
            SlaCommand::Cancel { clock, reason, by } => {
                let c = ops.cancel_clock(clock, &reason, &by).await?;
                Ok(format!(
                    "clock {clock} ({} of {}) cancelled\n",
                    c.clock, c.workflow_id
                ))
            }
        },
        Command::Escalation { command } => match command {
            EscalationCommand::List {
                open,
                workflow,
                limit,
            } => oncall::list_escalations(&pool, open, workflow.as_deref(), limit).await,
            EscalationCommand::Ack { id, by } => {
                Ok(match ops.acknowledge_escalation(id, &by).await? {
                    Acknowledged::Now {
                        workflow_id,
                        chain_id,
                        ids,
                    } => format!(
                        "acknowledged escalation chain {chain_id} of {workflow_id} by {by} ({} escalation{}); its ladder stops\n",
                        ids.len(),
                        if ids.len() == 1 { "" } else { "s" }
                    ),
                    Acknowledged::Already {
                        workflow_id,
                        chain_id,
                    } => format!(
                        "escalation chain {chain_id} of {workflow_id} was already acknowledged; nothing changed\n"
                    ),
                })
            }
        },
        Command::Emergency { command } => match command {
            EmergencyCommand::Raise {
                severity,
                description,
                id,
                by,
            } => {
                let r = ops.raise_emergency(id, &severity, &description, &by).await?;
                Ok(format!(
                    "incident {} raised ({severity}): broadcast to every agent; {} acknowledgment{} awaited\n",
                    r.id,
                    r.awaited,
                    if r.awaited == 1 { "" } else { "s" }
                ))
            }
            EmergencyCommand::Show { id } => oncall::show(&pool, &id).await,
        },
        Command::Key { command } => key(settings, &command),
        Command::Audit {
            command: AuditCommand::Verify,
        } => match crate::service::audit::verify(&pool).await? {
            Ok(v) => Ok(format!(
                "audit log intact: {} rows in {} chains, every hash and link checked\n",
                v.rows, v.chains
            )),
            Err(b) => bail!("the audit log was tampered with: {b}"),
        },
        Command::DeadLetter { command } => match command {
            DeadLetterCommand::List {
                reason,
                since,
                unresolved,
                limit,
            } => {
                let filter = read::DeadLetterFilter {
                    reason: reason.as_deref(),
                    since,
                    unresolved,
                };
                list_dead_letters(&pool, &filter, limit).await
            }
            DeadLetterCommand::Show { id } => show_dead_letter(settings, &pool, id).await,
            DeadLetterCommand::Replay {
                id,
                reason,
                since,
                dry_run,
                force: _,
                note,
                by,
            } => {
                let ids = match (id, reason) {
                    (Some(id), _) => vec![id],
                    (None, Some(reason)) => ops.unresolved_dead_letters(&reason, since).await?,
                    (None, None) => return Err(usage("give a dead letter's id or --reason")),
                };
                if ids.is_empty() {
                    return Ok("no unresolved dead letter matches\n".into());
                }
                let mut out = String::new();
                for id in ids {
                    let line = if dry_run {
                        dry_run_line(id, &ops.replay_dry_run(id).await?)
                    } else {
                        replayed_line(&ops.replay_dead_letter(id, &by, note.as_deref()).await?)
                    };
                    out.push_str(&line);
                }
                Ok(out)
            }
            DeadLetterCommand::Resolve {
                id,
                note,
                replace,
                by,
            } => {
                let r = ops.resolve_dead_letter(id, &note, replace, &by).await?;
                Ok(match r.replaced {
                    Some(old) => format!("dead letter {id} resolved: {note} (replacing the note {old:?})\n"),
                    None => format!("dead letter {id} resolved: {note}\n"),
                })
            }
        },
    }
}

/// What `dead-letter replay` did with one dead letter.
fn replayed_line(r: &Replayed) -> String {
    format!(
        "dead letter {}{} published again to {} with routing key {}{}{}{}\n",
        r.id,
        r.message_id
            .as_ref()
            .map(|m| format!(" (message {m})"))
            .unwrap_or_default(),
        exchanges::TOPIC,
        r.routing_key,
        r.replayed_before
            .map(|t| format!("; it had been replayed before, at {}", ts(t)))
            .unwrap_or_default(),
        if r.applied_before {
            "; the message was applied since, so this copy changes nothing"
        } else {
            ""
        },
        r.resolved_before
            .as_ref()
            .map(|(t, note)| format!(
                "; note: it had been resolved at {} ({:?}), and stays resolved",
                ts(*t),
                note.as_deref().unwrap_or_default()
            ))
            .unwrap_or_default()
    )
}

/// What `dead-letter replay --dry-run` says of one dead letter.
fn dry_run_line(id: i64, dry: &crate::service::ops::DryRun) -> String {
    let p = &dry.processed;
    let what = match (&p.outcome, &p.transition) {
        (Outcome::Rejected(r), _) => format!(
            "would be rejected again: {}{}",
            r.as_str(),
            p.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        (_, Some((from, to))) => format!("would be {}: {from} → {to}", p.outcome.label()),
        (Outcome::Duplicate, None) => {
            "would change nothing: the message was applied since".to_string()
        }
        (o, None) => format!("would be {}", o.label()),
    };
    let skipping = match dry.skips {
        Some((check, true)) => format!(
            "; it was refused as {}, and a replay skips {check}: it needs --force --note",
            dry.refused_as
        ),
        Some((check, false)) => format!("; a replay skips {check}, which refused it"),
        None => String::new(),
    };
    format!("dead letter {id} (dry run, nothing committed or published): {what}{skipping}\n")
}

async fn list_definitions(settings: &Settings, pool: &PgPool) -> anyhow::Result<String> {
    let stored = crate::db::definitions::list(pool).await?;
    let mut t = Table::new(&[
        ("WORKFLOW", Align::Left),
        ("VERSION", Align::Right),
        ("HASH", Align::Left),
        ("FIRST RUN", Align::Left),
        ("LIVE", Align::Right),
        ("STARTED", Align::Right),
        ("", Align::Left),
    ]);
    let current =
        |name: &str, hash: &str| settings.workflows.get(name).is_some_and(|d| d.hash == hash);
    for d in &stored {
        t.row(vec![
            d.name.clone(),
            d.version.to_string(),
            d.hash[..d.hash.len().min(12)].to_string(),
            ts(d.first_seen_at),
            d.live.to_string(),
            d.started.to_string(),
            if current(&d.name, &d.hash) {
                "current".into()
            } else {
                String::new()
            },
        ]);
    }
    for d in settings.workflows.iter() {
        if !stored.iter().any(|s| s.hash == d.hash) {
            t.row(vec![
                d.name.into(),
                d.version.to_string(),
                d.hash[..12].to_string(),
                "-".into(),
                "0".into(),
                "0".into(),
                "current, not run yet".into(),
            ]);
        }
    }
    Ok(t.render())
}

async fn list_agents(
    pool: &PgPool,
    role: Option<&str>,
    stale_after: std::time::Duration,
) -> anyhow::Result<String> {
    let rows = read::agents(pool, role).await?;
    let now = chrono::Utc::now();
    let mut t = Table::new(&[
        ("AGENT", Align::Left),
        ("TYPE", Align::Left),
        ("HEALTH", Align::Left),
        ("STATUS", Align::Left),
        ("LOAD", Align::Right),
        ("CAPACITY", Align::Right),
        ("ACTIVE", Align::Right),
        ("QUEUED", Align::Right),
        ("LAST HEARTBEAT", Align::Left),
        ("VIA", Align::Left),
    ]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for a in rows {
        let health = Health::of(a.last_heartbeat_at, stale_after, now);
        t.row(vec![
            a.agent_id,
            a.agent_type,
            health.as_str().into(),
            or_dash(a.status),
            or_dash(a.load.map(|l| format!("{l:.2}"))),
            or_dash(a.available_capacity.map(|c| format!("{c:.2}"))),
            or_dash(a.active_tasks.map(|n| n.to_string())),
            or_dash(a.queued_tasks.map(|n| n.to_string())),
            a.last_heartbeat_at.map_or_else(|| "-".into(), ts),
            a.registered_via,
        ]);
    }
    Ok(t.render())
}

fn show_agent(a: &crate::service::ops::AgentShown) -> String {
    let r = &a.agent;
    let mut out = format!(
        "agent:          {} ({})\nregistered:     {} via {}\nlast heartbeat: {}\n",
        r.agent_id,
        r.agent_type,
        ts(r.registered_at),
        r.registered_via,
        r.last_heartbeat_at.map_or_else(|| "never".into(), ts)
    );
    if let Some(since) = r.stale_since {
        out.push_str(&format!("stale since:    {}\n", ts(since)));
    }
    if r.status.is_some() || r.load.is_some() || r.active_tasks.is_some() {
        let n = |v: Option<i32>| v.map_or_else(|| "-".into(), |n| n.to_string());
        let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{x:.2}"));
        out.push_str(&format!(
            "reported:       status {}, load {}, capacity {}, active tasks {}, queued {}\n",
            r.status.as_deref().unwrap_or("-"),
            f(r.load),
            f(r.available_capacity),
            n(r.active_tasks),
            n(r.queued_tasks)
        ));
    }
    if let Some(c) = r.capabilities.as_ref().filter(|c| !c.is_empty()) {
        out.push_str(&format!("capabilities:   {}\n", c.join(", ")));
    }
    out.push_str(&format!(
        "broker user:    {}\n",
        match &a.broker_user {
            Ok(true) => "its own (agent add --credentials)".to_string(),
            Ok(false) => "none: it connects as a shared user".to_string(),
            Err(e) => format!("unknown ({e})"),
        }
    ));
    if a.keys.is_empty() {
        out.push_str("keys:           none (agent add --public-key)\n");
    }
    for k in &a.keys {
        let public = protocol::signing::VerifyingKey::from_bytes(
            &k.public_key.clone().try_into().unwrap_or([0; 32]),
        )
        .map_or_else(
            |_| "(not an Ed25519 key)".into(),
            |key| protocol::signing::encode_public(&key),
        );
        out.push_str(&format!(
            "key:            {} {} added {} by {}\n",
            k.key_id,
            public,
            ts(k.added_at),
            k.added_by
        ));
    }
    for (name, depth) in &a.queues {
        out.push_str(&match depth {
            Some((messages, consumers)) => {
                format!("queue:          {name}: {messages} ready, {consumers} consumer(s)\n")
            }
            None => format!("queue:          {name}: missing (agent add declares it again)\n"),
        });
    }
    out
}

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// "in 3h 2m" or "overdue by 5m 10s".
pub(crate) fn relative(due: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (due - now).num_seconds();
    // Seconds are noise on deadlines hours away.
    let abs = secs.unsigned_abs();
    let shown = if abs >= 3600 { abs - abs % 60 } else { abs };
    let d = humantime::format_duration(std::time::Duration::from_secs(shown)).to_string();
    if secs >= 0 {
        format!("in {d}")
    } else {
        format!("overdue by {d}")
    }
}

/// A workflow's key as its definition names it (`change_id=C-1`), or `-`. The name is
/// stored with the row; older rows take it from the definitions loaded.
fn named_key(settings: &Settings, w: &read::WorkflowRow) -> String {
    let field = w
        .key_name
        .as_deref()
        .or_else(|| settings.workflows.get(&w.kind).and_then(|d| d.key));
    match (field, w.business_key.as_deref()) {
        (Some(field), Some(key)) => format!("{field}={key}"),
        (None, Some(key)) => key.to_string(),
        (_, None) => "-".into(),
    }
}

async fn list_workflows(
    settings: &Settings,
    pool: &PgPool,
    kind: Option<&str>,
    state: Option<&str>,
    limit: i64,
) -> anyhow::Result<String> {
    let rows = read::workflows(pool, kind, state, limit).await?;
    let now = Utc::now();
    let mut t = Table::new(&[
        ("WORKFLOW", Align::Left),
        ("KIND", Align::Left),
        ("STATE", Align::Left),
        ("ROUND", Align::Right),
        ("KEY", Align::Left),
        ("UPDATED", Align::Left),
        ("NEXT DEADLINE", Align::Left),
    ]);
    for w in &rows {
        t.row(vec![
            w.id.clone(),
            w.kind.clone(),
            w.state.clone(),
            w.round.to_string(),
            named_key(settings, w),
            ts(w.updated_at),
            w.next_due_at.map_or_else(
                || "-".into(),
                |d| format!("{} ({})", ts(d), relative(d, now)),
            ),
        ]);
    }
    let mut out = t.render();
    if rows.is_empty() {
        out.push_str("(no workflows)\n");
    }
    Ok(out)
}

pub async fn show_workflow(
    settings: &Settings,
    pool: &PgPool,
    id: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let Some(w) = read::workflow(pool, id).await? else {
        return Err(not_found("workflow", id, "workflow list"));
    };
    let mut out = String::new();
    let _ = writeln!(out, "Workflow {} ({})", w.id, w.kind);
    let _ = writeln!(out, "  state:     {} (round {})", w.state, w.round);
    let _ = writeln!(
        out,
        "  key:       {}{}",
        named_key(settings, &w),
        w.title
            .as_deref()
            .map(|t| format!(" \"{t}\""))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  created:   {}   updated: {}   completed: {}",
        ts(w.created_at),
        ts(w.updated_at),
        w.completed_at.map_or_else(|| "-".into(), ts)
    );

    out.push_str("\nSLA clocks\n");
    let mut clocks = Table::new(&[
        ("CLOCK", Align::Left),
        ("ROUND", Align::Right),
        ("OWNER", Align::Left),
        ("STATUS", Align::Left),
        ("DUE", Align::Left),
        ("NOTE", Align::Left),
    ])
    .indented("  ");
    for c in read::clocks(pool, id).await? {
        let note = match (c.status.as_str(), c.closed_at) {
            ("armed", _) => relative(c.due_at, now),
            (_, Some(at)) => format!("{} {}", c.status, ts(at)),
            _ => String::new(),
        };
        let owner = match &c.owner_agent_id {
            Some(a) => format!("{} ({a})", c.owner_role),
            None => c.owner_role.clone(),
        };
        clocks.row(vec![
            c.clock,
            c.round.to_string(),
            owner,
            c.status,
            ts(c.due_at),
            note,
        ]);
    }
    out.push_str(&clocks.render());

    let escalations = read::escalations(pool, id).await?;
    if !escalations.is_empty() {
        out.push_str("\nEscalations\n");
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("CLOCK", Align::Left),
            ("OWNER", Align::Left),
            ("LEVEL", Align::Right),
            ("SEVERITY", Align::Left),
            ("RAISED", Align::Left),
            ("ACKNOWLEDGED", Align::Left),
        ])
        .indented("  ");
        for e in escalations {
            let ack = match (e.acknowledged_at, e.acknowledged_by) {
                (Some(at), by) => format!(
                    "acknowledged {} by {}",
                    ts(at),
                    by.unwrap_or_else(|| "?".into())
                ),
                (None, _) => "not acknowledged".into(),
            };
            t.row(vec![
                e.id.to_string(),
                e.clock,
                e.owner_role,
                e.level.to_string(),
                e.severity,
                ts(e.raised_at),
                ack,
            ]);
        }
        out.push_str(&t.render());
    }

    out.push_str("\nHistory\n");
    let mut history = Table::new(&[
        ("SEQ", Align::Right),
        ("AT", Align::Left),
        ("MESSAGE", Align::Left),
        ("FROM", Align::Left),
        ("STATE", Align::Left),
    ])
    .indented("  ");
    for e in read::events(pool, id).await? {
        let change = match e.from_state.as_deref() {
            None => format!("→ {}", e.to_state),
            Some(f) if f == e.to_state => format!("  {}", e.to_state),
            Some(f) => format!("{f} → {}", e.to_state),
        };
        history.row(vec![
            e.seq.to_string(),
            ts(e.occurred_at),
            e.message_type,
            e.source_agent_id.unwrap_or_else(|| "-".into()),
            change,
        ]);
    }
    out.push_str(&history.render());
    Ok(out)
}

async fn list_dead_letters(
    pool: &PgPool,
    filter: &read::DeadLetterFilter<'_>,
    limit: i64,
) -> anyhow::Result<String> {
    let rows = read::dead_letters(pool, filter, limit).await?;
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("RECEIVED", Align::Left),
        ("REASON", Align::Left),
        ("MESSAGE ID", Align::Left),
        ("FROM", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for d in &rows {
        t.row(vec![
            d.id.to_string(),
            ts(d.received_at),
            d.reason.clone(),
            d.message_id.clone().unwrap_or_else(|| "-".into()),
            d.source_agent_id.clone().unwrap_or_else(|| "-".into()),
            format!(
                "{}{}",
                d.detail,
                match (d.resolved_at, d.replayed_at) {
                    (Some(t), _) => format!(" (resolved {})", ts(t)),
                    (None, Some(t)) => format!(" (replayed {})", ts(t)),
                    (None, None) => String::new(),
                }
            ),
        ]);
    }
    let mut out = t.render();
    if rows.is_empty() {
        out.push_str("(no dead letters)\n");
    }
    Ok(out)
}

/// A dead letter's stored `properties` as AMQP names them: `type` (stored as `kind`),
/// the timestamp as a time (stored as seconds since the epoch), what the broker added
/// (`x_death`) last.
fn amqp_properties(properties: &serde_json::Value) -> String {
    let mut out = String::from("AMQP properties:\n");
    let Some(map) = properties.as_object() else {
        return out + "  (none recorded)\n";
    };
    let mut later = String::new();
    for (key, value) in map {
        let shown = match (key.as_str(), value) {
            (_, serde_json::Value::Null) => continue,
            // The routing key is shown above, with the dead letter.
            ("routing_key", _) => continue,
            ("timestamp", v) => match v.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)) {
                Some(t) => format!("{} ({v})", ts(t)),
                None => v.to_string(),
            },
            ("x_death", v) => {
                let _ = writeln!(
                    later,
                    "  x-death:        {}",
                    serde_json::to_string_pretty(v)
                        .unwrap_or_default()
                        .replace('\n', "\n  ")
                );
                continue;
            }
            (_, serde_json::Value::String(text)) => text.clone(),
            (_, v) => v.to_string(),
        };
        let name = if key == "kind" { "type" } else { key.as_str() };
        let _ = writeln!(out, "  {:<15} {shown}", format!("{name}:"));
    }
    out + &later
}

async fn show_dead_letter(settings: &Settings, pool: &PgPool, id: i64) -> anyhow::Result<String> {
    let Some(d) = read::dead_letter(pool, id).await? else {
        return Err(not_found("dead letter", id, "dead-letter list"));
    };
    let replays = read::dead_letter_replays(pool, id).await?;
    let mut out = String::new();
    let _ = writeln!(out, "dead letter {}", d.id);
    let _ = writeln!(out, "  reason:      {}", d.reason);
    let _ = writeln!(out, "  error:       {}", d.detail);
    let _ = writeln!(out, "  received:    {}", ts(d.received_at));
    let _ = writeln!(
        out,
        "  message id:  {}",
        d.message_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "  from:        {}",
        d.source_agent_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "  routing key: {}", d.routing_key);
    match (d.resolved_at, &d.resolution) {
        (Some(t), note) => {
            let _ = writeln!(
                out,
                "  resolved:    {} ({})",
                ts(t),
                note.as_deref().unwrap_or("")
            );
        }
        (None, _) => {
            let _ = writeln!(out, "  resolved:    no");
        }
    }
    if replays.is_empty() {
        let _ = writeln!(out, "  replays:     none");
    } else {
        let _ = writeln!(out, "  replays:");
        for (at, by) in &replays {
            let _ = writeln!(out, "    {} by {by}", ts(*at));
        }
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    out.push_str(&amqp_properties(&d.properties));
    match &d.body_json {
        Some(body) => {
            // Sealed fields (security.encryption) opened when this command has the key.
            let mut opened = body.clone();
            let sealed = match settings.cipher().map(|c| c.open(&mut opened)) {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match sealed {
                None => {
                    let _ = writeln!(out, "body:\n{}", pretty(&opened));
                }
                Some(why) => {
                    let _ = writeln!(
                        out,
                        "body (sealed fields shown sealed: {why}):\n{}",
                        pretty(body)
                    );
                }
            }
        }
        None => {
            let _ = writeln!(
                out,
                "body ({} bytes, not JSON):\n{}",
                d.body.len(),
                String::from_utf8_lossy(&d.body)
            );
        }
    }
    Ok(out)
}
