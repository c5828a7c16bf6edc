//! What an operator does to workflows, as inputs of a batch: the same path as agents'
//! messages (claimed by message id, the workflow locked, the decision's effects written
//! by the one interpreter, `effects`), from the trusted source type `operator`. The
//! envelopes are built here; `service::ops` applies them through the pipeline.

use chrono::{DateTime, Utc};
use protocol::envelope::{Envelope, Priority};
use protocol::names::message_types::ESCALATION_ACKNOWLEDGED;
use protocol::names::OPERATOR;
use protocol::reject::{Reason, Rejected};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::batch::{Applied, Batch};
use super::effects::Change;
use crate::domain::effect::operator as decide;
use crate::domain::emergency;
use crate::domain::workflow::{self, Closing, Snapshot};

/// An operator cancelled a workflow (its history row's message type).
pub const CANCELLED: &str = "operator_cancelled";
/// An operator marked a workflow failed.
pub const FAILED: &str = "operator_failed";
/// An operator moved an armed clock's deadline.
pub const SLA_SNOOZED: &str = "sla_snoozed";
/// An operator cancelled an armed clock.
pub const SLA_CANCELLED: &str = "sla_cancelled";

/// True for the operator's own message types (trusted inputs only; an agent sending
/// one is refused by the catalog as an unknown message type).
pub fn is_action(message_type: &str) -> bool {
    matches!(
        message_type,
        CANCELLED | FAILED | SLA_SNOOZED | SLA_CANCELLED
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Close {
    reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClockAction {
    clock_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<DateTime<Utc>>,
    reason: String,
}

fn from_operator(
    by: &str,
    message_type: &str,
    workflow_id: &str,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Envelope {
    Envelope::from_agent(by, OPERATOR, message_type, workflow_id, data, now)
}

/// Closes a workflow as cancelled or failed; its armed clocks are cancelled.
pub fn close(
    workflow_id: &str,
    to: Closing,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let message_type = match to {
        Closing::Failed => FAILED,
        Closing::Cancelled => CANCELLED,
    };
    let data = json!(Close {
        reason: reason.into()
    });
    from_operator(by, message_type, workflow_id, data, now)
}

/// Moves an armed clock's deadline (and its warning) to `until`.
pub fn snooze(
    workflow_id: &str,
    clock_id: i64,
    until: DateTime<Utc>,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    clock_action(
        SLA_SNOOZED,
        workflow_id,
        clock_id,
        Some(until),
        reason,
        by,
        now,
    )
}

/// Cancels an armed clock: it will not breach.
pub fn cancel_clock(
    workflow_id: &str,
    clock_id: i64,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    clock_action(SLA_CANCELLED, workflow_id, clock_id, None, reason, by, now)
}

fn clock_action(
    message_type: &str,
    workflow_id: &str,
    clock_id: i64,
    until: Option<DateTime<Utc>>,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let data = json!(ClockAction {
        clock_id,
        until,
        reason: reason.into()
    });
    from_operator(by, message_type, workflow_id, data, now)
}

/// Acknowledges an escalation's chain: the same message an agent sends.
pub fn acknowledge(
    workflow_id: &str,
    escalation_id: i64,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let data = json!({ "escalation_id": escalation_id });
    from_operator(by, ESCALATION_ACKNOWLEDGED, workflow_id, data, now)
}

/// Raises an incident: the same `emergency_alert` an agent sends.
pub fn raise_alert(
    incident_id: &str,
    severity: &str,
    description: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let data = json!({"incident_id": incident_id, "severity": severity, "description": description, "raised_by": by});
    let mut env =
        Envelope::from_agent(OPERATOR, OPERATOR, emergency::ALERT, incident_id, data, now);
    env.header.priority = Some(Priority::Critical);
    env
}

/// Applies an operator's action to the workflow it names.
pub(super) fn apply(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let h = &env.header;
    match h.message_type.as_str() {
        CANCELLED | FAILED => {
            let to = if h.message_type == FAILED {
                Closing::Failed
            } else {
                Closing::Cancelled
            };
            let (def, state, round) = b.locked_defined(env)?;
            if def.is_terminal(state) {
                return Err(Rejected::new(
                    Reason::NotAcceptedInState,
                    format!("workflow {} is already {state}", h.correlation_id),
                ));
            }
            let armed = b
                .workflows
                .get(&h.correlation_id)
                .map(|w| w.armed())
                .unwrap_or_default();
            let d = workflow::close_all(
                &Snapshot {
                    state,
                    round,
                    armed,
                },
                to,
            );
            b.persist(
                env,
                Change {
                    workflow_id: None,
                    from: Some(state),
                    to: to.state(),
                    round,
                    terminal: true,
                    effects: &d.effects,
                    closed_by: Some(&h.source.agent_id),
                    note: Some(&env.payload.data),
                },
            )
        }
        _ => {
            let a: ClockAction = serde_json::from_value(env.payload.data.clone())
                .map_err(|e| Rejected::new(Reason::InvalidField, format!("payload.data: {e}")))?;
            let Some(w) = b.workflows.get(&h.correlation_id) else {
                return Err(Rejected::new(
                    Reason::UnknownWorkflow,
                    format!("no workflow or incident {}", h.correlation_id),
                ));
            };
            let Some(clock) = w.armed_clock(a.clock_id) else {
                return Err(Rejected::new(
                    Reason::NotAcceptedInState,
                    format!(
                        "clock {} of {} is not armed (met, cancelled or breached already)",
                        a.clock_id, h.correlation_id
                    ),
                ));
            };
            let effect = match a.until {
                Some(until) if h.message_type == SLA_SNOOZED => decide::snooze(&clock, until),
                _ => decide::cancel(&clock),
            };
            let (state, round) = (w.state.clone(), w.round);
            b.persist(
                env,
                Change {
                    workflow_id: None,
                    from: Some(&state),
                    to: &state,
                    round,
                    terminal: false,
                    effects: &[effect],
                    closed_by: Some(&h.source.agent_id),
                    note: Some(&env.payload.data),
                },
            )
        }
    }
}
