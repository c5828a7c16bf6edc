//! Registered agents as the batch sees them: a shared snapshot (the service's cache,
//! `service::runtime::AgentDirectory`) plus what this batch learned (agents the cache
//! did not hold, found in the database or registered by a heartbeat).

use std::collections::HashMap;
use std::sync::Arc;

use protocol::signing::VerifyingKey;

/// Agent id → agent type, agents by role, and each agent's public keys (key id, key).
#[derive(Debug, Clone, Default)]
pub struct Agents {
    by_id: HashMap<String, String>,
    by_role: HashMap<String, Vec<String>>,
    keys: HashMap<String, Vec<(String, VerifyingKey)>>,
}

impl Agents {
    /// With the agents' public keys: (agent id, key id, key).
    pub fn with_keys(
        mut self,
        keys: impl IntoIterator<Item = (String, String, VerifyingKey)>,
    ) -> Agents {
        for (agent, key_id, key) in keys {
            self.keys.entry(agent).or_default().push((key_id, key));
        }
        self
    }

    /// The keys a message from `agent_id` may be signed with.
    pub fn keys_of(&self, agent_id: &str) -> &[(String, VerifyingKey)] {
        self.keys.get(agent_id).map_or(&[], Vec::as_slice)
    }

    pub fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> Agents {
        let mut a = Agents::default();
        for (id, ty) in rows {
            a.insert(id, ty);
        }
        a
    }

    pub fn insert(&mut self, agent_id: String, agent_type: String) {
        if self.by_id.contains_key(&agent_id) {
            return;
        }
        self.by_role
            .entry(agent_type.clone())
            .or_default()
            .push(agent_id.clone());
        self.by_id.insert(agent_id, agent_type);
    }

    pub fn type_of(&self, agent_id: &str) -> Option<&str> {
        self.by_id.get(agent_id).map(String::as_str)
    }

    /// Whether any agent of `role` is registered.
    pub fn has_role(&self, role: &str) -> bool {
        !self.of_role(role).is_empty()
    }

    fn of_role(&self, role: &str) -> &[String] {
        self.by_role.get(role).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_id.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The cache's snapshot with this batch's additions on top.
#[derive(Debug, Clone)]
pub struct AgentView {
    base: Arc<Agents>,
    added: Agents,
}

impl AgentView {
    pub fn new(base: Arc<Agents>) -> AgentView {
        AgentView {
            base,
            added: Agents::default(),
        }
    }

    pub fn type_of(&self, agent_id: &str) -> Option<&str> {
        self.base
            .type_of(agent_id)
            .or_else(|| self.added.type_of(agent_id))
    }

    pub fn add(&mut self, agent_id: String, agent_type: String) {
        if self.base.type_of(&agent_id).is_none() {
            self.added.insert(agent_id, agent_type);
        }
    }

    /// The one agent of a role, if there is exactly one (it owns the role's clocks).
    pub fn sole_of(&self, role: &str) -> Option<&str> {
        let (a, b) = (self.base.of_role(role), self.added.of_role(role));
        match (a, b) {
            ([one], []) | ([], [one]) => Some(one.as_str()),
            _ => None,
        }
    }

    /// What this batch learned, for the cache.
    pub fn added(&self) -> impl Iterator<Item = (&str, &str)> {
        self.added.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sole_agent_of_a_role_counts_the_snapshot_and_the_additions() {
        let base = Arc::new(Agents::from_rows([
            ("qa-1".to_string(), "qa-director".to_string()),
            ("eng-1".to_string(), "engineering-director".to_string()),
        ]));
        let mut v = AgentView::new(base);
        assert_eq!(v.sole_of("qa-director"), Some("qa-1"));
        assert_eq!(v.sole_of("devops-manager"), None);
        v.add("ops-1".into(), "devops-manager".into());
        assert_eq!(v.sole_of("devops-manager"), Some("ops-1"));
        v.add("qa-2".into(), "qa-director".into());
        assert_eq!(
            v.sole_of("qa-director"),
            None,
            "two QA agents: no sole owner"
        );
        v.add("qa-1".into(), "qa-director".into());
        assert_eq!(
            v.added().count(),
            2,
            "an agent the snapshot holds is not added twice"
        );
        assert_eq!(v.type_of("qa-2"), Some("qa-director"));
    }
}
