//! RabbitMQ, and the only module that knows lapin: the connection, the topology it
//! declares ([`topology`]), consumers of a queue and their deliveries ([`Consumer`],
//! [`Delivery`]), and publishing with confirms ([`publisher`]). What the service does
//! with them (the inbox, the relay, the dead-letter collector) is in `service`.

pub mod management;
pub mod publisher;
pub mod topology;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ConnectionProperties;

use crate::settings::AmqpSettings;
use protocol::envelope::{DeliveryMeta, CONTENT_TYPE};
use serde_json::{json, Value};

/// What went wrong talking to the broker (its channel or connection failed, or it
/// refused an operation).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] lapin::Error);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One AMQP connection.
pub struct Connection(lapin::Connection);

/// Opens a connection whose internal tasks run on the current tokio runtime; `name`
/// is what the broker's connection list shows.
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    connect_with(url, name, None).await
}

/// `ca`: the PEM certificates an amqps:// broker is checked against (else the system's).
async fn connect_with(url: &str, name: &str, ca: Option<&str>) -> Result<Connection> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_connection_name(name.into());
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(str::to_string),
    };
    Ok(Connection(
        lapin::Connection::connect_with_config(url, props, tls).await?,
    ))
}

/// Connects to the first node of `amqp.url`, `amqp.fallback_urls` that answers (a
/// cluster's nodes, in order), an amqps:// node's certificate checked against
/// `amqp.tls_ca_file` when set; the error of the last one if none does.
pub async fn connect_to(amqp: &AmqpSettings, name: &str) -> Result<Connection> {
    // The settings refused a file they could not read.
    let ca = amqp
        .tls_ca_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok());
    let urls = amqp.urls();
    let first = urls.first().copied().unwrap_or_default();
    let mut result = connect_with(first, name, ca.as_deref()).await;
    for url in urls.iter().skip(1) {
        let Err(e) = &result else { break };
        tracing::debug!(error = %e, "a node of amqp.url / amqp.fallback_urls did not answer; trying the next");
        result = connect_with(url, name, ca.as_deref()).await;
    }
    result
}

impl Connection {
    pub(crate) async fn channel(&self) -> Result<lapin::Channel> {
        Ok(self.0.create_channel().await?)
    }

    /// Closes the connection (its channels with it).
    pub async fn close(&self, reason: &str) -> Result<()> {
        Ok(self.0.close(200, reason).await?)
    }

    /// A queue's ready messages and consumers, as a passive declare tells them; `None`
    /// if there is no such queue (the broker answers by closing the channel that asked,
    /// which is opened for the question only).
    pub async fn queue_depth(&self, queue: &str) -> Result<Option<(u32, u32)>> {
        use lapin::options::QueueDeclareOptions;
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue, passive, lapin::types::FieldTable::default())
            .await
        {
            Ok(q) => {
                let _ = channel.close(200, "asked").await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(_) => Ok(None),
        }
    }
}

/// Consumes one queue on a channel of its own, manual acks, at most `prefetch`
/// deliveries unacknowledged at once.
pub struct Consumer {
    channel: lapin::Channel,
    inner: lapin::Consumer,
}

impl Consumer {
    pub async fn open(
        conn: &Connection,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Consumer> {
        let channel = conn.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let inner = channel
            .basic_consume(
                queue,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer { channel, inner })
    }

    /// The next delivery; `None` once the broker cancelled the consumer.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.inner
            .next()
            .await
            .map(|r| r.map(Delivery::from).map_err(Error::from))
    }

    /// A delivery already received, without waiting for one.
    pub fn next_ready(&mut self) -> Option<Result<Delivery>> {
        self.inner
            .next()
            .now_or_never()
            .flatten()
            .map(|r| r.map(Delivery::from).map_err(Error::from))
    }

    /// Closes the channel: deliveries not acknowledged return to the queue.
    pub async fn close(self, reason: &str) {
        let _ = self.channel.close(200, reason).await;
    }
}

/// A message taken from a queue, not yet acknowledged.
pub struct Delivery {
    pub body: Vec<u8>,
    /// The routing key and the properties the envelope is checked against.
    pub meta: DeliveryMeta,
    headers: Option<FieldTable>,
    acker: lapin::acker::Acker,
}

impl From<lapin::message::Delivery> for Delivery {
    fn from(d: lapin::message::Delivery) -> Delivery {
        Delivery {
            meta: delivery_meta(d.routing_key.as_str(), &d.properties),
            headers: d.properties.headers().clone(),
            body: d.data,
            acker: d.acker,
        }
    }
}

impl Delivery {
    /// Acknowledges this delivery and every earlier one on its channel.
    pub async fn ack_through(&self) -> Result<()> {
        Ok(self.acker.ack(BasicAckOptions { multiple: true }).await?)
    }

    /// Returns this delivery and every earlier unacknowledged one to the queue.
    pub async fn requeue_through(&self) -> Result<()> {
        Ok(self
            .acker
            .nack(BasicNackOptions {
                multiple: true,
                requeue: true,
            })
            .await?)
    }

    /// A header's value as JSON (strings as text, timestamps as seconds).
    pub fn header(&self, name: &str) -> Option<Value> {
        self.headers
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .map(amqp_json)
    }
}

/// The delivery's routing key and properties as plain data for validation.
pub fn delivery_meta(routing_key: &str, props: &lapin::BasicProperties) -> DeliveryMeta {
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    DeliveryMeta {
        routing_key: routing_key.to_string(),
        message_id: s(props.message_id()),
        correlation_id: s(props.correlation_id()),
        kind: s(props.kind()),
        app_id: s(props.app_id()),
        timestamp: *props.timestamp(),
        content_type: s(props.content_type()),
        user_id: s(props.user_id()),
        replay_of: props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REPLAY_OF_HEADER))
            .and_then(|v| match amqp_json(v) {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
        traceparent: props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(protocol::trace::TRACEPARENT_HEADER))
            .and_then(|v| match amqp_json(v) {
                // The header is not signed and the broker bounds it only by its frame
                // size: a longer one is no W3C context and is not kept (it would be
                // stored with a held-back or dead-lettered message).
                Value::String(s) if s.len() <= MAX_TRACEPARENT_BYTES => Some(s),
                _ => None,
            }),
    }
}

/// The longest `traceparent` header kept: version 00 is 55 bytes; later versions may
/// append fields.
const MAX_TRACEPARENT_BYTES: usize = 512;

/// The header that marks an operator's replay of a dead letter (its id).
pub const REPLAY_OF_HEADER: &str = "x-replay-of";

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
    // The broker refuses a `user_id` that is not this connection's user.
    if let Some(v) = &meta.user_id {
        p = p.with_user_id(v.as_str().into());
    }
    let mut headers = FieldTable::default();
    if let Some(id) = meta.replay_of {
        headers.insert(REPLAY_OF_HEADER.into(), AMQPValue::LongLongInt(id));
    }
    if let Some(v) = &meta.traceparent {
        headers.insert(
            protocol::trace::TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    if !headers.inner().is_empty() {
        p = p.with_headers(headers);
    }
    p
}

/// An AMQP header value as JSON (strings as text, timestamps as seconds).
fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), amqp_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        other => json!(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(v: &str) -> lapin::BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            protocol::trace::TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(v.into()),
        );
        lapin::BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_traceparent_is_kept_as_sent_unless_it_is_too_long_to_be_one() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let meta = delivery_meta("qa-director.testing_started", &with_traceparent(v));
        assert_eq!(meta.traceparent.as_deref(), Some(v));
        let huge = format!("{v}-{}", "x".repeat(100_000));
        let meta = delivery_meta("qa-director.testing_started", &with_traceparent(&huge));
        assert_eq!(meta.traceparent, None);
        // Written back as read: the same header on what is sent with this meta.
        let props = properties(&delivery_meta("k", &with_traceparent(v)));
        let back = delivery_meta("k", &props);
        assert_eq!(back.traceparent.as_deref(), Some(v));
    }
}
