//! The rows the engine reads and writes: what a batch (of messages, of due deadlines,
//! of operator actions) finds under its locks, and everything it decides to write.
//! Plain data: `db` runs the statements that fill and store them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::audit;

/// `processed_messages.outcome` of a message applied to a workflow or incident.
pub const OUTCOME_ACCEPTED: &str = "accepted";
/// `processed_messages.outcome` of a message kept in `dead_letters`.
pub const OUTCOME_REJECTED: &str = "rejected";
/// `processed_messages.outcome` of a valid event the coordinator does not act on.
pub const OUTCOME_OBSERVED: &str = "observed";

/// A workflow row locked for the rest of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedWorkflow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub round: i32,
    /// The SHA-256 of the definition it started with (none for incidents, and for
    /// workflows started before definitions were versioned).
    pub definition_hash: Option<String>,
    pub business_key: Option<String>,
}

/// An armed clock of a locked workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmedClockRow {
    pub id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    pub armed_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// An escalation of a chain that a message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMember {
    pub id: i64,
    pub workflow_id: String,
    pub chain_id: i64,
    /// Not yet acknowledged.
    pub open: bool,
    pub level: i32,
    /// The role this level paged (the clock's owner role at level one).
    pub target: String,
}

/// A workflow (or incident) created by the batch, in the state the batch left it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub id: String,
    pub kind: String,
    pub state: String,
    /// The `payload.data` member its definition names as `key` (`workflows.key_name`,
    /// from which the managers' older key column is derived) and its value.
    pub key_name: Option<String>,
    pub business_key: Option<String>,
    pub title: Option<String>,
    pub data: Value,
    pub round: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The version and hash of the definition it started with (none for incidents).
    pub definition: Option<(i32, String)>,
}

/// An existing workflow's state after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowChange {
    pub id: String,
    pub state: String,
    pub round: i32,
    pub at: DateTime<Utc>,
    pub terminal: bool,
}

/// A clock armed by the batch, with the status the batch left it in (a clock armed and
/// met in the same batch is written once, already met).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClock {
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    pub severity: String,
    pub armed_at: DateTime<Utc>,
    pub warn_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
}

/// A clock row as inserted: its id and what the timer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertedClock {
    pub id: i64,
    pub status: String,
    pub warn_at: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
}

/// An armed clock the batch closed, gave an owner, or moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockChange {
    pub id: i64,
    pub status: String,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    pub owner_agent_id: Option<String>,
    /// A new deadline and warning time (an operator snoozed the clock).
    pub due_at: Option<DateTime<Utc>>,
    pub warn_at: Option<DateTime<Utc>>,
    /// The moved warning is still to come: it may fire again.
    pub warn_again: bool,
}

/// One raise of an escalation, its id reserved beforehand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEscalation {
    pub id: i64,
    pub chain_id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub clock_id: Option<i64>,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub level: i32,
    pub target: String,
    pub severity: String,
    pub raised_at: DateTime<Utc>,
    pub next_level_at: DateTime<Utc>,
    pub message_id: String,
}

/// A chain acknowledged: its open escalations stop climbing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAck {
    pub chain_id: i64,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// A history row. `ordinal` numbers the rows of one workflow within the batch (1, 2,
/// …); the sequence number is the workflow's last one plus the ordinal, read when the
/// statement runs, under the workflow's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub workflow_id: String,
    pub ordinal: i32,
    pub message_id: Option<String>,
    pub message_type: String,
    pub source_agent_id: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub at: DateTime<Utc>,
    pub detail: Value,
}

/// An outbox row as written: its id, for marking it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub message: OutboxMessage,
}

/// A delivery kept whole because it was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub body_json: Option<Value>,
    pub properties: Value,
    pub source_agent_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// What claiming a batch's message ids found.
#[derive(Debug, Default, Clone)]
pub struct Claims {
    /// The ids this batch claimed.
    pub claimed: std::collections::HashSet<String>,
    /// Ids claimed before this batch, with the sender that used them (where recorded):
    /// the same id from another sender is a conflict, not a duplicate.
    pub earlier: std::collections::HashMap<String, String>,
}

/// What a batch must read once its message ids are claimed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Workflows (and incidents) its messages name, to lock.
    pub workflow_ids: Vec<String>,
    /// Senders the agent cache does not hold.
    pub agent_ids: Vec<String>,
    /// Escalations named by acknowledgements.
    pub escalation_ids: Vec<i64>,
    /// An emergency is raised: every registered agent must acknowledge it.
    pub all_agents: bool,
    /// Escalation ids to reserve (messages that may raise one).
    pub escalations: usize,
}

impl Needs {
    /// The statements the claim and `db::batch::load` run for these needs (the clocks are read
    /// when workflows were locked, which it counts as likely).
    pub fn statements(&self) -> usize {
        1 + usize::from(!self.workflow_ids.is_empty())
            + usize::from(!self.agent_ids.is_empty())
            + usize::from(self.all_agents)
            + usize::from(!self.escalation_ids.is_empty())
            + usize::from(self.escalations > 0)
    }
}

/// What a batch read under its locks.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub workflows: Vec<LockedWorkflow>,
    pub clocks: Vec<ArmedClockRow>,
    pub agents: Vec<(String, String)>,
    pub all_agents: Option<Vec<(String, String)>>,
    pub chains: Vec<ChainMember>,
    pub escalation_ids: Vec<i64>,
    /// The head of the audit chain the batch appends to, locked (none when the audit
    /// log is off).
    pub audit_head: Option<audit::Head>,
}

/// Everything a batch (of messages or of timer deadlines) writes.
#[derive(Debug, Default)]
pub struct Writes {
    pub new_workflows: Vec<NewWorkflow>,
    pub workflow_changes: Vec<WorkflowChange>,
    pub new_clocks: Vec<NewClock>,
    pub clock_changes: Vec<ClockChange>,
    pub escalations: Vec<NewEscalation>,
    pub chain_acks: Vec<ChainAck>,
    pub events: Vec<NewEvent>,
    pub outbox: Vec<OutboxMessage>,
    pub dead_letters: Vec<NewDeadLetter>,
    pub outcomes: Vec<(String, &'static str)>,
    /// Agents registered by heartbeat.
    pub registrations: Vec<(String, String)>,
    /// Heartbeats: agent id, when, and its report (`domain::agent_health::stored`).
    pub heartbeats: Vec<(String, DateTime<Utc>, serde_json::Value)>,
    /// Audit rows, linked after the chain's head, and the chain's new head.
    pub audit: Vec<audit::Record>,
    pub audit_head: Option<audit::Head>,
    /// The spans of the work these rows record (`engine::spans`): exported once they
    /// commit, never stored.
    pub spans: Vec<Span>,
}

impl Writes {
    /// Appends `entries` to the audit chain whose locked head is `head`.
    pub fn audit(
        &mut self,
        head: Option<&audit::Head>,
        at: DateTime<Utc>,
        entries: Vec<audit::Entry>,
    ) {
        let Some(head) = self.audit_head.as_ref().or(head) else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        let (rows, new_head) = audit::link(head, at, entries);
        self.audit.extend(rows);
        self.audit_head = Some(new_head);
    }
}

impl Writes {
    /// The statements `db::batch::write` runs for these rows: one, unless there is nothing to
    /// write.
    pub fn statements(&self) -> usize {
        usize::from(self.kinds() > 0)
    }

    fn kinds(&self) -> usize {
        [
            !self.new_workflows.is_empty(),
            !self.workflow_changes.is_empty(),
            !self.new_clocks.is_empty(),
            !self.clock_changes.is_empty(),
            !self.escalations.is_empty(),
            !self.chain_acks.is_empty(),
            !self.events.is_empty(),
            !self.dead_letters.is_empty(),
            !self.outcomes.is_empty(),
            !self.registrations.is_empty(),
            !self.heartbeats.is_empty(),
            !self.outbox.is_empty(),
            !self.audit.is_empty(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

/// What the writes produced that only the database knows.
#[derive(Debug, Default)]
pub struct Written {
    pub clocks: Vec<InsertedClock>,
    pub queued: Vec<Queued>,
    /// Agents that were not registered before.
    pub registered: Vec<String>,
}

/// A message the coordinator has committed to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub message_type: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub app_id: String,
    pub body: Vec<u8>,
    /// The W3C `traceparent` AMQP header it is sent with (its body's `header.tracing`).
    pub traceparent: Option<String>,
}

/// An outbox message given up on: no queue took it for `outbox.undeliverable_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undeliverable {
    pub id: i64,
    pub message_id: String,
    pub message_type: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_error: String,
}

/// A dead letter unresolved past `dead_letters.escalate_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedDeadLetter {
    pub id: i64,
    pub reason: String,
    pub message_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A clock the timer has just breached or warned about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredClock {
    pub id: i64,
    pub workflow_id: String,
    pub clock: String,
    pub round: i32,
    pub owner_role: String,
    pub owner_agent_id: Option<String>,
    pub subject_agent_id: Option<String>,
    pub severity: String,
    pub due_at: DateTime<Utc>,
}

/// An escalation whose ladder step the timer has just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClimbedEscalation {
    pub id: i64,
    pub workflow_id: String,
    pub chain_id: i64,
    pub clock: String,
    pub clock_id: Option<i64>,
    pub owner_role: String,
    pub agent_id: Option<String>,
    pub level: i32,
    pub severity: String,
}

/// What `db::deadlines::take_due` took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The workflow of each deadline asked for that still exists: (is a clock, id,
    /// workflow id).
    pub wanted: Vec<(bool, i64, String)>,
    /// The workflows locked (id, state); deadlines of other workflows were skipped
    /// because another transaction held them.
    pub workflows: Vec<(String, String)>,
    pub warned: Vec<FiredClock>,
    pub breached: Vec<FiredClock>,
    pub climbed: Vec<ClimbedEscalation>,
}

/// One span of the coordinator's work (`engine::spans`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub context: protocol::trace::SpanContext,
    pub parent: Option<[u8; 8]>,
    /// The sender's context when it was of another trace.
    pub link: Option<protocol::trace::SpanContext>,
    pub what: What,
    /// The workflow (or incident) it is about.
    pub workflow_id: String,
    /// The message applied, or the deadline's clock or escalation.
    pub subject: String,
    pub message_type: String,
    /// The workflow's kind, where the message reached one.
    pub kind: Option<&'static str>,
    /// `accepted`, `observed`, `rejected` (an input's `Outcome::label`), or `fired`.
    pub outcome: &'static str,
    /// Why it was rejected.
    pub detail: Option<String>,
}

/// What a span is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A workflow's root span, exported when the message that creates it is applied.
    Workflow,
    /// A message (an agent's or an operator's) applied.
    Message,
    /// A deadline fired: a clock's warning or breach, an escalation's next level.
    Deadline,
}

impl What {
    pub fn as_str(self) -> &'static str {
        match self {
            What::Workflow => "workflow",
            What::Message => "apply",
            What::Deadline => "fire",
        }
    }
}
