//! The defined workflows: a workflow's start message starts one of its kind, the other
//! messages it consumes advance it through [`workflow::decide`] with the definition it
//! was started with. A message of a workflow that says `unmatched = "observe"` and
//! finds no workflow of that kind to apply to is observed instead
//! ([`Unmatched::Observe`]). A workflow entering a state that a definition follows
//! ([`After`]) starts that follow-on in the same batch, and the follow-on's messages
//! sent under the parent's id reach it.

use serde_json::Value;

use super::batch::{Applied, Batch, Creating};
use super::effects::Change;
use crate::domain::definition::{After, Definition, Unmatched};
use crate::domain::ids;
use crate::domain::workflow::{self, Input, Snapshot};
use protocol::envelope::{Envelope, Header};
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
        Creating {
            id: &env.header.correlation_id,
            kind: def.name,
            state: def.start.state,
            title,
            definition: Some(def),
            business_key: None,
        },
    )?;
    let d = workflow::start(def, b.now, &b.p.durations);
    b.persist(
        env,
        Change::decided(None, d.state, d.round, false, &d.effects),
    )
}

pub(super) fn advance(b: &mut Batch<'_>, env: &Envelope) -> Applied {
    if let Some(id) = forwarded_to(b, env) {
        let header = Header {
            correlation_id: id,
            ..env.header.clone()
        };
        let forwarded = Envelope {
            header,
            payload: env.payload.clone(),
        };
        return advance(b, &forwarded);
    }
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
    let applied = b.persist(
        env,
        Change::decided(
            Some(state),
            d.state,
            d.round,
            def.is_terminal(d.state),
            &d.effects,
        ),
    )?;
    if d.state != state {
        for (child, after) in b.p.workflows.following(def.name, d.state) {
            follow(b, env, child, after)?;
        }
    }
    Ok(applied)
}

/// The follow-on a message sent under its parent's id is for: one its parent's kind
/// does not consume and a follow-on of the parent does.
fn forwarded_to(b: &Batch<'_>, env: &Envelope) -> Option<String> {
    let h = &env.header;
    let follow_ons = b.p.workflows.follow_ons_of(&h.message_type);
    if follow_ons.is_empty() {
        return None;
    }
    let parent = b.workflows.get(&h.correlation_id)?;
    let def =
        b.p.workflows
            .version_of(&parent.kind, parent.definition.1.as_deref())?;
    if def.consumes(&h.message_type) {
        return None;
    }
    let mut consumers = follow_ons.iter().filter(|kind| {
        b.p.workflows
            .get(kind)
            .is_some_and(|d| d.consumes(&h.message_type))
    });
    consumers.find_map(|kind| {
        let id = ids::follow_on(&h.correlation_id, kind);
        b.workflows
            .get(&id)
            .is_some_and(|w| w.kind == *kind)
            .then_some(id)
    })
}

/// Starts `child` after the message's workflow entered the state `after` follows,
/// unless it exists already (its parent entered that state before).
fn follow(
    b: &mut Batch<'_>,
    env: &Envelope,
    child: &'static Definition,
    after: &After,
) -> Result<(), protocol::reject::Rejected> {
    let parent = &env.header.correlation_id;
    let id = ids::follow_on(parent, child.name);
    if b.workflows.contains_key(&id) {
        return Ok(());
    }
    let key = b.workflows.get(parent).and_then(|w| w.business_key.clone());
    b.create(
        env,
        Creating {
            id: &id,
            kind: child.name,
            state: after.state,
            title: None,
            definition: Some(child),
            business_key: key.clone(),
        },
    )?;
    let d = workflow::follow(child, after, b.now, &b.p.durations);
    let mut change = Change::decided(None, d.state, d.round, false, &d.effects);
    change.workflow_id = Some(&id);
    b.persist(env, change)?;
    Ok(())
}
