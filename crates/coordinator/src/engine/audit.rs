//! The audit entry of each input a batch applies: who sent what about which workflow,
//! and what became of it (`domain::audit` chains the entries).

use serde_json::{json, Map, Value};

use super::{Admission, Input, Outcome, Processed};
use crate::domain::audit::Entry;
use protocol::names::OPERATOR;

/// `s` as PostgreSQL's text and jsonb can hold it (no U+0000).
fn clean(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

/// What an input was, taken before it is applied.
pub struct Seen {
    actor: String,
    action: String,
    target: String,
    context: Value,
}

impl Seen {
    /// A delivery is described by what admission made of it: an admitted one by its
    /// sender and what vouched for it, a refused one by what it claims.
    pub fn of(input: Input<'_>) -> Seen {
        match input {
            Input::Delivery(d, admission) => {
                let mut context = Map::new();
                if let Some(id) = admission.message_id() {
                    context.insert("message_id".into(), json!(clean(id)));
                }
                context.insert("routing_key".into(), json!(clean(&d.meta.routing_key)));
                let (action, target) = match admission {
                    Admission::Admitted(a) => {
                        context.insert("vouched_by".into(), json!(a.sender.vouched().as_str()));
                        if let Some(replay) = a.replay_of {
                            context.insert("replay_of".into(), json!(replay));
                        }
                        let h = &a.envelope.header;
                        (
                            Some(h.message_type.as_str()),
                            Some(h.correlation_id.as_str()),
                        )
                    }
                    // What a refused delivery claims, as received.
                    Admission::Refused(_) => {
                        (d.meta.kind.as_deref(), d.meta.correlation_id.as_deref())
                    }
                };
                Seen {
                    actor: admission
                        .sender_id()
                        .map_or_else(|| "unknown".into(), clean),
                    action: action.map_or_else(|| "unknown".into(), clean),
                    target: target.map(clean).unwrap_or_default(),
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
