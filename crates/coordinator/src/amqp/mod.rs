//! RabbitMQ: the one connection (owned by [`supervisor`]), the topology it declares,
//! the inbox [`consumer`], the [`publisher`] of what batches commit, and the outbox
//! [`relay`].

pub mod consumer;
pub mod dlx;
pub mod publisher;
pub mod relay;
pub mod supervisor;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection whose internal tasks run on the current tokio runtime.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_connection_name(name.into());
    Connection::connect(url, props).await
}

/// The delivery's routing key and properties as plain data for validation.
pub fn delivery_meta(
    routing_key: &str,
    props: &lapin::BasicProperties,
) -> protocol::envelope::DeliveryMeta {
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    protocol::envelope::DeliveryMeta {
        routing_key: routing_key.to_string(),
        message_id: s(props.message_id()),
        correlation_id: s(props.correlation_id()),
        kind: s(props.kind()),
        app_id: s(props.app_id()),
        timestamp: *props.timestamp(),
        content_type: s(props.content_type()),
    }
}

/// AMQP properties repeating an envelope header (docs/protocol.md section 3): persistent,
/// JSON, with message id, correlation id, type, app id and timestamp.
pub fn properties(meta: &protocol::envelope::DeliveryMeta) -> lapin::BasicProperties {
    let mut p = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(protocol::envelope::CONTENT_TYPE.into());
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
    p
}
