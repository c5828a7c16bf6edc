//! The feature-delivery workflow's messages: `requirements_ready` starts one, the rest
//! advance it through [`workflow::decide`].

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::effects::{persist, Change};
use super::{create, lock_kind, Applied, Processor};
use crate::db::store;
use crate::domain::envelope::Envelope;
use crate::domain::reject::{Reason, Rejected};
use crate::domain::workflow::{self, Input, Snapshot, State};

pub(super) async fn start(
    p: &Processor,
    conn: &mut PgConnection,
    env: &Envelope,
    now: DateTime<Utc>,
) -> sqlx::Result<Applied> {
    let data = &env.payload.data;
    let text = |k: &str| data.get(k).and_then(Value::as_str);
    let title = text("title").or_else(|| text("epic_title"));
    let state = State::RequirementsHandoff.as_str();
    if let Err(rej) = create(
        conn,
        env,
        workflow::KIND,
        state,
        text("epic_id"),
        title,
        now,
    )
    .await?
    {
        return Ok(Err(rej));
    }
    let d = workflow::start(now, &p.durations);
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
    let (state, round) = match lock_kind(conn, env, workflow::KIND, State::parse).await? {
        Ok(locked) => locked,
        Err(rej) => return Ok(Err(rej)),
    };
    let snap = Snapshot {
        state,
        round,
        armed: store::armed_clocks(conn, &h.correlation_id).await?,
    };
    let input = Input {
        message_type: &h.message_type,
        sender_role: &h.source.agent_type,
    };
    let d = match workflow::decide(&snap, input, now, &p.durations) {
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
    let change = Change {
        from: Some(state.as_str()),
        to: d.state.as_str(),
        round: d.round,
        terminal: d.state.is_terminal(),
        effects: &d.effects,
    };
    Ok(Ok(persist(p, conn, env, change, now).await?))
}
