//! A batch of inputs applied in memory, in delivery order, against what the batch read
//! under lock; the rows to write are collected as it goes. What each kind of input does
//! is in `dispatch` (and the modules it sends inputs to); this holds the batch's state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::escalations;
use super::messages::{to_agent, traced_alone};
use super::model::Wf;
use super::rows::{
    ChainMember, Claims, Loaded, NewDeadLetter, NewEvent, OutboxMessage, Writes, OUTCOME_REJECTED,
};
use super::{body_digest, Admission, AgentView, Agents, Inbound, Outcome, Processed, Processor};
use crate::domain::definition::Definition;
use crate::domain::ids;
use crate::domain::sla::Deadline;
use protocol::envelope::{self, has_nul, Envelope, Priority};
use protocol::names::message_types::MESSAGE_REJECTED;
use protocol::payloads;
use protocol::reject::{Reason, Rejected};

/// A message's result before it is recorded: accepted (with what it did) or rejected.
pub(super) type Applied = Result<Processed, Rejected>;

/// A workflow (or incident) to create.
pub(super) struct Creating<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub state: &'a str,
    pub title: Option<&'a str>,
    pub definition: Option<&'a Definition>,
    /// Set for a follow-on (its parent's); otherwise the member of `payload.data` the
    /// definition names as its key.
    pub business_key: Option<String>,
}

pub struct Batch<'p> {
    pub(super) p: &'p Processor,
    pub(super) now: DateTime<Utc>,
    pub(super) claims: Claims,
    /// Message ids applied so far, with their senders: a repeat later in the batch is a
    /// duplicate (or a conflict, from another sender).
    pub(super) seen: HashMap<String, Option<String>>,
    pub(super) workflows: HashMap<String, Wf>,
    pub(super) agents: AgentView,
    all_agents: Option<Vec<(String, String)>>,
    pub(super) chains: Vec<ChainMember>,
    escalation_ids: VecDeque<i64>,
    pub(super) out: Writes,
    /// Ladder deadlines of the escalations raised (their ids are known before writing).
    pub(super) deadlines: Vec<Deadline>,
    /// A dry run: its rejections are reported, not logged.
    quiet: bool,
    /// The audit entries of its inputs, when the batch audits (the audit log is on and
    /// its chain's head is locked).
    pub(super) audit: Option<Vec<crate::domain::audit::Entry>>,
    audit_head: Option<crate::domain::audit::Head>,
}

/// What a finished batch hands to the pipeline.
pub struct Finished {
    pub writes: Writes,
    pub deadlines: Vec<Deadline>,
    /// Agents the cache did not hold, found or registered by this batch.
    pub agents: Vec<(String, String)>,
}

impl<'p> Batch<'p> {
    pub fn new(
        p: &'p Processor,
        loaded: Loaded,
        claims: Claims,
        agents: Arc<Agents>,
        now: DateTime<Utc>,
    ) -> Batch<'p> {
        let mut workflows: HashMap<String, Wf> = loaded
            .workflows
            .into_iter()
            .map(|w| (w.id.clone(), Wf::loaded(w, now)))
            .collect();
        for c in loaded.clocks {
            if let Some(w) = workflows.get_mut(&c.workflow_id) {
                w.add_loaded_clock(c);
            }
        }
        let mut view = AgentView::new(agents);
        for (id, ty) in loaded.agents {
            view.add(id, ty);
        }
        Batch {
            p,
            now,
            claims,
            seen: HashMap::new(),
            workflows,
            agents: view,
            all_agents: loaded.all_agents,
            chains: loaded.chains,
            escalation_ids: loaded.escalation_ids.into(),
            out: Writes::default(),
            deadlines: Vec::new(),
            quiet: false,
            audit: (p.security.audit && loaded.audit_head.is_some()).then(Vec::new),
            audit_head: loaded.audit_head,
        }
    }

    /// Appends a history row that changes no state.
    pub(super) fn note(
        &mut self,
        workflow_id: &str,
        state: &str,
        message_type: &str,
        source: &str,
        message_id: Option<&str>,
        detail: Value,
    ) {
        let Some(w) = self.workflows.get_mut(workflow_id) else {
            return;
        };
        let ordinal = w.next_event();
        self.out.events.push(NewEvent {
            workflow_id: workflow_id.to_string(),
            ordinal,
            message_id: message_id.map(str::to_string),
            message_type: message_type.to_string(),
            source_agent_id: Some(source.to_string()),
            from_state: Some(state.to_string()),
            to_state: state.to_string(),
            at: self.now,
            detail,
        });
    }

    /// Creates the workflow (or incident) a message starts; rejected if the id is taken.
    pub(super) fn create(&mut self, env: &Envelope, c: Creating<'_>) -> Result<(), Rejected> {
        let Creating {
            id,
            kind,
            state,
            title,
            definition,
            business_key,
        } = c;
        if self.workflows.contains_key(id) {
            return Err(Rejected::new(
                Reason::WorkflowExists,
                format!("{kind} {id} already exists; a new one needs a new correlation_id"),
            ));
        }
        // The member of payload.data its definition names as the business key.
        let business_key = business_key.or_else(|| {
            definition
                .and_then(|d| d.key)
                .and_then(|k| env.payload.data.get(k))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        });
        let key_name = definition
            .and_then(|d| d.key)
            .filter(|_| business_key.is_some());
        let wf = Wf {
            id: id.to_string(),
            kind: kind.to_string(),
            state: state.to_string(),
            round: 1,
            business_key,
            origin: super::model::Origin::New {
                key_name,
                title: title.map(str::to_string),
                data: env.payload.data.clone(),
                created_at: self.now,
            },
            updated_at: self.now,
            completed_at: None,
            clocks: Vec::new(),
            events: 0,
            definition: definition
                .map_or((None, None), |d| (Some(d.version), Some(d.hash.clone()))),
        };
        self.workflows.insert(id.to_string(), wf);
        Ok(())
    }

    /// The message's workflow, checked to be of `kind` in a state `parse` knows: its
    /// state and round, or why the message does not apply to it.
    pub(super) fn locked<S>(
        &self,
        env: &Envelope,
        kind: &str,
        parse: impl Fn(&str) -> Option<S>,
    ) -> Result<(S, i32), Rejected> {
        let h = &env.header;
        let Some(w) = self.workflows.get(&h.correlation_id) else {
            return Err(Rejected::new(
                Reason::UnknownWorkflow,
                format!(
                    "header.correlation_id {:?} names no workflow or incident",
                    h.correlation_id
                ),
            ));
        };
        match parse(&w.state) {
            Some(state) if w.kind == kind => Ok((state, w.round)),
            _ => Err(Rejected::new(
                Reason::NotAcceptedInState,
                format!(
                    "{} is a {} workflow in state {}; {} does not apply to it",
                    h.correlation_id, w.kind, w.state, h.message_type
                ),
            )),
        }
    }

    /// The message's workflow, checked to be of a defined kind in a state of its
    /// definition: the definition, the state and the round, or why the message does
    /// not apply to it (no such workflow; an incident).
    pub(super) fn locked_defined(
        &self,
        env: &Envelope,
    ) -> Result<(&'static Definition, &'static str, i32), Rejected> {
        let def = self
            .workflows
            .get(&env.header.correlation_id)
            .and_then(|w| {
                self.p
                    .workflows
                    .version_of(&w.kind, w.definition.1.as_deref())
            });
        let (state, round) = self.locked(env, def.map_or("", |d| d.name), |s| {
            def.and_then(|d| d.state_name(s))
        })?;
        match def {
            Some(def) => Ok((def, state, round)),
            None => Err(Rejected::new(Reason::UnknownWorkflow, "no such workflow")),
        }
    }

    /// Every registered agent (for an emergency), those registered by this batch too.
    pub(super) fn all_agents(&self) -> Vec<(String, String)> {
        let mut all = self.all_agents.clone().unwrap_or_default();
        for r in &self.out.registrations {
            if !all.iter().any(|(id, _)| *id == r.0) {
                all.push(r.clone());
            }
        }
        all.sort();
        all
    }

    /// An escalation id reserved for this batch.
    pub(super) fn escalation_id(&mut self) -> Option<i64> {
        self.escalation_ids.pop_front()
    }

    pub(super) fn reserved_escalation_ids(&self) -> usize {
        self.escalation_ids.len()
    }

    /// A batch whose rejections are not logged: what a dry run would do is reported by
    /// its caller, and nothing of it happens.
    pub fn quiet(mut self) -> Batch<'p> {
        self.quiet = true;
        self
    }

    /// Dead-letters a delivery and tells its sender, if known.
    pub(super) fn reject(&mut self, d: Inbound<'_>, a: &Admission, rej: Rejected) -> Processed {
        self.reject_as(d, a, rej, true)
    }

    /// A message whose id another sender used first: kept and its sender told, but the
    /// id's outcome stays the first message's.
    pub(super) fn conflict(&mut self, d: Inbound<'_>, a: &Admission, first: &str) -> Processed {
        let rej = Rejected::new(
            Reason::DuplicateIdConflict,
            format!(
                "message_id {:?} was already used by {first:?}; every message needs an id of its own (a UUID)",
                a.message_id().unwrap_or("")
            ),
        );
        self.reject_as(d, a, rej, false)
    }

    fn reject_as(
        &mut self,
        d: Inbound<'_>,
        a: &Admission,
        rej: Rejected,
        owns_id: bool,
    ) -> Processed {
        if !self.quiet {
            let input = super::Input::Delivery(d, a);
            let placed = super::spans::of_input(self.p, &input);
            tracing::warn!(
                message_id = a.message_id().unwrap_or(""),
                workflow_id = d.meta.correlation_id.as_deref().unwrap_or(""),
                trace_id = placed.map(|p| p.span.trace_id_hex()).unwrap_or_default(),
                reason = %rej.reason,
                detail = %rej.detail,
                "message rejected"
            );
        }
        let message_id = a.message_id();
        let sender = a.sender_id().filter(|s| !s.contains('\0'));
        self.out.dead_letters.push(dead_letter(
            d,
            message_id,
            sender,
            &rej,
            self.p.limits.max_body_bytes,
            self.now,
        ));
        if let (Some(id), true) = (message_id, owns_id) {
            self.out.outcomes.push((id.to_string(), OUTCOME_REJECTED));
        }
        if let Some(agent) = sender {
            // A conflict's notice is named after its sender too: the id is not its own.
            let cause = match (message_id, owns_id) {
                (Some(id), true) => id.to_string(),
                (Some(id), false) => format!("{id} from {agent}"),
                (None, _) => body_digest(d.body),
            };
            self.out.outbox.push(rejection_notice(
                d, &cause, message_id, agent, &rej, self.now,
            ));
        }
        let mut p = Processed::new(Outcome::Rejected(rej.reason));
        p.detail = Some(rej.detail);
        p
    }

    /// The rows collected, with the workflows' and clocks' final state.
    pub fn finish(mut self) -> Finished {
        let mut ids: Vec<&String> = self.workflows.keys().collect();
        ids.sort();
        for id in ids {
            let w = &self.workflows[id];
            match w.row() {
                super::model::WorkflowRow::Unchanged => {}
                super::model::WorkflowRow::Changed(c) => self.out.workflow_changes.push(c),
                super::model::WorkflowRow::New(n) => self.out.new_workflows.push(n),
            }
            w.clock_rows(&mut self.out.new_clocks, &mut self.out.clock_changes);
        }
        if let Some(entries) = self.audit.take() {
            self.out.audit(self.audit_head.as_ref(), self.now, entries);
        }
        Finished {
            agents: self
                .agents
                .added()
                .map(|(a, t)| (a.to_string(), t.to_string()))
                .collect(),
            writes: self.out,
            deadlines: self.deadlines,
        }
    }
}

/// A `message_rejected` notice to the sender's commands queue.
fn rejection_notice(
    d: Inbound<'_>,
    cause: &str,
    message_id: Option<&str>,
    agent: &str,
    rej: &Rejected,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let data = payloads::to_value(&payloads::MessageRejected {
        rejected_message_id: message_id.map(str::to_string),
        reason: rej.reason.as_str().to_string(),
        detail: rej.detail.clone(),
    });
    let correlation = d
        .meta
        .correlation_id
        .clone()
        .filter(|c| !c.is_empty() && c.len() <= envelope::MAX_ID_LEN && !c.contains('\0'))
        .unwrap_or_else(|| agent.to_string());
    to_agent(
        ids::derived(cause, "rejected"),
        &correlation,
        message_id,
        MESSAGE_REJECTED,
        agent,
        data,
        Priority::Normal,
        now,
    )
}

/// A delivery kept whole in `dead_letters` (and as JSON when it is JSON that can be
/// stored).
pub fn dead_letter(
    d: Inbound<'_>,
    message_id: Option<&str>,
    sender: Option<&str>,
    rej: &Rejected,
    max_body_bytes: usize,
    now: DateTime<Utc>,
) -> NewDeadLetter {
    let body_json: Option<Value> = (d.body.len() <= max_body_bytes)
        .then(|| serde_json::from_slice(d.body).ok())
        .flatten()
        .filter(|v| !has_nul(v));
    let properties = serde_json::to_value(d.meta).unwrap_or_default();
    let properties = if has_nul(&properties) {
        json!({})
    } else {
        properties
    };
    NewDeadLetter {
        message_id: message_id.filter(|s| !s.contains('\0')).map(str::to_string),
        reason: rej.reason.as_str().to_string(),
        detail: rej.detail.replace('\0', "\u{fffd}"),
        routing_key: d.meta.routing_key.replace('\0', "\u{fffd}"),
        body: d.body.to_vec(),
        body_json,
        properties,
        source_agent_id: sender.filter(|s| !s.contains('\0')).map(str::to_string),
        at: now,
    }
}

/// A delivery set aside because the database refused it on every attempt: its dead
/// letter and its sender's notice, in a batch of its own.
pub fn set_aside(
    p: &Processor,
    d: Inbound<'_>,
    admission: &Admission,
    error: &str,
    attempts: u32,
    now: DateTime<Utc>,
) -> Writes {
    let rej = Rejected::new(
        Reason::ProcessingFailed,
        format!("the database refused to store what this message asked for: {error}"),
    );
    let mut w = Writes::default();
    let message_id = admission.message_id();
    let sender = admission.sender_id().filter(|s| !s.contains('\0'));
    w.dead_letters.push(dead_letter(
        d,
        message_id,
        sender,
        &rej,
        p.limits.max_body_bytes,
        now,
    ));
    if let Some(agent) = sender {
        let cause = message_id.map_or_else(|| body_digest(d.body), str::to_string);
        w.outbox.push(traced_alone(rejection_notice(
            d, &cause, message_id, agent, &rej, now,
        )));
    }
    // Ops hear of it at once: it failed every retry, so it needs a person.
    w.outbox.push(traced_alone(escalations::set_aside_notice(
        message_id,
        d.meta.correlation_id.as_deref(),
        sender,
        attempts,
        error,
        now,
    )));
    if let Some(id) = message_id {
        w.outcomes.push((id.to_string(), OUTCOME_REJECTED));
    }
    w
}
