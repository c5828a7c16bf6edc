//! The feature-delivery workflow: `requirements_ready` starts one, the other workflow
//! messages advance it through [`workflow::decide`].

use serde_json::Value;

use super::batch::{Applied, Batch};
use super::effects::Change;
use crate::domain::workflow::{self, Input, Snapshot, State};
use protocol::envelope::Envelope;
use protocol::reject::{Reason, Rejected};

pub(super) fn start(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let data = &env.payload.data;
    let text = |k: &str| data.get(k).and_then(Value::as_str);
    let title = text("title").or_else(|| text("epic_title"));
    let state = State::RequirementsHandoff.as_str();
    b.create(env, workflow::KIND, state, text("epic_id"), title)?;
    let d = workflow::start(b.now, &b.p.durations);
    b.persist(
        env,
        Change {
            from: None,
            to: d.state.as_str(),
            round: d.round,
            terminal: false,
            effects: &d.effects,
            closed_by: None,
            note: None,
        },
    )
}

pub(super) fn advance(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let h = &env.header;
    let (state, round) = b.locked(env, workflow::KIND, State::parse)?;
    let Some(w) = b.workflows.get_mut(&h.correlation_id) else {
        return Err(Rejected::new(Reason::UnknownWorkflow, "no such workflow"));
    };
    let snap = Snapshot {
        state,
        round,
        armed: w.armed(),
    };
    let input = Input {
        message_type: &h.message_type,
        sender_role: &h.source.agent_type,
    };
    let d = workflow::decide(&snap, input, b.now, &b.p.durations)
        .map_err(|r| Rejected::new(Reason::NotAcceptedInState, r.to_string()))?;
    if h.message_type == "handoff_acknowledged" {
        w.assign_owner(&h.source.agent_type, &h.source.agent_id);
    }
    b.persist(
        env,
        Change {
            from: Some(state.as_str()),
            to: d.state.as_str(),
            round: d.round,
            terminal: d.state.is_terminal(),
            effects: &d.effects,
            closed_by: None,
            note: None,
        },
    )
}
