//! The audit entry of each input a batch applies: who sent what about which workflow,
//! and what became of it (`domain::audit` chains the entries).

use serde_json::{json, Map, Value};

use super::{Checked, Input, Outcome, Processed};
use crate::domain::audit::Entry;
use protocol::names::OPERATOR;

/// `s` as PostgreSQL's text and jsonb can hold it (no U+0000).
fn clean(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

/// What an input was, taken before it is applied (applying consumes its check).
pub struct Seen {
    actor: String,
    action: String,
    target: String,
    context: Value,
}

impl Seen {
    pub fn of(input: Input<'_>, c: &Checked) -> Seen {
        match input {
            Input::Delivery(d) => {
                let env = c.envelope.as_ref().ok();
                let mut context = Map::new();
                if let Some(id) = &c.message_id {
                    context.insert("message_id".into(), json!(clean(id)));
                }
                context.insert("routing_key".into(), json!(clean(&d.meta.routing_key)));
                if let Some(user) = &d.meta.user_id {
                    context.insert("user_id".into(), json!(clean(user)));
                }
                if let Some(replay) = d.meta.replay_of {
                    context.insert("replay_of".into(), json!(replay));
                }
                Seen {
                    actor: c.sender.as_deref().map_or_else(|| "unknown".into(), clean),
                    action: env
                        .map(|e| e.header.message_type.as_str())
                        .or(d.meta.kind.as_deref())
                        .map_or_else(|| "unknown".into(), clean),
                    target: env
                        .map(|e| e.header.correlation_id.as_str())
                        .or(d.meta.correlation_id.as_deref())
                        .map(clean)
                        .unwrap_or_default(),
                    context: Value::Object(context),
                }
            }
            Input::Operator(env) => {
                let h = &env.header;
                // An incident an operator raises is sent as `operator`, with the
                // person in the payload.
                let actor = if h.source.agent_id == OPERATOR {
                    env.payload
                        .data
                        .get("raised_by")
                        .and_then(Value::as_str)
                        .unwrap_or(OPERATOR)
                        .to_string()
                } else {
                    h.source.agent_id.clone()
                };
                Seen {
                    actor,
                    action: h.message_type.clone(),
                    target: h.correlation_id.clone(),
                    context: json!({"message_id": h.message_id, "via": "cli"}),
                }
            }
        }
    }

    /// The entry, given what applying the input did.
    pub fn entry(self, p: &Processed) -> Entry {
        let result = match &p.outcome {
            Outcome::Rejected(reason) => format!("rejected:{}", reason.as_str()),
            other => other.label().to_string(),
        };
        let mut metadata = Map::new();
        if let Some((from, to)) = &p.transition {
            metadata.insert("transition".into(), json!([from, to]));
        }
        if let (Outcome::Rejected(_), Some(detail)) = (&p.outcome, &p.detail) {
            metadata.insert("detail".into(), json!(clean(detail)));
        }
        Entry {
            actor: self.actor,
            action: self.action,
            target: self.target,
            result,
            context: self.context,
            metadata: Value::Object(metadata),
        }
    }
}
