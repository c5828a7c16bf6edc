//! Roles and the message types each may publish and subscribes to.
//!
//! Built from configuration (`[roles.<agent_type>]` in `config/default.toml`, taken from
//! the seed's message routes) so that adding a role or an event is a config change.

use std::collections::{BTreeMap, BTreeSet};

/// Longest agent id: its queue names (`agent.{id}.commands`) must fit AMQP's 255 bytes.
pub const MAX_AGENT_ID_LEN: usize = 200;

/// Agent ids become queue names and routing keys: letters, digits, '.', '_' and '-'.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct RoleSpec {
    /// Message types this role may publish.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// Routing keys (`{agent_type}.{message_type}`, `*`/`#` allowed) bound to the
    /// role's events queue.
    #[serde(default)]
    pub subscribes_to: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    roles: BTreeMap<String, RoleSpec>,
    /// Message types every role may publish (heartbeat, …).
    common: BTreeSet<String>,
    known: BTreeSet<String>,
}

/// What the catalog says of a (role, message type) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allowed,
    UnknownRole,
    UnknownMessageType,
    NotAllowed,
}

impl Catalog {
    pub fn new(
        roles: BTreeMap<String, RoleSpec>,
        common: impl IntoIterator<Item = String>,
    ) -> Self {
        let common: BTreeSet<String> = common.into_iter().collect();
        let known = roles
            .values()
            .flat_map(|r| r.publishes.iter().cloned())
            .chain(common.iter().cloned())
            .collect();
        Catalog {
            roles,
            common,
            known,
        }
    }

    pub fn roles(&self) -> impl Iterator<Item = (&str, &RoleSpec)> {
        self.roles.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn subscriptions(&self, role: &str) -> &[String] {
        self.roles
            .get(role)
            .map_or(&[], |r| r.subscribes_to.as_slice())
    }

    pub fn may_publish(&self, role: &str, message_type: &str) -> Permission {
        let Some(spec) = self.roles.get(role) else {
            return Permission::UnknownRole;
        };
        if !self.known.contains(message_type) {
            return Permission::UnknownMessageType;
        }
        if self.common.contains(message_type) || spec.publishes.iter().any(|m| m == message_type) {
            Permission::Allowed
        } else {
            Permission::NotAllowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut roles = BTreeMap::new();
        roles.insert(
            "qa-director".to_string(),
            RoleSpec {
                publishes: vec!["testing_started".into()],
                subscribes_to: vec!["engineering-director.feature_completed".into()],
            },
        );
        roles.insert(
            "engineering-director".to_string(),
            RoleSpec {
                publishes: vec!["feature_completed".into()],
                subscribes_to: vec![],
            },
        );
        Catalog::new(roles, ["heartbeat".to_string()])
    }

    #[test]
    fn agent_ids_are_safe_as_queue_names() {
        assert!(valid_agent_id("qa-dir-001"));
        assert!(valid_agent_id("eng.team_2"));
        for bad in [
            "",
            "x y",
            "a/b",
            "a#",
            "ü",
            &"x".repeat(MAX_AGENT_ID_LEN + 1),
        ] {
            assert!(!valid_agent_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn permissions_follow_the_role_table() {
        let c = catalog();
        assert_eq!(
            c.may_publish("qa-director", "testing_started"),
            Permission::Allowed
        );
        assert_eq!(
            c.may_publish("qa-director", "heartbeat"),
            Permission::Allowed
        );
        assert_eq!(
            c.may_publish("qa-director", "feature_completed"),
            Permission::NotAllowed
        );
        assert_eq!(
            c.may_publish("qa-director", "launch_rockets"),
            Permission::UnknownMessageType
        );
        assert_eq!(
            c.may_publish("intern", "testing_started"),
            Permission::UnknownRole
        );
        assert_eq!(
            c.subscriptions("qa-director"),
            ["engineering-director.feature_completed"]
        );
        assert!(c.subscriptions("intern").is_empty());
    }
}
