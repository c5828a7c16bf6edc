//! The engine: deciding, without I/O, what a batch of inputs changes — messages from
//! the inbox, due deadlines, operator actions — as rows to write ([`rows`]) and messages
//! to send ([`messages`]). `db` reads and writes those rows; `service` owns the
//! transactions around them.
//!
//! [`admission`] turns each delivery, once, into an [`Admitted`] message or a
//! [`Refused`] one (the batch's signatures verified together). [`Processor::needs`]
//! says what the batch must read once its message ids are claimed. A [`Batch`] then
//! holds what was read under lock and applies each input in delivery order — dedupe,
//! identity, dispatch (heartbeat, escalation acknowledgement, emergency, a defined
//! workflow, or an event the coordinator only observes), the pure state machine, and
//! the rows its decision implies — so the next message of the same workflow sees what
//! the previous one did. [`Batch::finish`] hands the collected rows to the pipeline
//! (`service::pipeline`), which owns the transaction and writes them in one statement.
//! [`effects`] is the one interpreter of the state machines' effects; [`deadlines`]
//! turns due deadlines into rows, [`escalations`] builds every escalation.
//!
//! A rejection is not an error: it becomes a `dead_letters` row and a `message_rejected`
//! notice, and the batch goes on.

pub mod admission;
pub mod agents;
mod audit;
mod batch;
pub mod deadlines;
mod dispatch;
mod effects;
pub mod escalations;
mod incident;
pub mod messages;
mod model;
pub mod operator;
pub mod rows;
pub mod spans;
mod workflows;

use std::collections::{BTreeSet, HashSet};

use protocol::catalog::Catalog;
use protocol::envelope::{DeliveryMeta, Envelope, Limits, Window};
use protocol::names::message_types::{ESCALATION_ACKNOWLEDGED, HEARTBEAT};
use protocol::reject::Reason;

use crate::domain::definition::Definitions;
use crate::domain::emergency;
use crate::domain::escalation::Ladders;
use crate::domain::sla::ClockDurations;
use escalations::Acknowledged;
use rows::Needs;

pub use admission::{Admission, Admitted, Refused, Sender, Vouched};
pub use agents::{AgentView, Agents};
pub use batch::{dead_letter, set_aside, Batch, Finished};

/// The audit entry of an input applied outside a batch (a message set aside).
pub fn audit_entry(input: Input<'_>, p: &Processed) -> crate::domain::audit::Entry {
    audit::Seen::of(input).entry(p)
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to a workflow or incident (or a heartbeat recorded).
    Accepted,
    /// A valid event the coordinator does not act on.
    Observed,
    /// Its message id was processed before: nothing changed.
    Duplicate,
    Rejected(Reason),
}

impl Outcome {
    /// Every [`Outcome::label`], for metrics present from the start.
    pub const LABELS: [&'static str; 4] = ["accepted", "observed", "duplicate", "rejected"];

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Observed => "observed",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// What the batch did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    /// The state transition, when there was one.
    pub transition: Option<(String, String)>,
    /// Why it was rejected.
    pub detail: Option<String>,
    /// What an escalation acknowledgement did.
    pub acknowledged: Option<Acknowledged>,
    /// Applied although its signature is missing or bad (`security.signatures =
    /// "verify"`).
    pub bad_signature: bool,
    /// The kind of the workflow it was applied to (a definition's name), for the
    /// handoff latency of the tasks it caused.
    pub kind: Option<&'static str>,
    /// Its span in its workflow's trace (`spans`), where it has one.
    pub span: Option<protocol::trace::SpanContext>,
}

impl Processed {
    pub fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            transition: None,
            detail: None,
            acknowledged: None,
            bad_signature: false,
            kind: None,
            span: None,
        }
    }
}

/// A delivery, as far as processing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub meta: &'a DeliveryMeta,
}

/// What a batch applies: a delivery from the inbox with what admission made of it, or a
/// message an operator makes with the CLI (trusted: not checked against the catalog or
/// the agents, and a rejection is returned to the operator instead of being
/// dead-lettered).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Delivery(Inbound<'a>, &'a Admission),
    Operator(&'a Envelope),
}

impl Input<'_> {
    /// Its message id and who sent it (none for an operator's).
    fn ids(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Input::Delivery(_, a) => (a.message_id(), a.sender_id()),
            Input::Operator(env) => (Some(env.header.message_id.as_str()), None),
        }
    }

    /// Its message type and its sender's role: the envelope's, or for a delivery refused
    /// before its envelope could be trusted, what its routing key
    /// (`{agent_type}.{message_type}`) claims; an operator's are its own.
    fn described(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Input::Delivery(d, a) => match a.envelope() {
                Some(e) => (
                    Some(e.header.message_type.as_str()),
                    Some(e.header.source.agent_type.as_str()),
                ),
                None => match d.meta.routing_key.split_once('.') {
                    Some((role, message_type)) => (Some(message_type), Some(role)),
                    None => (None, None),
                },
            },
            Input::Operator(env) => (
                Some(env.header.message_type.as_str()),
                Some(protocol::names::OPERATOR),
            ),
        }
    }

    /// The envelope to act on; `None` for a refused delivery.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.valid().map(|(e, _)| e)
    }

    /// The envelope to act on, and whether it is trusted (an operator's); `None` for a
    /// refused delivery.
    fn valid(&self) -> Option<(&Envelope, bool)> {
        match self {
            Input::Delivery(_, a) => a.envelope().map(|e| (e, false)),
            Input::Operator(env) => Some((env, true)),
        }
    }
}

/// What deciding needs to know (built from the settings by `Settings::processor`).
#[derive(Debug, Clone)]
pub struct Processor {
    pub catalog: Catalog,
    /// The workflow definitions ([`crate::domain::definition`]).
    pub workflows: Definitions,
    pub durations: ClockDurations,
    pub ladders: Ladders,
    pub auto_register: bool,
    pub limits: Limits,
    pub security: Security,
    /// Keep the spans of what is applied and fired (`Writes::spans`), for export. Off,
    /// the messages still name their spans, and no span is built.
    pub keep_spans: bool,
}

/// How senders' signatures are checked (`security.signatures`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    /// Not checked.
    #[default]
    Off,
    /// Checked; a missing or bad signature is logged and counted, and the message
    /// applied all the same (while agents are being given keys).
    Verify,
    /// A missing or bad signature is refused (`missing_signature`, `bad_signature`).
    Require,
}

impl SignatureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMode::Off => "off",
            SignatureMode::Verify => "verify",
            SignatureMode::Require => "require",
        }
    }
}

/// What `[security]` asks of every delivery and of the acknowledgements and
/// resolutions it authorises (docs/security.md).
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub signatures: SignatureMode,
    pub window: Window,
    pub authenticate_senders: bool,
    /// The coordinator's own broker user: an operator's replay of a dead letter, which
    /// the CLI publishes as that user, is exempt from the window and from sender
    /// authentication.
    pub own_user: String,
    pub escalation_acknowledgers: BTreeSet<String>,
    pub emergency_resolvers: BTreeSet<String>,
    /// Each input applied is audited (`domain::audit`).
    pub audit: bool,
}

/// The message ids to claim, each once, in delivery order, and the sender of each
/// (the first to use it in the batch).
pub fn message_ids<'s>(inputs: &'s [Input<'_>]) -> Received<'s> {
    let mut seen = HashSet::new();
    let mut r = Received::default();
    for i in inputs {
        let (Some(id), sender) = i.ids() else {
            continue;
        };
        if seen.insert(id) {
            let (message_type, role) = i.described();
            r.push(id, sender, message_type, role);
        }
    }
    r
}

/// The message ids a batch claims, each with its sender, its type and its sender's
/// role (`processed_messages`; the report reads the last two).
#[derive(Debug, Default, Clone)]
pub struct Received<'s> {
    pub ids: Vec<&'s str>,
    pub senders: Vec<Option<&'s str>>,
    pub types: Vec<Option<&'s str>>,
    pub roles: Vec<Option<&'s str>>,
}

impl<'s> Received<'s> {
    pub fn push(
        &mut self,
        id: &'s str,
        sender: Option<&'s str>,
        message_type: Option<&'s str>,
        role: Option<&'s str>,
    ) {
        self.ids.push(id);
        self.senders.push(sender);
        self.types.push(message_type);
        self.roles.push(role);
    }

    /// One input's, if it has a message id.
    pub fn of(input: &'s Input<'s>) -> Received<'s> {
        let mut r = Received::default();
        if let (Some(id), sender) = input.ids() {
            let (message_type, role) = input.described();
            r.push(id, sender, message_type, role);
        }
        r
    }
}

impl Processor {
    /// What a batch must read (before its ids are claimed: a duplicate costs a lock it did
    /// not need, which is rare), given the agents the cache holds.
    pub fn needs(&self, inputs: &[Input<'_>], agents: &AgentView) -> Needs {
        let mut n = Needs::default();
        for i in inputs {
            let Some((env, trusted)) = i.valid() else {
                continue;
            };
            let h = &env.header;
            if !trusted && agents.type_of(&h.source.agent_id).is_none() {
                n.agent_ids.push(h.source.agent_id.clone());
            }
            let mt = h.message_type.as_str();
            if mt == HEARTBEAT {
                continue;
            }
            if mt == ESCALATION_ACKNOWLEDGED {
                if let Some(id) = acknowledged_escalation(env) {
                    n.escalation_ids.push(id);
                }
            } else if mt == emergency::ALERT {
                n.all_agents = true;
            } else if !(emergency::is_input(mt)
                || self.workflows.is_input(mt)
                || trusted && operator::is_action(mt))
            {
                continue;
            }
            n.workflow_ids.push(h.correlation_id.clone());
            for kind in self.workflows.follow_ons_of(mt) {
                n.workflow_ids
                    .push(crate::domain::ids::follow_on(&h.correlation_id, kind));
            }
            if self.workflows.may_escalate(mt) {
                n.escalations += 1;
            }
        }
        n
    }
}

/// `escalation_acknowledged` names an escalation of the chain in
/// `payload.data.escalation_id`.
fn acknowledged_escalation(env: &Envelope) -> Option<i64> {
    use serde::Deserialize;
    protocol::payloads::EscalationAcknowledged::deserialize(&env.payload.data)
        .ok()
        .map(|a| a.escalation_id)
}

/// A stable stand-in id for a body that carries none.
pub(crate) fn body_digest(body: &[u8]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body).to_string()
}

#[cfg(test)]
mod tests;
