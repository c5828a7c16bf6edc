//! Collects what the broker itself dead-letters (expired, rejected by an agent, over a
//! queue's length or delivery limit) from `agent.dead_letters` into the `dead_letters`
//! table, reason `broker_dead_lettered` with the `x-death` detail, so one table holds
//! every message that went wrong. A delivery is acked only after its row committed; a
//! crash in between redelivers it, and its collection key (message id and x-death
//! entry) keeps the second copy out.

use chrono::{DateTime, Utc};
use protocol::names::queues;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Connection, Consumer, Delivery};
use crate::db::{self, store};
use crate::engine::rows::NewDeadLetter;
use crate::service::runtime::Shared;

/// The `dead_letters.reason` of a message the broker dead-lettered.
pub const BROKER_DEAD_LETTERED: &str = "broker_dead_lettered";

const BATCH: usize = 64;

/// Consumes `agent.dead_letters` until `stop`, or until the channel fails.
pub async fn collect(
    conn: &Connection,
    shared: &Shared,
    stop: CancellationToken,
) -> Result<(), amqp::Error> {
    let tag = format!("{}-dlx", shared.instance);
    let mut consumer = Consumer::open(conn, queues::DEAD_LETTERS, &tag, BATCH as u16).await?;
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
            match consumer.next_ready() {
                Some(Ok(d)) => batch.push(d),
                _ => break,
            }
        }
        let Some(last) = batch.last() else { continue };
        let now = shared.clock.now();
        let rows: Vec<(NewDeadLetter, String)> = batch
            .iter()
            .map(|d| {
                let (mut row, key) = collected(d, now);
                shared.cipher.seal_dead_letter(&mut row);
                (row, key)
            })
            .collect();
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
            last.requeue_through().await?;
            break Ok(());
        }
        crate::failpoint::crash(crate::failpoint::DLX_AFTER_COMMIT_BEFORE_ACK);
        last.ack_through().await?;
        tracing::warn!(
            count = batch.len(),
            "messages dead-lettered by the broker kept in dead_letters as broker_dead_lettered"
        );
    };
    consumer.close("collector stopping").await;
    result
}

async fn store(shared: &Shared, rows: Vec<(NewDeadLetter, String)>) -> db::Result<()> {
    let mut conn = shared.pool.acquire().await?;
    store::store_collected(&mut conn, &rows).await.map(|_| ())
}

/// A broker-dead-lettered delivery as a `dead_letters` row, and its collection key. The
/// detail names the first (most recent) `x-death` entry: why, from which queue, how
/// many times. The key is derived from the message id (or the body) and that entry,
/// which a redelivered copy repeats and a later dead-lettering of the same message
/// (another count, another time) does not.
fn collected(d: &Delivery, now: DateTime<Utc>) -> (NewDeadLetter, String) {
    let meta = &d.meta;
    let x_death = d.header("x-death").unwrap_or(Value::Null);
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
    let mut properties = serde_json::to_value(meta).unwrap_or(Value::Null);
    if let Some(p) = properties.as_object_mut() {
        p.insert("x_death".into(), x_death);
    }
    let clean = |s: &str| s.replace('\0', "\u{fffd}");
    let subject = meta
        .message_id
        .clone()
        .unwrap_or_else(|| crate::engine::body_digest(&d.body));
    let key = crate::domain::ids::derived(&format!("{subject} {first}"), BROKER_DEAD_LETTERED);
    let row = NewDeadLetter {
        message_id: meta.message_id.as_deref().map(clean),
        reason: BROKER_DEAD_LETTERED.into(),
        detail: clean(&detail),
        routing_key: clean(&meta.routing_key),
        body: d.body.clone(),
        body_json: serde_json::from_slice::<Value>(&d.body)
            .ok()
            .filter(|v| !v.to_string().contains("\\u0000")),
        properties,
        source_agent_id: meta.app_id.as_deref().map(clean),
        at: now,
    };
    (row, key)
}
