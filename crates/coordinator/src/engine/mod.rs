//! The engine: deciding, without I/O, what a batch of inputs changes — messages from
//! the inbox, due deadlines, operator actions — as rows to write ([`rows`]) and messages
//! to send ([`messages`]). `db` reads and writes those rows; `service` owns the
//! transactions around them.
//!
//! [`Processor::check_all`] runs the pure checks on each delivery (parsed once), the
//! batch's signatures verified together. [`needs`] says what
//! the batch must read once its message ids are claimed. A [`Batch`] then holds what
//! was read under lock and applies each message in delivery order — dedupe, identity,
//! dispatch (heartbeat, escalation acknowledgement, emergency, a defined workflow, or an
//! event the coordinator only observes), the pure state machine, and the rows its
//! decision implies — so the next message of the same workflow sees what the previous
//! one did. [`Batch::finish`] hands the collected rows to the pipeline
//! (`service::pipeline`), which owns the transaction and writes them in one statement.
//! [`effects`] is the one interpreter of the state machines' effects; [`deadlines`]
//! turns due deadlines into rows, [`escalations`] builds every escalation.
//!
//! A rejection is not an error: it becomes a `dead_letters` row and a `message_rejected`
//! notice, and the batch goes on.

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
mod workflows;

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};

use protocol::catalog::Catalog;
use protocol::envelope::{self, DeliveryMeta, Envelope, Limits, Window};
use protocol::names::message_types::{ESCALATION_ACKNOWLEDGED, HEARTBEAT};
use protocol::reject::{Reason, Rejected};
use protocol::signing::{self, Pending, SignatureError};

use crate::domain::definition::Definitions;
use crate::domain::emergency;
use crate::domain::escalation::Ladders;
use crate::domain::sla::ClockDurations;
use escalations::Acknowledged;
use rows::Needs;

pub use agents::{AgentView, Agents};
pub use batch::{dead_letter, set_aside, Batch, Finished};

/// The audit entry of an input applied outside a batch (a message set aside).
pub fn audit_entry(
    input: Input<'_>,
    checked: &Checked,
    p: &Processed,
) -> crate::domain::audit::Entry {
    audit::Seen::of(input, checked).entry(p)
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
}

impl Processed {
    pub fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            transition: None,
            detail: None,
            acknowledged: None,
            bad_signature: false,
        }
    }
}

/// A delivery, as far as processing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub meta: &'a DeliveryMeta,
}

/// What a batch applies: a delivery from the inbox, or a message an operator makes
/// with the CLI (trusted: not checked against the catalog or the agents, and a
/// rejection is returned to the operator instead of being dead-lettered).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Delivery(Inbound<'a>),
    Operator(&'a Envelope),
}

/// A delivery after the pure checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub envelope: Result<Envelope, Rejected>,
    pub trusted: bool,
    /// With `security.signatures = "verify"`: why the signature would have been
    /// refused (the message is applied all the same).
    pub bad_signature: Option<Rejected>,
}

impl Checked {
    fn valid(&self) -> Option<&Envelope> {
        self.envelope.as_ref().ok()
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

impl Security {
    /// Whether a delivery's signature is checked: not when signatures are off, nor for
    /// an operator's replay.
    fn checks_signature(&self, meta: &DeliveryMeta) -> bool {
        self.signatures != SignatureMode::Off && !self.is_operator_replay(meta)
    }

    /// Why a sender's signature does not stand, naming the keys registered for it.
    fn refusal(e: SignatureError, agent: &str, keys: &Agents) -> Rejected {
        let registered = keys.keys_of(agent);
        match e {
            SignatureError::Missing => Rejected::new(
                Reason::MissingSignature,
                "header.security.signature is missing and signatures are checked (docs/agents.md shows how to sign)",
            ),
            e => Rejected::new(
                Reason::BadSignature,
                format!(
                    "{e}; keys registered for {agent}: {}",
                    if registered.is_empty() {
                        "none (coordinator agent add --public-key)".to_string()
                    } else {
                        registered
                            .iter()
                            .map(|(id, _)| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ),
        }
    }

    /// The checks a delivery that passed validation still faces.
    fn check(
        &self,
        env: &Envelope,
        meta: &DeliveryMeta,
        now: DateTime<Utc>,
    ) -> Result<(), Rejected> {
        if self.is_operator_replay(meta) {
            return Ok(());
        }
        envelope::check_window(env, now, &self.window)?;
        if self.authenticate_senders {
            envelope::check_sender(env, meta)?;
        }
        Ok(())
    }

    /// Marked as a replay and published by the coordinator's own broker user (which the
    /// broker vouches for).
    fn is_operator_replay(&self, meta: &DeliveryMeta) -> bool {
        meta.replay_of.is_some() && meta.user_id.as_deref() == Some(self.own_user.as_str())
    }
}

/// An input after the checks that come before its signature.
struct Prechecked {
    envelope: Result<Envelope, Rejected>,
    /// The signature to verify, or why there is none to verify; `None` when it is not
    /// checked.
    signature: Option<Result<Pending, SignatureError>>,
}

impl Processor {
    /// The pure checks of one input; `keys` holds the senders' public keys.
    pub fn check(&self, input: Input<'_>, now: DateTime<Utc>, keys: &Agents) -> Checked {
        let pre = self.precheck(input, now, keys);
        let verdict = pre.signature.as_ref().map(|s| match s {
            Ok(pending) => pending.verify(),
            Err(e) => Err(e.clone()),
        });
        self.finish_check(input, pre.envelope, verdict, keys)
    }

    /// [`Processor::check`] of each input, in order, with the batch's signatures
    /// verified together (`signing::verify_all`: about half the cost of one at a time).
    pub fn check_all(
        &self,
        inputs: &[Input<'_>],
        now: DateTime<Utc>,
        keys: &Agents,
    ) -> Vec<Checked> {
        let pre: Vec<Prechecked> = inputs
            .iter()
            .map(|i| self.precheck(*i, now, keys))
            .collect();
        let ready: Vec<&Pending> = pre
            .iter()
            .filter_map(|p| p.signature.as_ref()?.as_ref().ok())
            .collect();
        let mut verdicts = signing::verify_all(&ready).into_iter();
        inputs
            .iter()
            .zip(pre)
            .map(|(input, p)| {
                let verdict = p.signature.map(|s| {
                    s.and_then(|_| verdicts.next().unwrap_or(Err(SignatureError::Missing)))
                });
                self.finish_check(*input, p.envelope, verdict, keys)
            })
            .collect()
    }

    /// Validation, the window and the sender, and the signature made ready to verify.
    fn precheck(&self, input: Input<'_>, now: DateTime<Utc>, keys: &Agents) -> Prechecked {
        let d = match input {
            Input::Operator(env) => {
                return Prechecked {
                    envelope: Ok(env.clone()),
                    signature: None,
                }
            }
            Input::Delivery(d) => d,
        };
        let envelope = envelope::validate_within(d.body, d.meta, &self.catalog, &self.limits, now)
            .and_then(|env| self.security.check(&env, d.meta, now).map(|()| env));
        let signature = match &envelope {
            Ok(env) if self.security.checks_signature(d.meta) => {
                let value: serde_json::Value = serde_json::from_slice(d.body).unwrap_or_default();
                let registered = keys.keys_of(&env.header.source.agent_id);
                Some(signing::prepare(
                    &value,
                    registered.iter().map(|(id, k)| (id.as_str(), k)),
                ))
            }
            _ => None,
        };
        Prechecked {
            envelope,
            signature,
        }
    }

    /// The checked input, given its signature's verdict.
    fn finish_check(
        &self,
        input: Input<'_>,
        envelope: Result<Envelope, Rejected>,
        verdict: Option<Result<String, SignatureError>>,
        keys: &Agents,
    ) -> Checked {
        let d = match input {
            Input::Operator(env) => {
                return Checked {
                    message_id: Some(env.header.message_id.clone()),
                    sender: None,
                    envelope,
                    trusted: true,
                    bad_signature: None,
                }
            }
            Input::Delivery(d) => d,
        };
        let mut bad_signature = None;
        let valid = match (envelope, verdict) {
            (Ok(env), Some(Err(e))) => {
                let rej = Security::refusal(e, &env.header.source.agent_id, keys);
                if self.security.signatures == SignatureMode::Verify {
                    bad_signature = Some(rej);
                    Ok(env)
                } else {
                    Err(rej)
                }
            }
            (envelope, _) => envelope,
        };
        match valid {
            Ok(env) => Checked {
                message_id: Some(env.header.message_id.clone()),
                sender: Some(env.header.source.agent_id.clone()),
                envelope: Ok(env),
                trusted: false,
                bad_signature,
            },
            Err(rej) => {
                // Only a rejected body is read a second time, for its ids.
                let (message_id, sender) = if d.body.len() <= self.limits.max_body_bytes {
                    envelope::best_effort_ids(d.body, d.meta)
                } else {
                    (d.meta.message_id.clone(), d.meta.app_id.clone())
                };
                Checked {
                    message_id: message_id.filter(|id| !id.contains('\0')),
                    sender,
                    envelope: Err(rej),
                    trusted: false,
                    bad_signature: None,
                }
            }
        }
    }
}

/// The message ids to claim, each once, in delivery order, and the sender of each
/// (the first to use it in the batch).
pub fn message_ids(checked: &[Checked]) -> (Vec<&str>, Vec<Option<&str>>) {
    let mut seen = HashSet::new();
    checked
        .iter()
        .filter_map(|c| Some((c.message_id.as_deref()?, c.sender.as_deref())))
        .filter(|(id, _)| seen.insert(*id))
        .unzip()
}

impl Processor {
    /// What a batch must read (before its ids are claimed: a duplicate costs a lock it did
    /// not need, which is rare), given the agents the cache holds.
    pub fn needs(&self, checked: &[Checked], agents: &AgentView) -> Needs {
        let mut n = Needs::default();
        for c in checked {
            let Some(env) = c.valid() else { continue };
            let h = &env.header;
            if !c.trusted && agents.type_of(&h.source.agent_id).is_none() {
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
                || c.trusted && operator::is_action(mt))
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
