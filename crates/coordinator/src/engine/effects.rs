//! The one interpreter of effects: turns a decision (a state machine's, or an
//! operator's) into the batch's rows: the workflow's new state, its history, clocks,
//! escalations and the messages to send.

use serde_json::{json, Value};

use super::batch::{Applied, Batch};
use super::escalations::{self, Raise};
use super::messages::{caused_to_role, outgoing};
use super::model::{Armed, Clock, ClockStatus};
use super::rows::NewEvent;
use super::{Outcome, Processed};
use crate::domain::effect::Effect;
use crate::domain::ids;
use protocol::envelope::{Destination, Envelope, Payload, Priority};
use protocol::names::exchanges;
use protocol::names::message_types::ESCALATION_RAISED;
use protocol::payloads;
use protocol::reject::{Reason, Rejected};

/// A decision to persist.
pub(super) struct Change<'a> {
    /// The workflow it changes: the message's (`None`), or a follow-on it starts.
    pub workflow_id: Option<&'a str>,
    /// The state before; `None` when this message created the workflow.
    pub from: Option<&'a str>,
    pub to: &'a str,
    pub round: i32,
    pub terminal: bool,
    pub effects: &'a [Effect],
    /// Who closes the clocks the effects meet or cancel (by default the message id).
    pub closed_by: Option<&'a str>,
    /// What the history row records besides the effects (an operator's reason).
    pub note: Option<&'a Value>,
}

impl<'a> Change<'a> {
    /// A state machine's decision on an agent's message: the clocks it meets or cancels
    /// are closed by the message, and the history row records no note.
    pub(super) fn decided(
        from: Option<&'a str>,
        to: &'a str,
        round: i32,
        terminal: bool,
        effects: &'a [Effect],
    ) -> Change<'a> {
        Change {
            workflow_id: None,
            from,
            to,
            round,
            terminal,
            effects,
            closed_by: None,
            note: None,
        }
    }
}

impl Batch<'_> {
    pub(super) fn persist(&mut self, env: &Envelope, c: Change<'_>) -> Applied {
        let h = &env.header;
        let wf = c.workflow_id.unwrap_or(&h.correlation_id);
        let now = self.now;
        // The batch reserves an escalation id for every message that may escalate
        // (Definitions::may_escalate); checked before anything is collected, so a shortfall
        // (a bug, not input) leaves nothing half-applied.
        let escalating = c
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Escalate { .. }))
            .count();
        if self.reserved_escalation_ids() < escalating {
            return Err(Rejected::new(
                Reason::ProcessingFailed,
                "no escalation id was reserved for this message",
            ));
        }
        let mut detail = EventDetail {
            note: c.note,
            ..Default::default()
        };
        let closed_by = c.closed_by.unwrap_or(&h.message_id);
        for effect in c.effects {
            match effect {
                Effect::SendTask {
                    task,
                    to_role: role,
                } => {
                    let key = format!("task:{task}:{role}");
                    let m = caused_to_role(env, wf, c.to, c.round, task, role, &key, now);
                    detail.sent(task, role, &m.message_id);
                    self.out.outbox.push(m);
                }
                Effect::Notify {
                    message_type,
                    to_role: role,
                } => {
                    let key = format!("notify:{message_type}:{role}");
                    let m = caused_to_role(env, wf, c.to, c.round, message_type, role, &key, now);
                    detail.sent(message_type, role, &m.message_id);
                    self.out.outbox.push(m);
                }
                Effect::Broadcast { message_type } => {
                    let m = outgoing(
                        ids::derived(&h.message_id, &format!("broadcast:{message_type}")),
                        wf,
                        Some(&h.message_id),
                        message_type,
                        exchanges::FANOUT,
                        "",
                        Some(Destination {
                            agent_id: None,
                            agent_type: None,
                            broadcast: true,
                        }),
                        Payload {
                            data: env.payload.data.clone(),
                            metadata: payloads::to_value(&payloads::BroadcastMetadata {
                                incident_id: wf.to_string(),
                                raised_by: h.source.agent_id.clone(),
                            }),
                        },
                        // Everyone is told of an emergency at once.
                        Priority::Critical,
                        now,
                    );
                    detail.sent(message_type, "everyone", &m.message_id);
                    self.out.outbox.push(m);
                }
                Effect::ArmClock {
                    clock,
                    owner_role,
                    subject_agent_id,
                    round,
                    due_at,
                } => {
                    let owner_agent = match subject_agent_id {
                        Some(agent) => Some(agent.clone()),
                        None if self.p.catalog.is_role(owner_role) => {
                            self.agents.sole_of(owner_role).map(str::to_string)
                        }
                        None => None,
                    };
                    let armed = Clock {
                        id: None,
                        clock: clock.to_string(),
                        round: *round,
                        owner_role: owner_role.clone(),
                        owner_agent_id: owner_agent,
                        subject_agent_id: subject_agent_id.clone(),
                        armed: Some(Armed {
                            severity: self.p.durations.severity(clock).as_str().to_string(),
                            armed_at: now,
                            warn_at: self.p.durations.warn_at(now, *due_at),
                            due_at: *due_at,
                        }),
                        loaded: None,
                        moved: None,
                        status: ClockStatus::Armed,
                        closed_at: None,
                        closed_by: None,
                        dirty: false,
                    };
                    if let Some(w) = self.workflows.get_mut(wf) {
                        w.arm(armed);
                    }
                    detail.armed.push(json!({"clock": clock, "round": round, "agent": subject_agent_id, "due_at": due_at}));
                }
                Effect::MeetClock(r) => {
                    if let Some(w) = self.workflows.get_mut(wf) {
                        w.close(r, ClockStatus::Met, Some(closed_by), now);
                    }
                    detail.met.push(
                        json!({"clock": r.clock, "round": r.round, "agent": r.subject_agent_id}),
                    );
                }
                Effect::CancelClock(r) => {
                    if let Some(w) = self.workflows.get_mut(wf) {
                        w.close(r, ClockStatus::Cancelled, Some(closed_by), now);
                    }
                    detail.cancelled.push(
                        json!({"clock": r.clock, "round": r.round, "agent": r.subject_agent_id}),
                    );
                }
                Effect::MoveClock { clock: r, due_at } => {
                    let durations = &self.p.durations;
                    let was = self.workflows.get_mut(wf).and_then(|w| {
                        w.move_clock(r, *due_at, |a, d| durations.warn_at(a, d), now)
                    });
                    detail.moved.push(json!({"clock": r.clock, "round": r.round, "agent": r.subject_agent_id, "from": was, "to": due_at}));
                }
                Effect::Escalate {
                    reason,
                    owner_role,
                    severity,
                } => {
                    let Some(id) = self.escalation_id() else {
                        continue;
                    };
                    let step = self
                        .p
                        .ladders
                        .for_escalation(reason, *severity)
                        .first(owner_role, now);
                    let raised = escalations::raise(
                        Raise {
                            workflow_id: wf,
                            chain_id: None,
                            clock: reason,
                            clock_id: None,
                            owner_role,
                            agent_id: Some(&h.source.agent_id),
                            severity: *severity,
                            step: &step,
                            message_type: ESCALATION_RAISED,
                            message_id: ids::derived(
                                &h.message_id,
                                &format!("escalation:{reason}"),
                            ),
                            causation_id: Some(&h.message_id),
                            cause: payloads::EscalationCause {
                                reason: Some(reason.to_string()),
                                detail: Some(env.payload.data.clone()),
                                ..Default::default()
                            },
                            now,
                        },
                        id,
                    );
                    detail.escalations.push(json!({"id": id, "reason": reason, "severity": severity.as_str(), "target": step.target}));
                    self.deadlines.push(raised.next);
                    self.out.escalations.push(raised.row);
                    self.out.outbox.push(raised.message);
                }
            }
        }
        let Some(w) = self.workflows.get_mut(wf) else {
            return Err(Rejected::new(
                Reason::UnknownWorkflow,
                format!("header.correlation_id {wf:?} names no workflow"),
            ));
        };
        w.touch(c.to, c.round, c.terminal, now);
        let ordinal = w.next_event();
        self.out.events.push(NewEvent {
            workflow_id: wf.to_string(),
            ordinal,
            message_id: Some(h.message_id.clone()),
            message_type: h.message_type.clone(),
            source_agent_id: Some(h.source.agent_id.clone()),
            from_state: c.from.map(str::to_string),
            to_state: c.to.to_string(),
            at: now,
            detail: detail.into_json(),
        });
        let mut out = Processed::new(Outcome::Accepted);
        out.kind = self.p.workflows.get(&w.kind).map(|d| d.name);
        if c.from != Some(c.to) {
            out.transition = Some((c.from.unwrap_or("").to_string(), c.to.to_string()));
        }
        Ok(out)
    }
}

/// What a history row says the message did.
#[derive(Default)]
struct EventDetail<'a> {
    /// Fields of the input recorded as they are (an operator's reason).
    note: Option<&'a Value>,
    sent: Vec<Value>,
    armed: Vec<Value>,
    met: Vec<Value>,
    cancelled: Vec<Value>,
    moved: Vec<Value>,
    escalations: Vec<Value>,
}

impl EventDetail<'_> {
    fn sent(&mut self, message_type: &str, to: &str, message_id: &str) {
        self.sent
            .push(json!({"message_type": message_type, "to": to, "message_id": message_id}));
    }

    fn into_json(self) -> Value {
        let mut o = match self.note {
            Some(Value::Object(fields)) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, v) in [
            ("sent", self.sent),
            ("clocks_armed", self.armed),
            ("clocks_met", self.met),
            ("clocks_cancelled", self.cancelled),
            ("clocks_moved", self.moved),
            ("escalations", self.escalations),
        ] {
            if !v.is_empty() {
                o.insert(k.to_string(), Value::Array(v));
            }
        }
        Value::Object(o)
    }
}
