//! The defined workflows: a workflow's start message starts one of its kind, the other
//! messages it consumes advance it through [`workflow::decide`] with the definition it
//! was started with. A message of a workflow that says `unmatched = "observe"` and
//! finds no workflow of that kind to apply to is observed instead
//! ([`Unmatched::Observe`]).

use serde_json::Value;

use super::batch::{Applied, Batch};
use super::effects::Change;
use crate::domain::definition::{Definition, Unmatched};
use crate::domain::workflow::{self, Input, Snapshot};
use protocol::envelope::Envelope;
use protocol::names::message_types::HANDOFF_ACKNOWLEDGED;
use protocol::reject::{Reason, Rejected};

pub(super) fn start(b: &mut Batch<'_>, env: &Envelope, def: &'static Definition) -> Applied {
    // Only a definition that observes looks further (feature delivery's starts do not).
    if def.unmatched == Unmatched::Observe
        && b.workflows
            .get(&env.header.correlation_id)
            .is_some_and(|w| w.kind != def.name)
    {
        return Ok(b.observed(env));
    }
    let data = &env.payload.data;
    let text = |k: &str| data.get(k).and_then(Value::as_str);
    let title = text("title").or_else(|| text("epic_title"));
    b.create(
        env,
        def.name,
        def.start.state,
        text("epic_id"),
        title,
        Some(def),
    )?;
    let d = workflow::start(def, b.now, &b.p.durations);
    b.persist(
        env,
        Change::decided(None, d.state, d.round, false, &d.effects),
    )
}

pub(super) fn advance(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let h = &env.header;
    if b.p.workflows.observes_unmatched(&h.message_type) {
        let consumed = b
            .workflows
            .get(&h.correlation_id)
            .and_then(|w| b.p.workflows.version_of(&w.kind, w.definition.1.as_deref()))
            .is_some_and(|d| d.consumes(&h.message_type));
        if !consumed {
            return Ok(b.observed(env));
        }
    }
    let (def, state, round) = b.locked_defined(env)?;
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
    let d = workflow::decide(def, &snap, input, b.now, &b.p.durations)
        .map_err(|r| Rejected::new(Reason::NotAcceptedInState, r.to_string()))?;
    if h.message_type == HANDOFF_ACKNOWLEDGED {
        w.assign_owner(&h.source.agent_type, &h.source.agent_id);
    }
    b.persist(
        env,
        Change::decided(
            Some(state),
            d.state,
            d.round,
            def.is_terminal(d.state),
            &d.effects,
        ),
    )
}
