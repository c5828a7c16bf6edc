//! Collects what the broker itself dead-letters (expired, rejected by an agent, over a
//! queue's length or delivery limit) from `agent.dead_letters` into the `dead_letters`
//! table, reason `broker_dead_lettered` with the `x-death` detail, so one table holds
//! every message that went wrong. A delivery is acked only after its row committed; a
//! crash in between redelivers it, and its collection key (message id and x-death
//! entry) keeps the second copy out.

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::amqp::delivery_meta;
use crate::amqp::topology::DEAD_LETTER_QUEUE;
use crate::db::batch::NewDeadLetter;
use crate::db::store;

/// The `dead_letters.reason` of a message the broker dead-lettered.
pub const BROKER_DEAD_LETTERED: &str = "broker_dead_lettered";

const BATCH: usize = 64;

/// Consumes `agent.dead_letters` until `stop`, or until the channel fails.
pub async fn collect(
    conn: &Connection,
    shared: &crate::runtime::Shared,
    stop: CancellationToken,
) -> Result<(), lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(BATCH as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            DEAD_LETTER_QUEUE,
            &format!("{}-dlx", shared.instance),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let result = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let mut batch = match first {
            Some(Ok(d)) => vec![d],
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        };
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                _ => break,
            }
        }
        let Some(last) = batch.last() else { continue };
        let rows: Vec<(NewDeadLetter, String)> = batch.iter().map(collected).collect();
        let mut waits = shared.settings.retry_policies.critical_task.waits();
        let stored = loop {
            match store(shared, rows.clone()).await {
                Ok(()) => break true,
                Err(e) => {
                    let wait = waits.next_persistent();
                    tracing::warn!(error = %e, retry_in = ?wait, "could not store what the broker dead-lettered; will retry");
                    tokio::select! {
                        _ = stop.cancelled() => break false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        if !stored {
            last.acker
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await?;
            break Ok(());
        }
        crate::failpoint::crash(crate::failpoint::DLX_AFTER_COMMIT_BEFORE_ACK);
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        tracing::warn!(
            count = batch.len(),
            "messages dead-lettered by the broker kept in dead_letters as broker_dead_lettered"
        );
    };
    let _ = channel.close(200, "collector stopping").await;
    result
}

async fn store(
    shared: &crate::runtime::Shared,
    rows: Vec<(NewDeadLetter, String)>,
) -> sqlx::Result<()> {
    let mut conn = shared.pool.acquire().await?;
    store::store_collected(&mut conn, &rows).await.map(|_| ())
}

/// A broker-dead-lettered delivery as a `dead_letters` row, and its collection key. The
/// detail names the first (most recent) `x-death` entry: why, from which queue, how
/// many times. The key is derived from the message id (or the body) and that entry,
/// which a redelivered copy repeats and a later dead-lettering of the same message
/// (another count, another time) does not.
fn collected(d: &Delivery) -> (NewDeadLetter, String) {
    let meta = delivery_meta(d.routing_key.as_str(), &d.properties);
    let x_death = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
        .map(amqp_json)
        .unwrap_or(Value::Null);
    let first = x_death.get(0).cloned().unwrap_or(Value::Null);
    let text = |k: &str| {
        first
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let detail = format!(
        "dead-lettered by the broker: {} in queue {} (count {})",
        text("reason"),
        text("queue"),
        first.get("count").and_then(Value::as_i64).unwrap_or(1)
    );
    let mut properties = serde_json::to_value(&meta).unwrap_or(Value::Null);
    if let Some(p) = properties.as_object_mut() {
        p.insert("x_death".into(), x_death);
    }
    let clean = |s: &str| s.replace('\0', "\u{fffd}");
    let subject = meta
        .message_id
        .clone()
        .unwrap_or_else(|| crate::processor::body_digest(&d.data));
    let key = crate::domain::ids::derived(&format!("{subject} {first}"), BROKER_DEAD_LETTERED);
    let row = NewDeadLetter {
        message_id: meta.message_id.as_deref().map(clean),
        reason: BROKER_DEAD_LETTERED.into(),
        detail: clean(&detail),
        routing_key: clean(&meta.routing_key),
        body: d.data.clone(),
        body_json: serde_json::from_slice::<Value>(&d.data)
            .ok()
            .filter(|v| !v.to_string().contains("\\u0000")),
        properties,
        source_agent_id: meta.app_id.as_deref().map(clean),
        at: Utc::now(),
    };
    (row, key)
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
