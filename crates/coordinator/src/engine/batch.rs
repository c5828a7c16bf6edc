//! A batch of messages applied in memory, in delivery order, against what the batch
//! read under lock; the rows to write are collected as it goes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::escalations::{self, Acknowledged};
use super::messages::to_agent;
use super::model::Wf;
use super::rows::{
    ChainAck, ChainMember, Loaded, NewDeadLetter, NewEvent, OutboxMessage, Writes,
    OUTCOME_OBSERVED, OUTCOME_REJECTED,
};
use super::{
    acknowledged_escalation, body_digest, feature, incident, AgentView, Agents, Checked, Inbound,
    Input, Outcome, Processed, Processor,
};
use crate::domain::sla::Deadline;
use crate::domain::{emergency, ids, workflow};
use protocol::catalog::valid_agent_id;
use protocol::envelope::{self, has_nul, Envelope};
use protocol::names::message_types::{ESCALATION_ACKNOWLEDGED, HEARTBEAT, MESSAGE_REJECTED};
use protocol::payloads;
use protocol::reject::{Reason, Rejected};

/// A message's result before it is recorded: accepted (with what it did) or rejected.
pub(super) type Applied = Result<Processed, Rejected>;

pub struct Batch<'p> {
    pub(super) p: &'p Processor,
    pub(super) now: DateTime<Utc>,
    claimed: HashSet<String>,
    /// Message ids applied so far: a repeat later in the batch is a duplicate.
    seen: HashSet<String>,
    pub(super) workflows: HashMap<String, Wf>,
    pub(super) agents: AgentView,
    all_agents: Option<Vec<(String, String)>>,
    chains: Vec<ChainMember>,
    escalation_ids: VecDeque<i64>,
    pub(super) out: Writes,
    /// Ladder deadlines of the escalations raised (their ids are known before writing).
    pub(super) deadlines: Vec<Deadline>,
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
        claimed: HashSet<String>,
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
            claimed,
            seen: HashSet::new(),
            workflows,
            agents: view,
            all_agents: loaded.all_agents,
            chains: loaded.chains,
            escalation_ids: loaded.escalation_ids.into(),
            out: Writes::default(),
            deadlines: Vec::new(),
        }
    }

    /// Applies one input (in delivery order).
    pub fn apply(&mut self, input: Input<'_>, checked: Checked) -> Processed {
        if let Some(id) = &checked.message_id {
            if !self.claimed.contains(id) || !self.seen.insert(id.clone()) {
                return Processed::new(Outcome::Duplicate);
            }
        }
        let applied = match &checked.envelope {
            Ok(env) => self.accept(env, checked.trusted),
            Err(rej) => Err(rej.clone()),
        };
        match (applied, input) {
            (Ok(p), _) => p,
            (Err(rej), Input::Delivery(d)) => self.reject(d, &checked, rej),
            (Err(rej), Input::Operator(_)) => {
                let mut p = Processed::new(Outcome::Rejected(rej.reason));
                p.detail = Some(rej.detail);
                p
            }
        }
    }

    /// Everything after the pure checks.
    fn accept(&mut self, env: &Envelope, trusted: bool) -> Applied {
        let h = &env.header;
        let registered = self.agents.type_of(&h.source.agent_id).map(str::to_string);
        if !trusted {
            match &registered {
                Some(t) if *t != h.source.agent_type => {
                    return Err(Rejected::new(
                        Reason::AgentTypeMismatch,
                        format!(
                            "agent {} is registered as {t:?} but header.source.agent_type is {:?}",
                            h.source.agent_id, h.source.agent_type
                        ),
                    ))
                }
                None if !self.p.auto_register => {
                    return Err(Rejected::new(
                        Reason::UnknownAgent,
                        format!(
                            "agent {} is not registered (register it with `coordinator agent add`)",
                            h.source.agent_id
                        ),
                    ))
                }
                _ => {}
            }
        }
        let mt = h.message_type.as_str();
        if trusted && super::operator::is_action(mt) {
            return super::operator::apply(self, env);
        }
        if mt == HEARTBEAT {
            return self.heartbeat(env, registered.is_none());
        }
        if mt == ESCALATION_ACKNOWLEDGED {
            return self.acknowledge(env);
        }
        if mt == emergency::ALERT {
            return incident::start(self, env);
        }
        if emergency::is_input(mt) {
            return incident::advance(self, env);
        }
        if mt == workflow::START_MESSAGE {
            return feature::start(self, env);
        }
        if workflow::is_input(mt) {
            return feature::advance(self, env);
        }
        self.out
            .outcomes
            .push((h.message_id.clone(), OUTCOME_OBSERVED));
        Ok(Processed::new(Outcome::Observed))
    }

    fn heartbeat(&mut self, env: &Envelope, unregistered: bool) -> Applied {
        let h = &env.header;
        if h.correlation_id != h.source.agent_id {
            return Err(Rejected::new(
                Reason::InvalidField,
                format!(
                    "a heartbeat's header.correlation_id must be its agent id {:?}, got {:?}",
                    h.source.agent_id, h.correlation_id
                ),
            ));
        }
        if unregistered {
            if !valid_agent_id(&h.source.agent_id) {
                return Err(Rejected::new(
                    Reason::InvalidField,
                    format!(
                        "header.source.agent_id {:?} cannot name queues: use 1-200 letters, digits, '.', '_' or '-'",
                        h.source.agent_id
                    ),
                ));
            }
            let (id, ty) = (h.source.agent_id.clone(), h.source.agent_type.clone());
            self.agents.add(id.clone(), ty.clone());
            self.out.registrations.push((id, ty));
        }
        self.out
            .heartbeats
            .push((h.source.agent_id.clone(), h.timestamp.min(self.now)));
        Ok(Processed::new(Outcome::Accepted))
    }

    /// `escalation_acknowledged`: acknowledges the chain of the escalation named in
    /// `payload.data.escalation_id`, an escalation of the message's workflow.
    fn acknowledge(&mut self, env: &Envelope) -> Applied {
        let h = &env.header;
        let Some(escalation_id) = acknowledged_escalation(env) else {
            return Err(Rejected::new(
                Reason::InvalidField,
                "payload.data.escalation_id must be the id of the escalation (a number)",
            ));
        };
        let Some(state) = self
            .workflows
            .get(&h.correlation_id)
            .map(|w| w.state.clone())
        else {
            return Err(Rejected::new(
                Reason::UnknownWorkflow,
                format!(
                    "header.correlation_id {:?} names no workflow",
                    h.correlation_id
                ),
            ));
        };
        let Some(chain_id) = self
            .chains
            .iter()
            .find(|c| c.id == escalation_id && c.workflow_id == h.correlation_id)
            .map(|c| c.chain_id)
        else {
            return Err(Rejected::new(
                Reason::UnknownEscalation,
                format!(
                    "escalation {escalation_id} is not an escalation of {}",
                    h.correlation_id
                ),
            ));
        };
        let mut ids = Vec::new();
        for c in self
            .chains
            .iter_mut()
            .filter(|c| c.chain_id == chain_id && c.open)
        {
            c.open = false;
            ids.push(c.id);
        }
        let workflow_id = h.correlation_id.clone();
        let acknowledged = if ids.is_empty() {
            Acknowledged::Already {
                workflow_id,
                chain_id,
            }
        } else {
            self.out.chain_acks.push(ChainAck {
                chain_id,
                by: h.source.agent_id.clone(),
                at: self.now,
            });
            let detail =
                json!({"escalation_id": escalation_id, "chain_id": chain_id, "acknowledged": ids});
            self.note(
                &workflow_id,
                &state,
                ESCALATION_ACKNOWLEDGED,
                &h.source.agent_id,
                Some(&h.message_id),
                detail,
            );
            Acknowledged::Now {
                workflow_id,
                chain_id,
                ids,
            }
        };
        let mut p = Processed::new(Outcome::Accepted);
        p.acknowledged = Some(acknowledged);
        Ok(p)
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
    pub(super) fn create(
        &mut self,
        env: &Envelope,
        kind: &str,
        state: &str,
        epic_id: Option<&str>,
        title: Option<&str>,
    ) -> Result<(), Rejected> {
        let h = &env.header;
        if self.workflows.contains_key(&h.correlation_id) {
            return Err(Rejected::new(
                Reason::WorkflowExists,
                format!(
                    "{kind} {} already exists; a new one needs a new correlation_id",
                    h.correlation_id
                ),
            ));
        }
        let wf = Wf {
            id: h.correlation_id.clone(),
            kind: kind.to_string(),
            state: state.to_string(),
            round: 1,
            origin: super::model::Origin::New {
                epic_id: epic_id.map(str::to_string),
                title: title.map(str::to_string),
                data: env.payload.data.clone(),
                created_at: self.now,
            },
            updated_at: self.now,
            completed_at: None,
            clocks: Vec::new(),
            events: 0,
        };
        self.workflows.insert(h.correlation_id.clone(), wf);
        Ok(())
    }

    /// The message's workflow, checked to be of `kind` in a state `parse` knows: its
    /// state and round, or why the message does not apply to it.
    pub(super) fn locked<S>(
        &self,
        env: &Envelope,
        kind: &str,
        parse: fn(&str) -> Option<S>,
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

    /// Dead-letters a delivery and tells its sender, if known.
    fn reject(&mut self, d: Inbound<'_>, c: &Checked, rej: Rejected) -> Processed {
        tracing::warn!(
            message_id = c.message_id.as_deref().unwrap_or(""),
            workflow_id = d.meta.correlation_id.as_deref().unwrap_or(""),
            reason = %rej.reason,
            detail = %rej.detail,
            "message rejected"
        );
        let message_id = c.message_id.as_deref();
        let sender = c.sender.as_deref().filter(|s| !s.contains('\0'));
        self.out.dead_letters.push(dead_letter(
            d,
            message_id,
            sender,
            &rej,
            self.p.limits.max_body_bytes,
            self.now,
        ));
        if let Some(id) = message_id {
            self.out.outcomes.push((id.to_string(), OUTCOME_REJECTED));
        }
        if let Some(agent) = sender {
            self.out
                .outbox
                .push(rejection_notice(d, message_id, agent, &rej, self.now));
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
    message_id: Option<&str>,
    agent: &str,
    rej: &Rejected,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let cause = message_id.map_or_else(|| body_digest(d.body), str::to_string);
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
        ids::derived(&cause, "rejected"),
        &correlation,
        message_id,
        MESSAGE_REJECTED,
        agent,
        data,
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
    checked: &Checked,
    error: &str,
    attempts: u32,
    now: DateTime<Utc>,
) -> Writes {
    let rej = Rejected::new(
        Reason::ProcessingFailed,
        format!("the database refused to store what this message asked for: {error}"),
    );
    let mut w = Writes::default();
    let sender = checked.sender.as_deref().filter(|s| !s.contains('\0'));
    w.dead_letters.push(dead_letter(
        d,
        checked.message_id.as_deref(),
        sender,
        &rej,
        p.limits.max_body_bytes,
        now,
    ));
    if let Some(agent) = sender {
        w.outbox.push(rejection_notice(
            d,
            checked.message_id.as_deref(),
            agent,
            &rej,
            now,
        ));
    }
    // Ops hear of it at once: it failed every retry, so it needs a person.
    w.outbox.push(escalations::set_aside_notice(
        checked.message_id.as_deref(),
        d.meta.correlation_id.as_deref(),
        sender,
        attempts,
        error,
        now,
    ));
    if let Some(id) = &checked.message_id {
        w.outcomes.push((id.clone(), OUTCOME_REJECTED));
    }
    w
}
