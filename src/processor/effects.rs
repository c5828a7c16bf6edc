//! Turns a state machine's decision into rows: the workflow row, its history, clocks,
//! escalations and the messages to send.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::{exchanges, outgoing, Outcome, Processed, Processor};
use crate::db::store::{self, OutboxMessage};
use crate::domain::envelope::{Destination, Envelope, Payload};
use crate::domain::ids;
use crate::domain::sla::{Deadline, DeadlineKind};
use crate::domain::workflow::Effect;
use crate::escalations::{self, Raise, ESCALATION_RAISED};

/// A decision to persist.
pub(super) struct Change<'a> {
    /// The state before; `None` when this message created the workflow.
    pub from: Option<&'a str>,
    pub to: &'a str,
    pub round: i32,
    pub terminal: bool,
    pub effects: &'a [Effect],
}

pub(super) async fn persist(
    p: &Processor,
    conn: &mut PgConnection,
    env: &Envelope,
    c: Change<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<Processed> {
    let h = &env.header;
    let wf = h.correlation_id.as_str();
    if c.from.is_some() {
        store::update_workflow(conn, wf, c.to, c.round, c.terminal, now).await?;
    }
    let mut out = Processed::new(Outcome::Accepted);
    let mut detail = EventDetail::default();
    for effect in c.effects {
        match effect {
            Effect::SendTask { task, to_role } => {
                let m = to_role_message(
                    env,
                    &c,
                    task,
                    to_role,
                    &format!("task:{task}:{to_role}"),
                    now,
                );
                detail
                    .sent
                    .push(json!({"message_type": task, "to": to_role, "message_id": m.message_id}));
                store::enqueue(conn, &m).await?;
                out.queued = true;
            }
            Effect::Notify {
                message_type,
                to_role,
            } => {
                let key = format!("notify:{message_type}:{to_role}");
                let m = to_role_message(env, &c, message_type, to_role, &key, now);
                detail.sent.push(json!({"message_type": message_type, "to": to_role, "message_id": m.message_id}));
                store::enqueue(conn, &m).await?;
                out.queued = true;
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
                        metadata: json!({"incident_id": wf, "raised_by": h.source.agent_id}),
                    },
                    now,
                );
                detail.sent.push(json!({"message_type": message_type, "to": "everyone", "message_id": m.message_id}));
                store::enqueue(conn, &m).await?;
                out.queued = true;
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
                    None if p.catalog.is_role(owner_role) => {
                        store::sole_agent_of(conn, owner_role).await?
                    }
                    None => None,
                };
                let warn_at = p.durations.warn_at(now, *due_at);
                let id = store::arm_clock(
                    conn,
                    &store::NewClock {
                        workflow_id: wf,
                        clock,
                        round: *round,
                        owner_role,
                        owner_agent_id: owner_agent.as_deref(),
                        subject_agent_id: subject_agent_id.as_deref(),
                        severity: p.durations.severity(clock).as_str(),
                        armed_at: now,
                        warn_at,
                        due_at: *due_at,
                    },
                )
                .await?;
                if let Some(id) = id {
                    out.deadlines.push(Deadline {
                        at: *due_at,
                        kind: DeadlineKind::Breach,
                        id,
                    });
                    out.deadlines.push(Deadline {
                        at: warn_at,
                        kind: DeadlineKind::Warning,
                        id,
                    });
                }
                detail
                    .armed
                    .push(json!({"clock": clock, "round": round, "agent": subject_agent_id, "due_at": due_at}));
            }
            Effect::MeetClock(r) => {
                store::close_clock(conn, wf, r, "met", Some(&h.message_id), now).await?;
                detail
                    .met
                    .push(json!({"clock": r.clock, "round": r.round, "agent": r.subject_agent_id}));
            }
            Effect::CancelClock(r) => {
                store::close_clock(conn, wf, r, "cancelled", Some(&h.message_id), now).await?;
                detail
                    .cancelled
                    .push(json!({"clock": r.clock, "round": r.round, "agent": r.subject_agent_id}));
            }
            Effect::Escalate {
                reason,
                owner_role,
                severity,
            } => {
                let step = p
                    .ladders
                    .for_escalation(reason, *severity)
                    .first(owner_role, now);
                let (id, next) = escalations::raise(
                    conn,
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
                        message_id: ids::derived(&h.message_id, &format!("escalation:{reason}")),
                        causation_id: Some(&h.message_id),
                        data: json!({"reason": reason, "detail": env.payload.data}),
                        now,
                    },
                )
                .await?;
                out.deadlines.push(next);
                detail
                    .escalations
                    .push(json!({"id": id, "reason": reason, "severity": severity.as_str(), "target": step.target}));
                out.queued = true;
            }
        }
    }
    store::append_event(
        conn,
        &store::NewEvent {
            workflow_id: wf,
            message_id: Some(&h.message_id),
            message_type: &h.message_type,
            source_agent_id: Some(&h.source.agent_id),
            from_state: c.from,
            to_state: c.to,
            at: now,
            detail: detail.into_json(),
        },
    )
    .await?;
    if c.from != Some(c.to) {
        out.transition = Some((c.from.unwrap_or("").to_string(), c.to.to_string()));
    }
    Ok(out)
}

/// A message from the coordinator to every agent of a role (their task queues).
fn to_role_message(
    cause: &Envelope,
    c: &Change<'_>,
    message_type: &str,
    to_role: &str,
    effect_key: &str,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let h = &cause.header;
    let payload = Payload {
        data: cause.payload.data.clone(),
        metadata: json!({
            "workflow_id": h.correlation_id,
            "state": c.to,
            "round": c.round,
            "caused_by": {"message_type": h.message_type, "agent_id": h.source.agent_id},
        }),
    };
    outgoing(
        ids::derived(&h.message_id, effect_key),
        &h.correlation_id,
        Some(&h.message_id),
        message_type,
        exchanges::DIRECT,
        &format!("task.{to_role}"),
        Some(Destination {
            agent_id: None,
            agent_type: Some(to_role.to_string()),
            broadcast: false,
        }),
        payload,
        now,
    )
}

#[derive(Default)]
struct EventDetail {
    sent: Vec<Value>,
    armed: Vec<Value>,
    met: Vec<Value>,
    cancelled: Vec<Value>,
    escalations: Vec<Value>,
}

impl EventDetail {
    fn into_json(self) -> Value {
        let mut o = serde_json::Map::new();
        for (k, v) in [
            ("sent", self.sent),
            ("clocks_armed", self.armed),
            ("clocks_met", self.met),
            ("clocks_cancelled", self.cancelled),
            ("escalations", self.escalations),
        ] {
            if !v.is_empty() {
                o.insert(k.to_string(), Value::Array(v));
            }
        }
        Value::Object(o)
    }
}
