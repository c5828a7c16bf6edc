//! # coordinator-agent
//!
//! A small agent-side client: publishes envelopes the way docs/protocol.md section 3 says
//! and reads the agent's queues. Used by the integration tests, the demo and the load
//! generator; a reference for agent authors (see `docs/agents.md`).

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use serde_json::Value;

use protocol::envelope::{DeliveryMeta, Envelope, CONTENT_TYPE};
use protocol::names::{exchanges, queues};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("AMQP error")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm the publish: {0}")]
    NotConfirmed(String),
}

/// Which of its queues an agent reads.
#[derive(Debug, Clone, Copy)]
pub enum Queue {
    Tasks,
    Commands,
    Events,
}

impl Queue {
    /// The queue's name for an agent.
    pub fn name(self, agent_id: &str) -> String {
        match self {
            Queue::Tasks => queues::tasks(agent_id),
            Queue::Commands => queues::commands(agent_id),
            Queue::Events => queues::events(agent_id),
        }
    }
}

pub struct AgentClient {
    pub agent_id: String,
    pub agent_type: String,
    /// The AMQP `user_id` every publish carries (the broker refuses one that is not the
    /// connection's user): set where senders are authenticated.
    user_id: Option<String>,
    /// Signs every envelope it publishes (docs/agents.md).
    signer: Option<protocol::signing::Signer>,
    conn: Connection,
    channel: Channel,
    consumers: Vec<(String, Consumer)>,
}

impl AgentClient {
    pub async fn connect(
        url: &str,
        agent_id: &str,
        agent_type: &str,
    ) -> Result<AgentClient, AgentError> {
        let conn = connect(url, agent_id).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(AgentClient {
            agent_id: agent_id.to_string(),
            agent_type: agent_type.to_string(),
            user_id: None,
            signer: None,
            conn,
            channel,
            consumers: Vec::new(),
        })
    }

    /// Publishes with the AMQP `user_id` set to the agent id, as an agent connected as
    /// its own broker user does where sender authentication is on (docs/security.md).
    pub fn authenticated(mut self) -> Self {
        self.user_id = Some(self.agent_id.clone());
        self
    }

    /// Signs every envelope it publishes with `key`, named `key_id` in
    /// `header.security.key_id`.
    pub fn signing(mut self, key: protocol::signing::SigningKey, key_id: &str) -> Self {
        self.signer = Some(protocol::signing::Signer::new(key, key_id));
        self
    }

    /// A new envelope from this agent (fresh message id, timestamp now, ttl 1 h).
    pub fn envelope(&self, message_type: &str, correlation_id: &str, data: Value) -> Envelope {
        let mut env = Envelope::from_agent(
            &self.agent_id,
            &self.agent_type,
            message_type,
            correlation_id,
            data,
            Utc::now(),
        );
        env.header.ttl = Some(3600);
        env
    }

    /// Builds and publishes a message; returns what was sent.
    pub async fn send(
        &self,
        message_type: &str,
        correlation_id: &str,
        data: Value,
    ) -> Result<Envelope, AgentError> {
        let env = self.envelope(message_type, correlation_id, data);
        self.publish(&env).await?;
        Ok(env)
    }

    /// Publishes an envelope to `agent.topic` with matching AMQP properties.
    pub async fn publish(&self, env: &Envelope) -> Result<(), AgentError> {
        let confirm = self.publish_unconfirmed(env).await?;
        confirmed(confirm.await?, &env.agent_routing_key())
    }

    /// Publishes every envelope, in order, before awaiting any confirm (as fast as the
    /// broker takes them); then every confirm.
    pub async fn publish_all(&self, envs: &[Envelope]) -> Result<(), AgentError> {
        let mut pending = Vec::with_capacity(envs.len());
        for env in envs {
            pending.push(self.publish_unconfirmed(env).await?);
        }
        for (confirm, env) in pending.into_iter().zip(envs) {
            confirmed(confirm.await?, &env.agent_routing_key())?;
        }
        Ok(())
    }

    async fn publish_unconfirmed(&self, env: &Envelope) -> Result<PublisherConfirm, AgentError> {
        publish_envelope(
            &self.channel,
            env,
            self.signer.as_ref(),
            self.user_id.as_deref(),
        )
        .await
    }

    /// Publishes any bytes with any properties (for testing bad input).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        meta: &DeliveryMeta,
    ) -> Result<(), AgentError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                properties(meta),
            )
            .await?
            .await?;
        confirmed(confirm, routing_key)
    }

    /// The next message on one of this agent's queues, or `None` after `timeout`.
    pub async fn next(
        &mut self,
        queue: Queue,
        timeout: Duration,
    ) -> Result<Option<Envelope>, AgentError> {
        let name = queue.name(&self.agent_id);
        self.next_on(&name, timeout).await
    }

    /// The next message on any queue by name (e.g. `oncall.escalations`), or `None`
    /// after `timeout`. Each message is acked once read.
    pub async fn next_on(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Envelope>, AgentError> {
        Ok(self.next_with_key(name, timeout).await?.map(|(_, env)| env))
    }

    /// Like [`AgentClient::next_on`], with the routing key the message was published with.
    pub async fn next_with_key(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<(String, Envelope)>, AgentError> {
        Ok(self
            .next_delivery(name, timeout)
            .await?
            .map(|d| (d.routing_key, d.envelope)))
    }

    /// Like [`AgentClient::next_on`], with the routing key and the `traceparent` header
    /// the message came with.
    pub async fn next_delivery(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Received>, AgentError> {
        let name = name.to_string();
        if !self.consumers.iter().any(|(n, _)| *n == name) {
            let consumer = self
                .channel
                .basic_consume(
                    &name,
                    &format!("{}-{name}", self.agent_id),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.consumers.push((name.clone(), consumer));
        }
        let Some((_, consumer)) = self.consumers.iter_mut().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        loop {
            let delivery = match tokio::time::timeout(timeout, consumer.next()).await {
                Err(_) | Ok(None) => return Ok(None),
                Ok(Some(d)) => d?,
            };
            delivery.acker.ack(BasicAckOptions::default()).await?;
            match serde_json::from_slice::<Envelope>(&delivery.data) {
                Ok(envelope) => {
                    let traceparent = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(protocol::trace::TRACEPARENT_HEADER))
                        .and_then(|v| match v {
                            lapin::types::AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
                            _ => None,
                        });
                    return Ok(Some(Received {
                        routing_key: delivery.routing_key.to_string(),
                        traceparent,
                        envelope,
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %name, "skipping a message that is not an envelope")
                }
            }
        }
    }

    /// Takes everything on a queue now, without waiting for more: stops this client's
    /// consumer on it (the broker's cancel-ok comes after every delivery it sent, so
    /// those are all read), then gets what is still ready. Each message is acked.
    /// To show that nothing *more* came, first wait until the coordinator has passed
    /// the moment it would have sent it and its outbox is empty, then drain.
    pub async fn drain(&mut self, name: &str) -> Result<Vec<(String, Envelope)>, AgentError> {
        let mut raw = Vec::new();
        if let Some(i) = self.consumers.iter().position(|(n, _)| n == name) {
            let (_, mut consumer) = self.consumers.remove(i);
            self.channel
                .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
                .await?;
            // Ends (None) right after the deliveries that preceded the cancel-ok; the
            // bound only guards against a broken connection.
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
            {
                let delivery = delivery?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                raw.push((delivery.routing_key.to_string(), delivery.data));
            }
        }
        while let Some(m) = self
            .channel
            .basic_get(name, BasicGetOptions::default())
            .await?
        {
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
            raw.push((m.delivery.routing_key.to_string(), m.delivery.data));
        }
        Ok(raw
            .into_iter()
            .filter_map(|(key, body)| match serde_json::from_slice::<Envelope>(&body) {
                Ok(env) => Some((key, env)),
                Err(e) => {
                    tracing::warn!(error = %e, queue = %name, "skipping a message that is not an envelope");
                    None
                }
            })
            .collect())
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "agent done").await;
    }
}

/// A message read from one of an agent's queues.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    /// The W3C `traceparent` AMQP header, as sent.
    pub traceparent: Option<String>,
    pub envelope: Envelope,
}

/// Opens a connection whose internal tasks run on the current tokio runtime.
/// Publishes `env` to `agent.topic` on `channel` with AMQP properties repeating its
/// header: signed by `signer` where given, with `user_id` where the agent connected as
/// its own broker user (docs/agents.md, docs/security.md). The broker's confirm (on a
/// channel in confirm mode) is still to come.
pub async fn publish_envelope(
    channel: &Channel,
    env: &Envelope,
    signer: Option<&protocol::signing::Signer>,
    user_id: Option<&str>,
) -> Result<PublisherConfirm, AgentError> {
    let body = serde_json::to_vec(env).map_err(|e| AgentError::NotConfirmed(e.to_string()))?;
    let body = match signer {
        Some(s) => s.sign_body(&body).unwrap_or(body),
        None => body,
    };
    let key = env.agent_routing_key();
    let mut meta = env.meta(&key);
    meta.user_id = user_id.map(str::to_string);
    Ok(channel
        .basic_publish(
            exchanges::TOPIC,
            &key,
            BasicPublishOptions::default(),
            &body,
            properties(&meta),
        )
        .await?)
}

/// What the broker's answer to a publish means for the publisher.
fn confirmed(confirm: Confirmation, routing_key: &str) -> Result<(), AgentError> {
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(AgentError::NotConfirmed(format!("nack for {routing_key}"))),
    }
}

pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_connection_name(name.into());
    Connection::connect(url, props).await
}

/// AMQP properties repeating an envelope header (docs/protocol.md section 3): persistent,
/// JSON, with message id, correlation id, type, app id and timestamp.
pub fn properties(meta: &DeliveryMeta) -> lapin::BasicProperties {
    let mut p = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into());
    if let Some(v) = &meta.message_id {
        p = p.with_message_id(v.as_str().into());
    }
    if let Some(v) = &meta.correlation_id {
        p = p.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = &meta.kind {
        p = p.with_type(v.as_str().into());
    }
    if let Some(v) = &meta.app_id {
        p = p.with_app_id(v.as_str().into());
    }
    if let Some(v) = meta.timestamp {
        p = p.with_timestamp(v);
    }
    if let Some(v) = &meta.user_id {
        p = p.with_user_id(v.as_str().into());
    }
    if let Some(v) = &meta.traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            protocol::trace::TRACEPARENT_HEADER.into(),
            lapin::types::AMQPValue::LongString(v.as_str().into()),
        );
        p = p.with_headers(headers);
    }
    p
}

/// A minimal HTTP/1.1 GET of one of the coordinator's endpoints (`host:port`, e.g. `/readyz`):
/// (status, body), or `None` if it does not answer. What a deployment script or a test
/// asks before it starts agents; a full HTTP client would be a dependency for one request.
pub async fn probe(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
