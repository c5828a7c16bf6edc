//! Emergencies: `emergency_alert` (or `coordinator emergency raise`) opens an incident,
//! the other emergency messages advance it through [`emergency::decide`].

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::effects::{persist, Change};
use super::{create, lock_kind, Applied, Processed, Processor};
use crate::db::store;
use crate::domain::emergency::{self, Incident, IncidentState};
use crate::domain::envelope::Envelope;
use crate::domain::reject::{Reason, Rejected};

pub(super) async fn start(
    p: &Processor,
    conn: &mut PgConnection,
    env: &Envelope,
    now: DateTime<Utc>,
) -> sqlx::Result<Applied> {
    let h = &env.header;
    let data = &env.payload.data;
    let description = data
        .get("description")
        .or_else(|| data.get("incident_description"))
        .and_then(Value::as_str);
    let state = IncidentState::Active.as_str();
    if let Err(rej) = create(conn, env, emergency::KIND, state, None, description, now).await? {
        return Ok(Err(rej));
    }
    let agents = store::all_agents(conn).await?;
    let d = emergency::raise(&agents, Some(&h.source.agent_id), now, &p.durations);
    let change = Change {
        from: None,
        to: d.state.as_str(),
        round: d.round,
        terminal: false,
        effects: &d.effects,
    };
    Ok(Ok(persist(p, conn, env, change, now).await?))
}

pub(super) async fn advance(
    p: &Processor,
    conn: &mut PgConnection,
    env: &Envelope,
    now: DateTime<Utc>,
) -> sqlx::Result<Applied> {
    let h = &env.header;
    let (state, round) = match lock_kind(conn, env, emergency::KIND, IncidentState::parse).await? {
        Ok(locked) => locked,
        Err(rej) => return Ok(Err(rej)),
    };
    let inc = Incident {
        state,
        round,
        armed: store::armed_clocks(conn, &h.correlation_id).await?,
    };
    let d = match emergency::decide(&inc, &h.message_type, &h.source.agent_id, now, &p.durations) {
        Ok(d) => d,
        Err(e) => {
            return Ok(Err(Rejected::new(
                Reason::NotAcceptedInState,
                e.to_string(),
            )))
        }
    };
    let change = Change {
        from: Some(state.as_str()),
        to: d.state.as_str(),
        round: d.round,
        terminal: d.state == IncidentState::Resolved,
        effects: &d.effects,
    };
    Ok(Ok(persist(p, conn, env, change, now).await?))
}

/// An operator raises an incident from the CLI: the same path as an `emergency_alert`
/// message, from source `operator`, inside the caller's transaction.
pub async fn raise_incident(
    p: &Processor,
    conn: &mut PgConnection,
    incident_id: &str,
    severity: &str,
    description: &str,
    raised_by: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Result<Processed, Rejected>> {
    let data = json!({"incident_id": incident_id, "severity": severity, "description": description, "raised_by": raised_by});
    let mut env = Envelope::from_agent(
        "operator",
        "operator",
        emergency::ALERT,
        incident_id,
        data,
        now,
    );
    env.header.priority = crate::domain::envelope::Priority::Critical;
    if !store::claim_message(conn, &env.header.message_id).await? {
        return Ok(Err(Rejected::new(Reason::WorkflowExists, "raised twice")));
    }
    start(p, conn, &env, now).await
}
