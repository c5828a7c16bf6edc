//! Deterministic ids for what the coordinator sends.
//!
//! A message the coordinator sends again (after a crash, before the outbox row was
//! marked sent) must carry the same `message_id`, so receivers can deduplicate. The id is
//! a UUIDv5 of the causing message's id and a key naming the effect.

use uuid::Uuid;

/// Namespace for every id this service derives (a fixed, random UUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_2b7e_4f0a_4e3b_9d6c_8a1f_0e2d_7b94);

/// The id of the message caused by `causation_id` through the effect named `effect_key`.
pub fn derived(causation_id: &str, effect_key: &str) -> String {
    let mut name = Vec::with_capacity(causation_id.len() + effect_key.len() + 1);
    name.extend_from_slice(causation_id.as_bytes());
    name.push(0);
    name.extend_from_slice(effect_key.as_bytes());
    Uuid::new_v5(&NAMESPACE, &name).to_string()
}

/// The id of the follow-on of kind `kind` that workflow `parent` starts
/// (`definition::After`): `<parent>.<kind>`, readable in SQL and in the messages
/// agents get; a correlation_id is at most 255 bytes, so a longer one is a UUIDv5 of
/// the two instead.
pub fn follow_on(parent: &str, kind: &str) -> String {
    let id = format!("{parent}.{kind}");
    if id.len() <= 255 {
        id
    } else {
        derived(parent, &format!("follow-on:{kind}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_on_is_named_after_its_parent_and_fits_a_correlation_id() {
        assert_eq!(follow_on("wf-1", "launch_handoff"), "wf-1.launch_handoff");
        let long = "w".repeat(250);
        let id = follow_on(&long, "launch_handoff");
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(id, follow_on(&long, "launch_handoff"));
        assert_ne!(id, follow_on(&long, "brand_handoff"));
    }

    #[test]
    fn same_cause_and_effect_give_the_same_id_and_anything_else_differs() {
        let a = derived("m-1", "task:feature_handoff:qa-director");
        assert_eq!(a, derived("m-1", "task:feature_handoff:qa-director"));
        assert_ne!(a, derived("m-2", "task:feature_handoff:qa-director"));
        assert_ne!(a, derived("m-1", "task:feature_handoff:devops-manager"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(derived("ab", "c"), derived("a", "bc"));
    }
}
