//! What each input of a batch does: dedupe, the sender's identity, then dispatch by
//! message type to a heartbeat, an escalation acknowledgement, an emergency
//! (`incident`), a defined workflow (`workflows`), an operator's action (`operator`),
//! or an event the coordinator only observes.

use serde_json::json;

use super::audit::Seen;
use super::batch::{Applied, Batch};
use super::escalations::Acknowledged;
use super::messages::traced;
use super::rows::{ChainAck, Span, What, OUTCOME_OBSERVED};
use super::spans::{of_input, Placed};
use super::{acknowledged_escalation, incident, operator, workflows};
use super::{Admission, Input, Outcome, Processed};
use crate::domain::emergency;
use crate::domain::trace;
use protocol::catalog::valid_agent_id;
use protocol::envelope::Envelope;
use protocol::names::message_types::{ESCALATION_ACKNOWLEDGED, HEARTBEAT};

use crate::domain::agent_health;
use protocol::reject::{Reason, Rejected};

/// `["a", "b"]` as `a, b`, or `no role` when empty.
fn listed(roles: &std::collections::BTreeSet<String>) -> String {
    if roles.is_empty() {
        "no role".into()
    } else {
        roles.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl Batch<'_> {
    /// Applies one input (in delivery order), audited when the batch audits.
    pub fn apply(&mut self, input: Input<'_>) -> Processed {
        let seen = self.audit.is_some().then(|| Seen::of(input));
        let sent_from = self.out.outbox.len();
        let mut p = self.apply_admitted(input);
        self.trace(&input, &mut p, sent_from);
        if let Input::Delivery(_, Admission::Admitted(a)) = input {
            if let Some(rej) = &a.bad_signature {
                tracing::warn!(
                    reason = %rej.reason,
                    detail = %rej.detail,
                    "a message's signature does not stand; applied all the same (security.signatures = \"verify\")"
                );
                p.bad_signature = true;
            }
        }
        if let (Some(entries), Some(seen)) = (&mut self.audit, seen) {
            entries.push(seen.entry(&p));
        }
        p
    }

    fn apply_admitted(&mut self, input: Input<'_>) -> Processed {
        let (message_id, sender) = input.ids();
        if let Some(id) = message_id {
            if !self.claims.claimed.contains(id) || self.seen.contains_key(id) {
                let first = match self.seen.get(id) {
                    Some(in_batch) => in_batch.clone(),
                    None => self.claims.earlier.get(id).cloned(),
                };
                return match (first, sender, input) {
                    (Some(first), Some(sender), Input::Delivery(d, a)) if first != sender => {
                        self.conflict(d, a, &first)
                    }
                    _ => Processed::new(Outcome::Duplicate),
                };
            }
            self.seen.insert(id.to_string(), sender.map(str::to_string));
        }
        match input {
            Input::Delivery(d, a) => {
                let applied = match a {
                    Admission::Admitted(admitted) => self.accept(&admitted.envelope, false),
                    Admission::Refused(r) => Err(r.rejected.clone()),
                };
                applied.unwrap_or_else(|rej| self.reject(d, a, rej))
            }
            Input::Operator(env) => match self.accept(env, true) {
                Ok(p) => p,
                Err(rej) => {
                    let mut p = Processed::new(Outcome::Rejected(rej.reason));
                    p.detail = Some(rej.detail);
                    p
                }
            },
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
        if trusted && operator::is_action(mt) {
            return operator::apply(self, env);
        }
        if mt == HEARTBEAT {
            return self.heartbeat(env, registered.is_none());
        }
        if mt == ESCALATION_ACKNOWLEDGED {
            return self.acknowledge(env, trusted);
        }
        if mt == emergency::RESOLVED
            && !trusted
            && !self
                .p
                .security
                .emergency_resolvers
                .contains(&h.source.agent_type)
        {
            return Err(Rejected::new(
                Reason::Unauthorized,
                format!(
                    "role {:?} may not resolve an emergency; security.emergency_resolvers allows {}",
                    h.source.agent_type,
                    listed(&self.p.security.emergency_resolvers)
                ),
            ));
        }
        if mt == emergency::ALERT {
            return incident::start(self, env);
        }
        if emergency::is_input(mt) {
            return incident::advance(self, env);
        }
        if let Some(def) = self.p.workflows.started_by(mt) {
            return workflows::start(self, env, def);
        }
        if self.p.workflows.is_input(mt) {
            return workflows::advance(self, env);
        }
        Ok(self.observed(env))
    }

    /// An event the coordinator only records as seen.
    pub(super) fn observed(&mut self, env: &Envelope) -> Processed {
        self.out
            .outcomes
            .push((env.header.message_id.clone(), OUTCOME_OBSERVED));
        Processed::new(Outcome::Observed)
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
        let report = agent_health::report(&env.payload.data);
        self.out.heartbeats.push((
            h.source.agent_id.clone(),
            h.timestamp.min(self.now),
            agent_health::stored(&report),
        ));
        Ok(Processed::new(Outcome::Accepted))
    }

    /// `escalation_acknowledged`: acknowledges the chain of the escalation named in
    /// `payload.data.escalation_id`, an escalation of the message's workflow, when the
    /// sender's role may: the role the chain's last level paged, or one of
    /// `security.escalation_acknowledgers` (an operator always may).
    fn acknowledge(&mut self, env: &Envelope, trusted: bool) -> Applied {
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
        if !trusted {
            self.may_acknowledge(&h.source.agent_type, escalation_id, chain_id)?;
        }
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

    fn may_acknowledge(
        &self,
        role: &str,
        escalation_id: i64,
        chain_id: i64,
    ) -> Result<(), Rejected> {
        let Some(reached) = self
            .chains
            .iter()
            .filter(|c| c.chain_id == chain_id)
            .max_by_key(|c| c.level)
        else {
            return Ok(());
        };
        let acknowledgers = &self.p.security.escalation_acknowledgers;
        if reached.target == role || acknowledgers.contains(role) {
            return Ok(());
        }
        Err(Rejected::new(
            Reason::Unauthorized,
            format!(
                "role {role:?} may not acknowledge escalation {escalation_id}: its chain has reached \
                 level {} ({}); {} or security.escalation_acknowledgers ({}) may",
                reached.level,
                reached.target,
                reached.target,
                listed(acknowledgers)
            ),
        ))
    }
}

impl Batch<'_> {
    /// Traces what applying `input` did: the messages it queued (from `sent_from` on)
    /// name its span as their sender, and its span (with the workflow's root span if
    /// it created the workflow) is kept to export after the commit.
    pub(super) fn trace(&mut self, input: &Input<'_>, p: &mut Processed, sent_from: usize) {
        let placed = match p.outcome {
            Outcome::Duplicate => None,
            _ => of_input(self.p, input),
        };
        let Some(Placed {
            span,
            parent,
            link,
            root: root_id,
            envelope: env,
        }) = placed
        else {
            for m in self.out.outbox.iter_mut().skip(sent_from) {
                let alone = trace::alone(&m.message_id);
                traced(m, &alone, None);
            }
            return;
        };
        for m in self.out.outbox.iter_mut().skip(sent_from) {
            traced(m, &span, Some(parent));
        }
        p.span = Some(span);
        if !self.p.keep_spans {
            return;
        }
        let h = &env.header;
        let created = p
            .transition
            .as_ref()
            .is_some_and(|(from, _)| from.is_empty());
        if created && root_id == h.correlation_id {
            let root = trace::root(root_id);
            self.out.spans.push(Span {
                context: root,
                parent: None,
                link: None,
                what: What::Workflow,
                workflow_id: root_id.to_string(),
                subject: root_id.to_string(),
                message_type: h.message_type.clone(),
                kind: p.kind,
                outcome: "created",
                detail: None,
            });
        }
        self.out.spans.push(Span {
            context: span,
            parent: Some(parent),
            link,
            what: What::Message,
            workflow_id: h.correlation_id.clone(),
            subject: h.message_id.clone(),
            message_type: h.message_type.clone(),
            kind: p.kind,
            outcome: p.outcome.label(),
            detail: p.detail.clone(),
        });
    }
}
