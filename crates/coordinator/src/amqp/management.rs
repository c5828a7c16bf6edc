//! RabbitMQ's management HTTP API, for the one thing AMQP cannot do: give each agent a
//! broker user of its own, confined to its own queues and its role's routing keys
//! (docs/security.md; rabbitmq/README.md shows the same with `rabbitmqctl`).

use std::time::Duration;

use serde_json::json;

use crate::settings::{percent_encode, AmqpSettings};

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error(
        "RabbitMQ's management API at {url} did not answer ({source}); enable it with \
         `rabbitmq-plugins enable rabbitmq_management` (make run does) or set amqp.management_url"
    )]
    Unreachable {
        url: crate::secret::SecretUrl,
        #[source]
        source: reqwest::Error,
    },
    #[error("RabbitMQ's management API refused {what}: HTTP {status}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

/// A client of the management API, as `amqp.url`'s user.
pub struct Management {
    client: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

/// What an agent's broker user may do, as regular expressions on names (RabbitMQ's
/// permissions): configure nothing, write only to `agent.topic`, read only the agent's
/// own three queues, and on `agent.topic` publish only its role's routing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    pub topic_exchange: String,
    pub topic_write: String,
}

impl AgentPermissions {
    pub fn for_agent(agent_id: &str, agent_type: &str) -> Self {
        let topic = protocol::names::exchanges::TOPIC;
        AgentPermissions {
            configure: "^$".into(),
            write: format!("^{}$", escape(topic)),
            read: format!("^agent\\.{}\\.(tasks|commands|events)$", escape(agent_id)),
            topic_exchange: topic.into(),
            topic_write: format!("^{}\\.", escape(agent_type)),
        }
    }
}

/// A name as a literal in a regular expression (agent ids and roles hold `.`, `-`, `_`).
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = !(c.is_ascii_alphanumeric() || c == '_' || c == '-');
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

impl Management {
    pub fn new(amqp: &AmqpSettings) -> Result<Self, ManagementError> {
        let base = amqp
            .management_url
            .expose()
            .trim_end_matches('/')
            .to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|source| ManagementError::Unreachable {
                url: amqp.management_url.clone(),
                source: source.without_url(),
            })?;
        Ok(Management {
            client,
            base,
            user: amqp.user(),
            password: amqp.password(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<u16, ManagementError> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request
            .send()
            .await
            .map_err(|source| ManagementError::Unreachable {
                url: self.base.as_str().into(),
                // The request's URL may hold the management URL's password.
                source: source.without_url(),
            })?;
        let status = answer.status().as_u16();
        if answer.status().is_success() || status == 404 {
            return Ok(status);
        }
        let body: String = answer
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(ManagementError::Refused {
            what: what.to_string(),
            status,
            body,
        })
    }

    /// Creates (or replaces the password and permissions of) the agent's broker user on
    /// `vhost`.
    pub async fn put_agent_user(
        &self,
        vhost: &str,
        agent_id: &str,
        password: &str,
        permissions: &AgentPermissions,
    ) -> Result<(), ManagementError> {
        let user = percent_encode(agent_id);
        let vh = percent_encode(vhost);
        let put = reqwest::Method::PUT;
        self.call(
            put.clone(),
            &format!("/api/users/{user}"),
            Some(json!({"password": password, "tags": ""})),
            &format!("creating user {agent_id}"),
        )
        .await?;
        self.call(
            put.clone(),
            &format!("/api/permissions/{vh}/{user}"),
            Some(json!({
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            })),
            &format!("setting {agent_id}'s permissions on vhost {vhost}"),
        )
        .await?;
        self.call(
            put,
            &format!("/api/topic-permissions/{vh}/{user}"),
            Some(json!({
                "exchange": permissions.topic_exchange,
                "write": permissions.topic_write,
                "read": "^$",
            })),
            &format!("setting {agent_id}'s topic permissions on vhost {vhost}"),
        )
        .await?;
        Ok(())
    }

    /// Whether the broker has a user of this name (users are the broker's, not a
    /// vhost's).
    pub async fn user_exists(&self, agent_id: &str) -> Result<bool, ManagementError> {
        let status = self
            .call(
                reqwest::Method::GET,
                &format!("/api/users/{}", percent_encode(agent_id)),
                None,
                &format!("looking up user {agent_id}"),
            )
            .await?;
        Ok(status != 404)
    }

    /// Deletes the broker user (RabbitMQ closes its connections). False if there was
    /// none.
    pub async fn delete_user(&self, agent_id: &str) -> Result<bool, ManagementError> {
        let status = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/users/{}", percent_encode(agent_id)),
                None,
                &format!("deleting user {agent_id}"),
            )
            .await?;
        Ok(status != 404)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_permissions_name_only_its_queues_and_its_roles_keys() {
        let p = AgentPermissions::for_agent("qa-dir.001", "qa-director");
        assert_eq!(p.configure, "^$");
        assert_eq!(p.write, "^agent\\.topic$");
        assert_eq!(p.read, "^agent\\.qa-dir\\.001\\.(tasks|commands|events)$");
        assert_eq!(p.topic_write, "^qa-director\\.");
    }
}
