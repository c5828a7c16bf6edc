//! Typed configuration: `config/default.toml` → `config/{COORDINATOR_ENV}.toml` →
//! environment variables `COORDINATOR__SECTION__KEY`. The shipped files are compiled
//! in, so the binary runs from any directory; files in the configuration folder layer
//! over them. Loaded once by `main` (or by a test) and handed to
//! [`crate::app::App::build`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::clocks;
use crate::domain::definition::{self, DefinitionError, Definitions};
use crate::domain::escalation::{Ladder, Ladders};
use crate::domain::sla::{ClockDurations, Severity};
use crate::engine::{Processor, Security, SignatureMode};
pub use crate::secret::{Secret, SecretUrl};
use protocol::catalog::{Catalog, RoleSpec};
use protocol::envelope::Window;
use protocol::signing::Signer;

/// Environment variable naming the environment file to layer on the defaults.
pub const ENV_VAR: &str = "COORDINATOR_ENV";
/// Environment variable naming the configuration folder (default `config`).
pub const DIR_VAR: &str = "COORDINATOR_CONFIG_DIR";

/// The shipped configuration, compiled in.
const SHIPPED_DEFAULT: &str = include_str!("../../../config/default.toml");
const SHIPPED_ENVIRONMENTS: &[(&str, &str)] = &[
    ("test", include_str!("../../../config/test.toml")),
    (
        "production",
        include_str!("../../../config/production.toml"),
    ),
];

/// The shipped workflow definitions, compiled in (file name, text); a file of the same
/// name in the configuration folder's `workflows/` replaces one (docs/workflows.md).
pub const SHIPPED_WORKFLOWS: &[(&str, &str)] = &[
    (
        "feature_delivery.toml",
        include_str!("../../../config/workflows/feature_delivery.toml"),
    ),
    (
        "design_handoff.toml",
        include_str!("../../../config/workflows/design_handoff.toml"),
    ),
    (
        "brand_handoff.toml",
        include_str!("../../../config/workflows/brand_handoff.toml"),
    ),
    (
        "launch_handoff.toml",
        include_str!("../../../config/workflows/launch_handoff.toml"),
    ),
    (
        "insights_handoff.toml",
        include_str!("../../../config/workflows/insights_handoff.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration folder {0} ({DIR_VAR}) is not a folder")]
    NoFolder(PathBuf),
    #[error(
        "{ENV_VAR}={env}: there is no {env}.toml in {} and none is built in (built in: test, production)",
        dir.display()
    )]
    NoEnvironment { env: String, dir: PathBuf },
    #[error("configuration could not be read: {0}{hint}", hint = load_hint(.0))]
    Load(#[from] config::ConfigError),
    #[error("configuration value {key} is invalid: {problem}")]
    Invalid { key: String, problem: String },
    #[error("{} workflow definition error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Workflows(Vec<DefinitionError>),
    #[error("workflow definitions folder {}: {problem}", dir.display())]
    WorkflowsFolder { dir: PathBuf, problem: String },
    #[error("{} configuration values are invalid:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<SettingsError>),
}

impl SettingsError {
    /// `Ok` when there is no problem, the one, or all of them together.
    pub fn all(mut problems: Vec<SettingsError>) -> Result<(), SettingsError> {
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(SettingsError::Several(problems)),
        }
    }
}

/// What to write instead, for the mistakes a bare error leaves a newcomer guessing at.
fn load_hint(e: &config::ConfigError) -> &'static str {
    if e.to_string().contains("expected a duration") {
        " (a duration needs its unit: \"5s\", \"250ms\", \"2m\", \"1h 30m\")"
    } else {
        ""
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub registration: RegistrationSettings,
    pub sla: SlaSettings,
    pub outbox: OutboxSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub heartbeats: HeartbeatSettings,
    pub traces: TraceSettings,
    pub messages: MessageSettings,
    pub escalation: EscalationSettings,
    pub timers: TimerSettings,
    pub retention: RetentionSettings,
    pub inbox: InboxSettings,
    pub limits: LimitSettings,
    /// The seed's named retry policies; `crate::retry` says which loop uses which.
    pub retry_policies: crate::retry::RetryPolicies,
    pub dead_letters: DeadLetterSettings,
    pub shutdown: ShutdownSettings,
    pub security: SecuritySettings,
    /// The breakers around PostgreSQL and around publishing.
    pub circuit_breaker: crate::breaker::BreakerSettings,
    #[serde(default)]
    pub agents: Vec<StaticAgent>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSpec>,
    /// The workflow definitions: the shipped ones and the configuration folder's
    /// `workflows/*.toml` (not a configuration key; read beside the files).
    #[serde(skip)]
    pub workflows: Definitions,
    /// The profile read over the defaults (`COORDINATOR_ENV`), if any.
    #[serde(skip)]
    pub profile: Option<String>,
}

/// Reads the workflow definitions: the shipped ones, with `dir`'s `*.toml` files
/// replacing those of the same name and adding the others (`dir` may be missing), each
/// checked against `catalog` and all of them together.
pub fn load_workflows(dir: &Path, catalog: &Catalog) -> Result<Definitions, SettingsError> {
    let mut files: BTreeMap<String, (String, String)> = SHIPPED_WORKFLOWS
        .iter()
        .map(|(name, text)| {
            (
                name.to_string(),
                (format!("(shipped) workflows/{name}"), text.to_string()),
            )
        })
        .collect();
    if dir.is_dir() {
        let folder = |problem: String| SettingsError::WorkflowsFolder {
            dir: dir.to_path_buf(),
            problem,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| folder(e.to_string()))?;
        for entry in entries {
            let path = entry.map_err(|e| folder(e.to_string()))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".toml") {
                continue;
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| folder(format!("{name}: {e}")))?;
            files.insert(name.to_string(), (path.display().to_string(), text));
        }
    }
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files.values() {
        match definition::parse(file, text, catalog) {
            Ok(d) => defs.push(d),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(definition::check_together(&defs));
    if errors.is_empty() {
        Ok(Definitions::new(defs))
    } else {
        Err(SettingsError::Workflows(errors))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` for TLS that checks the server.
    pub url: SecretUrl,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// The service's sessions: a statement running longer is cancelled (0 = no limit).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// The service's sessions: a wait for a row or table lock longer than this fails.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// The service's sessions: a transaction left idle longer than this is ended by
    /// PostgreSQL (its session closed).
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    /// Other nodes of the same cluster (same vhost and credentials), tried in order when
    /// `url` cannot be reached: a coordinator whose node stops reconnects to another.
    #[serde(default)]
    pub fallback_urls: Vec<SecretUrl>,
    /// The CA certificates (PEM) an amqps:// broker's certificate is checked against;
    /// none: the system's.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    pub queue_type: QueueType,
    /// The longest a publisher waits for the broker to confirm a message before it gives
    /// its channel up (the message is sent again after its lease).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Most messages an agent's events queue holds; past it the oldest are dropped
    /// (`x-max-length`, `x-overflow: drop-head`), so an agent that never reads its
    /// events cannot grow the queue without end. 0: unbounded.
    pub events_max_length: u32,
    /// RabbitMQ's management API, where `agent add --credentials` and `agent remove`
    /// create and delete agents' broker users (as the user of `url`, which must be an
    /// administrator).
    pub management_url: SecretUrl,
}

impl AmqpSettings {
    /// The broker user of `url` (`guest` when the URL names none, as RabbitMQ's
    /// clients assume): the coordinator's own identity on the broker.
    pub fn user(&self) -> String {
        broker_user(self.url.expose())
    }

    /// `url` as another broker user: how an agent connected as its own user reaches
    /// the same node and vhost.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        with_login(self.url.expose(), user, password)
    }

    /// The password of `url` (`guest` when it names no user, as RabbitMQ's clients
    /// assume).
    pub fn password(&self) -> String {
        authority(self.url.expose())
            .and_then(|a| a.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map_or_else(|| "guest".to_string(), |(_, p)| percent_decode(p))
    }

    /// The vhost of `url`: its path, percent-decoded (`/` when it has none).
    pub fn vhost(&self) -> String {
        let url = self.url.expose();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                percent_decode(path.split(['?', '#']).next().unwrap_or(""))
            }
            _ => "/".to_string(),
        }
    }

    /// `url`, then each of `fallback_urls`: the order connections are tried in.
    pub fn urls(&self) -> Vec<&str> {
        std::iter::once(self.url.expose())
            .chain(self.fallback_urls.iter().map(SecretUrl::expose))
            .collect()
    }
}

/// The user named in an AMQP URI's authority (percent-decoded), else `guest`.
fn broker_user(url: &str) -> String {
    let user = authority(url)
        .unwrap_or("")
        .rsplit_once('@')
        .map(|(userinfo, _)| userinfo.split(':').next().unwrap_or(""))
        .filter(|u| !u.is_empty());
    user.map_or_else(|| "guest".to_string(), percent_decode)
}

/// The part of a URL between `://` and the path.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next()
}

/// `url` with another broker user's login in it (an agent's own user, say).
pub fn with_login(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let (auth, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!(
        "{scheme}://{}:{}@{host}{path}",
        percent_encode(user),
        percent_encode(password)
    )
}

/// Every byte but RFC 3986's unreserved characters as `%XX`: a user name or vhost as one
/// segment of a URL or a path.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who may send what, and how fresh it must be (docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// A message whose `header.timestamp` is older than this is refused (`stale`).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A message whose `header.timestamp` is further ahead of the coordinator's clock
    /// than this is refused (`from_the_future`).
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
    /// The AMQP `user_id` property must be the envelope's `source.agent_id`
    /// (`unauthenticated` otherwise). Needs one broker user per agent.
    pub authenticate_senders: bool,
    /// Roles that may acknowledge an escalation whatever level its chain has reached
    /// (besides the role that level pages).
    pub escalation_acknowledgers: Vec<String>,
    /// Roles that may resolve an emergency (`emergency_resolved`).
    pub emergency_resolvers: Vec<String>,
    /// Every message applied or refused and every operator command appends a row to
    /// the hash-chained `audit_log` (`coordinator audit verify`).
    pub audit: bool,
    /// How often the chains' heads are recorded in the anchor chain.
    #[serde(with = "humantime_serde")]
    pub audit_anchor_interval: Duration,
    /// Senders' signatures: `off`, `verify` (a bad or missing one is logged and counted,
    /// the message applied) or `require` (refused: `bad_signature`,
    /// `missing_signature`).
    pub signatures: SignatureMode,
    /// The coordinator's own Ed25519 private key (base64 of its 32-byte seed;
    /// `coordinator key generate` makes one), from the environment
    /// (`COORDINATOR__SECURITY__SIGNING_KEY`), never a file in a repository. With it,
    /// everything the coordinator sends is signed; required when `signatures` is not
    /// `off`.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// Public keys (base64) of the coordinator's earlier signing keys, still listed at
    /// `GET /keys` so that agents trust messages signed before a rotation (and those
    /// sent by coordinators not yet restarted with the new key).
    #[serde(default)]
    pub previous_public_keys: Vec<String>,
    /// Connect to RabbitMQ and PostgreSQL without TLS. Off in production, where
    /// `amqp://` and a database URL without `sslmode=require`/`verify-ca`/`verify-full`
    /// are refused ([`Settings::refuse_plaintext`]).
    pub allow_plaintext: bool,
    /// Token buckets per sending agent (docs/architecture.md, "Rate limits").
    pub rate_limits: RateLimitSettings,
    /// Payload fields stored encrypted.
    pub encryption: EncryptionSettings,
}

/// Payload fields stored encrypted with AES-256-GCM (docs/security.md, "Encrypted
/// fields").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Paths of the fields to seal, each `payload.data.` and then member names joined
    /// by dots (`payload.data.customer.email`).
    pub fields: Vec<String>,
    /// The key that seals (base64 of 32 bytes; `coordinator key generate-encryption`),
    /// from `COORDINATOR__SECURITY__ENCRYPTION__KEY` only. Required by `serve` when
    /// `fields` names any; the CLI shows sealed fields opened only when it has it.
    #[serde(default)]
    pub key: Option<Secret>,
    /// Earlier keys, which still open what they sealed
    /// (`COORDINATOR__SECURITY__ENCRYPTION__PREVIOUS_KEYS="k1,k2"`).
    #[serde(default)]
    pub previous_keys: Vec<Secret>,
}

/// How fast each agent may send. Over its limit an agent's further messages are
/// delayed (kept in `deferred_messages`), not dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Messages a minute each agent may send; its bucket refills at this rate.
    pub per_minute: u32,
    /// How many an agent may send at once, with a full bucket (default: its role's
    /// messages a minute).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Per role, messages a minute instead of `per_minute` (0: that role is not
    /// limited).
    #[serde(default)]
    pub roles: BTreeMap<String, u32>,
    /// Messages of these types draw on a separate allowance: `emergency_burst` at
    /// once, refilling at that many a minute.
    pub emergency_types: Vec<String>,
    pub emergency_burst: u32,
    /// Every limited agent together, messages a minute (0: no such limit).
    /// Emergency messages do not count against it.
    pub all_per_minute: u32,
}

impl RateLimitSettings {
    /// Messages a minute for an agent of `role`; `None` when it is not limited.
    pub fn per_minute_for(&self, role: &str) -> Option<u32> {
        if !self.enabled {
            return None;
        }
        let n = self.roles.get(role).copied().unwrap_or(self.per_minute);
        (n > 0).then_some(n)
    }

    /// The burst of an agent limited to `per_minute`.
    pub fn burst_for(&self, per_minute: u32) -> u32 {
        self.burst.unwrap_or(per_minute).max(1)
    }
}

/// What becomes of dead letters nobody works.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// A dead letter neither replayed nor resolved for this long is escalated to
    /// management, once.
    #[serde(with = "humantime_serde")]
    pub escalate_after: Duration,
}

/// How long a SIGTERM may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// From the signal to exit: past it the process exits 1 and names the step it was
    /// waiting for (what it committed is safe; its unsent messages go out after restart).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The relay's last flush of the outbox, within `timeout`.
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
}

/// The coordinator's inbox: how it is consumed and applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSettings {
    /// The consistent-hash exchange that spreads agent messages over the partitions;
    /// partition `i` is the queue `{exchange}.{i}`.
    pub exchange: String,
    /// How many partitions (queues) the inbox has; see docs/scaling.md to change it.
    pub partitions: u32,
    /// How often a coordinator checks its share of the partitions (and how soon it
    /// takes over those of a coordinator that stopped).
    #[serde(with = "humantime_serde")]
    pub rebalance_interval: Duration,
    /// Batches this coordinator applies at once, whatever the partitions it holds.
    pub concurrency: usize,
    /// Unacknowledged deliveries the broker may push to a consumer at once.
    pub prefetch: u16,
    /// Most deliveries applied in one transaction.
    pub batch_size: usize,
}

/// Size limits on inbound messages (see [`protocol::envelope::Limits`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_key_bytes: usize,
    pub max_text_bytes: usize,
}

impl LimitSettings {
    pub fn envelope(&self) -> protocol::envelope::Limits {
        protocol::envelope::Limits {
            max_body_bytes: self.max_body_bytes,
            max_key_bytes: self.max_key_bytes,
            max_text_bytes: self.max_text_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: String,
    /// The token `POST /api/v1/escalations/{id}/acknowledge` needs (`Authorization:
    /// Bearer …`); none: the API is read-only. Set it from the environment
    /// (`COORDINATOR__HTTP__OPERATOR_TOKEN`), not a file.
    #[serde(default)]
    pub operator_token: Option<crate::secret::Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSettings {
    pub auto_register: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaSettings {
    pub time_scale: f64,
    pub warning_fraction: f64,
    #[serde(default)]
    pub durations: HashMap<String, humantime_serde::Serde<Duration>>,
    /// Per-clock severity (low, medium, high, critical).
    #[serde(default)]
    pub severity: HashMap<String, String>,
}

/// One escalation ladder: a level name and a wait per level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderSettings {
    pub levels: Vec<String>,
    pub waits: Vec<humantime_serde::Serde<Duration>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSettings {
    pub levels: Vec<String>,
    pub waits: Vec<humantime_serde::Serde<Duration>>,
    /// Ladders by severity (`[escalation.severity.critical]`).
    #[serde(default)]
    pub severity: HashMap<String, LadderSettings>,
    /// Ladders by clock (`[escalation.clock.testing_start]`), before severity.
    #[serde(default)]
    pub clock: HashMap<String, LadderSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSettings {
    /// Deadlines due within this much time are held in memory.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most deadlines held in memory at once (the window shrinks to fit).
    pub max_in_memory: i64,
    /// Most due deadlines fired in one transaction.
    pub batch_size: usize,
    /// Batches of due deadlines fired at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub batch_size: i64,
    /// How long a publisher holds the rows it is publishing before the relay may take
    /// them (after a crash).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often confirmed rows are marked sent (together).
    #[serde(with = "humantime_serde")]
    pub settle_interval: Duration,
    /// A message no queue took (or the broker refused) for this long after it was
    /// written is given up: marked `undeliverable`, raised once to on-call.
    #[serde(with = "humantime_serde")]
    pub undeliverable_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Sent outbox rows are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub outbox: Duration,
    /// Deduplication keys are kept this long: a message id repeated later is processed
    /// again.
    #[serde(with = "humantime_serde")]
    pub processed_messages: Duration,
    /// Replayed or resolved dead letters are deleted after this long (unresolved ones
    /// are kept).
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
    /// How often housekeeping runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
    /// How often the `activity` line (counts since the last one) is logged at info.
    #[serde(with = "humantime_serde")]
    pub activity_interval: Duration,
}

/// The gauges read from the database (`service::gauges`, docs/metrics.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// How often the database's state is read into the gauges.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often the dashboard's SLA compliance chart is read (checked at each
    /// refresh).
    #[serde(with = "humantime_serde")]
    pub chart_interval: Duration,
}

/// What the coordinator expects of agents' heartbeats (`service::agent_health`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// How often agents are expected to send one.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Intervals without one after which an agent is `stale` (and its role's owner told).
    pub missed: u32,
}

impl HeartbeatSettings {
    /// How long an agent may be silent before it is stale.
    pub fn stale_after(&self) -> Duration {
        crate::domain::agent_health::stale_after(self.interval, self.missed)
    }
}

/// Where the spans of a workflow's trace go (docs/observability.md, "Traces"). The
/// trace context every message carries does not depend on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP traces endpoint, e.g.
    /// `http://127.0.0.1:4318/v1/traces`; empty: spans are not exported.
    pub otlp_endpoint: String,
    /// The longest one export to the collector may take.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSettings {
    pub common: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAgent {
    pub agent_id: String,
    pub agent_type: String,
}

impl InboxSettings {
    /// The queue of partition `i`.
    pub fn queue(&self, partition: u32) -> String {
        format!("{}.{partition}", self.exchange)
    }
}

impl Settings {
    /// Loads the layered configuration from `$COORDINATOR_CONFIG_DIR` (default `config`)
    /// for `$COORDINATOR_ENV` (default none: defaults and environment variables only).
    pub fn load() -> Result<Settings, SettingsError> {
        let dir = match std::env::var_os(DIR_VAR) {
            Some(d) if !Path::new(&d).is_dir() => return Err(SettingsError::NoFolder(d.into())),
            Some(d) => PathBuf::from(d),
            None => PathBuf::from("config"),
        };
        let env = std::env::var(ENV_VAR).ok().filter(|e| !e.is_empty());
        Settings::load_from(&dir, env.as_deref())
    }

    /// The compiled-in defaults, then `dir/default.toml` if there is one, then the
    /// environment's file from `dir` (or compiled in), then environment variables.
    pub fn load_from(dir: &Path, env: Option<&str>) -> Result<Settings, SettingsError> {
        Settings::load_with(dir, env, &[])
    }

    /// As [`Settings::load_from`], then `overrides`, named as environment variables
    /// (`COORDINATOR__SECURITY__AUDIT`), over everything: what a process started with
    /// those variables would read.
    pub fn load_with(
        dir: &Path,
        env: Option<&str>,
        overrides: &[(&str, &str)],
    ) -> Result<Settings, SettingsError> {
        use config::{File, FileFormat};
        let environment = || {
            config::Environment::with_prefix("COORDINATOR")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // COORDINATOR__AMQP__FALLBACK_URLS="amqp://…,amqp://…"
                .list_separator(",")
                .with_list_parse_key("amqp.fallback_urls")
                .with_list_parse_key("security.previous_public_keys")
                .with_list_parse_key("security.encryption.previous_keys")
                .with_list_parse_key("security.encryption.fields")
        };
        let file = |name: &str| dir.join(format!("{name}.toml"));
        let mut builder =
            config::Config::builder().add_source(File::from_str(SHIPPED_DEFAULT, FileFormat::Toml));
        if file("default").is_file() {
            builder = builder.add_source(File::from(file("default")));
        }
        if let Some(env) = env {
            if file(env).is_file() {
                builder = builder.add_source(File::from(file(env)));
            } else if let Some((_, text)) = SHIPPED_ENVIRONMENTS.iter().find(|(n, _)| *n == env) {
                builder = builder.add_source(File::from_str(text, FileFormat::Toml));
            } else {
                return Err(SettingsError::NoEnvironment {
                    env: env.to_string(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        let mut builder = builder.add_source(environment());
        if !overrides.is_empty() {
            let vars = overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            builder = builder.add_source(environment().source(Some(vars)));
        }
        let built = builder.build()?;
        let mut settings: Settings = built.try_deserialize()?;
        settings.profile = env.map(str::to_string);
        settings.workflows = load_workflows(&dir.join("workflows"), &settings.catalog())?;
        settings.validate()?;
        Ok(settings)
    }

    /// What a command needs besides valid settings, checked when it starts (not when
    /// settings are read, so that tools can read production's settings): no
    /// plaintext where it is refused, a signing key where signatures are checked.
    pub fn ready_to_start(&self) -> Result<(), SettingsError> {
        let mut problems: Vec<SettingsError> = self.refuse_plaintext().err().into_iter().collect();
        if self.security.signatures != SignatureMode::Off && self.security.signing_key.is_none() {
            problems.push(SettingsError::Invalid {
                key: "security.signing_key".into(),
                problem: format!(
                    "is not set, and security.signatures is {:?}: the coordinator signs what it sends; make a key with `coordinator key generate` and set COORDINATOR__SECURITY__SIGNING_KEY",
                    self.security.signatures.as_str()
                ),
            });
        }
        SettingsError::all(problems)
    }

    /// What `serve` needs besides [`Settings::ready_to_start`]: the key that seals the
    /// configured payload fields (the CLI runs without it, and shows them sealed).
    pub fn ready_to_serve(&self) -> Result<(), SettingsError> {
        let e = &self.security.encryption;
        if !e.fields.is_empty() && e.key.is_none() {
            return Err(SettingsError::Invalid {
                key: "security.encryption.key".into(),
                problem: format!(
                    "is not set, and security.encryption.fields names {} field(s): make a key with `coordinator key generate-encryption` and set COORDINATOR__SECURITY__ENCRYPTION__KEY",
                    e.fields.len()
                ),
            });
        }
        Ok(())
    }

    /// With `security.allow_plaintext = false`: an error naming that setting if a
    /// connection would travel unencrypted.
    /// What production says when told to allow plaintext and a URL is plaintext: one
    /// warning naming the setting (an operator should know the exception is on).
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.profile.as_deref() != Some("production") || !self.security.allow_plaintext {
            return None;
        }
        let mut plain: Vec<&str> = Vec::new();
        let amqp = std::iter::once(&self.amqp.url).chain(&self.amqp.fallback_urls);
        if amqp
            .into_iter()
            .any(|u| !u.expose().starts_with("amqps://"))
        {
            plain.push("to RabbitMQ");
        }
        let db = self.database.url.expose();
        let tls = [
            "sslmode=require",
            "sslmode=verify-ca",
            "sslmode=verify-full",
        ];
        if !tls.iter().any(|m| db.contains(m)) {
            plain.push("to PostgreSQL");
        }
        (!plain.is_empty()).then(|| {
            format!(
                "security.allow_plaintext is true in production: connections {} are not encrypted; set it to false once TLS is in place (docs/security.md, \"Transport security\")",
                plain.join(" and ")
            )
        })
    }

    pub fn refuse_plaintext(&self) -> Result<(), SettingsError> {
        if self.security.allow_plaintext {
            return Ok(());
        }
        let refuse = |problem: String| SettingsError::Invalid {
            key: "security.allow_plaintext".into(),
            problem,
        };
        let amqp = std::iter::once(("amqp.url", &self.amqp.url)).chain(
            self.amqp
                .fallback_urls
                .iter()
                .map(|u| ("amqp.fallback_urls", u)),
        );
        for (key, url) in amqp {
            if !url.expose().starts_with("amqps://") {
                return Err(refuse(format!(
                    "is false, and {key} ({url}) is not amqps://: use amqps:// (amqp.tls_ca_file for a private CA) or set security.allow_plaintext = true"
                )));
            }
        }
        let db = self.database.url.expose();
        let sslmode = db
            .split_once('?')
            .into_iter()
            .flat_map(|(_, q)| q.split('&'))
            .find_map(|kv| kv.strip_prefix("sslmode="));
        if !matches!(sslmode, Some("require" | "verify-ca" | "verify-full")) {
            return Err(refuse(format!(
                "is false, and database.url ({}) does not require TLS: add ?sslmode=verify-full&sslrootcert=<CA file> or set security.allow_plaintext = true",
                self.database.url
            )));
        }
        Ok(())
    }

    /// What the engine decides with: the catalog, clock durations, ladders, limits.
    pub fn processor(&self) -> Processor {
        Processor {
            catalog: self.catalog(),
            durations: self.clock_durations(),
            workflows: self.workflows.clone(),
            // Settings are validated on load, so the ladders build.
            ladders: self.ladders().unwrap_or_default(),
            auto_register: self.registration.auto_register,
            limits: self.limits.envelope(),
            security: self.security_checks(),
            keep_spans: !self.traces.otlp_endpoint.is_empty(),
        }
    }

    /// The checks `[security]` asks of every delivery.
    pub fn security_checks(&self) -> Security {
        let s = &self.security;
        let signed = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Security {
            window: Window {
                max_age: signed(s.max_age),
                max_ahead: signed(s.max_ahead),
            },
            authenticate_senders: s.authenticate_senders,
            own_user: self.amqp.user(),
            escalation_acknowledgers: s.escalation_acknowledgers.iter().cloned().collect(),
            emergency_resolvers: s.emergency_resolvers.iter().cloned().collect(),
            audit: s.audit,
            signatures: s.signatures,
        }
    }

    /// The public keys agents may trust the coordinator's messages by (`GET /keys`):
    /// the signing key's, then `previous_public_keys`, each with its key id.
    pub fn published_keys(&self) -> Vec<(String, protocol::signing::VerifyingKey)> {
        let current = self.signer().map(|s| s.public_key());
        let previous = self
            .security
            .previous_public_keys
            .iter()
            .filter_map(|k| protocol::signing::public_key(k).ok());
        current
            .into_iter()
            .chain(previous)
            .map(|k| (protocol::signing::default_key_id(&k), k))
            .collect()
    }

    /// The coordinator's signer (`security.signing_key`), if it has a key; the settings
    /// refused a key that does not parse.
    pub fn signer(&self) -> Option<std::sync::Arc<Signer>> {
        let key =
            protocol::signing::signing_key(self.security.signing_key.as_ref()?.expose()).ok()?;
        let key_id = protocol::signing::default_key_id(&key.verifying_key());
        Some(std::sync::Arc::new(Signer::new(key, key_id)))
    }

    /// What seals and opens the configured payload fields; an error names what is
    /// wrong with a key (never the key).
    pub fn cipher(&self) -> Result<crate::encryption::FieldCipher, crate::encryption::CipherError> {
        let e = &self.security.encryption;
        let previous: Vec<String> = e
            .previous_keys
            .iter()
            .map(|k| k.expose().to_string())
            .collect();
        crate::encryption::FieldCipher::new(
            &e.fields,
            e.key.as_ref().map(Secret::expose),
            &previous,
        )
    }

    fn validate_security(&self) -> Result<(), SettingsError> {
        let s = &self.security;
        let invalid = |key: &str, problem: String| SettingsError::Invalid {
            key: format!("security.{key}"),
            problem,
        };
        if s.max_age.is_zero() {
            return Err(invalid("max_age", "must be above zero".into()));
        }
        for (i, f) in s.encryption.fields.iter().enumerate() {
            let path = f.strip_prefix(crate::encryption::DATA_PREFIX);
            if path.is_none_or(|p| p.split('.').any(str::is_empty)) {
                return Err(invalid(
                    &format!("encryption.fields[{i}]"),
                    format!(
                        "{f:?} is not a path into the payload's data: write payload.data. and \
                         then member names joined by dots (payload.data.customer.email)"
                    ),
                ));
            }
        }
        if let Err(e) = self.cipher() {
            // Not the value: it is a secret.
            return Err(invalid("encryption.key", e.to_string()));
        }
        let limits = &s.rate_limits;
        if limits.enabled {
            if limits.per_minute == 0 {
                return Err(invalid(
                    "rate_limits.per_minute",
                    "must be above zero when rate limits are enabled (0 in \
                     security.rate_limits.roles leaves one role unlimited)"
                        .into(),
                ));
            }
            if limits.burst == Some(0) {
                return Err(invalid("rate_limits.burst", "must be above zero".into()));
            }
            if limits.emergency_burst == 0 {
                return Err(invalid(
                    "rate_limits.emergency_burst",
                    "must be above zero".into(),
                ));
            }
            for role in limits.roles.keys() {
                if !self.roles.contains_key(role) {
                    return Err(invalid(
                        &format!("rate_limits.roles.{role}"),
                        format!(
                            "{role:?} is not a configured role; roles: {}",
                            self.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, k) in s.previous_public_keys.iter().enumerate() {
            if let Err(e) = protocol::signing::public_key(k) {
                return Err(invalid(&format!("previous_public_keys[{i}]"), e));
            }
        }
        if let Some(k) = &s.signing_key {
            if let Err(e) = protocol::signing::signing_key(k.expose()) {
                // Not the value: it is a secret.
                return Err(invalid(
                    "signing_key",
                    format!("{e} (coordinator key generate makes one)"),
                ));
            }
        }
        if s.max_age >= self.retention.processed_messages {
            return Err(invalid(
                "max_age",
                format!(
                    "must be shorter than retention.processed_messages ({}), or a message \
                     could be replayed once its id is forgotten but while it is still fresh",
                    humantime::format_duration(self.retention.processed_messages)
                ),
            ));
        }
        // A role that may acknowledge or resolve is a configured role or a level of an
        // escalation ladder (`oncall`, `management`), which becomes a role once
        // configured under [roles].
        let levels: std::collections::BTreeSet<&str> = std::iter::once(&self.escalation.levels)
            .chain(self.escalation.severity.values().map(|l| &l.levels))
            .chain(self.escalation.clock.values().map(|l| &l.levels))
            .flatten()
            .map(String::as_str)
            .collect();
        for (key, names) in [
            ("escalation_acknowledgers", &s.escalation_acknowledgers),
            ("emergency_resolvers", &s.emergency_resolvers),
        ] {
            for name in names {
                if !self.roles.contains_key(name) && !levels.contains(name.as_str()) {
                    return Err(invalid(
                        key,
                        format!(
                            "{name:?} is neither a configured role nor an escalation level; roles: {}",
                            self.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks what types alone cannot: ranges and names.
    /// Every invalid value, all of them at once (an operator fixes them in one go).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &str, problem: String| SettingsError::Invalid {
            key: key.to_string(),
            problem,
        };
        let mut problems: Vec<SettingsError> = Vec::new();
        if !(self.sla.time_scale.is_finite() && self.sla.time_scale > 0.0) {
            problems.push(invalid(
                "sla.time_scale",
                format!("must be a number above 0, got {}", self.sla.time_scale),
            ));
        }
        let known = || {
            clocks::all(&self.workflows)
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in self.sla.durations.keys() {
            if clocks::def(&self.workflows, name).is_none() {
                problems.push(invalid(
                    &format!("sla.durations.{name}"),
                    format!("no such clock; known clocks: {}", known()),
                ));
            }
        }
        for (name, sev) in &self.sla.severity {
            if clocks::def(&self.workflows, name).is_none() {
                problems.push(invalid(
                    &format!("sla.severity.{name}"),
                    format!("no such clock; known clocks: {}", known()),
                ));
            }
            if Severity::parse(sev).is_none() {
                problems.push(invalid(
                    &format!("sla.severity.{name}"),
                    format!("{sev:?} is not one of low, medium, high, critical"),
                ));
            }
        }
        if !(self.sla.warning_fraction > 0.0 && self.sla.warning_fraction < 1.0) {
            problems.push(invalid(
                "sla.warning_fraction",
                format!("must be between 0 and 1, got {}", self.sla.warning_fraction),
            ));
        }
        let cb = &self.circuit_breaker;
        if cb.failure_threshold == 0 || cb.success_threshold == 0 {
            problems.push(invalid(
                "circuit_breaker",
                format!(
                    "failure_threshold and success_threshold must be at least 1, got {} and {}",
                    cb.failure_threshold, cb.success_threshold
                ),
            ));
        }
        if self.amqp.confirm_timeout.is_zero() {
            problems.push(invalid(
                "amqp.confirm_timeout",
                "must be above 0 (a publisher must wait for the broker's confirm)".into(),
            ));
        }
        if let Err(e) = self.ladders() {
            problems.push(e);
        }
        if self.timers.window.is_zero()
            || self.timers.max_in_memory <= 0
            || self.timers.concurrency == 0
            || self.timers.batch_size == 0
        {
            problems.push(invalid(
                "timers",
                "window, max_in_memory, batch_size and concurrency must all be above zero".into(),
            ));
        }
        if self.inbox.partitions == 0 || self.inbox.partitions > 1024 {
            problems.push(invalid(
                "inbox.partitions",
                format!("must be between 1 and 1024, got {}", self.inbox.partitions),
            ));
        }
        if self.shutdown.flush_timeout >= self.shutdown.timeout {
            problems.push(invalid(
                "shutdown.flush_timeout",
                format!(
                    "must be shorter than shutdown.timeout ({:?}), got {:?}",
                    self.shutdown.timeout, self.shutdown.flush_timeout
                ),
            ));
        }
        if self.inbox.rebalance_interval.is_zero() {
            problems.push(invalid(
                "inbox.rebalance_interval",
                "must be above zero".into(),
            ));
        }
        for (key, d) in [
            ("metrics.refresh_interval", self.metrics.refresh_interval),
            ("metrics.chart_interval", self.metrics.chart_interval),
            ("heartbeats.interval", self.heartbeats.interval),
        ] {
            if d.is_zero() {
                problems.push(invalid(key, "must be above zero".into()));
            }
        }
        let endpoint = &self.traces.otlp_endpoint;
        let is_http_url = endpoint
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty());
        if !endpoint.is_empty() && !is_http_url {
            problems.push(invalid(
                "traces.otlp_endpoint",
                format!(
                    "must be empty (spans not exported) or the collector's OTLP/HTTP traces URL, http://host:port/v1/traces (https is not supported: run the collector beside the coordinator), got {endpoint:?}"
                ),
            ));
        }
        if self.traces.export_timeout.is_zero() {
            problems.push(invalid(
                "traces.export_timeout",
                "must be above zero".into(),
            ));
        }
        if self.heartbeats.missed == 0 {
            problems.push(invalid(
                "heartbeats.missed",
                "must be at least 1 (intervals without a heartbeat before an agent is stale)"
                    .into(),
            ));
        }
        if self.log.activity_interval.is_zero() {
            problems.push(invalid(
                "log.activity_interval",
                "must be above zero".into(),
            ));
        }
        if self.inbox.concurrency == 0 {
            problems.push(invalid("inbox.concurrency", "must be at least 1".into()));
        }
        if self.inbox.prefetch == 0 {
            problems.push(invalid("inbox.prefetch", "must be at least 1".into()));
        }
        if self.inbox.batch_size == 0 {
            problems.push(invalid("inbox.batch_size", "must be at least 1".into()));
        }
        for (name, p) in self.retry_policies.named() {
            if let Some(problem) = p.problem() {
                problems.push(invalid(&format!("retry_policies.{name}"), problem));
            }
        }
        for (key, v) in [
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.max_key_bytes", self.limits.max_key_bytes),
            ("limits.max_text_bytes", self.limits.max_text_bytes),
        ] {
            if v == 0 {
                problems.push(invalid(key, "must be at least 1".into()));
            }
        }
        if self.outbox.batch_size <= 0 {
            problems.push(invalid("outbox.batch_size", "must be at least 1".into()));
        }
        let amqp_url = self.amqp.url.expose();
        if !amqp_url.starts_with("amqp://") && !amqp_url.starts_with("amqps://") {
            problems.push(invalid(
                "amqp.url",
                // Not the URL itself: it may hold a password.
                format!(
                    "must start with amqp:// or amqps://, got one starting {:?}",
                    amqp_url
                        .split("://")
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(12)
                        .collect::<String>()
                ),
            ));
        }
        if let Some(f) = &self.amqp.tls_ca_file {
            if let Err(e) = std::fs::read_to_string(f) {
                problems.push(invalid(
                    "amqp.tls_ca_file",
                    format!("cannot read {}: {e}", f.display()),
                ));
            }
        }
        let database_url = self.database.url.expose();
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            problems.push(invalid(
                "database.url",
                "must start with postgres://".into(),
            ));
        }
        if self.roles.is_empty() {
            problems.push(invalid("roles", "no roles are configured".into()));
        }
        if let Err(e) = self.validate_security() {
            problems.push(e);
        }
        for agent in &self.agents {
            if !self.roles.contains_key(&agent.agent_type) {
                problems.push(invalid(
                    "agents",
                    format!(
                        "agent {} has type {:?}, which is not a configured role",
                        agent.agent_id, agent.agent_type
                    ),
                ));
            }
        }
        SettingsError::all(problems)
    }

    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.roles.clone(), self.messages.common.iter().cloned())
    }

    pub fn clock_durations(&self) -> ClockDurations {
        let overrides = self
            .sla
            .durations
            .iter()
            .map(|(k, v)| (k.clone(), v.into_inner()))
            .collect();
        let severities = self
            .sla
            .severity
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Severity::parse(v)?)))
            .collect();
        clocks::durations(&self.workflows, self.sla.time_scale, &overrides)
            .with_severities(&severities)
            .with_warning_fraction(self.sla.warning_fraction)
    }

    /// The escalation ladders, waits scaled by `sla.time_scale`.
    pub fn ladders(&self) -> Result<Ladders, SettingsError> {
        let ladder =
            |key: String, levels: &[String], waits: &[humantime_serde::Serde<Duration>]| {
                Ladder::new(
                    levels.to_vec(),
                    waits.iter().map(|w| w.into_inner()).collect(),
                )
                .map_err(|e| SettingsError::Invalid {
                    key,
                    problem: e.to_string(),
                })
            };
        let e = &self.escalation;
        let default = ladder("escalation".into(), &e.levels, &e.waits)?;
        let mut by_severity = HashMap::new();
        for (name, l) in &e.severity {
            let key = format!("escalation.severity.{name}");
            let sev = Severity::parse(name).ok_or_else(|| SettingsError::Invalid {
                key: key.clone(),
                problem: "not one of low, medium, high, critical".into(),
            })?;
            by_severity.insert(sev, ladder(key, &l.levels, &l.waits)?);
        }
        let mut by_clock = HashMap::new();
        for (name, l) in &e.clock {
            let key = format!("escalation.clock.{name}");
            if clocks::def(&self.workflows, name).is_none() {
                return Err(SettingsError::Invalid {
                    key,
                    problem: "no such clock".into(),
                });
            }
            by_clock.insert(name.clone(), ladder(key, &l.levels, &l.waits)?);
        }
        Ok(Ladders {
            default,
            by_severity,
            by_clock,
        }
        .scaled(self.sla.time_scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"))
    }

    #[test]
    fn every_shipped_environment_loads() {
        for env in [None, Some("test"), Some("production")] {
            let s = Settings::load_from(&dir(), env).unwrap_or_else(|e| panic!("{env:?}: {e:#}"));
            assert_eq!(s.roles.len(), 6, "{env:?}");
        }
        let prod = Settings::load_from(&dir(), Some("production")).expect("production");
        assert_eq!(prod.amqp.queue_type, QueueType::Quorum);
        assert!(!prod.registration.auto_register);
        let test = Settings::load_from(&dir(), Some("test")).expect("test");
        assert_eq!(test.amqp.queue_type, QueueType::Classic);
        assert!(test.registration.auto_register);
    }

    #[test]
    fn a_missing_environment_file_is_an_error() {
        let e = Settings::load_from(&dir(), Some("no-such-env")).expect_err("no such file");
        assert!(matches!(e, SettingsError::NoEnvironment { .. }));
        assert!(e.to_string().contains("no-such-env.toml"), "{e}");
    }

    #[test]
    fn the_shipped_configuration_is_compiled_in() {
        let elsewhere = Path::new("/nonexistent");
        let s = Settings::load_from(elsewhere, None).expect("built-in defaults");
        assert_eq!(s.amqp.queue_type, QueueType::Classic);
        let prod = Settings::load_from(elsewhere, Some("production")).expect("built-in production");
        assert_eq!(prod.amqp.queue_type, QueueType::Quorum);
    }

    #[test]
    fn bad_values_name_their_key() {
        let good = Settings::load_from(&dir(), None).expect("defaults");
        let mut s = good.clone();
        s.sla.time_scale = 0.0;
        assert!(s
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("sla.time_scale"));
        let mut s = good.clone();
        s.sla
            .durations
            .insert("coffee_break".into(), Duration::from_secs(1).into());
        assert!(s
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("sla.durations.coffee_break"));
        let mut s = good.clone();
        s.shutdown.flush_timeout = s.shutdown.timeout;
        assert!(s
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("shutdown.flush_timeout"));
        for endpoint in [
            "https://collector:4318/v1/traces",
            "127.0.0.1:4318",
            "http://",
        ] {
            let mut s = good.clone();
            s.traces.otlp_endpoint = endpoint.into();
            let said = s.validate().expect_err("rejected").to_string();
            assert!(said.contains("traces.otlp_endpoint"), "{said}");
            assert!(said.contains(endpoint), "{said}");
        }
        let mut s = good.clone();
        s.traces.otlp_endpoint = "http://127.0.0.1:4318/v1/traces".into();
        s.validate().expect("an OTLP/HTTP endpoint");
        let mut s = good;
        s.agents.push(StaticAgent {
            agent_id: "x".into(),
            agent_type: "intern".into(),
        });
        assert!(s
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("intern"));
    }

    #[test]
    fn ladders_come_from_configuration_and_bad_ones_name_their_key() {
        let s = Settings::load_from(&dir(), None).expect("defaults");
        let l = s.ladders().expect("ladders");
        assert_eq!(l.default.len(), 3);
        assert_eq!(l.default.target(2, "qa-director"), "oncall");
        assert_eq!(
            l.for_escalation("acknowledgment", Severity::Critical)
                .wait(1),
            Duration::from_secs(300)
        );
        let mut bad = s.clone();
        bad.escalation.waits.pop();
        assert!(bad
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("escalation"));
        let mut bad = s.clone();
        bad.sla
            .severity
            .insert("testing_start".into(), "apocalyptic".into());
        assert!(bad
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("sla.severity.testing_start"));
        let mut bad = s;
        bad.sla.warning_fraction = 1.5;
        assert!(bad
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("sla.warning_fraction"));
    }

    #[test]
    fn clock_durations_apply_overrides_and_time_scale() {
        let mut s = Settings::load_from(&dir(), None).expect("defaults");
        s.sla.time_scale = 0.5;
        s.sla
            .durations
            .insert("testing_start".into(), Duration::from_secs(10).into());
        let d = s.clock_durations();
        assert_eq!(d.get("testing_start"), Duration::from_secs(5));
        assert_eq!(
            d.get("post_deployment_validation"),
            Duration::from_secs(1800)
        );
    }
}
