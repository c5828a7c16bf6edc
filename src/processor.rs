//! One inbound message, applied inside the caller's transaction.
//!
//! The pipeline: dedupe by message id → pure envelope checks → identity (is the sender
//! registered, with that type) → dispatch (heartbeat, workflow start, workflow message,
//! or an event the coordinator only observes) → persist the decision's effects as rows.
//! A rejection is not an error: it is written to `dead_letters`, a `message_rejected`
//! notice is queued, and the transaction commits. An `Err` is a database failure; the
//! caller rolls back and the delivery is retried.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::db::store::{self, OutboxMessage};
use crate::domain::catalog::Catalog;
use crate::domain::envelope::{self, has_nul, DeliveryMeta, Destination, Envelope, Payload};
use crate::domain::ids;
use crate::domain::reject::{Reason, Rejected};
use crate::domain::workflow::{self, ClockDurations, Decision, Effect, Input, Snapshot, State};

/// Exchange names of PROTOCOL.md section 2.
pub mod exchanges {
    pub const DIRECT: &str = "agent.direct";
    pub const TOPIC: &str = "agent.topic";
    pub const FANOUT: &str = "agent.fanout";
    pub const DLX: &str = "agent.dlx";
}

pub const HEARTBEAT: &str = "heartbeat";
pub const MESSAGE_REJECTED: &str = "message_rejected";
pub const ESCALATION_RAISED: &str = "escalation_raised";

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to a workflow (or a heartbeat recorded).
    Accepted,
    /// A valid event the coordinator does not act on.
    Observed,
    /// Its message id was processed before: nothing changed.
    Duplicate,
    Rejected(Reason),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Observed => "observed",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    /// An agent registered by this message, whose queues must now be declared.
    pub registered: Option<(String, String)>,
    /// Rows were added to the outbox.
    pub queued: bool,
    /// The state transition, when there was one.
    pub transition: Option<(String, String)>,
}

impl Processed {
    fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            registered: None,
            queued: false,
            transition: None,
        }
    }
}

/// A delivery, as far as processing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub meta: &'a DeliveryMeta,
}

#[derive(Debug, Clone)]
pub struct Processor {
    pub catalog: Catalog,
    pub durations: ClockDurations,
    pub auto_register: bool,
}

impl Processor {
    pub async fn process(
        &self,
        conn: &mut PgConnection,
        msg: Inbound<'_>,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Processed> {
        let (message_id, sender) = envelope::best_effort_ids(msg.body, msg.meta);
        if let Some(id) = &message_id {
            if !store::claim_message(conn, id).await? {
                return Ok(Processed::new(Outcome::Duplicate));
            }
        }
        let env = match envelope::validate(msg.body, msg.meta, &self.catalog, now) {
            Ok(env) => env,
            Err(rej) => {
                return self
                    .reject(
                        conn,
                        msg,
                        message_id.as_deref(),
                        sender.as_deref(),
                        rej,
                        now,
                    )
                    .await
            }
        };
        match self.apply(conn, &env, now).await? {
            Ok(p) => Ok(p),
            Err(rej) => {
                self.reject(
                    conn,
                    msg,
                    message_id.as_deref(),
                    sender.as_deref(),
                    rej,
                    now,
                )
                .await
            }
        }
    }

    /// Everything after the pure checks. The inner `Err` is a rejection; no row has been
    /// written when it is returned.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Result<Processed, Rejected>> {
        let h = &env.header;
        let registered_type = store::agent_type(conn, &h.source.agent_id).await?;
        match &registered_type {
            Some(t) if *t != h.source.agent_type => {
                return Ok(Err(Rejected::new(
                    Reason::AgentTypeMismatch,
                    format!(
                        "agent {} is registered as {t:?} but header.source.agent_type is {:?}",
                        h.source.agent_id, h.source.agent_type
                    ),
                )))
            }
            None if !self.auto_register => {
                return Ok(Err(Rejected::new(
                    Reason::UnknownAgent,
                    format!(
                        "agent {} is not registered (register it with `coordinator agent add`)",
                        h.source.agent_id
                    ),
                )))
            }
            _ => {}
        }

        if h.message_type == HEARTBEAT {
            if h.correlation_id != h.source.agent_id {
                return Ok(Err(Rejected::new(
                    Reason::InvalidField,
                    format!(
                        "a heartbeat's header.correlation_id must be its agent id {:?}, got {:?}",
                        h.source.agent_id, h.correlation_id
                    ),
                )));
            }
            let mut p = Processed::new(Outcome::Accepted);
            if registered_type.is_none()
                && store::register_agent(
                    conn,
                    &h.source.agent_id,
                    &h.source.agent_type,
                    "heartbeat",
                )
                .await?
            {
                p.registered = Some((h.source.agent_id.clone(), h.source.agent_type.clone()));
            }
            store::touch_heartbeat(conn, &h.source.agent_id, h.timestamp.min(now)).await?;
            return Ok(Ok(p));
        }

        if h.message_type == workflow::START_MESSAGE {
            return self.start_workflow(conn, env, now).await;
        }
        if workflow::is_input(&h.message_type) {
            return self.advance_workflow(conn, env, now).await;
        }
        store::set_outcome(conn, &h.message_id, store::OUTCOME_OBSERVED).await?;
        Ok(Ok(Processed::new(Outcome::Observed)))
    }

    async fn start_workflow(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Result<Processed, Rejected>> {
        let h = &env.header;
        let data = &env.payload.data;
        let text = |k: &str| data.get(k).and_then(Value::as_str);
        let created = store::insert_workflow(
            conn,
            &store::NewWorkflow {
                id: &h.correlation_id,
                kind: workflow::KIND,
                state: State::RequirementsHandoff,
                epic_id: text("epic_id"),
                title: text("title").or_else(|| text("epic_title")),
                data,
                at: now,
            },
        )
        .await?;
        if !created {
            return Ok(Err(Rejected::new(
                Reason::WorkflowExists,
                format!(
                    "workflow {} already exists; a new workflow needs a new correlation_id",
                    h.correlation_id
                ),
            )));
        }
        let decision = workflow::start(now, &self.durations);
        let p = self.persist(conn, env, None, &decision, now).await?;
        Ok(Ok(p))
    }

    async fn advance_workflow(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Result<Processed, Rejected>> {
        let h = &env.header;
        let Some(locked) = store::lock_workflow(conn, &h.correlation_id).await? else {
            return Ok(Err(Rejected::new(
                Reason::UnknownWorkflow,
                format!(
                    "header.correlation_id {:?} names no workflow",
                    h.correlation_id
                ),
            )));
        };
        let state = match (locked.kind.as_str(), State::parse(&locked.state)) {
            (workflow::KIND, Some(s)) => s,
            _ => {
                return Ok(Err(Rejected::new(
                    Reason::NotAcceptedInState,
                    format!(
                        "{} is a {} workflow in state {}; {} does not apply to it",
                        h.correlation_id, locked.kind, locked.state, h.message_type
                    ),
                )))
            }
        };
        let snap = Snapshot {
            state,
            round: locked.round,
            armed: store::armed_clocks(conn, &h.correlation_id).await?,
        };
        let input = Input {
            message_type: &h.message_type,
            sender_role: &h.source.agent_type,
        };
        let decision = match workflow::decide(&snap, input, now, &self.durations) {
            Ok(d) => d,
            Err(r) => {
                return Ok(Err(Rejected::new(
                    Reason::NotAcceptedInState,
                    r.to_string(),
                )))
            }
        };
        if h.message_type == "handoff_acknowledged" {
            store::assign_clock_owner(
                conn,
                &h.correlation_id,
                &h.source.agent_type,
                &h.source.agent_id,
            )
            .await?;
        }
        let p = self.persist(conn, env, Some(state), &decision, now).await?;
        Ok(Ok(p))
    }

    /// Writes a decision: the workflow row, its history, clocks, escalations and the
    /// messages to send.
    async fn persist(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        from: Option<State>,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Processed> {
        let h = &env.header;
        let wf = h.correlation_id.as_str();
        if from.is_some() {
            store::update_workflow(conn, wf, decision.state, decision.round, now).await?;
        }
        let mut detail = EventDetail::default();
        let mut queued = false;
        for effect in &decision.effects {
            match effect {
                Effect::SendTask { task, to_role } => {
                    let m = self.to_role(
                        env,
                        decision,
                        task,
                        to_role,
                        &format!("task:{task}:{to_role}"),
                        now,
                    );
                    store::enqueue(conn, &m).await?;
                    detail.sent.push(
                        json!({"message_type": task, "to": to_role, "message_id": m.message_id}),
                    );
                    queued = true;
                }
                Effect::Notify {
                    message_type,
                    to_role,
                } => {
                    let m = self.to_role(
                        env,
                        decision,
                        message_type,
                        to_role,
                        &format!("notify:{message_type}:{to_role}"),
                        now,
                    );
                    store::enqueue(conn, &m).await?;
                    detail.sent.push(json!({"message_type": message_type, "to": to_role, "message_id": m.message_id}));
                    queued = true;
                }
                Effect::ArmClock {
                    clock,
                    owner_role,
                    round,
                    due_at,
                } => {
                    let owner_agent = store::sole_agent_of(conn, owner_role).await?;
                    store::arm_clock(
                        conn,
                        &store::NewClock {
                            workflow_id: wf,
                            clock,
                            round: *round,
                            owner_role,
                            owner_agent_id: owner_agent.as_deref(),
                            armed_at: now,
                            due_at: *due_at,
                        },
                    )
                    .await?;
                    detail
                        .armed
                        .push(json!({"clock": clock, "round": round, "due_at": due_at}));
                }
                Effect::MeetClock { clock, round } => {
                    store::close_clock(conn, wf, clock, *round, "met", Some(&h.message_id), now)
                        .await?;
                    detail.met.push(json!({"clock": clock, "round": round}));
                }
                Effect::CancelClock { clock, round } => {
                    store::close_clock(
                        conn,
                        wf,
                        clock,
                        *round,
                        "cancelled",
                        Some(&h.message_id),
                        now,
                    )
                    .await?;
                    detail
                        .cancelled
                        .push(json!({"clock": clock, "round": round}));
                }
                Effect::Escalate {
                    reason,
                    owner_role,
                    severity,
                } => {
                    let message_id = ids::derived(&h.message_id, &format!("escalation:{reason}"));
                    let escalation_id = store::insert_escalation(
                        conn,
                        &store::NewEscalation {
                            workflow_id: wf,
                            clock: reason,
                            owner_role,
                            level: 1,
                            severity: severity.as_str(),
                            raised_at: now,
                            message_id: &message_id,
                        },
                    )
                    .await?;
                    let data = json!({
                        "escalation_id": escalation_id,
                        "workflow_id": wf,
                        "reason": reason,
                        "owner_role": owner_role,
                        "agent_id": h.source.agent_id,
                        "level": 1,
                        "severity": severity.as_str(),
                        "raised_at": now,
                        "detail": env.payload.data,
                    });
                    let routing_key = format!("escalation.{}.{owner_role}", severity.as_str());
                    let m = outgoing(
                        message_id,
                        wf,
                        Some(&h.message_id),
                        ESCALATION_RAISED,
                        exchanges::TOPIC,
                        &routing_key,
                        None,
                        Payload {
                            data,
                            metadata: json!({}),
                        },
                        now,
                    );
                    store::enqueue(conn, &m).await?;
                    detail.escalations.push(json!({"id": escalation_id, "reason": reason, "severity": severity.as_str()}));
                    queued = true;
                }
            }
        }
        let from_state = from.map(State::as_str);
        store::append_event(
            conn,
            &store::NewEvent {
                workflow_id: wf,
                message_id: Some(&h.message_id),
                message_type: &h.message_type,
                source_agent_id: Some(&h.source.agent_id),
                from_state,
                to_state: decision.state.as_str(),
                at: now,
                detail: detail.into_json(),
            },
        )
        .await?;
        let transition = match from {
            Some(f) if f == decision.state => None,
            _ => Some((
                from_state.unwrap_or("").to_string(),
                decision.state.as_str().to_string(),
            )),
        };
        Ok(Processed {
            outcome: Outcome::Accepted,
            registered: None,
            queued,
            transition,
        })
    }

    /// A message from the coordinator to every agent of a role (their task queues).
    fn to_role(
        &self,
        cause: &Envelope,
        decision: &Decision,
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
                "state": decision.state.as_str(),
                "round": decision.round,
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

    /// Dead-letters a delivery and tells its sender, if known.
    async fn reject(
        &self,
        conn: &mut PgConnection,
        msg: Inbound<'_>,
        message_id: Option<&str>,
        sender: Option<&str>,
        rej: Rejected,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Processed> {
        tracing::warn!(reason = %rej.reason, detail = %rej.detail, "message rejected");
        dead_letter(conn, msg, message_id, sender, &rej, now).await?;
        if let Some(id) = message_id {
            store::set_outcome(conn, id, store::OUTCOME_REJECTED).await?;
        }
        let mut p = Processed::new(Outcome::Rejected(rej.reason));
        if let Some(agent) = sender {
            let cause = message_id.map_or_else(|| body_digest(msg.body), str::to_string);
            let data = json!({
                "rejected_message_id": message_id,
                "reason": rej.reason.as_str(),
                "detail": rej.detail,
            });
            let correlation = msg
                .meta
                .correlation_id
                .clone()
                .filter(|c| !c.is_empty() && c.len() <= envelope::MAX_ID_LEN)
                .unwrap_or_else(|| agent.to_string());
            let m = outgoing(
                ids::derived(&cause, "rejected"),
                &correlation,
                message_id,
                MESSAGE_REJECTED,
                exchanges::DIRECT,
                &format!("command.{agent}"),
                Some(Destination {
                    agent_id: Some(agent.to_string()),
                    agent_type: None,
                    broadcast: false,
                }),
                Payload {
                    data,
                    metadata: json!({}),
                },
                now,
            );
            store::enqueue(conn, &m).await?;
            p.queued = true;
        }
        Ok(p)
    }
}

/// Stores a delivery whole in `dead_letters`.
pub async fn dead_letter(
    conn: &mut PgConnection,
    msg: Inbound<'_>,
    message_id: Option<&str>,
    sender: Option<&str>,
    rej: &Rejected,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    let body_json: Option<Value> = serde_json::from_slice(msg.body)
        .ok()
        .filter(|v| !has_nul(v));
    let properties = serde_json::to_value(msg.meta).unwrap_or_default();
    let properties = if has_nul(&properties) {
        json!({})
    } else {
        properties
    };
    store::insert_dead_letter(
        conn,
        &store::NewDeadLetter {
            message_id: message_id.filter(|s| !s.contains('\0')),
            reason: rej.reason.as_str(),
            detail: &rej.detail.replace('\0', "\u{fffd}"),
            routing_key: &msg.meta.routing_key.replace('\0', "\u{fffd}"),
            body: msg.body,
            body_json: body_json.as_ref(),
            properties: &properties,
            source_agent_id: sender.filter(|s| !s.contains('\0')),
            at: now,
        },
    )
    .await
}

/// A stable stand-in id for a body that carries none.
fn body_digest(body: &[u8]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body).to_string()
}

#[allow(clippy::too_many_arguments)]
pub fn outgoing(
    message_id: String,
    correlation_id: &str,
    causation_id: Option<&str>,
    message_type: &str,
    exchange: &str,
    routing_key: &str,
    destination: Option<Destination>,
    payload: Payload,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let env = Envelope::from_coordinator(
        message_id.clone(),
        correlation_id.to_string(),
        causation_id.map(str::to_string),
        message_type,
        destination,
        payload,
        now,
    );
    OutboxMessage {
        message_id,
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        message_type: message_type.to_string(),
        correlation_id: correlation_id.to_string(),
        causation_id: causation_id.map(str::to_string),
        app_id: envelope::COORDINATOR_ID.to_string(),
        // Serialising plain data cannot fail; an empty body would be rejected by receivers.
        body: serde_json::to_vec(&env).unwrap_or_default(),
    }
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
