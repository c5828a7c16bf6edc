//! Publishing outbox rows: every message of a batch is published (mandatory,
//! persistent) before any confirm is awaited, then the confirms are collected in
//! publishing order. What the broker returned as unroutable or refused is reported
//! back, never dropped (the service keeps those rows in the outbox and retries them:
//! `service::publishing::settle`).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::Channel;
use protocol::envelope::DeliveryMeta;

use super::{properties, Connection};
use crate::engine::rows::Queued;

/// A confirm-mode channel.
pub struct Publisher {
    channel: Channel,
    /// The longest the broker may take to confirm a message (`amqp.confirm_timeout`).
    confirm_timeout: Duration,
    /// Signs each outbox message as it is sent (the coordinator's key).
    signer: Option<std::sync::Arc<protocol::signing::Signer>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing failed")]
    Amqp(#[from] super::Error),
    #[error("the broker did not confirm a message within {0:?} (amqp.confirm_timeout); the channel is given up and the message sent again after its lease")]
    ConfirmTimeout(Duration),
}

/// What the broker said about a batch of messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Outbox ids confirmed.
    pub sent: Vec<i64>,
    /// The routing key each of `sent` went with (`agent_messages_sent_total` labels
    /// it by [`destination`]).
    pub routing_keys: Vec<String>,
    /// Outbox ids not taken, with why, and how many attempts each had before.
    pub failed: Vec<Failed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub id: i64,
    pub attempts: i32,
    pub why: String,
    pub returned: bool,
}

/// A bounded label for where a routing key sends a message: a task's role (the
/// engine addresses only the roles its definitions and configuration name), or the
/// kind of key (`command`, `escalation`) where the rest names one agent or person.
pub fn destination(routing_key: &str) -> &str {
    match routing_key.split_once('.') {
        Some(("task", role)) => role,
        Some((kind @ ("command" | "escalation"), _)) => kind,
        _ => "other",
    }
}

impl Publisher {
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> super::Result<Publisher> {
        let channel = conn.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(super::Error::from)?;
        Ok(Publisher {
            channel,
            confirm_timeout,
            signer: None,
        })
    }

    /// Signs every outbox message it sends with `signer` (none: sends them as stored).
    pub fn signed_by(mut self, signer: Option<std::sync::Arc<protocol::signing::Signer>>) -> Self {
        self.signer = signer;
        self
    }

    /// Publishes every message, then awaits every confirm. `attempts` gives each row's
    /// earlier attempts (for the backoff of a failure).
    pub async fn publish(
        &self,
        rows: &[Queued],
        attempts: impl Fn(i64) -> i32,
    ) -> Result<Published, PublishError> {
        let in_flight = self.send(rows).await?;
        in_flight
            .confirmed(&mut Returned::default(), attempts)
            .await
    }

    /// Publishes every message (mandatory, persistent) without waiting for the broker.
    pub async fn send(&self, rows: &[Queued]) -> super::Result<InFlight> {
        let mut sent = Vec::with_capacity(rows.len());
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        for row in rows {
            let m = &row.message;
            let signed = self.signer.as_ref().and_then(|s| s.sign_body(&m.body));
            let body = signed.as_deref().unwrap_or(&m.body);
            let meta = DeliveryMeta {
                routing_key: m.routing_key.clone(),
                message_id: Some(m.message_id.clone()),
                correlation_id: Some(m.correlation_id.clone()),
                kind: Some(m.message_type.clone()),
                app_id: Some(m.app_id.clone()),
                timestamp: None,
                content_type: None,
                user_id: None,
                replay_of: None,
                traceparent: m.traceparent.clone(),
            };
            let confirm = self
                .channel
                .basic_publish(
                    &m.exchange,
                    &m.routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties(&meta),
                )
                .await?;
            sent.push(Sent {
                id: row.id,
                message_id: meta.message_id.unwrap_or_default(),
                exchange: m.exchange.clone(),
                routing_key: meta.routing_key,
                confirm,
            });
        }
        Ok(InFlight {
            sent,
            deadline,
            timeout: self.confirm_timeout,
        })
    }

    /// Publishes one message as it is (not mandatory: an unroutable copy is the
    /// broker's to drop, as for any agent's message) and waits for the broker's
    /// confirm: true if it took the message.
    pub async fn publish_one(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        meta: &DeliveryMeta,
    ) -> Result<bool, PublishError> {
        let pending = self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                properties(meta),
            )
            .await
            .map_err(super::Error::from)?;
        let confirm = tokio::time::timeout(self.confirm_timeout, pending)
            .await
            .map_err(|_| PublishError::ConfirmTimeout(self.confirm_timeout))?
            .map_err(super::Error::from)?;
        Ok(confirm.is_ack())
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "publisher stopping").await;
    }
}

/// Messages handed to the broker, their confirms still to come.
pub struct InFlight {
    sent: Vec<Sent>,
    /// Every confirm is due by then.
    deadline: tokio::time::Instant,
    timeout: Duration,
}

struct Sent {
    id: i64,
    message_id: String,
    exchange: String,
    routing_key: String,
    confirm: PublisherConfirm,
}

/// Message ids the broker returned as unroutable and no settled message has claimed
/// yet. lapin hands a returned message to whichever confirm completes next, not
/// necessarily its own (with pipelined publishes and multiple acks they differ); the
/// broker sends a return before the ack of its message, so the return arrives with the
/// confirm of its own message or of an earlier one on the same channel. Confirms
/// awaited in publishing order, with this set carried from one [`InFlight`] to the
/// next, therefore find every return by the time its message is settled.
#[derive(Debug, Default)]
pub struct Returned(std::collections::HashSet<String>);

impl InFlight {
    /// Awaits every confirm, in publishing order, and says what the broker did with each
    /// message. `returned` carries returns over from the channel's earlier messages.
    pub async fn confirmed(
        self,
        returned: &mut Returned,
        attempts: impl Fn(i64) -> i32,
    ) -> Result<Published, PublishError> {
        let mut acked = Vec::with_capacity(self.sent.len());
        for s in self.sent {
            let c = tokio::time::timeout_at(self.deadline, s.confirm)
                .await
                .map_err(|_| PublishError::ConfirmTimeout(self.timeout))?
                .map_err(super::Error::from)?;
            let nack = matches!(c, Confirmation::Nack(_));
            if let Some(r) = c.take_message() {
                if let Some(id) = r.properties.message_id() {
                    returned.0.insert(id.as_str().to_string());
                }
            }
            acked.push((s.id, s.message_id, s.exchange, s.routing_key, nack));
        }
        let mut out = Published::default();
        for (id, message_id, exchange, routing_key, nack) in acked {
            if returned.0.remove(&message_id) {
                out.failed.push(Failed {
                    id,
                    attempts: attempts(id),
                    why: format!(
                        "unroutable: no queue is bound to {exchange} with routing key {routing_key}"
                    ),
                    returned: true,
                });
            } else if nack {
                out.failed.push(Failed {
                    id,
                    attempts: attempts(id),
                    why: "the broker refused the message (nack)".into(),
                    returned: false,
                });
            } else {
                out.sent.push(id);
                out.routing_keys.push(routing_key);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::destination;

    #[test]
    fn a_destination_label_names_a_role_or_the_kind_of_key_never_an_agent() {
        assert_eq!(destination("task.qa-director"), "qa-director");
        assert_eq!(destination("command.qa-1"), "command");
        assert_eq!(destination("escalation.high.oncall"), "escalation");
        assert_eq!(destination("odd"), "other");
    }
}
