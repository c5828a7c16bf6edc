//! Emergencies: `emergency_alert` (or `coordinator emergency raise`) opens an incident,
//! the other emergency messages advance it through [`emergency::decide`].

use serde_json::Value;

use super::batch::{Applied, Batch, Creating};
use super::effects::Change;
use crate::domain::emergency::{self, Incident, IncidentState};
use protocol::envelope::Envelope;
use protocol::reject::{Reason, Rejected};

pub(super) fn start(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let h = &env.header;
    let data = &env.payload.data;
    let description = data
        .get("description")
        .or_else(|| data.get("incident_description"))
        .and_then(Value::as_str);
    let state = IncidentState::Active.as_str();
    let incident = Creating {
        id: &h.correlation_id,
        kind: emergency::KIND,
        state,
        title: description,
        definition: None,
        business_key: None,
    };
    b.create(env, incident)?;
    let agents = b.all_agents();
    let d = emergency::raise(&agents, Some(&h.source.agent_id), b.now, &b.p.durations);
    b.persist(
        env,
        Change::decided(None, d.state.as_str(), d.round, false, &d.effects),
    )
}

pub(super) fn advance(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    let h = &env.header;
    let (state, round) = b.locked(env, emergency::KIND, IncidentState::parse)?;
    let Some(w) = b.workflows.get(&h.correlation_id) else {
        return Err(Rejected::new(Reason::UnknownWorkflow, "no such incident"));
    };
    let inc = Incident {
        state,
        round,
        armed: w.armed(),
    };
    let d = emergency::decide(
        &inc,
        &h.message_type,
        &h.source.agent_id,
        b.now,
        &b.p.durations,
    )
    .map_err(|e| Rejected::new(Reason::NotAcceptedInState, e.to_string()))?;
    b.persist(
        env,
        Change::decided(
            Some(state.as_str()),
            d.state.as_str(),
            d.round,
            d.state == IncidentState::Resolved,
            &d.effects,
        ),
    )
}
