//! What the running service's parts share, in parts: readiness flags ([`Status`]),
//! [`Metrics`], the wake-up [`Signals`] between them, the circuit [`Breakers`], the
//! agent cache, confirmed ids waiting to be marked sent, and the clock. [`Shared`]
//! holds them all for the app; a reconciler is handed only the parts it uses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use tokio::sync::Notify;

use crate::breaker::{Breaker, State as BreakerState};
use crate::clock::SharedClock;
use crate::db::Pool;
use crate::domain::sla::{Deadline, DeadlineKind};
use crate::engine::{Agents, Processor};
use crate::settings::Settings;
use crate::telemetry::repeats::Repeats;
use protocol::catalog::Catalog;

/// How often a condition that goes on is logged again, as a count.
pub const REPEATS_SAID_EVERY: Duration = Duration::from_secs(60);

pub struct Shared {
    pub settings: Settings,
    /// This process among the coordinators sharing the database
    /// (`processed_messages.processed_by`).
    pub instance: String,
    pub catalog: Catalog,
    pub pool: Pool,
    pub processor: Processor,
    /// The time everything runs on.
    pub clock: SharedClock,
    pub status: Status,
    pub metrics: Metrics,
    pub agents: AgentDirectory,
    /// Signs what the coordinator sends (`security.signing_key`).
    pub signer: Option<std::sync::Arc<protocol::signing::Signer>>,
    /// Outbox rows the broker confirmed, to be marked sent together.
    pub confirmed: Confirmed,
    /// Seals the configured payload fields (`security.encryption`).
    pub cipher: crate::encryption::FieldCipher,
    /// Every agent's rate-limit buckets (`security.rate_limits`).
    pub rate_limits: crate::service::rate_limits::RateLimits,
    /// The roles with an agent to take a task, for the warning when one has none.
    pub unattended: Unattended,
    /// What the gauges last read of the database (`service::gauges`), for the
    /// dashboard's counts without a query of their own.
    pub database_state: Latest<crate::db::read::State>,
    /// The dashboard's SLA compliance chart, read in the background
    /// (`service::gauges`, every `metrics.chart_interval`): its scan of the closed
    /// clocks is never a page's wait.
    pub compliance_chart: Latest<Vec<crate::db::report::DailySla>>,
    /// Turns to apply a batch: `inbox.concurrency` partitions at a time.
    pub batch_turns: tokio::sync::Semaphore,
    pub signals: Signals,
    /// Where the spans of what is applied and fired go (`traces.otlp_endpoint`).
    pub spans: crate::telemetry::spans::Exporter,
    /// The circuit breakers around PostgreSQL and around publishing.
    pub breakers: Breakers,
    /// Conditions that repeat (a message no queue takes), logged at start, end and as
    /// a count in between.
    pub repeats: Mutex<Repeats>,
    /// The step a shutdown is at, and what it still waits for, named when it overruns
    /// `shutdown.timeout`.
    stopping: Mutex<(&'static str, String)>,
}

/// The last value a background read produced, for pages to show without a query of
/// their own; none before the first read.
pub struct Latest<T>(std::sync::RwLock<Option<Arc<T>>>);

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest(std::sync::RwLock::new(None))
    }
}

impl<T> Latest<T> {
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Shared {
    pub fn new(settings: Settings, pool: Pool, clock: SharedClock) -> Shared {
        let catalog = settings.catalog();
        let processor = settings.processor();
        let batch_turns = tokio::sync::Semaphore::new(settings.inbox.concurrency);
        let settings_breaker = settings.circuit_breaker;
        let metrics = Metrics::new();
        let breakers = Breakers::new(settings_breaker, &metrics);
        let signer = settings.signer();
        let rate_limits =
            crate::service::rate_limits::RateLimits::new(&settings.security.rate_limits);
        // Validated with the settings: a bad key never gets this far.
        let cipher = settings.cipher().unwrap_or_default();
        Shared {
            settings,
            instance: instance_id(),
            catalog,
            pool,
            processor,
            clock,
            status: Status::default(),
            metrics,
            agents: AgentDirectory::default(),
            signer,
            confirmed: Confirmed::default(),
            rate_limits,
            unattended: Default::default(),
            database_state: Default::default(),
            compliance_chart: Default::default(),
            cipher,
            batch_turns,
            signals: Signals::default(),
            spans: crate::telemetry::spans::Exporter::off(),
            breakers,
            repeats: Mutex::new(Repeats::new(REPEATS_SAID_EVERY)),
            stopping: Mutex::new(("not stopping", String::new())),
        }
    }

    /// Records (and logs) the step a shutdown has reached.
    pub fn stopping(&self, step: &'static str) {
        tracing::info!("shutdown: {step}");
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = (step, String::new());
    }

    /// What the current step still waits for (e.g. "inbox partitions 0, 3"), named with
    /// it if the shutdown overruns.
    pub fn still_waiting_for(&self, what: String) {
        self.stopping.lock().unwrap_or_else(|e| e.into_inner()).1 = what;
    }

    /// The step a shutdown last reached, with what it still waited for.
    pub fn stopping_at(&self) -> String {
        let (step, waiting) = &*self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.is_empty() {
            step.to_string()
        } else {
            format!("{step}, still waiting for {waiting}")
        }
    }
}

/// How the running parts wake each other.
#[derive(Debug, Default)]
pub struct Signals {
    /// Signalled after every commit that queued outgoing messages.
    pub wake_relay: Notify,
    /// Signalled when deadlines are pushed, or an operator moved some.
    pub wake_timer: Notify,
    /// Set when an operator moved deadlines (the timer reads its window again).
    pub timers_changed: AtomicBool,
    /// Deadlines created by this process since the timer last looked; a std mutex, not
    /// a tokio one, because nothing awaits while it is held.
    pushed: Mutex<Vec<Deadline>>,
}

impl Signals {
    /// Hands deadlines created by a commit to the timer, so one due soon fires on time.
    pub fn schedule(&self, deadlines: impl IntoIterator<Item = Deadline>) {
        let mut pushed = self.pushed();
        let before = pushed.len();
        pushed.extend(deadlines);
        if pushed.len() > before {
            drop(pushed);
            self.wake_timer.notify_one();
        }
    }

    /// The deadlines pushed since the last call.
    pub fn take_pushed(&self) -> Vec<Deadline> {
        std::mem::take(&mut *self.pushed())
    }

    /// An operator moved deadlines: the timer reads its window again.
    pub fn timers_changed(&self) {
        self.timers_changed.store(true, Ordering::Relaxed);
        self.wake_timer.notify_one();
    }

    fn pushed(&self) -> MutexGuard<'_, Vec<Deadline>> {
        // A poisoned lock only means a panic elsewhere while pushing; the Vec is fine.
        self.pushed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `{hostname}-{pid}-{random}`: unique among coordinators, readable in SQL.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..6])
}

/// The registered agents, cached: every message's sender is checked against them, and a
/// clock's owner is the sole agent of its role. Reloaded when another process registers
/// an agent (NOTIFY `coordinator_agents`), when this one does, and at least every
/// minute; a sender the cache does not hold is looked up in the database by its batch.
#[derive(Debug)]
pub struct AgentDirectory {
    /// A std lock, not a tokio one: nothing awaits while it is held.
    snapshot: RwLock<Arc<Agents>>,
    stale: AtomicBool,
    loaded_at: Mutex<Option<Instant>>,
}

impl Default for AgentDirectory {
    fn default() -> Self {
        AgentDirectory {
            snapshot: RwLock::new(Arc::new(Agents::default())),
            stale: AtomicBool::new(true),
            loaded_at: Mutex::new(None),
        }
    }
}

impl AgentDirectory {
    const MAX_AGE: Duration = Duration::from_secs(60);

    pub fn snapshot(&self) -> Arc<Agents> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_stale(&self, now: Instant) -> bool {
        self.stale.load(Ordering::Relaxed)
            || self
                .loaded_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|at| now.duration_since(at) > Self::MAX_AGE)
    }

    /// Marks the cache for reloading before the next batch.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    pub fn replace(&self, agents: Agents, now: Instant) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(agents);
        *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        self.stale.store(false, Ordering::Relaxed);
    }

    /// Adds agents a batch found or registered.
    pub fn learn(&self, rows: &[(String, String)]) {
        if rows.is_empty() {
            return;
        }
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Agents::clone(&guard);
        for (id, ty) in rows {
            next.insert(id.clone(), ty.clone());
        }
        *guard = Arc::new(next);
    }
}

/// Outbox ids the broker confirmed and not yet marked sent. Marking them one
/// statement at a time per publisher would cost a commit per publish round; they are
/// marked together instead ([`crate::amqp::publisher::Settler`]). Until then they stay
/// leased, so the relay does not send them again unless the process dies first.
#[derive(Debug, Default)]
pub struct Confirmed {
    /// A std mutex: nothing awaits while it is held.
    ids: Mutex<Vec<i64>>,
    /// Signalled when many are waiting.
    pub wake: Notify,
}

impl Confirmed {
    const MANY: usize = 5000;

    pub fn add(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut held = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        held.extend_from_slice(ids);
        if held.len() >= Self::MANY {
            self.wake.notify_one();
        }
    }

    pub fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a circuit breaker guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    Database,
    Publishing,
}

impl Guarded {
    pub const ALL: [Guarded; 2] = [Guarded::Database, Guarded::Publishing];

    pub fn as_str(self) -> &'static str {
        match self {
            Guarded::Database => "database",
            Guarded::Publishing => "publishing",
        }
    }
}

/// The service's circuit breakers ([`crate::breaker`]) on the real clock; every change
/// is reflected in `coordinator_circuit_breaker_state`.
pub struct Breakers {
    database: Mutex<Breaker>,
    publishing: Mutex<Breaker>,
    /// `coordinator_circuit_breaker_state`.
    gauge: IntGaugeVec,
}

impl Breakers {
    fn new(settings: crate::breaker::BreakerSettings, metrics: &Metrics) -> Breakers {
        Breakers {
            database: Mutex::new(Breaker::new(settings)),
            publishing: Mutex::new(Breaker::new(settings)),
            gauge: metrics.breaker_state.clone(),
        }
    }

    /// The guarded work went through.
    pub fn succeeded(&self, which: Guarded) {
        self.record(which, true);
    }

    /// The guarded work failed.
    pub fn failed(&self, which: Guarded) {
        self.record(which, false);
    }

    fn show(&self, which: Guarded, state: BreakerState) {
        self.gauge
            .with_label_values(&[which.as_str()])
            .set(state.gauge());
    }

    fn lock(&self, which: Guarded) -> MutexGuard<'_, Breaker> {
        let m = match which {
            Guarded::Database => &self.database,
            Guarded::Publishing => &self.publishing,
        };
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, which: Guarded, ok: bool) {
        let now = Instant::now();
        let mut b = self.lock(which);
        let before = b.state(now);
        if ok {
            b.success(now);
        } else {
            b.failure(now);
        }
        let after = b.state(now);
        drop(b);
        if after != before {
            match after {
                BreakerState::Open => tracing::error!(breaker = which.as_str(), "circuit breaker opened: deliveries wait on their queues until it lets work through again"),
                BreakerState::Closed => tracing::info!(breaker = which.as_str(), "circuit breaker closed"),
                BreakerState::HalfOpen => {}
            }
        }
        self.show(which, after);
    }

    /// The state of each breaker now.
    pub fn states(&self) -> Vec<(Guarded, BreakerState)> {
        let now = Instant::now();
        Guarded::ALL
            .iter()
            .map(|&g| {
                let s = self.lock(g).state(now);
                self.show(g, s);
                (g, s)
            })
            .collect()
    }

    /// How long until every breaker lets work through, and the one that holds it longest;
    /// `None` when work may go now.
    pub fn wait(&self) -> Option<(Guarded, Duration)> {
        let now = Instant::now();
        Guarded::ALL
            .iter()
            .filter_map(|&g| self.lock(g).wait(now).map(|d| (g, d)))
            .max_by_key(|(_, d)| *d)
    }
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Status {
    pub migrated: AtomicBool,
    pub broker_connected: AtomicBool,
    pub topology_declared: AtomicBool,
    pub consuming: AtomicBool,
}

impl Status {
    pub fn set(flag: &AtomicBool, v: bool) {
        flag.store(v, Ordering::Relaxed);
    }
    pub fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
    pub fn broker_lost(&self) {
        Status::set(&self.broker_connected, false);
        Status::set(&self.consuming, false);
    }
}

/// The stages of `coordinator_stage_seconds`, in the order a message goes through them:
/// from its sender until its partition takes it (the broker's hop in, and the wait
/// behind the partition's batch before), admitted (parsing, identity, signature),
/// waiting for a turn, the batch's transaction (a connection and BEGIN, the claim, the
/// reads, deciding in memory, the write, COMMIT), then each message it sent: waiting
/// for the publisher, the broker's confirm.
pub const STAGES: [&str; 11] = [
    "broker_in",
    "admit",
    "turn",
    "begin",
    "claim",
    "read",
    "decide",
    "write",
    "commit",
    "publish",
    "confirm",
];

/// The service's Prometheus metrics (served at `/metrics`).
pub struct Metrics {
    pub registry: Registry,
    /// Every metric's name, whether or not it has a series yet (docs/metrics.md must
    /// list each).
    pub names: Vec<String>,
    pub messages: IntCounterVec,
    /// Inbound messages by type (a catalogue type; `unknown` when admission refused
    /// the delivery before its type could be trusted) and outcome.
    pub messages_by_type: IntCounterVec,
    pub rejections: IntCounterVec,
    pub transitions: IntCounterVec,
    pub batch_seconds: Histogram,
    /// A batch's first delivery, received → the batch starts (waiting for a turn).
    pub batch_wait_seconds: Histogram,
    /// A batch committed → its messages handed to the broker (waiting for the publisher).
    pub publish_wait_seconds: Histogram,
    /// Each stage a message goes through, by stage ([`STAGES`]).
    pub stage_seconds: HistogramVec,
    /// Its series, one per stage in [`STAGES`]' order, resolved once: observed
    /// several times a message.
    stages: Vec<Histogram>,
    pub batch_size: Histogram,
    /// Statements run by batches (divide by the batch count for statements per batch).
    pub batch_statements: IntCounter,
    /// Messages set aside as processing_failed.
    pub set_aside: IntCounter,
    pub bad_signatures: IntCounter,
    /// Messages a rate limit held back, by the sender's role.
    pub rate_limited: IntCounterVec,
    /// Held-back messages applied once their sender had room again.
    pub released: IntCounter,
    pub published: IntCounter,
    pub returned: IntCounter,
    /// Outbox messages given up (no queue took them for outbox.undeliverable_after).
    pub undeliverable: IntCounter,
    pub outbox_pending: IntGauge,
    pub broker_connects: IntCounter,
    pub timer_lateness: HistogramVec,
    /// Clocks that warned their owner and that were breached, by clock and owner role.
    pub sla_warnings: IntCounterVec,
    pub sla_breaches: IntCounterVec,
    /// A causing message's timestamp → its task's confirm, by workflow kind.
    pub handoff_latency: HistogramVec,
    /// Tasks sent to a role with no agent to take them, by role.
    pub tasks_unattended: IntCounterVec,
    /// Every deadline this process knows of that was due before this time (Unix
    /// seconds) has been fired: how far the timer has caught up.
    pub timer_caught_up: Gauge,
    pub breaker_state: IntGaugeVec,
    /// Inbox partitions this process holds and consumes.
    pub partitions_held: IntGauge,
    /// The seeds' own: messages by sender role and destination (agents' messages to
    /// the coordinator, the coordinator's to roles), the time a message took to apply,
    /// and this process's open connections by protocol.
    pub messages_sent: IntCounterVec,
    pub message_duration: Histogram,
    pub active_connections: IntGaugeVec,
    /// What the database holds, read by `service::gauges`.
    pub workflows: IntGaugeVec,
    pub escalations_open: IntGaugeVec,
    pub dead_letters_unresolved: IntGaugeVec,
    pub agents: IntGaugeVec,
    pub outbox_oldest_age: Gauge,
}

impl Metrics {
    /// Observes `seconds` of `stage` once for each of `n` messages.
    pub fn stage(&self, stage: &str, seconds: f64, n: usize) {
        let Some(h) = STAGES
            .iter()
            .position(|s| *s == stage)
            .and_then(|i| self.stages.get(i))
        else {
            return;
        };
        for _ in 0..n {
            h.observe(seconds.max(0.0));
        }
    }

    pub fn new() -> Metrics {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new("coordinator_messages_total", "Inbound messages by outcome"),
            &["outcome"],
        );
        let messages_by_type = IntCounterVec::new(
            Opts::new(
                "coordinator_messages_by_type_total",
                "Inbound messages by message type (unknown: refused at admission) and outcome",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "coordinator_rejections_total",
                "Rejected inbound messages by reason",
            ),
            &["reason"],
        );
        let transitions = IntCounterVec::new(
            Opts::new(
                "coordinator_workflow_transitions_total",
                "Workflow state transitions",
            ),
            &["from", "to"],
        );
        let batch_seconds = Histogram::with_opts(HistogramOpts::new(
            "coordinator_batch_seconds",
            "Time to apply and commit one batch of inbound messages",
        ));
        let batch_wait_seconds = Histogram::with_opts(HistogramOpts::new(
            "coordinator_batch_wait_seconds",
            "Time a batch's first delivery waited for a database turn",
        ));
        let publish_wait_seconds = Histogram::with_opts(HistogramOpts::new(
            "coordinator_publish_wait_seconds",
            "Time from a batch's commit until its messages were handed to the broker",
        ));
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "coordinator_stage_seconds",
                "Time each message spends in each stage, by stage: broker_in (the sender's timestamp until taken from the consumer), admit, turn, begin, claim, read, decide, write, commit (an inbound message's share of its batch's), publish and confirm (per message sent)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.025, 0.04,
                0.06, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["stage"],
        )
        .expect("valid metric");
        let stages = STAGES
            .iter()
            .map(|stage| stage_seconds.with_label_values(&[stage]))
            .collect();
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("coordinator_batch_size", "Inbound messages per transaction")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        );
        let batch_statements = IntCounter::new(
            "coordinator_batch_statements_total",
            "SQL statements run by inbound batches",
        );
        let set_aside = IntCounter::new(
            "coordinator_set_aside_total",
            "Messages the database refused on every attempt, set aside as processing_failed",
        );
        let bad_signatures = IntCounter::new(
            "coordinator_bad_signatures_total",
            "Messages applied although their signature was missing or bad (security.signatures = verify)",
        );
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "coordinator_rate_limited_total",
                "Messages held back because their sender was over its rate limit (security.rate_limits), by the sender's role",
            ),
            &["role"],
        );
        let released = IntCounter::new(
            "coordinator_rate_limited_released_total",
            "Held-back messages applied once their sender had room again",
        );
        let published = IntCounter::new(
            "coordinator_outbox_published_total",
            "Outbox messages confirmed by the broker",
        );
        let returned = IntCounter::new(
            "coordinator_outbox_returned_total",
            "Outbox messages returned as unroutable (kept and retried)",
        );
        let undeliverable = IntCounter::new(
            "coordinator_outbox_undeliverable_total",
            "Outbox messages given up after outbox.undeliverable_after (raised once to on-call)",
        );
        let outbox_pending = IntGauge::new(
            "coordinator_outbox_pending",
            "Outbox messages not yet confirmed",
        );
        let broker_connects = IntCounter::new(
            "coordinator_broker_connects_total",
            "Connections opened to RabbitMQ",
        );
        let timer_lateness = HistogramVec::new(
            HistogramOpts::new(
                "coordinator_sla_timer_lateness_seconds",
                "Fire time minus deadline, by kind (breach, warning, ladder)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 60.0, 600.0,
            ]),
            &["kind"],
        );
        let sla_counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["clock", "role"]).expect("valid metric")
        };
        let sla_warnings = sla_counter(
            "coordinator_sla_warnings_total",
            "SLA clocks that warned their owner, by clock and the owner's role",
        );
        let sla_breaches = sla_counter(
            "coordinator_sla_breaches_total",
            "SLA clocks breached, by clock and the owner's role",
        );
        let handoff_latency = HistogramVec::new(
            HistogramOpts::new(
                "coordinator_handoff_latency_seconds",
                "From the timestamp of the message that moved a workflow to the broker's confirm of the task it sent the next role, by workflow kind",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let tasks_unattended = IntCounterVec::new(
            Opts::new(
                "coordinator_tasks_unattended_total",
                "Tasks sent to a role none of whose agents is live or yet unheard-of, by role",
            ),
            &["role"],
        )
        .expect("valid metric");
        let timer_caught_up = Gauge::new(
            "coordinator_timer_caught_up_timestamp_seconds",
            "Unix time before which every deadline this process holds has been fired",
        );
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "coordinator_circuit_breaker_state",
                "Circuit breaker state by breaker (database, publishing): 0 closed, 1 half-open, 2 open",
            ),
            &["breaker"],
        );
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let partitions_held = IntGauge::new(
            "coordinator_partitions_held",
            "Inbox partitions this process holds a lease on and consumes",
        )
        .expect("valid metric");
        let workflows = gauge_vec(
            "coordinator_workflows",
            "Live (not completed) workflows and incidents by kind and state, from the database",
            &["kind", "state"],
        );
        let escalations_open = gauge_vec(
            "coordinator_escalations_open",
            "Escalations nobody has acknowledged, by level, from the database",
            &["level"],
        );
        let dead_letters_unresolved = gauge_vec(
            "coordinator_dead_letters_unresolved",
            "Dead letters neither replayed nor resolved, by reason, from the database",
            &["reason"],
        );
        let agents = gauge_vec(
            "coordinator_agents",
            "Registered agents by health (live, stale: no heartbeat for heartbeats.missed intervals, unknown: none yet), from the database",
            &["health"],
        );
        let messages_sent = IntCounterVec::new(
            Opts::new(
                "agent_messages_sent_total",
                "Total sent messages: agents' to the coordinator (agent_type = the sender's role, destination = coordinator) and the coordinator's (agent_type = coordinator, destination = the role of a task, or command, escalation)",
            ),
            &["agent_type", "destination"],
        )
        .expect("valid metric");
        let message_duration = Histogram::with_opts(HistogramOpts::new(
            "agent_message_duration_seconds",
            "Message processing time: applying and committing the batch an inbound message was in, once per message",
        ))
        .expect("valid metric");
        let active_connections = gauge_vec(
            "agent_active_connections",
            "Active connections of this process by protocol (amqp: to RabbitMQ, postgresql: the pool's)",
            &["protocol"],
        );
        let outbox_oldest_age = Gauge::new(
            "coordinator_outbox_oldest_age_seconds",
            "Age of the oldest unsent outbox row (0 when none), from the database",
        )
        .expect("valid metric");
        // The names and label sets above are fixed and valid, so construction and
        // registration cannot fail; a failure here is a programming error caught by tests.
        let mut m = Metrics {
            messages: messages.expect("valid metric"),
            messages_by_type,
            rejections: rejections.expect("valid metric"),
            transitions: transitions.expect("valid metric"),
            batch_seconds: batch_seconds.expect("valid metric"),
            batch_wait_seconds: batch_wait_seconds.expect("valid metric"),
            publish_wait_seconds: publish_wait_seconds.expect("valid metric"),
            stage_seconds,
            stages,
            batch_size: batch_size.expect("valid metric"),
            batch_statements: batch_statements.expect("valid metric"),
            set_aside: set_aside.expect("valid metric"),
            bad_signatures: bad_signatures.expect("valid metric"),
            rate_limited: rate_limited.expect("valid metric"),
            released: released.expect("valid metric"),
            published: published.expect("valid metric"),
            returned: returned.expect("valid metric"),
            undeliverable: undeliverable.expect("valid metric"),
            outbox_pending: outbox_pending.expect("valid metric"),
            broker_connects: broker_connects.expect("valid metric"),
            timer_lateness: timer_lateness.expect("valid metric"),
            sla_warnings,
            sla_breaches,
            handoff_latency,
            tasks_unattended,
            timer_caught_up: timer_caught_up.expect("valid metric"),
            breaker_state: breaker_state.expect("valid metric"),
            partitions_held,
            messages_sent,
            message_duration,
            active_connections,
            workflows,
            escalations_open,
            dead_letters_unresolved,
            agents,
            outbox_oldest_age,
            registry,
            names: Vec::new(),
        };
        for c in [
            Box::new(m.messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.messages_by_type.clone()),
            Box::new(m.rejections.clone()),
            Box::new(m.transitions.clone()),
            Box::new(m.batch_seconds.clone()),
            Box::new(m.batch_wait_seconds.clone()),
            Box::new(m.publish_wait_seconds.clone()),
            Box::new(m.stage_seconds.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_statements.clone()),
            Box::new(m.set_aside.clone()),
            Box::new(m.bad_signatures.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.released.clone()),
            Box::new(m.published.clone()),
            Box::new(m.returned.clone()),
            Box::new(m.undeliverable.clone()),
            Box::new(m.outbox_pending.clone()),
            Box::new(m.broker_connects.clone()),
            Box::new(m.timer_lateness.clone()),
            Box::new(m.sla_warnings.clone()),
            Box::new(m.sla_breaches.clone()),
            Box::new(m.handoff_latency.clone()),
            Box::new(m.tasks_unattended.clone()),
            Box::new(m.timer_caught_up.clone()),
            Box::new(m.breaker_state.clone()),
            Box::new(m.partitions_held.clone()),
            Box::new(m.messages_sent.clone()),
            Box::new(m.message_duration.clone()),
            Box::new(m.active_connections.clone()),
            Box::new(m.workflows.clone()),
            Box::new(m.escalations_open.clone()),
            Box::new(m.dead_letters_unresolved.clone()),
            Box::new(m.agents.clone()),
            Box::new(m.outbox_oldest_age.clone()),
        ] {
            m.names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(c).expect("metric registered once");
        }
        // Present (closed, or at zero) from the start, not only after a first change, so
        // that rate() and alerts see every series from the first scrape.
        for g in Guarded::ALL {
            m.set_breaker(g, BreakerState::Closed);
        }
        for outcome in crate::engine::Outcome::LABELS {
            m.messages.with_label_values(&[outcome]);
        }
        for reason in protocol::reject::Reason::ALL {
            m.rejections.with_label_values(&[reason.as_str()]);
        }
        for kind in [
            DeadlineKind::Breach,
            DeadlineKind::Warning,
            DeadlineKind::Ladder,
        ] {
            m.timer_lateness.with_label_values(&[kind.as_str()]);
        }
        m
    }

    pub fn set_breaker(&self, which: Guarded, state: BreakerState) {
        self.breaker_state
            .with_label_values(&[which.as_str()])
            .set(state.gauge());
    }

    /// The database's state as `db::read::gauges` read it. Each gauge family is
    /// replaced whole, so a kind, level or reason that is gone leaves no series behind.
    pub fn set_state(&self, state: &crate::db::read::State) {
        let replace = |vec: &IntGaugeVec, rows: &[(Vec<String>, i64)]| {
            vec.reset();
            for (labels, n) in rows {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                vec.with_label_values(&labels).set(*n);
            }
        };
        replace(&self.workflows, &state.workflows);
        replace(&self.escalations_open, &state.escalations_open);
        replace(
            &self.dead_letters_unresolved,
            &state.dead_letters_unresolved,
        );
        replace(&self.agents, &state.agents);
        self.outbox_oldest_age.set(state.outbox_oldest_age_seconds);
    }

    /// Clocks that warned and that were breached, each (clock, owner role).
    pub fn count_sla(&self, warned: &[(String, String)], breached: &[(String, String)]) {
        for (vec, fired) in [(&self.sla_warnings, warned), (&self.sla_breaches, breached)] {
            for (clock, role) in fired {
                vec.with_label_values(&[clock, role]).inc();
            }
        }
    }

    /// What the broker confirmed, counted by destination.
    pub fn count_sent(&self, p: &crate::amqp::publisher::Published) {
        let destinations = p
            .routing_keys
            .iter()
            .map(|k| crate::amqp::publisher::destination(k));
        for (destination, n) in tally(destinations) {
            self.messages_sent
                .with_label_values(&["coordinator", destination])
                .inc_by(n);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// How many times each label occurs, in order of first occurrence: a labelled counter
/// is then incremented once a batch per label, not once a message.
pub fn tally<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for label in labels {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A role's unattended tasks are logged at most this often (each is counted).
const UNATTENDED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Which roles have no agent to take a task, for the warning: those whose registered
/// agents the gauges last found all stale, and those with no agent at all (neither at
/// the gauges' last read nor in the agent cache, which learns agents as they send), and
/// when each was last logged.
#[derive(Default)]
pub struct Unattended {
    /// Role → has an agent live or not heard from yet; none before the first read.
    roles: std::sync::RwLock<Option<std::collections::HashMap<String, bool>>>,
    warned: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Unattended {
    /// The roles with registered agents, and whether one can take a task.
    pub fn set_roles(&self, roles: impl IntoIterator<Item = (String, bool)>) {
        let roles = roles.into_iter().collect();
        *self.roles.write().unwrap_or_else(|e| e.into_inner()) = Some(roles);
    }

    /// Counts, and logs (once a minute a role), the tasks among `queued` sent to a role
    /// with no agent to take them. Nothing until the roles have been read once.
    pub fn check(
        &self,
        queued: &[crate::engine::rows::Queued],
        agents: &crate::engine::Agents,
        metrics: &Metrics,
    ) {
        let roles = self.roles.read().unwrap_or_else(|e| e.into_inner());
        let Some(roles) = roles.as_ref() else {
            return;
        };
        for q in queued {
            let Some(role) = q.message.routing_key.strip_prefix("task.") else {
                continue;
            };
            let unattended = match roles.get(role) {
                Some(attended) => !attended,
                None => !agents.has_role(role),
            };
            if !unattended {
                continue;
            }
            metrics.tasks_unattended.with_label_values(&[role]).inc();
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            let due = warned
                .get(role)
                .is_none_or(|at| at.elapsed() >= UNATTENDED_WARN_EVERY);
            if due {
                warned.insert(role.to_string(), std::time::Instant::now());
                tracing::warn!(
                    role,
                    message_type = %q.message.message_type,
                    workflow_id = %q.message.correlation_id,
                    "a task was sent to a role with no live agent: it waits on the role's queue until one comes (once a minute a role; coordinator_tasks_unattended_total counts each)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_state_replaces_the_last_so_what_is_gone_leaves_no_series() {
        let m = super::Metrics::new();
        let rows = |kind: &str, n: i64| vec![(vec![kind.to_string(), "testing".to_string()], n)];
        m.set_state(&crate::db::read::State {
            workflows: rows("feature_delivery", 3),
            outbox_oldest_age_seconds: 12.5,
            ..Default::default()
        });
        let text = m.render();
        assert!(
            text.contains("coordinator_workflows{kind=\"feature_delivery\",state=\"testing\"} 3")
                && text.contains("coordinator_outbox_oldest_age_seconds 12.5"),
            "{text}"
        );
        m.set_state(&crate::db::read::State {
            workflows: rows("code_review", 1),
            ..Default::default()
        });
        let text = m.render();
        assert!(!text.contains("feature_delivery"), "{text}");
        assert!(text.contains("kind=\"code_review\""), "{text}");
    }

    #[test]
    fn metrics_register_and_render() {
        let m = super::Metrics::new();
        m.messages.with_label_values(&["accepted"]).inc();
        let text = m.render();
        assert!(
            text.contains("coordinator_messages_total{outcome=\"accepted\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn labelled_series_are_present_at_zero_from_the_start() {
        let text = super::Metrics::new().render();
        for line in [
            "coordinator_messages_total{outcome=\"duplicate\"} 0",
            "coordinator_rejections_total{reason=\"malformed_json\"} 0",
            "coordinator_rejections_total{reason=\"processing_failed\"} 0",
            "coordinator_sla_timer_lateness_seconds_count{kind=\"ladder\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
