//! One inbound message, applied inside the caller's transaction.
//!
//! The pipeline: dedupe by message id → pure envelope checks → identity (is the sender
//! registered, with that type) → dispatch (heartbeat, escalation acknowledgement,
//! emergency, feature workflow, or an event the coordinator only observes) → persist
//! the decision's effects as rows ([`effects`]). A rejection is not an error: it is
//! written to `dead_letters`, a `message_rejected` notice is queued, and the transaction
//! commits. An `Err` is a database failure; the caller rolls back and retries.

mod effects;
mod feature;
mod incident;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::db::store::{self, OutboxMessage};
use crate::domain::catalog::{valid_agent_id, Catalog};
use crate::domain::envelope::{self, has_nul, DeliveryMeta, Destination, Envelope, Payload};
use crate::domain::escalation::Ladders;
use crate::domain::reject::{Reason, Rejected};
use crate::domain::sla::{ClockDurations, Deadline};
use crate::domain::{emergency, ids, workflow};
use crate::escalations::{self, Acknowledged};
use crate::settings::Settings;

pub use incident::raise_incident;

/// Exchange names of PROTOCOL.md section 2.
pub mod exchanges {
    pub const DIRECT: &str = "agent.direct";
    pub const TOPIC: &str = "agent.topic";
    pub const FANOUT: &str = "agent.fanout";
    pub const DLX: &str = "agent.dlx";
}

pub const HEARTBEAT: &str = "heartbeat";
pub const MESSAGE_REJECTED: &str = "message_rejected";

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
    /// Deadlines this message created (clocks armed, escalations raised), for the timer.
    pub deadlines: Vec<Deadline>,
}

impl Processed {
    pub fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            registered: None,
            queued: false,
            transition: None,
            deadlines: Vec::new(),
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
    pub ladders: Ladders,
    pub auto_register: bool,
}

/// An accepted message's result, or why it is rejected (no row written yet).
type Applied = Result<Processed, Rejected>;

impl Processor {
    pub fn from_settings(settings: &Settings) -> Processor {
        Processor {
            catalog: settings.catalog(),
            durations: settings.clock_durations(),
            // Settings are validated on load, so the ladders build.
            ladders: settings.ladders().unwrap_or_default(),
            auto_register: settings.registration.auto_register,
        }
    }

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
        let applied = match envelope::validate(msg.body, msg.meta, &self.catalog, now) {
            Ok(env) => self.apply(conn, &env, now).await?,
            Err(rej) => Err(rej),
        };
        match applied {
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

    /// Everything after the pure checks.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Applied> {
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

        let mt = h.message_type.as_str();
        if mt == HEARTBEAT {
            return self
                .heartbeat(conn, env, registered_type.is_none(), now)
                .await;
        }
        if mt == escalations::ESCALATION_ACKNOWLEDGED {
            return self.acknowledge(conn, env, now).await;
        }
        if mt == emergency::ALERT {
            return incident::start(self, conn, env, now).await;
        }
        if emergency::is_input(mt) {
            return incident::advance(self, conn, env, now).await;
        }
        if mt == workflow::START_MESSAGE {
            return feature::start(self, conn, env, now).await;
        }
        if workflow::is_input(mt) {
            return feature::advance(self, conn, env, now).await;
        }
        store::set_outcome(conn, &h.message_id, store::OUTCOME_OBSERVED).await?;
        Ok(Ok(Processed::new(Outcome::Observed)))
    }

    async fn heartbeat(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        unregistered: bool,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Applied> {
        let h = &env.header;
        if h.correlation_id != h.source.agent_id {
            return Ok(Err(Rejected::new(
                Reason::InvalidField,
                format!(
                    "a heartbeat's header.correlation_id must be its agent id {:?}, got {:?}",
                    h.source.agent_id, h.correlation_id
                ),
            )));
        }
        if unregistered && !valid_agent_id(&h.source.agent_id) {
            return Ok(Err(Rejected::new(
                Reason::InvalidField,
                format!(
                    "header.source.agent_id {:?} cannot name queues: use 1-200 letters, digits, '.', '_' or '-'",
                    h.source.agent_id
                ),
            )));
        }
        let mut p = Processed::new(Outcome::Accepted);
        if unregistered
            && store::register_agent(conn, &h.source.agent_id, &h.source.agent_type, "heartbeat")
                .await?
        {
            p.registered = Some((h.source.agent_id.clone(), h.source.agent_type.clone()));
        }
        store::touch_heartbeat(conn, &h.source.agent_id, h.timestamp.min(now)).await?;
        Ok(Ok(p))
    }

    /// `escalation_acknowledged`: `payload.data.escalation_id` names any escalation of the
    /// chain; the workflow is the correlation id.
    async fn acknowledge(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Applied> {
        let h = &env.header;
        let Some(escalation_id) = env
            .payload
            .data
            .get("escalation_id")
            .and_then(Value::as_i64)
        else {
            return Ok(Err(Rejected::new(
                Reason::InvalidField,
                "payload.data.escalation_id must be the id of the escalation (a number)",
            )));
        };
        if store::lock_workflow(conn, &h.correlation_id)
            .await?
            .is_none()
        {
            return Ok(Err(Rejected::new(
                Reason::UnknownWorkflow,
                format!(
                    "header.correlation_id {:?} names no workflow",
                    h.correlation_id
                ),
            )));
        }
        let unknown = || {
            Rejected::new(
                Reason::UnknownEscalation,
                format!(
                    "escalation {escalation_id} is not an escalation of {}",
                    h.correlation_id
                ),
            )
        };
        match store::escalation_chain(conn, escalation_id).await? {
            Some((wf, _)) if wf == h.correlation_id => {}
            _ => return Ok(Err(unknown())),
        }
        match escalations::acknowledge(
            conn,
            escalation_id,
            &h.source.agent_id,
            Some(&h.message_id),
            now,
        )
        .await?
        {
            Some(Acknowledged::Now { .. }) | Some(Acknowledged::Already { .. }) => {
                Ok(Ok(Processed::new(Outcome::Accepted)))
            }
            None => Ok(Err(unknown())),
        }
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
                .filter(|c| !c.is_empty() && c.len() <= envelope::MAX_ID_LEN && !c.contains('\0'))
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

/// Creates the workflow (or incident) a message starts; rejected if the id is taken.
async fn create(
    conn: &mut PgConnection,
    env: &Envelope,
    kind: &str,
    state: &str,
    epic_id: Option<&str>,
    title: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Result<(), Rejected>> {
    let h = &env.header;
    let w = store::NewWorkflow {
        id: &h.correlation_id,
        kind,
        state,
        epic_id,
        title,
        data: &env.payload.data,
        at: now,
    };
    if store::insert_workflow(conn, &w).await? {
        return Ok(Ok(()));
    }
    Ok(Err(Rejected::new(
        Reason::WorkflowExists,
        format!(
            "{kind} {} already exists; a new one needs a new correlation_id",
            h.correlation_id
        ),
    )))
}

/// Locks the message's workflow and checks it is of `kind` in a state `parse` knows:
/// its state and round, or why the message does not apply to it.
async fn lock_kind<S>(
    conn: &mut PgConnection,
    env: &Envelope,
    kind: &str,
    parse: fn(&str) -> Option<S>,
) -> sqlx::Result<Result<(S, i32), Rejected>> {
    let h = &env.header;
    let Some(locked) = store::lock_workflow(conn, &h.correlation_id).await? else {
        return Ok(Err(Rejected::new(
            Reason::UnknownWorkflow,
            format!(
                "header.correlation_id {:?} names no workflow or incident",
                h.correlation_id
            ),
        )));
    };
    match parse(&locked.state) {
        Some(state) if locked.kind == kind => Ok(Ok((state, locked.round))),
        _ => Ok(Err(Rejected::new(
            Reason::NotAcceptedInState,
            format!(
                "{} is a {} workflow in state {}; {} does not apply to it",
                h.correlation_id, locked.kind, locked.state, h.message_type
            ),
        ))),
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

/// An outbox row holding a message from the coordinator.
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
